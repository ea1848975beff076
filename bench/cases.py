"""Benchmark cases shared by the pytest-benchmark files and report.py.

A case is a zero-argument "step" callable that runs forward + backward once, so timing and
memory measurement treat every implementation alike. Inputs follow docs/design.md: three
modality batches (K, d) stacked modality-major into 3K rows.
"""

import os

import torch

D = 50  # feature size of the paper's setup (4.4)
N_CLASSES = 4  # IEMOCAP's four emotions
ALPHA, BETA, GAMMA = 0.8, 0.2, 1.0  # paper defaults; gamma is the project default

# --benchmark-only default; 8192 is opt-in (dense reference needs GBs)
DEFAULT_SIZES = (32, 128, 512, 2048)
SMOKE_SIZES = (16,)  # --benchmark-disable default: keeps the CI run short
SIZES_ENV = "HYCON_BENCH_SIZES"

LOSS_IMPLS = ("ext", "reference", "compiled", "supcon")
OP_NAMES = ("similarity", "pair_sums", "hard_pair_sums")
OP_IMPLS = ("ext", "reference")


def parse_sizes(text, source=SIZES_ENV):
    """'32,128' -> (32, 128); names the source of the bad value on error."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(
            f"{source} must be comma-separated batch sizes K like '32,128', got {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"{source} must list at least one batch size K >= 1, got {text!r}")
    return sizes


def sizes_from_env(default):
    text = os.environ.get(SIZES_ENV)
    return parse_sizes(text) if text else tuple(default)


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def ext_unavailable_reason(device):
    """None when the extension's kernels run on ``device``, else why not (for a loud failure)."""
    try:
        from hycon_ext import ops
    except Exception as exc:  # any import failure means "not built"; show it verbatim
        return (
            f"hycon_ext.ops cannot be imported ({type(exc).__name__}: {exc}); "
            "build it with `pip install -e . --no-build-isolation`"
        )
    if not ops.is_available(torch.device(device)):
        return (
            f"hycon_ext kernels are not built for device {device!r} "
            "(hycon_ext.ops.is_available returned False)"
        )
    return None


def loss_inputs(k, device, seed=0):
    """x_l, x_a, x_v (K, D) leaves that require grad, and labels (K,) int64."""
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(k, D, generator=gen).to(device).requires_grad_() for _ in range(3)]
    labels = torch.randint(0, N_CLASSES, (k,), generator=gen).to(device)
    return xs, labels


def _fwd_bwd(loss_fn, leaves):
    def step():
        for leaf in leaves:
            leaf.grad = None
        loss_fn().backward()

    return step


def make_loss_step(impl, k, device, pair_selection, compile_backend="inductor", seed=0):
    """Forward + backward of one loss implementation on a fresh batch of K samples.

    impl: "ext" / "reference" (hycon_loss backends), "compiled" (torch.compile of the
    reference, one specialised graph per K), "supcon" (pytorch-metric-learning's SupConLoss on
    the same 3K rows and labels: a different formula, shown for scale; it has no selection).
    """
    from hycon_ext import hycon_loss

    xs, labels = loss_inputs(k, device, seed)
    kwargs = dict(alpha=ALPHA, beta=BETA, gamma=GAMMA, pair_selection=pair_selection)
    if impl in ("ext", "reference"):
        return _fwd_bwd(lambda: hycon_loss(*xs, labels, backend=impl, **kwargs).total, xs)
    if impl == "compiled":
        # Dynamo caches per code object and silently falls back to eager past its cache size
        # limit; every case compiles afresh so each K gets its own graph.
        torch._dynamo.reset()
        compiled = torch.compile(
            lambda a, b, c, y: hycon_loss(a, b, c, y, backend="reference", **kwargs).total,
            backend=compile_backend,
            dynamic=False,
        )
        return _fwd_bwd(lambda: compiled(*xs, labels), xs)
    if impl == "supcon":
        if pair_selection:
            raise ValueError("impl='supcon' has no pair selection; use pair_selection=False")
        from pytorch_metric_learning.losses import SupConLoss

        supcon = SupConLoss(temperature=0.1)
        rows_labels = labels.repeat(3)
        return _fwd_bwd(lambda: supcon(torch.cat(xs), rows_labels), xs)
    raise ValueError(f"impl must be one of {LOSS_IMPLS}, got {impl!r}")


def make_memory_step(impl, k, q, device, pair_selection, seed=0):
    """Forward + backward of HyConLoss(memory_size=q) on K samples, its memory already full.

    impl: "ext" or "reference" (the backend). The memory starts with q random samples, and
    each call enqueues the batch, so every call pairs 3K anchors with 3(K + q) candidates.
    """
    from hycon_ext import HyConLoss

    if impl not in ("ext", "reference"):
        raise ValueError(f"impl must be 'ext' or 'reference' for a memory case, got {impl!r}")
    xs, labels = loss_inputs(k, device, seed)
    module = HyConLoss(
        memory_size=q,
        backend=impl,
        alpha=ALPHA,
        beta=BETA,
        gamma=GAMMA,
        pair_selection=pair_selection,
    ).to(device)
    gen = torch.Generator().manual_seed(seed + 2)
    held = torch.softmax(torch.randn(3, q, D, generator=gen), dim=-1).to(device)
    module.memory.push(held, torch.randint(0, N_CLASSES, (q,), generator=gen).to(device))
    return _fwd_bwd(lambda: module(*xs, labels).total, xs)


def make_op_step(op, impl, k, device, seed=0):
    """Forward + backward of one op (ext) or its pure-PyTorch twin (reference) on 3K x 3K rows."""
    from hycon_ext.pairs import INTER, INTRA, SAME_SAMPLE, row_descriptors, selection_size

    if impl == "ext":
        from hycon_ext import ops as module
    elif impl == "reference":
        from hycon_ext import reference as module
    else:
        raise ValueError(f"impl must be one of {OP_IMPLS}, got {impl!r}")
    (x_l, x_a, x_v), labels = loss_inputs(k, device, seed)
    x = torch.cat([x_l, x_a, x_v]).detach()
    if op == "similarity":
        x.requires_grad_()
        return _fwd_bwd(lambda: module.similarity(x, x).sum(), [x])
    z = torch.softmax(x, dim=-1).requires_grad_()
    ids = row_descriptors(labels, 3)
    # Random weights on the stats so the backward sees a generic upstream gradient.
    gen = torch.Generator().manual_seed(seed + 1)
    if op == "pair_sums":
        modes, targets = [INTRA, INTER, SAME_SAMPLE], [1.0, ALPHA, ALPHA]
        w = torch.rand(3 * k, len(modes), 4, generator=gen).to(device)
        return _fwd_bwd(lambda: (module.pair_sums(z, z, ids, ids, modes, targets) * w).sum(), [z])
    if op == "hard_pair_sums":
        modes, targets = [INTRA, INTER], [1.0, ALPHA]
        h = selection_size(BETA, k)
        w = torch.rand(3 * k, len(modes), 4, generator=gen).to(device)
        return _fwd_bwd(
            lambda: (
                module.hard_pair_sums(z, z, ids, ids, modes, targets, h, GAMMA, True, True) * w
            ).sum(),
            [z],
        )
    raise ValueError(f"op must be one of {OP_NAMES}, got {op!r}")


def selection_label(pair_selection):
    return "on" if pair_selection else "off"


def loss_spec(impl, k, device, pair_selection):
    return {
        "kind": "loss",
        "impl": impl,
        "k": k,
        "device": device,
        "pair_selection": pair_selection,
    }


def memory_spec(impl, k, q, device, pair_selection):
    return {
        "kind": "memory",
        "impl": impl,
        "k": k,
        "q": q,
        "device": device,
        "pair_selection": pair_selection,
    }


def op_spec(op, impl, k, device):
    return {"kind": "op", "op": op, "impl": impl, "k": k, "device": device}


def make_step(spec):
    """The step of a case given as a plain dict (loss_spec / op_spec), e.g. in a child process."""
    if spec["kind"] == "loss":
        return make_loss_step(spec["impl"], spec["k"], spec["device"], spec["pair_selection"])
    if spec["kind"] == "op":
        return make_op_step(spec["op"], spec["impl"], spec["k"], spec["device"])
    if spec["kind"] == "memory":
        return make_memory_step(
            spec["impl"], spec["k"], spec["q"], spec["device"], spec["pair_selection"]
        )
    raise ValueError(f"spec['kind'] must be 'loss', 'op' or 'memory', got {spec['kind']!r}")
