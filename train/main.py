"""Train and evaluate HyCon: python train/main.py --dataset iemocap|mosi|mosei [--demo] [options]

Prints the paper's table layout (Tables 1/2 for MOSI/MOSEI, Table 3 for IEMOCAP), the parameter
count and the training time (Table 8); writes results.json / results.csv and checkpoints to --out.
Several processes: torchrun --nproc_per_node N train/main.py ... (DDP; docs/distributed.md).
"""

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: make `import train.*` work from any directory
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from train import checkpoint, distributed  # noqa: E402
from train.checks import check_args, lambda_list, seed_list  # noqa: E402
from train.engine import TrainSettings, run_seed  # noqa: E402
from train.fusion import FUSIONS  # noqa: E402
from train.metrics import CONVENTIONS, SENTIMENT_COLUMNS, emotion_columns  # noqa: E402
from train.model import TEXT_ENCODERS, ModelConfig  # noqa: E402
from train.objectives import CONTRASTIVE_LOSSES, PAIR_CLASSES, pair_classes  # noqa: E402

PAPER_LR = 2e-5
DEFAULT_EPOCHS = 40
DEMO_EPOCHS = 8
# mean, although the paper's 3.5 says "summed": its eqs. 6-12 are expectations, and summed over
# the 3K anchors the contrastive terms drown the task loss (docs/losses.md, "Reduction": the IEMOCAP
# demo stays at chance with sum). --hybrid-reduction sum is the literal 3.5.
HYBRID_REDUCTION = "mean"
DEMO_LR = 1e-3  # 2e-5 needs far more epochs than a one-minute demo allows


def build_parser():
    p = argparse.ArgumentParser(
        prog="train/main.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Exit status 2: a flag out of its range, a missing or malformed data file, or "
        "a checkpoint that cannot be resumed, said in one line on stderr. Exit status "
        "130: interrupted (Ctrl-C); the finished epochs are kept and the last line "
        "gives the command that continues the run.",
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=True, choices=["iemocap", "mosi", "mosei"])
    g.add_argument("--data-dir", default="data/", help="folder holding the dataset's standard file")
    g.add_argument(
        "--format",
        default="auto",
        choices=["auto", "mult", "mmsa", "magbert", "poria"],
        help="file format; auto picks the file found in --data-dir by its standard name",
    )
    g.add_argument(
        "--demo",
        action="store_true",
        help=f"write a small synthetic file in the dataset's own format under OUT/demo-data and "
        f"train on it through the same loader (defaults then: {DEMO_EPOCHS} epochs, lr {DEMO_LR})",
    )
    g.add_argument(
        "--max-seq-len", type=int, default=50, help="token sequence length for bert/xlnet"
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--text-encoder",
        default=None,
        choices=TEXT_ENCODERS,
        help="default: the paper's setting, bert for mosi/mosei (on a magbert or mmsa file; one "
        "line says so where files or weights make it impossible, and the feature transformer "
        "runs), transformer for iemocap; transformer = over the file's text features (GloVe / "
        "BERT features); bert/xlnet = pretrained, over words or token ids",
    )
    g.add_argument(
        "--pretrained",
        default=None,
        help="bert/xlnet model: a Hugging Face name (the cache, else downloaded into it) or a "
        "folder written by save_pretrained; default bert-base-uncased / xlnet-base-cased",
    )
    g.add_argument(
        "--text-pool",
        default="last",
        choices=["last", "cls"],
        help="bert/xlnet: x^l from the last real token (eq. 1 takes every modality's last step) or "
        "the [CLS] token (MAG-BERT's sentence summary)",
    )
    g.add_argument("--d", type=int, default=50, help="size of each unimodal representation (>= 1)")
    g.add_argument("--layers", type=int, default=1, help="Transformer layers per modality (>= 0)")
    g.add_argument("--heads", type=int, default=5, help="attention heads (>= 1, must divide --d)")
    g.add_argument("--dropout", type=float, default=0.1, help="dropout probability, in [0, 1)")
    g.add_argument("--fusion", default="add", choices=FUSIONS)
    g = p.add_argument_group("contrastive loss (eqs. 6-20)")
    g.add_argument(
        "--contrastive-loss",
        default="hycon",
        choices=CONTRASTIVE_LOSSES,
        help="hycon, or a comparison loss of eqs. 18-20 in place of IAMCL/IEMCL (Table 7)",
    )
    g.add_argument(
        "--triplet-margin",
        type=float,
        default=None,
        help="triplet/hard-triplet: hinge max(0, d_p - d_n + MARGIN); default: eq. 19 as printed "
        "(d_p - d_n + 1, no hinge)",
    )
    g.add_argument(
        "--pair-classes",
        default="sign",
        choices=PAIR_CLASSES,
        help="classes of the pairs for MOSI/MOSEI: sign (>= 0 vs < 0, paper), sign-nonzero (zero "
        "labels are a class of their own), 7class; IEMOCAP always uses the present emotion",
    )
    g.add_argument(
        "--alpha", type=float, default=0.8, help="modality margin, in (0, 1] (1 = no margin)"
    )
    g.add_argument(
        "--beta",
        type=float,
        default=0.2,
        help="pair selection: h = max(1, floor(beta * K)), K the global batch; in (0, 1]",
    )
    g.add_argument(
        "--gamma",
        type=float,
        default=1.0,
        help="pair selection: w_p = softmax(1 / (s_p + gamma)); finite, > 0",
    )
    g.add_argument(
        "--lambdas",
        default="1,1,1",
        help="lambda1,lambda2,lambda3 of IAMCL, IEMCL, SCL; finite, >= 0",
    )
    g.add_argument("--pair-selection", action="store_true", help="HyCon-v2 (eqs. 13-15)")
    g.add_argument(
        "--no-positive-selection", action="store_true", help="HyCon-v2 without positive selection"
    )
    g.add_argument(
        "--no-negative-selection", action="store_true", help="HyCon-v2 without negative selection"
    )
    g.add_argument("--no-contrastive", action="store_true", help="task loss only")
    g.add_argument(
        "--no-refinement", action="store_true", help="drop the refinement terms (eqs. 8, 11)"
    )
    g.add_argument("--no-margin", action="store_true", help="alpha = 1")
    g.add_argument("--no-iamcl", action="store_true", help="lambda1 = 0")
    g.add_argument("--no-iemcl", action="store_true", help="lambda2 = 0")
    g.add_argument("--no-scl", action="store_true", help="lambda3 = 0")
    g.add_argument(
        "--backend", default="auto", choices=["auto", "ext", "reference"], help="hycon_ext backend"
    )
    g.add_argument(
        "--hybrid-reduction",
        default=HYBRID_REDUCTION,
        choices=["mean", "sum"],
        help="L_hybrid over the anchors of a batch: mean (each term averaged over its anchors, as "
        "the paper's expectations in eqs. 6-12; independent of K) or sum (the paper's 3.5, "
        "'summed over all data samples': the contrastive terms then weigh about 3K times more "
        "against the task loss, so lambdas tuned under one reduction do not carry over to the "
        "other)",
    )
    g.add_argument(
        "--memory-size",
        type=int,
        default=0,
        help="cross-batch memory of the Q most recent samples' representations (0 = off): each "
        "batch's anchors are also paired with them, h = max(1, floor(beta (K + Q_now))); hycon "
        "only; saved in the checkpoint, so --resume continues with it",
    )
    g = p.add_argument_group("optimisation and output")
    g.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"Adam learning rate, finite and > 0; default {PAPER_LR} as stated in the paper (sic: "
        f"small for the non-pretrained parts), {DEMO_LR} with --demo",
    )
    g.add_argument(
        "--text-lr",
        type=float,
        default=None,
        help="learning rate of a pretrained text encoder (default: --lr)",
    )
    g.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f">= 1; default {DEFAULT_EPOCHS} (the paper does not state it), "
        f"{DEMO_EPOCHS} with --demo",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="mini-batch size per process, >= 1 (not stated in the paper); under torchrun the "
        "global batch K, whose samples the contrastive pairs span, is --batch-size x the number "
        "of processes",
    )
    g.add_argument("--seed", type=int, default=1)
    g.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds, each once, e.g. 1,2,3,4,5 (mean and std)",
    )
    g.add_argument(
        "--out", default="runs/hycon", help="results.json, results.csv, seed*/ checkpoints"
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue each seed from OUT/seed<N>/last.pt; the flags that change the model, the "
        "data or the optimisation must be those of the checkpoint (--epochs may grow)",
    )
    g.add_argument(
        "--tsne",
        action="store_true",
        help="write OUT/tsne_seed<N>.png of the fused test representations "
        "(after the results; a failed plot is a warning)",
    )
    g.add_argument(
        "--metrics-convention",
        default="magbert",
        choices=sorted(CONVENTIONS),
        help="; ".join(f"{k} = {v}" for k, v in CONVENTIONS.items()),
    )
    g.add_argument(
        "--device",
        default="auto",
        help="auto (cuda if available), cpu, cuda, cuda:1 ...; under "
        "torchrun auto (GPU LOCAL_RANK, nccl) or cpu (gloo)",
    )
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    return p


def loss_settings(args):
    """hybrid_loss keyword arguments from the ablation flags (checked by check_args)."""
    lambdas = lambda_list(args)
    for i, off in enumerate((args.no_iamcl, args.no_iemcl, args.no_scl)):
        if off:
            lambdas[i] = 0.0
    kw = dict(
        alpha=1.0 if args.no_margin else args.alpha,
        beta=args.beta,
        gamma=args.gamma,
        lambdas=tuple(lambdas),
        reduction=args.hybrid_reduction,
        backend=args.backend,
    )
    if args.contrastive_loss == "hycon":
        kw.update(
            pair_selection=args.pair_selection,
            select_positives=not args.no_positive_selection,
            select_negatives=not args.no_negative_selection,
            refinement=not args.no_refinement,
        )
    if args.triplet_margin is not None:
        kw["triplet_margin"] = args.triplet_margin
    return kw


def load_data(args, out, ctx, log):
    """The run's data. The text encoder is resolved here (train/text_setting.py: the paper's
    setting unless files or weights make it impossible, said in one line) into args.text_encoder
    and args.pretrained, so that results.json and checkpoints record what really ran."""
    from train import text_setting
    from train.data import load_dataset

    data_dir, fmt = Path(args.data_dir), args.format
    if args.demo:
        data_dir = out / "demo-data"
        fmt, args.text_encoder, args.pretrained, lines = text_setting.demo_plan(
            args.dataset,
            data_dir,
            fmt,
            args.text_encoder,
            args.pretrained,
            write=distributed.is_main(ctx),
        )
        for line in lines:
            log(line)
        distributed.barrier(ctx)  # the other ranks read the files once rank 0 has written them
    setting = text_setting.resolve(args.dataset, data_dir, fmt, args.text_encoder, args.pretrained)
    bundle = load_dataset(
        args.dataset,
        data_dir,
        setting.fmt,
        tokenizer=setting.tokenizer,
        max_seq_len=args.max_seq_len,
        text=setting.text,
    )
    setting = text_setting.after_loading(setting, bundle.info)
    if setting.note:
        log(setting.note)
    if setting.explicit and setting.encoder == "transformer" and args.text_pool != "last":
        raise ValueError(
            f"--text-pool {args.text_pool}: applies to bert/xlnet; the feature transformer takes "
            f"the last real step (eq. 1)"
        )
    args.text_encoder, args.pretrained = setting.encoder, setting.pretrained
    return bundle


def summarise(results):
    """Mean and std (ddof=1 over seeds; 0 for one seed) of every test metric."""
    keys = results[0]["test"].keys()
    vals = {k: np.array([r["test"][k] for r in results], dtype=np.float64) for k in keys}
    ddof = 1 if len(results) > 1 else 0
    mean = {k: float(v.mean()) for k, v in vals.items()}
    std = {k: float(v.std(ddof=ddof)) for k, v in vals.items()}
    return mean, std


def _fmt(key, value):
    # accuracies and F1 in percent as the paper's tables; MAE and Corr as fractions
    return f"{value:.3f}" if key.startswith(("MAE", "Corr")) else f"{100 * value:.1f}"


def format_table(columns, rows):
    """rows: list of (name, metrics dict). A text table whose columns are as wide as their widest
    cell, with two spaces between cells however wide a number is."""
    cells = [[_fmt(c, m[c]) for c in columns] for _, m in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    name_width = max(8, *(len(name) for name, _ in rows))
    lines = [" " * name_width + "".join("  " + c.rjust(w) for c, w in zip(columns, widths))]
    for (name, _), row in zip(rows, cells):
        lines.append(
            name.ljust(name_width) + "".join("  " + v.rjust(w) for v, w in zip(row, widths))
        )
    return "\n".join(lines)


def ordered_metrics(metrics, columns):
    """metrics with the table's columns first, then the other variants in their own order: the
    order of the printout, of results.json and of results.csv."""
    return {
        **{c: metrics[c] for c in columns},
        **{k: v for k, v in metrics.items() if k not in columns},
    }


def write_results(out, summary):
    """results.json and results.csv, each written atomically (checkpoint.write_text)."""
    checkpoint.write_text(out / "results.json", json.dumps(summary, indent=2))
    keys = list(summary["seeds"][0]["test"].keys())
    lines = ["row," + ",".join(keys + ["params", "train_time_s", "test_inference_s", "best_epoch"])]
    for r in summary["seeds"]:
        lines.append(
            f"seed{r['seed']},"
            + ",".join(f"{r['test'][k]:.6g}" for k in keys)
            + f",{r['params']},{r['train_time_s']:.3f},"
            f"{r['test_inference_s']:.4f},{r['best_epoch']}"
        )
    for name in ("mean", "std"):
        lines.append(f"{name}," + ",".join(f"{summary[name][k]:.6g}" for k in keys) + ",,,,")
    checkpoint.write_text(out / "results.csv", "\n".join(lines) + "\n")


def _device(args, ctx):
    """The device to train on; under torchrun also refuses what DDP training does not support."""
    if not ctx.is_distributed:
        return (
            args.device
            if args.device != "auto"
            else ("cuda" if torch.cuda.is_available() else "cpu")
        )
    if args.device not in ("auto", "cpu"):
        raise ValueError(
            f"--device: under torchrun each process uses GPU LOCAL_RANK (auto) or the cpu; "
            f"got {args.device!r}"
        )
    if args.contrastive_loss != "hycon" and not args.no_contrastive:
        raise ValueError(
            f"--contrastive-loss {args.contrastive_loss}: under torchrun only hycon pairs anchors "
            f"across the global batch; run comparison losses in one process"
        )
    return str(ctx.device)


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)  # before anything starts: a bad flag costs no data loading, no process group
    # a no-op without torchrun; --device cpu makes a GPU machine use gloo on the CPU
    ctx = distributed.init_from_env(backend="gloo" if args.device == "cpu" else None)
    try:
        return _train(args, ctx, _device(args, ctx))
    finally:
        distributed.cleanup(ctx)


def _lr_and_epochs(args):
    """--lr and --epochs, or their defaults (the demo's own when --demo)."""
    lr = args.lr if args.lr is not None else (DEMO_LR if args.demo else PAPER_LR)
    epochs = (
        args.epochs if args.epochs is not None else (DEMO_EPOCHS if args.demo else DEFAULT_EPOCHS)
    )
    return lr, epochs


def _settings(args, device, lr, epochs):
    """TrainSettings and ModelConfig from the flags; after load_data, which resolves the text
    encoder of --dataset's setting."""
    settings = TrainSettings(
        epochs=epochs,
        batch_size=args.batch_size,
        lr=lr,
        text_lr=args.text_lr if args.text_lr is not None else lr,
        contrastive=not args.no_contrastive,
        contrastive_loss=args.contrastive_loss,
        pair_classes=args.pair_classes,
        loss_kwargs=loss_settings(args),
        convention=args.metrics_convention,
        device=device,
        num_workers=args.num_workers,
        memory_size=args.memory_size,
    )
    model_cfg = ModelConfig(
        d=args.d,
        layers=args.layers,
        heads=args.heads,
        dropout=args.dropout,
        fusion=args.fusion,
        text_encoder=args.text_encoder,
        pretrained=args.pretrained,
        text_pool=args.text_pool,
    )
    return settings, model_cfg


def _print_results(args, info, columns, results, mean, std, epochs, log):
    """The test table (the paper's layout), then parameters and times."""
    if info.task == "regression":
        log(
            f"\nTest metrics (Table {1 if info.name == 'mosi' else 2} layout; convention "
            f"{args.metrics_convention}: {CONVENTIONS[args.metrics_convention]})"
        )
    else:
        log("\nTest metrics (Table 3 layout: per emotion accuracy and weighted F1)")
    rows = [(f"seed {r['seed']}", r["test"]) for r in results] + [("mean", mean)]
    if len(results) > 1:
        rows.append(("std", std))
    log(format_table(columns, rows))
    if info.task == "regression":
        log("all variants (mean): " + ", ".join(f"{k} {_fmt(k, v)}" for k, v in mean.items()))
    log(
        f"Parameters: {results[0]['params']:,}   "
        f"Training time: {_mean_of(results, 'train_time_s'):.1f} s per seed "
        f"({epochs} epochs, validation passes excluded)   "
        f"Inference: {_mean_of(results, 'test_inference_s'):.3f} s over the "
        f"{results[0]['test_samples']} test samples"
    )


def _mean_of(results, key):
    return float(np.mean([r[key] for r in results]))


def _summary(args, info, columns, results, mean, std, epochs, wall_time, ctx):
    """results.json's content."""
    regression = info.task == "regression"
    return {
        "dataset": info.name,
        "format": info.fmt,
        "task": info.task,
        "convention": args.metrics_convention,
        "convention_description": CONVENTIONS[args.metrics_convention] if regression else None,
        "columns": columns,
        "seeds": results,
        "mean": mean,
        "std": std,
        "params": results[0]["params"],
        "train_time_s": _mean_of(results, "train_time_s"),
        "test_inference_s": _mean_of(results, "test_inference_s"),
        "wall_time_s": wall_time,
        "epochs": epochs,
        # the optimizer's own values (equal to the flags: --resume refuses a checkpoint that
        # differs)
        "lr": results[0]["lr"],
        "text_lr": results[0].get("text_lr"),
        "args": vars(args),
        "world_size": ctx.world_size,
    }


def _plot_all_tsne(args, info, test_outputs, out, log):
    """An extra after the results are saved: a failing plot is one warning, never an error."""
    for seed, fused, labels in test_outputs:
        try:
            log(f"t-SNE: {_plot_tsne(args, info, seed, fused, labels, out)}")
        except Exception as err:  # e.g. too few test samples; sklearn and matplotlib raise many
            print(
                f"warning: --tsne: no plot for seed {seed} ({type(err).__name__}: {err}); "
                f"the results are saved",
                file=sys.stderr,
            )


def _train(args, ctx, device):
    log = distributed.main_only(print, ctx)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out: cannot make the folder {out} ({err.strerror})") from None
    seeds = seed_list(args)
    lr, epochs = _lr_and_epochs(args)
    if args.demo and args.lr is None:
        log(f"demo: lr {lr} (the paper's {PAPER_LR} is the default without --demo)")

    bundle = load_data(args, out, ctx, log)
    info = bundle.info
    settings, model_cfg = _settings(args, device, lr, epochs)
    log(
        f"{info.name} ({info.fmt}, {info.task}): train {len(bundle.train)}, "
        f"valid {len(bundle.valid)}, "
        f"test {len(bundle.test)}; dims {info.dims}; device {device}; {settings.epochs} epochs, "
        f"lr {settings.lr}"
    )
    if ctx.is_distributed:
        log(
            f"distributed: {ctx.world_size} processes ({ctx.backend}), "
            f"batch {args.batch_size} per process, "
            f"global batch {args.batch_size * ctx.world_size}"
        )

    # what a checkpoint must agree with to be resumed (train/checkpoint.py)
    config = checkpoint.run_config(
        args,
        ctx.world_size,
        lr=settings.lr,
        lambdas=lambda_list(args),
        text_lr=settings.text_lr if args.text_encoder != "transformer" else args.text_lr,
        data=f"{info.name} ({info.fmt}): train {len(bundle.train)}, valid {len(bundle.valid)}, "
        f"test {len(bundle.test)}; dims {info.dims}",
    )
    columns = SENTIMENT_COLUMNS if info.task == "regression" else emotion_columns(info.emotions)
    results, test_outputs = [], []
    t0 = time.perf_counter()
    for seed in seeds:
        result, fused, labels = run_seed(
            bundle,
            model_cfg,
            settings,
            seed,
            out / f"seed{seed}",
            resume=args.resume,
            log=log,
            ctx=ctx,
            config=config,
        )
        result["valid"], result["test"] = (
            ordered_metrics(result[k], columns) for k in ("valid", "test")
        )
        results.append(result)
        test_outputs.append((seed, fused, labels))
    mean, std = summarise(results)

    _print_results(args, info, columns, results, mean, std, settings.epochs, log)
    summary = _summary(
        args, info, columns, results, mean, std, settings.epochs, time.perf_counter() - t0, ctx
    )
    if distributed.is_main(ctx):
        write_results(out, summary)
    log(f"results: {out / 'results.json'}, {out / 'results.csv'}")
    if args.tsne and distributed.is_main(ctx):
        _plot_all_tsne(args, info, test_outputs, out, log)
    return summary


def _plot_tsne(args, info, seed, fused, labels, out):
    from train.tsne import plot_tsne

    classes = pair_classes(labels, info.task, args.pair_classes).numpy()
    names = (
        (info.emotions + ["none"]) if info.task == "emotion" else _class_names(args.pair_classes)
    )
    return plot_tsne(fused.numpy(), classes, names, out / f"tsne_seed{seed}.png", seed=seed)


def _class_names(mode):
    return {
        "sign": ["negative", "non-negative"],
        "sign-nonzero": ["negative", "positive", "zero"],
        "7class": [str(c) for c in range(-3, 4)],
    }[mode]


def resume_command(argv):
    """How to continue the run of ``argv``: the same flags and --resume, under torchrun with the
    same launcher options (which a worker process cannot see)."""
    script = [sys.argv[0], *argv, *([] if "--resume" in argv else ["--resume"])]
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return f"torchrun with the same options, and {shlex.join(script)}"
    return shlex.join(["python", *script])


def cli():
    argv = sys.argv[1:]
    try:
        main(argv)
    # DataError is a ValueError: bad flags, missing or malformed data
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except torch.OutOfMemoryError as err:  # the device's memory, not a bad flag: status 1
        first = (str(err).strip().splitlines() or ["out of memory"])[0]
        print(
            f"error: out of memory ({first}); train with a smaller --batch-size (a pretrained "
            f"text encoder also with a smaller --max-seq-len); finished epochs are kept in "
            f"last.pt, but --resume continues only with the same --batch-size",
            file=sys.stderr,
        )
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: last.pt already holds every finished epoch
        if os.environ.get("RANK", "0") == "0":
            out = build_parser().parse_args(argv).out
            print(
                f"interrupted: the finished epochs are kept in {out}/seed<N>/last.pt; "
                f"continue with: {resume_command(argv)}",
                file=sys.stderr,
            )
        sys.exit(130)


if __name__ == "__main__":
    cli()
