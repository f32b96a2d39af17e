"""Foreign arrays in and out of JAX, keeping their dtype (float64 stays float64 or fails loudly)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def to_jax(x, name: str) -> jax.Array:
    """``x`` (NumPy, or anything ``np.asarray`` reads) as a JAX array of the same dtype.

    JAX without ``jax_enable_x64`` would silently turn float64 into float32: that is refused, so
    that "float64 in, float64 out" holds or the caller learns why not.
    """
    a = np.asarray(x)
    if jax.dtypes.canonicalize_dtype(a.dtype) != a.dtype:
        raise ValueError(
            f"{name} has dtype {a.dtype}, which JAX would truncate to "
            f"{jax.dtypes.canonicalize_dtype(a.dtype)}: enable float64 with "
            "jax.config.update('jax_enable_x64', True) (or jax.enable_x64(True)), or convert "
            "the source to float32 first")
    return jnp.asarray(a)


def to_numpy(x) -> np.ndarray:
    """A JAX (or NumPy) array as a writable NumPy array of the same dtype."""
    return np.array(x, copy=True)

