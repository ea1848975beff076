"""MMSA pickles (Yu et al., github.com/thuiar/MMSA): aligned_50.pkl / unaligned_50.pkl.

dict train/valid/test -> {"text" (N, T, 768) BERT features, "text_bert" (N, 3, T) token ids /
attention mask / segment ids, "audio" (N, Ta, da), "vision" (N, Tv, dv), "audio_lengths",
"vision_lengths" (N,), "regression_labels" (N,), "id", ...}. Sequences are RIGHT-padded.
Text is read as token ids (text_bert) or as the 768-d features (text): text="auto" takes the
token ids where every split has them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import checks
from .bundle import DataBundle, DataInfo, TensorDictDataset
from .errors import DataError
from .masks import length_mask, nonzero_steps, right_padded_mask

SPLITS = ("train", "valid", "test")


TEXT = ("auto", "tokens", "features")


def read_mmsa(path: Path, name: str, text: str = "auto") -> DataBundle:
    if text not in TEXT:
        raise DataError(f"text: expected one of {TEXT}, got {text!r}")
    data = checks.load_pickle(path)
    checks.require_splits(data, SPLITS, str(path))
    has_ids = all(isinstance(data[s], dict) and "text_bert" in data[s] for s in SPLITS)
    if text == "tokens" and not has_ids:
        raise DataError(
            f"{path}: no 'text_bert' token ids in every split; "
            f"a pretrained text encoder needs them "
            f"(use the feature Transformer, --text-encoder transformer, on its 'text' features)"
        )
    tokens = has_ids and text != "features"
    splits, dims = {}, {m: {} for m in ("text", "audio", "vision")}
    for split in SPLITS:
        tensors = _read_split(data[split], f"{path} [{split}]", tokens)
        for m in ("audio", "vision") if tokens else dims:
            dims[m][split] = tensors[m].shape[-1]
        splits[split] = TensorDictDataset(tensors)
    dims = {m: checks.same_dims(d, m, path) for m, d in dims.items() if d}
    dims.setdefault("text", None)
    info = DataInfo(
        name=name,
        fmt="mmsa",
        task="regression",
        text_kind="tokens" if tokens else "features",
        dims=dims,
        path=path,
    )
    return DataBundle(**splits, info=info)


def _read_split(split: dict, where: str, tokens: bool) -> dict[str, torch.Tensor]:
    label = checks.require_key(split, "regression_labels", where)
    n = np.asarray(label).shape[0] if np.ndim(label) else 0
    label = checks.sentiment(label, f"{where} 'regression_labels'", n)
    out = {"label": label}
    if tokens:
        bert = checks.as_array(
            split["text_bert"], f"{where} 'text_bert'", ndim=3, n=n, shape={1: 3}
        )
        if not (
            np.equal(np.round(bert), bert).all()
            and bert.min() >= 0
            and np.isin(bert[:, 1], (0, 1)).all()
        ):
            raise DataError(
                f"{where} 'text_bert': expected non-negative integer ids/segments and a 0/1 mask "
                "in rows 0/2 and 1 of axis 1"
            )
        bert = torch.from_numpy(bert.astype(np.int64))
        out.update(text_ids=bert[:, 0], text_mask=bert[:, 1].bool(), text_segment=bert[:, 2])
        text_len = out["text_mask"].sum(1)
    else:
        text = checks.features(checks.require_key(split, "text", where), f"{where} 'text'", n=n)
        out.update(text=text, text_mask=right_padded_mask(nonzero_steps(text)))
        text_len = out["text_mask"].sum(1)
    for m in ("audio", "vision"):
        x = checks.features(
            checks.require_key(split, m, where), f"{where} {m!r}", n=n, allow_neg_inf=m == "audio"
        )
        out[m] = x
        if f"{m}_lengths" in split:
            out[f"{m}_mask"] = length_mask(
                _lengths(split[f"{m}_lengths"], f"{where} '{m}_lengths'", n, x.shape[1]), x.shape[1]
            )
        elif x.shape[1] == out["text_mask"].shape[1]:  # aligned to the text: same real steps
            out[f"{m}_mask"] = length_mask(text_len, x.shape[1])
        else:
            out[f"{m}_mask"] = right_padded_mask(nonzero_steps(x))
    return out


def _lengths(value, where: str, n: int, seq_len: int) -> torch.Tensor:
    arr = checks.as_array(value, where, ndim=1, n=n)
    if not (
        np.equal(np.round(arr), arr).all()
        and arr.min(initial=0) >= 0
        and arr.max(initial=0) <= seq_len
    ):
        raise DataError(
            f"{where}: expected integer lengths in [0, {seq_len}], "
            f"got range [{arr.min(initial=0)}, {arr.max(initial=0)}]"
        )
    return torch.from_numpy(arr.astype(np.int64))
