"""The two ceilings a GPU timing is judged against, measured on this device (not datasheet).

    python bench/gpu_ceilings.py

- copy: a 2 GiB device-to-device copy, bytes read + written per second;
- sgemm: float32 matrix product (TF32 off, as in the kernels' cuBLAS calls) at 8192^3 and at
  the shape of one similarity block of hycon_loss, (3K x d) @ (d x 3K) with K = 4096, d = 50.
Medians of CUDA-event timings after warm-up, on random data. Prints one Markdown list.
"""

import statistics

import torch

REPEATS = 20


def median_ms(fn):
    for _ in range(3):
        fn()
    times = []
    for _ in range(REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    torch.backends.cuda.matmul.allow_tf32 = False
    src = torch.rand(2**29, device="cuda")  # 2 GiB of float32
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src))
    copy_bytes = 2 * src.numel() * src.element_size()
    del src, dst
    a, b = torch.rand(8192, 8192, device="cuda"), torch.rand(8192, 8192, device="cuda")
    gemm_ms = median_ms(lambda: a @ b)
    rows, d = 3 * 4096, 50
    z = torch.rand(rows, d, device="cuda")
    block_ms = median_ms(lambda: z @ z.T)
    print(f"- device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"- copy: {copy_bytes / copy_ms / 1e6:.0f} GB/s (read + write, 2 GiB)")
    print(f"- sgemm 8192^3: {2 * 8192**3 / gemm_ms / 1e9:.1f} TFLOP/s")
    print(f"- sgemm {rows}x{d} @ {d}x{rows}: {block_ms:.3f} ms, "
          f"{2 * rows * rows * d / block_ms / 1e9:.1f} TFLOP/s, "
          f"{rows * rows * 4 / block_ms / 1e6:.0f} GB/s written")


if __name__ == "__main__":
    main()
