"""Validation helpers: every complaint names the file, split, key and what was expected."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import DataError


def load_pickle(path: Path):
    """Unpickle a dataset file (files written by Python 2 need latin1 for their numpy arrays)."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except UnicodeDecodeError:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:  # truncated or not a pickle at all
        raise DataError(f"{path}: cannot be unpickled ({type(e).__name__}: {e})") from e


def require_splits(data, names: tuple[str, ...], where: str) -> None:
    if not isinstance(data, dict):
        raise DataError(
            f"{where}: expected a dict with keys {list(names)}, got {type(data).__name__}"
        )
    missing = [s for s in names if s not in data]
    if missing:
        raise DataError(
            f"{where}: missing split(s) {missing}; expected {list(names)}, "
            f"found {sorted(map(str, data))}"
        )


def require_key(split: dict, key: str, where: str):
    if not isinstance(split, dict):
        raise DataError(f"{where}: expected a dict of arrays, got {type(split).__name__}")
    if key not in split:
        raise DataError(f"{where}: missing key {key!r} (found {sorted(map(str, split))})")
    return split[key]


def as_array(
    value, where: str, *, ndim: int, n: int | None = None, shape: dict[int, int] | None = None
) -> np.ndarray:
    """value as a numeric array with `ndim` dims, `n` rows and the given sizes at given axes."""
    arr = np.asarray(value)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{where}: expected a numeric array, got dtype {arr.dtype}")
    expected = [str(n) if n is not None else "N"] + ["*"] * (ndim - 1)
    for axis, size in (shape or {}).items():
        expected[axis] = str(size)
    ok = arr.ndim == ndim and (n is None or arr.shape[0] == n)
    ok = ok and all(arr.shape[a] == s for a, s in (shape or {}).items())
    if not ok:
        raise DataError(f"{where}: expected shape ({', '.join(expected)}), got {tuple(arr.shape)}")
    return arr


def features(
    value, where: str, *, n: int | None = None, allow_neg_inf: bool = False, ndim: int = 3
) -> torch.Tensor:
    """(N, T, d) (or `ndim`-d) float32 features with non-finite values set to 0.

    -inf is a documented quirk of the audio arrays (log-energy of silence); anything else
    non-finite is still zeroed but warned about, so it is never silent.
    """
    x = torch.from_numpy(as_array(value, where, ndim=ndim, n=n).astype(np.float32, copy=True))
    bad = ~torch.isfinite(x)
    if bad.any():
        unexpected = bad & ~(torch.isneginf(x) if allow_neg_inf else torch.zeros_like(bad))
        if unexpected.any():
            warnings.warn(
                f"{where}: {int(unexpected.sum())} non-finite values set to 0", stacklevel=3
            )
        x[bad] = 0.0
    return x


def sentiment(value, where: str, n: int) -> torch.Tensor:
    """(N,) float sentiment scores in [-3, 3] from (N,), (N, 1) or (N, 1, 1)."""
    arr = np.asarray(value)
    if arr.ndim == 0 or arr.shape[0] != n or arr.size != n:
        raise DataError(
            f"{where}: expected {n} sentiment scores of shape ({n},), ({n}, 1) or ({n}, 1, 1), "
            f"got {tuple(arr.shape)}"
        )
    y = torch.from_numpy(as_array(arr.reshape(n), where, ndim=1).astype(np.float32))
    check_sentiment_range(y, where)
    return y


def check_sentiment_range(y: torch.Tensor, where: str) -> None:
    # an empty split passes here; load_dataset names it
    if y.numel() and (not torch.isfinite(y).all() or y.abs().max() > 3 + 1e-4):
        raise DataError(
            f"{where}: sentiment scores must be finite and in [-3, 3], "
            f"got range [{y.min().item():g}, {y.max().item():g}]"
        )


def same_dims(per_split: dict[str, int], what: str, path: Path) -> int:
    if len(set(per_split.values())) != 1:
        raise DataError(f"{path}: {what} feature size differs between splits: {per_split}")
    return next(iter(per_split.values()))
