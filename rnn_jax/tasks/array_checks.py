"""Argument checks of :func:`rnn_jax.tasks.arrays.array_task`: host arrays, real steps, splits.

Everything here runs on NumPy copies before any array reaches JAX, and every error names the
argument as the caller spelt it (``xs``, ``lengths``, ``validation['ys']``).
"""

from collections.abc import Mapping

import jax
import numpy as np

from .protocol import validate_key

KINDS = ("classification", "regression")
READOUTS = ("last", "all")


def choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def _host(name, value):
    """``value`` as a NumPy array; refuses tracers and non-numeric data."""
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"{name}: expected concrete arrays (array_task runs outside jit), "
                        "got a tracer")
    try:
        arr = np.asarray(value)
    except Exception as err:  # noqa: BLE001 - any failure to read it is a bad argument
        raise TypeError(f"{name}: expected an array, got {type(value).__name__}: {err}") from None
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    return arr


def positive_int(name, value, optional=True):
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name}: expected a positive int{' or None' if optional else ''}, "
                         f"got {value!r}")
    return int(value)


def arg_name(split, name):
    """How an argument is called in messages: ``xs``, or ``validation['xs']``."""
    return f"{split}[{name!r}]" if split else name


def _real_steps(split, xs, lengths, mask):
    """The [N, T] bool mask of real steps from ``lengths`` or ``mask`` (one of them, or none)."""
    n, t = xs.shape[:2]
    if lengths is not None and mask is not None:
        raise ValueError(f"{arg_name(split, 'lengths')} / {arg_name(split, 'mask')}: pass one "
                         "of them, not both")
    if lengths is not None:
        where = arg_name(split, "lengths")
        lengths = _host(where, lengths)
        if not np.issubdtype(lengths.dtype, np.integer) or lengths.shape != (n,):
            raise ValueError(f"{where}: expected ints of shape ({n},), got "
                             f"{lengths.dtype}{list(lengths.shape)}")
        if n and (lengths.min() < 1 or lengths.max() > t):
            raise ValueError(f"{where}: expected values in [1, {t}] (every sequence needs "
                             f"a real step), got [{lengths.min()}, {lengths.max()}]")
        return np.arange(t)[None, :] < lengths[:, None]
    if mask is None:
        return np.ones((n, t), bool)
    where = arg_name(split, "mask")
    mask = _host(where, mask)
    if mask.dtype != np.bool_ or mask.shape != (n, t):
        raise ValueError(f"{where}: expected bool of shape ({n}, {t}), got "
                         f"{mask.dtype}{list(mask.shape)}")
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"{where}: every sequence needs a real step; rows {empty[:5]} have "
                         "none")
    return mask


def check_set(split, xs, ys, lengths, mask, kind, readout):
    """Checked host arrays (xs, ys, mask) of one set of sequences; padding zeroed."""
    arg_x, arg_y = arg_name(split, "xs"), arg_name(split, "ys")
    xs, ys = _host(arg_x, xs), _host(arg_y, ys)
    tokens = np.issubdtype(xs.dtype, np.integer)
    if xs.ndim != (2 if tokens else 3) or not (tokens or np.issubdtype(xs.dtype, np.floating)):
        raise ValueError(f"{arg_x}: expected floats [N, T, I] or int token ids [N, T], got "
                         f"{xs.dtype}{list(xs.shape)}")
    if xs.shape[0] < 1 or xs.shape[1] < 1:
        raise ValueError(f"{arg_x}: expected at least one sequence of at least one step, got "
                         f"shape {list(xs.shape)}")
    real = _real_steps(split, xs, lengths, mask)
    n, t = real.shape
    want = {("classification", "last"): (n,), ("classification", "all"): (n, t),
            ("regression", "last"): (n, None), ("regression", "all"): (n, t, None)}
    shape = want[kind, readout]
    if ys.ndim != len(shape) or any(w is not None and w != g
                                    for w, g in zip(shape, ys.shape, strict=True)):
        spell = "[" + ", ".join("O" if w is None else str(w) for w in shape) + "]"
        raise ValueError(f"{arg_y}: expected shape {spell} for kind={kind!r}, "
                         f"readout={readout!r}, got {list(ys.shape)}")
    integer = np.issubdtype(ys.dtype, np.integer)
    if (kind == "classification") != integer or ys.dtype == np.bool_:
        expected = "int class ids" if kind == "classification" else "floats"
        raise TypeError(f"{arg_y}: expected {expected} for kind={kind!r}, got {ys.dtype}")
    step_real = real.reshape(real.shape + (1,) * (xs.ndim - 2))
    xs = np.where(step_real, xs, 0).astype(xs.dtype)
    if not tokens and not np.isfinite(xs).all():
        raise ValueError(f"{arg_x}: expected finite values on real steps; found NaN or inf")
    if readout == "all":
        ys = np.where(real.reshape(real.shape + (1,) * (ys.ndim - 2)), ys, 0).astype(ys.dtype)
    if not integer and not np.isfinite(ys).all():
        raise ValueError(f"{arg_y}: expected finite targets on real entries; found NaN or inf")
    return xs, ys, real


def check_range(name, values, size, what):
    if values.size and (values.min() < 0 or values.max() >= size):
        raise ValueError(f"{name}: expected {what} in [0, {size}), got [{values.min()}, "
                         f"{values.max()}]")


def carve(n, validation, test, key):
    """Row indices {split: rows} of the given arrays, for fractional validation/test."""
    fractions = {k: v for k, v in (("validation", validation), ("test", test))
                 if v is not None and not isinstance(v, Mapping)}
    for name, f in fractions.items():
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0.0 < f < 1.0:
            raise ValueError(f"{name}: expected None, a fraction in (0, 1) or a dict of arrays "
                             f"{{'xs', 'ys', 'lengths' or 'mask'}}, got {f!r}")
    if not fractions:
        return {"train": np.arange(n)}
    if key is None:
        raise ValueError(f"key: fractional splits {sorted(fractions)} shuffle the rows, so they "
                         "need a key (jax.random.key(seed)); got None")
    order = np.asarray(jax.random.permutation(validate_key(key), n))
    rows, end = {}, n
    for name in ("test", "validation"):
        if name in fractions:
            count = int(n * fractions[name])
            if count < 1:
                raise ValueError(f"{name}: the fraction {fractions[name]} of {n} sequences "
                                 "gives no sequence; expected at least one")
            rows[name], end = np.sort(order[end - count:end]), end - count
    if end < 1:
        raise ValueError(f"validation / test: fractions {fractions} leave no training sequence")
    rows["train"] = np.sort(order[:end])
    return rows
