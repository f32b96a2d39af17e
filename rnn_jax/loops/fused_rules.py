"""The cell rules of the fused time loop (``rnn_jax.loops.fused``): Elman, LSTM, GRU.

For each cell: its step given the recurrent product ``a = h' U`` (' marks the previous step),
the derivative coefficients of all steps at once, and the tangent step, linear in the tangents
(``dz = v + q`` per gate, ``q = dh' U``; ``v`` holds everything else, summed before the loop):

    Elman  h = f(z)           dh = f'(z) dz
    LSTM   c = f c' + i g     dc = a_i dz_i + a_f dz_f + a_g dz_g + f dc'     dh = a_o dz_o + k dc
           a_i = i (1-i) g,  a_f = f (1-f) c',  a_g = (1-g^2) i,  a_o = o (1-o) tanh(c),
           k = o (1 - tanh(c)^2)
    GRU    h = (1-z) n + z h'    dh = k_r dz_r + k_z dz_z + k_n du_n + k_hn (da_n + db_hn) + z dh'
           k_n = (1-z)(1-n^2),  k_r = k_n hn r (1-r),  k_z = z (1-z)(h' - n),  k_hn = k_n r,
           hn = a_n + b_hn

Inputs and saved arrays are tuples of per-gate ``[.., H]`` arrays, never one ``[.., G*H]``
array: XLA's CPU backend emits slow elementwise code when a loop body cuts a gate out of the
step it reads from a stacked array (about 6x slower than reading a whole ``[B, H]`` step).

Each rule must compute exactly what ``cell.recur`` computes; ``tests/test_fused.py`` checks.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.cells import ACTIVATIONS, GRU, LSTM, Elman, lead


class Rule(NamedTuple):
    """The four functions of a cell (``u``, ``saved``, ``coefs``, ``v``: tuples of arrays).

    step(cell, params, carry, u, a) -> (carry, saved)     u: per-gate x W + b, a = h' U
    coefs(cell, prev, carries, saved) -> coefs            all steps at once, [T, B, H] each
    inputs(cell, coefs, t_u, e, t_params) -> v            t_u = d(x W + b), e = h' dU or None
    tangent(cell, coefs_t, t_carry, v_t, q) -> t_carry    q = dh' U
    """

    step: object
    coefs: object
    inputs: object
    tangent: object


def split(x, num):
    """``x`` cut into ``num`` equal parts on its last axis (a tuple, also for ``num = 1``)."""
    return tuple(jnp.split(x, num, axis=-1)) if num > 1 else (x,)


def _elman_step(cell, params, carry, u, a):
    return ACTIVATIONS[cell.activation](u[0] + a), ()


def _elman_coefs(cell, prev, carries, saved):
    h = carries
    if cell.activation == "tanh":
        return (1.0 - h * h,)
    if cell.activation == "relu":
        return ((h > 0).astype(h.dtype),)  # jax.nn.relu has derivative 0 at 0, as h > 0 does
    return ()


def _elman_inputs(cell, coefs, t_u, e, t_params):
    return (t_u if e is None else t_u + e,)


def _elman_tangent(cell, coefs, t_h, v, q):
    return coefs[0] * (v[0] + q) if coefs else v[0] + q


def _lstm_step(cell, params, carry, u, a):
    h, c = carry
    i, f, g, o = (u_k + a_k for u_k, a_k in zip(u, split(a, 4), strict=True))
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return (h, c), (i, f, g, o)


def _lstm_coefs(cell, prev, carries, saved):
    i, f, g, o = saved
    tc = jnp.tanh(carries[1])
    return (i * (1 - i) * g, f * (1 - f) * prev[1], (1 - g * g) * i, o * (1 - o) * tc, f,
            o * (1 - tc * tc))


def _lstm_inputs(cell, coefs, t_u, e, t_params):
    x_i, x_f, x_g, x_o = split(t_u if e is None else t_u + e, 4)
    a_i, a_f, a_g, a_o = coefs[:4]
    return a_i * x_i + a_f * x_f + a_g * x_g, a_o * x_o


def _lstm_tangent(cell, coefs, t_carry, v, q):
    a_i, a_f, a_g, a_o, f, k = coefs
    q_i, q_f, q_g, q_o = split(q, 4)
    t_c = v[0] + a_i * q_i + a_f * q_f + a_g * q_g + f * t_carry[1]
    return (v[1] + a_o * q_o + k * t_c, t_c)


def _gru_step(cell, params, carry, u, a):
    h = carry
    u_r, u_z, u_n = u
    a_r, a_z, a_n = split(a, 3)
    r = jax.nn.sigmoid(u_r + a_r)
    z = jax.nn.sigmoid(u_z + a_z)
    hn = a_n + lead(params["b_hn"], a_n.ndim)
    n = jnp.tanh(u_n + r * hn)
    return (1.0 - z) * n + z * h, (r, z, n, hn)


def _gru_coefs(cell, prev, carries, saved):
    r, z, n, hn = saved
    k_n = (1 - z) * (1 - n * n)
    return k_n * hn * r * (1 - r), z * (1 - z) * (prev - n), k_n * r, k_n, z


def _gru_inputs(cell, coefs, t_u, e, t_params):
    k_r, k_z, k_hn, k_n, _ = coefs
    u_r, u_z, u_n = split(t_u, 3)
    v = k_n * u_n
    if e is not None:  # dz_r, dz_z see all of e; the n gate sees r (e_n + db_hn)
        e_r, e_z, y = split(e, 3)
        u_r, u_z = u_r + e_r, u_z + e_z
    else:
        y = None
    if "b_hn" in t_params:
        b = lead(t_params["b_hn"], k_n.ndim)
        y = b if y is None else y + b
    v = v + k_r * u_r + k_z * u_z
    return (v if y is None else v + k_hn * y,)


def _gru_tangent(cell, coefs, t_h, v, q):
    k_r, k_z, k_hn, _, z = coefs
    q_r, q_z, q_n = split(q, 3)
    return v[0] + k_r * q_r + k_z * q_z + k_hn * q_n + z * t_h


RULES = {
    Elman: Rule(_elman_step, _elman_coefs, _elman_inputs, _elman_tangent),
    LSTM: Rule(_lstm_step, _lstm_coefs, _lstm_inputs, _lstm_tangent),
    GRU: Rule(_gru_step, _gru_coefs, _gru_inputs, _gru_tangent),
}
