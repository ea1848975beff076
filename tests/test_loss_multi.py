"""hycon_loss_multi (M >= 2 modalities) and reduction="sum" against the float64 loop oracle."""

import pytest
import torch
from oracle import oracle_grad_multi, oracle_loss_multi

from hycon_ext import HyConLoss, hycon_loss, hycon_loss_multi, hycon_terms, pairs, terms_to_output

TERMS = ("total", "scl", "iamcl", "iemcl")
SELECTION = dict(pair_selection=True, beta=0.4, gamma=0.5)


def _batch(n_mod, k, d, seed, pattern="random"):
    generator = torch.Generator().manual_seed(seed)
    xs = [
        (2.0 * torch.randn(k, d, generator=generator, dtype=torch.float64)).requires_grad_()
        for _ in range(n_mod)
    ]
    labels = (
        torch.randint(0, 3, (k,), generator=generator)
        if pattern == "random"
        else torch.arange(k) % 2
    )
    return xs, labels


def _check_against_oracle(out, xs, labels, options):
    expected = oracle_loss_multi([x.tolist() for x in xs], labels.tolist(), **options)
    for name in TERMS:
        value = getattr(out, name).item()
        assert value == pytest.approx(expected[name], rel=1e-10, abs=1e-12), name


@pytest.mark.parametrize(
    "options",
    [
        {},
        dict(SELECTION, lambdas=(0.5, 2.0, 1.5)),
        dict(reduction="sum", alpha=0.6),
        dict(SELECTION, reduction="sum", select_positives=False),
    ],
)
@pytest.mark.parametrize("n_mod", [2, 3, 4])
def test_multi_values_match_oracle(backend, n_mod, options):
    xs, labels = _batch(n_mod, 7, 4, seed=n_mod)
    _check_against_oracle(
        hycon_loss_multi(xs, labels, backend=backend, **options), xs, labels, options
    )


@pytest.mark.parametrize(
    "n_mod, options",
    [(2, SELECTION), (4, dict(reduction="sum")), (3, dict(SELECTION, reduction="sum"))],
)
def test_multi_gradients_match_oracle(backend, n_mod, options):
    xs, labels = _batch(n_mod, 4, 3, seed=10 + n_mod, pattern="two_classes")
    grads = torch.autograd.grad(hycon_loss_multi(xs, labels, backend=backend, **options).total, xs)
    expected = oracle_grad_multi([x.detach().tolist() for x in xs], labels.tolist(), **options)
    for grad, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(
            grad, torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=1e-8
        )


@pytest.mark.parametrize("options", [{}, SELECTION])
def test_three_modalities_are_hycon_loss_bitwise(backend, options):
    xs, labels = _batch(3, 9, 5, seed=20)
    multi = hycon_loss_multi(xs, labels, backend=backend, **options)
    three = hycon_loss(*xs, labels, backend=backend, **options)
    for a, b in zip(multi, three):
        assert torch.equal(a, b)
    for a, b in zip(torch.autograd.grad(multi.total, xs), torch.autograd.grad(three.total, xs)):
        assert torch.equal(a, b)


def test_sum_is_mean_times_anchor_counts(backend):
    # The same per-anchor terms: sum = mean * (anchors with a positive; all M K for SCL).
    xs, labels = _batch(4, 8, 5, seed=30)
    z = torch.softmax(torch.cat(xs), -1)
    ids = pairs.row_descriptors(labels, 4)
    terms = hycon_terms(z, z, ids, ids, n_samples=8, backend=backend)
    mean = hycon_loss_multi(xs, labels, backend=backend)
    total = hycon_loss_multi(xs, labels, backend=backend, reduction="sum")
    counts = dict(zip(("iamcl", "iemcl", "scl"), terms.counts.tolist()))
    assert counts["scl"] == 32
    for name, count in counts.items():
        torch.testing.assert_close(getattr(total, name), getattr(mean, name) * count)
    summed = terms_to_output(terms, (1.0, 2.0, 3.0), reduction="sum")
    torch.testing.assert_close(
        summed.total, terms.sums @ torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    )


def test_module_takes_any_number_of_modalities(backend):
    xs, labels = _batch(2, 6, 4, seed=40)
    module = HyConLoss(backend=backend, reduction="sum", **SELECTION)
    assert "reduction='sum'" in repr(module)
    for a, b in zip(
        module(*xs, labels),
        hycon_loss_multi(xs, labels, backend=backend, reduction="sum", **SELECTION),
    ):
        assert torch.equal(a, b)


def test_bad_arguments_name_themselves():
    xs, labels = _batch(3, 4, 3, seed=50)
    cases = [
        ((xs[0], labels), {}, TypeError, "xs: expected a list or tuple"),
        ((xs[:1], labels), {}, ValueError, "xs: expected at least two modalities, got 1"),
        (([xs[0], xs[1][:3]], labels), {}, ValueError, r"xs\[1\]: expected the shape of xs\[0\]"),
        (([xs[0], xs[1].float()], labels), {}, TypeError, r"xs\[1\]: expected the dtype"),
        ((xs, labels[:3]), {}, ValueError, r"labels: expected shape \(K,\)"),
        ((xs, labels), dict(reduction="none"), ValueError, "reduction: expected one of"),
    ]
    for args, options, error, message in cases:
        with pytest.raises(error, match=message):
            hycon_loss_multi(*args, backend="reference", **options)
    with pytest.raises(ValueError, match="reduction: expected one of"):
        hycon_loss(*xs, labels, reduction="batchmean")
    with pytest.raises(ValueError, match="reduction: expected one of"):
        HyConLoss(reduction="avg")
    with pytest.raises(TypeError, match=r"HyConLoss: expected \(x_1, ..., x_M, labels\)"):
        HyConLoss(backend="reference")(xs[0], labels)
