"""What the readers hand back: per-split datasets of tensor dicts and a description of the data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .errors import DataError

EMOTIONS = ["Neutral", "Happy", "Sad", "Angry"]  # IEMOCAP label order of the MulT file


@dataclass
class DataInfo:
    name: str  # "mosi" | "mosei" | "iemocap"
    fmt: str  # "mult" | "mmsa" | "magbert" | "poria"
    task: str  # "regression" | "emotion"
    text_kind: str  # "features" | "tokens"
    dims: dict  # text/audio/vision -> feature size (text None for tokens)
    emotions: list = field(default_factory=list)
    path: Path | None = None  # the file that was read


class TensorDictDataset(Dataset):
    """Row i of every tensor, plus "index" (i as a long scalar)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        sizes = {k: len(v) for k, v in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise DataError(
                f"all arrays of a split must have the same number of samples, got {sizes}"
            )
        self.tensors = dict(tensors)
        self.tensors["index"] = torch.arange(next(iter(sizes.values())))

    def __len__(self) -> int:
        return len(self.tensors["index"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


@dataclass
class DataBundle:
    train: TensorDictDataset
    valid: TensorDictDataset
    test: TensorDictDataset
    info: DataInfo

    def splits(self) -> dict[str, TensorDictDataset]:
        return {"train": self.train, "valid": self.valid, "test": self.test}
