"""Utterance-level CMU-MOSI of Poria et al. (ACL 2017): mosi_utterance_2way.npz.

Arrays {text,audio,video}_{train,test} (videos, 63, 50), {train,test}_mask (videos, 63) with 1
where an utterance exists (padded slots hold NONZERO features, so only the mask tells), and
{train,test}_label (videos, 63, 2) one-hot [negative, non-negative]. Each utterance becomes one
sample, a sequence of length 1, labelled -1 / +1 as sentiment. There is no validation split:
the last VALID_FRACTION of the training videos form it, so no video spans two splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import checks
from .bundle import DataBundle, DataInfo, TensorDictDataset
from .errors import DataError

VALID_FRACTION = 0.1
MODALITIES = {"text": "text", "audio": "audio", "vision": "video"}  # our name -> file prefix


def read_poria(path: Path, name: str) -> DataBundle:
    try:
        data = dict(np.load(path, allow_pickle=False))
    except Exception as e:
        raise DataError(
            f"{path}: cannot be read as an .npz archive ({type(e).__name__}: {e})"
        ) from e
    train, dims = _read_part(data, "train", path)
    test, _ = _read_part(data, "test", path)
    n_valid = max(1, round(VALID_FRACTION * len(train)))
    if len(train) <= n_valid:
        raise DataError(
            f"{path}: needs at least {n_valid + 1} training videos to carve a validation split"
        )
    info = DataInfo(
        name=name, fmt="poria", task="regression", text_kind="features", dims=dims, path=path
    )
    return DataBundle(
        train=_utterances(train[:-n_valid]),
        valid=_utterances(train[-n_valid:]),
        test=_utterances(test),
        info=info,
    )


def _read_part(data: dict, part: str, path: Path):
    """Per video: (features by modality (63, d), mask (63,), label (63,)) with validated shapes."""
    where = f"{path}"
    mask = checks.as_array(
        checks.require_key(data, f"{part}_mask", where), f"{where} '{part}_mask'", ndim=2
    )
    videos, slots = mask.shape
    if not np.isin(mask, (0, 1)).all():
        raise DataError(f"{where} '{part}_mask': expected 0/1 values")
    feats = {
        m: checks.features(
            checks.require_key(data, f"{prefix}_{part}", where),
            f"{where} '{prefix}_{part}'",
            n=videos,
        )
        for m, prefix in MODALITIES.items()
    }
    for m, x in feats.items():
        if x.shape[1] != slots:
            raise DataError(
                f"{where} '{MODALITIES[m]}_{part}': expected ({videos}, {slots}, d), "
                f"got {tuple(x.shape)}"
            )
    label = checks.as_array(
        checks.require_key(data, f"{part}_label", where),
        f"{where} '{part}_label'",
        ndim=3,
        n=videos,
        shape={1: slots, 2: 2},
    )
    real = mask.astype(bool)
    if not (np.isin(label[real], (0, 1)).all() and (label[real].sum(-1) == 1).all()):
        raise DataError(
            f"{where} '{part}_label': expected one-hot [negative, non-negative] rows "
            f"for real utterances"
        )
    sentiment = torch.from_numpy(label.argmax(-1) * 2.0 - 1.0).float()
    real = torch.from_numpy(real)
    per_video = [
        ({m: x[v][real[v]] for m, x in feats.items()}, sentiment[v][real[v]]) for v in range(videos)
    ]
    return per_video, {m: x.shape[-1] for m, x in feats.items()}


def _utterances(videos: list) -> TensorDictDataset:
    tensors = {m: torch.cat([f[m] for f, _ in videos])[:, None, :] for m in MODALITIES}
    n = len(tensors["text"])
    masks = {f"{m}_mask": torch.ones(n, 1, dtype=torch.bool) for m in MODALITIES}
    return TensorDictDataset({**tensors, **masks, "label": torch.cat([y for _, y in videos])})
