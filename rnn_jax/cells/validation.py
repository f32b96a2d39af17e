"""Checks of what a runner is handed, made before anything is traced.

Every entry point that runs a cell over a sequence (``rj.rnn``, DEER, the linear cells'
associative scan) validates the cell, its ``params``, ``xs``, the carry, ``lengths``/``mask``,
``unroll`` and its bool options here, so the messages are the same everywhere. Each error names
the argument, what was received and what was expected. This module stands below the cells'
users (runner, loops) and imports none of them.

Lengths rule: concrete ``lengths`` outside [0, T] raise ValueError. Traced ones (under
``jax.jit``, ``vmap``, ...) cannot be checked while tracing; they are clamped into [0, T] (a
length above T marks every step real, a negative one none), the same on every method. To raise
on them under jit, run the function through ``jax.experimental.checkify.checkify``:

    err, out = checkify.checkify(jax.jit(f))(params, xs, lengths)
    err.throw()   # ValueError-like JaxRuntimeError: "lengths must lie in [0, T=...]"

Padding rule: :func:`zero_padding` replaces the inputs of masked steps by zeros before any loop
reads them (``jnp.where``, whose gradient to the unselected branch is exactly zero), so
whatever sits there (NaN, inf, 1e30) reaches neither outputs, carries nor gradients.
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

CELL_METHODS = ("init", "initial_carry", "project", "recur", "hidden")


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
    if w is not None and len(shape_of(w)) == 2 and xs.shape[-1] != shape_of(w)[0]:
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
        else:  # traced: clamped by the comparison below; raises only under checkify
            arr = jnp.asarray(lengths)
            if arr.size:
                checkify.debug_check(
                    jnp.all((arr >= 0) & (arr <= num_steps)),
                    f"lengths must lie in [0, T={num_steps}], got min {{}} max {{}}",
                    jnp.min(arr), jnp.max(arr))
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
    e_struct, g_struct = jax.tree.structure(expected), jax.tree.structure(carry)
    shapes_e = [x.shape for x in jax.tree.leaves(expected)]
    shapes_g = [shape_of(x) for x in jax.tree.leaves(carry)]
    if e_struct != g_struct or shapes_e != shapes_g:
        raise ValueError(
            f"carry does not match the cell's carry for batch shape {batch_shape}: expected "
            f"shapes {shapes_e} ({e_struct}), got {shapes_g} ({g_struct})"
        )
    for x in jax.tree.leaves(carry):
        if dtype_of(x) is None or not jnp.issubdtype(dtype_of(x), jnp.number):
            raise TypeError(f"carry must hold numeric arrays, got {type(x).__name__} {x!r:.60}")


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


def zero_padding(xs, mask):
    """``xs`` with the inputs of masked steps replaced by zeros (see the module docstring).

    Shapes: ``xs: [..., I]``, ``mask: [...]`` bools or None (then ``xs`` is returned as is).
    """
    if mask is None:
        return xs
    return jnp.where(mask[..., None], xs, jnp.zeros_like(xs))


def check_bool(name, value):
    """``value`` as a bool; a TypeError naming ``name`` for anything else (e.g. ``"yes"``)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a bool (True or False), got {type(value).__name__} "
                        f"{value!r}")
    return bool(value)


def check_cell(cell, name="cell"):
    """A TypeError unless ``cell`` is a cell value (``rj.Elman(8)``, not the class or a name)."""
    if isinstance(cell, type) or not all(hasattr(cell, m) for m in CELL_METHODS):
        raise TypeError(f"{name} must be a cell value such as rj.Elman(8) (with "
                        f"{', '.join(CELL_METHODS)}), got {type(cell).__name__} {cell!r}")


def describe(cell):
    """``GRU(hidden_size=8)``: the cell's type and H, for messages."""
    return f"{type(cell).__name__}(hidden_size={getattr(cell, 'hidden_size', '?')})"


@functools.lru_cache(maxsize=256)
def _expected_cached(cell, input_size):
    return _expected(cell, input_size)


def _expected(cell, input_size):
    return jax.eval_shape(lambda: cell.init(jax.random.key(0), input_size))


def expected_params(cell, input_size):
    """Shapes and dtypes of ``cell.init(key, input_size)``, without computing it.

    Memoised per (cell, input_size) when the cell is hashable (cells are frozen dataclasses):
    ``eval_shape`` traces ``init`` (10-25 ms), too slow to repeat on every eager call.
    """
    try:
        hash(cell)
    except TypeError:
        return _expected(cell, input_size)
    return _expected_cached(cell, input_size)


def dtype_of(x):
    """The dtype of an array, tracer or Python number; None for anything else (a string)."""
    try:
        return jnp.result_type(x)
    except (TypeError, ValueError):
        return None


def _kind(dtype):
    if dtype is None:
        return "not an array"
    for kind in (jnp.bool_, jnp.integer, jnp.complexfloating, jnp.floating):
        if jnp.issubdtype(dtype, kind):
            return np.dtype(kind).name if kind is jnp.bool_ else kind.__name__
    return str(dtype)


def check_params(cell, params, input_size, name="params"):
    """Raises unless ``params`` has the keys, shapes and dtype kinds of ``cell.init``'s.

    Compares with ``jax.eval_shape`` of ``cell.init(key, input_size)``, so it holds for any cell
    and for traced leaves (under jit, grad or vmap shapes are static). float32 params for a
    float64 cell (or back) pass; an integer leaf where a float is expected does not. Extra and
    missing keys are errors. Message: the leaf, the shape received and expected, the cell.
    """
    if input_size < 1:  # no init to compare with: the cell's own init rejects input_size 0
        return
    expected = expected_params(cell, input_size)
    want_leaves, want_def = jax.tree_util.tree_flatten_with_path(expected)
    got_leaves, got_def = jax.tree_util.tree_flatten_with_path(params)
    want = {jax.tree_util.keystr(p): x for p, x in want_leaves}
    got = {jax.tree_util.keystr(p): x for p, x in got_leaves}
    about = f"{describe(cell)} with input_size={input_size}"
    if want_def != got_def:
        missing = ", ".join(f"{name}{k}" for k in want if k not in got) or "none"
        extra = ", ".join(f"{name}{k}" for k in got if k not in want) or "none"
        expect = ", ".join(f"{name}{k}: {want[k].shape}" for k in want)
        if missing != "none" or extra != "none":
            raise ValueError(f"{name} do not match {about}: missing {missing}; unexpected "
                             f"{extra}; expected {expect}")
        raise ValueError(f"{name} must be structured as {about}'s init ({want_def}), got "
                         f"{type(params).__name__} {got_def}")
    for k, w in want.items():
        g = got[k]
        if shape_of(g) != w.shape:
            raise ValueError(f"{name}{k} has shape {shape_of(g)}, but {about} expects "
                             f"{w.shape}")
        g_kind, w_kind = _kind(dtype_of(g)), _kind(w.dtype)
        if g_kind != w_kind:
            raise TypeError(f"{name}{k} has dtype {dtype_of(g)} ({g_kind}), but {about} "
                            f"expects {w_kind} (like {w.dtype})")
