"""The public HyCon loss: validation, backend choice, and stats -> loss terms.

Semantics and equations: docs/losses.md. hycon_loss makes one `loss_values` call and
hycon_terms one `pair_terms` call (docs/design.md): the extension's op or its pure-PyTorch twin.
"""

import math
import numbers
import warnings
from typing import NamedTuple

import torch
from torch import nn

from . import reference
from .pairs import INTER, INTRA, SAME_SAMPLE, selection_size

try:
    from . import ops as _ops
except ImportError:  # extension package not built (or ops.py absent): reference only
    _ops = None

BACKENDS = ("auto", "ext", "reference")
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
    # float first: isinstance against the numbers ABCs costs ~0.3 us, a sizeable part of a
    # small-batch call; the result is the same.
    return type(value) is float or isinstance(value, numbers.Real)


def check_options(*, alpha=0.8, beta=0.2, gamma=1.0, lambdas=(1.0, 1.0, 1.0), backend="auto"):
    """Validate the options of every HyCon entry point (ranges: docs/losses.md).

    The defaults are valid, so a caller passes the options it takes. TypeError for a
    non-number alpha; ValueError naming the argument otherwise: alpha in (0, 1] (the
    refinement target of pairs whose similarity lies in (0, 1); 1 is no margin), beta in
    (0, 1], gamma finite and > 0 (s_p + gamma > 0, eq. 14), lambdas three finite numbers
    >= 0, backend one of BACKENDS. NaN fails every range test.
    """
    if not _is_real(alpha):
        raise TypeError(f"alpha: expected a number, got {type(alpha).__name__}")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha: expected a number in (0, 1] (1 = no modality margin), got {alpha!r}")
    if not _is_real(beta) or not 0 < beta <= 1:
        raise ValueError(f"beta: expected a number in (0, 1], got {beta!r}")
    if not _is_real(gamma) or not 0 < gamma < math.inf:
        raise ValueError(f"gamma: expected a number > 0 and finite, got {gamma!r}")
    if (isinstance(lambdas, (str, bytes)) or not hasattr(lambdas, "__len__")
            or len(lambdas) != 3 or not all(map(_is_real, lambdas))):
        raise ValueError(
            "lambdas: expected three numbers (lambda1 for IAMCL, lambda2 for IEMCL, "
            f"lambda3 for SCL), got {lambdas!r}")
    if not all(0 <= value < math.inf for value in lambdas):
        raise ValueError(f"lambdas: expected three finite numbers >= 0, got {tuple(lambdas)!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


def _check_not_meta(name, tensor):
    # A meta tensor has no values to compute a loss from; torch.compile never passes one here
    # (its FakeTensors report the real device), it reaches the fake kernels in ops.py instead.
    if tensor.device.type == "meta":
        raise ValueError(f"{name}: meta tensors are not supported by the eager loss (they hold no "
                         "values); pass tensors on cpu or cuda")


def _check_inputs(x_l, x_a, x_v, labels):
    named = (("x_l", x_l), ("x_a", x_a), ("x_v", x_v))
    for name, x in named:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D tensor (K, d), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    shape, dtype, device = x_l.shape, x_l.dtype, x_l.device
    for name, x in named[1:]:
        if x.shape != shape:
            raise ValueError(
                f"{name}: expected the shape of x_l {tuple(shape)}, got {tuple(x.shape)}")
        if x.dtype != dtype:
            raise TypeError(f"{name}: expected the dtype of x_l ({dtype}), got {x.dtype}")
        if x.device != device:
            raise ValueError(f"{name}: expected the device of x_l ({device}), got {x.device}")
    _check_not_meta("x_l", x_l)
    k, d = shape
    if k < 1 or d < 1:
        raise ValueError(f"x_l: expected at least one sample and one feature, got shape {(k, d)}")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(
            f"labels: expected a torch.Tensor of class ids, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels: expected integer class ids, got dtype {labels.dtype}")
    if labels.shape != (k,):
        raise ValueError(f"labels: expected shape (K,) = ({k},), got {tuple(labels.shape)}")
    _check_not_meta("labels", labels)


@torch.compiler.assume_constant_result  # torch.compile evaluates it once, at trace time
def _ext_available(device_type):
    return _ops is not None and _ops.is_available(device_type)


def _resolve_backend(backend, device):
    """The module (hycon_ext.ops or hycon_ext.reference) whose ops compute the stats."""
    global _warned_fallback
    if backend == "reference":
        return reference
    available = _ext_available(device.type)
    if backend == "ext":
        if not available and device.type not in ("cpu", "cuda"):
            raise RuntimeError(f"backend='ext': the hycon_ext kernels exist for cpu and cuda only, "
                               f"not {device}; pass backend='reference'")
        if not available:
            raise RuntimeError(
                f"backend='ext': the hycon_ext kernels are not built for device {device}; "
                "build them with `pip install -e . --no-build-isolation`, "
                "or pass backend='reference'")
        return _ops
    if available:
        return _ops
    if not _warned_fallback and not torch.compiler.is_compiling():  # Dynamo cannot trace warn
        _warned_fallback = True
        warnings.warn(
            f"hycon_ext: kernels not available for device {device}; backend='auto' falls back "
            "to the pure-PyTorch reference (slower). Pass backend='reference' to silence this.",
            RuntimeWarning, stacklevel=3)
    return reference


def terms_to_output(terms, lambdas=(1.0, 1.0, 1.0)):
    """HyConOutput from (possibly all-reduced) terms; a term with count 0 is 0."""
    check_options(lambdas=lambdas)
    return HyConOutput(*reference.combine_terms(terms.sums, terms.counts, lambdas))


def _selection_size(beta, n_samples, pair_selection):
    return selection_size(beta, n_samples) if pair_selection else 0


def hycon_terms(z_anchor, z_cand, a_ids, c_ids, *, n_samples, alpha=0.8, beta=0.2, gamma=1.0,
                pair_selection=False, select_positives=True, select_negatives=True,
                refinement=True, backend="auto"):
    """Un-normalised HyCon terms of some anchor rows against a candidate set (for DDP).

    z_anchor (N, d), z_cand (M, d): softmax-normalised rows; a_ids, c_ids: their descriptors
    (pairs.row_descriptors with global sample ids, so an anchor's own row among the candidates
    is recognised); n_samples: the global batch size K, which sets h = max(1, floor(beta * K)).
    Returns HyConTerms(sums, counts), each (3,) ordered (iamcl, iemcl, scl);
    terms_to_output(HyConTerms(all_reduced_sums, all_reduced_counts), lambdas) gives the loss.
    """
    check_options(alpha=alpha, beta=beta, gamma=gamma, backend=backend)
    for name, z in (("z_anchor", z_anchor), ("z_cand", z_cand)):
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or not z.is_floating_point():
            raise ValueError(f"{name}: expected a 2-D floating tensor of softmax-normalised rows")
    if z_cand.shape[1] != z_anchor.shape[1]:
        raise ValueError(
            f"z_cand: expected {z_anchor.shape[1]} features like z_anchor, got {z_cand.shape[1]}")
    if z_cand.dtype != z_anchor.dtype or z_cand.device != z_anchor.device:
        raise ValueError(f"z_cand: expected the dtype and device of z_anchor ({z_anchor.dtype}, "
                         f"{z_anchor.device}), got {z_cand.dtype}, {z_cand.device}")
    for name, ids, z in (("a_ids", a_ids, z_anchor), ("c_ids", c_ids, z_cand)):
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64:
            raise TypeError(f"{name}: expected an int64 tensor of row descriptors "
                            "(pairs.row_descriptors)")
        if ids.shape != (z.shape[0], 3):
            raise ValueError(f"{name}: expected shape ({z.shape[0]}, 3), got {tuple(ids.shape)}")
        if ids.device != z_anchor.device:
            raise ValueError(
                f"{name}: expected the device of z_anchor ({z_anchor.device}), got {ids.device}")
    _check_not_meta("z_anchor", z_anchor)
    if not isinstance(n_samples, numbers.Integral) or n_samples < 1:
        raise ValueError(f"n_samples: expected a positive integer, got {n_samples!r}")
    ops = _resolve_backend(backend, z_anchor.device)
    targets = [1.0, float(alpha), float(alpha)]
    terms = ops.pair_terms(z_anchor, z_cand, a_ids, c_ids, _MODES, targets,
                           _selection_size(beta, n_samples, pair_selection), float(gamma),
                           bool(select_positives), bool(select_negatives), bool(pair_selection),
                           bool(refinement))
    return HyConTerms(terms[0], terms[1])


def hycon_loss(x_l, x_a, x_v, labels, *, alpha=0.8, beta=0.2, gamma=1.0,
               lambdas=(1.0, 1.0, 1.0), pair_selection=False, select_positives=True,
               select_negatives=True, refinement=True, backend="auto"):
    """Hybrid contrastive loss (paper eq. 16) of three (K, d) modality batches.

    Returns HyConOutput(total, scl, iamcl, iemcl), 0-dim tensors differentiable w.r.t. the
    inputs. backend: "ext" (the compiled kernels), "reference" (pure PyTorch) or "auto"
    (ext when built for the inputs' device, else reference with a one-time warning).
    """
    _check_inputs(x_l, x_a, x_v, labels)
    check_options(alpha=alpha, beta=beta, gamma=gamma, lambdas=lambdas, backend=backend)
    ops = _resolve_backend(backend, x_l.device)
    return HyConOutput(*ops.loss_values(
        x_l, x_a, x_v, labels.to(x_l.device), alpha, lambdas,
        _selection_size(beta, x_l.shape[0], pair_selection), gamma, select_positives,
        select_negatives, pair_selection, refinement))


class HyConLoss(nn.Module):
    """nn.Module form of hycon_loss; the keywords are fixed at construction."""

    def __init__(self, *, alpha=0.8, beta=0.2, gamma=1.0, lambdas=(1.0, 1.0, 1.0),
                 pair_selection=False, select_positives=True, select_negatives=True,
                 refinement=True, backend="auto"):
        super().__init__()
        check_options(alpha=alpha, beta=beta, gamma=gamma, lambdas=lambdas, backend=backend)
        self.options = dict(
            alpha=alpha, beta=beta, gamma=gamma, lambdas=tuple(lambdas),
            pair_selection=pair_selection, select_positives=select_positives,
            select_negatives=select_negatives, refinement=refinement, backend=backend)

    def forward(self, x_l, x_a, x_v, labels):
        return hycon_loss(x_l, x_a, x_v, labels, **self.options)

    def extra_repr(self):
        return ", ".join(f"{key}={value!r}" for key, value in self.options.items())
