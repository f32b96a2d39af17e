"""What every cell shares: the cell protocol, the base dataclass and small helpers.

A cell is a frozen dataclass of hyperparameters (hashable, compared by value, so a cell can
be a static argument of ``jax.jit``). Its methods are pure functions of explicit parameters:

    params = cell.init(key, input_size)              # plain dict of arrays
    carry  = cell.initial_carry(batch_shape=())      # zeros
    u      = cell.project(params, x)                 # input part:      x W + b
    carry, h = cell.recur(params, carry, u)          # recurrent part:  the nonlinear update
    carry, h = cell.step(params, carry, x)           # == recur(params, carry, project(params, x))

Splitting ``step`` into ``project`` and ``recur`` lets the runner compute the input projection
for all T steps in one matrix product before the time loop; ``recur`` is all that remains
sequential. ``x`` may carry any number of leading batch axes: ``x: [*batch, I]``,
``u: [*batch, G*H]``, ``h: [*batch, H]``.

Mixed precision: with ``compute_dtype=jnp.bfloat16`` the matrix products run in bf16 with
float32 accumulation, while the carry and all elementwise state updates stay float32.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.cells import initializers as inits

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "identity": lambda z: z}


def lead(v, ndim: int):
    """Reshapes v to rank ``ndim`` by adding leading unit axes (explicit rank promotion)."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def check_size(name: str, value: Any) -> int:
    try:
        if isinstance(value, bool | np.bool_):  # True is an int to Python, not a size
            raise TypeError
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if n <= 0:
        raise ValueError(f"{name} must be a positive int, got {n}")
    return n


def check_number(name: str, value: Any, *, positive: bool = False, optional: bool = False):
    """A finite real number (``> 0`` if ``positive``; ``None`` too if ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number{' or None' if optional else ''}, got "
                        f"{type(value).__name__} {value!r}")
    if not math.isfinite(value) or (positive and not value > 0):
        raise ValueError(f"{name} must be a finite{' positive' if positive else ''} number, got "
                         f"{value!r}")


def check_dtype(name: str, value: Any, *, optional: bool = False):
    """A floating-point dtype (``jnp.float32``, ``"bfloat16"``, ...; ``None`` if ``optional``)."""
    if value is None and optional:
        return
    try:
        dtype = jnp.dtype(value)
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point dtype such as jnp.float32"
                        f"{' or None' if optional else ''}, got {value!r}")


def check_fields(cell) -> None:
    """Type checks of every field of a cell by its annotation, before its own range checks.

    bool, str, float (finite), int (positive), tuple (of real numbers), the dtypes; each error
    names the field. A cell family adds its own checks of ranges and choices after this one.
    """
    for f in dataclasses.fields(cell):
        value = getattr(cell, f.name)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        optional = kind.endswith("| None") and value is None
        if f.name in ("param_dtype", "compute_dtype"):
            check_dtype(f.name, value, optional=f.name == "compute_dtype")
        elif optional:
            continue
        elif kind.startswith("bool") and not isinstance(value, bool):
            raise TypeError(f"{f.name} must be a bool (True or False), got "
                            f"{type(value).__name__} {value!r}")
        elif kind.startswith("str") and not isinstance(value, str):
            raise TypeError(f"{f.name} must be a str, got {type(value).__name__} {value!r}")
        elif kind.startswith("float"):
            check_number(f.name, value)
        elif kind.startswith("int"):
            check_size(f.name, value)
        elif kind.startswith("tuple") and not (
                isinstance(value, tuple) and all(isinstance(v, numbers.Real)
                                                 and not isinstance(v, bool) for v in value)):
            raise TypeError(f"{f.name} must be a tuple of real numbers, got "
                            f"{type(value).__name__} {value!r}")


def check_key(key):
    """A TypeError unless ``key`` is one PRNG key (``jax.random.key(seed)`` or ``PRNGKey``)."""
    dtype = getattr(key, "dtype", None)
    shape = np.shape(key) if dtype is not None else None
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key) and shape == ()
    raw = dtype is not None and dtype == jnp.uint32 and len(shape) == 1  # raw key data
    if not (typed or raw):
        got = f"{type(key).__name__}" + (f" of shape {shape}, dtype {dtype}" if dtype else "")
        raise TypeError(f"key must be one PRNG key (jax.random.key(seed)), got {got}")


@dataclasses.dataclass(frozen=True)
class Cell:
    """Fields and behaviour shared by all cells (not a public cell by itself).

    Fields:
      hidden_size:     H.
      recurrent_init:  initialiser name for U (per gate block), see ``rnn_jax.cells.initializers``.
      input_init:      initialiser name for W (per gate block).
      spectral_radius: if set, each recurrent block is rescaled to this spectral radius.
      singular_value:  if set, each recurrent block is rescaled to this largest singular value.
      recurrent_gain:  multiplies each recurrent block after initialisation (W_hh = g * Q).
      bias_init:       "zeros" or "torch" (PyTorch's U(+-1/sqrt(H)) for biases as well).
      param_dtype:     dtype of the parameters (float32 by default).
      compute_dtype:   dtype of the matrix products (None = the parameters' dtype).
    """

    hidden_size: int
    recurrent_init: str = "orthogonal"
    input_init: str = "glorot_uniform"
    spectral_radius: float | None = None
    singular_value: float | None = None
    recurrent_gain: float = 1.0
    bias_init: str = "zeros"
    param_dtype: Any = jnp.float32
    compute_dtype: Any = None

    num_gates = 1  # class constant: width of W, U and b is num_gates * H

    def __post_init__(self):
        check_fields(self)
        check_size("hidden_size", self.hidden_size)
        check_number("spectral_radius", self.spectral_radius, positive=True, optional=True)
        check_number("singular_value", self.singular_value, positive=True, optional=True)
        check_number("recurrent_gain", self.recurrent_gain)
        check_dtype("param_dtype", self.param_dtype)
        check_dtype("compute_dtype", self.compute_dtype, optional=True)
        inits.get_initializer(self.recurrent_init, argument="recurrent_init")
        inits.get_initializer(self.input_init, argument="input_init")
        inits.get_initializer(self.bias_init, argument="bias_init")
        if self.spectral_radius is not None and self.singular_value is not None:
            raise ValueError(
                "spectral_radius and singular_value are alternatives; got both "
                f"({self.spectral_radius}, {self.singular_value})"
            )

    # -- parameters ---------------------------------------------------------------------
    def _recurrent_block(self, key):
        h = self.hidden_size
        init = inits.get_initializer(self.recurrent_init)
        u = init(key, (h, h), jnp.float32, fan_hidden=h)
        if self.spectral_radius is not None:
            u = inits.scale_spectral_radius(u, self.spectral_radius)
        if self.singular_value is not None:
            u = inits.scale_singular_value(u, self.singular_value)
        return self.recurrent_gain * u

    def _init_common(self, key, input_size):
        """W: [I, G*H], U: [H, G*H], b: [G*H], each gate block initialised separately."""
        check_key(key)
        input_size = check_size("input_size", input_size)
        h, g = self.hidden_size, self.num_gates
        k_w, k_u, k_b = jax.random.split(key, 3)
        w_init = inits.get_initializer(self.input_init)
        b_init = inits.get_initializer(self.bias_init)
        w = jnp.concatenate(
            [w_init(k, (input_size, h), jnp.float32, fan_hidden=h)
             for k in jax.random.split(k_w, g)], axis=1)
        u = jnp.concatenate([self._recurrent_block(k) for k in jax.random.split(k_u, g)], axis=1)
        b = b_init(k_b, (g * h,), jnp.float32, fan_hidden=h)
        dt = self.param_dtype
        return {"W": w.astype(dt), "U": u.astype(dt), "b": b.astype(dt)}

    def init(self, key, input_size: int) -> dict:
        """Fresh parameters ``{"W": [I, G*H], "U": [H, G*H], "b": [G*H]}``."""
        return self._init_common(key, input_size)

    # -- carry --------------------------------------------------------------------------
    def initial_carry(self, batch_shape=(), dtype=jnp.float32):
        """Zeros, ``[*batch_shape, H]`` (a tuple ``(h, c)`` for the LSTM)."""
        return jnp.zeros((*tuple(batch_shape), self.hidden_size), dtype)

    def hidden(self, carry) -> jax.Array:
        """The hidden state h inside a carry."""
        return carry

    def with_hidden(self, carry, h):
        """The carry with its hidden state replaced by ``h``."""
        del carry
        return h

    # -- computation --------------------------------------------------------------------
    def _mm(self, a, b):
        """a @ b in ``compute_dtype`` with float32 accumulation (plain a @ b by default)."""
        if self.compute_dtype is None:
            return a @ b
        cd = self.compute_dtype
        return jnp.matmul(a.astype(cd), b.astype(cd), preferred_element_type=jnp.float32)

    def project(self, params, x):
        """u = x W + b, the input part of every gate, for any leading axes of x."""
        u = self._mm(x, params["W"])
        return u + lead(params["b"], u.ndim)

    def recur(self, params, carry, u):
        raise NotImplementedError

    def step(self, params, carry, x):
        """One time step: ``recur(params, carry, project(params, x))``."""
        return self.recur(params, carry, self.project(params, x))



@dataclasses.dataclass(frozen=True)
class InputCell:
    """Shared fields of the cells whose recurrent parameters are not gate blocks of one U.

    expRNN, IndRNN and the ODE-discretised cells keep the protocol of :class:`Cell` (the input
    part ``u = x W + b`` hoisted before the loop, a zeros carry ``h``) and bring their own
    recurrent parameters and initialisation. ``prepare(params)`` returns the parameters that
    ``recur`` reads (e.g. expRNN's expm(A)); the scan computes it once per sequence, and
    ``recur`` accepts raw parameters too (it prepares them itself), so every caller is exact.
    """

    hidden_size: int
    param_dtype: Any = jnp.float32
    compute_dtype: Any = None

    num_gates = 1

    def __post_init__(self):
        check_fields(self)
        check_size("hidden_size", self.hidden_size)

    def _input_params(self, key, input_size, init_name, num_gates=1):
        """W: [I, G*H] (each gate block drawn separately) and b = 0: [G*H], in float32."""
        input_size = check_size("input_size", input_size)
        h = self.hidden_size
        w_init = inits.get_initializer(init_name)
        w = jnp.concatenate([w_init(k, (input_size, h), jnp.float32, fan_hidden=h)
                             for k in jax.random.split(key, num_gates)], axis=1)
        return {"W": w, "b": jnp.zeros((num_gates * h,), jnp.float32)}

    def _cast(self, params):
        return jax.tree.map(lambda p: p.astype(self.param_dtype), params)

    def prepare(self, params):
        """The parameters ``recur`` reads (the identity unless the cell derives some)."""
        return params

    initial_carry = Cell.initial_carry
    hidden = Cell.hidden
    with_hidden = Cell.with_hidden
    _mm = Cell._mm
    project = Cell.project
    step = Cell.step
