"""The two ceilings a GPU timing is judged against, measured on this device (not datasheet),
and loss_values' two CUDA paths against them.

    python bench/gpu_ceilings.py [--loss-sizes 64,512,4096,16384] [--d 50]

- copy: a 2 GiB device-to-device copy, bytes read + written per second;
- sgemm: float32 matrix product (TF32 off, as in the kernels' cuBLAS calls) at 8192^3 and at
  the shape of one similarity block of hycon_loss, (3K x d) @ (d x 3K) with K = 4096, d = 50;
- with --loss-sizes: torch.ops.hycon_ext.loss_values forward + backward (float32, no
  selection) on the chunked path and the fused one (HYCON_CUDA_FUSED=1), interleaved call by
  call, eager and (fused only: the chunked path synchronises) replayed from a CUDA graph; each
  as a fraction of the arithmetic floor, 6 (3K)^2 d FLOPs at the sgemm rate measured here, and
  of the memory floor, the inputs read and the gradients written once at the copy rate.
Medians of CUDA-event timings after warm-up, on random data. Prints Markdown.
"""

import argparse
import os
import statistics
import sys
from pathlib import Path

if not __package__:  # run as a script: make `import hycon_ext` work from any directory
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

REPEATS = 20
FUSED_ENV = "HYCON_CUDA_FUSED"


def time_ms(fn):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def median_ms(fn, repeats=REPEATS):
    for _ in range(3):
        fn()
    return statistics.median(time_ms(fn) for _ in range(repeats))


def copy_ms(numel):
    src = torch.rand(numel, device="cuda")
    dst = torch.empty_like(src)
    return median_ms(lambda: dst.copy_(src))


def matmul_ms(a, b):
    return median_ms(lambda: a @ b)


def ceilings():
    torch.backends.cuda.matmul.allow_tf32 = False
    numel = 2**29  # 2 GiB of float32
    copy_rate = 2 * numel * 4 / copy_ms(numel) / 1e6  # GB/s, read + write
    n = 8192
    gemm_ms = matmul_ms(torch.rand(n, n, device="cuda"), torch.rand(n, n, device="cuda"))
    gemm_rate = 2 * n**3 / gemm_ms / 1e9  # TFLOP/s
    rows, d = 3 * 4096, 50
    z = torch.rand(rows, d, device="cuda")
    block_ms = matmul_ms(z, z.T)
    print(
        f"- device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}"
    )
    print(f"- copy: {copy_rate:.0f} GB/s (read + write, 2 GiB)")
    print(f"- sgemm 8192^3: {gemm_rate:.1f} TFLOP/s")
    print(
        f"- sgemm {rows}x{d} @ {d}x{rows}: {block_ms:.3f} ms, "
        f"{2 * rows * rows * d / block_ms / 1e9:.1f} TFLOP/s, "
        f"{rows * rows * 4 / block_ms / 1e6:.0f} GB/s written"
    )
    return copy_rate, gemm_rate


def loss_step(k, d):
    """A float32 loss_values forward + backward at K, d (no selection) as a closure."""
    gen = torch.Generator(device="cuda").manual_seed(k)
    xs = [(2 * torch.randn(k, d, device="cuda", generator=gen)).requires_grad_() for _ in range(3)]
    labels = torch.randint(0, 8, (k,), device="cuda", generator=gen)

    def step():
        out = torch.ops.hycon_ext.loss_values(
            *xs, labels, 0.8, [1.0, 1.0, 1.0], 1, 1.0, True, True, False, True
        )
        return torch.autograd.grad(out[0], xs)

    return step


def with_path(fused, fn):
    def run():
        if fused:
            os.environ[FUSED_ENV] = "1"
        else:
            os.environ.pop(FUSED_ENV, None)
        return fn()

    return run


def graph_of(step):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def loss_table(sizes, d, copy_rate, gemm_rate):
    import hycon_ext.ops  # noqa: F401  (loads the extension's ops)

    print(
        f"\n| K | rows | floor ms (6 (3K)^2 d at {gemm_rate:.1f} TFLOP/s) | chunked ms | "
        f"fused ms | fused graph ms | fused / floor | memory floor us |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in sizes:
        rows = 3 * k
        floor_ms = 6 * rows**2 * d / (gemm_rate * 1e9)
        mem_floor_us = 2 * rows * d * 4 / (copy_rate * 1e3)
        step = loss_step(k, d)
        chunked, fused = with_path(False, step), with_path(True, step)
        repeats = REPEATS if k <= 4096 else 5
        for fn in (chunked, fused):
            for _ in range(2):
                fn()
        times = {"chunked": [], "fused": []}
        for _ in range(repeats):
            times["chunked"].append(time_ms(chunked))
            times["fused"].append(time_ms(fused))
        os.environ[FUSED_ENV] = "1"
        graph = graph_of(step)
        graph_ms = median_ms(graph.replay, repeats)
        del graph
        c_ms, f_ms = statistics.median(times["chunked"]), statistics.median(times["fused"])
        print(
            f"| {k} | {rows} | {floor_ms:.3f} | {c_ms:.3f} | {f_ms:.3f} | {graph_ms:.3f} | "
            f"{floor_ms / min(f_ms, graph_ms):.1%} | {mem_floor_us:.1f} |",
            flush=True,
        )
    os.environ.pop(FUSED_ENV, None)


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--loss-sizes", default="", help="comma-separated K for the loss_values timings")
    p.add_argument("--d", type=int, default=50, help="feature size of the loss_values timings")
    args = p.parse_args()
    copy_rate, gemm_rate = ceilings()
    if args.loss_sizes:
        loss_table([int(k) for k in args.loss_sizes.split(",")], args.d, copy_rate, gemm_rate)


if __name__ == "__main__":
    main()
