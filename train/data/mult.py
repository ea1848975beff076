"""MulT pickles (Tsai et al. 2019): mosi_data.pkl, mosei_senti_data.pkl, iemocap_data.pkl.

The same names with _noalign (e.g. mosi_data_noalign.pkl) hold the unaligned variants.
dict train/valid/test -> {"text" (N, T, 300) GloVe, "audio" (N, Ta, da), "vision" (N, Tv, dv),
"labels" (N, 1, 1) sentiment or (N, 4, 2) one-hot per emotion (IEMOCAP), "id" (unused)}.
Sequences are LEFT-padded with zeros; audio may hold -inf.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import checks
from .bundle import EMOTIONS, DataBundle, DataInfo, TensorDictDataset
from .errors import DataError
from .masks import left_padded_mask, nonzero_steps

SPLITS = ("train", "valid", "test")


def read_mult(path: Path, name: str) -> DataBundle:
    data = checks.load_pickle(path)
    checks.require_splits(data, SPLITS, str(path))
    splits, dims = {}, {m: {} for m in ("text", "audio", "vision")}
    for split in SPLITS:
        tensors = _read_split(data[split], name, f"{path} [{split}]", path)
        for m in dims:
            dims[m][split] = tensors[m].shape[-1]
        splits[split] = TensorDictDataset(tensors)
    info = DataInfo(
        name=name,
        fmt="mult",
        task="emotion" if name == "iemocap" else "regression",
        text_kind="features",
        dims={m: checks.same_dims(d, m, path) for m, d in dims.items()},
        emotions=list(EMOTIONS) if name == "iemocap" else [],
        path=path,
    )
    return DataBundle(**splits, info=info)


def _read_split(split: dict, name: str, where: str, path: Path) -> dict[str, torch.Tensor]:
    text = checks.features(checks.require_key(split, "text", where), f"{where} 'text'")
    n = len(text)
    audio = checks.features(
        checks.require_key(split, "audio", where), f"{where} 'audio'", n=n, allow_neg_inf=True
    )
    vision = checks.features(checks.require_key(split, "vision", where), f"{where} 'vision'", n=n)
    labels = checks.require_key(split, "labels", where)
    label = (
        _emotions(labels, f"{where} 'labels'", n)
        if name == "iemocap"
        else checks.sentiment(labels, f"{where} 'labels'", n)
    )

    seqs = {"text": text, "audio": audio, "vision": vision}
    if "noalign" not in path.name and len({x.shape[1] for x in seqs.values()}) == 1:
        # Aligned: one length for all modalities; a step is real if any modality has data there.
        mask = left_padded_mask(nonzero_steps(text, audio, vision))
        masks = {m: mask for m in seqs}
    else:
        masks = {m: left_padded_mask(nonzero_steps(x)) for m, x in seqs.items()}
    return {**seqs, **{f"{m}_mask": mk for m, mk in masks.items()}, "label": label}


def _emotions(value, where: str, n: int) -> torch.Tensor:
    """(N, 4, 2) one-hot [absent, present] per emotion -> (N, 4) long in {0, 1}."""
    arr = checks.as_array(value, where, ndim=3, n=n, shape={1: len(EMOTIONS), 2: 2})
    if not (np.isin(arr, (0, 1)).all() and (arr.sum(-1) == 1).all()):
        raise DataError(
            f"{where}: expected one-hot pairs [absent, present] per emotion "
            f"(0/1 values, one 1 each)"
        )
    return torch.from_numpy(arr.argmax(-1)).long()
