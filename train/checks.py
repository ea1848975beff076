"""Checks of train/main.py's flags before any work is done. Each failure is a ValueError whose
one line names the flag and what was expected; main.cli() prints it and exits with status 2."""

import math
import os
from pathlib import Path

import torch

from hycon_ext.loss import check_options


def _require(ok, message):
    if not ok:
        raise ValueError(message)


def _finite_positive(value, flag):
    _require(
        value is None or 0 < value < math.inf, f"{flag}: expected a finite number > 0, got {value}"
    )


def check_args(args):
    """ValueError for a flag outside its range (the ranges are in --help and the README)."""
    _require(args.d >= 1, f"--d: expected a representation size >= 1, got {args.d}")
    _require(
        args.heads >= 1 and args.d % args.heads == 0,
        f"--heads: expected a divisor of --d {args.d} (at least 1), got {args.heads}",
    )
    _require(
        args.layers >= 0,
        f"--layers: expected a number of Transformer layers >= 0, got {args.layers}",
    )
    _require(
        0 <= args.dropout < 1, f"--dropout: expected a probability in [0, 1), got {args.dropout}"
    )
    _require(
        args.batch_size >= 1,
        f"--batch-size: expected at least 1 sample per process, got {args.batch_size}",
    )
    _require(
        args.epochs is None or args.epochs >= 1, f"--epochs: expected at least 1, got {args.epochs}"
    )
    _finite_positive(args.lr, "--lr")
    _finite_positive(args.text_lr, "--text-lr")
    _require(
        args.max_seq_len >= 1, f"--max-seq-len: expected at least 1 token, got {args.max_seq_len}"
    )
    _require(
        args.num_workers >= 0,
        f"--num-workers: expected 0 or more worker processes, got {args.num_workers}",
    )
    try:  # the loss API's own check, so that the CLI and the API accept the same ranges
        check_options(alpha=args.alpha, beta=args.beta, gamma=args.gamma, lambdas=lambda_list(args))
    except ValueError as err:
        raise ValueError(f"--{err}") from None
    check_loss_flags(args)
    seed_list(args)
    check_out(args.out)
    check_device(args.device)
    check_backend(args)
    if args.text_encoder != "transformer" and args.pretrained:
        check_pretrained(args.pretrained)


def check_loss_flags(args):
    """Flag combinations that would do nothing, refused rather than ignored."""
    _require(
        not (args.no_positive_selection or args.no_negative_selection) or args.pair_selection,
        "--no-positive-selection/--no-negative-selection: need --pair-selection (HyCon-v2)",
    )
    _require(
        args.contrastive_loss == "hycon" or not (args.pair_selection or args.no_refinement),
        f"--pair-selection/--no-refinement: apply to --contrastive-loss hycon only, "
        f"not {args.contrastive_loss!r}",
    )
    _require(
        args.memory_size >= 0,
        f"--memory-size: expected an integer >= 0 (0 = off), got {args.memory_size}",
    )
    _require(
        not args.memory_size or (args.contrastive_loss == "hycon" and not args.no_contrastive),
        "--memory-size: applies to the hycon loss only (not with --no-contrastive or a "
        "--contrastive-loss comparison loss)",
    )
    if args.triplet_margin is not None:
        _require(
            args.contrastive_loss in ("triplet", "hard-triplet"),
            f"--triplet-margin: applies to --contrastive-loss triplet or hard-triplet, "
            f"not {args.contrastive_loss!r}",
        )
        _require(
            math.isfinite(args.triplet_margin) and args.triplet_margin >= 0,
            f"--triplet-margin: expected a finite number >= 0, got {args.triplet_margin}",
        )


def check_out(out):
    """--out: a folder, or a path where one can be made (made when the run starts)."""
    path = Path(out)
    _require(not path.exists() or path.is_dir(), f"--out: expected a folder, got the file {path}")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    _require(
        path.exists() or (parent is not None and parent.is_dir() and os.access(parent, os.W_OK)),
        f"--out: cannot make the folder {path} (its nearest existing parent {parent} is not a "
        f"writable folder)",
    )


def lambda_list(args):
    """[lambda1, lambda2, lambda3] from --lambdas (ranges: check_args)."""
    try:
        lambdas = [float(x) for x in args.lambdas.split(",")]
    except ValueError:
        lambdas = []
    _require(
        len(lambdas) == 3,
        f"--lambdas: expected three comma-separated numbers, got {args.lambdas!r}",
    )
    return lambdas


def seed_list(args):
    """The seeds to run: --seeds (comma-separated, each once) or --seed."""
    if args.seeds is None:
        return [args.seed]
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise ValueError(
            f"--seeds: expected comma-separated integers, got {args.seeds!r}"
        ) from None
    _require(seeds, f"--seeds: expected at least one seed, got {args.seeds!r}")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    _require(
        not twice,
        f"--seeds: expected each seed once (the mean and std are over distinct runs), "
        f"got {', '.join(map(str, twice))} more than once in {args.seeds!r}",
    )
    return seeds


def check_device(text):
    """--device: auto, cpu, cuda or cuda:N, and CUDA only where this torch and machine have it."""
    if text == "auto":
        return
    expected = "expected auto, cpu, cuda or cuda:N"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device: {expected}, got {text!r}") from None
    _require(device.type in ("cpu", "cuda"), f"--device: {expected}, got {text!r}")
    if device.type == "cpu":
        return
    _require(
        torch.version.cuda is not None,
        f"--device {text}: this torch ({torch.__version__}) is a CPU build without CUDA; "
        f"use --device cpu, or install a CUDA build of torch",
    )
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    _require(
        count > 0, f"--device {text}: no CUDA GPU is visible to this process; use --device cpu"
    )
    _require(
        device.index is None or device.index < count,
        f"--device {text}: expected a GPU index below {count} (the GPUs visible here)",
    )


def check_backend(args):
    """--backend ext: the hycon_ext kernels built for the device the run trains on.

    Without them the loss would raise at the first batch, after the data is loaded. A run
    without a contrastive loss never calls hycon_ext, so it needs no kernels.
    """
    if args.backend != "ext" or args.no_contrastive:
        return
    # the device main._device and distributed.init_from_env pick (--device is valid here)
    use_cuda = args.device != "cpu" and (args.device != "auto" or torch.cuda.is_available())
    device_type = "cuda" if use_cuda else "cpu"
    try:
        from hycon_ext import ops
    except ImportError as err:
        load_error = err
    else:
        if ops.is_available(device_type):
            return
        load_error = ops._LOAD_ERROR
    fix = "build the extension with `make setup`, or use --backend reference"
    if load_error is not None:
        reason = (str(load_error).splitlines() or [type(load_error).__name__])[0]
        raise ValueError(
            f"--backend ext: the hycon_ext C++ extension is not built or does not load "
            f"({reason}); {fix}"
        )
    raise ValueError(f"--backend ext: the hycon_ext kernels are not built for {device_type}; {fix}")


def check_pretrained(name):
    """--pretrained: an existing folder, or a Hugging Face cache name (checked when loaded)."""
    path = Path(name).expanduser()
    # A Hugging Face name is "model" or "owner/model"; anything else is meant as a path.
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
    _require(
        path.exists() or not looks_like_path,
        f"--pretrained {name}: the path does not exist "
        f"(expected a folder written by save_pretrained, "
        f"or the name of a model in the Hugging Face cache)",
    )
