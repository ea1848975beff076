"""One run, one Markdown table: hycon_loss forward + backward, ext vs pure PyTorch.

    python bench/report.py [--sizes 32,128,512,2048] [--repeats 10] [--min-seconds 1]
                           [--no-compile]
                           [--epoch] [--big] [--memory Q [--memory-k K] [--memory-only]]
                           [--markdown-out FILE]

Per device (CPU; CUDA when present), K and pair selection: median time of ext, the eager
reference, torch.compile(reference) and pytorch-metric-learning's SupConLoss (same 3K rows
and labels; a different formula, for scale), measured interleaved call by call in this one
process; the speed-ups; and peak extra memory of ext and the reference (bench/memory.py: on
CPU one child process per device measures them, away from the timings).
--epoch adds one training epoch of the IEMOCAP demo (train/), ext vs reference, same seed.
--big runs ext alone at K = 16384 and sets its peak against what the dense reference would
need (extrapolated from the reference peaks measured here, not run).
--memory Q adds HyConLoss(memory_size=Q) at K = --memory-k (default 256), its memory full:
ext vs the reference, time and peak memory, interleaved like the loss rows.
Progress goes to stderr; stdout is only the Markdown.
"""

import argparse
import contextlib
import datetime
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a script: make `import bench.*` work from any directory
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench import cases, memory  # noqa: E402

BIG_K = 16384
BIG_LIMIT_BYTES = 10**9
BIG_WARMUP_K = 1024  # warms the kernels' threads and code paths without a second long run
MAX_ROUNDS = 2000  # --min-seconds stops adding rounds here
EPOCH_RUNS = 2  # per backend, interleaved; the faster run is reported
MB = 1e6


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(args):
    lines = [
        "## hycon_ext benchmark",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores visible, "
        f"torch threads {torch.get_num_threads()}",
    ]
    if torch.cuda.is_available():
        lines.append(f"- GPU: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    lines += [
        f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.platform()}",
        f"- command: `{' '.join(['python bench/report.py', *sys.argv[1:]])}`",
        f"- forward + backward, d = {cases.D}, {cases.N_CLASSES} classes, 3K rows; median of the "
        f"interleaved calls after warm-up (at least {args.repeats}, more until a row has taken "
        f"{args.min_seconds:g} s; `calls` column); peak memory: "
        f"CPU {memory.CPU_METHOD}, CUDA {memory.CUDA_METHOD}",
    ]
    return lines


def time_interleaved(steps, device, repeats, warmup, min_seconds=0.0):
    """({name: median seconds}, calls each), calling the steps in turn so that drift hits all
    alike: at least `repeats` rounds, more (up to MAX_ROUNDS) until the rounds have taken
    `min_seconds`, so that millisecond rows get a median of hundreds of calls, not a dozen."""
    for step in steps.values():
        for _ in range(warmup):  # torch.compile compiles during the first call
            step()
    cases.synchronize(device)
    samples = {name: [] for name in steps}
    began = time.perf_counter()
    rounds = 0
    while rounds < repeats or (time.perf_counter() - began < min_seconds and rounds < MAX_ROUNDS):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            cases.synchronize(device)
            samples[name].append(time.perf_counter() - start)
        rounds += 1
    return {name: statistics.median(times) for name, times in samples.items()}, rounds


def measure_row(device, k, pair_selection, args):
    impls = [i for i in cases.LOSS_IMPLS if not (args.no_compile and i == "compiled")]
    # SupConLoss has no selection: the selection=on row times it without, for scale.
    steps = {i: cases.make_loss_step(i, k, device, pair_selection and i != "supcon") for i in impls}
    times, calls = time_interleaved(steps, device, args.repeats, args.warmup, args.min_seconds)
    return {
        "device": device,
        "k": k,
        "selection": cases.selection_label(pair_selection),
        "times": times,
        "calls": calls,
    }


MEMORY_IMPLS = ("ext", "reference")


def add_peaks(rows):
    """Peak memory of ext and the reference for every row: one child process per device (CPU)."""
    for device in dict.fromkeys(r["device"] for r in rows):
        mine = [r for r in rows if r["device"] == device]
        log(f"memory: {device}, {len(mine) * len(MEMORY_IMPLS)} cases")
        specs = [
            cases.loss_spec(i, r["k"], device, r["selection"] == "on")
            for r in mine
            for i in MEMORY_IMPLS
        ]
        peaks, _ = memory.peak_bytes_many(specs)
        for n, r in enumerate(mine):
            r["peaks"] = dict(
                zip(MEMORY_IMPLS, peaks[n * len(MEMORY_IMPLS) : (n + 1) * len(MEMORY_IMPLS)])
            )


def _ms(seconds):
    return "—" if seconds is None else f"{seconds * 1e3:.3g}"


def _mb(nbytes):
    return "n/a" if nbytes is None else f"{nbytes / MB:.3g}"


def _ratio(num, den):
    return "—" if num is None or den is None or den == 0 else f"{num / den:.2f}x"


def loss_table(rows):
    lines = [
        "| device | K | selection | ext ms | reference ms | compiled ms | SupCon ms | ref/ext "
        "| compiled/ext "
        "| ext GFLOP/s* | ext peak MB | ref peak MB | ref/ext mem | calls |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t, p = r["times"], r["peaks"]
        flops = 6 * (3 * r["k"]) ** 2 * cases.D
        lines.append(
            f"| {r['device']} | {r['k']} | {r['selection']} | {_ms(t['ext'])} "
            f"| {_ms(t['reference'])} "
            f"| {_ms(t.get('compiled'))} | {_ms(t['supcon'])} | {_ratio(t['reference'], t['ext'])} "
            f"| {_ratio(t.get('compiled'), t['ext'])} | {flops / t['ext'] / 1e9:.3g} "
            f"| {_mb(p['ext'])} "
            f"| {_mb(p['reference'])} | {_ratio(p['reference'], p['ext'])} | {r['calls']} |"
        )
    lines += [
        "",
        "\\* one similarity matrix forward and backward, 6 (3K)^2 d FLOPs: the arithmetic floor of "
        "the fused path, divided by the ext time. SupCon has no pair selection: selection=on rows "
        "time it without.",
    ]
    return lines


def reference_bytes_per_cell(rows, device, selection_label):
    """Reference peak bytes per (3K)^2 at the largest K measured for (device, selection_label);
    None if none."""
    measured = [
        r
        for r in rows
        if (r["device"], r["selection"]) == (device, selection_label) and r["peaks"]["reference"]
    ]
    if not measured:
        return None
    largest = max(measured, key=lambda r: r["k"])
    return largest["peaks"]["reference"] / (3 * largest["k"]) ** 2


def big_section(rows, devices):
    lines = [
        f"### K = {BIG_K} ({3 * BIG_K} rows): ext alone",
        "",
        "| device | selection | ext s (one call) | ext peak MB | within 1 GB "
        "| reference would need (GB) |",
        "|---|---|---:|---:|---|---:|",
    ]
    one_matrix = 4 * (3 * BIG_K) ** 2  # a single float32 (3K)^2 similarity matrix
    for device in devices:
        for pair_selection in (False, True):
            per_cell = reference_bytes_per_cell(rows, device, cases.selection_label(pair_selection))
            log(f"big: {device} K={BIG_K} selection={cases.selection_label(pair_selection)}")
            spec = {
                **cases.loss_spec("ext", BIG_K, device, pair_selection),
                "warmup_k": BIG_WARMUP_K,
            }
            [result], _ = memory.measure_many([spec])
            peak, seconds = result["peak_bytes"], result["seconds"]
            fits = "n/a" if peak is None else ("yes" if peak <= BIG_LIMIT_BYTES else "NO")
            need = (
                f">= {one_matrix / 1e9:.1f}"
                if per_cell is None
                else f"~{per_cell * (3 * BIG_K) ** 2 / 1e9:.3g}"
            )
            lines.append(
                f"| {device} | {cases.selection_label(pair_selection)} | {seconds:.3g} "
                f"| {_mb(peak)} | {fits} | {need} |"
            )
    lines += [
        "",
        f"The reference estimate scales its measured peak bytes per (3K)^2 cell at the largest "
        f"K above (same device and selection) "
        f"to {3 * BIG_K} rows; one float32 similarity matrix alone is {one_matrix / 1e9:.1f} GB.",
    ]
    return lines


def memory_section(args):
    """HyConLoss, full cross-batch memory, ext vs reference: 3K anchors x 3(K + Q) candidates."""
    k, q = args.memory_k, args.memory
    lines = [
        f"### Cross-batch memory: K = {k}, Q = {q} (HyConLoss(memory_size={q}), memory full)",
        "",
        "| device | selection | ext ms | reference ms | ref/ext | ext peak MB | ref peak MB "
        "| ref/ext mem | calls |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for device in args.devices:
        rows = []
        for pair_selection in (False, True):
            log(f"memory: {device} K={k} Q={q} selection={cases.selection_label(pair_selection)}")
            steps = {
                i: cases.make_memory_step(i, k, q, device, pair_selection) for i in MEMORY_IMPLS
            }
            rows.append(
                (
                    pair_selection,
                    *time_interleaved(steps, device, args.repeats, args.warmup, args.min_seconds),
                )
            )
            del steps
        log(f"memory: {device} peaks, {2 * len(MEMORY_IMPLS)} cases")  # one child process (CPU)
        specs = [
            cases.memory_spec(i, k, q, device, pair_selection)
            for pair_selection, _, _ in rows
            for i in MEMORY_IMPLS
        ]
        all_peaks = memory.peak_bytes_many(specs)[0]
        for n, (pair_selection, times, calls) in enumerate(rows):
            peaks = dict(
                zip(MEMORY_IMPLS, all_peaks[n * len(MEMORY_IMPLS) : (n + 1) * len(MEMORY_IMPLS)])
            )
            lines.append(
                f"| {device} | {cases.selection_label(pair_selection)} | {_ms(times['ext'])} "
                f"| {_ms(times['reference'])} | {_ratio(times['reference'], times['ext'])} "
                f"| {_mb(peaks['ext'])} | {_mb(peaks['reference'])} "
                f"| {_ratio(peaks['reference'], peaks['ext'])} | {calls} |"
            )
    return lines


def epoch_section():
    """One epoch of `train/main.py --dataset iemocap --demo` per backend, same seed."""
    from train.main import main as train_main

    runs = {"ext": [], "reference": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(EPOCH_RUNS):
            for backend in runs:
                log(f"epoch: backend {backend}, run {i + 1}/{EPOCH_RUNS}")
                argv = [
                    "--dataset",
                    "iemocap",
                    "--demo",
                    "--epochs",
                    "1",
                    "--seed",
                    "1",
                    "--backend",
                    backend,
                    "--out",
                    str(Path(tmp) / f"{backend}{i}"),
                ]
                with contextlib.redirect_stdout(io.StringIO()):
                    runs[backend].append(train_main(argv))
    best = {b: min(rs, key=lambda s: s["train_time_s"]) for b, rs in runs.items()}
    lines = [
        "### One training epoch, IEMOCAP demo "
        "(train/main.py --dataset iemocap --demo --epochs 1 --seed 1)",
        "",
        "| backend | epoch + validation s | valid loss |",
        "|---|---:|---:|",
    ]
    for backend, summary in best.items():
        lines.append(
            f"| {backend} | {summary['train_time_s']:.3g} "
            f"| {summary['seeds'][0]['valid_loss']:.6f} |"
        )
    ratio = best["reference"]["train_time_s"] / best["ext"]["train_time_s"]
    lines += [
        "",
        f"reference/ext: {ratio:.2f}x (the faster of {EPOCH_RUNS} interleaved runs each).",
    ]
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sizes",
        default=",".join(map(str, cases.DEFAULT_SIZES)),
        type=lambda text: cases.parse_sizes(text, source="--sizes"),
        help="comma-separated batch sizes K",
    )
    p.add_argument("--repeats", type=int, default=10, help="timed calls per implementation and row")
    p.add_argument(
        "--min-seconds",
        type=float,
        default=1.0,
        help="keep adding interleaved rounds to a row until it has been timed this long",
    )
    p.add_argument(
        "--warmup", type=int, default=2, help="untimed calls first (torch.compile compiles here)"
    )
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    p.add_argument(
        "--devices", default=",".join(cases.devices()), help="comma-separated: cpu, cuda"
    )
    p.add_argument(
        "--epoch",
        action="store_true",
        help="add one training epoch of the IEMOCAP demo, ext vs reference",
    )
    p.add_argument(
        "--big", action="store_true", help=f"add K = {BIG_K}, ext only: peak memory within 1 GB"
    )
    p.add_argument(
        "--memory",
        type=int,
        default=0,
        metavar="Q",
        help="add HyConLoss(memory_size=Q) with a full memory at K = --memory-k, ext vs reference",
    )
    p.add_argument(
        "--memory-k", type=int, default=256, metavar="K", help="batch size of the --memory rows"
    )
    p.add_argument(
        "--memory-only", action="store_true", help="with --memory: skip the loss rows of --sizes"
    )
    p.add_argument(
        "--markdown-out", type=Path, default=None, help="also write the Markdown to this file"
    )
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.min_seconds < 0:
        p.error(f"--min-seconds must be >= 0, got {args.min_seconds}")
    if args.memory < 0 or args.memory_k < 1:
        p.error(f"--memory must be >= 0 and --memory-k >= 1, got {args.memory} and {args.memory_k}")
    if args.memory_only and not args.memory:
        p.error("--memory-only: needs --memory Q")
    if args.warmup < 1:
        p.error(f"--warmup must be >= 1 (the first call includes compilation), got {args.warmup}")
    args.devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    for device in args.devices:
        if device not in ("cpu", "cuda"):
            p.error(f"--devices: expected cpu and/or cuda, got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            p.error("--devices: cuda requested but torch.cuda.is_available() is False")
    return args


def main(argv=None):
    args = parse_args(argv)
    for device in args.devices:
        reason = cases.ext_unavailable_reason(device)
        if reason:
            sys.exit(f"error: {reason}")
    rows = []
    for device in args.devices:
        for k in () if args.memory_only else args.sizes:
            for pair_selection in (False, True):
                log(f"loss: {device} K={k} selection={cases.selection_label(pair_selection)}")
                rows.append(measure_row(device, k, pair_selection, args))
    add_peaks(rows)
    lines = header(args) + ([] if args.memory_only else [""] + loss_table(rows))
    if args.big:
        lines += [""] + big_section(rows, args.devices)
    if args.memory:
        lines += [""] + memory_section(args)
    if args.epoch:
        lines += [""] + epoch_section()
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.markdown_out:
        args.markdown_out.write_text(text)
        log(f"wrote {args.markdown_out}")


if __name__ == "__main__":
    main()
