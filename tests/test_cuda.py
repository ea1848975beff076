"""The CUDA kernels against the CPU kernels (which test_ops.py checks against the float64
reference), float16/bfloat16 accuracy against the pure-PyTorch reference, opcheck on CUDA and
the loss on CUDA. Skipped where no CUDA device exists; fails when one exists but the kernels
are not built for it.

Run: python -m pytest tests/test_cuda.py
HYCON_TEST_SEED=N shifts every seed here, so a run draws fresh inputs and labels (bench/gpu_check.sh
runs the file with 0 and with a random N).
"""

import itertools
import os

import pytest
import torch

from hycon_ext import hycon_loss, reference
from hycon_ext.pairs import INTER, INTRA, SAME_SAMPLE, row_descriptors

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

SEED = int(os.environ.get("HYCON_TEST_SEED", "0"))
ALL_MODES = [INTRA, INTER, SAME_SAMPLE]
TARGETS = [1.0, 0.8, 0.8]
# (select_positives, select_negatives)
SELECTIONS = list(itertools.product([False, True], repeat=2))
# float32: the CPU and CUDA paths sum in different orders (and the CPU sums in double).
TOLERANCES = {torch.float64: dict(atol=1e-10, rtol=1e-9), torch.float32: dict(atol=2e-5, rtol=2e-5)}


def dtype_id(dtype):
    return str(dtype).removeprefix("torch.")  # test ids read float32, not dtype0


@pytest.fixture(scope="module")
def ops():
    from hycon_ext import ops

    if not ops.is_available("cuda"):
        pytest.fail(
            "a CUDA device is present but hycon_ext has no CUDA kernels; build with "
            "`pip install -e . --no-build-isolation` where nvcc and a CUDA torch exist"
        )
    return ops


def make_problem(
    k, n_modalities=3, d=8, n_classes=3, seed=0, dtype=torch.float64, quantized=False, anchors="all"
):
    """CPU inputs: softmax-normalised candidate rows, a subset of them as anchors.

    quantized: rows of quarters (d = 4 bins holding 0..4 quarters), so every similarity is a
    multiple of 1/16, exact on any device in any order: CPU and CUDA see bitwise-equal
    similarities with many exact ties, and must select the very same pairs.
    """
    gen = torch.Generator().manual_seed(SEED + seed)
    labels = torch.randint(0, n_classes, (k,), generator=gen)
    c_ids = row_descriptors(labels, n_modalities)
    m = n_modalities * k
    if quantized:
        bins = torch.randint(0, d, (m, 4), generator=gen)
        zc = torch.zeros(m, d, dtype=torch.float64).scatter_add_(
            1, bins, torch.full((m, 4), 0.25, dtype=torch.float64)
        )
    else:
        zc = torch.softmax(2 * torch.randn(m, d, generator=gen, dtype=torch.float64), -1)
    rows = torch.arange(m) if anchors == "all" else torch.randperm(m, generator=gen)[: m // 2]
    return zc[rows].to(dtype), zc.to(dtype), c_ids[rows].clone(), c_ids


def on(device, *tensors, grad=False):
    return [t.detach().to(device).requires_grad_(grad and t.is_floating_point()) for t in tensors]


def values_and_grads(fn, za, zc, device, seed=1):
    """fn(za, zc) on `device` and the gradients of a fixed random weighting of its output."""
    za_d, zc_d = on(device, za, zc, grad=True)
    out = fn(za_d, zc_d)
    weights = torch.randn(
        out.shape, generator=torch.Generator().manual_seed(SEED + seed), dtype=torch.float64
    )
    # A NaN in the output must not leak into unrelated gradients through weight * NaN.
    (torch.where(out.isnan(), 0, out) * weights.to(device, out.dtype)).sum().backward()
    return out.detach().cpu(), za_d.grad.cpu(), zc_d.grad.cpu()


def assert_cuda_matches_cpu(fn, za, zc, **tol):
    for cuda_t, cpu_t in zip(
        values_and_grads(fn, za, zc, "cuda"), values_and_grads(fn, za, zc, "cpu")
    ):
        assert cuda_t.dtype == cpu_t.dtype
        torch.testing.assert_close(cuda_t, cpu_t, equal_nan=True, **scaled_tolerance(cpu_t, tol))


def scaled_tolerance(expected, tol):
    """float32: atol at least rtol x the tensor's largest entry. A gradient entry sums thousands
    of terms that cancel, so its rounding error scales with the largest entries, not its own."""
    if expected.dtype != torch.float32 or expected.numel() == 0 or not tol:
        return tol
    largest = expected.abs().nan_to_num(0.0).max().item()
    return dict(tol, atol=max(tol["atol"], tol["rtol"] * largest))


def pair_sums_fn(ops, a_ids, c_ids, modes=ALL_MODES, targets=TARGETS):
    def fn(za, zc):
        a, c = on(za.device, a_ids, c_ids)
        return ops.pair_sums(za, zc, a, c, modes, targets)

    return fn


def hard_fn(
    ops,
    a_ids,
    c_ids,
    h,
    select_positives,
    select_negatives,
    gamma=1.0,
    modes=ALL_MODES,
    targets=TARGETS,
):
    def fn(za, zc):
        a, c = on(za.device, a_ids, c_ids)
        return ops.hard_pair_sums(
            za, zc, a, c, modes, targets, h, gamma, select_positives, select_negatives
        )

    return fn


def hard_with_state(
    za,
    zc,
    a_ids,
    c_ids,
    device,
    h,
    select_positives,
    select_negatives,
    modes=ALL_MODES,
    targets=TARGETS,
    gamma=1.0,
):
    args = on(device, za, zc, a_ids, c_ids)
    stats, state = torch.ops.hycon_ext.hard_pair_sums(
        *args, modes, targets, h, gamma, select_positives, select_negatives
    )
    return stats.cpu(), state.cpu()


# ---------------------------------------------------------------- CUDA against CPU


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
def test_similarity_matches_cpu(ops, dtype):
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(37, 11, generator=gen, dtype=dtype)
    y = torch.randn(300, 11, generator=gen, dtype=dtype)
    assert_cuda_matches_cpu(ops.similarity, x, y, **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize(
    "k,n_modalities,n_classes,anchors,seed",
    [
        (1, 3, 1, "all", 0),
        (9, 3, 1, "all", 1),  # all labels equal
        (40, 3, 3, "half", 2),  # rectangular: half the rows as anchors
        (150, 2, 40, "all", 3),  # M = 300 > one block's stride
        (90, 4, 5, "half", 4),
    ],
)
def test_pair_sums_matches_cpu(ops, dtype, k, n_modalities, n_classes, anchors, seed):
    za, zc, a_ids, c_ids = make_problem(
        k, n_modalities, n_classes=n_classes, seed=seed, dtype=dtype, anchors=anchors
    )
    assert_cuda_matches_cpu(pair_sums_fn(ops, a_ids, c_ids), za, zc, **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("select_positives,select_negatives", SELECTIONS)
@pytest.mark.parametrize(
    "k,n_classes,h,anchors,seed",
    [
        (1, 1, 1, "all", 0),
        (12, 3, 2, "half", 1),
        (12, 3, 50, "all", 2),  # h larger than every set: all pairs kept
        (200, 4, 37, "all", 3),  # M = 600: sets span several block strides
        (120, 2, 1, "half", 4),
    ],
)
def test_hard_pair_sums_matches_cpu(
    ops, dtype, select_positives, select_negatives, k, n_classes, h, anchors, seed
):
    za, zc, a_ids, c_ids = make_problem(
        k, n_classes=n_classes, seed=seed, dtype=dtype, anchors=anchors
    )
    fn = hard_fn(ops, a_ids, c_ids, h, select_positives, select_negatives, gamma=0.7)
    assert_cuda_matches_cpu(fn, za, zc, **TOLERANCES[dtype])
    # Same selected pairs: the threshold indices agree exactly (random data has no near-ties).
    _, state_cuda = hard_with_state(
        za, zc, a_ids, c_ids, "cuda", h, select_positives, select_negatives
    )
    _, state_cpu = hard_with_state(
        za, zc, a_ids, c_ids, "cpu", h, select_positives, select_negatives
    )
    torch.testing.assert_close(state_cuda[..., [1, 3]], state_cpu[..., [1, 3]], atol=0, rtol=0)
    torch.testing.assert_close(state_cuda, state_cpu, **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("h", [1, 3, 17])
def test_hard_pair_sums_ties_select_the_lower_index_like_cpu(ops, dtype, h):
    # Similarities are multiples of 1/16: massive exact ties, bitwise equal on both devices.
    za, zc, a_ids, c_ids = make_problem(300, n_classes=3, d=5, seed=h, dtype=dtype, quantized=True)
    stats_cuda, state_cuda = hard_with_state(za, zc, a_ids, c_ids, "cuda", h, True, True)
    stats_cpu, state_cpu = hard_with_state(za, zc, a_ids, c_ids, "cpu", h, True, True)
    torch.testing.assert_close(state_cuda[..., :4], state_cpu[..., :4], atol=0, rtol=0)
    thresholds = state_cpu[..., [0, 2]]
    finite = thresholds[thresholds.isfinite()]
    assert finite.numel() > 0 and ((finite * 16) == (finite * 16).round()).all()
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(state_cuda, state_cpu, **tol)
    torch.testing.assert_close(stats_cuda, stats_cpu, **tol)
    fn = hard_fn(ops, a_ids, c_ids, h, True, True)
    assert_cuda_matches_cpu(fn, za, zc, **tol)


def test_many_modes_and_several_chunks_match_cpu(ops):
    # 6 modes: two kernel launches per chunk; N * M = 6600^2 > 2^25: several row chunks.
    za, zc, a_ids, c_ids = make_problem(2200, d=6, n_classes=7, seed=5, dtype=torch.float32)
    modes, targets = [INTRA, INTER, SAME_SAMPLE, INTER, INTRA, SAME_SAMPLE], [1.0, 0.8, 0.7] * 2
    tol = dict(atol=1e-4, rtol=1e-4)  # sums over thousands of pairs in float32
    assert_cuda_matches_cpu(pair_sums_fn(ops, a_ids, c_ids, modes, targets), za, zc, **tol)
    fn = hard_fn(ops, a_ids, c_ids, 440, True, True, modes=modes, targets=targets)
    assert_cuda_matches_cpu(fn, za, zc, **tol)


@pytest.mark.parametrize("pair_selection", [False, True])
@pytest.mark.parametrize("k", [30, 2200])  # one chunk; several
def test_constant_rows_match_cpu(ops, pair_selection, k):
    """pair_terms with the last rows of zc constants: zero gradient there, the rest as on CPU."""
    za, zc, a_ids, c_ids = make_problem(k, d=6, seed=8)
    constant_rows = zc.shape[0] // 3

    def fn(za, zc):
        a, c = on(za.device, a_ids, c_ids)
        args = (ALL_MODES, TARGETS, 3, 1.0, True, True, pair_selection, True, constant_rows)
        return ops.pair_terms(za, zc, a, c, *args)

    assert_cuda_matches_cpu(fn, za, zc, **TOLERANCES[torch.float64])
    _, _, grad_zc = values_and_grads(fn, za, zc, "cuda")
    assert grad_zc[-constant_rows:].eq(0).all() and grad_zc[:-constant_rows].abs().sum() > 0


@pytest.mark.parametrize("n,m", [(0, 6), (6, 0), (0, 0)])
def test_empty_inputs_match_cpu(ops, n, m):
    za, zc = torch.full((n, 4), 0.25), torch.full((m, 4), 0.25)
    a_ids = torch.zeros(n, 3, dtype=torch.int64)
    c_ids = torch.zeros(m, 3, dtype=torch.int64)
    assert_cuda_matches_cpu(pair_sums_fn(ops, a_ids, c_ids), za, zc)
    assert_cuda_matches_cpu(hard_fn(ops, a_ids, c_ids, 2, True, True), za, zc)


@pytest.mark.parametrize("selected", [False, True])
def test_nan_rows_match_cpu(ops, selected):
    za, zc, a_ids, c_ids = make_problem(20, seed=6)
    zc = zc.clone()
    zc[3, 2] = float("nan")  # every anchor pairing with candidate 3 gets NaN sums
    fn = hard_fn(ops, a_ids, c_ids, 4, True, True) if selected else pair_sums_fn(ops, a_ids, c_ids)
    out_cuda = fn(*on("cuda", za, zc)).cpu()
    out_cpu = fn(za, zc)
    assert out_cpu.isnan().any() and not out_cpu[..., 2].isnan().any()
    torch.testing.assert_close(out_cuda, out_cpu, equal_nan=True, **TOLERANCES[torch.float64])


# ---------------------------------------------------------------- float16 / bfloat16


def max_error(values, expected):
    return max((v.double() - e.double()).abs().max().item() for v, e in zip(values, expected))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("op", ["similarity", "pair_sums", "hard_pair_sums"])
def test_half_precision_error_at_most_twice_the_reference(ops, dtype, op):
    """Kernel error against a float32 reference <= 2 x the pure-PyTorch reference's error in
    the same precision, for values and gradients (same rounded inputs for all three)."""
    za, zc, a_ids, c_ids = make_problem(64, d=16, seed=7, dtype=torch.float64)
    if op == "similarity":
        za, zc = torch.log(za), torch.log(zc)  # logits: similarity applies the softmax
    za, zc = za.to(dtype), zc.to(dtype)  # the rounding every variant starts from
    a, c = on("cuda", a_ids, c_ids)
    calls = {
        "similarity": lambda impl: lambda x, y: impl.similarity(x, y),
        "pair_sums": lambda impl: lambda x, y: impl.pair_sums(x, y, a, c, ALL_MODES, TARGETS),
        "hard_pair_sums": lambda impl: (
            lambda x, y: impl.hard_pair_sums(x, y, a, c, ALL_MODES, TARGETS, 12, 1.0, True, True)
        ),
    }
    exact = values_and_grads(calls[op](reference), za.float(), zc.float(), "cuda")
    kernel = values_and_grads(calls[op](ops), za, zc, "cuda")
    eager = values_and_grads(calls[op](reference), za, zc, "cuda")
    kernel_error, eager_error = max_error(kernel, exact), max_error(eager, exact)
    assert eager_error > 0
    assert kernel_error <= 2 * eager_error, (kernel_error, eager_error)


# ---------------------------------------------------------------- opcheck and the loss


def opcheck_cases():
    za, zc, a_ids, c_ids = make_problem(10, seed=8)
    za, zc, a, c = on("cuda", za, zc, a_ids, c_ids)
    x, y = on(
        "cuda", torch.randn(5, 7, dtype=torch.float64), torch.randn(9, 7, dtype=torch.float64)
    )
    leaf = lambda t: t.detach().requires_grad_()  # noqa: E731
    grad4 = torch.randn(za.shape[0], 3, 4, dtype=torch.float64, device="cuda")
    _, state = torch.ops.hycon_ext.hard_pair_sums(
        za, zc, a, c, ALL_MODES, TARGETS, 3, 1.0, True, True
    )
    lib = torch.ops.hycon_ext
    x_l, x_a, x_v = on("cuda", *torch.randn(3, 6, 4, dtype=torch.float64))
    labels = torch.tensor([0, 1, 0, 2, 1, 0], device="cuda")
    loss_args = (0.8, [1.0, 0.5, 2.0], 1, 1.0, True, True, True, True)
    _, _, _, _, z, terms, stats, loss_state, sim = lib.loss_values(
        x_l, x_a, x_v, labels, *loss_args
    )
    assert sim.numel() == 0  # kept on CPU only
    return [
        (lib.loss_values.default, (leaf(x_l), leaf(x_a), leaf(x_v), labels, *loss_args)),
        (
            lib.loss_values_backward.default,
            (
                torch.randn(4, dtype=torch.float64, device="cuda"),
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
                stats,
                loss_state,
                sim,
                torch.float64,
            ),
        ),
        (lib.similarity.default, (leaf(x), leaf(y))),
        (
            lib.similarity_backward.default,
            (torch.randn(5, 9, dtype=torch.float64, device="cuda"), x, y),
        ),
        (lib.pair_sums.default, (leaf(za), leaf(zc), a, c, ALL_MODES, TARGETS)),
        (lib.pair_sums_backward.default, (grad4, za, zc, a, c, ALL_MODES, TARGETS)),
        (
            lib.hard_pair_sums.default,
            (leaf(za), leaf(zc), a, c, ALL_MODES, TARGETS, 3, 1.0, True, False),
        ),
        (
            lib.hard_pair_sums_backward.default,
            (grad4, za, zc, a, c, ALL_MODES, TARGETS, 1.0, True, True, state),
        ),
    ]


def test_opcheck_on_cuda(ops):
    for op, args in opcheck_cases():
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("pair_selection", [False, True])
def test_loss_ext_matches_reference_on_cuda(ops, dtype, pair_selection):
    gen = torch.Generator().manual_seed(SEED + 9)
    k, d = 48, 10
    xs = [2 * torch.randn(k, d, generator=gen, dtype=dtype) for _ in range(3)]
    labels = torch.randint(0, 4, (k,), generator=gen)
    results = {}
    for backend in ("ext", "reference"):
        leaves = on("cuda", *xs, grad=True)
        out = hycon_loss(*leaves, labels.cuda(), pair_selection=pair_selection, backend=backend)
        out.total.backward()
        results[backend] = (torch.stack(list(out)).detach(), *(x.grad for x in leaves))
    tol = TOLERANCES[dtype]
    for ext_t, ref_t in zip(results["ext"], results["reference"]):
        torch.testing.assert_close(ext_t, ref_t, **tol)


# ---------------------------------------------------------------- the fused loss_values path
# HYCON_CUDA_FUSED=1 selects the fused kernels (csrc/cuda/fused_loss.cuh) for loss_values
# without selection; it is read on every call, so these tests compare both paths in one process.

FUSED_ENV = "HYCON_CUDA_FUSED"
LOSS_ARGS = dict(
    alpha=0.8,
    lambdas=[0.7, 1.3, 2.0],
    h=1,
    gamma=1.0,
    select_positives=True,
    select_negatives=True,
    pair_selection=False,
    refinement=True,
)


def loss_args(**overrides):
    """LOSS_ARGS with overrides, as loss_values' arguments after the labels (the dict keeps the
    schema's order)."""
    return tuple(dict(LOSS_ARGS, **overrides).values())


# Output dtypes of the inputs: half precision gradients are rounded once to their dtype.
HALF_TOLERANCES = {
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}


@pytest.fixture
def path(request, monkeypatch):
    """'fused' sets HYCON_CUDA_FUSED=1 for the test, 'chunked' clears it."""
    if request.param == "fused":
        monkeypatch.setenv(FUSED_ENV, "1")
    else:
        monkeypatch.delenv(FUSED_ENV, raising=False)
    return request.param


def loss_inputs(k, d, seed, dtype=torch.float64, n_classes=3, scale=2.0):
    gen = torch.Generator().manual_seed(SEED + seed)
    xs = [
        (scale * torch.randn(k, d, generator=gen, dtype=torch.float64)).to(dtype) for _ in range(3)
    ]
    labels = torch.randint(0, n_classes, (k,), generator=gen)
    grad_losses = torch.randn(4, generator=gen, dtype=torch.float64)
    return xs, labels, grad_losses


def loss_step(xs, labels, grad_losses, device, **overrides):
    """loss_values forward and backward on `device`: ((4,) losses, terms, stats, 3 gradients),
    all on the CPU; grad_losses weights (total, scl, iamcl, iemcl)."""
    leaves = on(device, *xs, grad=True)
    out = torch.ops.hycon_ext.loss_values(*leaves, labels.to(device), *loss_args(**overrides))
    losses = torch.stack(out[:4])
    grads = torch.autograd.grad((losses * grad_losses.to(device, losses.dtype)).sum(), leaves)
    return (losses.detach().cpu(), out[5].cpu(), out[6].cpu(), *(g.cpu() for g in grads))


def assert_steps_close(got, expected, tol, equal_nan=False):
    """Like assert_close, with atol at least rtol x the expected tensor's largest entry (see
    scaled_tolerance), in every dtype."""
    for name, g, e in zip(
        ["losses", "terms", "stats", "grad_l", "grad_a", "grad_v"], got, expected
    ):
        largest = e.double().abs().nan_to_num(0.0).max().item() if e.numel() else 0.0
        torch.testing.assert_close(
            g.double(),
            e.double(),
            equal_nan=equal_nan,
            msg=lambda m, name=name: f"{name}: {m}",
            atol=max(tol["atol"], tol["rtol"] * largest),
            rtol=tol["rtol"],
        )


@pytest.mark.parametrize("path", ["fused", "chunked"], indirect=True)
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=dtype_id
)
@pytest.mark.parametrize(
    "k,d,refinement",
    [
        (1, 1, True),
        (5, 50, True),
        (70, 64, False),  # 210 rows: tiles of 64 and 32 do not divide them
        (100, 200, True),
        (30, 256, True),
        (250, 50, True),  # 750 rows: several candidate-tile splits
    ],
)
def test_loss_values_cuda_matches_cpu_and_float64(ops, path, dtype, k, d, refinement):
    xs, labels, grad_losses = loss_inputs(k, d, seed=k + d, dtype=dtype)
    got = loss_step(xs, labels, grad_losses, "cuda", refinement=refinement)
    cpu = loss_step(xs, labels, grad_losses, "cpu", refinement=refinement)
    exact = loss_step([x.double() for x in xs], labels, grad_losses, "cpu", refinement=refinement)
    for t, c in zip(got, cpu):
        assert t.dtype == c.dtype and t.shape == c.shape
    if dtype in HALF_TOLERANCES:
        # Both devices compute in float32 from the same rounded inputs; gradients are rounded
        # to the inputs' dtype at the end.
        assert_steps_close(got[:3], cpu[:3], TOLERANCES[torch.float32])
        assert_steps_close(got[3:], cpu[3:], HALF_TOLERANCES[dtype])
        assert_steps_close(got[3:], exact[3:], HALF_TOLERANCES[dtype])
    else:
        assert_steps_close(got, cpu, TOLERANCES[dtype])
        assert_steps_close(
            got, exact, dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else TOLERANCES[dtype]
        )


@pytest.mark.parametrize("path", ["fused", "chunked"], indirect=True)
def test_loss_values_nan_input_matches_cpu(ops, path):
    xs, labels, grad_losses = loss_inputs(20, 9, seed=31)
    xs[1][4, 0] = float("nan")  # the row's similarities are all NaN
    got = loss_step(xs, labels, grad_losses, "cuda")
    cpu = loss_step(xs, labels, grad_losses, "cpu")
    assert cpu[2].isnan().any() and not cpu[2][..., 2].isnan().any()
    assert_steps_close(got[:3], cpu[:3], TOLERANCES[torch.float64], equal_nan=True)


@pytest.mark.parametrize("k,d", [(7, 3), (20, 300)])  # d = 300: the backward's chunked route
def test_fused_matches_chunked_path(ops, monkeypatch, k, d):
    xs, labels, grad_losses = loss_inputs(k, d, seed=40 + d, dtype=torch.float32)
    monkeypatch.setenv(FUSED_ENV, "1")
    fused = loss_step(xs, labels, grad_losses, "cuda")
    monkeypatch.delenv(FUSED_ENV)
    chunked = loss_step(xs, labels, grad_losses, "cuda")
    assert_steps_close(fused, chunked, TOLERANCES[torch.float32])


def test_fused_env_leaves_selection_on_the_chunked_path(ops, monkeypatch):
    xs, labels, grad_losses = loss_inputs(40, 16, seed=50, dtype=torch.float32)
    monkeypatch.setenv(FUSED_ENV, "1")
    with_env = loss_step(xs, labels, grad_losses, "cuda", pair_selection=True, h=5)
    monkeypatch.delenv(FUSED_ENV)
    without = loss_step(xs, labels, grad_losses, "cuda", pair_selection=True, h=5)
    for a, b in zip(with_env, without):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", ["fused", "chunked"], indirect=True)
def test_loss_values_gradcheck_on_cuda(ops, path):
    xs, labels, _ = loss_inputs(4, 5, seed=60)
    x_l, x_a, x_v = on("cuda", *xs, grad=True)
    lab = labels.cuda()

    def fn(x_l, x_a, x_v):
        return torch.ops.hycon_ext.loss_values(x_l, x_a, x_v, lab, *loss_args())[:4]

    assert torch.autograd.gradcheck(fn, (x_l, x_a, x_v))


@pytest.mark.parametrize("path", ["fused", "chunked"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
def test_loss_values_opcheck_on_cuda(ops, path, dtype):
    xs, labels, _ = loss_inputs(9, 6, seed=70, dtype=dtype)
    leaves = on("cuda", *xs, grad=True)
    lab = labels.cuda()
    args = loss_args()
    lib = torch.ops.hycon_ext
    torch.library.opcheck(lib.loss_values.default, (*leaves, lab, *args))
    _, _, _, _, z, terms, stats, state, sim = lib.loss_values(*leaves, lab, *args)
    grad_losses = torch.randn(4, dtype=dtype, device="cuda")
    torch.library.opcheck(
        lib.loss_values_backward.default,
        (
            grad_losses,
            lab,
            z,
            *args[:2],  # loss_values' arguments without h
            *args[3:],
            terms,
            stats,
            state,
            sim,
            dtype,
        ),
    )


@pytest.mark.parametrize("path", ["fused", "chunked"], indirect=True)
@pytest.mark.parametrize("pair_selection", [False, True])
def test_loss_values_is_bitwise_repeatable(ops, path, pair_selection):
    xs, labels, grad_losses = loss_inputs(700, 50, seed=80, dtype=torch.float32)
    first = loss_step(xs, labels, grad_losses, "cuda", pair_selection=pair_selection, h=140)
    for _ in range(2):
        again = loss_step(xs, labels, grad_losses, "cuda", pair_selection=pair_selection, h=140)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_fused_path_never_uses_tf32(ops, monkeypatch):
    """Plain FP32 products: allow_tf32 must not change a bit of the fused path's results."""
    monkeypatch.setenv(FUSED_ENV, "1")
    xs, labels, grad_losses = loss_inputs(300, 50, seed=90, dtype=torch.float32)
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        with_tf32 = loss_step(xs, labels, grad_losses, "cuda")
        torch.backends.cuda.matmul.allow_tf32 = False
        without = loss_step(xs, labels, grad_losses, "cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    for a, b in zip(with_tf32, without):
        assert torch.equal(a, b)


@pytest.mark.parametrize("k,d", [(64, 50), (333, 200)])
def test_fused_step_captures_in_a_cuda_graph(ops, monkeypatch, k, d):
    """A whole forward + backward step captured with torch.cuda.graph replays to the eager
    results, bit for bit, on fresh inputs copied into the captured tensors."""
    monkeypatch.setenv(FUSED_ENV, "1")
    static = [torch.zeros(k, d, device="cuda", requires_grad=True) for _ in range(3)]
    labels = torch.zeros(k, dtype=torch.int64, device="cuda")
    weights = torch.zeros(4, device="cuda")

    def step():
        out = torch.ops.hycon_ext.loss_values(*static, labels, *loss_args())
        losses = torch.stack(out[:4])
        return (losses, *torch.autograd.grad((losses * weights).sum(), static))

    def load(seed):
        xs, lab, grad_losses = loss_inputs(k, d, seed=seed, dtype=torch.float32)
        with torch.no_grad():
            for s, x in zip(static, xs):
                s.copy_(x)
            labels.copy_(lab)
            weights.copy_(grad_losses)

    load(100)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()  # warm-up outside the capture, as torch.cuda.graph requires
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for seed in (101, 102):
        load(seed)
        graph.replay()
        eager = step()
        for c, e in zip(captured, eager):
            assert torch.equal(c, e)
        assert torch.isfinite(captured[0]).all()


@pytest.mark.parametrize("pair_selection", [False, True])
def test_memory_of_four_modalities_moves_to_cuda_and_matches_cpu(ops, pair_selection):
    from hycon_ext import HyConLoss

    gen = torch.Generator().manual_seed(SEED + 60)
    batches = [
        (
            [torch.randn(5, 6, generator=gen, dtype=torch.float64) for _ in range(4)],
            torch.randint(0, 3, (5,), generator=gen),
        )
        for _ in range(3)
    ]
    options = dict(memory_size=7, backend="ext", pair_selection=pair_selection, beta=0.3)
    cpu = HyConLoss(**options)
    cpu(*batches[0][0], batches[0][1])
    gpu = HyConLoss(**options)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda")
    assert all(b.is_cuda for b in gpu.buffers())
    for xs, labels in batches[1:]:  # the memory fills and wraps around on both devices
        want = cpu(*xs, labels)
        got = gpu(*(x.cuda() for x in xs), labels.cuda())
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a.cpu(), b, **TOLERANCES[torch.float64])
    for key, value in cpu.state_dict().items():
        torch.testing.assert_close(gpu.state_dict()[key].cpu(), value, **TOLERANCES[torch.float64])
