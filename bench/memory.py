"""Peak extra memory of one forward + backward step.

CPU: each case runs in a child process (python -m bench.memory SPEC) that calls the step
once to warm up, resets the kernel's peak-RSS counter (/proc/self/clear_refs, Linux >= 4.0),
calls it again and reports VmHWM minus the RSS at the start. Unlike tracemalloc (blind to
torch's allocator) or the torch profiler (torch allocations on instrumented threads only),
this counts every byte the step touches: tensors, kernel workspaces on all worker threads,
std::vector buffers. The child runs with MALLOC_MMAP_THRESHOLD_ fixed at 128 KiB, so glibc
maps every large block on allocation and unmaps it on free: RSS then follows live memory,
not the allocator's retained free lists (with glibc's default dynamic threshold, repeated
measurements of one case differed up to 2x). The child keeps this allocator setting, and
the memory it touches, away from the timings. Resolution: one 4 KiB page.

CUDA: in process, torch.cuda.max_memory_allocated during the step minus memory_allocated
before it (the caching allocator's own exact counters).
"""

import ctypes
import ctypes.util
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench import cases

CPU_METHOD = "VmHWM delta in a child process (peak RSS, all threads and allocators)"
CUDA_METHOD = "torch.cuda.max_memory_allocated delta"
_REPO_ROOT = Path(__file__).resolve().parent.parent
_MMAP_THRESHOLD = str(128 * 1024)

_LIBC_NAME = ctypes.util.find_library("c")
# glibc only
_MALLOC_TRIM = getattr(ctypes.CDLL(_LIBC_NAME), "malloc_trim", None) if _LIBC_NAME else None


def _proc_status_bytes(key):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    raise RuntimeError(f"/proc/self/status has no {key} line")


def cpu_peak_bytes(step):
    """Peak extra resident bytes of ``step()`` in this process.

    None without /proc/self/clear_refs.
    """
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)  # return free heap to the OS so that reusing it cannot hide an allocation
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # 5: reset the peak RSS to the current RSS
    except OSError:
        return None
    start = _proc_status_bytes("VmRSS")
    step()
    return max(0, _proc_status_bytes("VmHWM") - start)


def cuda_peak_bytes(step, device="cuda"):
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - start


def measure_many(specs):
    """([{"peak_bytes": int or None, "seconds": float}] per case, method): one warmed-up step each.

    specs: dicts that cases.make_step takes, all on one device type; an optional "warmup_k"
    warms up at another K (a cheap warm-up before a long case). On CPU one child process
    measures them in turn, resetting the peak counter before each.
    """
    devices = {torch.device(spec["device"]).type for spec in specs}
    if len(devices) != 1:
        raise ValueError(f"specs must all name one device type, got {sorted(devices)}")
    if devices == {"cuda"}:
        return _measure_in_turn(specs, cuda_peak_bytes), CUDA_METHOD
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=_MMAP_THRESHOLD)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
    child = subprocess.run(
        [sys.executable, "-m", "bench.memory", json.dumps(specs)],
        cwd=_REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if child.returncode != 0:
        raise RuntimeError(f"memory measurement of {specs} failed:\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1]), CPU_METHOD


def peak_bytes_many(specs):
    """([peak extra bytes or None per case], method); see measure_many."""
    results, method = measure_many(specs)
    return [r["peak_bytes"] for r in results], method


def peak_bytes(spec):
    """(peak extra bytes or None, method) of one case; see measure_many."""
    peaks, method = peak_bytes_many([spec])
    return peaks[0], method


def _measure_in_turn(specs, measure):
    results = []
    for spec in specs:
        step = cases.make_step(spec)
        warmup_k = spec.get("warmup_k", spec["k"])
        # Warm-up: lazy initialisation, thread pools and torch.compile (same K only: another K
        # compiles another graph) stay out of the peak.
        (step if warmup_k == spec["k"] else cases.make_step({**spec, "k": warmup_k}))()
        start = time.perf_counter()
        peak = measure(step, spec["device"])
        results.append({"peak_bytes": peak, "seconds": time.perf_counter() - start})
        del step
    return results


if __name__ == "__main__":
    print(
        json.dumps(
            _measure_in_turn(json.loads(sys.argv[1]), lambda step, device: cpu_peak_bytes(step))
        )
    )
