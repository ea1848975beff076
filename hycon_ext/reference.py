"""Pure-PyTorch twins of the extension's ops and the eager reference loss.

Dense (N, M) masks built from the row descriptors, vectorised over rows and modes: this is
the baseline the benchmarks compare the kernels against and the twin the op tests use.
Semantics: docs/design.md ("Pair modes", "Per-anchor statistics") and docs/losses.md.
"""

import torch

from .pairs import INTER, INTRA, N_MODALITIES, SAME_SAMPLE, row_descriptors

_MODES = (INTRA, INTER, SAME_SAMPLE)


def similarity(x, y):
    """softmax(x) softmax(y)^T over the feature dimension: (N, d), (M, d) -> (N, M)."""
    return torch.softmax(x, dim=-1) @ torch.softmax(y, dim=-1).T


def pair_masks(a_ids, c_ids, modes):
    """Positive and negative masks, each (len(modes), N, M) bool."""
    same_class = a_ids[:, None, 0] == c_ids[None, :, 0]
    same_modality = a_ids[:, None, 1] == c_ids[None, :, 1]
    same_sample = a_ids[:, None, 2] == c_ids[None, :, 2]
    positives, negatives = [], []
    for mode in modes:
        if mode == INTRA:
            candidates = same_modality & ~same_sample
            positives.append(candidates & same_class)
            negatives.append(candidates & ~same_class)
        elif mode == INTER:
            positives.append(~same_modality & same_class & ~same_sample)
            negatives.append(~same_modality & ~same_class)
        elif mode == SAME_SAMPLE:
            positives.append(same_sample & ~same_modality)
            negatives.append(torch.zeros_like(same_sample))
        else:
            raise ValueError(f"modes: unknown pair mode {mode!r}, expected one of {_MODES}")
    return torch.stack(positives), torch.stack(negatives)


def _check_modes(modes, targets):
    if len(modes) != len(targets):
        raise ValueError(
            f"targets: expected one target per mode ({len(modes)}), got {len(targets)}"
        )


def _plain_sums(s, positives, negatives, target):
    """[pos_sum, neg_sum, pos_count, refine_sum] over all pairs, each (n_modes, N)."""
    pos_sum = torch.where(positives, s, 0).sum(-1)
    neg_sum = torch.where(negatives, s, 0).sum(-1)
    pos_count = positives.sum(-1).to(s.dtype)
    refine_sum = torch.where(positives, (s - target) ** 2, 0).sum(-1)
    return pos_sum, neg_sum, pos_count, refine_sum


def _poison(pos_sum, neg_sum):
    """0, or NaN where a row's pairs (all of them, kept or not) include a NaN similarity."""
    return (pos_sum + neg_sum).detach() * 0


def _stack_stats(pos_sum, neg_sum, pos_count, refine_sum, poison):
    """(N, n_modes, 4) from per-column (n_modes, N) tensors.

    A NaN similarity among a row's pairs makes all three sums of that row NaN (not only the
    sum it falls in); pos_count stays a count so the loss still sees the anchor.
    """
    stats = torch.stack(
        (pos_sum + poison, neg_sum + poison, pos_count, refine_sum + poison), dim=-1
    )
    return stats.transpose(0, 1)


def pair_sums(za, zc, a_ids, c_ids, modes, targets):
    """Per-anchor stats (N, len(modes), 4) = [pos_sum, neg_sum, pos_count, refine_sum].

    za (N, d), zc (M, d): softmax-normalised rows; a_ids (N, 3), c_ids (M, 3): descriptors;
    targets[k]: refinement target of modes[k].
    """
    _check_modes(modes, targets)
    s = za @ zc.T
    positives, negatives = pair_masks(a_ids, c_ids, modes)
    target = torch.tensor(targets, dtype=s.dtype, device=s.device)[:, None, None]
    pos_sum, neg_sum, pos_count, refine_sum = _plain_sums(s, positives, negatives, target)
    return _stack_stats(pos_sum, neg_sum, pos_count, refine_sum, _poison(pos_sum, neg_sum))


def _keep_hardest(s, mask, h, largest):
    """The h hardest pairs of `mask` per row, ties to the lower candidate index.

    Returns their similarities and whether each slot holds a pair, both (B, N, min(h, M)).
    """
    fill = float("-inf") if largest else float("inf")
    # NaN keys would make the order undefined; rows with NaN are poisoned afterwards anyway.
    key = torch.where(mask, s.detach().nan_to_num(0.0), fill)
    order = torch.sort(key, dim=-1, descending=largest, stable=True).indices[..., :h]
    kept = mask.gather(-1, order)
    values = s.expand_as(mask).gather(-1, order)
    return values, kept


def _masked_softmax(logits, kept):
    """softmax over the kept slots of each row; 0 in the others (all 0 if none is kept)."""
    any_kept = kept.any(-1, keepdim=True)
    shift = torch.where(kept, logits, float("-inf")).amax(-1, keepdim=True).detach()
    shift = torch.where(any_kept, shift, 0.0)
    # Unkept slots get exp(0) before masking so no inf can reach the backward.
    e = torch.where(kept, torch.exp(torch.where(kept, logits, shift) - shift), 0.0)
    return e / torch.where(any_kept, e.sum(-1, keepdim=True), 1.0)


def _with_modes(sums, modes_at, new):
    """sums (n_modes, N) with row modes_at[i] replaced by new[i].

    unbind + stack rather than index_copy: torch 2.11's inductor fails to compile
    index_copy's backward here (a copy_ into a permuted view).
    """
    rows = list(sums.unbind(0))
    for i, k in enumerate(modes_at):
        rows[k] = new[i]
    return torch.stack(rows)


def hard_pair_sums(
    za, zc, a_ids, c_ids, modes, targets, h, gamma, select_positives, select_negatives
):
    """pair_sums with HyCon-v2 pair selection (eqs. 13-15) on INTRA and INTER modes.

    Kept positives: the h with the smallest similarity, weighted by the detached
    softmax(1 / (s + gamma)); kept negatives: the h largest, weighted by softmax(s).
    select_positives / select_negatives = False keeps that side whole and unweighted.
    """
    _check_modes(modes, targets)
    if h < 1:
        raise ValueError(f"h: expected at least 1 pair kept per side, got {h}")
    if not gamma > 0:  # 1 / (s + gamma) must stay finite for s in [0, 1]
        raise ValueError(f"gamma: expected a number > 0, got {gamma!r}")
    s = za @ zc.T
    positives, negatives = pair_masks(a_ids, c_ids, modes)
    target = torch.tensor(targets, dtype=s.dtype, device=s.device)[:, None, None]
    pos_sum, neg_sum, pos_count, refine_sum = _plain_sums(s, positives, negatives, target)
    poison = _poison(pos_sum, neg_sum)

    selectable = [k for k, mode in enumerate(modes) if mode != SAME_SAMPLE]
    if selectable:
        rows = torch.tensor(selectable, device=s.device)
        if select_positives:
            values, kept = _keep_hardest(s, positives[rows], h, largest=False)
            weights = _masked_softmax(1.0 / (values.detach() + gamma), kept)
            pos_sum = _with_modes(pos_sum, selectable, (values * weights).sum(-1))
            pos_count = _with_modes(pos_count, selectable, kept.sum(-1).to(s.dtype))
            refine = torch.where(kept, (values - target[rows]) ** 2, 0).sum(-1)
            refine_sum = _with_modes(refine_sum, selectable, refine)
        if select_negatives:
            values, kept = _keep_hardest(s, negatives[rows], h, largest=True)
            weights = _masked_softmax(values, kept)
            neg_sum = _with_modes(neg_sum, selectable, (values * weights).sum(-1))

    return _stack_stats(pos_sum, neg_sum, pos_count, refine_sum, poison)


def terms_from_stats(stats, modes, refinement=True):
    """Loss terms (2, n_modes) = [sums over anchors; anchors with a positive] from stats.

    Per anchor and mode: c_ratio * ratio + refine_sum * (c_mean / pos_count + c_sum), with
    (c_ratio, c_mean, c_sum) = (-1, 1, 0) for INTRA and INTER (c_mean = 0 without refinement)
    and (0, 0, 1/2) for SAME_SAMPLE: one expression over all modes keeps the op count small.
    """
    pos_sum, neg_sum, pos_count, refine_sum = stats.unbind(-1)  # each (N, n_modes)
    pos_count = pos_count.detach()  # a count: no gradient (design.md)
    mean = 1.0 if refinement else 0.0
    same = [mode == SAME_SAMPLE for mode in modes]
    c_ratio, c_mean, c_sum = stats.new_tensor(
        (
            [0.0 if s else -1.0 for s in same],
            [0.0 if s else mean for s in same],
            [0.5 if s else 0.0 for s in same],
        )
    ).unbind()
    # Anchors without a positive have pos_sum = refine_sum = 0, so they add exactly 0; the
    # (pos_sum == 0) keeps their ratio 0 instead of 0/0 (also when similarities underflow).
    ratio = pos_sum / (pos_sum + neg_sum + (pos_sum == 0))
    per_anchor = torch.addcmul(ratio * c_ratio, refine_sum, c_mean / pos_count.clamp_min(1) + c_sum)
    counts = torch.count_nonzero(pos_count, dim=0).to(stats.dtype)
    return torch.stack((per_anchor.sum(0), counts))


def pair_terms(
    za,
    zc,
    a_ids,
    c_ids,
    modes,
    targets,
    h,
    gamma,
    select_positives,
    select_negatives,
    pair_selection,
    refinement,
    constant_rows=0,
):
    """Loss terms (2, len(modes)) of pair_sums (pair_selection=False; h, gamma, select_positives and
    select_negatives are then ignored) or hard_pair_sums stats: see terms_from_stats. The last
    constant_rows rows of zc are constants: no gradient flows to them."""
    if not 0 <= constant_rows <= zc.shape[0]:
        raise ValueError(
            f"constant_rows: expected an integer in [0, {zc.shape[0]}] (the rows of zc), "
            f"got {constant_rows}"
        )
    if constant_rows:
        zc = torch.cat(
            (zc[: zc.shape[0] - constant_rows], zc[zc.shape[0] - constant_rows :].detach())
        )
    if pair_selection:
        stats = hard_pair_sums(
            za, zc, a_ids, c_ids, modes, targets, h, gamma, select_positives, select_negatives
        )
    else:
        stats = pair_sums(za, zc, a_ids, c_ids, modes, targets)
    return terms_from_stats(stats, modes, refinement)


def combine_terms(sums, counts, lambdas):
    """(total, scl, iamcl, iemcl) from per-mode term sums and counts ordered (iamcl, iemcl, scl):
    term k = sums[k] / counts[k] (0 when counts[k] is 0), total = sum_k lambdas[k] * term k."""
    means = sums / counts.clamp_min(1)
    iamcl, iemcl, scl = means.unbind()
    return (means * means.new_tensor(lambdas)).sum(), scl, iamcl, iemcl


def loss_values(
    x_l,
    x_a,
    x_v,
    labels,
    alpha,
    lambdas,
    h,
    gamma,
    select_positives,
    select_negatives,
    pair_selection,
    refinement,
):
    """(total, scl, iamcl, iemcl) of the three (K, d) batches (twin of ops.loss_values)."""
    z = torch.softmax(torch.cat((x_l, x_a, x_v)), dim=-1)
    ids = row_descriptors(labels, N_MODALITIES)
    terms = pair_terms(
        z,
        z,
        ids,
        ids,
        _MODES,
        (1.0, alpha, alpha),
        h,
        gamma,
        select_positives,
        select_negatives,
        pair_selection,
        refinement,
    )
    return combine_terms(terms[0], terms[1], lambdas)


def hycon_loss(
    x_l,
    x_a,
    x_v,
    labels,
    *,
    alpha=0.8,
    beta=0.2,
    gamma=1.0,
    lambdas=(1.0, 1.0, 1.0),
    pair_selection=False,
    select_positives=True,
    select_negatives=True,
    refinement=True,
    reduction="mean",
    backend="reference",
):
    """The HyCon loss in eager PyTorch: hycon_ext.hycon_loss(..., backend="reference").

    Same signature as hycon_ext.hycon_loss; backend can only be "reference".
    """
    from .loss import hycon_loss as _hycon_loss  # loss.py imports this module

    if backend != "reference":
        raise ValueError(
            f"backend: hycon_ext.reference.hycon_loss only computes 'reference', got {backend!r}"
        )
    return _hycon_loss(
        x_l,
        x_a,
        x_v,
        labels,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        lambdas=lambdas,
        pair_selection=pair_selection,
        select_positives=select_positives,
        select_negatives=select_negatives,
        refinement=refinement,
        reduction=reduction,
        backend="reference",
    )
