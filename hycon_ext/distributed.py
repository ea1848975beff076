"""The HyCon loss over a batch split across torch.distributed ranks (docs/distributed.md).

Each rank all-gathers every rank's modality rows and labels, scores its OWN anchor rows
against ALL gathered candidate rows (per-rank cost (3K/W) x 3K instead of (3K)^2), and
all-reduces the un-normalised term sums and anchor counts. The values returned equal the
single-process hycon_loss over the global batch: the concatenation of the ranks' batches in
rank order.

Gradient scaling. The global loss is L = sum_r L_r, where L_r = (rank r's term sums) /
(global counts) is rank r's local part. Backpropagating L_r on every rank, with the gather's
backward summing each rank's gradient for a row and returning it to the row's owner, leaves
exactly dL/dx_r on rank r's inputs x_r. DistributedDataParallel then AVERAGES parameter
gradients over the W ranks, which would give dL/dtheta / W. So with scale_for_ddp=True (the
default) the returned tensors backpropagate W * L_r: after DDP's averaging every parameter
holds exactly the gradient of the global loss, as in one process with the global batch (and
each x_r.grad is W * dL/dx_r). With scale_for_ddp=False they backpropagate L_r (x_r.grad is
dL/dx_r), for callers that sum gradients over ranks themselves. Either way the *value* of
every returned tensor is the global loss, identical on all ranks, ready to log.

HyConLoss(distributed=True) and HyConLoss(memory_size=Q) run the same code path
(`loss_over_ranks`): with a memory, the candidates are the global batch followed by the memory
rows, and every rank enqueues the same gathered global batch, so the memories stay identical.
Without an initialised process group that path is one process's batch against itself (and the
memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .loss import (
    HyConOutput,
    HyConTerms,
    _check_inputs,
    check_options,
    hycon_loss,
    hycon_terms,
    terms_to_output,
)
from .pairs import row_descriptors


class _GatherRows(torch.autograd.Function):
    """all_gather of equal-shaped tensors, stacked (W, ...); gradients go back to their owner.

    The backward sums every rank's gradient for the gathered tensor and returns the owner's
    slice. (torch.distributed.nn.functional.all_gather does the same but is deprecated with a
    FutureWarning on every call since torch 2.13; all_gather and all_reduce are stable.)
    """

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()  # all_reduce is in place; autograd's buffer is not ours
        dist.all_reduce(grad, group=ctx.group)
        return grad[dist.get_rank(ctx.group)], None


class _GlobalValue(torch.autograd.Function):
    """Value: the global loss (same on every rank). Gradient: scale * that of the local part."""

    @staticmethod
    def forward(ctx, local, global_value, scale):
        ctx.scale = scale
        return global_value.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None, None


def _gather_sizes(x, group):
    """[(K_r, d_r)] of every rank, checking that all ranks agree on d."""
    world = dist.get_world_size(group)
    local = torch.tensor(x.shape, dtype=torch.int64, device=x.device)
    shapes = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(shapes, local, group=group)
    per_rank = [tuple(s.tolist()) for s in shapes]
    if len({d for _, d in per_rank}) != 1:
        raise ValueError(
            f"x_l: every rank must have the same feature size d, got (K, d) per rank {per_rank}"
        )
    return [k for k, _ in per_rank]


def _gather_batch(x, labels, sizes, group):
    """Global modality-major rows (n_mod * K_global, d) and labels (K_global,), in rank order.

    x is (n_mod, K_r, d); ranks' batches are padded to max K for the collective and trimmed.
    """
    k_max = max(sizes)
    pad = k_max - x.shape[1]
    rows = _GatherRows.apply(F.pad(x, (0, 0, 0, pad)), group)  # (W, n_mod, k_max, d)
    rows = torch.cat([rows[r, :, :k] for r, k in enumerate(sizes)], dim=1)
    padded = F.pad(labels.to(torch.int64), (0, pad))
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded, group=group)
    all_labels = torch.cat([lab[:k] for lab, k in zip(gathered, sizes)])
    return rows.reshape(-1, x.shape[-1]), all_labels


def hycon_loss_distributed(
    x_l: Tensor,
    x_a: Tensor,
    x_v: Tensor,
    labels: Tensor,
    *,
    group: Optional[dist.ProcessGroup] = None,
    scale_for_ddp: bool = True,
    alpha: float = 0.8,
    beta: float = 0.2,
    gamma: float = 1.0,
    lambdas: Sequence[float] = (1.0, 1.0, 1.0),
    pair_selection: bool = False,
    select_positives: bool = True,
    select_negatives: bool = True,
    refinement: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
) -> HyConOutput:
    """hycon_loss over the global batch of all ranks of ``group`` (default: the world).

    Every rank of the group must call it with its own local batch (K_r, d) (K_r may differ
    between ranks, d may not) and the same keywords. Returns HyConOutput whose values are the
    single-process hycon_loss of the global batch; h = max(1, floor(beta * K_global)).
    reduction="sum" sums the per-anchor terms over the global batch instead of averaging.
    Gradients: see the module docstring (scale_for_ddp=True suits DistributedDataParallel).
    Outside an initialised process group it is hycon_loss.
    """
    options: dict[str, Any] = dict(
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        pair_selection=pair_selection,
        select_positives=select_positives,
        select_negatives=select_negatives,
        refinement=refinement,
        backend=backend,
    )
    if not (dist.is_available() and dist.is_initialized()):
        # hycon_loss validates the inputs and options itself
        return hycon_loss(x_l, x_a, x_v, labels, lambdas=lambdas, reduction=reduction, **options)
    _check_inputs(x_l, x_a, x_v, labels)
    # before any collective, so that bad options fail on every rank alike instead of hanging
    check_options(
        alpha=alpha, beta=beta, gamma=gamma, lambdas=lambdas, backend=backend, reduction=reduction
    )
    labels = labels.to(x_l.device)
    return loss_over_ranks(
        (x_l, x_a, x_v),
        labels,
        memory=None,
        group=group,
        scale_for_ddp=scale_for_ddp,
        lambdas=lambdas,
        reduction=reduction,
        options=options,
    )


def loss_over_ranks(xs, labels, *, memory, group, scale_for_ddp, lambdas, reduction, options):
    """Local anchors of the modality batches xs against the global batch, then the memory.

    Inputs are validated by the caller; labels are on the inputs' device. memory: a
    hycon_ext.memory.CrossBatchMemory or None; its rows follow the global batch as candidates
    (sample ids from K_global on, so never the same sample), h counts them, and the gathered
    global batch enters it after the loss is computed. Without an initialised process group
    the global batch is the local one and no collective runs.
    """
    n_mod, d = len(xs), xs[0].shape[1]
    local_rows = torch.stack(tuple(xs))  # (n_mod, K_r, d)
    z_anchor = torch.softmax(local_rows.reshape(-1, d), dim=-1)
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        sizes = _gather_sizes(xs[0], group)
        rank = dist.get_rank(group)
        cand_rows, cand_labels = _gather_batch(local_rows, labels, sizes, group)
        k_global = sum(sizes)
        z_batch = torch.softmax(cand_rows, dim=-1)
        a_ids = row_descriptors(labels, n_mod, sample_offset=sum(sizes[:rank]))
        c_ids = row_descriptors(cand_labels, n_mod)
    else:
        k_global, z_batch, cand_labels = labels.shape[0], z_anchor, labels
        a_ids = c_ids = row_descriptors(labels, n_mod)
    z_cand, n_samples, constant_rows = z_batch, k_global, 0
    held = None if memory is None else memory.candidates(z_batch, n_mod, sample_offset=k_global)
    if held is not None:
        z_cand, c_ids = torch.cat((z_batch, held[0])), torch.cat((c_ids, held[1]))
        n_samples += held[0].shape[0] // n_mod
        constant_rows = held[0].shape[0]  # the memory's rows are detached: no gradient to compute
    local = hycon_terms(
        z_anchor, z_cand, a_ids, c_ids, n_samples=n_samples, constant_rows=constant_rows, **options
    )
    if memory is not None:
        memory.push(z_batch.detach().reshape(n_mod, k_global, d), cand_labels)
    if not distributed:
        return terms_to_output(local, lambdas, reduction)

    # One collective for sums and counts; float64 so counts stay exact in any input dtype.
    totals = torch.cat((local.sums, local.counts)).detach().to(torch.float64)
    dist.all_reduce(totals, group=group)
    g_sums, g_counts = totals.to(local.sums.dtype).chunk(2)
    local_part = terms_to_output(HyConTerms(local.sums, g_counts), lambdas, reduction)
    global_value = terms_to_output(HyConTerms(g_sums, g_counts), lambdas, reduction)
    scale = float(dist.get_world_size(group)) if scale_for_ddp else 1.0
    return HyConOutput(
        *(_GlobalValue.apply(part, value, scale) for part, value in zip(local_part, global_value))
    )
