"""Which time steps of a padded sequence are real.

Masks are (N, T) bool, True where a step is real, and always one contiguous block: a zero
step *inside* a sequence (e.g. no face found in that frame) is real, only the padding run is
not. A sequence with no real step keeps one (the step next to the padding side), so every
row has a last real step; its features are zeros, i.e. no information.
"""

from __future__ import annotations

import torch


def nonzero_steps(*seqs: torch.Tensor) -> torch.Tensor:
    """(N, T) bool: steps where any of the given (N, T, d) sequences has a nonzero feature."""
    real = seqs[0].ne(0).any(-1)
    for x in seqs[1:]:
        real = real | x.ne(0).any(-1)
    return real


def left_padded_mask(real: torch.Tensor) -> torch.Tensor:
    """Left padding: real from the first step with data to the end (the last is always real)."""
    steps = torch.arange(real.shape[1])
    first = torch.where(real.any(1), real.to(torch.uint8).argmax(1), real.shape[1] - 1)
    return steps >= first[:, None]


def right_padded_mask(real: torch.Tensor) -> torch.Tensor:
    """Right padding: real from the start to the last step with data (the first is always real)."""
    return left_padded_mask(real.flip(1)).flip(1)


def length_mask(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Right padding with known lengths; a length of 0 keeps the first step (see module doc)."""
    return torch.arange(seq_len) < lengths.clamp(min=1)[:, None]
