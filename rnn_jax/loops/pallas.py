"""Fused recurrent layers on Pallas kernels: the whole time loop in one kernel, both directions.

A ``lax.scan`` launches its body's kernels once per step (several microseconds each on a GPU).
Here one kernel loops over time itself, with the recurrent matrix U kept on chip for the whole
loop where it fits, else streamed from L2 one gate block, or one [tile, tile] tile, at a time
(``Kernel.resident``, ``Kernel.tile``).
Batch rows are independent, so the batch is cut into blocks of ``block_b`` rows, one program
each, with no synchronisation between programs — the idea of persistent RNN kernels (Diamos
et al. 2016) that cuDNN uses. Kernel bodies: ``rnn_jax.loops.pallas_kernels``.

Training uses ``jax.custom_vjp``: the forward kernel stores the states (and the LSTM/GRU gate
activations), the backward kernel runs the adjoint recursion in reverse time and writes the
gradient ``a_t`` of every pre-activation, and the weight gradients are single large products
outside the loop over all T*B rows,

    dU = [s_0; s_1; ...; s_{T-1}]^T [a_1; ...; a_T],    du_t = a_t  (-> dW, db by autodiff)

Masks follow the runner's rule (a masked step leaves the carry unchanged, outputs zero) and
``reverse`` runs the same kernel on time-flipped inputs. ``run_bidirectional`` runs both
directions of a bidirectional layer in one launch per pass: the backward direction's rows
follow the forward's, and each program reads its own direction's U (a GPU runs two launches
one after the other, so this puts twice as many programs on it at once).

H is zero-padded to a power of two (Triton's tiles): padded units start at zero and stay zero
in every cell (tanh(0) = relu(0) = 0, no input, zero rows of U), so the real units are
unchanged. The state keeps the input dtype (float32, or float64). On a GPU the kernels compile
through Pallas' Triton backend; elsewhere they run in Pallas' interpret mode (slow, the same
program), which is how the CPU test suite checks them against the scan path (launch,
precision: ``rnn_jax.loops.pallas_launch``).
"""

from __future__ import annotations

import functools
import math

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


def _outer(prev, a, directions):
    """dU per direction, stacked ``[D * H, G * H]``: each direction's rows are its own."""
    t, b = a.shape[:2]
    split = lambda z: z.reshape(t, directions, b // directions, z.shape[-1])  # noqa: E731
    du = jnp.einsum("tdbi,tdbj->dij", split(prev), split(a), preferred_element_type=a.dtype)
    return du.reshape(-1, a.shape[-1])


def _directions(w, hidden):
    """How many directions' U are stacked in ``w`` ([D * H, G * H])."""
    return w.shape[0] // hidden


# -- Elman ---------------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def elman_states(u, w, h0, m, activation, cfg, precision):
    """States s_1..s_T of the masked Elman recurrence. Shapes: u [T,B,H], w [D*H,H], h0 [B,H]
    (D directions, each a group of B/D rows with its own H rows of w: ``run_bidirectional``)."""
    return _elman_fwd(u, w, h0, m, activation, cfg, precision)[0]


def _elman_fwd(u, w, h0, m, activation, cfg, precision):
    t, b, h = u.shape
    (s,) = call(pk.elman_fwd, "elman_fwd", cfg, [("seq", u), ("all", w), ("row", h0),
                ("msk", m)], [("seq", (t, b, h))], u.dtype, _directions(w, h), num_steps=t,
                activation=activation, precision=precision)
    return s, (s, w, h0, m)


def _elman_bwd(activation, cfg, precision, res, g):
    s, w, h0, m = res
    t, b, h = s.shape
    d = _directions(w, h)
    a, dh0 = call(pk.elman_bwd, "elman_bwd", cfg, [("seq", s), ("seq", g), ("all", w),
                  ("msk", m)], [("seq", (t, b, h)), ("row", (b, h))], s.dtype, d, num_steps=t,
                  activation=activation, precision=precision)
    return a, _outer(_prev(s, h0), a, d).astype(w.dtype), dh0, jnp.zeros_like(m)


elman_states.defvjp(_elman_fwd, _elman_bwd)


# -- LSTM ----------------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def lstm_states(u, w, h0, c0, m, cfg, precision):
    """(h_1..h_T, c_1..c_T) of the masked LSTM. Shapes: u [T,B,4H], w [D*H,4H], h0, c0 [B,H]
    (D directions: ``run_bidirectional``)."""
    return _lstm_fwd(u, w, h0, c0, m, cfg, precision)[0]


def _lstm_fwd(u, w, h0, c0, m, cfg, precision):
    t, b, h4 = u.shape
    h = h4 // 4
    hs, cs, gates = call(pk.lstm_fwd, "lstm_fwd", cfg,
                         [("seq", u), ("all", w), ("row", h0), ("row", c0), ("msk", m)],
                         [("seq", (t, b, h)), ("seq", (t, b, h)), ("seq", (t, b, h4))],
                         u.dtype, _directions(w, h), num_steps=t, precision=precision)
    return (hs, cs), (hs, cs, gates, w, h0, c0, m)


def _lstm_bwd(cfg, precision, res, g):
    hs, cs, gates, w, h0, c0, m = res
    t, b, h = hs.shape
    d = _directions(w, h)
    a, dh0, dc0 = call(pk.lstm_bwd, "lstm_bwd", cfg,
                       [("seq", cs), ("seq", gates), ("row", c0), ("seq", g[0]), ("seq", g[1]),
                        ("all", w), ("msk", m)],
                       [("seq", (t, b, 4 * h)), ("row", (b, h)), ("row", (b, h))],
                       hs.dtype, d, num_steps=t, precision=precision)
    return a, _outer(_prev(hs, h0), a, d).astype(w.dtype), dh0, dc0, jnp.zeros_like(m)


lstm_states.defvjp(_lstm_fwd, _lstm_bwd)


# -- GRU -----------------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def gru_states(u, w, b_hn, h0, m, cfg, precision):
    """h_1..h_T of the masked GRU. Shapes: u [T,B,3H], w [D*H,3H], b_hn [D,H], h0 [B,H]
    (D directions: ``run_bidirectional``)."""
    return _gru_fwd(u, w, b_hn, h0, m, cfg, precision)[0]


def _gru_fwd(u, w, b_hn, h0, m, cfg, precision):
    t, b, h3 = u.shape
    h = h3 // 3
    hs, gates = call(pk.gru_fwd, "gru_fwd", cfg,
                     [("seq", u), ("all", w), ("all", b_hn), ("row", h0), ("msk", m)],
                     [("seq", (t, b, h)), ("seq", (t, b, 4 * h))], u.dtype, _directions(w, h),
                     num_steps=t, precision=precision)
    return hs, (hs, gates, w, h0, m)


def _gru_bwd(cfg, precision, res, g):
    hs, gates, w, h0, m = res
    t, b, h = hs.shape
    d = _directions(w, h)
    du, dq, dh0 = call(pk.gru_bwd, "gru_bwd", cfg,
                       [("seq", hs), ("seq", gates), ("row", h0), ("seq", g), ("all", w),
                        ("msk", m)],
                       [("seq", (t, b, 3 * h)), ("seq", (t, b, 3 * h)), ("row", (b, h))],
                       hs.dtype, d, num_steps=t, precision=precision)
    db_hn = jnp.sum(dq[..., 2 * h:].reshape(t, d, b // d, h), axis=(0, 2))  # [D, H]
    return du, _outer(_prev(hs, h0), dq, d).astype(w.dtype), db_hn, dh0, jnp.zeros_like(m)


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


def _operands(cell, params, xs_tm, carry, mask_tm, reverse, block_b, dt, w_dt):
    """One direction's kernel operands, padded: H to a power of two, the rows to a multiple of
    ``block_b`` (padded rows are fully masked: they stay zero and are cut off), time flipped
    for ``reverse``. Returns ``[u, w, b_hn or None, carry rows, mask]``."""
    num_steps, hidden = xs_tm.shape[0], cell.hidden_size
    gates, hp = cell.num_gates, padded_hidden(hidden)
    u = cell.project(params, xs_tm).astype(dt).reshape(num_steps, -1, gates * hidden)
    batch = u.shape[1]
    carry = jax.tree.map(lambda c: _pad_axis(c.astype(dt).reshape(-1, hidden), hp - hidden, 1),
                         carry)
    m = (jnp.ones((num_steps, batch), dt) if mask_tm is None
         else mask_tm.reshape(num_steps, batch).astype(dt))
    pad = -batch % block_b
    u, m = _pad_axis(_pad_gates(u, hidden, gates, hp - hidden), pad, 1), _pad_axis(m, pad, 1)
    carry = jax.tree.map(lambda c: _pad_axis(c, pad, 0), carry)
    if reverse:
        u, m = u[::-1], m[::-1]
    w = _pad_axis(_pad_gates(params["U"].astype(dt), hidden, gates, hp - hidden), hp - hidden, 0)
    b_hn = (_pad_axis(params["b_hn"].astype(dt)[None], hp - hidden, 1)
            if isinstance(cell, GRU) else None)
    return [u, w.astype(w_dt), b_hn, carry, m]


def _states(cell, u, w, b_hn, carry, m, cfg, prec):
    """The kernels' state sequences (time-major, padded): (h,) or, for the LSTM, (h, c)."""
    if isinstance(cell, LSTM):
        return lstm_states(u, w, carry[0], carry[1], m, cfg, prec)
    if isinstance(cell, GRU):
        return (gru_states(u, w, b_hn, carry, m, cfg, prec),)
    return (elman_states(u, w, carry, m, cell.activation, cfg, prec),)


def _results(cell, states, m, reverse, batch_shape):
    """Padded state sequences -> ``(hs_tm, final_carry, carries_tm)`` on the real rows/units."""
    hidden, batch = cell.hidden_size, math.prod(batch_shape)
    if reverse:
        states, m = tuple(s[::-1] for s in states), m[::-1]
    hs = jnp.where(m[..., None] > 0, states[0], jnp.zeros((), states[0].dtype))
    last = tuple(s[0] if reverse else s[-1] for s in states)
    as_carry = (lambda parts: tuple(parts)) if isinstance(cell, LSTM) else (lambda p: p[0])
    cut = lambda z, lead: z[(slice(None),) * lead + (slice(0, batch),)][..., :hidden].reshape(  # noqa: E731
        *z.shape[:lead], *batch_shape, hidden)
    return (cut(hs, 1), as_carry([cut(s, 0) for s in last]),
            as_carry([cut(s, 1) for s in states]))


def _launch_config(cell, dt, batch, kernel, precision):
    label, prec = precision_of(dt, cell.compute_dtype, precision)
    cfg = kernel or gpu_fit.pallas_kernel_for(cell, dt) or Kernel(
        block_b=MIN_BLOCK if batch <= 4 * MIN_BLOCK else 2 * MIN_BLOCK)
    w_dt = jnp.bfloat16 if label == "bf16" else dt  # U's storage dtype in the kernel
    return cfg, prec, w_dt


def _empty(cell, carry, batch_shape, dt):
    """No steps to run: no outputs, the carry unchanged."""
    hs = jnp.zeros((0, *batch_shape, cell.hidden_size), dt)
    return hs, carry, jax.tree.map(lambda c: jnp.zeros((0, *c.shape), c.dtype), carry)


def run(cell, params, xs_tm, carry, mask_tm, *, reverse=False, kernel=None, precision=None):
    """The runner's semantics on the fused kernels (see ``rnn_jax.rnn.rnn``).

    ``kernel``: a ``pallas_launch.Kernel`` (default: the first in ``gpu_fit``'s table that
    fits, U resident, streamed or streamed in tiles, else 16 or 32 rows per program);
    ``precision``: a ``jax.default_matmul_precision`` name (default: the config).
    Shapes: xs_tm [T, *batch, I]; carry as ``cell.initial_carry(batch)``; mask_tm [T, *batch]
    bool or None. Returns ``(hs_tm, final_carry, carries_tm)`` with zero outputs on masked steps,
    in the carry's dtype (float32, or float64 for float64 inputs under x64).
    """
    batch_shape = xs_tm.shape[1:-1]
    dt = jnp.result_type(*jax.tree.leaves(carry))
    if xs_tm.shape[0] == 0:
        return _empty(cell, carry, batch_shape, dt)
    cfg, prec, w_dt = _launch_config(cell, dt, math.prod(batch_shape), kernel, precision)
    ops = _operands(cell, params, xs_tm, carry, mask_tm, reverse, cfg.block_b, dt, w_dt)
    return _results(cell, _states(cell, *ops, cfg, prec), ops[-1], reverse, batch_shape)


def run_bidirectional(cells, params, xs_tm, carries, mask_tm, *, kernel=None, precision=None):
    """Both directions of a bidirectional layer in one launch per pass (forward, backward).

    The backward direction's rows (time-flipped) follow the forward direction's, and U of the
    two directions is stacked, ``[U_fwd; U_bwd]``: each program reads its own direction's block
    (``pallas_launch.call``'s ``directions``), so twice as many programs run at once as in two
    launches, which a GPU runs one after the other. ``cells``, ``params``, ``carries``:
    ``(fwd, bwd)`` pairs, the two cells of one kernel (``gpu_fit.key_of``) and hidden size;
    otherwise as :func:`run`. Returns ``((hs_tm, final, carries_tm) forward, (...) backward)``.
    """
    cell, batch_shape = cells[0], xs_tm.shape[1:-1]
    dt = jnp.result_type(*jax.tree.leaves(carries))
    if xs_tm.shape[0] == 0:
        return tuple(_empty(cell, c, batch_shape, dt) for c in carries)
    cfg, prec, w_dt = _launch_config(cell, dt, math.prod(batch_shape), kernel, precision)
    ops = [_operands(c, p, xs_tm, h0, mask_tm, reverse, cfg.block_b, dt, w_dt)
           for c, p, h0, reverse in zip(cells, params, carries, (False, True), strict=True)]
    rows = ops[0][0].shape[1]  # padded rows per direction, a multiple of block_b
    axes = (1, 0, 0, 0, 1)  # u, w, b_hn, carry, mask: rows / U / b_hn blocks stack here
    stacked = [None if a is None else jax.tree.map(
        lambda x, y, axis=axis: jnp.concatenate([x, y], axis), a, b)
        for a, b, axis in zip(ops[0], ops[1], axes, strict=True)]
    states = _states(cell, *stacked, cfg, prec)
    return tuple(_results(cell, tuple(s[:, k * rows:(k + 1) * rows] for s in states),
                          ops[k][-1], reverse, batch_shape)
                 for k, reverse in ((0, False), (1, True)))
