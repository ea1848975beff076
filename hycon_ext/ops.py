"""Python wrappers of the compiled ops (torch.ops.hycon_ext.*) and their fake kernels.

Importing this module loads hycon_ext._C, whose C++ static initialisers register the op
schemas, the CPU/CUDA kernels and the autograd (C++, at the Autograd key). The fake kernels
below give torch.compile / FakeTensor the output shapes. Semantics: docs/design.md.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

try:
    from . import _C  # type: ignore[attr-defined]  # noqa: F401  (registers torch.ops.hycon_ext.*)

    _LOAD_ERROR: ImportError | None = None
except ImportError as error:  # not built, or built against another torch
    _LOAD_ERROR = error

_STAT_COLS = 4
_STATE_COLS = 7
# csrc/cpu/pair_engine.cpp's chunking: chunk rows = max(_MIN_CHUNK, _WORKSPACE_ELEMS // M).
_WORKSPACE_ELEMS = 1 << 22
_MIN_CHUNK = 32
_OP_NAMES = ("similarity", "pair_sums", "hard_pair_sums", "pair_terms", "loss_values")
_DISPATCH_KEYS = {"cpu": torch._C.DispatchKey.CPU, "cuda": torch._C.DispatchKey.CUDA}


def is_available(device: torch.device | str = "cpu") -> bool:
    """True if hycon_ext._C loaded and has kernels for `device` (a torch.device or str)."""
    if _LOAD_ERROR is not None:
        return False
    # A bare device type skips parsing into a torch.device, which every loss call would pay.
    return _has_kernels(device if device in _DISPATCH_KEYS else torch.device(device).type)


@functools.cache  # registrations are fixed once _C is loaded; lookups are slow
def _has_kernels(device_type: str) -> bool:
    key = _DISPATCH_KEYS.get(device_type)
    if key is None or (device_type == "cuda" and not torch.cuda.is_available()):
        return False
    return all(
        getattr(torch.ops.hycon_ext, name).default.has_kernel_for_dispatch_key(key)
        for name in _OP_NAMES
    )


def _require_built() -> None:
    if _LOAD_ERROR is not None:
        raise RuntimeError(
            "hycon_ext._C is not available (build it with "
            f"`pip install -e . --no-build-isolation`): {_LOAD_ERROR}"
        )


def similarity(x: Tensor, y: Tensor) -> Tensor:
    """softmax(x) softmax(y)^T over the feature dimension: (N, d), (M, d) -> (N, M)."""
    _require_built()
    return torch.ops.hycon_ext.similarity(x, y)


def pair_sums(
    za: Tensor,
    zc: Tensor,
    a_ids: Tensor,
    c_ids: Tensor,
    modes: Sequence[int],
    targets: Sequence[float],
) -> Tensor:
    """Per-anchor stats (N, len(modes), 4) = [pos_sum, neg_sum, pos_count, refine_sum]."""
    _require_built()
    return torch.ops.hycon_ext.pair_sums(
        za, zc, a_ids, c_ids, list(modes), [float(t) for t in targets]
    )


def hard_pair_sums(
    za: Tensor,
    zc: Tensor,
    a_ids: Tensor,
    c_ids: Tensor,
    modes: Sequence[int],
    targets: Sequence[float],
    h: int,
    gamma: float,
    select_positives: bool,
    select_negatives: bool,
) -> Tensor:
    """pair_sums with HyCon-v2 top-h pair selection; returns the stats only."""
    _require_built()
    stats, _state = torch.ops.hycon_ext.hard_pair_sums(
        za,
        zc,
        a_ids,
        c_ids,
        list(modes),
        [float(t) for t in targets],
        int(h),
        float(gamma),
        bool(select_positives),
        bool(select_negatives),
    )
    return stats


def pair_terms(
    za: Tensor,
    zc: Tensor,
    a_ids: Tensor,
    c_ids: Tensor,
    modes: Sequence[int],
    targets: Sequence[float],
    h: int,
    gamma: float,
    select_positives: bool,
    select_negatives: bool,
    pair_selection: bool,
    refinement: bool,
    constant_rows: int = 0,
) -> Tensor:
    """Loss terms (2, len(modes)) = [per-mode sums over anchors; anchors with a positive].

    pair_selection=False ignores h, gamma, select_positives and select_negatives (pair_sums' stats).
    The last constant_rows rows of zc are constants (e.g. a cross-batch memory): they get no
    gradient, and none is computed for them.
    """
    _require_built()
    terms, _stats, _state = torch.ops.hycon_ext.pair_terms(
        za,
        zc,
        a_ids,
        c_ids,
        list(modes),
        [float(t) for t in targets],
        int(h),
        float(gamma),
        bool(select_positives),
        bool(select_negatives),
        bool(pair_selection),
        bool(refinement),
        int(constant_rows),
    )
    return terms


def loss_values(
    x_l: Tensor,
    x_a: Tensor,
    x_v: Tensor,
    labels: Tensor,
    alpha: float,
    lambdas: Sequence[float],
    h: int,
    gamma: float,
    select_positives: bool,
    select_negatives: bool,
    pair_selection: bool,
    refinement: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(total, scl, iamcl, iemcl) of the three (K, d) batches: the whole loss in one op.

    Modes (INTRA, INTER, SAME_SAMPLE) with targets (1, alpha, alpha); h, gamma, select_positives
    and select_negatives only matter with selection (pair_terms).
    """
    _require_built()
    out = torch.ops.hycon_ext.loss_values(
        x_l,
        x_a,
        x_v,
        labels,
        float(alpha),
        [float(v) for v in lambdas],
        int(h),
        float(gamma),
        bool(select_positives),
        bool(select_negatives),
        bool(pair_selection),
        bool(refinement),
    )
    return out[:4]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _register_fakes() -> None:
    lib = "hycon_ext::"

    @torch.library.register_fake(lib + "similarity")
    def _(x, y):
        return x.new_empty((x.shape[0], y.shape[0]))

    @torch.library.register_fake(lib + "similarity_backward")
    def _(grad, x, y):
        return torch.empty_like(x), torch.empty_like(y)

    @torch.library.register_fake(lib + "pair_sums")
    def _(za, zc, a_ids, c_ids, modes, targets):
        return za.new_empty((za.shape[0], len(modes), _STAT_COLS), dtype=_compute_dtype(za.dtype))

    @torch.library.register_fake(lib + "pair_sums_backward")
    def _(grad_stats, za, zc, a_ids, c_ids, modes, targets, constant_rows=0):
        return torch.empty_like(za), torch.empty_like(zc)

    @torch.library.register_fake(lib + "hard_pair_sums")
    def _(za, zc, a_ids, c_ids, modes, targets, h, gamma, select_positives, select_negatives):
        dtype = _compute_dtype(za.dtype)
        stats = za.new_empty((za.shape[0], len(modes), _STAT_COLS), dtype=dtype)
        state = za.new_empty((za.shape[0], len(modes), _STATE_COLS), dtype=dtype)
        return stats, state

    @torch.library.register_fake(lib + "hard_pair_sums_backward")
    def _(
        grad_stats,
        za,
        zc,
        a_ids,
        c_ids,
        modes,
        targets,
        gamma,
        select_positives,
        select_negatives,
        state,
        constant_rows=0,
    ):
        return torch.empty_like(za), torch.empty_like(zc)

    @torch.library.register_fake(lib + "pair_terms")
    def _(
        za,
        zc,
        a_ids,
        c_ids,
        modes,
        targets,
        h,
        gamma,
        select_positives,
        select_negatives,
        pair_selection,
        refinement,
        constant_rows=0,
    ):
        dtype = _compute_dtype(za.dtype)
        n_modes = len(modes)
        terms = za.new_empty((2, n_modes), dtype=dtype)
        stats = za.new_empty((za.shape[0], n_modes, _STAT_COLS), dtype=dtype)
        state_shape = (za.shape[0], n_modes, _STATE_COLS) if pair_selection else (0,)
        return terms, stats, za.new_empty(state_shape, dtype=dtype)

    @torch.library.register_fake(lib + "pair_terms_backward")
    def _(
        grad_terms,
        za,
        zc,
        a_ids,
        c_ids,
        modes,
        targets,
        gamma,
        select_positives,
        select_negatives,
        pair_selection,
        refinement,
        stats,
        state,
        constant_rows=0,
    ):
        return torch.empty_like(za), torch.empty_like(zc)

    @torch.library.register_fake(lib + "loss_values")
    def _(
        x_l,
        x_a,
        x_v,
        labels,
        alpha,
        lambdas,
        h,
        gamma,
        select_positives,
        select_negatives,
        pair_selection,
        refinement,
    ):
        dtype = _compute_dtype(x_l.dtype)
        rows = 3 * x_l.shape[0]
        losses = [x_l.new_empty((), dtype=dtype) for _ in range(4)]
        state_shape = (rows, 3, _STATE_COLS) if pair_selection else (0,)
        z = x_l.new_empty((rows, x_l.shape[1]), dtype=dtype)
        terms = x_l.new_empty((2, 3), dtype=dtype)
        stats = x_l.new_empty((rows, 3, _STAT_COLS), dtype=dtype)
        # The CPU kernel keeps the (3K, 3K) similarities when they fit one chunk of its engine.
        kept = x_l.device.type == "cpu" and rows <= max(_MIN_CHUNK, _WORKSPACE_ELEMS // rows)
        sim = x_l.new_empty((rows, rows) if kept else (0,), dtype=dtype)
        return (*losses, z, terms, stats, x_l.new_empty(state_shape, dtype=dtype), sim)

    @torch.library.register_fake(lib + "loss_values_backward")
    def _(
        grad_losses,
        labels,
        z,
        alpha,
        lambdas,
        gamma,
        select_positives,
        select_negatives,
        pair_selection,
        refinement,
        terms,
        stats,
        state,
        sim,
        dtype,
    ):
        k = labels.shape[0]
        return tuple(z.new_empty((k, z.shape[1]), dtype=dtype) for _ in range(3))


if _LOAD_ERROR is None:
    _register_fakes()
