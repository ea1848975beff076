"""Independent float64 oracle for the HyCon losses, from the paper's equations and docs/losses.md.

Plain Python floats and loops over anchors and pairs; nothing is shared with hycon_ext.
Rows are addressed as (modality, sample); the candidate index used for tie-breaking is
the stacked row index modality * K + sample.

Any number of modalities M >= 2 (`oracle_loss_multi`), a cross-batch memory of earlier
samples' representations that only serve as candidates (memory rows are other samples; their
candidate index follows the batch's: M * K + modality * Q + slot, oldest slot first), and
reduction "sum" (the per-anchor terms summed, not averaged).

Gradients: the loss detaches the positive weights w_p, so finite differences of the
oracle must hold them fixed. `oracle_loss` returns the weights it used; pass them back as
`frozen_weights` when evaluating at perturbed inputs (see `oracle_grad`).
"""

import math
from fractions import Fraction


def _softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _dot(u, v):
    return sum(a * b for a, b in zip(u, v))


def _selection_size(beta, k):
    # Decimal value of beta, so that e.g. 0.29 * 100 is 29, not 28.999...
    return max(1, math.floor(Fraction(str(beta)) * k))


def _select(pairs, h, hardest_first):
    """The first h pairs (similarity, index) ordered by hardness, ties to the lower index."""
    return sorted(pairs, key=hardest_first)[:h]


def _contrastive_anchor(positives, negatives, target, key, opts, frozen_weights, record):
    """(ratio, refine) of one anchor from its (similarity, index) pairs."""
    h = opts["h"]
    if opts["pair_selection"] and opts["select_positives"]:
        kept_p = _select(positives, h, lambda p: (p[0], p[1]))
        if frozen_weights is not None:
            w_p = frozen_weights[key]
        else:
            w_p = _softmax([1.0 / (s + opts["gamma"]) for s, _ in kept_p])
        record[key] = w_p
        pos = sum(s * w for (s, _), w in zip(kept_p, w_p))
    else:
        kept_p = positives
        pos = sum(s for s, _ in positives)
    if opts["pair_selection"] and opts["select_negatives"] and negatives:
        kept_n = _select(negatives, h, lambda p: (-p[0], p[1]))
        w_n = _softmax([s for s, _ in kept_n])
        neg = sum(s * w for (s, _), w in zip(kept_n, w_n))
    else:
        neg = sum(s for s, _ in negatives)
    refine = sum((s - target) ** 2 for s, _ in kept_p) / len(kept_p)
    return pos / (pos + neg), refine


def oracle_loss(x_l, x_a, x_v, labels, **options):
    """HyCon loss terms as floats: dict(total, scl, iamcl, iemcl, weights).

    x_*: K lists of d floats; labels: K ints.
    """
    return oracle_loss_multi((x_l, x_a, x_v), labels, **options)


def _mean_or_sum(values, reduction):
    if reduction == "sum":
        return sum(values)
    return sum(values) / len(values) if values else 0.0


def oracle_loss_multi(
    xs,
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
    memory_xs=None,
    memory_labels=(),
    frozen_weights=None,
):
    """dict(total, scl, iamcl, iemcl, weights) of M modality batches xs (M lists of K rows).

    memory_xs: M lists of Q rows (earlier samples, oldest first) with memory_labels (Q ints),
    or None. They are candidates only: never anchors, never the anchor's own sample.
    """
    k = len(labels)
    n_mod = len(xs)
    z = [[_softmax(list(map(float, row))) for row in x] for x in xs]
    zm = [[_softmax(list(map(float, row))) for row in x] for x in (memory_xs or [[]] * n_mod)]
    q = len(memory_labels)
    opts = dict(
        h=_selection_size(beta, k + q),
        gamma=gamma,
        pair_selection=pair_selection,
        select_positives=select_positives,
        select_negatives=select_negatives,
    )
    record = {}

    # SCL (eq. 6): every anchor, its own sample in the other modalities (never a memory row).
    scl_terms = []
    for m in range(n_mod):
        for i in range(k):
            scl_terms.append(
                0.5 * sum((_dot(z[m][i], z[n][i]) - alpha) ** 2 for n in range(n_mod) if n != m)
            )
    scl = _mean_or_sum(scl_terms, reduction)

    # IAMCL (eqs. 7-9) and IEMCL (eqs. 10-12).
    terms = {}
    for name, target in (("iamcl", 1.0), ("iemcl", alpha)):
        ratios, refines = [], []
        for m in range(n_mod):
            modalities = [m] if name == "iamcl" else [n for n in range(n_mod) if n != m]
            for i in range(k):
                positives, negatives = [], []
                for n in modalities:
                    for j in range(k):
                        pair = (_dot(z[m][i], z[n][j]), n * k + j)
                        if labels[j] != labels[i]:
                            negatives.append(pair)
                        elif j != i:
                            positives.append(pair)
                    for j in range(q):
                        pair = (_dot(z[m][i], zm[n][j]), n_mod * k + n * q + j)
                        (positives if memory_labels[j] == labels[i] else negatives).append(pair)
                if not positives:
                    continue  # anchors without a positive are left out of both means
                ratio, refine = _contrastive_anchor(
                    positives, negatives, target, (name, m, i), opts, frozen_weights, record
                )
                ratios.append(ratio)
                refines.append(refine)
        value = -_mean_or_sum(ratios, reduction)
        if refinement:
            value += _mean_or_sum(refines, reduction)
        terms[name] = value

    total = lambdas[0] * terms["iamcl"] + lambdas[1] * terms["iemcl"] + lambdas[2] * scl
    return dict(total=total, scl=scl, iamcl=terms["iamcl"], iemcl=terms["iemcl"], weights=record)


def oracle_grad(x_l, x_a, x_v, labels, **options):
    """Central finite differences of oracle_loss[term] w.r.t. x_l, x_a, x_v (w_p held fixed)."""
    return oracle_grad_multi((x_l, x_a, x_v), labels, **options)


def oracle_grad_multi(xs, labels, *, term="total", eps=1e-6, **options):
    """Central finite differences of oracle_loss_multi[term] w.r.t. every batch in xs (the
    memory, if any, is held fixed, as are the weights w_p)."""
    xs = [[list(map(float, row)) for row in x] for x in xs]
    frozen = oracle_loss_multi(xs, labels, **options)["weights"]
    grads = []
    for x in xs:
        grad = [[0.0] * len(row) for row in x]
        for i, row in enumerate(x):
            for t in range(len(row)):
                saved = row[t]
                row[t] = saved + eps
                up = oracle_loss_multi(xs, labels, frozen_weights=frozen, **options)[term]
                row[t] = saved - eps
                down = oracle_loss_multi(xs, labels, frozen_weights=frozen, **options)[term]
                row[t] = saved
                grad[i][t] = (up - down) / (2 * eps)
        grads.append(grad)
    return grads


def oracle_pair_stats(
    za,
    zc,
    a_ids,
    c_ids,
    modes,
    targets,
    *,
    h=None,
    gamma=1.0,
    select_positives=True,
    select_negatives=True,
):
    """Per-anchor stats [pos_sum, neg_sum, pos_count, refine_sum] per mode (docs/design.md).

    za, zc: lists of softmax-normalised rows; a_ids, c_ids: [class, modality, sample] lists;
    modes: 0 intra-modal, 1 inter-modal, 2 same sample; h=None: no pair selection.
    """
    stats = []
    for a_row, (a_cls, a_mod, a_smp) in zip(za, a_ids):
        per_mode = []
        for mode, target in zip(modes, targets):
            positives, negatives = [], []
            for j, (c_row, (c_cls, c_mod, c_smp)) in enumerate(zip(zc, c_ids)):
                pair = (_dot(a_row, c_row), j)
                if mode == 0 and c_mod == a_mod and c_smp != a_smp:
                    (positives if c_cls == a_cls else negatives).append(pair)
                elif mode == 1 and c_mod != a_mod:
                    if c_cls != a_cls:
                        negatives.append(pair)
                    elif c_smp != a_smp:
                        positives.append(pair)
                elif mode == 2 and c_smp == a_smp and c_mod != a_mod:
                    positives.append(pair)
            selecting = h is not None and mode != 2
            if selecting and select_positives:
                kept_p = _select(positives, h, lambda p: (p[0], p[1]))
                w_p = _softmax([1.0 / (s + gamma) for s, _ in kept_p]) if kept_p else []
            else:
                kept_p, w_p = positives, [1.0] * len(positives)
            if selecting and select_negatives:
                kept_n = _select(negatives, h, lambda p: (-p[0], p[1]))
                w_n = _softmax([s for s, _ in kept_n]) if kept_n else []
            else:
                kept_n, w_n = negatives, [1.0] * len(negatives)
            per_mode.append(
                [
                    sum(s * w for (s, _), w in zip(kept_p, w_p)),
                    sum(s * w for (s, _), w in zip(kept_n, w_n)),
                    float(len(kept_p)),
                    sum((s - target) ** 2 for s, _ in kept_p),
                ]
            )
        stats.append(per_mode)
    return stats
