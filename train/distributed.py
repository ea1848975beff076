"""torch.distributed plumbing for training with torchrun (one process per device).

train/engine.py and train/main.py use it like this (every call is a no-op or an identity when
the script is started without torchrun, so the same code path serves both):

    ctx = distributed.init_from_env()   # first thing in main(); ctx.device replaces --device
    torch.manual_seed(seed)             # same seed on every rank (DDP broadcasts rank 0's weights)
    model = distributed.wrap_ddp(model.to(ctx.device), ctx)
    gen = torch.Generator().manual_seed(seed)          # same shuffling generator on every rank
    batches = distributed.train_batch_sampler(train_set, per_rank_batch, ctx, gen)
    DataLoader(train_set, batch_sampler=batches, generator=gen)  # rank's slice of each global batch
    DataLoader(eval_set, batch_size=..., sampler=distributed.eval_sampler(eval_set, ctx))
    for epoch ...:
        out = hycon_loss_distributed(x_l, x_a, x_v, labels, **same keywords as hycon_loss)
        w = distributed.batch_weight(k, ctx)            # local mean -> share of the global mean
        (w * task_loss + out.total).backward()          # docs/distributed.md: why this is right
        epoch_loss = distributed.reduce_mean(loss_sum, n_seen, ctx)
    preds, labels = distributed.gather_tensors(preds, labels, ctx=ctx)  # split in dataset order
    if distributed.is_main(ctx):            # logs, checkpoints, results: rank 0 only
        torch.save(distributed.unwrap(model).state_dict(), path)
    distributed.barrier(ctx)                # the others wait until rank 0 has written
    ...
    distributed.cleanup(ctx)

Resuming: every rank loads the same checkpoint (weights, optimizer, generator state) before
training on.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, RandomSampler, Sampler


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None when running as a single process

    @property
    def is_distributed(self):
        return self.world_size > 1


def _env_int(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_from_env(backend=None):
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Without torchrun (WORLD_SIZE unset or 1) nothing is initialised and the context describes a
    single process on cuda if available, else cpu. ``backend`` defaults to nccl when CUDA is
    available and gloo otherwise; with nccl each rank uses the GPU numbered by LOCAL_RANK, with
    gloo the CPU (backend="gloo" forces a CPU run on a GPU machine).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    cuda = torch.cuda.is_available()
    if world_size <= 1:
        return DistContext(0, 1, 0, torch.device("cuda" if cuda else "cpu"), None)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(
                f"WORLD_SIZE={world_size} but {name} is not set: start the script with torchrun"
            )
    backend = backend or ("nccl" if cuda else "gloo")
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible: "
                "use --nproc_per_node <= the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # before init, so NCCL binds each rank to its own GPU
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, device, backend)


def is_main(ctx=None):
    """True on rank 0 (and in a single process): the rank that logs and writes files."""
    if ctx is not None:
        return ctx.rank == 0
    return not dist.is_initialized() or dist.get_rank() == 0


def main_only(log, ctx):
    """``log`` on rank 0; a function that does nothing on the other ranks."""
    return log if is_main(ctx) else _ignore


def _ignore(*args, **kwargs):
    pass


def barrier(ctx):
    if ctx.is_distributed:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def cleanup(ctx):
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model, ctx, find_unused_parameters=False):
    """DistributedDataParallel around ``model`` (on ctx.device); ``model`` itself in one process.

    find_unused_parameters=True is needed when some parameters get no gradient in a step
    (e.g. an ablation that leaves a head unused).
    """
    if not ctx.is_distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def unwrap(model):
    """The plain module inside DDP, for state_dict()/load_state_dict() that work in either mode."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _shard_bounds(n, rank, world_size):
    """[start, stop) of rank's contiguous share of n items (shares differ by at most one)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class ShardedBatchSampler(Sampler):
    """Rank r's contiguous slice of each global batch of ``batch_size * world_size`` indices.

    The global batches are exactly those one process would draw from ``sampler`` with the
    global batch size, and the ranks' slices in rank order are that batch in order: with the
    same shuffling generator, W ranks train on the same batches as one process (unlike
    DistributedSampler, whose permutation and padding differ). A full global batch gives every
    rank ``batch_size``; a final partial one is split as evenly as possible, and dropped when it
    has fewer samples than ranks (hycon_loss_distributed needs a sample on every rank).
    """

    def __init__(self, sampler, batch_size, rank, world_size):
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1 (per rank), got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.global_batches = BatchSampler(sampler, batch_size * world_size, drop_last=False)
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        for batch in self.global_batches:
            if len(batch) < self.world_size:
                return
            start, stop = _shard_bounds(len(batch), self.rank, self.world_size)
            yield batch[start:stop]

    def __len__(self):
        full, rest = divmod(len(self.global_batches.sampler), self.global_batches.batch_size)
        return full + (rest >= self.world_size)


def train_batch_sampler(dataset, batch_size, ctx, generator):
    """Shuffled per-rank batches (ShardedBatchSampler) drawn with ``generator``; None in one
    process, where DataLoader(shuffle=True, generator=generator) draws the same global batches."""
    if not ctx.is_distributed:
        return None
    return ShardedBatchSampler(
        RandomSampler(dataset, generator=generator), batch_size, ctx.rank, ctx.world_size
    )


def batch_weight(k, ctx):
    """k * W / K_global for a local batch of k samples (1.0 in one process).

    A local mean loss times this weight, averaged by DDP over the W ranks, has the gradient of
    the global batch mean even when the local batches differ in size.
    """
    if not ctx.is_distributed:
        return 1.0
    total = torch.tensor([k], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(total)
    return k * ctx.world_size / total.item()


class ContiguousShardSampler(Sampler):
    """Rank r iterates over its own contiguous slice of range(len(dataset)), in order.

    Unlike DistributedSampler nothing is padded or repeated (shards differ in size by at most
    one), so concatenating the ranks' outputs in rank order (gather_tensors) gives the whole
    split exactly once, in dataset order: metrics over it equal the single-process metrics.
    """

    def __init__(self, n, rank, world_size):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.start, self.stop = _shard_bounds(n, rank, world_size)

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self):
        return self.stop - self.start


def eval_sampler(dataset, ctx):
    """Sampler for validation/test loaders: a contiguous shard per rank (None in one process)."""
    if not ctx.is_distributed:
        return None
    return ContiguousShardSampler(len(dataset), ctx.rank, ctx.world_size)


def gather_tensors(*tensors, ctx):
    """Each tensor concatenated along dim 0 over ranks in rank order, on every rank, on CPU.

    Shards may differ in length. With eval_sampler this restores the split in dataset order.
    Single-process: the tensors themselves (on CPU).
    """
    local = [t.detach().cpu() for t in tensors]
    if not ctx.is_distributed:
        return local[0] if len(local) == 1 else tuple(local)
    parts = gather_objects(local, ctx)  # pickled, so unequal lengths need no padding
    out = tuple(torch.cat([p[i] for p in parts]) for i in range(len(local)))
    return out[0] if len(out) == 1 else out


def gather_objects(obj, ctx):
    """[obj of rank 0, of rank 1, ...] on every rank (picklable objects); [obj] in one process."""
    if not ctx.is_distributed:
        return [obj]
    objects = [None] * ctx.world_size
    dist.all_gather_object(objects, obj)
    return objects


def reduce_mean(total, count, ctx):
    """(sum over ranks of ``total``) / (sum over ranks of ``count``), e.g. for a summed loss."""
    if not ctx.is_distributed:
        return float(total) / max(float(count), 1.0)
    t = torch.tensor([float(total), float(count)], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t[0].item() / max(t[1].item(), 1.0)
