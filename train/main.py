"""Train and evaluate HyCon: python train/main.py --dataset iemocap|mosi|mosei [--demo] [options]

Prints the paper's table layout (Tables 1/2 for MOSI/MOSEI, Table 3 for IEMOCAP), the parameter
count and the training time (Table 8); writes results.json / results.csv and checkpoints to --out.
Several processes: torchrun --nproc_per_node N train/main.py ... (DDP; docs/distributed.md).
"""
import argparse
import json
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: make `import train.*` work from any directory
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from train import distributed  # noqa: E402
from train.engine import TrainSettings, run_seed  # noqa: E402
from train.fusion import FUSIONS  # noqa: E402
from train.metrics import CONVENTIONS, SENTIMENT_COLUMNS, emotion_columns  # noqa: E402
from train.model import TEXT_ENCODERS, ModelConfig  # noqa: E402
from train.objectives import CONTRASTIVE_LOSSES, PAIR_CLASSES, pair_classes  # noqa: E402

PAPER_LR = 2e-5
DEFAULT_EPOCHS = 40
DEMO_EPOCHS = 8
DEMO_LR = 1e-3  # 2e-5 needs far more epochs than a one-minute demo allows


def build_parser():
    p = argparse.ArgumentParser(prog="train/main.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=True, choices=["iemocap", "mosi", "mosei"])
    g.add_argument("--data-dir", default="data/", help="folder holding the dataset's standard file")
    g.add_argument("--format", default="auto", choices=["auto", "mult", "mmsa", "magbert", "poria"],
                   help="file format; auto picks the file found in --data-dir by its standard name")
    g.add_argument("--demo", action="store_true",
                   help=f"write a small synthetic file in the dataset's own format under OUT/demo-data and train on "
                        f"it through the same loader (defaults then: {DEMO_EPOCHS} epochs, lr {DEMO_LR})")
    g.add_argument("--max-seq-len", type=int, default=50, help="token sequence length for bert/xlnet")
    g = p.add_argument_group("model")
    g.add_argument("--text-encoder", default="transformer", choices=TEXT_ENCODERS,
                   help="transformer over text features (GloVe / BERT features in the file), or a pretrained "
                        "bert/xlnet over tokens (the paper's choice for MOSI/MOSEI; needs --pretrained)")
    g.add_argument("--pretrained", default=None,
                   help="local path or Hugging Face cache name of the bert/xlnet model (never downloaded)")
    g.add_argument("--d", type=int, default=50, help="size of each unimodal representation")
    g.add_argument("--layers", type=int, default=1, help="Transformer layers per modality")
    g.add_argument("--heads", type=int, default=5, help="attention heads (must divide --d)")
    g.add_argument("--dropout", type=float, default=0.1)
    g.add_argument("--fusion", default="add", choices=FUSIONS)
    g = p.add_argument_group("contrastive loss (eqs. 6-20)")
    g.add_argument("--contrastive-loss", default="hycon", choices=CONTRASTIVE_LOSSES,
                   help="hycon, or a comparison loss of eqs. 18-20 in place of IAMCL/IEMCL (Table 7)")
    g.add_argument("--pair-classes", default="sign", choices=PAIR_CLASSES,
                   help="classes of the pairs for MOSI/MOSEI: sign (>= 0 vs < 0, paper), sign-nonzero (zero "
                        "labels are a class of their own), 7class; IEMOCAP always uses the present emotion")
    g.add_argument("--alpha", type=float, default=0.8, help="modality margin")
    g.add_argument("--beta", type=float, default=0.2,
                   help="pair selection: h = max(1, floor(beta * K)), K the global batch")
    g.add_argument("--gamma", type=float, default=1.0, help="pair selection: w_p = softmax(1 / (s_p + gamma))")
    g.add_argument("--lambdas", default="1,1,1", help="lambda1,lambda2,lambda3 of IAMCL, IEMCL, SCL")
    g.add_argument("--pair-selection", action="store_true", help="HyCon-v2 (eqs. 13-15)")
    g.add_argument("--no-positive-selection", action="store_true", help="HyCon-v2 without positive selection")
    g.add_argument("--no-negative-selection", action="store_true", help="HyCon-v2 without negative selection")
    g.add_argument("--no-contrastive", action="store_true", help="task loss only")
    g.add_argument("--no-refinement", action="store_true", help="drop the refinement terms (eqs. 8, 11)")
    g.add_argument("--no-margin", action="store_true", help="alpha = 1")
    g.add_argument("--no-iamcl", action="store_true", help="lambda1 = 0")
    g.add_argument("--no-iemcl", action="store_true", help="lambda2 = 0")
    g.add_argument("--no-scl", action="store_true", help="lambda3 = 0")
    g.add_argument("--backend", default="auto", choices=["auto", "ext", "reference"], help="hycon_ext backend")
    g = p.add_argument_group("optimisation and output")
    g.add_argument("--lr", type=float, default=None,
                   help=f"Adam learning rate; default {PAPER_LR} as stated in the paper (sic: small for the "
                        f"non-pretrained parts), {DEMO_LR} with --demo")
    g.add_argument("--text-lr", type=float, default=None, help="learning rate of a pretrained text encoder "
                                                               "(default: --lr)")
    g.add_argument("--epochs", type=int, default=None,
                   help=f"default {DEFAULT_EPOCHS} (the paper does not state it), {DEMO_EPOCHS} with --demo")
    g.add_argument("--batch-size", type=int, default=32,
                   help="mini-batch size per process (not stated in the paper); under torchrun the global batch "
                        "K, whose samples the contrastive pairs span, is --batch-size x the number of processes")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 1,2,3,4,5 (mean and std)")
    g.add_argument("--out", default="runs/hycon", help="results.json, results.csv, seed*/ checkpoints")
    g.add_argument("--resume", action="store_true", help="continue each seed from OUT/seed<N>/last.pt")
    g.add_argument("--tsne", action="store_true", help="write OUT/tsne_seed<N>.png of the fused test representations")
    g.add_argument("--metrics-convention", default="magbert", choices=sorted(CONVENTIONS),
                   help="; ".join(f"{k} = {v}" for k, v in CONVENTIONS.items()))
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...; under "
                                                    "torchrun auto (GPU LOCAL_RANK, nccl) or cpu (gloo)")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    return p


def _int_list(text, name):
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated integers, got {text!r}") from None


def loss_settings(args):
    """Keyword arguments of hybrid_loss from the ablation flags; errors for flags that would do nothing."""
    try:
        lambdas = [float(x) for x in args.lambdas.split(",")]
    except ValueError:
        lambdas = []
    if len(lambdas) != 3:
        raise ValueError(f"--lambdas: expected three comma-separated numbers, got {args.lambdas!r}")
    for i, off in enumerate((args.no_iamcl, args.no_iemcl, args.no_scl)):
        if off:
            lambdas[i] = 0.0
    if (args.no_positive_selection or args.no_negative_selection) and not args.pair_selection:
        raise ValueError("--no-positive-selection/--no-negative-selection: need --pair-selection (HyCon-v2)")
    if args.contrastive_loss != "hycon" and (args.pair_selection or args.no_refinement):
        raise ValueError(f"--pair-selection/--no-refinement: apply to --contrastive-loss hycon only, "
                         f"not {args.contrastive_loss!r}")
    kw = dict(alpha=1.0 if args.no_margin else args.alpha, beta=args.beta, gamma=args.gamma,
              lambdas=tuple(lambdas), backend=args.backend)
    if args.contrastive_loss == "hycon":
        kw.update(pair_selection=args.pair_selection, select_positives=not args.no_positive_selection,
                  select_negatives=not args.no_negative_selection, refinement=not args.no_refinement)
    return kw


def load_data(args, out, ctx, log):
    from train.data import load_dataset, write_demo

    tokenizer = None
    if args.text_encoder != "transformer":
        if not args.pretrained:
            raise ValueError(f"--text-encoder {args.text_encoder}: --pretrained NAME_OR_PATH is required")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.pretrained, local_files_only=True)
    data_dir = Path(args.data_dir)
    if args.demo:
        data_dir = out / "demo-data"
        if distributed.is_main(ctx):
            path = write_demo(args.dataset, data_dir, args.format, seed=0)
            log(f"demo: wrote synthetic {args.dataset} data to {path}")
        distributed.barrier(ctx)  # the other ranks read the file once rank 0 has written it
    return load_dataset(args.dataset, data_dir, args.format, tokenizer=tokenizer, max_seq_len=args.max_seq_len)


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
    return f"{value:.3f}" if key in ("MAE", "Corr") else f"{100 * value:.1f}"


def format_table(columns, rows):
    """rows: list of (name, metrics dict). A fixed-width text table."""
    width = max(6, *(len(c) for c in columns))
    lines = ["".ljust(10) + "".join(c.rjust(width + 1) for c in columns)]
    for name, m in rows:
        lines.append(name.ljust(10) + "".join(_fmt(c, m[c]).rjust(width + 1) for c in columns))
    return "\n".join(lines)


def write_results(out, summary):
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    keys = list(summary["seeds"][0]["test"].keys())
    lines = ["row," + ",".join(keys + ["params", "train_time_s", "best_epoch"])]
    for r in summary["seeds"]:
        lines.append(f"seed{r['seed']}," + ",".join(f"{r['test'][k]:.6g}" for k in keys)
                     + f",{r['params']},{r['train_time_s']:.3f},{r['best_epoch']}")
    for name in ("mean", "std"):
        lines.append(f"{name}," + ",".join(f"{summary[name][k]:.6g}" for k in keys) + ",,,")
    (out / "results.csv").write_text("\n".join(lines) + "\n")


def _device(args, ctx):
    """The device to train on; under torchrun also refuses what DDP training does not support."""
    if not ctx.is_distributed:
        return args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device not in ("auto", "cpu"):
        raise ValueError(f"--device: under torchrun each process uses GPU LOCAL_RANK (auto) or the cpu; "
                         f"got {args.device!r}")
    if args.contrastive_loss != "hycon" and not args.no_contrastive:
        raise ValueError(f"--contrastive-loss {args.contrastive_loss}: under torchrun only hycon pairs anchors "
                         f"across the global batch; run comparison losses in one process")
    return str(ctx.device)


def main(argv=None):
    args = build_parser().parse_args(argv)
    # a no-op without torchrun; --device cpu makes a GPU machine use gloo on the CPU
    ctx = distributed.init_from_env(backend="gloo" if args.device == "cpu" else None)
    try:
        return _train(args, ctx, _device(args, ctx))
    finally:
        distributed.cleanup(ctx)


def _train(args, ctx, device):
    log = distributed.main_only(print, ctx)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = _int_list(args.seeds, "--seeds") if args.seeds else [args.seed]
    if not seeds:
        raise ValueError("--seeds: expected at least one seed")
    lr = args.lr if args.lr is not None else (DEMO_LR if args.demo else PAPER_LR)
    epochs = args.epochs if args.epochs is not None else (DEMO_EPOCHS if args.demo else DEFAULT_EPOCHS)
    if args.demo and args.lr is None:
        log(f"demo: lr {lr} (the paper's {PAPER_LR} is the default without --demo)")

    bundle = load_data(args, out, ctx, log)
    info = bundle.info
    settings = TrainSettings(
        epochs=epochs, batch_size=args.batch_size, lr=lr, text_lr=args.text_lr if args.text_lr is not None else lr,
        contrastive=not args.no_contrastive, contrastive_loss=args.contrastive_loss,
        pair_classes=args.pair_classes, loss_kwargs=loss_settings(args),
        convention=args.metrics_convention, device=device, num_workers=args.num_workers)
    model_cfg = ModelConfig(d=args.d, layers=args.layers, heads=args.heads, dropout=args.dropout,
                            fusion=args.fusion, text_encoder=args.text_encoder, pretrained=args.pretrained)
    log(f"{info.name} ({info.fmt}, {info.task}): train {len(bundle.train)}, valid {len(bundle.valid)}, "
        f"test {len(bundle.test)}; dims {info.dims}; device {device}; {epochs} epochs, lr {lr}")
    if ctx.is_distributed:
        log(f"distributed: {ctx.world_size} processes ({ctx.backend}), batch {args.batch_size} per process, "
            f"global batch {args.batch_size * ctx.world_size}")

    results = []
    t0 = time.perf_counter()
    for seed in seeds:
        result, fused, labels = run_seed(bundle, model_cfg, settings, seed, out / f"seed{seed}",
                                         resume=args.resume, log=log, ctx=ctx)
        results.append(result)
        if args.tsne and distributed.is_main(ctx):
            from train.tsne import plot_tsne

            classes = pair_classes(labels, info.task, args.pair_classes).numpy()
            names = (info.emotions + ["none"]) if info.task == "emotion" else _class_names(args.pair_classes)
            log(f"t-SNE: {plot_tsne(fused.numpy(), classes, names, out / f'tsne_seed{seed}.png', seed=seed)}")
    mean, std = summarise(results)

    if info.task == "regression":
        columns = SENTIMENT_COLUMNS
        log(f"\nTest metrics (Table {1 if info.name == 'mosi' else 2} layout; convention "
            f"{args.metrics_convention}: {CONVENTIONS[args.metrics_convention]})")
    else:
        columns = emotion_columns(info.emotions)
        log("\nTest metrics (Table 3 layout: per emotion accuracy and weighted F1)")
    rows = [(f"seed {r['seed']}", r["test"]) for r in results] + [("mean", mean)]
    if len(results) > 1:
        rows.append(("std", std))
    log(format_table(columns, rows))
    if info.task == "regression":
        log("all variants (mean): " + ", ".join(f"{k} {_fmt(k, v)}" for k, v in mean.items()))
    params = results[0]["params"]
    train_time = float(np.mean([r["train_time_s"] for r in results]))
    log(f"Parameters: {params:,}   Training time: {train_time:.1f} s per seed ({epochs} epochs)")

    summary = {
        "dataset": info.name, "format": info.fmt, "task": info.task, "convention": args.metrics_convention,
        "convention_description": CONVENTIONS[args.metrics_convention] if info.task == "regression" else None,
        "columns": columns, "seeds": results, "mean": mean, "std": std, "params": params,
        "train_time_s": train_time, "wall_time_s": time.perf_counter() - t0, "epochs": epochs, "lr": lr,
        "args": vars(args), "world_size": ctx.world_size,
    }
    if distributed.is_main(ctx):
        write_results(out, summary)
    log(f"results: {out / 'results.json'}, {out / 'results.csv'}")
    return summary



def _class_names(mode):
    return {"sign": ["negative", "non-negative"], "sign-nonzero": ["negative", "positive", "zero"],
            "7class": [str(c) for c in range(-3, 4)]}[mode]


def cli():
    try:
        main()
    except (ValueError, OSError) as err:  # DataError is a ValueError: bad flags, missing or malformed data
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
