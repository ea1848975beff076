"""HyConLoss(memory_size=Q): the cross-batch FIFO memory against the float64 loop oracle."""

import io

import pytest
import torch
from oracle import oracle_grad_multi, oracle_loss_multi

from hycon_ext import HyConLoss, hycon_loss, hycon_loss_multi

TERMS = ("total", "scl", "iamcl", "iemcl")
SELECTION = dict(pair_selection=True, beta=0.3, gamma=0.5)


def _batches(n_mod, sizes, d, seed):
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            [
                (2.0 * torch.randn(k, d, generator=generator, dtype=torch.float64)).requires_grad_()
                for _ in range(n_mod)
            ],
            torch.randint(0, 3, (k,), generator=generator),
        )
        for k in sizes
    ]


def _expected_memory(batches, q):
    """The last q samples of the batches (rows per modality, labels), oldest first."""
    if not batches:
        return None, []
    n_mod = len(batches[0][0])
    rows = [[r for xs, _ in batches for r in xs[m].tolist()][-q:] for m in range(n_mod)]
    labels = [v for _, y in batches for v in y.tolist()][-q:]
    return rows, labels


# (modalities, batch sizes, Q, options): the first call meets an empty memory; later calls a
# partly filled one, then one that has wrapped around (and a batch larger than the memory).
CASES = [
    (3, (4, 4, 5, 3), 7, {}),
    (3, (4, 4, 5, 3), 7, SELECTION),
    (2, (5, 3, 9), 6, dict(SELECTION, select_negatives=False, reduction="sum")),
    (4, (3, 4, 3), 5, dict(alpha=0.6, lambdas=(0.5, 2.0, 1.5), refinement=False)),
]


@pytest.mark.parametrize("n_mod, sizes, q, options", CASES)
def test_values_match_oracle_over_calls(backend, n_mod, sizes, q, options):
    batches = _batches(n_mod, sizes, 4, seed=sum(sizes) + q)
    module = HyConLoss(memory_size=q, backend=backend, **options)
    for step, (xs, labels) in enumerate(batches):
        out = module(*xs, labels)
        rows, mem_labels = _expected_memory(batches[:step], q)
        expected = oracle_loss_multi(
            [x.tolist() for x in xs],
            labels.tolist(),
            memory_xs=rows,
            memory_labels=mem_labels,
            **options,
        )
        for name in TERMS:
            assert getattr(out, name).item() == pytest.approx(
                expected[name], rel=1e-10, abs=1e-12
            ), (step, name)
        assert module.memory.filled() == min(q, sum(sizes[: step + 1]))


@pytest.mark.parametrize("options", [{}, SELECTION])
def test_first_call_is_the_loss_without_memory(backend, options):
    [(xs, labels)] = _batches(3, (6,), 5, seed=3)
    first = HyConLoss(memory_size=10, backend=backend, **options)(*xs, labels)
    plain = hycon_loss(*xs, labels, backend=backend, **options)
    for name in TERMS:
        torch.testing.assert_close(
            getattr(first, name), getattr(plain, name), rtol=1e-12, atol=1e-14
        )


@pytest.mark.parametrize("options", [dict(SELECTION, beta=0.5), dict(reduction="sum")])
def test_gradients_reach_the_batch_only_and_match_oracle(backend, options):
    batches = _batches(3, (3, 3, 4), 3, seed=5)
    module = HyConLoss(memory_size=4, backend=backend, **options)
    for xs, labels in batches[:2]:
        module(*xs, labels)
    memory = module.memory.rows.clone()
    assert not memory.requires_grad
    xs, labels = batches[2]
    grads = torch.autograd.grad(module(*xs, labels).total, xs)
    rows, mem_labels = _expected_memory(batches[:2], 4)
    expected = oracle_grad_multi(
        [x.detach().tolist() for x in xs],
        labels.tolist(),
        memory_xs=rows,
        memory_labels=mem_labels,
        **options,
    )
    for grad, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(
            grad, torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=1e-8
        )


# Positive weights are detached by design, so a finite-difference gradcheck selects negatives only
# (the oracle test above holds the positive weights fixed instead).
@pytest.mark.parametrize("options", [{}, dict(SELECTION, beta=0.5, select_positives=False)])
def test_gradcheck_with_a_filled_memory(backend, options):
    batches = _batches(3, (4, 4), 3, seed=7)
    module = HyConLoss(memory_size=5, backend=backend, **options)
    module(*batches[0][0], batches[0][1])
    saved = {k: v.clone() for k, v in module.state_dict().items()}
    xs, labels = batches[1]

    def loss(*inputs):
        module.load_state_dict(saved)  # every evaluation sees the same memory
        return module(*inputs, labels).total

    assert torch.autograd.gradcheck(loss, [x.detach().requires_grad_() for x in xs])


def test_same_samples_in_memory_are_other_samples(backend):
    # The same batch twice: the memory copies are candidates of every anchor (never its own
    # sample), SCL stays within the batch.
    [(xs, labels)] = _batches(3, (5,), 4, seed=9)
    module = HyConLoss(memory_size=5, backend=backend)
    first, second = module(*xs, labels), module(*xs, labels)
    torch.testing.assert_close(second.scl, first.scl, rtol=1e-12, atol=0)
    rows = [x.tolist() for x in xs]
    expected = oracle_loss_multi(
        rows, labels.tolist(), memory_xs=rows, memory_labels=labels.tolist()
    )
    assert second.iemcl.item() == pytest.approx(expected["iemcl"], rel=1e-10)
    assert second.iemcl.item() != pytest.approx(first.iemcl.item())


def test_state_dict_round_trip_continues_identically(backend):
    batches = _batches(3, (4, 4, 4, 4), 4, seed=11)
    module = HyConLoss(memory_size=6, backend=backend, **SELECTION)
    for xs, labels in batches[:3]:
        module(*xs, labels)
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    restored = HyConLoss(memory_size=6, backend=backend, **SELECTION)
    restored.load_state_dict(torch.load(buffer))
    assert restored.memory.filled() == 6 and int(restored.memory.pointer) == 0
    xs, labels = batches[3]
    for a, b in zip(module(*xs, labels), restored(*xs, labels)):
        assert torch.equal(a, b)
    for key, value in module.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key


def test_memory_moves_with_the_module_and_checks_its_layout():
    batches = _batches(3, (4, 4), 3, seed=13)
    module = HyConLoss(memory_size=5, backend="reference")
    module(*batches[0][0], batches[0][1])
    assert {name for name, _ in module.named_buffers()} == {
        "memory.rows",
        "memory.labels",
        "memory.count",
        "memory.pointer",
    }
    module.to(torch.float32)
    assert module.memory.rows.dtype == torch.float32
    assert module.memory.labels.dtype == torch.int64
    moved = module.to("meta")
    assert all(b.device.type == "meta" for b in moved.buffers())
    with pytest.raises(ValueError, match="memory: on meta, got a batch on cpu"):
        moved(*batches[1][0], batches[1][1])
    module = HyConLoss(memory_size=5, backend="reference")
    module(*batches[0][0], batches[0][1])
    with pytest.raises(ValueError, match="memory: holds rows of 3 modalities x 3 features"):
        module(*batches[1][0][:2], batches[1][1])
    for bad in (-1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="memory_size: expected an integer >= 0"):
            HyConLoss(memory_size=bad)


def test_memory_rows_are_passed_as_constants(backend, monkeypatch):
    """The loss tells the op that the memory's rows are constants, so their gradient is not
    computed (the values and the batch's gradients are checked against the oracle above)."""
    from hycon_ext import loss as loss_module

    seen = []
    terms = loss_module._terms

    def spy(ops, za, zc, *rest):
        constant_rows = rest[-1]
        seen.append((zc.shape[0], constant_rows))
        return terms(ops, za, zc, *rest)

    monkeypatch.setattr(loss_module, "_terms", spy)
    module = HyConLoss(memory_size=5, backend=backend)
    for xs, labels in _batches(3, (4, 4), 3, seed=9):
        module(*xs, labels)
    # first call: 12 batch rows, nothing held; second: 12 + 3 x 4 held rows, those 12 constant
    assert seen == [(12, 0), (24, 12)]


def test_memory_off_is_the_plain_loss():
    [(xs, labels)] = _batches(2, (5,), 4, seed=15)
    module = HyConLoss(backend="reference")
    assert module.memory is None and not list(module.buffers())
    for a, b in zip(module(*xs, labels), hycon_loss_multi(xs, labels, backend="reference")):
        assert torch.equal(a, b)
