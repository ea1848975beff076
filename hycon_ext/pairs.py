"""Row descriptors and pair-mode constants shared by the ops, the reference and the loss.

See docs/design.md: rows are stacked modality-major (row = m * K + i) and each row carries
a descriptor [class, modality, sample]; the pair modes say which (anchor, candidate) pairs
are positives or negatives.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

INTRA = 0  # IAMCL: same modality, other sample
INTER = 1  # IEMCL: other modality
SAME_SAMPLE = 2  # SCL: same sample, other modality, positives only

N_MODALITIES = 3  # the loss's modalities: text, audio, visual (rows stacked in this order)

# beta * K can land just below an integer in floating point (0.29 * 100 = 28.999999999999996);
# such values count as that integer.
_FLOOR_TOLERANCE = 1e-9


def row_descriptors(labels: Tensor, n_modalities: int, sample_offset: int = 0) -> Tensor:
    """Descriptors (n_modalities * K, 3) int64 [class, modality, sample], modality-major.

    ``sample_offset`` makes sample ids global when a rank holds samples
    ``sample_offset .. sample_offset + K - 1`` of a larger batch.
    """
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D (K,), got shape {tuple(labels.shape)}")
    k = labels.shape[0]
    # A compiled graph computes them once anyway, and Dynamo warns on tracing a cache wrapper.
    positions_of = _row_positions.__wrapped__ if torch.compiler.is_compiling() else _row_positions
    positions = positions_of(k, n_modalities, sample_offset, labels.device)
    classes = labels.to(torch.int64).expand(n_modalities, k).reshape(-1, 1)
    return torch.cat((classes, positions), dim=1)


@functools.lru_cache(maxsize=64)
def _row_positions(k: int, n_modalities: int, sample_offset: int, device: torch.device) -> Tensor:
    """The [modality, sample] columns, which depend only on the batch layout.

    Cached: the loss builds descriptors on every call and small batches are dominated by
    per-op overhead. Callers never modify it (row_descriptors returns a new tensor).
    """
    modalities = torch.arange(n_modalities, device=device).repeat_interleave(k)
    samples = torch.arange(sample_offset, sample_offset + k, device=device).repeat(n_modalities)
    return torch.stack((modalities, samples), dim=1)


def selection_size(beta: float, k: int) -> int:
    """h = max(1, floor(beta * K)): pairs kept per anchor and side under pair selection."""
    return max(1, math.floor(beta * k + _FLOOR_TOLERANCE))
