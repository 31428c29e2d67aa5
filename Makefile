# The two set-up commands: `make demo` (train CIGN on built-in synthetic data) and `make test`.
# Each creates .venv, installs the pinned stack, builds the extensions and runs.
# `make lint`: ruff (checks and format) over the Python sources and mypy over the package (CI runs it).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CUDA_HOME ?= $(shell [ -d /usr/local/cuda ] && echo /usr/local/cuda)
export CUDA_HOME
NATIVE_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h') setup.py pyproject.toml
DEMO_OUT ?= demo_out

.PHONY: demo test lint build bench clean install-check

$(VENV)/.deps: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps $(NATIVE_SOURCES)
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	$(PY) -c "from cign_fast.build_info import cuda_build_line, read_build_info; print(cuda_build_line(read_build_info()))"
	touch $@

build: $(VENV)/.built

demo: build
	$(VENV)/bin/cign-fast demo --out $(DEMO_OUT)

test: build
	$(PY) -m pytest tests -q -rs --durations=15

# Configured in pyproject.toml ([tool.ruff], [tool.mypy]); needs no build.
lint: $(VENV)/.deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Install cign_fast each way a researcher does (fresh venvs, their own pip): see .ci/install-check.
install-check: build
	.ci/install-check $(VENV)

bench: build
	$(VENV)/bin/cign-fast bench ops

clean:
	rm -rf build *.egg-info cign_fast/*.so cign_fast/build_info.json $(VENV)/.built

# On a machine with an NVIDIA GPU: build, self-check every backend, the GPU tests and the quick benchmarks,
# results in bench/results/<gpu>-*.json/.md (under 8 minutes). Without a GPU it says so and exits 0.
.PHONY: gpu-check
gpu-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) bench/gpu_check.py --out bench/results
