"""Training objectives: task loss (eq. 2), hybrid contrastive loss (eqs. 16-17) and the
comparison losses of Section 4.5.7 (eqs. 18-20) that replace IAMCL/IEMCL in Table 7.

Pair classes (which samples count as the same class for the contrastive pairs):
- "sign" (paper 4.4): label >= 0 -> 1, label < 0 -> 0.
- "sign-nonzero": negative 0, positive 1, and zero labels get their own class 2, so a neutral
  sample is a positive only of other neutral samples and a negative of every signed sample.
- "7class": round(clip(label, -3, 3)) + 3 (round half to even, as Acc7).
- emotion (IEMOCAP): the index of the present emotion (argmax of the multi-hot label); a sample
  with none of the emotions present gets its own class E (= number of emotions).
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F

PAIR_CLASSES = ("sign", "sign-nonzero", "7class")
COMPARISON_LOSSES = ("classical", "triplet", "hard-triplet", "npair")
CONTRASTIVE_LOSSES = ("hycon",) + COMPARISON_LOSSES


class HybridTerms(NamedTuple):
    total: torch.Tensor
    scl: torch.Tensor
    iamcl: torch.Tensor
    iemcl: torch.Tensor


def pair_classes(labels, task, mode="sign"):
    """Integer class id per sample for the contrastive pairs (see the module docstring)."""
    if task == "emotion":
        if labels.dim() != 2:
            raise ValueError(
                f"labels: expected (K, E) emotion labels, got shape {tuple(labels.shape)}"
            )
        present = labels.sum(1) > 0
        return torch.where(
            present, labels.argmax(1), torch.full_like(labels[:, 0], labels.shape[1])
        ).long()
    if mode == "sign":
        return (labels >= 0).long()
    if mode == "sign-nonzero":
        return torch.where(
            labels == 0, torch.full_like(labels, 2), (labels > 0).to(labels.dtype)
        ).long()
    if mode == "7class":
        return (torch.round(labels.clamp(-3.0, 3.0)) + 3).long()
    raise ValueError(f"pair_classes mode: expected one of {PAIR_CLASSES}, got {mode!r}")


def task_loss(output, labels, task):
    """L1 (MAE) for regression; cross-entropy over the binary heads for emotions (eq. 2)."""
    if task == "regression":
        return F.l1_loss(output.reshape(-1), labels.reshape(-1).to(output.dtype))
    # output (K, E, 2), labels (K, E) in {0, 1}
    return F.cross_entropy(output.reshape(-1, 2), labels.reshape(-1).long())


def _pick_random(mask):
    """One column per row drawn uniformly from the True entries (rows without any: column 0)."""
    has = mask.any(1)
    weights = mask.float()
    weights[~has, 0] = 1.0
    return torch.multinomial(weights, 1).squeeze(1)


def _sq_dist(z, cols):
    """Squared Euclidean distance of each row of z to the row cols[i]."""
    return (z - z[cols]).pow(2).sum(1)


def _comparison_term(kind, z, sim, pos, neg, reduction="mean", triplet_margin=None):
    """Mean (or sum) over qualifying anchors of eq. 18, 19 or 20; 0 (with a graph) when none
    qualifies."""
    rows = torch.arange(sim.shape[0], device=sim.device)
    has_pos, has_neg = pos.any(1), neg.any(1)
    if kind in ("triplet", "hard-triplet"):
        if kind == "triplet":
            p, n = _pick_random(pos), _pick_random(neg)
        else:  # hardest pairs: lowest positive / highest negative similarity, first index on ties
            p = sim.masked_fill(~pos, float("inf")).argmin(1)
            n = sim.masked_fill(~neg, float("-inf")).argmax(1)
        gap, keep = _sq_dist(z, p) - _sq_dist(z, n), has_pos & has_neg
        # None: eq. 19 as printed, + 1 and no hinge (distances of softmax rows are bounded, so is
        # the loss); a number: the usual hinge max(0, gap + margin)
        value = gap + 1.0 if triplet_margin is None else torch.clamp(gap + triplet_margin, min=0.0)
    else:
        s_p = sim[rows, _pick_random(pos)]
        if kind == "classical":  # eq. 18
            value = -s_p / (s_p + (sim * neg).sum(1))
        else:  # eq. 20: log(1 + sum_j exp(s_n - s_p)) as a stable logsumexp with a zero column
            diffs = (sim - s_p[:, None]).masked_fill(~neg, float("-inf"))
            value = torch.logsumexp(torch.cat([torch.zeros_like(s_p)[:, None], diffs], 1), 1)
        keep = has_pos
    if not keep.any():
        return sim.sum() * 0.0
    return value[keep].sum() if reduction == "sum" else value[keep].mean()


def comparison_loss(kind, x_l, x_a, x_v, classes, reduction="mean", triplet_margin=None):
    """(intra, inter) terms of a comparison loss over the softmax-normalised rows (same pairs as
    IAMCL/IEMCL). Classical and N-pair use one random positive and all negatives; triplet one
    random positive and one random negative; hard-triplet the hardest of each. reduction as in
    hycon_loss: over the qualifying anchors, mean or sum. triplet_margin (triplet and
    hard-triplet): None is eq. 19 as printed (+ 1, no hinge), a number the hinge margin."""
    if kind not in COMPARISON_LOSSES:
        raise ValueError(f"kind: expected one of {COMPARISON_LOSSES}, got {kind!r}")
    from hycon_ext.pairs import INTER, INTRA, N_MODALITIES, row_descriptors
    from hycon_ext.reference import pair_masks

    z = torch.softmax(torch.cat([x_l, x_a, x_v], 0), dim=-1)
    sim = z @ z.T
    ids = row_descriptors(classes, N_MODALITIES)
    positives, negatives = pair_masks(ids, ids, [INTRA, INTER])  # docs/design.md pair modes
    return tuple(
        _comparison_term(kind, z, sim, positives[m], negatives[m], reduction, triplet_margin)
        for m in range(2)
    )


def hybrid_loss(
    x_l,
    x_a,
    x_v,
    classes,
    *,
    loss="hycon",
    alpha=0.8,
    beta=0.2,
    gamma=1.0,
    lambdas=(1.0, 1.0, 1.0),
    pair_selection=False,
    select_positives=True,
    select_negatives=True,
    refinement=True,
    reduction="mean",
    backend="auto",
    global_batch=False,
    memory=None,
    triplet_margin=None,
):
    """L_hybrid (eq. 16). loss="hycon" is hycon_ext's loss; the others replace IAMCL/IEMCL by
    eqs. 18-20 and keep SCL (with its margin alpha). reduction: "mean" over the anchors, or
    "sum" (paper 3.5: "summed over all data samples").

    global_batch=True (training under torchrun): every local anchor is paired with the global
    batch of all ranks through hycon_loss_distributed (values are the global loss; gradients
    scaled for DDP's averaging). Only loss="hycon" supports it: the comparison losses would see
    the local batch only, so they are refused rather than silently computed per rank.

    memory: a hycon_ext.HyConLoss with a cross-batch memory (hybrid_memory), built from these
    same keywords; loss="hycon" then goes through it, so that its memory persists across steps.
    """
    # imported here: --no-contrastive runs need no hycon_ext
    from hycon_ext import hycon_loss
    from hycon_ext.distributed import hycon_loss_distributed

    if loss not in CONTRASTIVE_LOSSES:
        raise ValueError(f"loss: expected one of {CONTRASTIVE_LOSSES}, got {loss!r}")
    if loss == "hycon" and memory is not None:
        out = memory(x_l, x_a, x_v, classes)
        return HybridTerms(out.total, out.scl, out.iamcl, out.iemcl)
    if memory is not None:
        raise ValueError(f"memory: a cross-batch memory applies to loss 'hycon' only, not {loss!r}")
    if loss == "hycon":
        fn = hycon_loss_distributed if global_batch else hycon_loss
        out = fn(
            x_l,
            x_a,
            x_v,
            classes,
            alpha=alpha,
            beta=beta,
            gamma=gamma,
            lambdas=tuple(lambdas),
            pair_selection=pair_selection,
            select_positives=select_positives,
            select_negatives=select_negatives,
            refinement=refinement,
            reduction=reduction,
            backend=backend,
        )
        return HybridTerms(out.total, out.scl, out.iamcl, out.iemcl)
    if global_batch:
        raise ValueError(
            f"loss: {loss!r} pairs only the local batch; under torchrun (several "
            f"processes) only 'hycon' pairs anchors across the global batch"
        )
    scl = hycon_loss(
        x_l,
        x_a,
        x_v,
        classes,
        alpha=alpha,
        lambdas=(0.0, 0.0, 1.0),
        reduction=reduction,
        backend=backend,
    ).scl
    intra, inter = comparison_loss(loss, x_l, x_a, x_v, classes, reduction, triplet_margin)
    total = lambdas[0] * intra + lambdas[1] * inter + lambdas[2] * scl
    return HybridTerms(total, scl, intra, inter)


def hybrid_memory(loss_kwargs, memory_size, global_batch=False):
    """hycon_ext.HyConLoss with a FIFO of the memory_size most recent samples (None when 0), whose
    state a checkpoint saves; global_batch: the memory holds the gathered global batch of all ranks.
    Pass it to hybrid_loss as ``memory``."""
    if memory_size == 0:
        return None
    from hycon_ext import HyConLoss

    return HyConLoss(memory_size=memory_size, distributed=global_batch, **loss_kwargs)
