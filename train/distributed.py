"""torch.distributed plumbing for training with torchrun (one process per device).

Wiring it into the single-process trainer (every call is a no-op or an identity when the
script is started without torchrun, so the same code path serves both):

    ctx = distributed.init_from_env()   # first thing in main(); ctx.device replaces --device
    torch.manual_seed(seed)             # same seed on every rank (DDP broadcasts rank 0's weights)
    model = distributed.wrap_ddp(model.to(ctx.device), ctx)
    sampler = distributed.train_sampler(train_set, ctx, seed=seed)
    DataLoader(train_set, batch_size=per_rank_batch, sampler=sampler, shuffle=sampler is None)
    DataLoader(eval_set, batch_size=..., sampler=distributed.eval_sampler(eval_set, ctx))
    for epoch ...:
        distributed.set_epoch(sampler, epoch)   # a new shuffle each epoch
        out = hycon_loss_distributed(x_l, x_a, x_v, labels, **same keywords as hycon_loss)
        (task_loss + out.total).backward()      # docs/distributed.md: why this gradient is right
        epoch_loss = distributed.reduce_mean(loss_sum, n_seen, ctx)
    preds, labels = distributed.gather_tensors(preds, labels, ctx=ctx)  # split in dataset order
    if distributed.is_main(ctx):            # logs, checkpoints, results: rank 0 only
        torch.save(distributed.unwrap(model).state_dict(), path)
    distributed.barrier(ctx)                # the others wait until rank 0 has written
    ...
    distributed.cleanup(ctx)

Resuming: every rank loads the checkpoint with map_location=ctx.device before wrap_ddp.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler


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
                f"WORLD_SIZE={world_size} but {name} is not set: start the script with torchrun")
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


def train_sampler(dataset, ctx, *, seed=0, drop_last=False):
    """Shuffled shards of the training set, one per rank (None in one process: shuffle=True).

    Call set_epoch(sampler, epoch) at the start of every epoch, otherwise every epoch repeats
    the same order. Without drop_last the shards are padded with repeated samples to equal size.
    """
    if not ctx.is_distributed:
        return None
    return DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed,
        drop_last=drop_last)


def set_epoch(sampler, epoch):
    if sampler is not None:
        sampler.set_epoch(epoch)


class ContiguousShardSampler(Sampler):
    """Rank r iterates over its own contiguous slice of range(len(dataset)), in order.

    Unlike DistributedSampler nothing is padded or repeated (shards differ in size by at most
    one), so concatenating the ranks' outputs in rank order (gather_tensors) gives the whole
    split exactly once, in dataset order: metrics over it equal the single-process metrics.
    """

    def __init__(self, n, rank, world_size):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        base, extra = divmod(n, world_size)
        self.start = rank * base + min(rank, extra)
        self.stop = self.start + base + (1 if rank < extra else 0)

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
    parts = [None] * ctx.world_size
    dist.all_gather_object(parts, local)  # pickles, so unequal lengths need no padding
    out = tuple(torch.cat([p[i] for p in parts]) for i in range(len(local)))
    return out[0] if len(out) == 1 else out


def reduce_mean(total, count, ctx):
    """(sum over ranks of ``total``) / (sum over ranks of ``count``), e.g. for a summed loss."""
    if not ctx.is_distributed:
        return float(total) / max(float(count), 1.0)
    t = torch.tensor([float(total), float(count)], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t[0].item() / max(t[1].item(), 1.0)
