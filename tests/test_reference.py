"""hycon_ext.pairs and the pure-PyTorch twins (hycon_ext.reference) against the oracle."""

import math

import pytest
import torch
from oracle import oracle_pair_stats

from hycon_ext import pairs, reference

MODES = [pairs.INTRA, pairs.INTER, pairs.SAME_SAMPLE]


def test_row_descriptors_are_modality_major_with_global_samples():
    ids = pairs.row_descriptors(torch.tensor([5, 6]), 3, sample_offset=10)
    assert ids.dtype == torch.int64
    assert ids.tolist() == [[5, 0, 10], [6, 0, 11], [5, 1, 10], [6, 1, 11], [5, 2, 10], [6, 2, 11]]


def test_row_descriptors_reject_non_1d_labels():
    with pytest.raises(ValueError, match="labels must be 1-D"):
        pairs.row_descriptors(torch.zeros(2, 2, dtype=torch.int64), 3)


@pytest.mark.parametrize(
    "beta, k, h",
    [(0.2, 32, 6), (0.2, 4, 1), (0.01, 10, 1), (1.0, 7, 7), (0.29, 100, 29), (0.5, 9, 4)],
)
def test_selection_size(beta, k, h):
    assert pairs.selection_size(beta, k) == h


def test_similarity_is_softmax_dot_product():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    y = torch.randn(3, 5, generator=g, dtype=torch.float64)
    s = reference.similarity(x, y)
    for i in range(4):
        for j in range(3):
            zx = torch.exp(x[i]) / torch.exp(x[i]).sum()
            zy = torch.exp(y[j]) / torch.exp(y[j]).sum()
            assert s[i, j].item() == pytest.approx(float((zx * zy).sum()), abs=1e-15)


def _random_rows(seed, n_modalities, k, d, n_classes, offset, anchor_rows):
    """Softmax rows and descriptors of one global batch; anchors: a subset of its rows."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_classes, (k,), generator=g)
    zc = torch.softmax(torch.randn(n_modalities * k, d, generator=g, dtype=torch.float64), -1)
    c_ids = pairs.row_descriptors(labels, n_modalities, sample_offset=offset)
    return zc[anchor_rows], zc, c_ids[anchor_rows], c_ids


def _assert_matches_oracle(stats, za, zc, a_ids, c_ids, modes, targets, **pair_selection):
    expected = oracle_pair_stats(
        za.tolist(), zc.tolist(), a_ids.tolist(), c_ids.tolist(), modes, targets, **pair_selection
    )
    assert stats.shape == (za.shape[0], len(modes), 4)
    torch.testing.assert_close(
        stats, torch.tensor(expected, dtype=stats.dtype), rtol=1e-12, atol=1e-12
    )


# (seed, modalities, K, d, classes, sample offset, anchor rows, modes)
CASES = [
    (0, 3, 6, 5, 2, 0, slice(None), MODES),
    (1, 3, 5, 4, 3, 7, slice(2, 9), [pairs.SAME_SAMPLE, pairs.INTRA, pairs.INTER]),
    (2, 2, 7, 3, 2, 0, slice(None), MODES),
    (3, 4, 4, 6, 1, 3, slice(0, 16, 3), [pairs.INTER]),
    (4, 3, 1, 4, 2, 0, slice(None), MODES),
]


@pytest.mark.parametrize("seed, n_mod, k, d, n_classes, offset, rows, modes", CASES)
def test_pair_sums_matches_oracle(seed, n_mod, k, d, n_classes, offset, rows, modes):
    za, zc, a_ids, c_ids = _random_rows(seed, n_mod, k, d, n_classes, offset, rows)
    targets = [0.3 + 0.2 * i for i in range(len(modes))]
    stats = reference.pair_sums(za, zc, a_ids, c_ids, modes, targets)
    _assert_matches_oracle(stats, za, zc, a_ids, c_ids, modes, targets)


@pytest.mark.parametrize("seed, n_mod, k, d, n_classes, offset, rows, modes", CASES)
@pytest.mark.parametrize("h", [1, 2, 50])
@pytest.mark.parametrize(
    "select_positives, select_negatives", [(True, True), (True, False), (False, True)]
)
def test_hard_pair_sums_matches_oracle(
    seed, n_mod, k, d, n_classes, offset, rows, modes, h, select_positives, select_negatives
):
    za, zc, a_ids, c_ids = _random_rows(seed, n_mod, k, d, n_classes, offset, rows)
    targets = [1.0, 0.8, 0.8][: len(modes)]
    stats = reference.hard_pair_sums(
        za, zc, a_ids, c_ids, modes, targets, h, 0.5, select_positives, select_negatives
    )
    _assert_matches_oracle(
        stats,
        za,
        zc,
        a_ids,
        c_ids,
        modes,
        targets,
        h=h,
        gamma=0.5,
        select_positives=select_positives,
        select_negatives=select_negatives,
    )


def test_hard_pair_sums_breaks_ties_towards_the_lower_candidate_index():
    # Candidates 1, 2 (positives) are one row, 3, 4 (negatives) another, with dyadic entries
    # so every similarity is exact and the ties survive any summation order. With h = 1 the
    # lower index is kept, so only it gets gradient.
    z = torch.tensor(
        [
            [0.5, 0.25, 0.25],
            [0.25, 0.5, 0.25],
            [0.25, 0.5, 0.25],
            [0.125, 0.125, 0.75],
            [0.125, 0.125, 0.75],
        ],
        dtype=torch.float64,
    )
    ids = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 0, 2], [1, 0, 3], [1, 0, 4]])
    zc = z.clone().requires_grad_()
    stats = reference.hard_pair_sums(
        z[:1], zc, ids[:1], ids, [pairs.INTRA], [1.0], 1, 1.0, True, True
    )
    _assert_matches_oracle(
        stats.detach(), z[:1], z, ids[:1], ids, [pairs.INTRA], [1.0], h=1, gamma=1.0
    )
    (grad,) = torch.autograd.grad(stats[0, 0, [0, 1, 3]].sum(), zc)
    touched = grad.abs().sum(-1) > 0
    assert touched.tolist() == [False, True, False, True, False]


def test_twins_gradients_match_finite_differences():
    za, zc, a_ids, c_ids = _random_rows(5, 3, 4, 3, 2, 0, slice(None))
    za = za.clone().requires_grad_()
    zc = zc.clone().requires_grad_()

    def plain(a, c):
        return reference.pair_sums(a, c, a_ids, c_ids, MODES, [1.0, 0.8, 0.8])

    def hard_negatives(a, c):  # w_p is detached by design, so gradcheck only the w_n side
        return reference.hard_pair_sums(
            a, c, a_ids, c_ids, MODES, [1.0, 0.8, 0.8], 2, 1.0, False, True
        )

    assert torch.autograd.gradcheck(plain, (za, zc))
    assert torch.autograd.gradcheck(hard_negatives, (za, zc))


def test_detached_positive_weights_carry_no_gradient():
    # One anchor with two positives, selection on positives only: w_p is a constant, so
    # d pos_sum / d zc[j] = w_j * za for the positives and 0 for the anchor's own row.
    z = torch.softmax(torch.randn(3, 4, dtype=torch.float64), -1)
    ids = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 0, 2]])
    za, zc = z[:1], z.clone().requires_grad_()
    stats = reference.hard_pair_sums(
        za, zc, ids[:1], ids, [pairs.INTRA], [1.0], 5, 1.0, True, False
    )
    (grad,) = torch.autograd.grad(stats[0, 0, 0], zc)
    w = torch.softmax(1.0 / (za @ z[1:].T + 1.0), -1)[0]
    torch.testing.assert_close(grad[1:], w[:, None] * za.expand(2, -1), rtol=1e-12, atol=1e-15)
    assert grad[0].abs().max() == 0


def _is_pair(mode, a, c):
    same_mod, same_smp, same_cls = bool(a[1] == c[1]), bool(a[2] == c[2]), bool(a[0] == c[0])
    if mode == pairs.INTRA:
        return same_mod and not same_smp
    if mode == pairs.INTER:
        return not same_mod and not (same_smp and same_cls)
    return same_smp and not same_mod


@pytest.mark.parametrize("pair_selection", [False, True])
def test_nan_similarity_poisons_the_row_sums_but_not_its_count(pair_selection):
    za, zc, a_ids, c_ids = _random_rows(6, 3, 4, 3, 2, 0, slice(None))
    zc = zc.clone()
    zc[5] = float("nan")  # row 5 (modality 1, sample 1) is a pair of some anchors only
    options = dict(h=1, gamma=1.0) if pair_selection else {}
    if pair_selection:
        stats = reference.hard_pair_sums(
            za, zc, a_ids, c_ids, MODES, [1.0, 0.8, 0.8], 1, 1.0, True, True
        )
    else:
        stats = reference.pair_sums(za, zc, a_ids, c_ids, MODES, [1.0, 0.8, 0.8])
    # NaN ordered as 0, like the twin does before poisoning.
    expected = torch.tensor(
        oracle_pair_stats(
            za.tolist(),
            zc.nan_to_num(0.0).tolist(),
            a_ids.tolist(),
            c_ids.tolist(),
            MODES,
            [1.0, 0.8, 0.8],
            **options,
        ),
        dtype=torch.float64,
    )
    poisoned = torch.tensor([[_is_pair(mode, a, c_ids[5]) for mode in MODES] for a in a_ids])
    assert poisoned.any() and not poisoned.all()
    sums = stats[..., [0, 1, 3]]
    assert torch.equal(torch.isnan(sums), poisoned[..., None].expand_as(sums))
    torch.testing.assert_close(sums[~poisoned], expected[..., [0, 1, 3]][~poisoned])
    torch.testing.assert_close(stats[..., 2], expected[..., 2])


def test_unknown_mode_and_mismatched_targets_are_rejected():
    z = torch.softmax(torch.randn(3, 2), -1)
    ids = pairs.row_descriptors(torch.tensor([0]), 3)
    with pytest.raises(ValueError, match="modes: unknown pair mode 7"):
        reference.pair_sums(z, z, ids, ids, [7], [1.0])
    with pytest.raises(ValueError, match="targets: expected one target per mode"):
        reference.pair_sums(z, z, ids, ids, MODES, [1.0])
    with pytest.raises(ValueError, match="h: expected at least 1"):
        reference.hard_pair_sums(z, z, ids, ids, MODES, [1.0] * 3, 0, 1.0, True, True)
    with pytest.raises(ValueError, match="gamma: expected a number > 0"):
        reference.pair_terms(z, z, ids, ids, MODES, [1.0] * 3, 1, 0.0, True, True, True, True)


def test_reference_hycon_loss_is_the_reference_backend(make_batch):
    x_l, x_a, x_v, labels = make_batch(6, 4)
    a = reference.hycon_loss(x_l, x_a, x_v, labels, pair_selection=True, alpha=0.7)
    from hycon_ext import hycon_loss

    b = hycon_loss(x_l, x_a, x_v, labels, pair_selection=True, alpha=0.7, backend="reference")
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert math.isfinite(a.total.item())


def test_reference_hycon_loss_only_takes_the_reference_backend(make_batch):
    with pytest.raises(ValueError, match="backend: hycon_ext.reference.hycon_loss only"):
        reference.hycon_loss(*make_batch(3, 2), backend="ext")
