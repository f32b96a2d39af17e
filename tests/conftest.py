"""Shared test setup: the persistent JAX compilation cache, when the Makefile asks for one."""

import os

import jax


def pytest_configure(config):
    """Caches compiled programs in $JAX_COMPILATION_CACHE_DIR (set by `make test`) across runs.

    JAX reads the directory from the environment by itself, but by default keeps only programs
    that took over a second to compile; the suite's programs are small and many, so keep all.
    """
    del config
    cache_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
