"""Fused recurrent layers on Pallas kernels: the whole time loop in one kernel, both directions.

A ``lax.scan`` launches its body's kernels once per step (several microseconds each on a GPU).
Here one kernel keeps the recurrent matrix U on chip and loops over time itself. Batch rows are
independent, so the batch is cut into blocks of ``block_b`` rows, one program each, with no
synchronisation between programs — the idea of persistent RNN kernels (Diamos et al. 2016) that
cuDNN uses. Kernel bodies: ``rnn_jax.loops.pallas_kernels``.

Training uses ``jax.custom_vjp``: the forward kernel stores the states (and the LSTM/GRU gate
activations), the backward kernel runs the adjoint recursion in reverse time and writes the
gradient ``a_t`` of every pre-activation, and the weight gradients are single large products
outside the loop over all T*B rows,

    dU = [s_0; s_1; ...; s_{T-1}]^T [a_1; ...; a_T],    du_t = a_t  (-> dW, db by autodiff)

Masks follow the runner's rule (a masked step leaves the carry unchanged, outputs zero) and
``reverse`` runs the same kernel on time-flipped inputs. H is zero-padded to a power of two
(Triton's tiles): padded units start at zero and stay zero in every cell (tanh(0) = relu(0) = 0,
no input, zero rows of U), so the real units are unchanged. The state keeps the input dtype
(float32, or float64). On a GPU the kernels compile through Pallas' Triton backend; elsewhere
they run in Pallas' interpret mode (slow, the same program), which is how the CPU test suite
checks them against the scan path (launch, precision: ``rnn_jax.loops.pallas_launch``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rnn_jax.cells import GRU, LSTM, Elman
from rnn_jax.loops import gpu_fit
from rnn_jax.loops import pallas_kernels as pk
from rnn_jax.loops.pallas_launch import MIN_BLOCK, Kernel, call, padded_hidden, precision_of


def supported(cell, *, probes=None) -> bool:
    """Whether the fused kernels run this cell with these options (else: the scan path)."""
    cd = getattr(cell, "compute_dtype", None)
    return (type(cell) in (Elman, LSTM, GRU) and probes is None
            and (cd is None or jnp.dtype(cd) == jnp.bfloat16))


def _prev(states, init):
    """[s_0; s_1..s_{T-1}]: the state before every step."""
    return jnp.concatenate([init[None], states[:-1]], axis=0)


def _outer(prev, a):
    return jnp.einsum("tbi,tbj->ij", prev, a, preferred_element_type=a.dtype)


# -- Elman ---------------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def elman_states(u, w, h0, m, activation, cfg, precision):
    """States s_1..s_T of the masked Elman recurrence. Shapes: u [T,B,H], w [H,H], h0 [B,H]."""
    return _elman_fwd(u, w, h0, m, activation, cfg, precision)[0]


def _elman_fwd(u, w, h0, m, activation, cfg, precision):
    t, b, h = u.shape
    (s,) = call(pk.elman_fwd, "elman_fwd", cfg, [("seq", u), ("all", w), ("row", h0),
                ("msk", m)], [("seq", (t, b, h))], u.dtype, num_steps=t,
                activation=activation, precision=precision)
    return s, (s, w, h0, m)


def _elman_bwd(activation, cfg, precision, res, g):
    s, w, h0, m = res
    t, b, h = s.shape
    a, dh0 = call(pk.elman_bwd, "elman_bwd", cfg, [("seq", s), ("seq", g), ("all", w),
                  ("msk", m)], [("seq", (t, b, h)), ("row", (b, h))], s.dtype, num_steps=t,
                  activation=activation, precision=precision)
    return a, _outer(_prev(s, h0), a).astype(w.dtype), dh0, jnp.zeros_like(m)


elman_states.defvjp(_elman_fwd, _elman_bwd)


# -- LSTM ----------------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def lstm_states(u, w, h0, c0, m, cfg, precision):
    """(h_1..h_T, c_1..c_T) of the masked LSTM. Shapes: u [T,B,4H], w [H,4H], h0, c0 [B,H]."""
    return _lstm_fwd(u, w, h0, c0, m, cfg, precision)[0]


def _lstm_fwd(u, w, h0, c0, m, cfg, precision):
    t, b, h4 = u.shape
    h = h4 // 4
    hs, cs, gates = call(pk.lstm_fwd, "lstm_fwd", cfg,
                         [("seq", u), ("all", w), ("row", h0), ("row", c0), ("msk", m)],
                         [("seq", (t, b, h)), ("seq", (t, b, h)), ("seq", (t, b, h4))],
                         u.dtype, num_steps=t, precision=precision)
    return (hs, cs), (hs, cs, gates, w, h0, c0, m)


def _lstm_bwd(cfg, precision, res, g):
    hs, cs, gates, w, h0, c0, m = res
    t, b, h = hs.shape
    a, dh0, dc0 = call(pk.lstm_bwd, "lstm_bwd", cfg,
                       [("seq", cs), ("seq", gates), ("row", c0), ("seq", g[0]), ("seq", g[1]),
                        ("all", w), ("msk", m)],
                       [("seq", (t, b, 4 * h)), ("row", (b, h)), ("row", (b, h))],
                       hs.dtype, num_steps=t, precision=precision)
    return a, _outer(_prev(hs, h0), a).astype(w.dtype), dh0, dc0, jnp.zeros_like(m)


lstm_states.defvjp(_lstm_fwd, _lstm_bwd)


# -- GRU -----------------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def gru_states(u, w, b_hn, h0, m, cfg, precision):
    """h_1..h_T of the masked GRU. Shapes: u [T,B,3H], w [H,3H], b_hn [1,H], h0 [B,H]."""
    return _gru_fwd(u, w, b_hn, h0, m, cfg, precision)[0]


def _gru_fwd(u, w, b_hn, h0, m, cfg, precision):
    t, b, h3 = u.shape
    h = h3 // 3
    hs, gates = call(pk.gru_fwd, "gru_fwd", cfg,
                     [("seq", u), ("all", w), ("all", b_hn), ("row", h0), ("msk", m)],
                     [("seq", (t, b, h)), ("seq", (t, b, 4 * h))], u.dtype, num_steps=t,
                     precision=precision)
    return hs, (hs, gates, w, h0, m)


def _gru_bwd(cfg, precision, res, g):
    hs, gates, w, h0, m = res
    t, b, h = hs.shape
    du, dq, dh0 = call(pk.gru_bwd, "gru_bwd", cfg,
                       [("seq", hs), ("seq", gates), ("row", h0), ("seq", g), ("all", w),
                        ("msk", m)],
                       [("seq", (t, b, 3 * h)), ("seq", (t, b, 3 * h)), ("row", (b, h))],
                       hs.dtype, num_steps=t, precision=precision)
    db_hn = jnp.sum(dq[..., 2 * h:], axis=(0, 1))[None]
    return du, _outer(_prev(hs, h0), dq).astype(w.dtype), db_hn, dh0, jnp.zeros_like(m)


gru_states.defvjp(_gru_fwd, _gru_bwd)


# -- the runner's entry point --------------------------------------------------------------------
def _pad_axis(x, pad, axis):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths)


def _pad_gates(x, hidden, gates, pad):
    """[..., G*H] -> [..., G*(H+pad)]: each gate block zero-padded on its own."""
    blocks = x.reshape(*x.shape[:-1], gates, hidden)
    return _pad_axis(blocks, pad, blocks.ndim - 1).reshape(*x.shape[:-1], gates * (hidden + pad))


def run(cell, params, xs_tm, carry, mask_tm, *, reverse=False, kernel=None, precision=None):
    """The runner's semantics on the fused kernels (see ``rnn_jax.rnn.rnn``).

    ``kernel``: a ``pallas_launch.Kernel`` (default: ``gpu_fit``'s choice, else 16 or 32 rows
    per program); ``precision``: a ``jax.default_matmul_precision`` name (default: the config).
    Shapes: xs_tm [T, *batch, I]; carry as ``cell.initial_carry(batch)``; mask_tm [T, *batch]
    bool or None. Returns ``(hs_tm, final_carry, carries_tm)`` with zero outputs on masked steps,
    in the carry's dtype (float32, or float64 for float64 inputs under x64).
    """
    num_steps, batch_shape, hidden = xs_tm.shape[0], xs_tm.shape[1:-1], cell.hidden_size
    dt = jnp.result_type(*jax.tree.leaves(carry))
    if num_steps == 0:  # nothing to run: no outputs, the carry unchanged
        empty = jnp.zeros((0, *batch_shape, hidden), dt)
        return empty, carry, jax.tree.map(lambda c: jnp.zeros((0, *c.shape), c.dtype), carry)
    label, prec = precision_of(dt, cell.compute_dtype, precision)
    gates, hp = cell.num_gates, padded_hidden(hidden)
    u = cell.project(params, xs_tm).astype(dt).reshape(num_steps, -1, gates * hidden)
    batch = u.shape[1]
    cfg = kernel or gpu_fit.kernel_for(cell, dt, batch) or Kernel(
        block_b=MIN_BLOCK if batch <= 4 * MIN_BLOCK else 2 * MIN_BLOCK)
    carry = jax.tree.map(lambda c: _pad_axis(c.astype(dt).reshape(-1, hidden), hp - hidden, 1),
                         carry)
    m = (jnp.ones((num_steps, batch), dt) if mask_tm is None
         else mask_tm.reshape(num_steps, batch).astype(dt))
    pad = -batch % cfg.block_b  # padded rows are fully masked: they stay zero and are cut off
    u, m = _pad_axis(_pad_gates(u, hidden, gates, hp - hidden), pad, 1), _pad_axis(m, pad, 1)
    carry = jax.tree.map(lambda c: _pad_axis(c, pad, 0), carry)
    if reverse:
        u, m = u[::-1], m[::-1]
    w_dt = jnp.bfloat16 if label == "bf16" else dt  # U's storage dtype in the kernel
    w = _pad_axis(_pad_gates(params["U"].astype(dt), hidden, gates, hp - hidden), hp - hidden, 0)
    w = w.astype(w_dt)
    if isinstance(cell, LSTM):
        states = lstm_states(u, w, carry[0], carry[1], m, cfg, prec)
    elif isinstance(cell, GRU):
        b_hn = _pad_axis(params["b_hn"].astype(dt)[None], hp - hidden, 1)
        states = (gru_states(u, w, b_hn, carry, m, cfg, prec),)
    else:
        states = (elman_states(u, w, carry, m, cell.activation, cfg, prec),)
    if reverse:
        states, m = tuple(s[::-1] for s in states), m[::-1]
    h_all = states[0]
    hs = jnp.where(m[..., None] > 0, h_all, jnp.zeros((), dt))
    last = tuple(s[0] if reverse else s[-1] for s in states)
    as_carry = (lambda parts: tuple(parts)) if isinstance(cell, LSTM) else (lambda p: p[0])
    cut = lambda z, lead: z[(slice(None),) * lead + (slice(0, batch),)][..., :hidden].reshape(  # noqa: E731
        *z.shape[:lead], *batch_shape, hidden)
    return (cut(hs, 1), as_carry([cut(s, 0) for s in last]),
            as_carry([cut(s, 1) for s in states]))
