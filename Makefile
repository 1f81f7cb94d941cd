# One-command entry points. Each creates .venv if missing and installs what it needs.
PY ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.deps-stamp

.PHONY: test build bench bench-quick cuda-check cuda-binding-check clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==$(TORCH_VERSION) numpy setuptools wheel ninja
	$(BIN)/pip install -q pytest hypothesis pytest-benchmark expecttest "triton==3.9.*"
	touch $(STAMP)

build: $(STAMP)
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .

test: build
	$(BIN)/python -m pytest -q tests

bench: build
	$(BIN)/python benchmarks/bench_ops.py

bench-quick: build
	$(BIN)/python benchmarks/bench_ops.py --quick

clean:
	rm -rf build *.egg-info ferret_kernels/*.so
