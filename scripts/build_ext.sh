#!/usr/bin/env bash
# Builds the hycon_ext kernels into the package (pip install -e . --no-build-isolation) and shows
# what it is doing: how many files and roughly how long before it starts, one line per compiled
# file while ninja works through them, the time taken at the end. pip's full output goes to
# build/pip-install.log, whose end is printed if the build fails.
#
#   scripts/build_ext.sh [PYTHON]      (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${1:-.venv/bin/python}"
LOG=build/pip-install.log
mkdir -p build
cxx=$(ls csrc/*.cpp csrc/cpu/*.cpp csrc/autograd/*.cpp | wc -l)
cuda=$("$PY" -c 'import torch; print(torch.version.cuda or "")')
what="$cxx C++ files"
[ -n "$cuda" ] && what="$what and the CUDA files (torch has CUDA $cuda: several minutes more)"
echo "== building the hycon_ext kernels: torch's headers once (a precompiled header), then $what," \
     "${MAX_JOBS:-one per core} at a time; 1-2 minutes of compiling on 2 idle cores, more on a busy machine"
start=$SECONDS
# ninja prints "[k/n] <compiler command>" per file: keep the counter and the source file name.
if "$PY" -m pip install -v -e . --no-build-isolation 2>&1 | tee "$LOG" \
    | sed -nuE 's#^ *(\[[0-9]+/[0-9]+\]) .* (-c )?([^ ]*/)?(csrc/[^ ]*\.(cpp|cu|hpp))( .*)?$#   \1 \4#p'; then
  echo "== built in $((SECONDS - start)) s"
else
  echo "== the build failed after $((SECONDS - start)) s; the end of $LOG:" >&2
  tail -n 40 "$LOG" >&2
  exit 1
fi
