"""Cross-batch memory: a FIFO of the most recent samples' detached rows and labels.

HyConLoss(memory_size=Q) pairs each batch's anchors with the batch plus these rows as
candidates (docs/losses.md, "Cross-batch memory"). The memory only stores and serves rows; the
loss decides how they are paired.

State is four registered buffers, so it is saved in state_dict, restored by load_state_dict and
moved by .to(device): ``rows`` (n_modalities, Q, d), softmax-normalised; ``labels`` (Q,);
``count`` (the number of filled slots, Q_now) and ``pointer`` (the slot written next), both
0-dim int64. The rows' shape is only known at the first push, so the buffers start empty and a
state_dict of a filled memory restores into a fresh module (``_load_from_state_dict`` takes the
saved shapes).
"""

import torch
from torch import nn

from .pairs import row_descriptors


class CrossBatchMemory(nn.Module):
    """FIFO of the ``size`` most recent samples: their rows in every modality and their labels."""

    rows: torch.Tensor
    labels: torch.Tensor
    count: torch.Tensor
    pointer: torch.Tensor

    def __init__(self, size):
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"memory_size: expected a positive integer, got {size!r}")
        self.size = size
        self.register_buffer("rows", torch.empty(0, size, 0))
        self.register_buffer("labels", torch.zeros(size, dtype=torch.int64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.int64))

    def filled(self):
        """Q_now: the number of samples held."""
        return int(self.count)

    def _check_layout(self, n_modalities, d, device):
        if device != self.labels.device:
            raise ValueError(
                f"memory: on {self.labels.device}, got a batch on {device}; move "
                "the HyConLoss with .to(device)"
            )
        if self.filled() and tuple(self.rows.shape) != (n_modalities, self.size, d):
            raise ValueError(
                f"memory: holds rows of {self.rows.shape[0]} modalities x {self.rows.shape[2]} "
                f"features, got a batch of {n_modalities} modalities x {d} features"
            )

    def candidates(self, like, n_modalities, sample_offset):
        """(rows (n_modalities * Q_now, d), descriptors (n_modalities * Q_now, 3)), oldest
        first; None while the memory is empty.

        ``like``: the batch's (rows, d) tensor, whose d, dtype and device the rows take. Rows are
        modality-major like a batch's; their sample ids start at ``sample_offset`` (the batch
        size), so no memory row is ever the same sample as a batch row.
        """
        self._check_layout(n_modalities, like.shape[-1], like.device)
        n, p = self.filled(), int(self.pointer)
        if n == 0:
            return None
        # Oldest first: once the memory has wrapped, the oldest sample sits at the pointer.
        order = [slice(p, None), slice(0, p)] if n == self.size else [slice(0, n)]
        rows = torch.cat([self.rows[m, part] for m in range(n_modalities) for part in order])
        labels = torch.cat([self.labels[part] for part in order])
        return rows.to(like.dtype), row_descriptors(labels, n_modalities, sample_offset)

    @torch.no_grad()
    def push(self, rows, labels):
        """Enqueue a batch: rows (n_modalities, K, d) softmax-normalised, labels (K,).

        Only the last ``size`` samples of a batch larger than the memory are kept.
        """
        n_modalities, k, d = rows.shape
        self._check_layout(n_modalities, d, rows.device)
        shape = (n_modalities, self.size, d)
        if tuple(self.rows.shape) != shape or (not self.filled() and self.rows.dtype != rows.dtype):
            # First push: the layout and dtype of the rows are known from here on.
            self.rows = rows.new_zeros(shape)
        keep = min(k, self.size)
        slots = (int(self.pointer) + torch.arange(keep, device=rows.device)) % self.size
        self.rows.index_copy_(1, slots, rows[:, k - keep :].to(self.rows.dtype))
        self.labels.index_copy_(0, slots, labels[k - keep :].to(self.labels.device, torch.int64))
        self.count.fill_(min(self.size, self.filled() + keep))
        self.pointer.fill_((int(self.pointer) + keep) % self.size)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        saved = state_dict.get(prefix + "rows")
        if saved is not None and saved.dim() == 3 and saved.shape[1] == self.size:
            # The saved layout (modalities, d, dtype) replaces the empty buffer of a fresh module.
            self.rows = torch.empty_like(saved, device=self.rows.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self):
        # Not the fill level: reading it would sync a GPU, and fail on meta.
        return f"size={self.size}"
