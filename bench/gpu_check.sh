#!/usr/bin/env bash
# Everything a machine with an NVIDIA GPU should prove about the CUDA kernels, in one call:
#   1. build the extension in place for this GPU's architecture;
#   2. tests/test_cuda.py (CPU-vs-CUDA agreement in float32/float64, fp16/bf16, opcheck, the
#      loss) with the fixed seeds, then again with a fresh random HYCON_TEST_SEED;
#   3. the device's own ceilings (bench/gpu_ceilings.py) and the benchmark table
#      (bench/report.py --devices cuda), alone on the machine;
#   4. compute-sanitizer memcheck (all CUDA tests) and racecheck (the float32 ones: float64 runs
#      the same kernels), while the rest of the test suite runs on the CPUs;
#   5. pytest-benchmark's CUDA cases (pytest bench/ --benchmark-only -k cuda).
#
#   bench/gpu_check.sh [LOG_DIR]     LOG_DIR defaults to $OUT, else ./gpu_check_logs
#
# Environment: PYTHON (python3), DEADLINE_S (seconds for the whole run, default 3600: each stage
# gets at most what is left), REPORT_SIZES (64,512,4096), BENCH_SIZES (64,4096). Every stage
# writes LOG_DIR/NAME.log; LOG_DIR/summary.txt gets one line per stage and is printed last. The
# exit code is the number of stages that failed. Needs requirements.txt's packages (pytest,
# pytest-benchmark, pytorch-metric-learning, expecttest, ...) next to a CUDA torch.
set -uo pipefail
cd "$(dirname "$0")/.."

LOG="${1:-${OUT:-gpu_check_logs}}"
mkdir -p "$LOG"
PY="${PYTHON:-python3}"
DEADLINE=$((SECONDS + ${DEADLINE_S:-3600}))
SANITIZER="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
FRESH_SEED="${HYCON_TEST_SEED:-$((RANDOM * 32768 + RANDOM))}"
failed=0

note() { echo "$*" | tee -a "$LOG/summary.txt"; }

# run NAME LIMIT_S CMD...: CMD with its output in LOG/NAME.log, stopped after LIMIT_S seconds or
# at the deadline, whichever comes first.
run() {
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  local left=$((DEADLINE - SECONDS))
  ((limit > left)) && limit=$left
  if ((limit <= 5)); then
    note "$name: not run (deadline)"
    failed=$((failed + 1))
    return
  fi
  timeout --kill-after=10 "$limit" "$@" >"$LOG/$name.log" 2>&1
  rc=$?
  local status="ok"
  ((rc == 124 || rc == 137)) && status="TIMED OUT after $limit s"
  ((rc != 0 && rc != 124 && rc != 137)) && status="FAILED (exit $rc)"
  ((rc != 0)) && failed=$((failed + 1))
  note "$name: $status, $((SECONDS - start)) s | $(grep -E '[0-9]+ (passed|failed)' "$LOG/$name.log" | tail -n 1) $(grep 'ERROR SUMMARY' "$LOG/$name.log" | tail -n 1)"
}

: >"$LOG/summary.txt"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
  nvcc --version | tail -n 2
  "$SANITIZER" --version | head -n 2
  g++ --version | head -n 1
  env | grep -E '^(CC|CXX|CFLAGS|CXXFLAGS|LDFLAGS|LDSHARED)=' || true
} >"$LOG/env.log" 2>&1
head -n 12 "$LOG/env.log"

ARCH="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$ARCH}" MAX_JOBS="${MAX_JOBS:-$(nproc)}"
run build 400 "$PY" setup.py build_ext --inplace  # not -q: the log keeps the link command
if ! readelf -d hycon_ext/_C*.so 2>/dev/null | grep -q 'NEEDED.*libstdc++'; then
  note "build: WARNING: hycon_ext/_C*.so does not load the shared libstdc++ (see docs/gpu.md)"
fi
if ! "$PY" -c 'import sys; from hycon_ext import ops; sys.exit(not ops.is_available("cuda"))' 2>>"$LOG/build.log"; then
  note "no CUDA kernels after the build: see $LOG/build.log"
  exit 99
fi

export PYTHONUNBUFFERED=1
run cuda-tests 240 env HYCON_TEST_SEED=0 "$PY" -m pytest tests/test_cuda.py -q -p no:cacheprovider
run cuda-tests-seed-"$FRESH_SEED" 240 env HYCON_TEST_SEED="$FRESH_SEED" \
  "$PY" -m pytest tests/test_cuda.py -q -p no:cacheprovider

run ceilings 120 "$PY" bench/gpu_ceilings.py
run report 400 "$PY" bench/report.py --devices cuda --sizes "${REPORT_SIZES:-64,512,4096}" \
  --repeats 21 --warmup 3 --big --markdown-out "$LOG/report.md"
# The sanitizers see exact allocations only without the caching allocator. opcheck's many
# re-runs would multiply the sanitizer's time for no new kernel code.
SANITIZE=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --error-exitcode 1 --print-limit 20)
run memcheck 400 "${SANITIZE[@]}" --tool memcheck "$PY" -m pytest tests/test_cuda.py -q \
  -p no:cacheprovider -k "not opcheck" &
run racecheck 400 "${SANITIZE[@]}" --tool racecheck --racecheck-report hazard \
  "$PY" -m pytest tests/test_cuda.py -q -p no:cacheprovider -k "float32 and not opcheck and not many_modes" &
run other-tests 400 "$PY" -m pytest tests -q -p no:cacheprovider --ignore tests/test_cuda.py &
wait
# Background stages counted their failures in subshells: recount from the summary.
failed=$(grep -cE 'FAILED|TIMED OUT|not run' "$LOG/summary.txt")

run bench 300 "$PY" -m pytest bench --benchmark-only -k cuda -p no:cacheprovider \
  --hycon-sizes "${BENCH_SIZES:-64,4096}" --benchmark-max-time 0.2 --benchmark-min-rounds 5 \
  --benchmark-columns min,median,max,rounds

echo
cat "$LOG/ceilings.log" "$LOG/report.md" 2>/dev/null | grep -v '^$'
echo
echo "== gpu_check summary (logs in $LOG)"
cat "$LOG/summary.txt"
exit "$failed"
