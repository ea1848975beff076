"""Forward + backward of hycon_loss: ext vs eager reference vs torch.compile(reference) vs SupCon.

Each (device, K, selection) is one pytest-benchmark group, so its table reads the
implementations side by side. SupConLoss has no pair selection, so it appears in the selection=off
groups only. Never asserts timings.
"""

import pytest

from bench import cases

CASES = [
    pytest.param(
        pair_selection, impl, id=f"selection={cases.selection_label(pair_selection)}-{impl}"
    )
    for pair_selection in (False, True)
    for impl in cases.LOSS_IMPLS
    if not (impl == "supcon" and pair_selection)
]


@pytest.mark.parametrize(("pair_selection", "impl"), CASES)
def test_loss(run_benchmark, require_ext, benchmark, device, k, pair_selection, impl):
    if impl == "ext":
        require_ext(device)
    info = {"impl": impl, "rows": 3 * k}
    # Inductor's C++ codegen takes ~20 s per graph: when nothing is timed, only check that the
    # reference traces through dynamo and AOT autograd.
    backend = "aot_eager" if benchmark.disabled else "inductor"
    if impl == "compiled":
        info["compile_backend"] = backend
    step = cases.make_loss_step(impl, k, device, pair_selection, compile_backend=backend)
    spec = cases.loss_spec(impl, k, device, pair_selection)
    run_benchmark(
        step,
        spec,
        group=f"{device} K={k} selection={cases.selection_label(pair_selection)}",
        **info,
    )
