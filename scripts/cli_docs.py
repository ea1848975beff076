"""Writes docs/cli.md, the command-line reference, from the training scripts' own parsers.

    python scripts/cli_docs.py            # rewrite docs/cli.md
    python scripts/cli_docs.py --check    # exit 1 when docs/cli.md differs from the parsers

tests/train/test_cli_docs.py runs the check, so the reference cannot drift from --help.
"""

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cli.md"
WIDTH = "100"  # argparse wraps help text to $COLUMNS; fixed so the page is the same everywhere


def render():
    os.environ["COLUMNS"] = WIDTH
    sys.path.insert(0, str(ROOT))
    from train import ablate, main

    sections = [
        (
            "train/main.py",
            "Trains and evaluates HyCon on one dataset (one or several seeds).",
            main.build_parser(),
        ),
        (
            "train/ablate.py",
            "Runs every row of one of the paper's ablation tables through "
            "train/main.py and writes ablation.md / ablation.json.",
            ablate.build_parser(),
        ),
    ]
    lines = [
        "# Command-line reference",
        "",
        "Generated from the parsers by `python scripts/cli_docs.py`; a test fails when this",
        "page and `--help` differ.",
        "",
    ]
    for name, summary, parser in sections:
        lines += [
            f"## `{name}`",
            "",
            summary,
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
            "",
        ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write or check docs/cli.md.")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(
                f"{DOC.relative_to(ROOT)} is stale: run python scripts/cli_docs.py", file=sys.stderr
            )
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
