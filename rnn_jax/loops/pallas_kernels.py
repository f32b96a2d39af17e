"""Pallas kernel bodies for the fused time loops (see ``rnn_jax.loops.pallas`` for the idea).

Each program owns ``b`` batch rows and loops over all T steps. With ``resident=True`` the
recurrent matrix U is loaded once, before the loop, and stays on chip (in shared memory, where
the tensor-core products read it) for all T steps; with ``resident=False`` U is loaded where a
product needs it, every step (L2 serves it after the first), so only the part one product
reads needs shared memory. ``rnn_jax.loops.gpu_fit`` says which fits for which H.

Tiles (streamed kernels, ``tile`` hidden units, a power of two dividing the padded H): the
state is held as n = H / tile column blocks ``h[j] = h[:, j*tile:(j+1)*tile]`` and each gate
block U_k as tiles ``U_k[i, j]`` [tile, tile]; every product is a loop over tiles,

    (h U_k)[:, j] = sum_i h[i] U_k[i, j],        (a U_k^T)[:, i] = sum_j a[j] U_k[i, j]^T,

the step a loop over its column blocks j (forward; Elman's and the GRU's backward over the
blocks i of the adjoint), both ``fori_loop``s with a traced block index: a loop-invariant load
outside such a loop keeps its per-thread addresses in registers for all T steps (Triton
issues loads as inline PTX, so ptxas cannot fold a tile's constant offset), which spilled
every unrolled float32 H = 256 kernel measured; inside the loop only one tile's addresses are
live. Where the adjoints of all blocks would be too many to hold (the LSTM from H = 256, the
GRU from H = 512 in float32; ``_Layout.accumulates``), the backward step loops over the blocks
j instead, making block j of the gates' adjoints and adding its products to all n sums
(a U^T)[:, i] at once (``_Layout.adjoint``), so one block's adjoints are live, not G n. A
value held in registers is never sliced or indexed by a traced number (the Triton backend
handles that poorly): block j of a list of blocks is chosen by a cascade of selects
(``_Layout.pick``) and replaced likewise (``_Layout.put``). With one block (the default:
tile = H) every index is the Python int 0 and the loops are not emitted. The LSTM's forward
step computes its gates one at a time (i, g, f, o) so that only one gate's registers are
live; in a loop over blocks the LSTM's and the GRU's gates are stored as soon as they are
made. With ``prefetch=True`` every per-step input of step t+1 (the hoisted projection u, the
mask, the stored states) is read at the top of step t, before its products, and carried
into the next step, so its memory latency overlaps step t's work (``_time_loop``); without
it a read is issued where the step uses it. Blocks are addressed by slices of the
*references* (``pl.ds``). Masks arrive as [T, b] in the state dtype (1 = real step); on a
masked step the state is left unchanged and the adjoint passes through untouched.

Products: ``dot(a, U_k[i, j])`` casts ``a`` to U's storage dtype (bf16 under a bf16
``compute_dtype``) and accumulates in the state dtype (float32, or float64) at the precision
the caller set (see ``rnn_jax.loops.pallas_launch``). Forward equations (u = x W + b hoisted,
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

import dataclasses
import functools
import operator
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

ACTIVATIONS = {
    "tanh": (jnp.tanh, lambda s: 1.0 - s * s),
    # relu's derivative from the stored output, without jax.nn.relu's custom_jvp in the kernel
    "relu": (lambda a: jnp.maximum(a, 0.0), lambda s: (s > 0).astype(s.dtype)),
    "identity": (lambda a: a, lambda s: jnp.ones_like(s)),
}
_AT = (((1,), (1,)), ((), ()))  # a [b, tile] x U_k[i, j] [tile, tile] -> [b, tile]: a U_k[i, j]^T


def _mm(a, w, precision, transpose=False):
    acc = jnp.promote_types(a.dtype, jnp.float32)
    a = a.astype(w.dtype)
    if transpose:
        return jax.lax.dot_general(a, w, _AT, precision=precision, preferred_element_type=acc)
    return jnp.dot(a, w, precision=precision, preferred_element_type=acc)


class _Layout:
    """The column blocks of one kernel: ``n`` blocks of ``tile`` units of each gate's H."""

    def __init__(self, hidden, tile):
        self.hidden = hidden
        self.tile = hidden if tile is None else min(tile, hidden)
        self.n = hidden // self.tile

    def cols(self, k, j):
        """Gate block k's column block j of a [.., G*H] axis (j an int or traced)."""
        return pl.ds(k * self.hidden + j * self.tile, self.tile)

    def pick(self, blocks, j):
        """blocks[j], for a traced j too (a cascade of selects)."""
        if isinstance(j, int):
            return blocks[j]
        return functools.reduce(lambda v, jj: jnp.where(j == jj, blocks[jj], v),
                                range(1, self.n), blocks[0])

    def put(self, blocks, j, value):
        """blocks with blocks[j] = value, for a traced j too."""
        if isinstance(j, int):
            return [value if jj == j else b for jj, b in enumerate(blocks)]
        return [jnp.where(j == jj, value, b) for jj, b in enumerate(blocks)]

    def each(self, fn, carry):
        """``carry = fn(j, carry)`` for the blocks j = 0..n-1 (a loop only where n > 1)."""
        if self.n == 1:
            return fn(0, carry)
        return jax.lax.fori_loop(0, self.n, fn, carry)

    def total(self, term):
        """term(0) + term(1) + ... + term(n-1), summed left to right in a loop."""
        first = term(0)
        if self.n == 1:
            return first
        return jax.lax.fori_loop(1, self.n, lambda i, acc: acc + term(i), first)

    def rows(self, ref):
        """The column blocks of a [b, H] ref."""
        return [ref[:, self.cols(0, j)] for j in range(self.n)]

    def write(self, ref, blocks):
        for j, v in enumerate(blocks):
            ref[:, self.cols(0, j)] = v

    def store(self, ref, t, j, gates):
        """ref[t]'s column block j of each gate block k = gates[k]."""
        for k, v in enumerate(gates):
            ref[t, :, self.cols(k, j)] = v

    def reads(self, ref, num, name):
        """{f"{name}{k}": (t, j) -> ref[t]'s column block j of gate block k}."""
        return {f"{name}{k}": _Blocked(lambda t, j, k=k: ref[t, :, self.cols(k, j)])
                for k in range(num)}

    def previous(self, ref, init_ref, name):
        """{name: (t, j) -> block j of the state before step t (ref[t-1] or the initial)}."""
        return {name: _Blocked(lambda t, j: jnp.where(
            t > 0, ref[jnp.maximum(t - 1, 0), :, self.cols(0, j)], init_ref[:, self.cols(0, j)]))}

    def weights(self, w_ref, num, resident):
        """U's tiles as ``w(k, i, j)`` = U_k[i, j] (rows block i, columns block j).

        Resident (one block, the whole H): each gate block U_k is loaded once, before the time
        loop, and stays on chip. Streamed: a tile is loaded where a product uses it, every step
        (from L2, where U stays after the first step), so only one tile at a time needs
        on-chip room.
        """
        def read(k, i, j):
            return w_ref[pl.ds(i * self.tile, self.tile), self.cols(k, j)]

        if not resident:
            return read
        assert self.n == 1, "resident kernels hold U whole (Kernel checks tile)"
        blocks = [read(k, 0, 0) for k in range(num)]
        return lambda k, i, j: blocks[k]

    def product(self, h, w, k, j, precision):
        """(h U_k)[:, j] = sum_i h[i] U_k[i, j], left to right.

        With n > 1, a loop from a zero sum, each block's product added to it as made, not from
        block 0's product made before the loop. Measured (sm_90, 8 warps): the LSTM's forward
        at H = 512 in 128-unit tiles 233 registers and no spills (255 and 44-108 bytes of
        spills from block 0), at H = 256 200 and none (0-60 bytes); Elman tanh's float32 and
        bf16 at H = 512 in 128-unit tiles no spills (8-24 bytes); one [b, tile] block less
        shared memory everywhere. The backward's sums (``back``, ``adjoint``) keep their order:
        from zero, the GRU's float32 H = 128 and bf16 H = 256 backward spilled 16-56 bytes.
        """
        if self.n == 1:
            return _mm(h[0], w(k, 0, j), precision)
        return jax.lax.fori_loop(0, self.n, lambda i, acc: acc + _mm(
            self.pick(h, i), w(k, i, j), precision), jnp.zeros_like(h[0]))

    def back(self, grads, w, i, precision, start=None):
        """start + sum_k (a_k U_k^T)[:, i] = start + sum_k sum_j a_k[j] U_k[i, j]^T
        (``grads``: per gate k, its column blocks), left to right."""
        def terms(j):
            return [_mm(self.pick(a, j), w(k, i, j), precision, transpose=True)
                    for k, a in enumerate(grads)]

        if self.n == 1:
            return functools.reduce(operator.add, terms(0) if start is None
                                    else [start, *terms(0)])
        total = self.total(lambda j: functools.reduce(operator.add, terms(j)))
        return total if start is None else start + total

    def accumulates(self, num_gates, dtype):
        """Whether a backward step with ``num_gates`` gate blocks adds each column block's
        products as the block is made (``adjoint``) instead of holding all adjoint blocks for
        ``back``: in a loop over blocks (n > 1) where those blocks, G H values of the state
        dtype per batch row, pass 3,072 bytes. Measured (sm_90, 8 warps): the float32 LSTM
        at H = 256 (4,096 bytes) and GRU at H = 512 (6,144) compile without spills only this
        way; the float32 GRU at H = 256 (3,072) only with ``back``; the float64 LSTM at
        H = 128 (4,096) spills less this way (128-160 bytes against 160-864)."""
        return self.n > 1 and num_gates * self.hidden * jnp.dtype(dtype).itemsize > 3072

    def adjoint(self, block, carry, zeros, w, precision):
        """The backward step's loop over column blocks j (n > 1), with its products.

        ``grads, carry = block(j, carry)`` makes block j of each gate's adjoint a_k; each is
        multiplied into the sums ``acc[i] = sum_j sum_k a_k[j] U_k[i, j]^T`` (left to right in
        j and in k, as ``back``) as soon as it is made, so one block's adjoints are live at a
        time instead of all n. Returns (carry, acc).

        Measured (sm_90, ptxas): the LSTM at H = 256 in 64-unit tiles, float32, 182 registers
        and no spills this way, 56-72 bytes of spills with all 16 adjoint blocks held for
        ``back``; the GRU at H = 512, 180-183 registers and no spills in 64-unit tiles, none
        in 128-unit tiles either (100-768 bytes with ``back``). The GRU at H = 256 compiles
        without spills only with ``back`` (this way ptxas stops at 128 registers and spills
        8-16 bytes), and so do Elman's bf16 kernels at H = 512 in 128-unit tiles: Elman keeps
        ``back`` (see ``accumulates``).
        """
        def body(j, state):
            carry, acc = state
            grads, carry = block(j, carry)

            def add(i, acc):
                term = functools.reduce(operator.add, [
                    _mm(a, w(k, i, j), precision, transpose=True) for k, a in enumerate(grads)])
                return self.put(acc, i, self.pick(acc, i) + term)

            return carry, self.each(add, acc)

        return jax.lax.fori_loop(0, self.n, body, (carry, zeros))


@dataclasses.dataclass(frozen=True)
class _Blocked:
    """A per-step read of one column block: ``read(t, j)``."""

    read: Callable


def _keep(mask_row):
    """The step's mask row [b] (1 = real step) as a [b, 1] condition."""
    return mask_row[:, None] > 0


def _time_loop(num_steps, reads, step, init, prefetch, lay, reverse=False):
    """``carry = step(t, row, carry)`` for the T steps (t from T-1 down to 0 with ``reverse``).

    ``reads``: {name: t -> array, or a ``_Blocked`` (t, j) -> column block j}, the step's
    per-time-step inputs, which the step takes as ``row(name)`` or ``row(name, j)``. Without
    ``prefetch`` a read is issued where the step asks for it. With it, the reads of step t+1
    (every block) are issued at the top of step t, before its products, and carried: the
    values are the same, only their load is earlier (one extra read of each, clamped to the
    last step, goes unused).
    """
    time = (lambda i: num_steps - 1 - i) if reverse else (lambda i: i)
    if not prefetch:
        def body(i, carry):
            t = time(i)

            def row(name, j=None):
                read = reads[name]
                return read.read(t, j) if isinstance(read, _Blocked) else read(t)

            return step(t, row, carry)

        return jax.lax.fori_loop(0, num_steps, body, init)

    def load(i):
        t = time(i)
        return {name: ([read.read(t, j) for j in range(lay.n)] if isinstance(read, _Blocked)
                       else read(t)) for name, read in reads.items()}

    def prefetched(i, carry):
        state, current = carry
        upcoming = load(jnp.minimum(i + 1, num_steps - 1))

        def row(name, j=None):
            return current[name] if j is None else lay.pick(current[name], j)

        return step(time(i), row, state), upcoming

    return jax.lax.fori_loop(0, num_steps, prefetched, (init, load(0)))[0]


def _mask_read(m_ref):
    return {"m": lambda t: m_ref[t]}


def _zeros(ref, lay):
    return [jnp.zeros((ref.shape[0], lay.tile), ref.dtype) for _ in range(lay.n)]


# -- Elman ---------------------------------------------------------------------------------------
def elman_fwd(u_ref, w_ref, h0_ref, m_ref, s_ref, *, num_steps, activation, precision,
              resident=True, prefetch=False, tile=None):
    f, _ = ACTIVATIONS[activation]
    lay = _Layout(h0_ref.shape[-1], tile)
    w = lay.weights(w_ref, 1, resident)
    reads = {**lay.reads(u_ref, 1, "u"), **_mask_read(m_ref)}

    def step(t, row, h):
        keep = _keep(row("m"))

        def block(j, new):
            v = jnp.where(keep, f(row("u0", j) + lay.product(h, w, 0, j, precision)),
                          lay.pick(h, j))
            lay.store(s_ref, t, j, [v])
            return lay.put(new, j, v)

        return lay.each(block, h)

    _time_loop(num_steps, reads, step, lay.rows(h0_ref), prefetch, lay)


def elman_bwd(s_ref, g_ref, w_ref, m_ref, a_ref, dh0_ref, *, num_steps, activation, precision,
              resident=True, prefetch=False, tile=None):
    _, df = ACTIVATIONS[activation]
    lay = _Layout(dh0_ref.shape[-1], tile)
    w = lay.weights(w_ref, 1, resident)
    reads = {**lay.reads(g_ref, 1, "g"), **lay.reads(s_ref, 1, "s"), **_mask_read(m_ref)}

    def step(t, row, lam):
        lam = [lam[j] + row("g0", j) for j in range(lay.n)]
        keep = _keep(row("m"))
        a = [jnp.where(keep, lam[j] * df(row("s0", j)), 0.0) for j in range(lay.n)]
        for j in range(lay.n):
            lay.store(a_ref, t, j, [a[j]])
        return lay.each(lambda i, new: lay.put(new, i, jnp.where(
            keep, lay.back([a], w, i, precision), lay.pick(lam, i))), lam)

    lay.write(dh0_ref, _time_loop(num_steps, reads, step, _zeros(dh0_ref, lay), prefetch, lay,
                                  reverse=True))


# -- LSTM ----------------------------------------------------------------------------------------
def lstm_fwd(u_ref, w_ref, h0_ref, c0_ref, m_ref, hs_ref, cs_ref, gates_ref, *, num_steps,
             precision, resident=True, prefetch=False, tile=None):
    lay = _Layout(h0_ref.shape[-1], tile)
    w = lay.weights(w_ref, 4, resident)
    reads = {**lay.reads(u_ref, 4, "u"), **_mask_read(m_ref)}

    def step(t, row, carry):
        h, c = carry

        def block(j, new):
            pre = lambda k: row(f"u{k}", j) + lay.product(h, w, k, j, precision)  # noqa: E731
            # in a loop over blocks a gate is stored as soon as it is made, so it is dead once
            # used (stored at the end, H = 256 in 64-unit tiles spilled 8 bytes); one block
            # stores all four at the end (as measured before)
            early = lay.n > 1

            def gate(k, fn):
                v = fn(pre(k))
                if early:
                    gates_ref[t, :, lay.cols(k, j)] = v
                return v

            i = gate(0, jax.nn.sigmoid)
            g = gate(2, jnp.tanh)
            ig = i * g
            f = gate(1, jax.nn.sigmoid)
            c_old = lay.pick(new[1], j)  # block j of c: not yet replaced (c itself is dead)
            c_new = f * c_old + ig
            o = gate(3, jax.nn.sigmoid)
            keep = _keep(row("m"))
            h_j = jnp.where(keep, o * jnp.tanh(c_new), lay.pick(h, j))
            c_j = jnp.where(keep, c_new, c_old)
            lay.store(hs_ref, t, j, [h_j])
            lay.store(cs_ref, t, j, [c_j])
            if not early:
                lay.store(gates_ref, t, j, [i, f, g, o])
            return lay.put(new[0], j, h_j), lay.put(new[1], j, c_j)

        return lay.each(block, (h, c))

    _time_loop(num_steps, reads, step, (lay.rows(h0_ref), lay.rows(c0_ref)), prefetch, lay)


def lstm_bwd(cs_ref, gates_ref, c0_ref, gh_ref, gc_ref, w_ref, m_ref, a_ref, dh0_ref, dc0_ref,
             *, num_steps, precision, resident=True, prefetch=False, tile=None):
    lay = _Layout(dh0_ref.shape[-1], tile)
    w = lay.weights(w_ref, 4, resident)
    reads = {**lay.reads(gh_ref, 1, "gh"), **lay.reads(gc_ref, 1, "gc"),
             **lay.reads(cs_ref, 1, "c"), **lay.previous(cs_ref, c0_ref, "c_prev"),
             **lay.reads(gates_ref, 4, "gate"), **_mask_read(m_ref)}

    def adjoints(t, row, j, lh, lc):
        """Block j's gate adjoints (stored), its new lam_c and the step's mask."""
        i, f, g, o = (row(f"gate{k}", j) for k in range(4))
        tc = jnp.tanh(row("c0", j))
        dc = lc + lh * o * (1.0 - tc * tc)
        grads = [dc * g * i * (1.0 - i), dc * row("c_prev", j) * f * (1.0 - f),
                 dc * i * (1.0 - g * g), lh * tc * o * (1.0 - o)]
        keep = _keep(row("m"))
        grads = [jnp.where(keep, d, 0.0) for d in grads]
        lay.store(a_ref, t, j, grads)
        return grads, jnp.where(keep, dc * f, lc), keep

    def step(t, row, carry):
        lam_h, lam_c = carry
        if lay.accumulates(4, dh0_ref.dtype):
            def block(j, lam_c):
                lc = lay.pick(lam_c, j) + row("gc0", j)
                grads, lc, _ = adjoints(t, row, j, lay.pick(lam_h, j) + row("gh0", j), lc)
                return grads, lay.put(lam_c, j, lc)

            lam_c, acc = lay.adjoint(block, lam_c, _zeros(dh0_ref, lay), w, precision)
            keep = _keep(row("m"))  # lam_h + gh made again, not held through the loop
            return [jnp.where(keep, acc[i], lam_h[i] + row("gh0", i))
                    for i in range(lay.n)], lam_c
        lam_h = [lam_h[j] + row("gh0", j) for j in range(lay.n)]
        grads, new_c = ([], [], [], []), []
        for j in range(lay.n):
            made, lc, keep = adjoints(t, row, j, lam_h[j], lam_c[j] + row("gc0", j))
            for blocks, d in zip(grads, made, strict=True):
                blocks.append(d)
            new_c.append(lc)

        def block(i, new):
            return lay.put(new, i, jnp.where(keep, lay.back(grads, w, i, precision),
                                             lay.pick(lam_h, i)))

        return lay.each(block, lam_h), new_c

    dh0, dc0 = _time_loop(num_steps, reads, step, (_zeros(dh0_ref, lay), _zeros(dc0_ref, lay)),
                          prefetch, lay, reverse=True)
    lay.write(dh0_ref, dh0)
    lay.write(dc0_ref, dc0)


# -- GRU -----------------------------------------------------------------------------------------
def gru_fwd(u_ref, w_ref, bhn_ref, h0_ref, m_ref, hs_ref, gates_ref, *, num_steps,
            precision, resident=True, prefetch=False, tile=None):
    lay = _Layout(h0_ref.shape[-1], tile)
    w = lay.weights(w_ref, 3, resident)
    b_hn = lay.rows(bhn_ref)
    reads = {**lay.reads(u_ref, 3, "u"), **_mask_read(m_ref)}

    def step(t, row, h):
        def block(j, new):
            # one block: u's three gate blocks read before the products (fewer registers
            # measured: 96 instead of 128 at H = 64) and the gates made in order r, z, q, n.
            # In a loop over blocks: u read where it is used (H = 256 in 64-unit tiles: no
            # spills instead of 40 bytes), n made as soon as r and q exist, z last, and each
            # gate stored as soon as it is made (H = 512 in 128-unit tiles: no spills instead
            # of 528-1,352 bytes; float64 H = 128 in 64-unit tiles: none instead of 196-256)
            loop = lay.n > 1
            early = None if loop else [row(f"u{k}", j) for k in range(3)]
            u = (lambda k: row(f"u{k}", j)) if loop else (lambda k: early[k])

            def gate(k, v):
                if loop:
                    gates_ref[t, :, lay.cols(k, j)] = v
                return v

            def update():
                return gate(1, jax.nn.sigmoid(u(1) + lay.product(h, w, 1, j, precision)))

            r = gate(0, jax.nn.sigmoid(u(0) + lay.product(h, w, 0, j, precision)))
            if not loop:
                z = update()
            q = gate(3, lay.product(h, w, 2, j, precision) + lay.pick(b_hn, j))
            n = gate(2, jnp.tanh(u(2) + r * q))
            if loop:
                z = update()
            h_old = lay.pick(h, j)
            h_j = jnp.where(_keep(row("m")), (1.0 - z) * n + z * h_old, h_old)
            lay.store(hs_ref, t, j, [h_j])
            if not loop:
                lay.store(gates_ref, t, j, [r, z, n, q])
            return lay.put(new, j, h_j)

        return lay.each(block, h)

    _time_loop(num_steps, reads, step, lay.rows(h0_ref), prefetch, lay)


def gru_bwd(hs_ref, gates_ref, h0_ref, g_ref, w_ref, m_ref, du_ref, dq_ref, dh0_ref, *,
            num_steps, precision, resident=True, prefetch=False, tile=None):
    """du = d/d[u_r, u_z, u_n]; dq = d/d[hU_r, hU_z, hU_n + b_hn] (they differ in the n block)."""
    lay = _Layout(dh0_ref.shape[-1], tile)
    w = lay.weights(w_ref, 3, resident)
    reads = {**lay.reads(g_ref, 1, "g"), **lay.reads(gates_ref, 4, "gate"),
             **lay.previous(hs_ref, h0_ref, "h_prev"), **_mask_read(m_ref)}

    def adjoints(t, row, j, lam_j):
        """Block j's gate adjoints dq (du and dq stored), its z and the step's mask."""
        r, z, n, q = (row(f"gate{k}", j) for k in range(4))
        dan = lam_j * (1.0 - z) * (1.0 - n * n)
        dar = dan * q * r * (1.0 - r)
        daz = lam_j * (row("h_prev", j) - n) * z * (1.0 - z)
        keep = _keep(row("m"))
        dar, daz, dan = (jnp.where(keep, d, 0.0) for d in (dar, daz, dan))
        dqn = dan * r
        lay.store(du_ref, t, j, [dar, daz, dan])
        lay.store(dq_ref, t, j, [dar, daz, dqn])
        return [dar, daz, dqn], z, keep

    def step(t, row, lam):
        if lay.accumulates(3, dh0_ref.dtype):
            def block(j, carry):
                return adjoints(t, row, j, lay.pick(lam, j) + row("g0", j))[0], carry

            _, acc = lay.adjoint(block, 0, _zeros(dh0_ref, lay), w, precision)
            keep = _keep(row("m"))  # lam + g and z made again, not held through the loop
            new = []
            for i in range(lay.n):
                lam_i = lam[i] + row("g0", i)
                new.append(jnp.where(keep, lam_i * row("gate1", i) + acc[i], lam_i))
            return new
        lam = [lam[j] + row("g0", j) for j in range(lay.n)]
        dq, zs = ([], [], []), []
        for j in range(lay.n):
            grads, z, keep = adjoints(t, row, j, lam[j])
            for blocks, d in zip(dq, grads, strict=True):
                blocks.append(d)
            zs.append(z)

        def block(i, new):
            back = lay.back(dq, w, i, precision, start=lay.pick(lam, i) * lay.pick(zs, i))
            return lay.put(new, i, jnp.where(keep, back, lay.pick(lam, i)))

        return lay.each(block, lam)

    lay.write(dh0_ref, _time_loop(num_steps, reads, step, _zeros(dh0_ref, lay), prefetch, lay,
                                  reverse=True))
