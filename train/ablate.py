"""Run a table of the paper (4: ablations, 5: fusion, 6: alpha, 7: losses; 9: memory) via main.py.

Several seeds per row; writes ablation.md and ablation.json.

  python train/ablate.py --dataset mosi --table 4 --seeds 1,2,3,4,5 [--rows hycon,v2]
      [any train/main.py flag]

Every row is main.py's own code path (train.main.main) with the row's flags (train/paper_tables.py)
after the shared flags. Each (row, seed) trains in OUT/<row>/seed<N>/ (main.py's --out, its log
in run.log); a seed whose results.json exists is not rerun, and one interrupted mid-training
continues from its last.pt. Measured cells are mean ± std over the seeds (ddof 1), with the
paper's number beside each for reference.
"""

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

if not __package__:  # run as a script: make `import train.*` work from any directory
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from train import main as train_main  # noqa: E402
from train.checks import check_args  # noqa: E402
from train.paper_tables import PAPER_COLUMNS, TABLES  # noqa: E402

# main.py flags the runner sets itself, per row and seed
RUNNER_FLAGS = ("--dataset", "--seed", "--seeds", "--out", "--resume")


def build_parser():
    p = argparse.ArgumentParser(
        prog="train/ablate.py",
        description=__doc__.splitlines()[0],
        allow_abbrev=False,
        epilog="Every other flag is passed to train/main.py for every row (e.g. --epochs 15 "
        "--lr 1e-3 --data-dir ../shared/data/real --format poria); a row's own flags come after "
        "them.",
    )
    p.add_argument("--dataset", required=True, choices=["iemocap", "mosi", "mosei"])
    p.add_argument(
        "--table",
        type=int,
        required=True,
        choices=sorted(TABLES),
        help="; ".join(f"{n}: {t.title}" for n, t in TABLES.items()),
    )
    p.add_argument(
        "--seeds",
        default="1,2,3,4,5",
        help="comma-separated seeds run for every row (default 1,2,3,4,5)",
    )
    p.add_argument(
        "--rows",
        default=None,
        help="comma-separated row keys to run (default: all rows of the table); keys: "
        + "; ".join(f"table {n}: {','.join(r.key for r in t.rows)}" for n, t in TABLES.items()),
    )
    p.add_argument(
        "--out", default=None, help="output folder (default runs/ablation/<dataset>-table<N>)"
    )
    return p


def parse(argv):
    """(runner args, the flags shared by every row); errors name the offending flag."""
    args, shared = build_parser().parse_known_args(argv)
    for flag in shared:
        if flag.split("=")[0] in RUNNER_FLAGS:
            raise ValueError(
                f"{flag.split('=')[0]}: set by train/ablate.py itself (use its --dataset, "
                f"--seeds, --out); resuming is automatic"
            )
    table = TABLES[args.table]
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: expected distinct comma-separated integers, got {args.seeds!r}")
    rows = table.rows
    if args.rows is not None:
        keys = [k.strip() for k in args.rows.split(",") if k.strip()]
        unknown = [k for k in keys if k not in {r.key for r in table.rows}]
        if unknown or not keys:
            raise ValueError(
                f"--rows: unknown row {unknown or args.rows!r} for table {table.number}; "
                f"expected some of {[r.key for r in table.rows]}"
            )
        rows = tuple(r for r in table.rows if r.key in keys)
    out = (
        Path(args.out)
        if args.out
        else Path("runs/ablation") / f"{args.dataset}-table{table.number}"
    )
    return args, table, rows, seeds, shared, out


def row_argv(args, row, shared, seed, out):
    """main.py's argv for one (row, seed): shared flags first, so the row's own flags win."""
    return (
        ["--dataset", args.dataset]
        + list(shared)
        + list(row.flags)
        + ["--seed", str(seed), "--out", str(out / row.key / f"seed{seed}")]
    )


def check_row_flags(argv):
    """Parse and check a row's main.py flags before anything trains.

    Catches unknown or contradictory flags.
    """
    parser = train_main.build_parser()
    parsed, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ValueError(
            f"{unknown[0]}: not a train/main.py flag (see python train/main.py --help)"
        )
    check_args(parsed)  # main.py's own checks: ranges and contradictory flags
    return {k: v for k, v in vars(parsed).items() if k != "resume"}


def finished(seed_dir, expected):
    """The saved summary of a finished (row, seed), or None. A finished run made with other
    settings is an error: its numbers would be silently mixed with this table's."""
    path = seed_dir / "results.json"
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        saved_args = saved["args"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path}: not a train/main.py results file ({err}); remove it to rerun"
        ) from None
    # None: a default main.py resolves when it runs (e.g. --text-encoder), saved resolved
    differ = sorted(
        k
        for k in expected
        if k in saved_args and expected[k] is not None and saved_args[k] != expected[k]
    )
    if differ:
        diffs = ", ".join(f"{k}: {saved_args[k]!r} there, {expected[k]!r} now" for k in differ)
        raise ValueError(
            f"{path}: finished with other settings ({diffs}); use another --out or remove it"
        )
    return saved


def run_one(argv, seed, seed_dir):
    """main.py for one (row, seed), its printout and inner progress bars into seed_dir/run.log."""
    seed_dir.mkdir(parents=True, exist_ok=True)
    log = seed_dir / "run.log"
    resume = (seed_dir / f"seed{seed}" / "last.pt").exists()
    try:
        with open(log, "a") as f, redirect_stdout(f), redirect_stderr(f):
            return train_main.main(argv + (["--resume"] if resume else []))
    except (ValueError, OSError) as err:
        raise ValueError(f"{seed_dir}: {err} (log: {log})") from err


def row_summary(row, summaries, seeds):
    done = [s for s in summaries if s is not None]
    entry = {
        "key": row.key,
        "name": row.name,
        "flags": list(row.flags),
        "paper": dict(zip(PAPER_COLUMNS, row.paper)),
        "seeds": [s["seeds"][0]["seed"] for s in done],
        "planned_seeds": seeds,
    }
    if done:
        results = [s["seeds"][0] for s in done]
        mean, std = train_main.summarise(results)
        entry.update(
            mean=mean,
            std=std,
            per_seed=[r["test"] for r in results],
            columns=done[0]["columns"],
            train_time_s=sum(r["train_time_s"] for r in results) / len(results),
            test_inference_s=sum(r.get("test_inference_s", float("nan")) for r in results)
            / len(results),
            epochs=done[0]["epochs"],
            lr=done[0]["lr"],
            format=done[0]["format"],
        )
    return entry


def _cell(key, mean, std):
    if key.startswith(("MAE", "Corr")):
        return f"{mean:.3f} ± {std:.3f}"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _paper(key, value):
    return f"{value:.3f}" if key.startswith(("MAE", "Corr")) else f"{value:.1f}"


def _seconds(value):
    # runs of a main.py that did not time inference have none
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def write_outputs(out, table, entries, meta):
    (out / "ablation.json").write_text(
        json.dumps({**meta, "table": table.number, "title": table.title, "rows": entries}, indent=2)
    )
    done = [e for e in entries if "mean" in e]
    columns = done[0]["columns"] if done else list(PAPER_COLUMNS)
    paper_cols = [c for c in columns if c in PAPER_COLUMNS]
    lines = [
        f"# Table {table.number}: {table.title} (measured)",
        "",
        f"- command: `{meta['command']}`",
        f"- dataset: {meta['dataset']}"
        + (
            f" ({done[0]['format']} format), {done[0]['epochs']} epochs, lr {done[0]['lr']}"
            if done
            else ""
        ),
        f"- machine: {meta['machine']}; {meta['date']}",
        "- each cell: mean ± std over the seeds (ddof 1); in brackets the paper's number "
        "(CMU-MOSI, BERT text encoder, its own settings: for reference, not a target for other "
        "features); train s: training time per seed without the validation passes, test s: "
        "inference over the test split (Table 8, §4.5.8)",
        "",
    ]
    lines.append("| Row | " + " | ".join(columns) + " | seeds | train s | test s |")
    lines.append("|---|" + "---:|" * (len(columns) + 3))
    for e in entries:
        if "mean" not in e:
            lines.append(
                f"| {e['name']} | " + " | ".join("not run" for _ in columns) + " | 0 | | |"
            )
            continue
        cells = [
            _cell(c, e["mean"][c], e["std"][c])
            + (f" ({_paper(c, e['paper'][c])})" if c in paper_cols and c in e["paper"] else "")
            for c in columns
        ]
        lines.append(
            f"| {e['name']} | "
            + " | ".join(cells)
            + f" | {len(e['seeds'])} | {e['train_time_s']:.1f} "
            f"| {_seconds(e['test_inference_s'])} |"
        )
    if table.note:
        lines += ["", table.note]
    (out / "ablation.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, table, rows, seeds, shared, out = parse(argv)
    plans = []
    for row in rows:
        for seed in seeds:
            cmd = row_argv(args, row, shared, seed, out)
            plans.append((row, seed, cmd, check_row_flags(cmd)))
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python train/ablate.py " + " ".join(shlex.quote(a) for a in argv),
        "dataset": args.dataset,
        "seeds": seeds,
        "shared_flags": shared,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}",
    }
    summaries = {
        (row.key, seed): finished(out / row.key / f"seed{seed}", expected)
        for row, seed, _, expected in plans
    }

    def write():
        entries = [row_summary(r, [summaries[(r.key, s)] for s in seeds], seeds) for r in rows]
        write_outputs(out, table, entries, meta)
        return entries

    todo = [(row, seed, cmd) for row, seed, cmd, _ in plans if summaries[(row.key, seed)] is None]
    with tqdm(
        total=len(plans),
        initial=len(plans) - len(todo),
        desc=f"Table {table.number}",
        unit="run",
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:
        for row, seed, cmd in todo:
            bar.set_postfix_str(f"{row.key} seed {seed}")
            summaries[(row.key, seed)] = run_one(cmd, seed, out / row.key / f"seed{seed}")
            write()
            bar.update()
    entries = write()
    print(f"{out / 'ablation.md'}, {out / 'ablation.json'}")
    return entries


def cli():
    try:
        main()
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
