"""Options, parametrisation and the shared benchmark runner for bench/.

Batch sizes K: --hycon-sizes=32,128 or the HYCON_BENCH_SIZES environment variable; otherwise
32,128,512,2048 when timing (8192 is opt-in: the dense reference needs GBs there) and 16 under
--benchmark-disable, where CI only checks that every case still runs.
Devices: CPU always, CUDA when torch sees one.
"""

import pytest

from bench import cases, memory


def pytest_addoption(parser):
    parser.addoption(
        "--hycon-sizes",
        default=None,
        help=f"comma-separated batch sizes K to benchmark (overrides {cases.SIZES_ENV}); "
        f"default {','.join(map(str, cases.DEFAULT_SIZES))}",
    )


def _sizes(config):
    text = config.getoption("--hycon-sizes")
    if text:
        return cases.parse_sizes(text, source="--hycon-sizes")
    timing = not config.getoption("benchmark_disable")
    return cases.sizes_from_env(cases.DEFAULT_SIZES if timing else cases.SMOKE_SIZES)


def pytest_generate_tests(metafunc):
    if "k" in metafunc.fixturenames:
        metafunc.parametrize("k", _sizes(metafunc.config), ids=lambda k: f"K={k}")
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", cases.devices())


@pytest.fixture
def require_ext(request):
    """Call with a device: fails the test loudly when the kernels are missing there.

    Only under --benchmark-disable (no timings wanted) does a missing build skip instead, so
    that the bench files stay runnable before the extension is built; the reason is printed.
    """

    def check(device):
        reason = cases.ext_unavailable_reason(device)
        if reason is None:
            return
        if request.config.getoption("benchmark_disable"):
            pytest.skip(reason)
        pytest.fail(reason, pytrace=False)

    return check


@pytest.fixture
def run_benchmark(benchmark):
    """run(step, spec, group, **info): warm up, record peak memory, then time ``step``.

    ``spec`` (cases.loss_spec / op_spec) describes the same case for the memory measurement,
    which on CPU runs in a child process (bench/memory.py). Under --benchmark-disable nothing
    is measured: the step runs once.
    """

    def run(step, spec, group, **info):
        device = spec["device"]

        def timed():
            step()
            cases.synchronize(device)  # CUDA work is asynchronous: time it to completion

        benchmark.group = group
        benchmark.extra_info.update(info)
        if not benchmark.disabled:
            timed()  # warm-up: torch.compile compiles here, lazy initialisation happens here
            peak, method = memory.peak_bytes(spec)
            benchmark.extra_info.update(peak_mem_bytes=peak, peak_mem_method=method)
        benchmark(timed)

    return run
