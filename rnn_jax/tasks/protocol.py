"""The task protocol, and the argument checks every task shares.

A task has the attributes ``input_size``, ``output_size``, ``readout`` ("last" or "all"),
``kind`` ("regression" or "classification"), ``token_inputs`` and ``seq_len``;
``sample(key, batch_size) -> {"xs", "ys", "mask"}`` is a pure JAX function of the key (jit- and
vmap-able; ``batch_size`` is static); ``loss(outputs, batch)``, ``metrics(outputs, batch)`` and
the analytic chance-level loss ``baseline``. Synthetic tasks are frozen dataclasses
(``adding``, ``copy_memory``, ``temporal_order``); data-set tasks (``datasets``, ``text``) add
``split(name)``.
"""

import hashlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["validate_key", "validate_batch_size", "check_int", "check_outputs", "uniform_int",
           "fingerprint"]


def validate_key(key):
    """Check that ``key`` is a single JAX PRNG key and return it.

    Accepts a typed key (``jax.random.key``, shape ``()``) or a raw ``uint32[2]`` key
    (``jax.random.PRNGKey``); raises ``TypeError`` otherwise. Works on tracers (jit, vmap).

    Shapes:
        key: [] typed key, or [2] uint32
    """
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise TypeError(f"key: expected a single key of shape (), got shape {key.shape}")
        return key
    if dtype is not None and dtype == jnp.uint32 and tuple(key.shape) == (2,):
        return key
    shape = getattr(key, "shape", None)
    raise TypeError(
        "key: expected a JAX PRNG key (jax.random.key(seed)), "
        f"got {type(key).__name__} with dtype {dtype} and shape {shape}"
    )


def validate_batch_size(batch_size):
    """Check that ``batch_size`` is a positive Python/NumPy int and return it as ``int``.

    It fixes array shapes, so it must be static under ``jit`` (``static_argnums``).

    Shapes:
        batch_size: scalar int >= 1
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(
            f"batch_size: expected a static positive int, got {type(batch_size).__name__} "
            f"({batch_size!r}); under jit pass it with static_argnums"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size}")
    return int(batch_size)


def sample_rows(key, batch_size, split: dict) -> dict:
    """B rows of a split (a dict of arrays sharing their first axis N), drawn uniformly with
    replacement; pure in ``key`` and jit-able. Shapes: leaves [N, ...] -> [B, ...]."""
    key = validate_key(key)
    b = validate_batch_size(batch_size)
    n = next(iter(split.values())).shape[0]
    idx = jax.random.randint(key, (b,), 0, n, dtype=jnp.int32)
    return {k: jnp.take(v, idx, axis=0) for k, v in split.items()}


def fingerprint(arrays) -> dict:
    """A JSON-ready digest of a (nested) mapping of arrays, for checkpoint identities.

    Each array maps to ``"<dtype>[<shape>] <h>"`` with ``h`` the first 16 hex digits of the
    SHA-256 of its C-order bytes: deterministic across processes and machines, and any changed
    value, dtype or shape changes it. Computed on the host (one device-to-host copy per array).
    """
    out = {}
    for name, value in arrays.items():
        if isinstance(value, Mapping):
            out[name] = fingerprint(value)
            continue
        a = np.ascontiguousarray(jax.device_get(value))
        digest = hashlib.sha256(a.tobytes()).hexdigest()[:16]
        out[name] = f"{a.dtype}{list(a.shape)} {digest}"
    return out


def check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")


def check_outputs(outputs, expected_shape, arg="outputs"):
    shape = tuple(jnp.shape(outputs))
    if shape != tuple(expected_shape):
        raise ValueError(f"{arg}: expected shape {tuple(expected_shape)}, got {shape}")


def uniform_int(u, lo, hi):
    """Map u ~ U[0, 1) to an integer uniform on [lo, hi): lo + ⌊u · (hi - lo)⌋.

    With float32 u (a multiple of 2^-23 or finer) each integer's probability is off by at most
    (hi - lo) · 2^-23 relative — far below any sampling error here. Needs hi > lo.
    """
    span = hi - lo
    offset = jnp.floor(u * span).astype(jnp.int32)
    return lo + jnp.minimum(offset, span - 1)
