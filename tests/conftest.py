"""Shared fixtures: random HyCon batches and the loss backends under test."""

import pytest
import torch

LABEL_PATTERNS = ("random", "all_equal", "distinct", "two_classes")


def require_ext(device="cpu"):
    """hycon_ext.ops with kernels for `device`; fails (never skips): CI builds the extension."""
    try:
        from hycon_ext import ops
    except ImportError as error:
        pytest.fail(
            f"hycon_ext.ops does not import ({error}); "
            "build it with `pip install -e . --no-build-isolation`"
        )
    if not ops.is_available(device):
        pytest.fail(
            f"hycon_ext kernels are not built for {device}; "
            "build them with `pip install -e . --no-build-isolation`"
        )
    return ops


def make_labels(k, pattern, generator):
    if pattern == "random":
        return torch.randint(0, 3, (k,), generator=generator)
    if pattern == "all_equal":
        return torch.full((k,), 4)
    if pattern == "distinct":
        return torch.arange(k) * 7  # one class per sample, ids need not be contiguous
    if pattern == "two_classes":
        return torch.arange(k) % 2
    raise ValueError(f"pattern: expected one of {LABEL_PATTERNS}, got {pattern!r}")


def _make_batch(k, d, pattern="random", seed=0, dtype=torch.float64, scale=2.0):
    """(x_l, x_a, x_v, labels): three (K, d) leaf tensors needing grad, and (K,) int64 labels."""
    generator = torch.Generator().manual_seed(seed)
    xs = [
        (scale * torch.randn(k, d, generator=generator, dtype=torch.float64))
        .to(dtype)
        .requires_grad_()
        for _ in range(3)
    ]
    return (*xs, make_labels(k, pattern, generator))


@pytest.fixture
def make_batch():
    """Factory: make_batch(k, d, pattern="random", seed=0, dtype=float64, scale=2.0)."""
    return _make_batch


@pytest.fixture
def ext_ops():
    """hycon_ext.ops with CPU kernels (fails when they are not built)."""
    return require_ext("cpu")


@pytest.fixture(params=["reference", "ext"])
def backend(request):
    """Each loss backend; "ext" fails when the kernels are missing."""
    if request.param == "ext":
        require_ext("cpu")
    return request.param
