"""Where each dataset's standard files live, and which format a file is."""

from __future__ import annotations

from pathlib import Path

from .errors import DataError, DataFileNotFound

NAMES = ("mosi", "mosei", "iemocap")
FORMATS = ("mult", "mmsa", "magbert", "poria")

# Standard file names per (format, dataset), in order of preference ("auto" tries formats in this
# order).
FILES = {
    "mult": {
        "mosi": ["mosi_data.pkl", "mosi_data_noalign.pkl"],
        "mosei": ["mosei_senti_data.pkl", "mosei_senti_data_noalign.pkl"],
        "iemocap": ["iemocap_data.pkl", "iemocap_data_noalign.pkl"],
    },
    "mmsa": {
        "mosi": ["aligned_50.pkl", "unaligned_50.pkl"],
        "mosei": ["aligned_50.pkl", "unaligned_50.pkl"],
    },
    "magbert": {"mosi": ["mosi.pkl"], "mosei": ["mosei.pkl"]},
    "poria": {"mosi": ["mosi_utterance_2way.npz"]},
}

SOURCES = {
    "mult": "MulT's processed data (github.com/yaohungt/Multimodal-Transformer, "
    "download link in its README)",
    "mmsa": "MMSA's processed features (github.com/thuiar/MMSA, "
    "<NAME>/Processed/aligned_50.pkl from its README links)",
    "magbert": "MAG-BERT's data (github.com/WasifurRahman/BERT_multimodal_transformer, "
    "datasets/download_datasets.sh)",
    "poria": "Poria et al.'s utterance features "
    "(github.com/declare-lab/contextual-utterance-level-multimodal-"
    "sentiment-analysis); this project keeps a copy in ../shared/data/real",
}


def formats_for(name: str) -> list[str]:
    return [fmt for fmt in FORMATS if name in FILES[fmt]]


def check_name_fmt(name: str, fmt: str) -> str:
    """Normalised dataset name.

    DataError for an unknown name or a format the dataset is not published in.
    """
    key = str(name).lower()
    if key not in NAMES:
        raise DataError(f"name: unknown dataset {name!r}; expected one of {list(NAMES)}")
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"fmt: unknown format {fmt!r}; expected 'auto' or one of {list(FORMATS)}")
    if fmt != "auto" and key not in FILES[fmt]:
        raise DataError(
            f"fmt: {key} is not published in the {fmt!r} format; available: {formats_for(key)}"
        )
    return key


def search_dirs(data_dir: Path, name: str, fmt: str) -> list[Path]:
    """MMSA keeps one folder per dataset (its file names do not say which); the others sit flat."""
    if fmt != "mmsa":
        return [data_dir]
    sub = [data_dir / n / p for n in (name.upper(), name) for p in ("Processed", "")]
    return sub + [data_dir]


def find_file(name: str, data_dir: Path, fmt: str, prefer: tuple = ()) -> tuple[str, Path]:
    """(format, path) of the dataset file under data_dir; data_dir may also be the file itself.
    fmt "auto" tries the formats in `prefer` first, then the others in FORMATS order."""
    fmts = (
        [f for f in prefer if f in formats_for(name)]
        + [f for f in formats_for(name) if f not in prefer]
        if fmt == "auto"
        else [fmt]
    )
    if data_dir.is_file():
        for f in fmts:
            if data_dir.name in FILES[f][name]:
                return f, data_dir
        expected = [n for f in fmts for n in FILES[f][name]]
        raise DataError(
            f"{data_dir}: not a standard {name} file name for format {fmt!r}; "
            f"expected one of {expected}"
        )
    looked = []
    for f in fmts:
        for d in search_dirs(data_dir, name, f):
            for file in FILES[f][name]:
                if (d / file).is_file():
                    return f, d / file
                looked.append(str(d / file))
    sources = "\n".join(f"  {f}: {SOURCES[f]}" for f in fmts)
    raise DataFileNotFound(
        f"no {name} dataset file found under {data_dir.resolve()}; looked for:\n  "
        + "\n  ".join(dict.fromkeys(looked))
        + f"\nGet one from:\n{sources}\n"
        "(or run with --demo to train on a small synthetic file)"
    )
