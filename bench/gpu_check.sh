#!/usr/bin/env bash
# Everything a machine with an NVIDIA GPU should prove about the CUDA kernels, in one call of
# about 8 minutes (DEADLINE_S=480), most important first:
#   1. build the extension in place for this GPU's architecture (the link command is logged);
#   2. the two fixes never run on a GPU before: the extension loads the shared libstdc++ and a
#      bad input raises a Python error with its numbers (no crash), and the empty-tensor test
#      helper (tests/test_cuda.py -k empty_inputs);
#   3. tests/test_cuda.py on both loss_values paths (chunked by default, fused with
#      HYCON_CUDA_FUSED=1), with the fixed seeds and a fresh random HYCON_TEST_SEED, four runs
#      side by side, while compute-sanitizer memcheck and racecheck run the fused kernels
#      (bench/gpu_fused_smoke.py);
#   4. alone on the GPU: the device's ceilings and loss_values' two paths against the
#      arithmetic floor (bench/gpu_ceilings.py), then the benchmark table (bench/report.py
#      --devices cuda, with the K = 16384 rows) for the fused path, then for the chunked one
#      (without torch.compile: its column is the same in both).
#
#   bench/gpu_check.sh [LOG_DIR]     LOG_DIR defaults to ./gpu_check_logs
#
# Where $OUT is set (the device tool), the end copies summary.txt there and packs LOG_DIR into
# $OUT/gpu_check_logs.tgz (the tool returns at most 8 files).
# Environment: PYTHON (python3), DEADLINE_S (seconds for the whole run, default 480: each stage
# gets at most what is left), REPORT_SIZES (64,512,4096), LOSS_SIZES (64,512,4096,16384). Every
# stage writes LOG_DIR/NAME.log; LOG_DIR/summary.txt gets one line per stage and is printed
# last. The exit code is the number of stages that failed. Needs requirements.txt's packages
# (pytest, pytorch-metric-learning, expecttest, ...) next to a CUDA torch.
set -uo pipefail
cd "$(dirname "$0")/.."

LOG="${1:-gpu_check_logs}"
mkdir -p "$LOG"
PY="${PYTHON:-python3}"
DEADLINE=$((SECONDS + ${DEADLINE_S:-480}))
SANITIZER="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
FRESH_SEED="${HYCON_TEST_SEED:-$((RANDOM * 32768 + RANDOM))}"

note() { echo "$*" | tee -a "$LOG/summary.txt"; }

# run NAME LIMIT_S CMD...: CMD with its output in LOG/NAME.log, stopped after LIMIT_S seconds or
# at the deadline, whichever comes first. Stages may run in the background (&).
run() {
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  local left=$((DEADLINE - SECONDS))
  ((limit > left)) && limit=$left
  if ((limit <= 5)); then
    note "$name: not run (deadline)"
    return
  fi
  timeout --kill-after=10 "$limit" "$@" >"$LOG/$name.log" 2>&1
  rc=$?
  local status="ok"
  ((rc == 124 || rc == 137)) && status="TIMED OUT after $limit s"
  ((rc != 0 && rc != 124 && rc != 137)) && status="FAILED (exit $rc)"
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
export PYTHONUNBUFFERED=1
run build 240 "$PY" setup.py build_ext --inplace  # not -q: the log keeps the link command
if ! "$PY" -c 'import sys; from hycon_ext import ops; sys.exit(not ops.is_available("cuda"))' 2>>"$LOG/build.log"; then
  note "no CUDA kernels after the build: see $LOG/build.log"
  exit 99
fi

# Fix 1: the shared libstdc++ (docs/gpu.md): NEEDED, and an error message with a number in it
# reaches Python whole (a static copy crashed here with SIGSEGV).
run fix-libstdcxx 60 bash -c '
  readelf -d hycon_ext/_C*.so | grep "NEEDED.*libstdc++" || { echo "no shared libstdc++ in NEEDED"; exit 1; }
  "$0" - <<PY
import torch
import hycon_ext.ops  # noqa: F401
z = torch.ones(4, device="cuda")
ids = torch.zeros(4, 3, dtype=torch.int64, device="cuda")
try:
    torch.ops.hycon_ext.pair_sums(z, z, ids, ids, [0], [1.0])
except RuntimeError as e:
    assert "za must be a 2-D tensor (rows, d), got 1-D" in str(e), str(e)
    print("ok: bad input raised:", str(e).splitlines()[0])
else:
    raise SystemExit("no error for a 1-D za")
PY' "$PY"
# Fix 2: the test helper that failed on empty tensors.
run fix-empty-helper 120 "$PY" -m pytest tests/test_cuda.py -q -p no:cacheprovider -k empty_inputs

# Correctness, both paths, fixed and fresh seeds, side by side; the sanitizers beside them.
TESTS=(env OMP_NUM_THREADS=3 "$PY" -m pytest tests/test_cuda.py -q -p no:cacheprovider)
run tests-chunked 240 env -u HYCON_CUDA_FUSED HYCON_TEST_SEED=0 "${TESTS[@]}" &
run tests-fused 240 env HYCON_CUDA_FUSED=1 HYCON_TEST_SEED=0 "${TESTS[@]}" &
run tests-chunked-seed-"$FRESH_SEED" 240 env -u HYCON_CUDA_FUSED HYCON_TEST_SEED="$FRESH_SEED" \
  "${TESTS[@]}" &
run tests-fused-seed-"$FRESH_SEED" 240 env HYCON_CUDA_FUSED=1 HYCON_TEST_SEED="$FRESH_SEED" \
  "${TESTS[@]}" &
# The sanitizers see exact allocations only without the caching allocator.
SANITIZE=(env HYCON_CUDA_FUSED=1 PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --error-exitcode 1
  --print-limit 20)
run memcheck 240 "${SANITIZE[@]}" --tool memcheck "$PY" bench/gpu_fused_smoke.py &
run racecheck 240 "${SANITIZE[@]}" --tool racecheck --racecheck-report hazard \
  "$PY" bench/gpu_fused_smoke.py &
wait

# Timings, alone on the GPU.
run ceilings 150 "$PY" bench/gpu_ceilings.py --loss-sizes "${LOSS_SIZES:-64,512,4096,16384}"
REPORT=("$PY" bench/report.py --devices cuda --sizes "${REPORT_SIZES:-64,512,4096}" --repeats 21
  --warmup 3 --min-seconds 0.3 --big)
run report-fused 150 env HYCON_CUDA_FUSED=1 "${REPORT[@]}" --markdown-out "$LOG/report-fused.md"
# The reference columns do not depend on the path: torch.compile runs once, above.
run report-chunked 120 env -u HYCON_CUDA_FUSED "${REPORT[@]}" --no-compile \
  --markdown-out "$LOG/report-chunked.md"

echo
for f in ceilings.log report-fused.md report-chunked.md; do
  echo "== $f"
  grep -v '^$' "$LOG/$f" 2>/dev/null
done
echo
echo "== gpu_check summary (logs in $LOG)"
cat "$LOG/summary.txt"
if [ -n "${OUT:-}" ]; then
  cp "$LOG/summary.txt" "$OUT/summary.txt"
  tar czf "$OUT/gpu_check_logs.tgz" -C "$(dirname "$LOG")" "$(basename "$LOG")"
fi
exit "$(grep -cE 'FAILED|TIMED OUT|not run' "$LOG/summary.txt")"
