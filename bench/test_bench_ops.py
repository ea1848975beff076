"""Each op alone, forward + backward on 3K x 3K rows: the ext kernel vs its reference twin."""

import pytest

from bench import cases


@pytest.mark.parametrize("impl", cases.OP_IMPLS)
@pytest.mark.parametrize("op", cases.OP_NAMES)
def test_op(run_benchmark, require_ext, device, k, op, impl):
    if impl == "ext":
        require_ext(device)
    step = cases.make_op_step(op, impl, k, device)
    run_benchmark(
        step,
        cases.op_spec(op, impl, k, device),
        group=f"{device} K={k} op={op}",
        impl=impl,
        rows=3 * k,
    )
