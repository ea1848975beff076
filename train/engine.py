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


def run_seed(bundle, model_cfg, s, seed, out_dir, resume=False, log=print, ctx=None, config=None):
    """Train one seed; returns its results and the test predictions for plotting.

    ctx: a train.distributed.DistContext under torchrun; None for one process on s.device.
    config: the run's configuration (checkpoint.run_config), saved in last.pt; --resume refuses
    a last.pt whose configuration differs (checkpoint.CheckpointError).
    Every rank returns the same results; only rank 0 logs and writes checkpoints.
    """
    config = {} if config is None else config
    ctx = ctx or distributed.DistContext(0, 1, 0, torch.device(s.device), None)
    main_rank = distributed.is_main(ctx)
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

    start_epoch, best_loss, best_epoch, train_time = 1, float("inf"), 0, 0.0
    resumed_after = 0
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if resume and not last_path.exists():
        # e.g. a multi-seed run interrupted before this seed began
        log(f"seed {seed}: --resume but no {last_path}; starting this seed from scratch")
    elif resume:
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
            if (
                ck["cuda_rng"] and torch.cuda.is_available()
            ):  # the checkpoint may come from more GPUs
                for i, state in enumerate(ck["cuda_rng"][: torch.cuda.device_count()]):
                    torch.cuda.set_rng_state(state, i)
        gen.set_state(ck["loader_rng"])
        start_epoch, best_loss, best_epoch, train_time = (
            ck["epoch"] + 1,
            ck["best_loss"],
            ck["best_epoch"],
            ck["train_time"],
        )
        resumed_after = ck["epoch"]
        log(f"seed {seed}: resumed from {last_path} after epoch {ck['epoch']}")
    # a pretrained backbone has parameters outside the loss (BERT's pooler); DDP must expect that
    model = distributed.wrap_ddp(net, ctx, find_unused_parameters=net.pretrained_text)

    for epoch in range(start_epoch, s.epochs + 1):
        t0 = time.perf_counter()
        train_parts = train_epoch(
            model,
            train_dl,
            optimizer,
            info,
            s,
            f"seed {seed} epoch {epoch}/{s.epochs}",
            ctx,
            memory,
        )
        train_time += (
            time.perf_counter() - t0
        )  # training only, as Table 8: the validation pass is not counted
        # the plain module: DDP's forward may sync, and the shards may differ in batch count
        valid_loss, *_ = predict(net, valid_dl, info, s, ctx)  # the same on every rank
        if valid_loss < best_loss:
            best_loss, best_epoch = valid_loss, epoch
            if main_rank:
                checkpoint.save(best_path, dict(model=net.state_dict(), epoch=epoch))
        # every rank's dropout RNG, so a resumed DDP run continues exactly (a collective: all ranks)
        rank_rng = (
            {"rank_rng": distributed.gather_objects(_rank_rng(ctx), ctx)}
            if ctx.is_distributed
            else {}
        )
        if main_rank:
            checkpoint.save(
                last_path,
                dict(
                    model=net.state_dict(),
                    optimizer=optimizer.state_dict(),
                    epoch=epoch,
                    best_loss=best_loss,
                    best_epoch=best_epoch,
                    train_time=train_time,
                    rng=torch.get_rng_state(),
                    loader_rng=gen.get_state(),
                    cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    config=config,
                    **({"loss_memory": memory.state_dict()} if memory is not None else {}),
                    **rank_rng,
                ),
            )
        distributed.barrier(ctx)  # checkpoints complete before any rank reads them
        parts = " ".join(f"{k}={v:.4f}" for k, v in train_parts.items())
        log(
            f"seed {seed} epoch {epoch}: train {parts} | valid loss {valid_loss:.4f}"
            f"{' *' if best_epoch == epoch else ''}"
        )

    if best_epoch == 0:
        raise ValueError(
            f"seed {seed}: no epoch gave a finite validation loss (epochs {s.epochs}); "
            f"nothing to select or test"
        )
    net.load_state_dict(checkpoint.load(best_path, required=("model", "epoch"))["model"])
    _, valid_out, valid_y, _ = predict(net, valid_dl, info, s, ctx)
    t0 = time.perf_counter()
    test_loss, test_out, test_y, test_fused = predict(
        net, test_dl, info, s, ctx
    )  # outputs reach the CPU: synced
    inference_time = time.perf_counter() - t0
    result = {
        "seed": seed,
        "best_epoch": best_epoch,
        "valid_loss": best_loss,
        "test_loss": test_loss,
        "valid": split_metrics(valid_out, valid_y, info, s.convention),
        "test": split_metrics(test_out, test_y, info, s.convention),
        "params": count_parameters(net),
        "train_time_s": train_time,
        "test_inference_s": inference_time,
        "test_samples": len(bundle.test),  # paper 4.5.8
        # what the optimizer really used (a resumed run continues with the checkpoint's optimizer)
        "lr": optimizer.param_groups[0]["lr"],
        "epochs": s.epochs,
        "resumed_after_epoch": resumed_after,
    }
    if len(optimizer.param_groups) > 1:
        result["text_lr"] = optimizer.param_groups[1]["lr"]
    return result, test_fused, test_y
