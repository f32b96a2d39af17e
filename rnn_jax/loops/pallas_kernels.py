"""Pallas kernel bodies for the fused time loops (see ``rnn_jax.loops.pallas`` for the idea).

Each program owns ``b`` batch rows and loops over all T steps. With ``resident=True`` the
recurrent matrix U is loaded once, before the loop, and stays on chip (in shared memory, where
the tensor-core products read it) for all T steps; with ``resident=False`` each gate block U_k
is loaded where a product needs it, every step (L2 serves it after the first), so only one
block at a time needs shared memory; the LSTM's forward step computes its gates one at a time
(i, g, f, o) so that only one block's registers are live. ``rnn_jax.loops.gpu_fit`` says which
fits for which H. With ``prefetch=True`` every per-step input of step t+1 (the hoisted
projection u, the mask, the stored states) is read at the top of step t, before its products,
and carried into the next step, so its memory latency overlaps step t's work (``_time_loop``);
without it a read is issued where the step uses it. Gate blocks are
addressed by static slices of the *references* (``pl.ds(k * H, H)``), never by slicing values
held in registers, which the Triton backend handles poorly. Masks arrive as [T, b] in the state
dtype (1 = real step); on a masked step the state is left unchanged and the adjoint passes
through untouched.

Products: ``dot(a, U_k)`` casts ``a`` to U's storage dtype (bf16 under a bf16
``compute_dtype``) and accumulates in the state dtype (float32, or float64) at the precision
the caller set (see ``rnn_jax.loops.pallas.Kernel``). Forward equations (u = x W + b hoisted,
gate order as in ``rnn_jax.cells``):

    Elman  s_t = f(u_t + s_{t-1} U)
    LSTM   i, f, o = sigma(.), g = tanh(.) of u_t + h_{t-1} U;  c_t = f c_{t-1} + i g;
           h_t = o tanh(c_t)
    GRU    r, z = sigma(u_{r,z} + h U_{r,z});  q = h U_n + b_hn;  n = tanh(u_n + r q);
           h_t = (1 - z) n + z h_{t-1}

Backward kernels run the adjoint recursion in reverse time and write the gradient of every
pre-activation (the rows that, multiplied by the previous states, give dU in one product);
their products contract with U's second axis (``a U^T``) without materialising U^T.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

ACTIVATIONS = {
    "tanh": (jnp.tanh, lambda s: 1.0 - s * s),
    # relu's derivative from the stored output, without jax.nn.relu's custom_jvp in the kernel
    "relu": (lambda a: jnp.maximum(a, 0.0), lambda s: (s > 0).astype(s.dtype)),
    "identity": (lambda a: a, lambda s: jnp.ones_like(s)),
}
_AT = (((1,), (1,)), ((), ()))  # a [b, H] x U_k [H', H] -> [b, H']: a U_k^T


def _mm(a, w, precision, transpose=False):
    acc = jnp.promote_types(a.dtype, jnp.float32)
    a = a.astype(w.dtype)
    if transpose:
        return jax.lax.dot_general(a, w, _AT, precision=precision, preferred_element_type=acc)
    return jnp.dot(a, w, precision=precision, preferred_element_type=acc)


def _weights(w_ref, hidden, num, resident):
    """The gate blocks U_k [H, H] of U, as a function of k.

    Resident: all blocks are loaded once, before the time loop, and stay on chip. Streamed:
    block k is loaded where the step uses it, every step (from L2, where U stays after the
    first step), so only one block at a time needs on-chip room.
    """
    if resident:
        blocks = _blocks(w_ref, hidden, num)
        return lambda k: blocks[k]
    return lambda k: w_ref[:, pl.ds(k * hidden, hidden)]


def _blocks(ref, hidden, num):
    """The ``num`` gate blocks [.., H] of a ref's last axis."""
    return [ref[:, pl.ds(k * hidden, hidden)] for k in range(num)]


def _store(ref, t, hidden, values):
    for k, v in enumerate(values):
        ref[t, :, pl.ds(k * hidden, hidden)] = v


def _keep(mask_row):
    """The step's mask row [b] (1 = real step) as a [b, 1] condition."""
    return mask_row[:, None] > 0


def _previous(ref, init_ref, t):
    """The state before step t: ref[t-1], or the initial state at t = 0."""
    return jnp.where(t > 0, ref[jnp.maximum(t - 1, 0)], init_ref[...])


def _time_loop(num_steps, reads, step, init, prefetch, reverse=False):
    """``carry = step(t, row, carry)`` for the T steps (t from T-1 down to 0 with ``reverse``).

    ``reads``: {name: t -> array}, the step's per-time-step inputs, which the step takes as
    ``row(name)``. Without ``prefetch`` a read is issued where the step asks for it. With it,
    the reads of step t+1 are issued at the top of step t, before its products, and carried:
    the values are the same, only their load is earlier (one extra read of each, clamped to
    the last step, goes unused).
    """
    time = (lambda i: num_steps - 1 - i) if reverse else (lambda i: i)
    if not prefetch:
        def body(i, carry):
            t = time(i)
            return step(t, lambda name: reads[name](t), carry)

        return jax.lax.fori_loop(0, num_steps, body, init)

    def load(i):
        return {name: read(time(i)) for name, read in reads.items()}

    def prefetched(i, carry):
        state, current = carry
        upcoming = load(jnp.minimum(i + 1, num_steps - 1))
        return step(time(i), current.__getitem__, state), upcoming

    return jax.lax.fori_loop(0, num_steps, prefetched, (init, load(0)))[0]


def _gate_reads(ref, hidden, num, name):
    """{name + k: t -> ref[t]'s gate block k} for the ``num`` blocks of a ref's last axis."""
    return {f"{name}{k}": (lambda t, k=k: ref[t, :, pl.ds(k * hidden, hidden)])
            for k in range(num)}


# -- Elman ---------------------------------------------------------------------------------------
def elman_fwd(u_ref, w_ref, h0_ref, m_ref, s_ref, *, num_steps, activation, precision,
              resident=True, prefetch=False):
    f, _ = ACTIVATIONS[activation]
    hidden = h0_ref.shape[-1]
    w = _weights(w_ref, hidden, 1, resident)
    reads = {"u": lambda t: u_ref[t], "m": lambda t: m_ref[t]}

    def step(t, row, h):
        h = jnp.where(_keep(row("m")), f(row("u") + _mm(h, w(0), precision)), h)
        s_ref[t] = h
        return h

    _time_loop(num_steps, reads, step, h0_ref[...], prefetch)


def elman_bwd(s_ref, g_ref, w_ref, m_ref, a_ref, dh0_ref, *, num_steps, activation, precision,
              resident=True, prefetch=False):
    _, df = ACTIVATIONS[activation]
    hidden = dh0_ref.shape[-1]
    w = _weights(w_ref, hidden, 1, resident)
    reads = {"g": lambda t: g_ref[t], "s": lambda t: s_ref[t], "m": lambda t: m_ref[t]}

    def step(t, row, lam):
        lam = lam + row("g")
        keep = _keep(row("m"))
        a = jnp.where(keep, lam * df(row("s")), 0.0)
        a_ref[t] = a
        return jnp.where(keep, _mm(a, w(0), precision, transpose=True), lam)

    dh0_ref[...] = _time_loop(num_steps, reads, step, jnp.zeros(dh0_ref.shape, dh0_ref.dtype),
                              prefetch, reverse=True)


# -- LSTM ----------------------------------------------------------------------------------------
def lstm_fwd(u_ref, w_ref, h0_ref, c0_ref, m_ref, hs_ref, cs_ref, gates_ref, *, num_steps,
             precision, resident=True, prefetch=False):
    hidden = h0_ref.shape[-1]
    w = _weights(w_ref, hidden, 4, resident)
    reads = {**_gate_reads(u_ref, hidden, 4, "u"), "m": lambda t: m_ref[t]}

    def step(t, row, carry):
        h, c = carry
        pre = lambda k: row(f"u{k}") + _mm(h, w(k), precision)  # noqa: E731
        i = jax.nn.sigmoid(pre(0))
        g = jnp.tanh(pre(2))
        ig = i * g
        f = jax.nn.sigmoid(pre(1))
        c_new = f * c + ig
        o = jax.nn.sigmoid(pre(3))
        keep = _keep(row("m"))
        h = jnp.where(keep, o * jnp.tanh(c_new), h)
        c = jnp.where(keep, c_new, c)
        hs_ref[t], cs_ref[t] = h, c
        _store(gates_ref, t, hidden, (i, f, g, o))
        return h, c

    _time_loop(num_steps, reads, step, (h0_ref[...], c0_ref[...]), prefetch)


def lstm_bwd(cs_ref, gates_ref, c0_ref, gh_ref, gc_ref, w_ref, m_ref, a_ref, dh0_ref, dc0_ref,
             *, num_steps, precision, resident=True, prefetch=False):
    hidden = dh0_ref.shape[-1]
    w = _weights(w_ref, hidden, 4, resident)
    reads = {"gh": lambda t: gh_ref[t], "gc": lambda t: gc_ref[t], "c": lambda t: cs_ref[t],
             "c_prev": lambda t: _previous(cs_ref, c0_ref, t),
             **_gate_reads(gates_ref, hidden, 4, "gate"), "m": lambda t: m_ref[t]}

    def step(t, row, carry):
        lam_h, lam_c = carry
        lam_h, lam_c = lam_h + row("gh"), lam_c + row("gc")
        i, f, g, o = (row(f"gate{k}") for k in range(4))
        tc = jnp.tanh(row("c"))
        dc = lam_c + lam_h * o * (1.0 - tc * tc)
        da = [dc * g * i * (1.0 - i), dc * row("c_prev") * f * (1.0 - f),
              dc * i * (1.0 - g * g), lam_h * tc * o * (1.0 - o)]
        keep = _keep(row("m"))
        da = [jnp.where(keep, d, 0.0) for d in da]
        _store(a_ref, t, hidden, da)
        back = sum(_mm(d, w(k), precision, transpose=True) for k, d in enumerate(da))
        return jnp.where(keep, back, lam_h), jnp.where(keep, dc * f, lam_c)

    zeros = jnp.zeros(dh0_ref.shape, dh0_ref.dtype)
    dh0, dc0 = _time_loop(num_steps, reads, step, (zeros, zeros), prefetch, reverse=True)
    dh0_ref[...], dc0_ref[...] = dh0, dc0


# -- GRU -----------------------------------------------------------------------------------------
def gru_fwd(u_ref, w_ref, bhn_ref, h0_ref, m_ref, hs_ref, gates_ref, *, num_steps,
            precision, resident=True, prefetch=False):
    hidden = h0_ref.shape[-1]
    w = _weights(w_ref, hidden, 3, resident)
    b_hn = bhn_ref[...]
    reads = {**_gate_reads(u_ref, hidden, 3, "u"), "m": lambda t: m_ref[t]}

    def step(t, row, h):
        u_r, u_z, u_n = (row(f"u{k}") for k in range(3))
        r = jax.nn.sigmoid(u_r + _mm(h, w(0), precision))
        z = jax.nn.sigmoid(u_z + _mm(h, w(1), precision))
        q = _mm(h, w(2), precision) + b_hn
        n = jnp.tanh(u_n + r * q)
        h = jnp.where(_keep(row("m")), (1.0 - z) * n + z * h, h)
        hs_ref[t] = h
        _store(gates_ref, t, hidden, (r, z, n, q))
        return h

    _time_loop(num_steps, reads, step, h0_ref[...], prefetch)


def gru_bwd(hs_ref, gates_ref, h0_ref, g_ref, w_ref, m_ref, du_ref, dq_ref, dh0_ref, *,
            num_steps, precision, resident=True, prefetch=False):
    """du = d/d[u_r, u_z, u_n]; dq = d/d[hU_r, hU_z, hU_n + b_hn] (they differ in the n block)."""
    hidden = dh0_ref.shape[-1]
    w = _weights(w_ref, hidden, 3, resident)
    reads = {"g": lambda t: g_ref[t], **_gate_reads(gates_ref, hidden, 4, "gate"),
             "h_prev": lambda t: _previous(hs_ref, h0_ref, t), "m": lambda t: m_ref[t]}

    def step(t, row, lam):
        lam = lam + row("g")
        r, z, n, q = (row(f"gate{k}") for k in range(4))
        dan = lam * (1.0 - z) * (1.0 - n * n)
        dar = dan * q * r * (1.0 - r)
        daz = lam * (row("h_prev") - n) * z * (1.0 - z)
        keep = _keep(row("m"))
        dar, daz, dan = (jnp.where(keep, d, 0.0) for d in (dar, daz, dan))
        dqn = dan * r
        _store(du_ref, t, hidden, (dar, daz, dan))
        _store(dq_ref, t, hidden, (dar, daz, dqn))
        back = (lam * z + _mm(dar, w(0), precision, transpose=True)
                + _mm(daz, w(1), precision, transpose=True)
                + _mm(dqn, w(2), precision, transpose=True))
        return jnp.where(keep, back, lam)

    dh0_ref[...] = _time_loop(num_steps, reads, step, jnp.zeros(dh0_ref.shape, dh0_ref.dtype),
                              prefetch, reverse=True)
