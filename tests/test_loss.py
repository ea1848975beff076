"""The public loss API (hycon_loss, HyConLoss, hycon_terms) against the float64 oracle."""

import math
import subprocess
import sys
import types
import warnings

import pytest
import torch
from oracle import oracle_grad, oracle_loss

import hycon_ext
from hycon_ext import HyConLoss, hycon_loss, hycon_terms, loss, pairs, reference, terms_to_output

TERMS = ("total", "scl", "iamcl", "iemcl")

# (K, d, label pattern, seed, options): every switch and the edge cases of docs/losses.md.
VALUE_CASES = [
    (6, 5, "random", 0, {}),
    (9, 4, "random", 1, dict(alpha=0.6, lambdas=(0.5, 2.0, 1.5))),
    (8, 6, "two_classes", 2, dict(alpha=1.0)),
    (7, 3, "random", 3, dict(refinement=False)),
    (10, 5, "random", 4, dict(pair_selection=True)),
    (10, 5, "random", 5, dict(pair_selection=True, beta=0.35, gamma=0.3)),
    (8, 4, "random", 6, dict(pair_selection=True, select_positives=False)),
    (8, 4, "random", 7, dict(pair_selection=True, select_negatives=False)),
    (8, 4, "random", 8, dict(pair_selection=True, select_positives=False, select_negatives=False)),
    (6, 4, "random", 9, dict(pair_selection=True, refinement=False, alpha=1.0)),
    (5, 4, "random", 10, dict(pair_selection=True, beta=1.0)),  # h = K > any pair count
    (1, 4, "random", 11, {}),
    (1, 4, "random", 12, dict(pair_selection=True)),
    (6, 3, "all_equal", 13, {}),
    (6, 3, "all_equal", 14, dict(pair_selection=True, beta=0.5)),
    (6, 3, "distinct", 15, {}),
    (6, 3, "distinct", 16, dict(pair_selection=True)),
]


def _oracle(x_l, x_a, x_v, labels, **options):
    return oracle_loss(x_l.tolist(), x_a.tolist(), x_v.tolist(), labels.tolist(), **options)


@pytest.mark.parametrize("k, d, pattern, seed, options", VALUE_CASES)
def test_values_match_oracle(backend, make_batch, k, d, pattern, seed, options):
    x_l, x_a, x_v, labels = make_batch(k, d, pattern, seed)
    out = hycon_loss(x_l, x_a, x_v, labels, backend=backend, **options)
    expected = _oracle(x_l, x_a, x_v, labels, **options)
    for name in TERMS:
        value = getattr(out, name)
        assert value.shape == () and value.dtype == torch.float64
        assert value.item() == pytest.approx(expected[name], rel=1e-10, abs=1e-12), name


# Small batches: the oracle gradient is finite differences over every input entry.
GRAD_CASES = [
    (5, 4, "random", 20, {}),
    (5, 4, "random", 21, dict(alpha=0.5, lambdas=(2.0, 0.5, 1.0), refinement=False)),
    (6, 3, "random", 22, dict(pair_selection=True, beta=0.4)),
    (6, 3, "two_classes", 23, dict(pair_selection=True, beta=0.4, select_negatives=False)),
    (6, 3, "random", 24, dict(pair_selection=True, beta=0.4, select_positives=False, gamma=0.5)),
    (4, 3, "all_equal", 25, dict(pair_selection=True, beta=0.5)),
]


@pytest.mark.parametrize("k, d, pattern, seed, options", GRAD_CASES)
def test_gradients_match_oracle(backend, make_batch, k, d, pattern, seed, options):
    x_l, x_a, x_v, labels = make_batch(k, d, pattern, seed)
    out = hycon_loss(x_l, x_a, x_v, labels, backend=backend, **options)
    grads = torch.autograd.grad(out.total, (x_l, x_a, x_v))
    expected = oracle_grad(x_l.detach(), x_a.detach(), x_v.detach(), labels.tolist(), **options)
    for grad, want in zip(grads, expected):
        torch.testing.assert_close(
            grad, torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=1e-8
        )


@pytest.mark.parametrize("term", ["scl", "iamcl", "iemcl"])
def test_each_term_gradient_matches_oracle(backend, make_batch, term):
    options = dict(pair_selection=True, beta=0.5)
    x_l, x_a, x_v, labels = make_batch(4, 3, "random", 30)
    out = hycon_loss(x_l, x_a, x_v, labels, backend=backend, **options)
    grads = torch.autograd.grad(getattr(out, term), (x_l, x_a, x_v))
    expected = oracle_grad(
        x_l.detach(), x_a.detach(), x_v.detach(), labels.tolist(), term=term, **options
    )
    for grad, want in zip(grads, expected):
        torch.testing.assert_close(
            grad, torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=1e-8
        )


def test_float32_matches_oracle(backend, make_batch):
    x_l, x_a, x_v, labels = make_batch(12, 8, "random", 40, dtype=torch.float32)
    out = hycon_loss(x_l, x_a, x_v, labels, backend=backend, pair_selection=True)
    expected = _oracle(x_l, x_a, x_v, labels, pair_selection=True)
    for name in TERMS:
        value = getattr(out, name)
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(expected[name], rel=1e-5, abs=1e-6), name


def test_edge_cases_have_the_documented_values(backend, make_batch):
    # K = 1: no sample has a positive, so both contrastive terms are exactly 0.
    out = hycon_loss(*make_batch(1, 4), backend=backend)
    assert out.iamcl.item() == 0 and out.iemcl.item() == 0 and out.scl.item() > 0
    # One class per sample: no positives either.
    out = hycon_loss(*make_batch(5, 4, "distinct"), backend=backend, pair_selection=True)
    assert out.iamcl.item() == 0 and out.iemcl.item() == 0
    assert out.total.item() == pytest.approx(out.scl.item())
    # All labels equal: no negatives, every ratio is 1, so a term is -1 + its refinement.
    x = make_batch(5, 4, "all_equal")
    out = hycon_loss(*x, backend=backend, refinement=False)
    assert out.iamcl.item() == pytest.approx(-1.0) and out.iemcl.item() == pytest.approx(-1.0)
    out.total.backward()  # finite gradients even where no term depends on a pair
    assert all(torch.isfinite(t.grad).all() for t in x[:3])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_inputs_propagate(backend, make_batch, bad):
    x_l, x_a, x_v, labels = make_batch(5, 4)
    x_a = x_a.detach().clone()
    x_a[2, 1] = bad  # softmax of a row holding NaN or +inf is NaN
    out = hycon_loss(x_l, x_a, x_v, labels, backend=backend, pair_selection=True)
    assert torch.isnan(out.total) and torch.isnan(out.scl)


def test_module_matches_function(backend, make_batch):
    options = dict(
        alpha=0.7,
        beta=0.4,
        gamma=0.5,
        lambdas=(1.0, 0.5, 0.25),
        pair_selection=True,
        select_negatives=False,
    )
    batch = make_batch(7, 5)
    module = HyConLoss(backend=backend, **options)
    assert isinstance(module, torch.nn.Module)
    assert "alpha=0.7" in repr(module)
    for a, b in zip(module(*batch), hycon_loss(*batch, backend=backend, **options)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("pair_selection", [False, True])
def test_terms_split_over_anchor_shards_give_the_loss(backend, make_batch, pair_selection):
    # What a DDP rank does: its own anchors against all candidates, then global counts.
    x_l, x_a, x_v, labels = make_batch(8, 4)
    options = dict(pair_selection=pair_selection, beta=0.3, alpha=0.7)
    z = torch.softmax(torch.cat((x_l, x_a, x_v)), -1)
    ids = pairs.row_descriptors(labels, 3)
    shards = [torch.arange(0, 24, 2), torch.arange(1, 24, 2)]
    parts = [
        hycon_terms(z[rows], z, ids[rows], ids, n_samples=8, backend=backend, **options)
        for rows in shards
    ]
    merged = loss.HyConTerms(sum(p.sums for p in parts), sum(p.counts for p in parts))
    lambdas = (0.3, 0.6, 0.9)
    out = terms_to_output(merged, lambdas)
    full = hycon_loss(x_l, x_a, x_v, labels, backend=backend, lambdas=lambdas, **options)
    for name in TERMS:
        torch.testing.assert_close(getattr(out, name), getattr(full, name))
    assert merged.counts[2].item() == 24


def test_compiled_ext_loss_matches_eager(ext_ops, make_batch):
    x_l, x_a, x_v, labels = make_batch(6, 4, dtype=torch.float32)
    for pair_selection in (False, True):
        compiled = torch.compile(hycon_loss, fullgraph=True, backend="aot_eager")
        out = compiled(x_l, x_a, x_v, labels, backend="ext", pair_selection=pair_selection)
        eager = hycon_loss(x_l, x_a, x_v, labels, backend="ext", pair_selection=pair_selection)
        torch.testing.assert_close(out.total, eager.total)
        (grad,) = torch.autograd.grad(out.total, x_a)
        (eager_grad,) = torch.autograd.grad(eager.total, x_a)
        torch.testing.assert_close(grad, eager_grad)


def test_the_backend_probe_carries_the_mark_of_assume_constant_result():
    # loss.py sets the decorator's mark itself, so that importing hycon_ext leaves torch._dynamo
    # unloaded; a torch that marks differently must show up here
    def probe(device_type):
        return True

    marked = torch.compiler.assume_constant_result(probe)
    assert vars(marked), "assume_constant_result no longer marks the function itself"
    for name, value in vars(marked).items():
        assert getattr(loss._ext_available, name, None) == value, name


def test_importing_hycon_ext_does_not_import_torch_dynamo():
    code = "import sys, hycon_ext; print('torch._dynamo' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


def _fake_ops(available, calls):
    """Stands in for hycon_ext.ops: records calls and computes with the reference twins."""

    def loss_values(*args):
        calls.append(("loss_values", args[10]))  # args[10]: selection
        return reference.loss_values(*args)

    return types.SimpleNamespace(is_available=lambda device: available, loss_values=loss_values)


def test_auto_warns_once_and_falls_back_when_ext_is_unavailable(monkeypatch, make_batch):
    calls = []
    monkeypatch.setattr(loss, "_ops", _fake_ops(False, calls))
    monkeypatch.setattr(loss, "_warned_fallback", False)
    batch = make_batch(5, 4)
    with pytest.warns(RuntimeWarning, match="falls back to the pure-PyTorch reference"):
        first = hycon_loss(*batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = hycon_loss(*batch, pair_selection=True)
    assert calls == []
    assert torch.equal(first.total, hycon_loss(*batch, backend="reference").total)
    assert torch.isfinite(second.total)


def test_auto_warns_when_ops_do_not_import(monkeypatch, make_batch):
    monkeypatch.setattr(loss, "_ops", None)
    monkeypatch.setattr(loss, "_warned_fallback", False)
    with pytest.warns(RuntimeWarning, match="backend='auto' falls back"):
        hycon_loss(*make_batch(3, 4))


def test_auto_uses_ext_when_available(monkeypatch, make_batch):
    calls = []
    monkeypatch.setattr(loss, "_ops", _fake_ops(True, calls))
    batch = make_batch(5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hycon_loss(*batch)
        hycon_loss(*batch, pair_selection=True)
    assert calls == [("loss_values", False), ("loss_values", True)]  # one op call per loss


@pytest.mark.parametrize("ops", [None, _fake_ops(False, [])])
def test_ext_backend_fails_clearly_without_kernels(monkeypatch, make_batch, ops):
    monkeypatch.setattr(loss, "_ops", ops)
    with pytest.raises(RuntimeError, match="backend='ext': the hycon_ext kernels are not built"):
        hycon_loss(*make_batch(3, 4), backend="ext")


def _bad_inputs(make_batch):
    x_l, x_a, x_v, labels = make_batch(4, 3)
    return [
        ((x_l, x_a[:3], x_v, labels), {}, ValueError, r"x_a: expected the shape of x_l \(4, 3\)"),
        ((x_l, x_a, x_v.float(), labels), {}, TypeError, "x_v: expected the dtype of x_l"),
        ((x_l, x_a, x_v[None], labels), {}, ValueError, "x_v: expected a 2-D tensor"),
        ((x_l[0], x_a, x_v, labels), {}, ValueError, "x_l: expected a 2-D tensor"),
        ((x_l.long(), x_a, x_v, labels), {}, TypeError, "x_l: expected a floating-point"),
        ((x_l.tolist(), x_a, x_v, labels), {}, TypeError, "x_l: expected a torch.Tensor"),
        ((x_l[:0], x_a[:0], x_v[:0], labels[:0]), {}, ValueError, "x_l: expected at least one"),
        ((x_l, x_a, x_v, labels[:3]), {}, ValueError, r"labels: expected shape \(K,\) = \(4,\)"),
        ((x_l, x_a, x_v, labels[:, None]), {}, ValueError, "labels: expected shape"),
        ((x_l, x_a, x_v, labels.float()), {}, TypeError, "labels: expected integer class ids"),
        ((x_l, x_a, x_v, [0, 1, 0, 1]), {}, TypeError, "labels: expected a torch.Tensor"),
        ((x_l, x_a, x_v, labels), dict(beta=0.0), ValueError, r"beta: expected a number in \(0, 1"),
        ((x_l, x_a, x_v, labels), dict(beta=1.5), ValueError, "beta: expected"),
        ((x_l, x_a, x_v, labels), dict(beta=float("nan")), ValueError, "beta: expected"),
        ((x_l, x_a, x_v, labels), dict(gamma=0.0), ValueError, "gamma: expected a number > 0"),
        ((x_l, x_a, x_v, labels), dict(gamma=-1), ValueError, "gamma: expected"),
        ((x_l, x_a, x_v, labels), dict(alpha="0.8"), TypeError, "alpha: expected a number"),
        ((x_l, x_a, x_v, labels), dict(lambdas=(1.0, 1.0)), ValueError, "lambdas: expected three"),
        ((x_l, x_a, x_v, labels), dict(lambdas=1.0), ValueError, "lambdas: expected three"),
        ((x_l, x_a, x_v, labels), dict(lambdas="abc"), ValueError, "lambdas: expected three"),
        ((x_l, x_a, x_v, labels), dict(lambdas=(1, None, 1)), ValueError, "lambdas: expected"),
        ((x_l, x_a, x_v, labels), dict(backend="cuda"), ValueError, "backend: expected one of"),
    ]


def test_bad_input_errors_name_the_argument(make_batch):
    for args, options, error, message in _bad_inputs(make_batch):
        with pytest.raises(error, match=message):
            hycon_loss(*args, **{"backend": "reference", **options})


def test_hycon_terms_bad_input_names_the_argument():
    z = torch.softmax(torch.randn(6, 4, dtype=torch.float64), -1)
    ids = pairs.row_descriptors(torch.tensor([0, 1]), 3)
    cases = [
        ((z.long(), z, ids, ids), ValueError, "z_anchor: expected a 2-D floating"),
        ((z, z[:, :3], ids, ids), ValueError, "z_cand: expected 4 features"),
        ((z, z.float(), ids, ids), ValueError, "z_cand: expected the dtype and device"),
        ((z, z, ids.int(), ids), TypeError, "a_ids: expected an int64 tensor"),
        ((z, z, ids, ids.tolist()), TypeError, "c_ids: expected an int64 tensor"),
        ((z, z, ids[:5], ids), ValueError, r"a_ids: expected shape \(6, 3\)"),
        ((z, z, ids, ids.to("meta")), ValueError, r"c_ids: expected the device of z_anchor"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            hycon_terms(*args, n_samples=2, backend="reference")
    for constant_rows in (-1, 7, True, 1.0):
        with pytest.raises(ValueError, match=r"constant_rows: expected an integer in \[0, 6\]"):
            hycon_terms(z, z, ids, ids, n_samples=2, constant_rows=constant_rows)


@pytest.mark.parametrize("options", [{}, dict(pair_selection=True, beta=0.5)])
def test_hycon_terms_constant_rows_are_candidates_without_gradient(backend, options):
    gen = torch.Generator().manual_seed(3)
    z = torch.softmax(torch.randn(12, 5, generator=gen, dtype=torch.float64), -1)
    ids = pairs.row_descriptors(torch.randint(0, 2, (4,), generator=gen), 3)
    held = torch.softmax(torch.randn(9, 5, generator=gen, dtype=torch.float64), -1)
    held_ids = pairs.row_descriptors(torch.randint(0, 2, (3,), generator=gen), 3, sample_offset=4)
    c_ids = torch.cat((ids, held_ids))
    results = []
    for constant_rows in (0, 9):
        z_leaf, held_leaf = z.clone().requires_grad_(), held.clone().requires_grad_()
        terms = hycon_terms(
            z_leaf,
            torch.cat((z_leaf, held_leaf)),
            ids,
            c_ids,
            n_samples=7,
            backend=backend,
            constant_rows=constant_rows,
            **options,
        )
        terms.sums.sum().backward()
        results.append((terms.sums.detach(), terms.counts, z_leaf.grad, held_leaf.grad))
    (sums, counts, grad_z, grad_held), (sums_c, counts_c, grad_z_c, grad_held_c) = results
    torch.testing.assert_close(sums_c, sums, atol=0, rtol=0)
    torch.testing.assert_close(counts_c, counts, atol=0, rtol=0)
    torch.testing.assert_close(grad_z_c, grad_z, atol=1e-13, rtol=1e-12)
    assert grad_held.abs().sum() > 0 and grad_held_c.eq(0).all()


def test_module_validates_options_at_construction():
    with pytest.raises(ValueError, match="beta: expected"):
        HyConLoss(beta=2.0)
    with pytest.raises(ValueError, match="lambdas: expected three"):
        HyConLoss(lambdas=(1.0,))
    with pytest.raises(ValueError, match="backend: expected one of"):
        HyConLoss(backend="gpu")


def test_device_mismatch_is_rejected(make_batch):
    x_l, x_a, x_v, labels = make_batch(4, 3)
    with pytest.raises(ValueError, match=r"x_a: expected the device of x_l \(cpu\), got meta"):
        hycon_loss(x_l, x_a.to("meta"), x_v, labels, backend="reference")


def test_public_names():
    assert hycon_ext.hycon_loss is hycon_loss and hycon_ext.HyConLoss is HyConLoss
    assert loss.HyConOutput._fields == ("total", "scl", "iamcl", "iemcl")


@pytest.mark.parametrize(
    "pair_selection, expected",
    [
        (False, (-0.660926, 0.073681, -0.330771, -0.403836)),
        (True, (-0.612849, 0.073681, -0.330771, -0.355759)),
    ],
)
def test_worked_example_of_the_docs(backend, pair_selection, expected):
    # docs/losses.md "Worked example": similarities 0.375, 0.5 and 0.625 only.
    u, e, w = [math.log(3), 0.0], [0.0, 0.0], [0.0, math.log(3)]
    xs = [torch.tensor(rows, dtype=torch.float64) for rows in ([u, u, w], [e, u, w], [w, e, w])]
    out = hycon_loss(*xs, torch.tensor([0, 0, 1]), backend=backend, pair_selection=pair_selection)
    assert [round(t.item(), 6) for t in out] == list(expected)
