"""Training and evaluation: seeds, the epoch loop, model selection on valid, checkpoints and
resume, and the results of one seed.

Model selection: the epoch with the lowest validation task loss (MAE for sentiment,
cross-entropy for emotions) is kept in best.pt; the test metrics are those of that checkpoint.
last.pt is written after every epoch and is what --resume continues from.

Under torchrun (ctx.is_distributed, docs/distributed.md) the model is wrapped in DDP, each rank
trains on its slice of the same global batches one process would draw with batch_size * W, the
hybrid loss pairs local anchors with the global batch, evaluation gathers every rank's
predictions (metrics identical on all ranks) and only rank 0 logs and writes checkpoints.
"""

import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from train import checkpoint, distributed
from train.metrics import emotion_metrics, sentiment_metrics
from train.model import HyConModel, count_parameters
from train.objectives import hybrid_loss, hybrid_memory, pair_classes, task_loss


@dataclass
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    text_lr: float
    contrastive: bool = True
    contrastive_loss: str = "hycon"
    pair_classes: str = "sign"
    loss_kwargs: dict = field(default_factory=dict)  # alpha, beta, gamma, lambdas, selection ...
    convention: str = "magbert"
    device: str = "cpu"
    num_workers: int = 0
    memory_size: int = 0  # cross-batch memory of the hybrid loss (0: off); saved in last.pt


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _to(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


def make_optimizer(model, s):
    """Adam; a pretrained text encoder gets its own learning rate (--text-lr)."""
    text = {id(p) for p in model.text_parameters()}
    rest = [p for p in model.parameters() if id(p) not in text]
    groups = [{"params": rest, "lr": s.lr}]
    if text:
        groups.append({"params": model.text_parameters(), "lr": s.text_lr})
    return torch.optim.Adam(groups)


def make_loaders(bundle, s, gen, ctx):
    """train (shuffled by gen, so a resumed run continues the same order), valid, test.
    Under DDP: the rank's slice of each global batch, and contiguous eval shards."""
    batches = distributed.train_batch_sampler(bundle.train, s.batch_size, ctx, gen)
    if batches is None:
        train = DataLoader(
            bundle.train,
            batch_size=s.batch_size,
            shuffle=True,
            num_workers=s.num_workers,
            generator=gen,
        )
    else:  # generator=gen too, so the loader draws from gen exactly as in one process
        train = DataLoader(
            bundle.train, batch_sampler=batches, num_workers=s.num_workers, generator=gen
        )

    def evaluation(ds):
        return DataLoader(
            ds,
            batch_size=s.batch_size,
            sampler=distributed.eval_sampler(ds, ctx),
            num_workers=s.num_workers,
        )

    return train, evaluation(bundle.valid), evaluation(bundle.test)


def compute_loss(out, batch, info, s, ctx, memory=None):
    """L_overall = task loss + L_hybrid (eq. 17); returns (total, dict of floats).
    Under DDP the parts are global-batch values for the hybrid terms, local for the task."""
    task = task_loss(out.output, batch["label"], info.task)
    parts = {"task": task.item()}
    loss = (
        task * distributed.batch_weight(batch["label"].shape[0], ctx)
        if ctx.is_distributed
        else task
    )
    if s.contrastive:
        classes = pair_classes(batch["label"], info.task, s.pair_classes)
        hyb = hybrid_loss(
            *out.unimodal,
            classes,
            loss=s.contrastive_loss,
            global_batch=ctx.is_distributed,
            memory=memory,
            **s.loss_kwargs,
        )
        loss = loss + hyb.total
        parts.update(
            hybrid=hyb.total.item(),
            scl=hyb.scl.item(),
            iamcl=hyb.iamcl.item(),
            iemcl=hyb.iemcl.item(),
        )
    return loss, parts


def train_epoch(model, loader, optimizer, info, s, desc, ctx, memory=None):
    model.train()
    totals, n = {}, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=None if distributed.is_main(ctx) else True)
    for batch in bar:
        batch = _to(batch, s.device)
        loss, parts = compute_loss(model(batch), batch, info, s, ctx, memory)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        k = batch["label"].shape[0]
        for key, v in parts.items():
            totals[key] = totals.get(key, 0.0) + v * k
        n += k
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return {key: distributed.reduce_mean(v, n, ctx) for key, v in totals.items()}


@torch.no_grad()
def predict(model, loader, info, s, ctx):
    """Task loss, predictions, labels and fused representations over a split (under DDP
    gathered from every rank in dataset order, the same on all ranks)."""
    model.eval()
    outs, labels, fused, loss_sum, n = [], [], [], 0.0, 0
    for batch in loader:
        batch = _to(batch, s.device)
        out = model(batch)
        k = batch["label"].shape[0]
        loss_sum += task_loss(out.output, batch["label"], info.task).item() * k
        n += k
        outs.append(out.output.cpu())
        labels.append(batch["label"].cpu())
        fused.append(out.fused.cpu())
    loss = distributed.reduce_mean(loss_sum, n, ctx)
    return (
        loss,
        *distributed.gather_tensors(torch.cat(outs), torch.cat(labels), torch.cat(fused), ctx=ctx),
    )


def split_metrics(outputs, labels, info, convention):
    if info.task == "regression":
        return sentiment_metrics(outputs.numpy(), labels.numpy(), convention)
    return emotion_metrics(outputs.argmax(-1).numpy(), labels.numpy(), info.emotions)


_RANK_SEED_STRIDE = (
    1_000_003  # not 1: rank 1 of seed s would repeat the masks of a run with seed s + 1
)


def _rank_rng(ctx):
    """(CPU, own GPU or None) RNG states of this rank."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(
        ctx.device
    ) if ctx.device.type == "cuda" else None


def _set_rank_rng(state, ctx):
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, ctx.device)


def _check_split_sizes(bundle, ctx):
    for name in ("train", "valid", "test"):
        n = len(getattr(bundle, name))
        if n < ctx.world_size:
            raise ValueError(
                f"{name} split: {n} samples for {ctx.world_size} processes; every process "
                f"needs at least one (use fewer processes)"
            )


@dataclass
class _Progress:
    """Where one seed's training stands: what last.pt records and --resume restores."""

    next_epoch: int = 1
    best_loss: float = float("inf")
    best_epoch: int = 0
    train_time: float = 0.0  # training passes only, as Table 8: validation is not counted
    resumed_after: int = 0


def _resume(last_path, config, s, net, optimizer, memory, gen, ctx):
    """Restores weights, optimizer, loss memory and every RNG from last.pt; returns where the
    seed stands. checkpoint.check_resume refuses a last.pt of another configuration."""
    # RNG states must stay CPU tensors; load_state_dict moves weights to the model's device
    ck = checkpoint.load(last_path)
    checkpoint.check_resume(last_path, ck, config, s.epochs)
    net.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    if memory is not None:
        memory.load_state_dict(ck["loss_memory"])
    rank_rng = ck.get("rank_rng", [])
    if ctx.is_distributed and len(rank_rng) == ctx.world_size:
        _set_rank_rng(rank_rng[ctx.rank], ctx)
    else:  # one process (or another number of ranks: all continue from rank 0's state)
        torch.set_rng_state(ck["rng"])
        if ck["cuda_rng"] and torch.cuda.is_available():
            # the checkpoint may come from a machine with more GPUs
            for i, state in enumerate(ck["cuda_rng"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(state, i)
    gen.set_state(ck["loader_rng"])
    return _Progress(
        next_epoch=ck["epoch"] + 1,
        best_loss=ck["best_loss"],
        best_epoch=ck["best_epoch"],
        train_time=ck["train_time"],
        resumed_after=ck["epoch"],
    )


def _save_last(last_path, epoch, progress, net, optimizer, memory, gen, config, ctx):
    """Writes last.pt after an epoch (rank 0; every rank takes part in gathering the RNGs)."""
    # every rank's dropout RNG, so a resumed DDP run continues exactly (a collective: all ranks)
    rank_rng = (
        {"rank_rng": distributed.gather_objects(_rank_rng(ctx), ctx)} if ctx.is_distributed else {}
    )
    if not distributed.is_main(ctx):
        return
    checkpoint.save(
        last_path,
        dict(
            model=net.state_dict(),
            optimizer=optimizer.state_dict(),
            epoch=epoch,
            best_loss=progress.best_loss,
            best_epoch=progress.best_epoch,
            train_time=progress.train_time,
            rng=torch.get_rng_state(),
            loader_rng=gen.get_state(),
            cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            config=config,
            **({"loss_memory": memory.state_dict()} if memory is not None else {}),
            **rank_rng,
        ),
    )


def _test_best(net, best_path, valid_dl, test_dl, info, s, ctx):
    """Loads best.pt and scores valid and test; returns their metrics, the test inference time
    and the test outputs (fused representations and labels, for t-SNE)."""
    net.load_state_dict(checkpoint.load(best_path, required=("model", "epoch"))["model"])
    _, valid_out, valid_y, _ = predict(net, valid_dl, info, s, ctx)
    t0 = time.perf_counter()
    # the outputs reach the CPU, so the time includes the device's work
    test_loss, test_out, test_y, test_fused = predict(net, test_dl, info, s, ctx)
    inference_time = time.perf_counter() - t0
    metrics = {
        "test_loss": test_loss,
        "valid": split_metrics(valid_out, valid_y, info, s.convention),
        "test": split_metrics(test_out, test_y, info, s.convention),
        "test_inference_s": inference_time,
    }
    return metrics, test_fused, test_y


def run_seed(bundle, model_cfg, s, seed, out_dir, resume=False, log=print, ctx=None, config=None):
    """Train one seed; returns its results and the test predictions for plotting.

    ctx: a train.distributed.DistContext under torchrun; None for one process on s.device.
    config: the run's configuration (checkpoint.run_config), saved in last.pt; --resume refuses
    a last.pt whose configuration differs (checkpoint.CheckpointError).
    Every rank returns the same results; only rank 0 logs and writes checkpoints.
    """
    config = {} if config is None else config
    ctx = ctx or distributed.DistContext(0, 1, 0, torch.device(s.device), None)
    log = distributed.main_only(log, ctx)
    _check_split_sizes(bundle, ctx)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_seed(seed)
    info = bundle.info
    net = HyConModel(info, model_cfg).to(s.device)
    optimizer = make_optimizer(net, s)
    memory = (
        hybrid_memory(s.loss_kwargs, s.memory_size, ctx.is_distributed) if s.contrastive else None
    )
    if memory is not None:
        memory.to(s.device)
    gen = torch.Generator().manual_seed(seed)
    train_dl, valid_dl, test_dl = make_loaders(bundle, s, gen, ctx)
    if ctx.rank > 0:  # identical weights are built; now give each rank its own dropout masks
        torch.manual_seed(seed + _RANK_SEED_STRIDE * ctx.rank)

    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    progress = _Progress()
    if resume and not last_path.exists():
        # e.g. a multi-seed run interrupted before this seed began
        log(f"seed {seed}: --resume but no {last_path}; starting this seed from scratch")
    elif resume:
        progress = _resume(last_path, config, s, net, optimizer, memory, gen, ctx)
        log(f"seed {seed}: resumed from {last_path} after epoch {progress.resumed_after}")
    # a pretrained backbone has parameters outside the loss (BERT's pooler); DDP must expect that
    model = distributed.wrap_ddp(net, ctx, find_unused_parameters=net.pretrained_text)

    for epoch in range(progress.next_epoch, s.epochs + 1):
        t0 = time.perf_counter()
        desc = f"seed {seed} epoch {epoch}/{s.epochs}"
        train_parts = train_epoch(model, train_dl, optimizer, info, s, desc, ctx, memory)
        progress.train_time += time.perf_counter() - t0
        # the plain module: DDP's forward may sync, and the shards may differ in batch count
        valid_loss, *_ = predict(net, valid_dl, info, s, ctx)  # the same on every rank
        if valid_loss < progress.best_loss:
            progress.best_loss, progress.best_epoch = valid_loss, epoch
            if distributed.is_main(ctx):
                checkpoint.save(best_path, dict(model=net.state_dict(), epoch=epoch))
        _save_last(last_path, epoch, progress, net, optimizer, memory, gen, config, ctx)
        distributed.barrier(ctx)  # checkpoints complete before any rank reads them
        parts = " ".join(f"{k}={v:.4f}" for k, v in train_parts.items())
        log(
            f"seed {seed} epoch {epoch}: train {parts} | valid loss {valid_loss:.4f}"
            f"{' *' if progress.best_epoch == epoch else ''}"
        )

    if progress.best_epoch == 0:
        raise ValueError(
            f"seed {seed}: no epoch gave a finite validation loss (epochs {s.epochs}); "
            f"nothing to select or test"
        )
    metrics, test_fused, test_y = _test_best(net, best_path, valid_dl, test_dl, info, s, ctx)
    result = {
        "seed": seed,
        "best_epoch": progress.best_epoch,
        "valid_loss": progress.best_loss,
        "test_loss": metrics["test_loss"],
        "valid": metrics["valid"],
        "test": metrics["test"],
        "params": count_parameters(net),
        "train_time_s": progress.train_time,
        "test_inference_s": metrics["test_inference_s"],
        "test_samples": len(bundle.test),  # paper 4.5.8
        # what the optimizer really used (a resumed run continues with the checkpoint's optimizer)
        "lr": optimizer.param_groups[0]["lr"],
        "epochs": s.epochs,
        "resumed_after_epoch": progress.resumed_after,
    }
    if len(optimizer.param_groups) > 1:
        result["text_lr"] = optimizer.param_groups[1]["lr"]
    return result, test_fused, test_y
