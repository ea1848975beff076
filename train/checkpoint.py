"""Checkpoints and result files that survive a crash, and what --resume checks before it trusts one.

Every file is written to a temporary file in the same folder and then renamed over the target
(os.replace is atomic within a file system), so a process killed mid-write leaves the previous
complete file, never a truncated one. A checkpoint also records the run's configuration: a
--resume with flags that change the model, the data or the optimisation is refused, naming
each differing flag with both values, instead of silently mixing two configurations.
"""

import contextlib
import os
import tempfile
from pathlib import Path

import torch

# Flags that may change between a run and its --resume: they change neither the model, nor the
# data, nor the optimisation. --epochs may grow (checked separately); --backend picks between two
# implementations of the same loss; the data themselves are compared through their sizes.
FREE_FLAGS = frozenset(
    {
        "epochs",
        "resume",
        "out",
        "tsne",
        "device",
        "num_workers",
        "metrics_convention",
        "backend",
        "seed",
        "seeds",
        "data_dir",
    }
)
# Keys of the configuration that are not a flag of their own, as the error message names them.
DERIVED_NAMES = {
    "global_batch": "--batch-size x processes (the global batch)",
    "data": "the data (--dataset/--data-dir/--format)",
}
_REQUIRED = (
    "model",
    "optimizer",
    "epoch",
    "best_loss",
    "best_epoch",
    "train_time",
    "rng",
    "loader_rng",
    "config",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that belongs to another configuration."""


def _write_atomic(path, write):
    """write(binary file) into a temporary file beside path, then rename it to path."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data reach the disk before the rename can
        os.replace(tmp, path)
    except BaseException:  # also Ctrl-C: never leave the temporary file behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save(path, state):
    """torch.save(state) to path, atomically."""
    _write_atomic(path, lambda f: torch.save(state, f))


def write_text(path, text):
    """path.write_text(text), atomically."""
    _write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def _what_to_do(path):
    return (
        f"delete {path} to start this seed from scratch, or drop --resume (or pick another --out)"
    )


def load(path, required=_REQUIRED):
    """The checkpoint at path as a dict (tensors on the CPU); CheckpointError when it cannot be
    read (empty, truncated, not a checkpoint) or lacks one of ``required``."""
    try:
        # weights_only: a checkpoint holds tensors, numbers, strings and containers; nothing in
        # it needs arbitrary unpickling (and a foreign file cannot run code)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError ...
        # torch's messages run for lines
        first = str(err).strip().split("\n")[0].split(". ")[0][:120]
        detail = f"{type(err).__name__}: {first}" if first else type(err).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint (empty, truncated or another kind of file; "
            f"{detail}); {_what_to_do(path)}"
        ) from None
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not a train/main.py checkpoint of this version (missing "
            f"{', '.join(missing)}); {_what_to_do(path)}"
        )
    return state


def run_config(args, world_size, **resolved):
    """The configuration a checkpoint records: every flag except FREE_FLAGS, with the values
    actually used in ``resolved`` (defaults filled in, e.g. lr) and derived keys (DERIVED_NAMES).
    The batch is the global one: W processes of --batch-size B train on the batches of one
    process with W * B, so either may continue the other."""
    config = {k: v for k, v in vars(args).items() if k not in FREE_FLAGS and k != "batch_size"}
    config.update(resolved, global_batch=args.batch_size * world_size)
    return config


def _flag(key):
    return DERIVED_NAMES.get(key, "--" + key.replace("_", "-"))


# Ablation switches that only set a loss weight or alpha: compared by the values they set, so that
# e.g. --no-margin and --alpha 1 are the same run.
_LAMBDA_SWITCHES = ("no_iamcl", "no_iemcl", "no_scl")


def _effective(config):
    """config with --no-margin and --no-iamcl/--no-iemcl/--no-scl folded into alpha and lambdas."""
    config = dict(config)
    if config.pop("no_margin", False):
        config["alpha"] = 1.0
    lambdas = config.get("lambdas")
    for i, switch in enumerate(_LAMBDA_SWITCHES):
        if config.pop(switch, False) and isinstance(lambdas, list) and i < len(lambdas):
            lambdas = lambdas[:i] + [0.0] + lambdas[i + 1 :]
    if lambdas is not None:
        config["lambdas"] = lambdas
    return config


def check_resume(path, saved, current, epochs):
    """CheckpointError unless the checkpoint ``saved`` (from load) may continue a run with
    configuration ``current`` up to ``epochs``."""
    before, now = _effective(saved["config"]), _effective(current)
    differ = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    if differ:
        pairs = "; ".join(
            f"{_flag(k)} {before.get(k)!r} in the checkpoint, {now.get(k)!r} now" for k in differ
        )
        raise CheckpointError(
            f"{path}: --resume with another configuration: {pairs}; rerun with the checkpoint's "
            f"values, or {_what_to_do(path)}"
        )
    if epochs < saved["epoch"]:
        raise CheckpointError(
            f"--epochs {epochs}: {path} has already trained {saved['epoch']} epochs; "
            f"expected --epochs >= {saved['epoch']} (it may grow)"
        )
