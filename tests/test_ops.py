"""The custom ops (torch.ops.hycon_ext.*) against their float64 pure-PyTorch twins.

Run: OMP_NUM_THREADS=1 python -m pytest tests/test_ops.py
"""

import itertools

import pytest
import torch

from hycon_ext import ops, reference
from hycon_ext.pairs import INTER, INTRA, SAME_SAMPLE, row_descriptors

# A missing build fails every test here (the ext_ops fixture), never skips: CI builds the kernels.
pytestmark = pytest.mark.usefixtures("ext_ops")

ALL_MODES = [INTRA, INTER, SAME_SAMPLE]
TARGETS = [1.0, 0.8, 0.8]
# (select_positives, select_negatives)
SELECTIONS = list(itertools.product([False, True], repeat=2))


def make_labels(k, pattern, gen):
    if pattern == "equal":
        return torch.zeros(k, dtype=torch.int64)
    if pattern == "distinct":
        return torch.arange(k)
    return torch.randint(0, 3, (k,), generator=gen)


def make_problem(
    k, n_modalities=3, d=6, pattern="random", seed=0, dtype=torch.float64, anchor_rows=None
):
    """Softmax-normalised rows with descriptors; anchors are a subset of the candidate rows."""
    gen = torch.Generator().manual_seed(seed)
    labels = make_labels(k, pattern, gen)
    c_ids = row_descriptors(labels, n_modalities)
    zc = torch.softmax(torch.randn(n_modalities * k, d, generator=gen, dtype=torch.float64), -1)
    rows = torch.arange(n_modalities * k) if anchor_rows is None else anchor_rows
    za = zc[rows]
    return za.to(dtype), zc.to(dtype), c_ids[rows].clone(), c_ids


def leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def compare(ext_fn, ref_fn, za, zc, atol=1e-10, rtol=1e-9, seed=1):
    """Values and gradients of ext_fn(za, zc) against ref_fn on float64 copies."""
    za_e, zc_e = leaves(za, zc)
    za_r, zc_r = leaves(za.double(), zc.double())
    out_e, out_r = ext_fn(za_e, zc_e), ref_fn(za_r, zc_r)
    assert out_e.dtype == (torch.float64 if za.dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(out_e.double(), out_r, atol=atol, rtol=rtol, equal_nan=True)
    weights = torch.randn(
        out_r.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    (out_e * weights.to(out_e.dtype)).sum().backward()
    (out_r * weights).sum().backward()
    torch.testing.assert_close(za_e.grad.double(), za_r.grad, atol=atol, rtol=rtol, equal_nan=True)
    torch.testing.assert_close(zc_e.grad.double(), zc_r.grad, atol=atol, rtol=rtol, equal_nan=True)
    return out_e


def run_pair_sums(module, a_ids, c_ids, modes=ALL_MODES, targets=TARGETS):
    return lambda za, zc: module.pair_sums(za, zc, a_ids, c_ids, modes, targets)


def run_hard(
    module,
    a_ids,
    c_ids,
    h,
    select_positives,
    select_negatives,
    gamma=1.0,
    modes=ALL_MODES,
    targets=TARGETS,
):
    return lambda za, zc: module.hard_pair_sums(
        za, zc, a_ids, c_ids, modes, targets, h, gamma, select_positives, select_negatives
    )


def run_terms(
    module,
    a_ids,
    c_ids,
    pair_selection,
    refinement,
    h=2,
    select_positives=True,
    select_negatives=True,
    gamma=1.0,
    modes=ALL_MODES,
    targets=TARGETS,
    constant_rows=0,
):
    return lambda za, zc: module.pair_terms(
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
        constant_rows,
    )


# ---------------------------------------------------------------- values and gradients


@pytest.mark.parametrize(
    "k,n_modalities,pattern,seed",
    [
        (1, 3, "random", 0),
        (5, 3, "equal", 1),
        (6, 3, "distinct", 2),
        (9, 3, "random", 3),
        (7, 2, "random", 4),
        (6, 4, "random", 5),
        (13, 3, "random", 6),
    ],
)
def test_pair_sums_matches_reference(k, n_modalities, pattern, seed):
    za, zc, a_ids, c_ids = make_problem(k, n_modalities, pattern=pattern, seed=seed)
    compare(run_pair_sums(ops, a_ids, c_ids), run_pair_sums(reference, a_ids, c_ids), za, zc)


@pytest.mark.parametrize("select_positives,select_negatives", SELECTIONS)
@pytest.mark.parametrize(
    "k,n_modalities,pattern,h,seed",
    [
        (1, 3, "random", 1, 0),
        (8, 3, "equal", 2, 1),
        (8, 3, "distinct", 3, 2),
        (12, 3, "random", 2, 3),
        (10, 2, "random", 3, 4),
        (7, 4, "random", 1, 5),
        (9, 3, "random", 1000, 6),  # h larger than every candidate count: all pairs kept
    ],
)
def test_hard_pair_sums_matches_reference(
    k, n_modalities, pattern, h, seed, select_positives, select_negatives
):
    za, zc, a_ids, c_ids = make_problem(k, n_modalities, pattern=pattern, seed=seed)
    compare(
        run_hard(ops, a_ids, c_ids, h, select_positives, select_negatives),
        run_hard(reference, a_ids, c_ids, h, select_positives, select_negatives),
        za,
        zc,
    )


@pytest.mark.parametrize("hard", [False, True])
def test_rectangular_anchor_subset(hard):
    """One rank's anchors (every third row) against all candidates, and a disjoint set."""
    k = 11
    za, zc, a_ids, c_ids = make_problem(k, anchor_rows=torch.arange(0, 3 * k, 3), seed=7)
    if hard:
        ext, ref = (
            run_hard(ops, a_ids, c_ids, 2, True, True),
            run_hard(reference, a_ids, c_ids, 2, True, True),
        )
    else:
        ext, ref = run_pair_sums(ops, a_ids, c_ids), run_pair_sums(reference, a_ids, c_ids)
    assert compare(ext, ref, za, zc).shape == (k, 3, 4)

    # Candidates that exclude the anchors (another rank's samples): global sample ids.
    labels = torch.randint(0, 2, (2 * k,), generator=torch.Generator().manual_seed(8))
    ids0, ids1 = row_descriptors(labels[:k], 3), row_descriptors(labels[k:], 3, sample_offset=k)
    z = torch.softmax(torch.randn(6 * k, 5, dtype=torch.float64), -1)
    compare(
        run_hard(ops, ids0, ids1, 3, True, True),
        run_hard(reference, ids0, ids1, 3, True, True),
        z[: 3 * k],
        z[3 * k :],
    )


def test_modes_subset_and_order():
    za, zc, a_ids, c_ids = make_problem(8, seed=9)
    modes, targets = [SAME_SAMPLE, INTRA], [0.5, 0.9]
    compare(
        run_pair_sums(ops, a_ids, c_ids, modes, targets),
        run_pair_sums(reference, a_ids, c_ids, modes, targets),
        za,
        zc,
    )
    compare(
        run_hard(ops, a_ids, c_ids, 2, True, True, 0.5, modes, targets),
        run_hard(reference, a_ids, c_ids, 2, True, True, 0.5, modes, targets),
        za,
        zc,
    )


@pytest.mark.parametrize("hard", [False, True])
def test_float32_close_to_float64_reference(hard):
    za, zc, a_ids, c_ids = make_problem(20, d=16, seed=10, dtype=torch.float32)
    if hard:
        ext, ref = (
            run_hard(ops, a_ids, c_ids, 4, True, True),
            run_hard(reference, a_ids, c_ids, 4, True, True),
        )
    else:
        ext, ref = run_pair_sums(ops, a_ids, c_ids), run_pair_sums(reference, a_ids, c_ids)
    compare(ext, ref, za, zc, atol=1e-5, rtol=1e-4)


def _beyond_int32(ids):
    """The same relations with class and sample ids outside int32: the engine's scalar loops."""
    shifted = ids.clone()
    shifted[:, [0, 2]] += 1 << 40
    return shifted


@pytest.mark.parametrize("k, anchors", [(37, None), (16, torch.arange(5, 48, 3))])
@pytest.mark.parametrize("hard", [False, True])
def test_float32_vector_rows_match_scalar_rows_and_reference(k, anchors, hard):
    """float32 rows with modality runs of >= 16 take the vector loops (csrc/cpu/row_vectors.h):
    K = 37 leaves a tail of one per run. Against the float64 reference, and against the scalar
    loops on the same problem, NaN and inf similarities included."""
    za, zc, a_ids, c_ids = make_problem(k, d=8, seed=12, dtype=torch.float32, anchor_rows=anchors)
    run = (lambda m, a, c: run_hard(m, a, c, 3, True, True)) if hard else run_pair_sums
    compare(run(ops, a_ids, c_ids), run(reference, a_ids, c_ids), za, zc, atol=1e-5, rtol=1e-4)

    zc[[4, k - 1], 1] = float("nan")  # in a vector block and, for K = 37, in a tail
    zc[k + 2] = float("inf")
    outs = []
    for ids in ((a_ids, c_ids), (_beyond_int32(a_ids), _beyond_int32(c_ids))):
        za_e, zc_e = leaves(za, zc)
        out = run(ops, *ids)(za_e, zc_e)
        torch.where(out.isfinite(), out, 0).sum().backward()
        outs.append((out, za_e.grad, zc_e.grad))
    for vector, scalar in zip(*outs):
        torch.testing.assert_close(vector, scalar, atol=1e-5, rtol=1e-5, equal_nan=True)


def test_many_chunks():
    """M large enough that anchors are processed in several chunks of the workspace."""
    k, d = 45000, 3  # 135,000 candidates: the workspace holds 32 rows, so 3 chunks
    za, zc, a_ids, c_ids = make_problem(k, d=d, seed=11, anchor_rows=torch.arange(0, 3 * k, 1930))
    assert za.shape[0] > 64
    compare(
        run_hard(ops, a_ids, c_ids, 50, True, True),
        run_hard(reference, a_ids, c_ids, 50, True, True),
        za,
        zc,
    )


def test_ties_keep_lower_candidate_index():
    """Exact dyadic similarities with many ties: the same pairs as the reference are kept,
    which the gradients (they land on the kept candidate rows) reveal."""
    gen = torch.Generator().manual_seed(12)
    k = 12
    labels = torch.randint(0, 3, (k,), generator=gen)
    ids = row_descriptors(labels, 3)
    z = torch.randint(0, 3, (3 * k, 4), generator=gen).double() / 4
    sims = z @ z.T
    assert sims.unique().numel() < sims.numel() // 10  # plenty of ties
    for h, (select_positives, select_negatives) in itertools.product([1, 2, 5], SELECTIONS):
        compare(
            run_hard(ops, ids, ids, h, select_positives, select_negatives),
            run_hard(reference, ids, ids, h, select_positives, select_negatives),
            z,
            z,
            atol=1e-12,
            rtol=1e-12,
        )


@pytest.mark.parametrize("hard", [False, True])
def test_nan_propagates(hard):
    za, zc, a_ids, c_ids = make_problem(6, seed=13)
    za, zc = za.clone(), zc.clone()
    za[2, 0] = float("nan")  # anchor 2: every pair NaN
    zc[9, 1] = float("nan")  # candidate 9: NaN in every anchor row that pairs with it
    if hard:
        ext, ref = (
            run_hard(ops, a_ids, c_ids, 2, True, True),
            run_hard(reference, a_ids, c_ids, 2, True, True),
        )
    else:
        ext, ref = run_pair_sums(ops, a_ids, c_ids), run_pair_sums(reference, a_ids, c_ids)
    stats = ext(za, zc)
    assert stats[2, :, [0, 1, 3]].isnan().all()
    assert not stats[..., 2].isnan().any()  # pos_count stays a count
    torch.testing.assert_close(stats, ref(za, zc), equal_nan=True)


TERMS_OPTIONS = [(False, True), (False, False), (True, True), (True, False)]


@pytest.mark.parametrize("pattern", ["random", "equal", "distinct"])
@pytest.mark.parametrize("pair_selection,refinement", TERMS_OPTIONS)
def test_pair_terms_matches_reference(pattern, pair_selection, refinement):
    za, zc, a_ids, c_ids = make_problem(
        7, pattern=pattern, seed=20, anchor_rows=torch.arange(0, 21, 3)
    )
    terms = compare(
        run_terms(ops, a_ids, c_ids, pair_selection, refinement),
        run_terms(reference, a_ids, c_ids, pair_selection, refinement),
        za,
        zc,
    )
    assert terms.shape == (2, 3)
    if pattern == "distinct":  # no positive anywhere: INTRA and INTER terms are exactly 0
        assert terms[:, :2].eq(0).all()
        assert terms[1, 2] == za.shape[0]


@pytest.mark.parametrize("select_positives,select_negatives", SELECTIONS)
def test_pair_terms_selection_sides_and_float32(select_positives, select_negatives):
    za, zc, a_ids, c_ids = make_problem(8, seed=21, dtype=torch.float32)
    compare(
        run_terms(
            ops,
            a_ids,
            c_ids,
            True,
            True,
            h=3,
            select_positives=select_positives,
            select_negatives=select_negatives,
            gamma=0.7,
        ),
        run_terms(
            reference,
            a_ids,
            c_ids,
            True,
            True,
            h=3,
            select_positives=select_positives,
            select_negatives=select_negatives,
            gamma=0.7,
        ),
        za,
        zc,
        atol=1e-5,
        rtol=1e-5,
    )


def test_pair_terms_equals_stats_combined_by_the_reference():
    """The op's terms are the reference combine of the op's own stats (one semantics)."""
    za, zc, a_ids, c_ids = make_problem(6, seed=22)
    modes, targets = [SAME_SAMPLE, INTRA], [0.8, 1.0]  # any mode order
    stats = ops.hard_pair_sums(za, zc, a_ids, c_ids, modes, targets, 2, 1.0, True, True)
    terms = ops.pair_terms(za, zc, a_ids, c_ids, modes, targets, 2, 1.0, True, True, True, True)
    torch.testing.assert_close(
        terms, reference.terms_from_stats(stats, modes, True), atol=1e-12, rtol=1e-12
    )


def test_pair_terms_zero_positive_sum_and_nan():
    # Orthogonal one-hot rows: every similarity between distinct rows is 0, so anchors with
    # positives have pos_sum == 0 and their ratio must be 0, not 0/0.
    k = 3
    zc = torch.eye(3 * k, dtype=torch.float64)
    c_ids = row_descriptors(torch.zeros(k, dtype=torch.int64), 3)
    terms = ops.pair_terms(
        zc, zc, c_ids, c_ids, ALL_MODES, TARGETS, 0, 1.0, True, True, False, True
    )
    assert torch.isfinite(terms).all()
    torch.testing.assert_close(
        terms,
        reference.pair_terms(
            zc, zc, c_ids, c_ids, ALL_MODES, TARGETS, 0, 1.0, True, True, False, True
        ),
    )
    za, zc, a_ids, c_ids = make_problem(5, seed=23)
    za = za.clone()
    za[1, 0] = float("nan")
    for pair_selection in (False, True):
        terms = run_terms(ops, a_ids, c_ids, pair_selection, True)(za, zc)
        assert terms[0].isnan().all()
        assert not terms[1].isnan().any()  # counts stay counts


def _terms_and_grads(module, za, zc, a_ids, c_ids, pair_selection, constant_rows):
    za, zc = leaves(za, zc)
    fn = run_terms(module, a_ids, c_ids, pair_selection, True, h=3, constant_rows=constant_rows)
    terms = fn(za, zc)
    weights = torch.randn(
        terms.shape, generator=torch.Generator().manual_seed(5), dtype=terms.dtype
    )
    (terms * weights).sum().backward()
    return terms.detach(), za.grad, zc.grad


@pytest.mark.parametrize("pair_selection", [False, True])
@pytest.mark.parametrize("k, anchor_step", [(7, 3), (12000, 200)])  # one chunk, several
def test_pair_terms_constant_rows(pair_selection, k, anchor_step):
    """The last constant_rows rows of zc get a zero gradient, without computing theirs; the
    terms and every other gradient are those of the full op."""
    za, zc, a_ids, c_ids = make_problem(
        k, d=3, seed=40, anchor_rows=torch.arange(0, 3 * k, anchor_step)
    )
    m = zc.shape[0]
    full = _terms_and_grads(ops, za, zc, a_ids, c_ids, pair_selection, 0)
    for constant_rows in (m // 3, m):
        terms, grad_za, grad_zc = _terms_and_grads(
            ops, za, zc, a_ids, c_ids, pair_selection, constant_rows
        )
        head = m - constant_rows
        assert torch.equal(terms, full[0]) and torch.equal(grad_za, full[1])
        torch.testing.assert_close(grad_zc[:head], full[2][:head], atol=1e-13, rtol=1e-12)
        assert grad_zc[head:].eq(0).all() and full[2][head:].abs().sum() > 0
        ref = _terms_and_grads(reference, za, zc, a_ids, c_ids, pair_selection, constant_rows)
        for ext_value, ref_value in zip((terms, grad_za, grad_zc), ref):
            torch.testing.assert_close(ext_value, ref_value, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("module", [ops, reference], ids=["ext", "reference"])
@pytest.mark.parametrize("constant_rows", [-1, 22])
def test_pair_terms_constant_rows_out_of_range(module, constant_rows):
    za, zc, a_ids, c_ids = make_problem(7, seed=41)  # 21 candidate rows
    with pytest.raises((RuntimeError, ValueError), match=r"constant_rows.*\[0, 21\].*got"):
        run_terms(module, a_ids, c_ids, False, True, constant_rows=constant_rows)(za, zc)


@pytest.mark.skipif(not ops.is_available("cuda"), reason="no CUDA device")
@pytest.mark.parametrize("pair_selection,refinement", TERMS_OPTIONS)
def test_pair_terms_cuda_matches_cpu(pair_selection, refinement):
    """On CUDA the terms come from at:: ops instead of the CPU loops: same values and grads."""
    za, zc, a_ids, c_ids = make_problem(9, seed=24)
    za[0, 0] = float("nan")
    cpu = run_terms(ops, a_ids, c_ids, pair_selection, refinement)
    gpu = run_terms(ops, a_ids.cuda(), c_ids.cuda(), pair_selection, refinement)
    compare(lambda a, c: gpu(a.cuda(), c.cuda()).cpu(), cpu, za, zc)


def run_loss_values(
    module,
    labels,
    pair_selection,
    refinement,
    select_positives=True,
    select_negatives=True,
    alpha=0.7,
    lambdas=(0.5, 2.0, 1.5),
    h=2,
    gamma=0.6,
):
    return lambda *xs: torch.stack(
        module.loss_values(
            *xs,
            labels,
            alpha,
            lambdas,
            h,
            gamma,
            select_positives,
            select_negatives,
            pair_selection,
            refinement,
        )
    )


@pytest.mark.parametrize("pair_selection,refinement", TERMS_OPTIONS)
@pytest.mark.parametrize("select_positives,select_negatives", SELECTIONS)
def test_loss_values_match_reference(
    make_batch, pair_selection, refinement, select_positives, select_negatives
):
    *xs, labels = make_batch(7, 5, seed=25)
    ext = run_loss_values(
        ops, labels, pair_selection, refinement, select_positives, select_negatives
    )
    ref = run_loss_values(
        reference, labels, pair_selection, refinement, select_positives, select_negatives
    )
    ext_leaves, ref_leaves = leaves(*xs), leaves(*xs)
    out, out_ref = ext(*ext_leaves), ref(*ref_leaves)
    torch.testing.assert_close(out, out_ref, atol=1e-10, rtol=1e-9)
    weights = torch.tensor([1.0, -0.5, 2.0, 0.25], dtype=torch.float64)
    (out * weights).sum().backward()
    (out_ref * weights).sum().backward()
    for x, x_ref in zip(ext_leaves, ref_leaves):
        torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("output", range(4))
def test_loss_values_one_output_backward(make_batch, output):
    """Outputs that do not reach the result get no gradient (undefined in the C++ backward)."""
    *xs, labels = make_batch(6, 5, seed=26)
    ext_leaves, ref_leaves = leaves(*xs), leaves(*xs)
    ops.loss_values(*ext_leaves, labels, 0.8, [1.0, 1.0, 1.0], 1, 1.0, True, True, True, True)[
        output
    ].backward()
    reference.loss_values(
        *ref_leaves, labels, 0.8, [1.0, 1.0, 1.0], 1, 1.0, True, True, True, True
    )[output].backward()
    for x, x_ref in zip(ext_leaves, ref_leaves):
        torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_loss_values_low_precision(make_batch, dtype):
    """Computed in float32 from the rounded inputs; gradients come back in the input dtype."""
    *xs, labels = make_batch(8, 5, seed=27, dtype=dtype)
    ext_leaves = leaves(*xs)
    out = ops.loss_values(*ext_leaves, labels, 0.8, [1.0, 1.0, 1.0], 2, 1.0, True, True, True, True)
    assert all(t.dtype == torch.float32 for t in out)
    out[0].backward()
    ref_leaves = leaves(*(x.double() for x in xs))
    ref = reference.loss_values(
        *ref_leaves, labels, 0.8, [1.0, 1.0, 1.0], 2, 1.0, True, True, True, True
    )
    ref[0].backward()
    torch.testing.assert_close(torch.stack(out).double(), torch.stack(ref), atol=1e-5, rtol=1e-5)
    for x, x_ref in zip(ext_leaves, ref_leaves):
        assert x.grad.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(x.grad.double(), x_ref.grad, atol=tol, rtol=tol)


@pytest.mark.parametrize("pair_selection", [False, True])
def test_loss_values_kept_similarities(make_batch, pair_selection):
    """On CPU the forward keeps S = z z^T when it fits one engine chunk; the backward reads it
    (and leaves it intact for a second backward) or, given an empty one, recomputes it."""
    *xs, labels = make_batch(10, 6, seed=31)
    hc = torch.ops.hycon_ext
    args = (0.8, [1.0, 0.5, 2.0], 3, 1.0, True, True, pair_selection, True)
    *_, z, terms, stats, state, sim = hc.loss_values(*xs, labels, *args)
    torch.testing.assert_close(sim, z @ z.T)

    def backward(kept):
        return hc.loss_values_backward(
            torch.tensor([1.0, -0.5, 2.0, 0.25], dtype=torch.float64),
            labels,
            z,
            *args[:2],
            *args[3:],
            terms,
            stats,
            state,
            kept,
            torch.float64,
        )

    with_sim = backward(sim)
    for got in (backward(sim), backward(sim.new_empty(0))):  # again, then recomputed
        for a, b in zip(got, with_sim):
            torch.testing.assert_close(a, b, atol=1e-14, rtol=1e-12)
    torch.testing.assert_close(sim, z @ z.T)  # not overwritten by dL/dS

    leaves_ = leaves(*xs)
    out = ops.loss_values(*leaves_, labels, *args)
    out[0].backward(retain_graph=True)
    first = [x.grad.clone() for x in leaves_]
    for x in leaves_:
        x.grad = None
    out[0].backward()
    for x, g in zip(leaves_, first):
        torch.testing.assert_close(x.grad, g, atol=0, rtol=0)


def test_loss_values_does_not_keep_similarities_past_one_chunk():
    # 3K = 2100 rows: 2100^2 > the engine's 2^22-element workspace, so S is computed in chunks.
    gen = torch.Generator().manual_seed(32)
    xs = [torch.randn(700, 3, generator=gen) for _ in range(3)]
    labels = torch.randint(0, 5, (700,), generator=gen)
    out = torch.ops.hycon_ext.loss_values(
        *xs, labels, 0.8, [1.0] * 3, 1, 1.0, True, True, False, True
    )
    assert out[-1].shape == (0,)


@pytest.mark.parametrize("pair_selection", [False, True])
@pytest.mark.parametrize("k", [10, 200, 700])
def test_loss_values_backward_matches_two_sided_pair_terms(k, pair_selection):
    """loss_values' CPU backward treats anchors and candidates as the same rows (one gradient,
    dS + dS^T, symmetrised in place for small S); pair_terms' backward keeps them apart. Over
    the three regimes of the former (3K = 30: symmetrised S; 600: kept S, two GEMMs; 2100:
    chunks) both must give the same gradients."""
    gen = torch.Generator().manual_seed(33)
    xs = [torch.randn(k, 3, generator=gen, dtype=torch.float64) for _ in range(3)]
    labels = torch.randint(0, 4, (k,), generator=gen)
    alpha, lambdas, h, gamma = 0.7, (0.5, 2.0, 1.5), max(1, k // 5), 0.6
    weights = torch.tensor([1.0, -0.5, 2.0, 0.25], dtype=torch.float64)

    fused = leaves(*xs)
    out = torch.stack(
        ops.loss_values(*fused, labels, alpha, lambdas, h, gamma, True, True, pair_selection, True)
    )
    (out * weights).sum().backward()

    split = leaves(*xs)
    z = torch.softmax(torch.cat(split), -1)
    ids = row_descriptors(labels, 3)
    terms = ops.pair_terms(
        z, z, ids, ids, ALL_MODES, [1.0, alpha, alpha], h, gamma, True, True, pair_selection, True
    )
    out_split = torch.stack(reference.combine_terms(terms[0], terms[1], lambdas))
    (out_split * weights).sum().backward()

    torch.testing.assert_close(out, out_split, atol=1e-12, rtol=1e-10)
    for a, b in zip(fused, split):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-12, rtol=1e-9)


def test_similarity_matches_reference():
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    compare(ops.similarity, reference.similarity, x, y)
    compare(ops.similarity, reference.similarity, x.float(), y.float(), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- gradcheck


def test_gradcheck_similarity():
    x, y = leaves(torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64))
    assert torch.autograd.gradcheck(ops.similarity, (x, y))


def test_gradcheck_pair_sums():
    za, zc, a_ids, c_ids = make_problem(5, d=4, seed=15, anchor_rows=torch.arange(0, 15, 2))
    assert torch.autograd.gradcheck(run_pair_sums(ops, a_ids, c_ids), tuple(leaves(za, zc)))


@pytest.mark.parametrize("select_positives,select_negatives", SELECTIONS)
def test_gradcheck_hard_pair_sums(select_positives, select_negatives):
    za, zc, a_ids, c_ids = make_problem(6, d=4, seed=16)
    fn = run_hard(ops, a_ids, c_ids, 2, select_positives, select_negatives, gamma=0.5)
    row_sims = (za @ zc.T).sort(dim=-1).values
    assert (row_sims.diff(dim=-1) > 1e-5).all()  # the finite differences keep the selection
    # w_p is detached by definition, so finite differences of pos_sum differ from its
    # gradient under positive selection; that column is checked against the reference above.
    columns = [1, 3] if select_positives else [0, 1, 3]
    assert torch.autograd.gradcheck(lambda a, c: fn(a, c)[..., columns], tuple(leaves(za, zc)))


@pytest.mark.parametrize("pair_selection,refinement", TERMS_OPTIONS)
def test_gradcheck_pair_terms(pair_selection, refinement):
    za, zc, a_ids, c_ids = make_problem(6, d=4, seed=16, anchor_rows=torch.arange(0, 18, 2))
    # select_positives=False: w_p is detached by definition, so finite differences would disagree
    # with the gradient of the positive side (checked against the reference above).
    fn = run_terms(ops, a_ids, c_ids, pair_selection, refinement, select_positives=False)
    assert torch.autograd.gradcheck(lambda a, c: fn(a, c)[0], tuple(leaves(za, zc)))


@pytest.mark.parametrize("pair_selection", [False, True])
def test_gradcheck_loss_values(make_batch, pair_selection):
    # select_positives=False: w_p is detached by definition (see test_gradcheck_pair_terms).
    *xs, labels = make_batch(5, 4, seed=28)
    fn = run_loss_values(ops, labels, pair_selection, True, select_positives=False)
    assert torch.autograd.gradcheck(fn, tuple(leaves(*xs)))


# ---------------------------------------------------------------- opcheck


def _opcheck_cases(make_batch):
    za, zc, a_ids, c_ids = make_problem(5, d=4, seed=17, anchor_rows=torch.arange(0, 15, 2))
    za, zc = leaves(za, zc)
    n, n_modes = za.shape[0], len(ALL_MODES)
    grad_stats = torch.randn(n, n_modes, 4, dtype=torch.float64)
    _, state = torch.ops.hycon_ext.hard_pair_sums(
        za, zc, a_ids, c_ids, ALL_MODES, TARGETS, 2, 1.0, True, True
    )
    x, y = leaves(torch.randn(4, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64))
    hc = torch.ops.hycon_ext
    # The backward ops have no double backward: they are checked without requires_grad.
    xd, yd, zad, zcd = (t.detach() for t in (x, y, za, zc))
    _, stats, hard_state = hc.pair_terms(
        zad, zcd, a_ids, c_ids, ALL_MODES, TARGETS, 2, 1.0, True, True, True, False
    )
    grad_terms = torch.randn(2, n_modes, dtype=torch.float64)
    *xs, labels = make_batch(4, 3, seed=29)
    x_leaves, xs = leaves(*xs), [x.detach() for x in xs]
    loss_args = (0.8, [1.0, 0.5, 2.0], 1, 1.0, True, True)
    _, _, _, _, z, terms, loss_stats, loss_state, sim = hc.loss_values(
        *xs, labels, *loss_args, True, True
    )
    assert sim.shape == (12, 12)  # kept for the backward: small enough for one chunk
    return [
        (hc.similarity.default, (x, y)),
        (hc.similarity_backward.default, (torch.randn(4, 6, dtype=torch.float64), xd, yd)),
        (hc.pair_sums.default, (za, zc, a_ids, c_ids, ALL_MODES, TARGETS)),
        (hc.pair_sums_backward.default, (grad_stats, zad, zcd, a_ids, c_ids, ALL_MODES, TARGETS)),
        (
            hc.pair_sums_backward.default,
            (grad_stats, zad, zcd, a_ids, c_ids, ALL_MODES, TARGETS, 4),
        ),
        (
            hc.hard_pair_sums.default,
            (za, zc, a_ids, c_ids, ALL_MODES, TARGETS, 2, 1.0, True, False),
        ),
        (
            hc.hard_pair_sums_backward.default,
            (
                grad_stats,
                zad,
                zcd,
                a_ids,
                c_ids,
                ALL_MODES,
                TARGETS,
                1.0,
                True,
                True,
                state.detach(),
            ),
        ),
        (
            hc.hard_pair_sums_backward.default,
            (grad_stats, zad, zcd, a_ids, c_ids, ALL_MODES, TARGETS, 1.0, True, True)
            + (state.detach(), 6),
        ),
        (
            hc.pair_terms.default,
            (za, zc, a_ids, c_ids, ALL_MODES, TARGETS, 0, 1.0, True, True, False, True),
        ),
        (
            hc.pair_terms.default,
            (za, zc, a_ids, c_ids, ALL_MODES, TARGETS, 2, 0.5, True, True, True, False),
        ),
        (
            hc.pair_terms.default,
            (za, zc, a_ids, c_ids, ALL_MODES, TARGETS, 2, 0.5, True, True, True, False, 5),
        ),
        (
            hc.pair_terms_backward.default,
            (
                grad_terms,
                zad,
                zcd,
                a_ids,
                c_ids,
                ALL_MODES,
                TARGETS,
                1.0,
                True,
                True,
                True,
                False,
                stats,
                hard_state,
            ),
        ),
        (
            hc.pair_terms_backward.default,
            (grad_terms, zad, zcd, a_ids, c_ids, ALL_MODES, TARGETS, 1.0, True, True, True)
            + (False, stats, hard_state, zcd.shape[0]),
        ),
        (hc.loss_values.default, (*x_leaves, labels, *loss_args, False, True)),
        (hc.loss_values.default, (*x_leaves, labels, *loss_args, True, False)),
        *[
            (
                hc.loss_values_backward.default,
                (
                    torch.randn(4, dtype=torch.float64),
                    labels,
                    z,
                    0.8,
                    [1.0, 0.5, 2.0],
                    1.0,
                    True,
                    True,
                    True,
                    True,
                    terms,
                    loss_stats,
                    loss_state,
                    kept,
                    torch.float64,
                ),
            )
            for kept in (sim, sim.new_empty(0))
        ],  # kept similarities, or recomputed
    ]


@pytest.mark.parametrize("case", range(17))
def test_opcheck(make_batch, case):
    op, args = _opcheck_cases(make_batch)[case]
    torch.library.opcheck(op, args)


# ---------------------------------------------------------------- bad input and availability


def _bad_calls(make_batch):
    za, zc, a_ids, c_ids = make_problem(3, d=4)
    hc = torch.ops.hycon_ext
    grad = torch.zeros(9, 3, 4, dtype=torch.float64)
    _, state = hc.hard_pair_sums(za, zc, a_ids, c_ids, ALL_MODES, TARGETS, 1, 1.0, True, True)
    pair = lambda *args: hc.pair_sums(*args)  # noqa: E731
    x_l, _, _, labels = make_batch(3, 4)
    x_l = x_l.detach()
    loss = lambda *args: hc.loss_values(  # noqa: E731
        *args, 0.8, [1.0] * 3, 1, 1.0, True, True, False, True
    )
    _, _, _, _, z, terms, loss_stats, loss_state, sim = loss(x_l, x_l, x_l, labels)

    def back(pair_selection, stats, state, kept, grad=None):
        return hc.loss_values_backward(
            torch.zeros(4, dtype=torch.float64) if grad is None else grad,
            labels,
            z,
            0.8,
            [1.0] * 3,
            1.0,
            True,
            True,
            pair_selection,
            True,
            terms,
            stats,
            state,
            kept,
            torch.float64,
        )

    return [
        # Full messages, numbers included: a build with its own static libstdc++ lost (gcc 12)
        # or crashed on (gcc 13) the numbers (docs/gpu.md).
        (
            lambda: pair(za[0], zc, a_ids, c_ids, ALL_MODES, TARGETS),
            r"^za must be a 2-D tensor \(rows, d\), got 1-D",
        ),
        (lambda: pair(za, zc.float(), a_ids, c_ids, ALL_MODES, TARGETS), "same dtype"),
        (
            lambda: pair(za, zc[:, :3], a_ids, c_ids, ALL_MODES, TARGETS),
            "^za and zc must have the same feature size, got 4 and 3",
        ),
        (
            lambda: pair(za.long(), zc.long(), a_ids, c_ids, ALL_MODES, TARGETS),
            "za must be a floating",
        ),
        (lambda: pair(za, zc, a_ids.double(), c_ids, ALL_MODES, TARGETS), "a_ids must be an int64"),
        (lambda: pair(za, zc, a_ids[:4], c_ids, ALL_MODES, TARGETS), "a_ids must have one row"),
        (lambda: pair(za, zc, a_ids, c_ids[:, :2], ALL_MODES, TARGETS), "c_ids must have shape"),
        (lambda: pair(za, zc, a_ids, c_ids, [INTRA, 7], [1.0, 1.0]), "modes must hold"),
        (lambda: pair(za, zc, a_ids, c_ids, ALL_MODES, [1.0]), "targets must have one entry"),
        (
            lambda: hc.hard_pair_sums(za, zc, a_ids, c_ids, ALL_MODES, TARGETS, 0, 1.0, True, True),
            "h must be >= 1",
        ),
        (
            lambda: hc.hard_pair_sums(za, zc, a_ids, c_ids, ALL_MODES, TARGETS, 2, 0.0, True, True),
            "gamma must be > 0",
        ),
        (
            lambda: hc.pair_sums_backward(grad[:, :2], za, zc, a_ids, c_ids, ALL_MODES, TARGETS),
            "grad_stats must have shape",
        ),
        (
            lambda: hc.hard_pair_sums_backward(
                grad, za, zc, a_ids, c_ids, ALL_MODES, TARGETS, 1.0, True, True, state.float()
            ),
            "state must have dtype",
        ),
        (
            lambda: hc.hard_pair_sums_backward(
                grad, za, zc, a_ids, c_ids, ALL_MODES, TARGETS, 1.0, True, True, state[:, :, :6]
            ),
            "state must have shape",
        ),
        (lambda: hc.similarity(za, zc[None]), "y must be a 2-D"),
        (
            lambda: hc.pair_terms(
                za, zc, a_ids, c_ids, ALL_MODES, TARGETS, 0, 1.0, True, True, True, True
            ),
            "h must be >= 1",
        ),
        (
            lambda: hc.pair_terms_backward(
                grad[0, :2, :2],
                za,
                zc,
                a_ids,
                c_ids,
                ALL_MODES,
                TARGETS,
                1.0,
                True,
                True,
                False,
                True,
                grad,
                grad,
            ),
            "grad_terms must have shape",
        ),
        (
            lambda: hc.pair_terms_backward(
                torch.zeros(2, 3, dtype=torch.float64),
                za,
                zc,
                a_ids,
                c_ids,
                ALL_MODES,
                TARGETS,
                1.0,
                True,
                True,
                False,
                True,
                grad[:, :2],
                grad,
            ),
            "stats must have shape",
        ),
        (lambda: hc.similarity_backward(grad[:, 0], za, zc), "grad must have shape"),
        (lambda: loss(x_l, x_l[:, :3], x_l, labels), "x_a must have the shape of x_l"),
        (lambda: loss(x_l, x_l, x_l.float(), labels), "x_l and x_v must have the same dtype"),
        (lambda: loss(x_l, x_l, x_l, labels.double()), "labels must hold integer class ids"),
        (lambda: loss(x_l, x_l, x_l, labels[:2]), r"labels must have shape \(3,\)"),
        (lambda: loss(x_l[:0], x_l[:0], x_l[:0], labels[:0]), "at least one sample"),
        (
            lambda: hc.loss_values(
                x_l, x_l, x_l, labels, 0.8, [1.0], 1, 1.0, True, True, False, True
            ),
            "lambdas must hold three weights",
        ),
        (
            lambda: hc.loss_values(
                x_l, x_l, x_l, labels, 0.8, [1.0] * 3, 0, 1.0, True, True, True, True
            ),
            "h must be >= 1",
        ),
        (
            lambda: back(False, loss_stats, loss_state, sim, grad=torch.zeros(3)),
            "grad_losses must have shape",
        ),
        (
            lambda: back(
                False, loss_stats, loss_state, sim, grad=torch.zeros(4, dtype=torch.int64)
            ),
            "grad_losses must be a floating tensor",
        ),
        (
            lambda: back(False, loss_stats, loss_state, sim[:, :4]),
            r"^sim must be empty or have shape \(9, 9\), got \[9, 4\]",
        ),
        (lambda: back(False, loss_stats, loss_state, sim.float()), "sim must have the dtype"),
        (
            lambda: back(False, loss_stats[:2], loss_state, sim),
            r"stats must have shape \(9, 3, 4\)",
        ),
        (lambda: back(True, loss_stats, loss_stats, sim), r"state must have shape \(9, 3, 7\)"),
        (
            lambda: hc.pair_terms_backward(
                torch.zeros(2, 3, dtype=torch.int64),
                za,
                zc,
                a_ids,
                c_ids,
                ALL_MODES,
                TARGETS,
                1.0,
                True,
                True,
                False,
                True,
                grad,
                grad,
            ),
            "grad_terms must be a floating tensor",
        ),
    ]


@pytest.mark.parametrize("case", range(33))
def test_bad_input_names_the_argument(make_batch, case):
    call, message = _bad_calls(make_batch)[case]
    with pytest.raises(RuntimeError, match=message):
        call()


def _first_order_output(op, za, zc, a_ids, c_ids):
    """A differentiable scalar of one op (loss_values: of its za rows as three batches)."""
    if op == "pair_sums":
        return ops.pair_sums(za, zc, a_ids, c_ids, ALL_MODES, TARGETS).sum()
    if op == "hard_pair_sums":
        return ops.hard_pair_sums(
            za, zc, a_ids, c_ids, ALL_MODES, TARGETS, 1, 1.0, True, True
        ).sum()
    if op == "pair_terms":
        return ops.pair_terms(
            za, zc, a_ids, c_ids, ALL_MODES, TARGETS, 1, 1.0, True, True, True, True
        ).sum()
    x_l, x_a, x_v = za.chunk(3)
    return ops.loss_values(
        x_l, x_a, x_v, a_ids[:3, 0], 0.8, [1.0, 1.0, 1.0], 1, 1.0, True, True, True, True
    )[0]


@pytest.mark.parametrize("op", ["pair_sums", "hard_pair_sums", "pair_terms", "loss_values"])
def test_double_backward_is_a_clear_error(op):
    za, zc, a_ids, c_ids = make_problem(3, d=4)
    za, zc = leaves(za, zc)
    # Never a silently wrong second derivative: the error comes when the gradient is
    # differentiated (loss_values: already when its backward runs under create_graph).
    with pytest.raises(RuntimeError, match="does not support double backward"):
        (grad_za,) = torch.autograd.grad(
            _first_order_output(op, za, zc, a_ids, c_ids), za, create_graph=True
        )
        grad_za.sum().backward()


def test_is_available():
    assert ops.is_available("cpu")
    assert ops.is_available(torch.device("cpu"))
    assert not ops.is_available("meta")
    if not torch.cuda.is_available():
        assert not ops.is_available("cuda")


def test_torch_compile_fullgraph_matches_eager():
    """The fake kernels let Dynamo/AOTAutograd trace the ops with no graph break."""
    gen = torch.Generator().manual_seed(18)
    k = 10
    x0 = torch.randn(3 * k, 6, generator=gen, dtype=torch.float64)
    ids = row_descriptors(torch.randint(0, 3, (k,), generator=gen), 3)

    def loss(module, x):
        z = torch.softmax(x, -1)
        stats = module.hard_pair_sums(z, z, ids, ids, ALL_MODES, TARGETS, 3, 1.0, True, True)
        plain = module.pair_sums(z, z, ids, ids, ALL_MODES, TARGETS)
        ratio = stats[..., 0] / (stats[..., 0] + stats[..., 1])
        return ratio.sum() + stats[..., 3].sum() + plain.sum() + module.similarity(x, x).sum()

    x, x_ref = leaves(x0, x0)
    out = torch.compile(lambda t: loss(ops, t), fullgraph=True)(x)
    out_ref = loss(reference, x_ref)
    out.backward()
    out_ref.backward()
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(x.grad, x_ref.grad)
