"""The fused path's peak memory grows linearly in K and stays far below the dense reference.

Not a benchmark (pytest --benchmark-only skips it): CI-sized memory checks that can fail,
with the measurement of bench/memory.py. Sizes sit past the CPU kernels' fixed similarity
workspace (chunk x M capped at 4M elements, reached at 3K = 2048 rows): below it the
workspace itself grows with K^2 by design, bounded. The issue states its 1/10 target at
K = 2048; K = 768 keeps the dense reference to a second and ~0.5 GB.
"""

import functools

import pytest

from bench import cases, memory

SMALL_K, LARGE_K = 768, 1536  # 2x the rows: linear growth is 2x the memory, a (3K)^2 buffer 4x
LINEAR_BOUND = 3  # between the two, with room for page rounding
REFERENCE_K = 768
REFERENCE_FACTOR = 10  # the bound: ext peak at most 1/10 of the reference's
SELECTION = pytest.mark.parametrize(
    "pair_selection", [False, True], ids=["selection=off", "selection=on"]
)


CASES = [("ext", SMALL_K), ("ext", LARGE_K), ("reference", REFERENCE_K)]


@functools.cache
def measured(device):
    """{(impl, K, pair_selection): peak bytes} of every case here, from one child process."""
    keys = [(impl, k, selection) for selection in (False, True) for impl, k in CASES]
    nbytes, method = memory.peak_bytes_many(
        [cases.loss_spec(impl, k, device, pair_selection) for impl, k, pair_selection in keys]
    )
    if None in nbytes:
        pytest.skip(
            f"peak memory cannot be measured here: {method} needs Linux's /proc/self/clear_refs"
        )
    return dict(zip(keys, nbytes))


@SELECTION
def test_ext_memory_is_linear_in_k(require_ext, device, pair_selection):
    require_ext(device)
    small, large = (measured(device)[("ext", k, pair_selection)] for k in (SMALL_K, LARGE_K))
    assert large <= LINEAR_BOUND * max(small, 1), (
        f"ext peak grew {large / max(small, 1):.1f}x from K={SMALL_K} ({small} B) "
        f"to K={LARGE_K} ({large} B); "
        f"linear growth is 2x, a (3K)^2 buffer 4x"
    )


@SELECTION
def test_ext_memory_far_below_reference(require_ext, device, pair_selection):
    require_ext(device)
    ext, ref = (
        measured(device)[(impl, REFERENCE_K, pair_selection)] for impl in ("ext", "reference")
    )
    assert REFERENCE_FACTOR * ext <= ref, (
        f"K={REFERENCE_K}: ext peak {ext / 1e6:.2f} MB is more than 1/{REFERENCE_FACTOR} "
        f"of the reference's {ref / 1e6:.2f} MB"
    )
