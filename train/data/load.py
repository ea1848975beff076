"""load_dataset: find a dataset's standard file and read it into a DataBundle."""

from __future__ import annotations

from pathlib import Path

from .bundle import DataBundle
from .errors import DataError
from .locate import check_name_fmt, find_file
from .magbert import read_magbert
from .mmsa import read_mmsa
from .mult import read_mult
from .poria import read_poria


def load_dataset(
    name: str,
    data_dir,
    fmt: str = "auto",
    *,
    tokenizer=None,
    max_seq_len: int = 50,
    text: str = "auto",
) -> DataBundle:
    """Read `name` ("mosi" | "mosei" | "iemocap") from its standard file under data_dir.

    fmt "auto" takes the first standard file found (MulT, then MMSA, MAG-BERT, poria). tokenizer
    (a transformers tokenizer) and max_seq_len are used by the MAG-BERT format only, which holds
    raw words. text: for MMSA files, which carry both, "tokens" (BERT token ids), "features" or
    "auto" (token ids where present). Files are unpickled: read only files you trust.
    """
    name = check_name_fmt(name, fmt)
    fmt, path = find_file(name, Path(data_dir), fmt)
    if fmt == "mult":
        bundle = read_mult(path, name)
    elif fmt == "mmsa":
        bundle = read_mmsa(path, name, text)
    elif fmt == "magbert":
        bundle = read_magbert(path, name, tokenizer, max_seq_len)
    else:
        bundle = read_poria(path, name)
    for split, data in bundle.splits().items():  # training, selection and testing each need samples
        if len(data) == 0:
            raise DataError(f"{path}: the {split} split has no samples; expected at least one")
    return bundle
