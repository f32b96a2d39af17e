"""What Flax's linen and NNX recurrent cells share with rnn_jax's: equations, checks, carries.

Flax's SimpleCell, LSTMCell / OptimizedLSTMCell and GRUCell (linen and NNX alike) compute

    SimpleCell:  h' = f(x K_i + b_i + h K_h)                       (f = activation_fn)
    LSTMCell:    [i, f, g, o] = x K_i + h K_h + b_h,   c' = σ(f) c + σ(i) tanh(g),
                 h' = σ(o) tanh(c')                                 carry (c, h)
    GRUCell:     r = σ(x K_ir + b_ir + h K_hr),  z = σ(x K_iz + b_iz + h K_hz),
                 n = tanh(x K_in + b_in + r (h K_hn + b_hn)),  h' = (1 - z) n + z h

which are rnn_jax's Elman, LSTM and GRU with the same gate order (i, f, g, o and r, z, n) and
kernels already ``[in, out]``. Two differences: flax's LSTM carry is ``(c, h)`` where rnn_jax
has ``(h, c)``, and NNX's GRUCell has no ``b_hn`` (it is zero there). A flax cell whose
``gate_fn`` is not the sigmoid, whose ``activation_fn`` rnn_jax does not have, with
``residual=True`` or a computation ``dtype`` other than its ``param_dtype`` has no rnn_jax
counterpart: ValueError.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnn_jax.cells import GRU, LSTM, Elman

KINDS = ("simple", "lstm", "gru")
_NAMES = {jnp.tanh: "tanh", jax.nn.relu: "relu", jax.nn.sigmoid: "sigmoid"}


def _fn_name(fn) -> str | None:
    for known, name in _NAMES.items():
        if fn is known:
            return name
    return None


def rj_cell(kind: str, flax_cell, hidden_size: int):
    """The rnn_jax cell computing what ``flax_cell`` (of ``kind``) computes; ValueError if none."""
    what = type(flax_cell).__name__
    param_dtype = getattr(flax_cell, "param_dtype", jnp.float32)
    dtype = getattr(flax_cell, "dtype", None)
    if dtype is not None and jnp.dtype(dtype) != jnp.dtype(param_dtype):
        raise ValueError(f"{what} computes in dtype={jnp.dtype(dtype)} with param_dtype="
                         f"{jnp.dtype(param_dtype)}: not representable (rnn_jax's "
                         "compute_dtype accumulates in float32); use dtype=None")
    activation = _fn_name(flax_cell.activation_fn)
    if kind == "simple":
        if getattr(flax_cell, "residual", False):
            raise ValueError(f"{what} has residual=True, which rj.Elman does not have")
        if activation not in ("tanh", "relu"):
            raise ValueError(f"{what}.activation_fn={flax_cell.activation_fn!r} is not "
                             "supported; expected jnp.tanh or jax.nn.relu")
        return Elman(hidden_size, activation=activation, param_dtype=param_dtype)
    if _fn_name(flax_cell.gate_fn) != "sigmoid" or activation != "tanh":
        raise ValueError(f"{what} must have gate_fn=jax.nn.sigmoid and activation_fn=jnp.tanh "
                         f"to match rnn_jax's cell, got {flax_cell.gate_fn!r} and "
                         f"{flax_cell.activation_fn!r}")
    return (LSTM if kind == "lstm" else GRU)(hidden_size, param_dtype=param_dtype)


def check_cell(cell, kind: str, hidden_size: int, what: str):
    """``cell`` (rnn_jax) is the kind of cell the flax cell ``what`` of ``hidden_size`` is."""
    want = {"simple": Elman, "lstm": LSTM, "gru": GRU}[kind]
    if type(cell) is not want:
        raise ValueError(f"cell must be rj.{want.__name__} to fill a flax {what}, got {cell!r}")
    if cell.hidden_size != hidden_size:
        raise ValueError(f"cell.hidden_size={cell.hidden_size} but the flax {what} has "
                         f"{hidden_size} features")


def carry_from_flax(cell, carry):
    """A flax cell's carry as rnn_jax's: the LSTM's ``(c, h)`` becomes ``(h, c)``."""
    return (carry[1], carry[0]) if isinstance(cell, LSTM) else carry


def carry_to_flax(cell, carry):
    """rnn_jax's carry as a flax cell's: the LSTM's ``(h, c)`` becomes ``(c, h)``."""
    return (carry[1], carry[0]) if isinstance(cell, LSTM) else carry
