"""The public HyCon loss: validation, backend choice, and stats -> loss terms.

Semantics and equations: docs/losses.md. hycon_loss makes one `loss_values` call and
hycon_terms one `pair_terms` call (docs/design.md): the extension's op or its pure-PyTorch twin.
Any other number of modalities, reduction="sum" and the cross-batch memory go through
`pair_terms` (anchors against candidates), whose un-normalised sums carry the gradient.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor, nn

from . import reference
from .memory import CrossBatchMemory
from .pairs import INTER, INTRA, SAME_SAMPLE, row_descriptors, selection_size

_ops: Optional[ModuleType]
try:
    from . import ops as _ops
except ImportError:  # extension package not built (or ops.py absent): reference only
    _ops = None

BACKENDS = ("auto", "ext", "reference")
# mean: each term averaged over its anchors (the loss does not grow with K); sum: the same
# per-anchor terms summed over the anchors (the paper's "summed over all data samples", 3.5).
REDUCTIONS = ("mean", "sum")
# One op call scores all three modes, in the order of HyConTerms.
_MODES = [INTRA, INTER, SAME_SAMPLE]

_warned_fallback = False


class HyConOutput(NamedTuple):
    """0-dim loss tensors: total = lambda1 * iamcl + lambda2 * iemcl + lambda3 * scl."""

    total: torch.Tensor
    scl: torch.Tensor
    iamcl: torch.Tensor
    iemcl: torch.Tensor


class HyConTerms(NamedTuple):
    """Un-normalised terms, ordered (iamcl, iemcl, scl) like lambdas; term k = sums[k] / counts[k].

    counts[:2] are the anchors with at least one positive, counts[2] the anchors with
    same-sample pairs (all of them).
    Distributed callers all-reduce counts and divide their local sums by the global counts.
    """

    sums: torch.Tensor
    counts: torch.Tensor


def _is_real(value):
    # float first: isinstance against the numbers ABCs is slow next to a small-batch call, and
    # the result is the same.
    return type(value) is float or isinstance(value, numbers.Real)


def check_options(
    *,
    alpha: float = 0.8,
    beta: float = 0.2,
    gamma: float = 1.0,
    lambdas: Sequence[float] = (1.0, 1.0, 1.0),
    backend: str = "auto",
    reduction: str = "mean",
) -> None:
    """Validate the options of every HyCon entry point (ranges: docs/losses.md).

    The defaults are valid, so a caller passes the options it takes. TypeError for a
    non-number alpha; ValueError naming the argument otherwise: alpha in (0, 1] (the
    refinement target of pairs whose similarity lies in (0, 1); 1 is no margin), beta in
    (0, 1], gamma finite and > 0 (s_p + gamma > 0, eq. 14), lambdas three finite numbers
    >= 0, backend one of BACKENDS, reduction one of REDUCTIONS. NaN fails every range test.
    """
    if not _is_real(alpha):
        raise TypeError(f"alpha: expected a number, got {type(alpha).__name__}")
    if not 0 < alpha <= 1:
        raise ValueError(
            f"alpha: expected a number in (0, 1] (1 = no modality margin), got {alpha!r}"
        )
    if not _is_real(beta) or not 0 < beta <= 1:
        raise ValueError(f"beta: expected a number in (0, 1], got {beta!r}")
    if not _is_real(gamma) or not 0 < gamma < math.inf:
        raise ValueError(f"gamma: expected a number > 0 and finite, got {gamma!r}")
    if (
        isinstance(lambdas, (str, bytes))
        or not hasattr(lambdas, "__len__")
        or len(lambdas) != 3
        or not all(map(_is_real, lambdas))
    ):
        raise ValueError(
            "lambdas: expected three numbers (lambda1 for IAMCL, lambda2 for IEMCL, "
            f"lambda3 for SCL), got {lambdas!r}"
        )
    if not all(0 <= value < math.inf for value in lambdas):
        raise ValueError(f"lambdas: expected three finite numbers >= 0, got {tuple(lambdas)!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")


def _check_not_meta(name, tensor):
    # A meta tensor has no values to compute a loss from; torch.compile never passes one here
    # (its FakeTensors report the real device), it reaches the fake kernels in ops.py instead.
    if tensor.device.type == "meta":
        raise ValueError(
            f"{name}: meta tensors are not supported by the eager loss (they hold no "
            "values); pass tensors on cpu or cuda"
        )


def _check_inputs(x_l, x_a, x_v, labels):
    _check_batch((("x_l", x_l), ("x_a", x_a), ("x_v", x_v)), labels)


def _check_modalities(xs, labels):
    """xs: a list or tuple of at least two (K, d) modality batches."""
    if not isinstance(xs, (list, tuple)):
        raise TypeError(
            f"xs: expected a list or tuple of (K, d) tensors, one per modality, "
            f"got {type(xs).__name__}"
        )
    if len(xs) < 2:
        raise ValueError(f"xs: expected at least two modalities, got {len(xs)}")
    _check_batch([(f"xs[{m}]", x) for m, x in enumerate(xs)], labels)


def _check_batch(named, labels):
    """named: (name, tensor) per modality batch, each (K, d) floating like the first."""
    for name, x in named:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D tensor (K, d), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    first, x_first = named[0]
    shape, dtype, device = x_first.shape, x_first.dtype, x_first.device
    for name, x in named[1:]:
        if x.shape != shape:
            raise ValueError(
                f"{name}: expected the shape of {first} {tuple(shape)}, got {tuple(x.shape)}"
            )
        if x.dtype != dtype:
            raise TypeError(f"{name}: expected the dtype of {first} ({dtype}), got {x.dtype}")
        if x.device != device:
            raise ValueError(f"{name}: expected the device of {first} ({device}), got {x.device}")
    _check_not_meta(first, x_first)
    k, d = shape
    if k < 1 or d < 1:
        raise ValueError(
            f"{first}: expected at least one sample and one feature, got shape {(k, d)}"
        )
    if not isinstance(labels, torch.Tensor):
        raise TypeError(
            f"labels: expected a torch.Tensor of class ids, got {type(labels).__name__}"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels: expected integer class ids, got dtype {labels.dtype}")
    if labels.shape != (k,):
        raise ValueError(f"labels: expected shape (K,) = ({k},), got {tuple(labels.shape)}")
    _check_not_meta("labels", labels)


def _ext_available(device_type):
    return _ops is not None and _ops.is_available(device_type)


# torch.compile evaluates it once, at trace time. This is the mark that
# torch.compiler.assume_constant_result sets, set without the decorator: it imports torch._dynamo,
# which every `import hycon_ext` (and train/main.py --help) would then load although only
# torch.compile needs it. test_loss.py checks that the mark is still the decorator's.
_ext_available._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _resolve_backend(backend, device):
    """The module (hycon_ext.ops or hycon_ext.reference) whose ops compute the stats."""
    global _warned_fallback
    if backend == "reference":
        return reference
    available = _ext_available(device.type)
    if backend == "ext":
        if not available and device.type not in ("cpu", "cuda"):
            raise RuntimeError(
                f"backend='ext': the hycon_ext kernels exist for cpu and cuda only, "
                f"not {device}; pass backend='reference'"
            )
        if not available:
            raise RuntimeError(
                f"backend='ext': the hycon_ext kernels are not built for device {device}; "
                "build them with `pip install -e . --no-build-isolation`, "
                "or pass backend='reference'"
            )
        return _ops
    if available:
        return _ops
    if not _warned_fallback and not torch.compiler.is_compiling():  # Dynamo cannot trace warn
        _warned_fallback = True
        warnings.warn(
            f"hycon_ext: kernels not available for device {device}; backend='auto' falls back "
            "to the pure-PyTorch reference (slower). Pass backend='reference' to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
    return reference


def terms_to_output(
    terms: HyConTerms, lambdas: Sequence[float] = (1.0, 1.0, 1.0), reduction: str = "mean"
) -> HyConOutput:
    """HyConOutput from (possibly all-reduced) terms.

    reduction="mean": term k = sums[k] / counts[k] (0 when counts[k] is 0); "sum": sums[k].
    """
    check_options(lambdas=lambdas, reduction=reduction)
    return _output(terms, lambdas, reduction)


def _output(terms, lambdas, reduction):
    # Dividing by ones keeps one code path, exact in value and gradient.
    counts = terms.counts if reduction == "mean" else torch.ones_like(terms.counts)
    return HyConOutput(*reference.combine_terms(terms.sums, counts, lambdas))


def _selection_size(beta, n_samples, pair_selection):
    return selection_size(beta, n_samples) if pair_selection else 0


def hycon_terms(
    z_anchor: Tensor,
    z_cand: Tensor,
    a_ids: Tensor,
    c_ids: Tensor,
    *,
    n_samples: int,
    alpha: float = 0.8,
    beta: float = 0.2,
    gamma: float = 1.0,
    pair_selection: bool = False,
    select_positives: bool = True,
    select_negatives: bool = True,
    refinement: bool = True,
    backend: str = "auto",
    constant_rows: int = 0,
) -> HyConTerms:
    """Un-normalised HyCon terms of some anchor rows against a candidate set (for DDP).

    z_anchor (N, d), z_cand (M, d): softmax-normalised rows; a_ids, c_ids: their descriptors
    (pairs.row_descriptors with global sample ids, so an anchor's own row among the candidates
    is recognised); n_samples: the global batch size K, which sets h = max(1, floor(beta * K)).
    constant_rows: the last constant_rows rows of z_cand are constants (e.g. a cross-batch
    memory): they get no gradient, and none is computed for them.
    Returns HyConTerms(sums, counts), each (3,) ordered (iamcl, iemcl, scl);
    terms_to_output(HyConTerms(all_reduced_sums, all_reduced_counts), lambdas) gives the loss.
    """
    check_options(alpha=alpha, beta=beta, gamma=gamma, backend=backend)
    for name, z in (("z_anchor", z_anchor), ("z_cand", z_cand)):
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or not z.is_floating_point():
            raise ValueError(f"{name}: expected a 2-D floating tensor of softmax-normalised rows")
    if z_cand.shape[1] != z_anchor.shape[1]:
        raise ValueError(
            f"z_cand: expected {z_anchor.shape[1]} features like z_anchor, got {z_cand.shape[1]}"
        )
    if z_cand.dtype != z_anchor.dtype or z_cand.device != z_anchor.device:
        raise ValueError(
            f"z_cand: expected the dtype and device of z_anchor ({z_anchor.dtype}, "
            f"{z_anchor.device}), got {z_cand.dtype}, {z_cand.device}"
        )
    for name, ids, z in (("a_ids", a_ids, z_anchor), ("c_ids", c_ids, z_cand)):
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64:
            raise TypeError(
                f"{name}: expected an int64 tensor of row descriptors (pairs.row_descriptors)"
            )
        if ids.shape != (z.shape[0], 3):
            raise ValueError(f"{name}: expected shape ({z.shape[0]}, 3), got {tuple(ids.shape)}")
        if ids.device != z_anchor.device:
            raise ValueError(
                f"{name}: expected the device of z_anchor ({z_anchor.device}), got {ids.device}"
            )
    _check_not_meta("z_anchor", z_anchor)
    if not isinstance(n_samples, numbers.Integral) or n_samples < 1:
        raise ValueError(f"n_samples: expected a positive integer, got {n_samples!r}")
    if (
        isinstance(constant_rows, bool)
        or not isinstance(constant_rows, numbers.Integral)
        or not 0 <= constant_rows <= z_cand.shape[0]
    ):
        raise ValueError(
            f"constant_rows: expected an integer in [0, {z_cand.shape[0]}] (the rows of z_cand), "
            f"got {constant_rows!r}"
        )
    ops = _resolve_backend(backend, z_anchor.device)
    return _terms(
        ops,
        z_anchor,
        z_cand,
        a_ids,
        c_ids,
        _selection_size(beta, n_samples, pair_selection),
        alpha,
        gamma,
        select_positives,
        select_negatives,
        pair_selection,
        refinement,
        constant_rows,
    )


def _terms(
    ops,
    za,
    zc,
    a_ids,
    c_ids,
    h,
    alpha,
    gamma,
    select_positives,
    select_negatives,
    pair_selection,
    refinement,
    constant_rows=0,
):
    terms = ops.pair_terms(
        za,
        zc,
        a_ids,
        c_ids,
        _MODES,
        [1.0, float(alpha), float(alpha)],
        h,
        float(gamma),
        bool(select_positives),
        bool(select_negatives),
        bool(pair_selection),
        bool(refinement),
        int(constant_rows),
    )
    return HyConTerms(terms[0], terms[1])


def hycon_loss(
    x_l: Tensor,
    x_a: Tensor,
    x_v: Tensor,
    labels: Tensor,
    *,
    alpha: float = 0.8,
    beta: float = 0.2,
    gamma: float = 1.0,
    lambdas: Sequence[float] = (1.0, 1.0, 1.0),
    pair_selection: bool = False,
    select_positives: bool = True,
    select_negatives: bool = True,
    refinement: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
) -> HyConOutput:
    """Hybrid contrastive loss (paper eq. 16) of three (K, d) modality batches.

    Returns HyConOutput(total, scl, iamcl, iemcl), 0-dim tensors differentiable w.r.t. the
    inputs. reduction: "mean" (each term averaged over its anchors) or "sum" (summed over
    them, the paper's 3.5). backend: "ext" (the compiled kernels), "reference" (pure PyTorch)
    or "auto" (ext when built for the inputs' device, else reference with a one-time warning).
    """
    _check_inputs(x_l, x_a, x_v, labels)
    check_options(
        alpha=alpha, beta=beta, gamma=gamma, lambdas=lambdas, backend=backend, reduction=reduction
    )
    return _batch_loss(
        (x_l, x_a, x_v),
        labels,
        alpha,
        beta,
        gamma,
        lambdas,
        pair_selection,
        select_positives,
        select_negatives,
        refinement,
        reduction,
        backend,
    )


def hycon_loss_multi(
    xs: Sequence[Tensor],
    labels: Tensor,
    *,
    alpha: float = 0.8,
    beta: float = 0.2,
    gamma: float = 1.0,
    lambdas: Sequence[float] = (1.0, 1.0, 1.0),
    pair_selection: bool = False,
    select_positives: bool = True,
    select_negatives: bool = True,
    refinement: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
) -> HyConOutput:
    """hycon_loss of M >= 2 modality batches xs (a list or tuple of (K, d) tensors).

    SCL pulls each anchor's M - 1 other modalities of its sample to alpha, IAMCL pairs within
    a modality, IEMCL across all other modalities (docs/losses.md). With three batches it is
    hycon_loss(*xs, labels, ...) (the same op call, so the same numbers).
    """
    _check_modalities(xs, labels)
    check_options(
        alpha=alpha, beta=beta, gamma=gamma, lambdas=lambdas, backend=backend, reduction=reduction
    )
    return _batch_loss(
        tuple(xs),
        labels,
        alpha,
        beta,
        gamma,
        lambdas,
        pair_selection,
        select_positives,
        select_negatives,
        refinement,
        reduction,
        backend,
    )


def _batch_loss(
    xs,
    labels,
    alpha,
    beta,
    gamma,
    lambdas,
    pair_selection,
    select_positives,
    select_negatives,
    refinement,
    reduction,
    backend,
):
    """The loss of validated batches: every anchor against the whole batch.

    Three modalities averaged: one loss_values call. Otherwise softmax and one pair_terms call,
    whose un-normalised sums are the "sum" reduction and carry the exact gradient.
    """
    device = xs[0].device
    ops = _resolve_backend(backend, device)
    labels = labels.to(device)
    h = _selection_size(beta, xs[0].shape[0], pair_selection)
    if len(xs) == 3 and reduction == "mean":
        return HyConOutput(
            *ops.loss_values(
                *xs,
                labels,
                alpha,
                lambdas,
                h,
                gamma,
                select_positives,
                select_negatives,
                pair_selection,
                refinement,
            )
        )
    z = torch.softmax(torch.cat(xs), dim=-1)
    ids = row_descriptors(labels, len(xs))
    terms = _terms(
        ops,
        z,
        z,
        ids,
        ids,
        h,
        alpha,
        gamma,
        select_positives,
        select_negatives,
        pair_selection,
        refinement,
    )
    return _output(terms, lambdas, reduction)


class HyConLoss(nn.Module):
    """nn.Module form of hycon_loss_multi; the keywords are fixed at construction.

    module(x_1, ..., x_M, labels) with M >= 2 modality batches (x_l, x_a, x_v for HyCon).

    memory_size=Q > 0 keeps a FIFO of the Q most recent samples' detached, softmax-normalised
    rows (every modality) and labels (hycon_ext.memory.CrossBatchMemory, the submodule
    ``memory``: in state_dict, moved by .to()). Each call pairs the batch's anchors with the
    batch plus the samples in memory as candidates (memory rows are always other samples, so
    SCL stays within the batch), h = max(1, floor(beta * (K + Q_now))), and then the batch
    enters the memory. Gradients reach only the batch.

    distributed=True: under an initialised torch.distributed process group, every local anchor
    is paired with the global batch of all ranks as hycon_loss_distributed does (values are the
    global loss, gradients scaled for DDP's averaging), and the memory holds the gathered global
    batch, identical on every rank. Without a process group it is the one-process loss.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.8,
        beta: float = 0.2,
        gamma: float = 1.0,
        lambdas: Sequence[float] = (1.0, 1.0, 1.0),
        pair_selection: bool = False,
        select_positives: bool = True,
        select_negatives: bool = True,
        refinement: bool = True,
        reduction: str = "mean",
        memory_size: int = 0,
        distributed: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_options(
            alpha=alpha,
            beta=beta,
            gamma=gamma,
            lambdas=lambdas,
            backend=backend,
            reduction=reduction,
        )
        if (
            isinstance(memory_size, bool)
            or not isinstance(memory_size, numbers.Integral)
            or memory_size < 0
        ):
            raise ValueError(
                f"memory_size: expected an integer >= 0 (0: no memory), got {memory_size!r}"
            )
        self.options: dict[str, Any] = dict(
            alpha=alpha,
            beta=beta,
            gamma=gamma,
            lambdas=tuple(lambdas),
            pair_selection=pair_selection,
            select_positives=select_positives,
            select_negatives=select_negatives,
            refinement=refinement,
            reduction=reduction,
            backend=backend,
        )
        self.distributed: bool = bool(distributed)
        self.memory: Optional[CrossBatchMemory] = (
            CrossBatchMemory(int(memory_size)) if memory_size else None
        )

    def forward(self, *inputs: Tensor) -> HyConOutput:
        if len(inputs) < 3:
            raise TypeError(
                f"HyConLoss: expected (x_1, ..., x_M, labels) with M >= 2 modality "
                f"batches, got {len(inputs)} arguments"
            )
        *xs, labels = inputs
        if self.memory is None and not self.distributed:
            return hycon_loss_multi(xs, labels, **self.options)
        from .distributed import loss_over_ranks  # distributed imports this module

        _check_modalities(xs, labels)
        options = dict(self.options)
        lambdas, reduction = options.pop("lambdas"), options.pop("reduction")
        return loss_over_ranks(
            xs,
            labels.to(xs[0].device),
            memory=self.memory,
            group=None,
            scale_for_ddp=True,
            lambdas=lambdas,
            reduction=reduction,
            options=options,
        )

    def extra_repr(self) -> str:
        options = {
            **self.options,
            "memory_size": self.memory.size if self.memory else 0,
            "distributed": self.distributed,
        }
        return ", ".join(f"{key}={value!r}" for key, value in options.items())
