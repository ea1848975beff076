#!/usr/bin/env bash
# Proves, on a machine without a GPU, that the CUDA sources compile and link against a CUDA torch
# (HYCON_FORCE_CUDA=1), that the built library registers a CUDA kernel for every op, and that its
# CPU ops still run.
#
#   scripts/check_cuda_build.sh [VENV]
#
# VENV (default $HYCON_CUDA_VENV, else .venv-cuda) must hold a CUDA build of torch; when it does
# not, it is created with torch==2.14.1 (cu130). The build is out of tree (a temporary folder, or
# $HYCON_CUDA_BUILD_DIR), so the CPU build's hycon_ext/_C*.so is never touched. Only sm_90 is
# compiled unless TORCH_CUDA_ARCH_LIST says otherwise, to keep CI short.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${1:-${HYCON_CUDA_VENV:-.venv-cuda}}"
PY="$VENV/bin/python"
has_cuda_torch() {
  "$PY" -c 'import sys, torch; sys.exit(torch.version.cuda is None)' 2>/dev/null
}
if ! has_cuda_torch; then
  echo "== creating $VENV with torch==2.14.1 (a CUDA build)"
  test -x "$PY" || python3 -m venv "$VENV"
  "$PY" -m pip install -q "torch==2.14.1" numpy ninja setuptools
  has_cuda_torch || { echo "error: torch in $VENV is not a CUDA build" >&2; exit 1; }
fi

if [ -n "${HYCON_CUDA_BUILD_DIR:-}" ]; then
  BUILD="$HYCON_CUDA_BUILD_DIR"  # kept, so a rerun only recompiles what changed
else
  BUILD="$(mktemp -d)"
  trap 'rm -rf "$BUILD"' EXIT
fi
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
echo "== building with $("$PY" -c 'import torch; print("torch", torch.__version__)') into $BUILD"
start=$SECONDS
HYCON_FORCE_CUDA=1 "$PY" setup.py -q build_ext --build-temp "$BUILD/temp" --build-lib "$BUILD/lib"
echo "== built in $((SECONDS - start)) s"

LIB="$(find "$BUILD/lib" -name '_C*.so' | head -n 1)"
test -n "$LIB" || { echo "error: no _C*.so under $BUILD/lib" >&2; exit 1; }
"$PY" - "$LIB" <<'PY'
import sys

import torch

torch.ops.load_library(sys.argv[1])
ops = ["similarity", "similarity_backward", "pair_sums", "pair_sums_backward",
       "hard_pair_sums", "hard_pair_sums_backward", "pair_terms", "pair_terms_backward",
       "loss_values", "loss_values_backward"]
missing = [(op, key) for op in ops for key in ("CPU", "CUDA")
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"hycon_ext::{op}", key)]
assert not missing, f"ops without a kernel: {missing}"

# The CPU ops of the same library still run and agree with plain PyTorch.
torch.manual_seed(0)
x, y = torch.randn(6, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
sim = torch.ops.hycon_ext.similarity(x, y)
torch.testing.assert_close(sim, x.softmax(-1) @ y.softmax(-1).T)
ids = torch.stack([torch.tensor([0, 1, 0, 1, 0, 1, 0]), torch.arange(7) % 2, torch.arange(7)], 1)
za, zc = x.softmax(-1), y.softmax(-1)
stats = torch.ops.hycon_ext.pair_sums(za, zc, ids[:6], ids, [0, 1, 2], [1.0, 0.8, 0.8])
assert stats.shape == (6, 3, 4) and torch.isfinite(stats).all(), stats
hard, state = torch.ops.hycon_ext.hard_pair_sums(za, zc, ids[:6], ids, [0, 1], [1.0, 0.8], 1,
                                                  1.0, True, True)
assert hard.shape == (6, 2, 4) and state.shape == (6, 2, 7) and torch.isfinite(hard).all()
print(f"ok: CUDA and CPU kernels registered for {len(ops)} ops; CPU ops run "
      f"(torch {torch.__version__}, CUDA {torch.version.cuda}, {sys.argv[1]})")
PY
