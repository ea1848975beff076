"""hycon_loss_distributed and train/distributed.py with 2 gloo processes on CPU.

One spawn runs every case (process start-up dominates the cost); the parent process then
checks each rank's results against the 1-process hycon_loss over the same global batch.
"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import BatchSampler, RandomSampler

from hycon_ext import HyConLoss, hycon_loss
from hycon_ext.distributed import _gather_batch, _gather_sizes, hycon_loss_distributed
from train import distributed as tdist

WORLD = 2
TERMS = ("total", "scl", "iamcl", "iemcl")
TOL = dict(rtol=1e-10, atol=1e-12)

# name -> (per-rank sizes, d, seed, hycon options). Unequal sizes exercise the padding.
# Exact similarity ties are left to the op tests: two GEMMs of different shapes may round a
# tie differently, and a tie broken the other way selects another pair.
CASES = {
    "plain": ((4, 4), 5, 0, dict(lambdas=(0.5, 2.0, 1.5))),
    "unequal": ((6, 3), 4, 1, dict(alpha=0.6)),
    "one_sample_rank": ((7, 1), 4, 2, {}),
    "no_refinement": ((5, 4), 3, 3, dict(refinement=False, lambdas=(1.0, 0.7, 0.3))),
    "selection": ((6, 4), 5, 4, dict(pair_selection=True, lambdas=(1.3, 0.6, 0.9))),
    "selection_unequal": ((3, 8), 4, 5, dict(pair_selection=True, beta=0.35, gamma=0.3)),
    "selection_pos_only": ((5, 5), 4, 6, dict(pair_selection=True, select_negatives=False)),
    "selection_neg_only": ((5, 5), 4, 7, dict(pair_selection=True, select_positives=False)),
    "selection_no_refinement": ((6, 5), 4, 8, dict(pair_selection=True, refinement=False)),
    "all_equal_labels": ((4, 3), 4, 9, dict(pair_selection=True, beta=0.3)),
    "distinct_labels": ((3, 4), 4, 10, {}),  # no positives: IAMCL and IEMCL are 0
    "sum": ((5, 3), 4, 14, dict(reduction="sum", pair_selection=True, lambdas=(0.4, 1.1, 0.7))),
}
BACKENDS = ("reference", "ext")
DDP_CASES = ("unequal", "selection_unequal")


def _ext_available():
    try:
        from hycon_ext import ops
    except ImportError:
        return False
    return ops.is_available("cpu")


def _global_batch(sizes, d, seed, name):
    generator = torch.Generator().manual_seed(seed)
    k = sum(sizes)
    x = 2.0 * torch.randn(3, k, d, generator=generator, dtype=torch.float64)
    if name == "all_equal_labels":
        return x, torch.full((k,), 2)
    if name == "distinct_labels":
        return x, torch.arange(k)
    return x, torch.randint(0, 3, (k,), generator=generator)


def _local_slice(sizes, rank):
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


class _Heads(nn.Module):
    """One linear projection per modality: a stand-in for the unimodal encoders."""

    def __init__(self, d, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.heads = nn.ModuleList(nn.Linear(d, d, dtype=torch.float64) for _ in range(3))

    def forward(self, x):
        return [head(x[m]) for m, head in enumerate(self.heads)]


def _run_loss_cases(rank, backends):
    results = {}
    for backend in backends:
        for name, (sizes, d, seed, options) in CASES.items():
            x, labels = _global_batch(sizes, d, seed, name)
            part = _local_slice(sizes, rank)
            for scale in (True, False):
                xs = [x[m, part].clone().requires_grad_() for m in range(3)]
                out = hycon_loss_distributed(
                    *xs, labels[part], scale_for_ddp=scale, backend=backend, **options
                )
                out.total.backward()
                results[(backend, name, scale)] = (
                    [getattr(out, t).item() for t in TERMS],
                    [v.grad for v in xs],
                )
    return results


def _run_ddp_cases(rank, backend):
    """Three linear heads under real DDP; their averaged gradients after out.total.backward()."""
    results = {}
    for name in DDP_CASES:
        sizes, d, seed, options = CASES[name]
        x, labels = _global_batch(sizes, d, seed, name)
        model = nn.parallel.DistributedDataParallel(_Heads(d, seed))
        part = _local_slice(sizes, rank)
        out = hycon_loss_distributed(*model(x[:, part]), labels[part], backend=backend, **options)
        out.total.backward()  # DDP averages the parameter gradients over the ranks
        results[name] = [p.grad for p in model.parameters()]
    return results


# name -> (modalities, per-rank sizes of each step, d, seed, HyConLoss keywords): a memory that
# fills, wraps and holds the gathered global batches; two modalities summed.
MEMORY_CASES = {
    "memory": (3, [(3, 4), (4, 2), (2, 3)], 4, 11, dict(memory_size=9)),
    "memory_selection": (
        3,
        [(3, 4), (4, 2), (2, 3)],
        4,
        12,
        dict(memory_size=9, pair_selection=True, beta=0.3),
    ),
    "two_modalities_sum": (2, [(4, 3)], 5, 13, dict(reduction="sum", pair_selection=True)),
}


def _memory_steps(name):
    """[(global xs, labels, per-rank sizes)] of every step of a MEMORY_CASES entry."""
    n_mod, steps, d, seed, _ = MEMORY_CASES[name]
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            2.0 * torch.randn(n_mod, sum(sizes), d, generator=generator, dtype=torch.float64),
            torch.randint(0, 3, (sum(sizes),), generator=generator),
            sizes,
        )
        for sizes in steps
    ]


def _run_memory_cases(rank, backends):
    """HyConLoss(distributed=True) over several steps: values, input gradients, final state."""
    results = {}
    for backend in backends:
        for name, (n_mod, _, _, _, options) in MEMORY_CASES.items():
            module = HyConLoss(distributed=True, backend=backend, **options)
            steps = []
            for x, labels, sizes in _memory_steps(name):
                part = _local_slice(sizes, rank)
                xs = [x[m, part].clone().requires_grad_() for m in range(n_mod)]
                out = module(*xs, labels[part])
                out.total.backward()
                steps.append(([getattr(out, t).item() for t in TERMS], [v.grad for v in xs]))
            results[(backend, name)] = (steps, module.state_dict())
    return results


def _run_train_utils(rank, ctx):
    n = 7
    sampler = tdist.eval_sampler(range(n), ctx)
    shard = torch.tensor(list(sampler))
    gathered, doubled = tdist.gather_tensors(shard, 2 * shard, ctx=ctx)
    return dict(
        shard_len=len(sampler),
        gathered=gathered,
        doubled=doubled,
        weight=tdist.batch_weight(rank + 3, ctx),
        objects=tdist.gather_objects(("r", rank), ctx),
        mean=tdist.reduce_mean(rank + 1, rank + 2, ctx),
        main=tdist.is_main(ctx),
    )


def _run_gather(rank):
    """The global candidate rows and labels as one rank sees them after the gather."""
    sizes, d, seed, _ = CASES["selection_unequal"]
    x, labels = _global_batch(sizes, d, seed, "selection_unequal")
    part = _local_slice(sizes, rank)
    local = x[:, part]
    return _gather_batch(local, labels[part], _gather_sizes(local[0], None), None)


def _run_bad_input(rank):
    x = torch.randn(3, 4 + rank, dtype=torch.float64)
    try:
        hycon_loss_distributed(x, x, x, torch.zeros(3, dtype=torch.int64), backend="reference")
    except ValueError as error:
        return str(error)
    return None


def _worker(rank, port, backends, out_dir):
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    ctx = tdist.init_from_env(backend="gloo")
    results = dict(
        ctx=(ctx.rank, ctx.world_size, ctx.backend),
        loss=_run_loss_cases(rank, backends),
        memory=_run_memory_cases(rank, backends),
        ddp={b: _run_ddp_cases(rank, b) for b in backends},
        utils=_run_train_utils(rank, ctx),
        gather=_run_gather(rank),
        bad_input=_run_bad_input(rank),
    )
    tdist.barrier(ctx)
    tdist.cleanup(ctx)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Per-rank result dicts of one 2-process run over every case."""
    backends = ["reference"] + (["ext"] if _ext_available() else [])
    out_dir = str(tmp_path_factory.mktemp("dist"))
    mp.spawn(_worker, args=(_free_port(), backends, out_dir), nprocs=WORLD, join=True)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]


def _require_backend(backend):
    if backend == "ext" and not _ext_available():
        pytest.fail("hycon_ext CPU kernels are not built (pip install -e . --no-build-isolation)")


def _single_process(name, backend):
    sizes, d, seed, options = CASES[name]
    x, labels = _global_batch(sizes, d, seed, name)
    xs = [x[m].clone().requires_grad_() for m in range(3)]
    out = hycon_loss(*xs, labels, backend=backend, **options)
    out.total.backward()
    return out, [v.grad for v in xs]


@pytest.mark.parametrize("scale_for_ddp", [True, False])
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_single_process(ranks, backend, name, scale_for_ddp):
    _require_backend(backend)
    out, grads = _single_process(name, backend)
    sizes = CASES[name][0]
    expected = torch.tensor([getattr(out, t).item() for t in TERMS], dtype=torch.float64)
    # Without DDP's averaging the raw input gradient is W times the global one.
    grad_factor = WORLD if scale_for_ddp else 1
    for rank, result in enumerate(ranks):
        values, local_grads = result["loss"][(backend, name, scale_for_ddp)]
        torch.testing.assert_close(torch.tensor(values, dtype=torch.float64), expected, **TOL)
        part = _local_slice(sizes, rank)
        for m in range(3):
            torch.testing.assert_close(local_grads[m], grad_factor * grads[m][part], **TOL)


@pytest.mark.parametrize("name", MEMORY_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_module_with_memory_matches_single_process(ranks, backend, name):
    # One process with the global batches and the same memory: equal values, gradients (W x,
    # scale_for_ddp) and memory state on every rank, step after step.
    _require_backend(backend)
    n_mod, _, _, _, options = MEMORY_CASES[name]
    module = HyConLoss(backend=backend, **options)
    expected = []
    for x, labels, sizes in _memory_steps(name):
        xs = [x[m].clone().requires_grad_() for m in range(n_mod)]
        out = module(*xs, labels)
        out.total.backward()
        expected.append(
            (torch.tensor([getattr(out, t).item() for t in TERMS]), [v.grad for v in xs], sizes)
        )
    for rank, result in enumerate(ranks):
        steps, state = result["memory"][(backend, name)]
        for (values, grads), (want, want_grads, sizes) in zip(steps, expected, strict=True):
            torch.testing.assert_close(torch.tensor(values), want, **TOL)
            part = _local_slice(sizes, rank)
            for got, full in zip(grads, want_grads, strict=True):
                torch.testing.assert_close(got, WORLD * full[part], **TOL)
        assert state.keys() == module.state_dict().keys()
        for key, value in module.state_dict().items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("name", DDP_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ddp_parameter_gradients_equal_global_loss_gradients(ranks, backend, name):
    _require_backend(backend)
    sizes, d, seed, options = CASES[name]
    x, labels = _global_batch(sizes, d, seed, name)
    heads = _Heads(d, seed)
    hycon_loss(*heads(x), labels, backend=backend, **options).total.backward()
    for result in ranks:
        for got, p in zip(result["ddp"][backend][name], heads.parameters(), strict=True):
            torch.testing.assert_close(got, p.grad, **TOL)


def test_gathered_candidates_are_the_global_batch_in_order(ranks):
    sizes, d, seed, _ = CASES["selection_unequal"]
    x, labels = _global_batch(sizes, d, seed, "selection_unequal")
    for r in ranks:
        rows, gathered_labels = r["gather"]
        assert torch.equal(rows, x.reshape(-1, d))  # modality-major, samples in rank order
        assert torch.equal(gathered_labels, labels)


def test_init_from_env_and_rank_helpers(ranks):
    assert [r["ctx"] for r in ranks] == [(0, WORLD, "gloo"), (1, WORLD, "gloo")]
    assert [r["utils"]["main"] for r in ranks] == [True, False]
    for rank, r in enumerate(ranks):
        assert r["utils"]["mean"] == pytest.approx((1 + 2) / (2 + 3))
        assert r["utils"]["weight"] == pytest.approx((rank + 3) * WORLD / (3 + 4))
        assert r["utils"]["objects"] == [("r", 0), ("r", 1)]


def test_eval_shards_gather_to_whole_split_in_order(ranks):
    assert [r["utils"]["shard_len"] for r in ranks] == [4, 3]
    for r in ranks:
        assert r["utils"]["gathered"].tolist() == list(range(7))
        assert r["utils"]["doubled"].tolist() == [2 * i for i in range(7)]


# full batches only; a last one split 3/2; one of 1: dropped
@pytest.mark.parametrize("n", [24, 29, 25])
def test_sharded_batches_are_the_single_process_global_batches(n):
    batch, world = 4, 2

    def rank_batches(rank):
        sampler = RandomSampler(range(n), generator=torch.Generator().manual_seed(7))
        batches = tdist.ShardedBatchSampler(sampler, batch, rank, world)
        return list(batches), len(batches)

    (shards0, len0), (shards1, len1) = rank_batches(0), rank_batches(1)
    single = BatchSampler(
        RandomSampler(range(n), generator=torch.Generator().manual_seed(7)),
        batch * world,
        drop_last=False,
    )
    expected = [b for b in single if len(b) >= world]
    assert len0 == len1 == len(shards0) == len(shards1) == len(expected)
    assert [a + b for a, b in zip(shards0, shards1)] == expected
    assert (
        all(len(a) == batch for a in shards0[:-1]) and abs(len(shards0[-1]) - len(shards1[-1])) <= 1
    )


def test_sharded_batches_reshuffle_each_pass_and_check_arguments():
    sampler = RandomSampler(range(8), generator=torch.Generator().manual_seed(0))
    batches = tdist.ShardedBatchSampler(sampler, 2, 0, 2)
    assert list(batches) != list(batches)  # the shared generator advances, as in one process
    with pytest.raises(ValueError, match="batch_size"):
        tdist.ShardedBatchSampler(sampler, 0, 0, 2)
    with pytest.raises(ValueError, match="rank"):
        tdist.ShardedBatchSampler(sampler, 2, 2, 2)


def test_mismatched_feature_sizes_raise_on_every_rank(ranks):
    for r in ranks:
        assert r["bad_input"] is not None and "same feature size d" in r["bad_input"]


def test_single_process_context_without_torchrun(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = tdist.init_from_env()
    assert (ctx.rank, ctx.world_size, ctx.is_distributed, ctx.backend) == (0, 1, False, None)
    assert tdist.train_batch_sampler(range(4), 2, ctx, torch.Generator()) is None
    assert tdist.eval_sampler(range(4), ctx) is None
    t = torch.arange(3)
    assert tdist.gather_tensors(t, ctx=ctx).tolist() == [0, 1, 2]
    assert tdist.reduce_mean(3.0, 4, ctx) == 0.75
    assert tdist.batch_weight(5, ctx) == 1.0 and tdist.gather_objects("x", ctx) == ["x"]
