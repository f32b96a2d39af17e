"""Recurrent cells as values: Elman, LSTM and GRU.

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
import operator
from typing import Any

import jax
import jax.numpy as jnp

from rnn_jax import initializers as inits

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "identity": lambda z: z}


def lead(v, ndim: int):
    """Reshapes v to rank ``ndim`` by adding leading unit axes (explicit rank promotion)."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def _check_size(name: str, value: Any) -> int:
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if n <= 0:
        raise ValueError(f"{name} must be a positive int, got {n}")
    return n


@dataclasses.dataclass(frozen=True)
class _Cell:
    """Fields and behaviour shared by all cells (not a public cell by itself).

    Fields:
      hidden_size:     H.
      recurrent_init:  initialiser name for U (per gate block), see ``rnn_jax.initializers``.
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
        _check_size("hidden_size", self.hidden_size)
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
        input_size = _check_size("input_size", input_size)
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
class Elman(_Cell):
    """The vanilla (Elman 1990) recurrent cell.

        h_t = f(x_t W + h_{t-1} U + b),   f in {tanh, relu, identity}

    Params: ``{"W": [I, H], "U": [H, H], "b": [H]}``; carry: ``h: [*batch, H]``.
    With ``recurrent_init="identity"``, ``input_init="small_normal"`` and ``activation="relu"``
    this is the IRNN of Le, Jaitly, Hinton (2015).
    """

    activation: str = "tanh"

    def __post_init__(self):
        super().__post_init__()
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation={self.activation!r} is not supported; expected one of "
                f"{sorted(ACTIVATIONS)}"
            )

    def recur(self, params, carry, u):
        """h' = f(u + h U)."""
        h = ACTIVATIONS[self.activation](u + self._mm(carry, params["U"]))
        return h, h


@dataclasses.dataclass(frozen=True)
class LSTM(_Cell):
    """Long short-term memory (Hochreiter & Schmidhuber 1997; forget gate: Gers et al. 2000).

        [i, f, g, o] = x_t W + h_{t-1} U + b          (gate order i, f, g, o, as PyTorch)
        c_t = sigma(f) * c_{t-1} + sigma(i) * tanh(g)
        h_t = sigma(o) * tanh(c_t)

    Params: ``{"W": [I, 4H], "U": [H, 4H], "b": [4H]}``; ``forget_bias`` is added to the f slice
    of b at init (Jozefowicz, Zaremba, Sutskever 2015 recommend 1). Carry: ``(h, c)``.

    ``chrono_max = T_max`` instead sets the chrono initialisation (Tallec & Ollivier 2018, "Can
    recurrent neural networks warp time?"): per unit, b_f = log(u), u ~ U(1, T_max - 1), and
    b_i = -b_f, so that at init the cell forgets with characteristic times 1 / (1 - sigma(b_f))
    = 1 + u spread over [2, T_max]: memory for the time scales the task needs.
    """

    forget_bias: float = 1.0
    chrono_max: float | None = None
    num_gates = 4

    def __post_init__(self):
        super().__post_init__()
        if self.chrono_max is not None and not self.chrono_max > 2:
            raise ValueError(f"chrono_max must be > 2 (the longest time scale, in steps), got "
                             f"{self.chrono_max!r}")

    def init(self, key, input_size: int) -> dict:
        params = self._init_common(key, input_size)
        h = self.hidden_size
        b = params["b"]
        if self.chrono_max is None:
            b = b.at[h:2 * h].add(self.forget_bias)
        else:  # its own stream: W, U and the other biases are those of the plain init
            u = jax.random.uniform(jax.random.fold_in(key, 0xC4), (h,), jnp.float32, 1.0,
                                   self.chrono_max - 1.0)
            b_f = jnp.log(u).astype(b.dtype)
            b = b.at[h:2 * h].set(b_f).at[:h].set(-b_f)
        params["b"] = b
        return params

    def initial_carry(self, batch_shape=(), dtype=jnp.float32):
        z = jnp.zeros((*tuple(batch_shape), self.hidden_size), dtype)
        return (z, z)

    def hidden(self, carry):
        return carry[0]

    def with_hidden(self, carry, h):
        return (h, carry[1])

    def recur(self, params, carry, u):
        h, c = carry
        z = u + self._mm(h, params["U"])
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h


@dataclasses.dataclass(frozen=True)
class GRU(_Cell):
    """Gated recurrent unit (Cho et al. 2014), in PyTorch's formulation (gate order r, z, n).

        r = sigma(x W_r + h U_r + b_r)
        z = sigma(x W_z + h U_z + b_z)
        n = tanh(x W_n + b_n + r * (h U_n + b_hn))
        h' = (1 - z) * n + z * h

    Params: ``{"W": [I, 3H], "U": [H, 3H], "b": [3H], "b_hn": [H]}``; carry: ``h``.
    """

    num_gates = 3

    def init(self, key, input_size: int) -> dict:
        k_common, k_hn = jax.random.split(key)
        params = self._init_common(k_common, input_size)
        b_init = inits.get_initializer(self.bias_init)
        h = self.hidden_size
        params["b_hn"] = b_init(k_hn, (h,), jnp.float32, fan_hidden=h).astype(self.param_dtype)
        return params

    def recur(self, params, carry, u):
        h = carry
        hu = self._mm(h, params["U"])
        u_r, u_z, u_n = jnp.split(u, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(hu, 3, axis=-1)
        r = jax.nn.sigmoid(u_r + h_r)
        z = jax.nn.sigmoid(u_z + h_z)
        n = jnp.tanh(u_n + r * (h_n + lead(params["b_hn"], h_n.ndim)))
        h = (1.0 - z) * n + z * h
        return h, h


CELLS = {"elman": Elman, "lstm": LSTM, "gru": GRU}


def get_cell(name: str, hidden_size: int, **kwargs) -> _Cell:
    """Builds a cell by name (``"elman"``, ``"lstm"``, ``"gru"``)."""
    if name not in CELLS:
        raise ValueError(f"cell={name!r} is not a known cell; expected one of {sorted(CELLS)}")
    return CELLS[name](hidden_size, **kwargs)


def irnn(hidden_size: int, **kwargs) -> Elman:
    """The IRNN of Le, Jaitly, Hinton (2015): ReLU Elman cell, U = I, W ~ N(0, 0.001^2), b = 0."""
    kwargs.setdefault("recurrent_init", "identity")
    kwargs.setdefault("input_init", "small_normal")
    return Elman(hidden_size, activation="relu", **kwargs)


def torch_like(cell_cls, hidden_size: int, **kwargs):
    """A cell initialised as PyTorch initialises nn.RNN/LSTM/GRU: every weight ~ U(+-1/sqrt(H))."""
    kwargs.setdefault("recurrent_init", "torch")
    kwargs.setdefault("input_init", "torch")
    kwargs.setdefault("bias_init", "torch")
    if cell_cls is LSTM:
        kwargs.setdefault("forget_bias", 0.0)
    return cell_cls(hidden_size, **kwargs)
