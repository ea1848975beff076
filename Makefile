# Two commands do everything on a fresh machine:
#   make demo   set up .venv, build the extension, train HyCon on the embedded IEMOCAP demo data
#   make test   set up .venv, build the extension, lint, run the tests (then the LibTorch CMake
#               build and its ctest where cmake exists, and the CUDA compile check where nvcc exists)
PYTHON ?= python3
VENV ?= .venv
# The torch to build against. The default is the CPU build; for a GPU use e.g. TORCH_SPEC="torch==2.14.1".
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
CMAKE := $(shell command -v cmake 2>/dev/null)
CMAKE_BUILD ?= build/cmake
NVCC := $(or $(wildcard $(CUDA_HOME)/bin/nvcc),$(wildcard /usr/local/cuda/bin/nvcc),$(shell command -v nvcc 2>/dev/null))

CSRC := $(wildcard csrc/*.cpp csrc/*.h csrc/*.hpp csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh)

.PHONY: setup demo test lint test-cmake test-cuda-build bench report clean

setup: $(VENV)/.installed

# --no-build-isolation: an isolated build would download a different (multi-GB) torch and
# compile the kernels against it instead of the torch installed here.
$(VENV)/.installed: setup.py pyproject.toml requirements.txt $(wildcard csrc/*.* csrc/*/*.*)
	@test -x $(PY) || { echo "== creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@$(PY) -c "import torch" 2>/dev/null || { echo "== installing $(TORCH_SPEC) into $(VENV) (a download of" \
		"several hundred MB, or GB for a CUDA build)"; $(PY) -m pip install -q "$(TORCH_SPEC)"; }
	@echo "== installing requirements.txt into $(VENV)"
	@$(PY) -m pip install -q -r requirements.txt
	@bash scripts/build_ext.sh $(PY)
	@touch $@

demo: setup
	@echo "== training HyCon on synthetic IEMOCAP data in the dataset's own format (8 epochs, about a minute)"
	$(PY) train/main.py --dataset iemocap --demo

test: setup lint
	@echo "== running the test suite (tests, bench; about 10-15 minutes on 2 cores)"
	OMP_NUM_THREADS=2 $(PY) -m pytest tests bench --benchmark-disable -q
ifneq ($(CMAKE),)
	$(MAKE) test-cmake
endif
ifneq ($(NVCC),)
	$(MAKE) test-cuda-build
endif

# ruff (lint and format) and mypy for Python, clang-format for csrc/: configured in
# pyproject.toml and .clang-format, pinned in requirements.txt.
lint: setup
	@echo "== lint: ruff check, ruff format --check, mypy hycon_ext, clang-format --dry-run csrc"
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/clang-format --dry-run --Werror $(CSRC)

# CMakeLists.txt builds the same sources as a LibTorch C++ library; its ctest (csrc/test) calls
# the ops and their autograd from C++. Built here so that it cannot rot unnoticed (~2 min).
test-cmake: setup
	@echo "== building the LibTorch CMake library and its C++ test in $(CMAKE_BUILD) (about 2 minutes on 2 idle cores), then ctest"
	cmake -S . -B $(CMAKE_BUILD) $(if $(shell command -v ninja 2>/dev/null),-G Ninja) \
		-DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')"
	cmake --build $(CMAKE_BUILD)
	ctest --test-dir $(CMAKE_BUILD) --output-on-failure

# Proves the CUDA kernels compile and link against a CUDA torch, on a machine without a GPU.
test-cuda-build:
	@echo "== compiling the CUDA kernels against a CUDA torch (no GPU needed; several minutes)"
	bash scripts/check_cuda_build.sh

bench: setup
	$(PY) -m pytest bench --benchmark-only

report: setup
	$(PY) bench/report.py

clean:
	rm -rf build *.egg-info hycon_ext/_C*.so
