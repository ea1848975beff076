"""A small run of every fused CUDA kernel of loss_values, for compute-sanitizer
(bench/gpu_check.sh): forward + backward at shapes that leave partial tiles and several
candidate-tile splits, in every dtype and every dZ width (d <= 64, <= 128, <= 256), each
checked against the CPU kernels.

    HYCON_CUDA_FUSED=1 python bench/gpu_fused_smoke.py

Exits non-zero on a mismatch (the sanitizer's own exit code reports memory errors and races).
"""

import os
import sys
from pathlib import Path

if not __package__:  # run as a script: make `import hycon_ext` work from any directory
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import hycon_ext.ops  # noqa: E402,F401  (loads the extension's ops)

CASES = [  # (K, d, dtype)
    (5, 50, torch.float32),
    (70, 100, torch.float32),
    (23, 256, torch.float64),
    (40, 33, torch.bfloat16),
    (150, 7, torch.float16),  # 450 rows: several candidate-tile splits
]


def step(xs, labels, device):
    leaves = [x.detach().to(device).requires_grad_() for x in xs]
    out = torch.ops.hycon_ext.loss_values(
        *leaves, labels.to(device), 0.8, [1.0, 0.5, 2.0], 1, 1.0, True, True, False, True
    )
    losses = torch.stack(out[:4])
    grads = torch.autograd.grad(losses.sum(), leaves)
    return [losses.detach().cpu().double(), *(g.cpu().double() for g in grads)]


def main():
    if os.environ.get("HYCON_CUDA_FUSED") != "1":
        sys.exit("set HYCON_CUDA_FUSED=1: this script exercises the fused CUDA path")
    gen = torch.Generator().manual_seed(0)
    for k, d, dtype in CASES:
        xs = [(2 * torch.randn(k, d, generator=gen)).to(dtype) for _ in range(3)]
        labels = torch.randint(0, 4, (k,), generator=gen)
        tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
        for got, want in zip(step(xs, labels, "cuda"), step(xs, labels, "cpu")):
            scale = want.abs().max().item()
            err = (got - want).abs().max().item()
            if not err <= tol * max(scale, 1e-6):
                sys.exit(f"K={k} d={d} {dtype}: max error {err:.3g} vs scale {scale:.3g}")
        print(f"ok K={k} d={d} {dtype}")


if __name__ == "__main__":
    main()
