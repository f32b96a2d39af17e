"""Checks of what a runner is handed, made before anything is traced.

Every entry point that runs a cell over a sequence (``rj.rnn``, DEER, the linear cells'
associative scan) validates ``xs``, the carry, ``lengths``/``mask`` and ``unroll`` here, so the
messages are the same everywhere. Each error names the argument, what was received and what was
expected. This module stands below the cells' users (runner, loops) and imports none of them.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np


def shape_of(x):
    return tuple(np.shape(x))


def check_xs(cell, params, xs, time_major):
    if not hasattr(xs, "shape") or not hasattr(xs, "dtype"):
        raise TypeError(f"xs must be an array, got {type(xs).__name__}")
    if xs.ndim < 2:
        layout = "[T, *batch, I]" if time_major else "[*batch, T, I]"
        raise ValueError(f"xs must have rank >= 2 ({layout}), got shape {shape_of(xs)}")
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"xs must be floating point, got dtype {xs.dtype}")
    w = params.get("W") if isinstance(params, dict) else None
    if w is not None and xs.shape[-1] != w.shape[0]:
        raise ValueError(
            f"xs has {xs.shape[-1]} input features (shape {shape_of(xs)}), but the cell's "
            f"params expect input_size={w.shape[0]} (W has shape {shape_of(w)})"
        )


def is_concrete(x):
    try:
        np.asarray(x)
        return True
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return False


def mask_from(lengths, mask, batch_shape, num_steps):
    """[*batch, T] bool of real steps, or None when every step is real."""
    if lengths is not None and mask is not None:
        raise ValueError("pass either lengths or mask, not both")
    if lengths is not None:
        if shape_of(lengths) != batch_shape:
            raise ValueError(
                f"lengths must have the batch shape {batch_shape}, got shape {shape_of(lengths)}"
            )
        if not jnp.issubdtype(jnp.asarray(lengths).dtype, jnp.integer):
            raise TypeError(f"lengths must be integers, got dtype {jnp.asarray(lengths).dtype}")
        if is_concrete(lengths):
            arr = np.asarray(lengths)
            if arr.size and (arr.min() < 0 or arr.max() > num_steps):
                raise ValueError(
                    f"lengths must lie in [0, T={num_steps}], got min {arr.min()} max {arr.max()}"
                )
        steps = jnp.arange(num_steps).reshape((1,) * len(batch_shape) + (num_steps,))
        return steps < jnp.asarray(lengths)[..., None]
    if mask is not None:
        if shape_of(mask) != (*batch_shape, num_steps):
            raise ValueError(
                f"mask must have shape [*batch, T] = {(*batch_shape, num_steps)}, "
                f"got {shape_of(mask)}"
            )
        if jnp.asarray(mask).dtype != jnp.bool_:
            raise TypeError(f"mask must be bool, got dtype {jnp.asarray(mask).dtype}")
        return jnp.asarray(mask)
    return None


def check_carry(cell, carry, batch_shape, dtype):
    expected = jax.eval_shape(lambda: cell.initial_carry(batch_shape, dtype))
    got = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), carry)
    e_struct, g_struct = jax.tree.structure(expected), jax.tree.structure(got)
    shapes_e = [x.shape for x in jax.tree.leaves(expected)]
    shapes_g = [x.shape for x in jax.tree.leaves(got)]
    if e_struct != g_struct or shapes_e != shapes_g:
        raise ValueError(
            f"carry does not match the cell's carry for batch shape {batch_shape}: expected "
            f"shapes {shapes_e} ({e_struct}), got {shapes_g} ({g_struct})"
        )


def check_unroll(unroll):
    if isinstance(unroll, bool):
        return unroll
    try:
        n = operator.index(unroll)
    except TypeError:
        raise TypeError(f"unroll must be a positive int, got {unroll!r}") from None
    if n < 1:
        raise ValueError(f"unroll must be a positive int, got {n}")
    return n
