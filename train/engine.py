"""Training and evaluation: seeds, the epoch loop, model selection on valid, checkpoints and
resume, and the results of one seed.

Model selection: the epoch with the lowest validation task loss (MAE for sentiment,
cross-entropy for emotions) is kept in best.pt; the test metrics are those of that checkpoint.
last.pt is written after every epoch and is what --resume continues from.
"""
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from train.metrics import emotion_metrics, sentiment_metrics
from train.model import HyConModel, count_parameters
from train.objectives import hybrid_loss, pair_classes, task_loss


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


def make_loaders(bundle, s, gen):
    """train (shuffled by gen, so a resumed run continues the same order), valid, test."""
    def loader(ds, shuffle):
        return DataLoader(ds, batch_size=s.batch_size, shuffle=shuffle, num_workers=s.num_workers,
                          generator=gen if shuffle else None)
    return loader(bundle.train, True), loader(bundle.valid, False), loader(bundle.test, False)


def compute_loss(out, batch, info, s):
    """L_overall = task loss + L_hybrid (eq. 17); returns (total, dict of floats)."""
    loss = task_loss(out.output, batch["label"], info.task)
    parts = {"task": loss.item()}
    if s.contrastive:
        classes = pair_classes(batch["label"], info.task, s.pair_classes)
        hyb = hybrid_loss(*out.unimodal, classes, loss=s.contrastive_loss, **s.loss_kwargs)
        loss = loss + hyb.total
        parts.update(hybrid=hyb.total.item(), scl=hyb.scl.item(), iamcl=hyb.iamcl.item(), iemcl=hyb.iemcl.item())
    return loss, parts


def train_epoch(model, loader, optimizer, info, s, desc):
    model.train()
    totals, n = {}, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=None)
    for batch in bar:
        batch = _to(batch, s.device)
        loss, parts = compute_loss(model(batch), batch, info, s)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        k = batch["label"].shape[0]
        for key, v in parts.items():
            totals[key] = totals.get(key, 0.0) + v * k
        n += k
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return {key: v / n for key, v in totals.items()}


@torch.no_grad()
def predict(model, loader, info, s):
    """Task loss, predictions, labels and fused representations over a split."""
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
    return loss_sum / n, torch.cat(outs), torch.cat(labels), torch.cat(fused)


def split_metrics(outputs, labels, info, convention):
    if info.task == "regression":
        return sentiment_metrics(outputs.numpy(), labels.numpy(), convention)
    return emotion_metrics(outputs.argmax(-1).numpy(), labels.numpy(), info.emotions)


def _save(path, **state):
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a crash mid-write never leaves a truncated checkpoint


def run_seed(bundle, model_cfg, s, seed, out_dir, resume=False, log=print):
    """Train one seed; returns its results and the test predictions for plotting."""
    out_dir.mkdir(parents=True, exist_ok=True)
    set_seed(seed)
    info = bundle.info
    model = HyConModel(info, model_cfg).to(s.device)
    optimizer = make_optimizer(model, s)
    gen = torch.Generator().manual_seed(seed)
    train_dl, valid_dl, test_dl = make_loaders(bundle, s, gen)

    start_epoch, best_loss, best_epoch, train_time = 1, float("inf"), 0, 0.0
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if resume and not last_path.exists():
        # e.g. a multi-seed run interrupted before this seed began
        log(f"seed {seed}: --resume but no {last_path}; starting this seed from scratch")
    elif resume:
        # RNG states must stay CPU tensors; load_state_dict moves weights to the model's device
        ck = torch.load(last_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"])
        if ck["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        gen.set_state(ck["loader_rng"])
        start_epoch, best_loss, best_epoch, train_time = ck["epoch"] + 1, ck["best_loss"], ck["best_epoch"], ck["train_time"]
        log(f"seed {seed}: resumed from {last_path} after epoch {ck['epoch']}")

    for epoch in range(start_epoch, s.epochs + 1):
        t0 = time.perf_counter()
        train_parts = train_epoch(model, train_dl, optimizer, info, s, f"seed {seed} epoch {epoch}/{s.epochs}")
        valid_loss, *_ = predict(model, valid_dl, info, s)
        train_time += time.perf_counter() - t0
        if valid_loss < best_loss:
            best_loss, best_epoch = valid_loss, epoch
            _save(best_path, model=model.state_dict(), epoch=epoch)
        _save(last_path, model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch,
              best_loss=best_loss, best_epoch=best_epoch, train_time=train_time,
              rng=torch.get_rng_state(), loader_rng=gen.get_state(),
              cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
        parts = " ".join(f"{k}={v:.4f}" for k, v in train_parts.items())
        log(f"seed {seed} epoch {epoch}: train {parts} | valid loss {valid_loss:.4f}"
            f"{' *' if best_epoch == epoch else ''}")

    if best_epoch == 0:
        raise ValueError(f"seed {seed}: no epoch gave a finite validation loss (epochs {s.epochs}); "
                         f"nothing to select or test")
    model.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=False)["model"])
    _, valid_out, valid_y, _ = predict(model, valid_dl, info, s)
    test_loss, test_out, test_y, test_fused = predict(model, test_dl, info, s)
    result = {
        "seed": seed, "best_epoch": best_epoch, "valid_loss": best_loss, "test_loss": test_loss,
        "valid": split_metrics(valid_out, valid_y, info, s.convention),
        "test": split_metrics(test_out, test_y, info, s.convention),
        "params": count_parameters(model), "train_time_s": train_time,
    }
    return result, test_fused, test_y
