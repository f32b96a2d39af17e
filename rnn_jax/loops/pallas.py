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
``reverse`` runs the same kernel on time-flipped inputs. On a GPU the kernels compile through
Pallas' Triton backend; elsewhere they run in Pallas' interpret mode (slow, the same program),
which is how the CPU test suite checks them against the scan path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from rnn_jax.cells import GRU, LSTM, Elman
from rnn_jax.loops import pallas_kernels as pk

F32 = jnp.float32
MIN_BLOCK = 16  # the smallest matrix-product tile the Triton backend accepts


def supported(cell, *, probes=None) -> bool:
    """Whether the fused kernels run this cell with these options (else: the scan path)."""
    return (type(cell) in (Elman, LSTM, GRU) and cell.compute_dtype is None
            and probes is None)


def _spec(kind, shape, block_b):
    """BlockSpec by role: per-time-step rows, per-row state, whole matrix, or mask."""
    if kind == "seq":  # [T, B, X]
        return pl.BlockSpec((shape[0], block_b, shape[2]), lambda i: (0, i, 0))
    if kind == "row":  # [B, X]
        return pl.BlockSpec((block_b, shape[1]), lambda i: (i, 0))
    if kind == "msk":  # [T, B]
        return pl.BlockSpec((shape[0], block_b), lambda i: (0, i))
    return pl.BlockSpec(tuple(shape), lambda i: (0,) * len(shape))  # "all": every program


def _call(kernel, name, block_b, ins, outs, **static):
    """pallas_call over batch blocks; ``ins``/``outs`` are (kind, array-or-shape) pairs."""
    batch = next(x.shape[1] for kind, x in ins if kind == "seq")
    out_shapes = [jax.ShapeDtypeStruct(shape, F32) for _, shape in outs]
    fn = pl.pallas_call(
        functools.partial(kernel, **static),
        grid=(batch // block_b,),
        in_specs=[_spec(kind, x.shape, block_b) for kind, x in ins],
        out_specs=[_spec(kind, shape, block_b) for kind, shape in outs],
        out_shape=out_shapes,
        interpret=jax.default_backend() != "gpu",
        name=name,
    )
    return fn(*[x for _, x in ins])


def _prev(states, init):
    """[s_0; s_1..s_{T-1}]: the state before every step."""
    return jnp.concatenate([init[None], states[:-1]], axis=0)


def _outer(prev, a):
    return jnp.einsum("tbi,tbj->ij", prev, a)


# -- Elman ---------------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def elman_states(u, w, h0, m, activation, block_b):
    """States s_1..s_T of the masked Elman recurrence. Shapes: u [T,B,H], w [H,H], h0 [B,H]."""
    return _elman_fwd(u, w, h0, m, activation, block_b)[0]


def _elman_fwd(u, w, h0, m, activation, block_b):
    t, b, h = u.shape
    (s,) = _call(pk.elman_fwd, "elman_fwd", block_b,
                 [("seq", u), ("all", w), ("row", h0), ("msk", m)], [("seq", (t, b, h))],
                 num_steps=t, activation=activation)
    return s, (s, w, h0, m)


def _elman_bwd(activation, block_b, res, g):
    s, w, h0, m = res
    t, b, h = s.shape
    a, dh0 = _call(pk.elman_bwd, "elman_bwd", block_b,
                   [("seq", s), ("seq", g), ("all", w), ("msk", m)],
                   [("seq", (t, b, h)), ("row", (b, h))], num_steps=t, activation=activation)
    return a, _outer(_prev(s, h0), a), dh0, jnp.zeros_like(m)


elman_states.defvjp(_elman_fwd, _elman_bwd)


# -- LSTM ----------------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def lstm_states(u, w, h0, c0, m, block_b):
    """(h_1..h_T, c_1..c_T) of the masked LSTM. Shapes: u [T,B,4H], w [H,4H], h0, c0 [B,H]."""
    return _lstm_fwd(u, w, h0, c0, m, block_b)[0]


def _lstm_fwd(u, w, h0, c0, m, block_b):
    t, b, h4 = u.shape
    h = h4 // 4
    hs, cs, gates = _call(pk.lstm_fwd, "lstm_fwd", block_b,
                          [("seq", u), ("all", w), ("row", h0), ("row", c0), ("msk", m)],
                          [("seq", (t, b, h)), ("seq", (t, b, h)), ("seq", (t, b, h4))],
                          num_steps=t, hidden=h)
    return (hs, cs), (hs, cs, gates, w, h0, c0, m)


def _lstm_bwd(block_b, res, g):
    hs, cs, gates, w, h0, c0, m = res
    t, b, h = hs.shape
    a, dh0, dc0 = _call(pk.lstm_bwd, "lstm_bwd", block_b,
                        [("seq", cs), ("seq", gates), ("row", c0), ("seq", g[0]), ("seq", g[1]),
                         ("all", w), ("msk", m)],
                        [("seq", (t, b, 4 * h)), ("row", (b, h)), ("row", (b, h))],
                        num_steps=t, hidden=h)
    return a, _outer(_prev(hs, h0), a), dh0, dc0, jnp.zeros_like(m)


lstm_states.defvjp(_lstm_fwd, _lstm_bwd)


# -- GRU -----------------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def gru_states(u, w, b_hn, h0, m, block_b):
    """h_1..h_T of the masked GRU. Shapes: u [T,B,3H], w [H,3H], b_hn [1,H], h0 [B,H]."""
    return _gru_fwd(u, w, b_hn, h0, m, block_b)[0]


def _gru_fwd(u, w, b_hn, h0, m, block_b):
    t, b, h3 = u.shape
    h = h3 // 3
    hs, gates = _call(pk.gru_fwd, "gru_fwd", block_b,
                      [("seq", u), ("all", w), ("all", b_hn), ("row", h0), ("msk", m)],
                      [("seq", (t, b, h)), ("seq", (t, b, 4 * h))], num_steps=t, hidden=h)
    return hs, (hs, gates, w, h0, m)


def _gru_bwd(block_b, res, g):
    hs, gates, w, h0, m = res
    t, b, h = hs.shape
    du, dq, dh0 = _call(pk.gru_bwd, "gru_bwd", block_b,
                        [("seq", hs), ("seq", gates), ("row", h0), ("seq", g), ("all", w),
                         ("msk", m)],
                        [("seq", (t, b, 3 * h)), ("seq", (t, b, 3 * h)), ("row", (b, h))],
                        num_steps=t, hidden=h)
    db_hn = jnp.sum(dq[..., 2 * h:], axis=(0, 1))[None]
    return du, _outer(_prev(hs, h0), dq), db_hn, dh0, jnp.zeros_like(m)


gru_states.defvjp(_gru_fwd, _gru_bwd)


# -- the runner's entry point --------------------------------------------------------------------
def _pad_rows(x, pad, axis):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths)


def run(cell, params, xs_tm, carry, mask_tm, *, reverse=False, block_b=None):
    """The runner's semantics on the fused kernels (see ``rnn_jax.rnn.rnn``).

    Shapes: xs_tm [T, *batch, I]; carry as ``cell.initial_carry(batch)``; mask_tm [T, *batch]
    bool or None. Returns ``(hs_tm, final_carry, carries_tm)`` with zero outputs on masked steps.
    """
    num_steps, batch_shape, hidden = xs_tm.shape[0], xs_tm.shape[1:-1], cell.hidden_size
    if num_steps == 0:  # nothing to run: no outputs, the carry unchanged
        empty = jnp.zeros((0, *batch_shape, hidden), F32)
        return empty, carry, jax.tree.map(lambda c: jnp.zeros((0, *c.shape), c.dtype), carry)
    u = cell.project(params, xs_tm).astype(F32).reshape(num_steps, -1, cell.num_gates * hidden)
    carry = jax.tree.map(lambda c: c.astype(F32).reshape(-1, hidden), carry)
    batch = u.shape[1]
    m = (jnp.ones((num_steps, batch), F32) if mask_tm is None
         else mask_tm.reshape(num_steps, batch).astype(F32))
    block_b = block_b or (MIN_BLOCK if batch <= 4 * MIN_BLOCK else 2 * MIN_BLOCK)
    pad = -batch % block_b  # padded rows are fully masked: they stay zero and are cut off
    u, m = _pad_rows(u, pad, 1), _pad_rows(m, pad, 1)
    carry = jax.tree.map(lambda c: _pad_rows(c, pad, 0), carry)
    if reverse:
        u, m = u[::-1], m[::-1]
    w = params["U"].astype(F32)
    if isinstance(cell, LSTM):
        states = lstm_states(u, w, carry[0], carry[1], m, block_b)
    elif isinstance(cell, GRU):
        states = (gru_states(u, w, params["b_hn"].astype(F32)[None], carry, m, block_b),)
    else:
        states = (elman_states(u, w, carry, m, cell.activation, block_b),)
    if reverse:
        states, m = tuple(s[::-1] for s in states), m[::-1]
    h_all = states[0]
    hs = jnp.where(m[..., None] > 0, h_all, 0.0)
    last = tuple(s[0] if reverse else s[-1] for s in states)
    as_carry = (lambda parts: tuple(parts)) if isinstance(cell, LSTM) else (lambda p: p[0])
    cut = lambda z, lead: z[(slice(None),) * lead + (slice(0, batch),)].reshape(  # noqa: E731
        *z.shape[:lead], *batch_shape, hidden)
    return (cut(hs, 1), as_carry([cut(s, 0) for s in last]),
            as_carry([cut(s, 1) for s in states]))
