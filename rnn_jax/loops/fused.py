"""A faster time loop for Elman, LSTM and GRU: a hand-written JVP whose weight terms leave the loop.

Differentiating ``lax.scan`` over a cell step makes JAX accumulate the recurrent weight gradient
inside the backward loop (``dU += h_{t-1}^T dz_t``: an outer product and an [H, G*H] add per
step) and store about a dozen intermediates per step. Here the recurrence

    z_t = x_t W + b + h_{t-1} U,   carry_t = g(carry_{t-1}, z_t)   (g: the cell's gates)

gets a custom JVP instead (cell rules in ``rnn_jax.loops.fused_rules``):

    dz_t     = (dx_t W + x_t dW + db + h_{t-1} dU) + dh_{t-1} U    bracket: all t, before the loop
    dcarry_t = J_t dz_t + F_t dcarry_{t-1}                         J_t, F_t: all t at once

The tangent loop is linear in the tangents, so for reverse mode JAX transposes it into the
adjoint recursion (BPTT) backwards in time, with one [B, G*H] x [G*H, H] product per step, and
the transposes of the bracket's terms become single large products after the loop,

    dU = [h_0; ...; h_{T-1}]^T [dz_1; ...; dz_T],   dW = [x_1; ...; x_T]^T [dz_1; ...; dz_T]

([H or I, T*B] x [T*B, G*H]), as cuDNN and oneDNN compute them. The forward loop saves the
gate activations and the carries only. Being a JVP (not a VJP), forward mode, ``jax.hessian``,
``vmap`` and ``jax.checkpoint`` keep working. On a CPU (XLA, one core) a BPTT step takes
1.2-2.4x less time than the autodiff of the plain scan; see ``benchmarks/`` for measurements.

Supported: exactly ``Elman`` (any activation), ``LSTM``, ``GRU`` (not subclasses), without
``compute_dtype``; masks; either direction; any batch axes. ``rnn_jax.rnn`` falls back to the
plain scan for anything else (probes, ``return_carries``): see :func:`select`; with ``remat`` it
runs inside the checkpointed segments of ``rnn_jax.loops.segments``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from rnn_jax.cells import lead
from rnn_jax.loops.fused_rules import RULES, split


def supported(cell, params=None) -> bool:
    """Whether this path runs ``cell`` exactly (else the runner uses the plain scan)."""
    if type(cell) not in RULES or cell.compute_dtype is not None:
        return False
    return params is None or (isinstance(params, dict) and "U" in params)


def select(method, cell, params, *, probes=None, return_carries=False) -> str:
    """The time loop ``rnn_jax.rnn`` runs for ``method``: ``"fused"`` or ``"scan"``.

    ``"auto"`` takes this module's path whenever it supports the cell and the options (the
    same values, a faster BPTT) and the plain scan otherwise; ``"fused"`` insists, raising
    ValueError when it cannot run the request; any other method (``"scan"``, ...) is
    returned unchanged for the runner to dispatch.
    """
    if method not in ("auto", "fused"):
        return method  # "scan", or a path this module does not choose (left to the runner)
    reasons = []
    if type(cell) not in RULES:
        reasons.append(f"cell type {type(cell).__name__} (only Elman, LSTM, GRU themselves)")
    elif cell.compute_dtype is not None:
        reasons.append(f"compute_dtype={cell.compute_dtype}")
    elif not supported(cell, params):
        reasons.append("params without a recurrent matrix 'U'")
    for name, value in (("probes", probes is not None), ("return_carries", return_carries)):
        if value:
            reasons.append(name)
    if not reasons:
        return "fused"
    if method == "fused":
        raise ValueError(f"method='fused' does not support {', '.join(reasons)}; "
                         "use method='scan' or 'auto'")
    return "scan"


# -- the recurrence and its JVP ---------------------------------------------------------------
def _where(keep, new, old):
    return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)


def _forward(cell, unroll, params, carry0, us, mask, save):
    """The primal loop; with ``save``, also every step's carry and saved activations.

    ``us`` are the products x W_g; the bias is added inside the loop, where it costs nothing.
    """
    rule = RULES[type(cell)]
    bias = split(params["b"], len(us))

    def body(carry, inp):
        u, m = inp
        u = tuple(u_g + lead(b_g, u_g.ndim) for u_g, b_g in zip(u, bias, strict=True))
        new, saved = rule.step(cell, params, carry, u, cell.hidden(carry) @ params["U"])
        if m is not None:
            new = _where(m[..., None], new, carry)
        if not save:
            return new, cell.hidden(new)
        # materialised first: XLA's CPU backend writes a stacked output slowly when the value
        # is computed inside the write (dynamic-update-slice) itself
        return new, jax.lax.optimization_barrier((new, saved))

    return jax.lax.scan(body, carry0, (us, mask), unroll=unroll)


def _masked(hs, mask):
    return hs if mask is None else jnp.where(mask[..., None], hs, jnp.zeros_like(hs))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _recurrence(cell, unroll, params, carry0, xs, mask):
    final, hs = _forward(cell, unroll, params, carry0, project(cell, params, xs), mask,
                         save=False)
    return _masked(hs, mask), final  # the scan emitted the carried h; masked steps output 0


def _instantiate(t):
    return jax.tree.map(
        lambda x: jnp.zeros(x.shape, x.dtype) if isinstance(x, SymbolicZero) else x, t,
        is_leaf=lambda x: isinstance(x, SymbolicZero))


def _is_zero(t):
    return isinstance(t, SymbolicZero)


def _times_tangent(a, t):
    """``a @ t`` over all steps, ``a: [T, B, K]``, as a product whose transpose for ``t``,
    ``a^T @ ct``, XLA's CPU backend runs as a plain row-major GEMM (``a^T`` materialised)."""
    flat = a.reshape(-1, a.shape[-1])
    a_t = jax.lax.optimization_barrier(flat.T)  # [K, T*B]; kept apart from the product
    out = jax.lax.dot_general(a_t, t, (((0,), (0,)), ((), ())))
    return out.reshape((*a.shape[:-1], t.shape[-1]))


def _recurrence_jvp(cell, unroll, primals, tangents):
    params, carry0, xs, mask = primals
    t_p, t_carry0, t_xs, _ = tangents
    rule = RULES[type(cell)]
    us = project(cell, params, xs)
    final, (carries, saved) = _forward(cell, unroll, params, carry0, us, mask, save=True)
    prev = jax.tree.map(lambda c0, cs: jnp.concatenate([c0[None], cs[:-1]], axis=0),
                        carry0, carries)
    hs = _masked(cell.hidden(carries), mask)
    coefs = rule.coefs(cell, prev, carries, saved)

    # The tangent of every pre-activation except dh_{t-1} U, for all steps before the loop:
    # t_u = dx W + x dW + db and e = h_{t-1} dU. Transposed (BPTT), the dW and dU terms
    # become single [I or H, T*B] x [T*B, G*H] products after the adjoint loop.
    terms = []
    if not _is_zero(t_xs):
        terms.append(t_xs @ params["W"])
    if not _is_zero(t_p["W"]):
        terms.append(_times_tangent(xs, t_p["W"]))
    if not _is_zero(t_p["b"]):
        terms.append(lead(t_p["b"], xs.ndim))
    if not terms:  # only the initial carry (or U) is perturbed
        terms.append(jnp.zeros((*xs.shape[:-1], params["b"].size),
                               jnp.result_type(xs, params["W"], params["b"])))
    # [T, B, G*H] whatever the terms: db alone is [1, 1, G*H], and the tangent loop scans
    # over its leading axis (Elman's rule passes t_u through unscaled by [T, B, H] coefs).
    t_u = jnp.broadcast_to(sum(terms[1:], terms[0]), (*xs.shape[:-1], params["b"].size))
    e = None if _is_zero(t_p["U"]) else _times_tangent(cell.hidden(prev), t_p["U"])
    t_rest = {k: v for k, v in t_p.items() if k not in ("W", "b", "U") and not _is_zero(v)}
    vs = rule.inputs(cell, coefs, t_u, e, t_rest)

    # U^T materialised before the loop: the adjoint loop's product dz U^T is then a plain
    # row-major GEMM (XLA's CPU backend re-lays-out a transposed U on every step otherwise).
    u_t = jax.lax.optimization_barrier(params["U"].T)

    def body(t_carry, inp):
        c_t, v_t, m = inp
        q = jax.lax.dot_general(cell.hidden(t_carry), u_t, (((1,), (1,)), ((), ())))
        new = rule.tangent(cell, c_t, t_carry, v_t, q)
        if m is not None:
            new = _where(m[..., None], new, t_carry)
        return new, cell.hidden(new)

    t_final, t_hs = jax.lax.scan(body, _instantiate(t_carry0), (coefs, vs, mask), unroll=unroll)
    return (hs, final), (_masked(t_hs, mask), t_final)


_recurrence.defjvp(_recurrence_jvp, symbolic_zeros=True)


def project(cell, params, xs):
    """The per-gate input products ``x W_g`` for all steps (the loop adds ``b_g``).

    One product per gate: each gate's inputs are then a whole array the loop reads step by
    step, and no separate pass splits a [T, B, G*H] product.
    Shapes: ``xs: [..., I]`` -> G arrays ``[..., H]``.
    """
    return tuple(xs @ w_g for w_g in split(params["W"], type(cell).num_gates))


def recurrence(cell, params, carry, xs, *, mask=None, reverse=False, unroll=1):
    """Runs ``cell`` over time-major inputs ``xs`` (the runner's fused path).

        x_t W for all t, one product per gate, before the loop;  a_t = h_{t-1} U
        carry_t = cell.recur(carry_{t-1}, x_t W + b) if mask_t else carry_{t-1}
        hs_t = h_t if mask_t else 0          (reverse: positions from last to first)

    The same values as ``lax.scan`` over ``cell.step``; the JVP (and so BPTT) is the one in
    the module docstring.

    Shapes: ``xs: [T, *batch, I]``, ``carry`` leaves ``[*batch, H]``, ``mask: [T, *batch]``
    bools or None; returns ``(hs: [T, *batch, H], final carry)``.
    """
    if not supported(cell, params):
        raise ValueError(f"the fused path does not support cell {cell!r}; use method='scan'")
    num_steps, batch_shape = xs.shape[0], tuple(xs.shape[1:-1])
    carry0 = jax.tree.map(lambda c: c.reshape(-1, c.shape[-1]), carry)
    rows = int(np.prod(batch_shape, dtype=np.int64))  # explicit: T may be 0
    xs2 = xs.reshape(num_steps, rows, xs.shape[-1])
    m2 = None if mask is None else mask.reshape(num_steps, rows)
    if reverse:
        xs2 = jnp.flip(xs2, 0)
        m2 = None if m2 is None else jnp.flip(m2, 0)
    hs, final = _recurrence(cell, unroll, params, carry0, xs2, m2)
    if reverse:
        hs = jnp.flip(hs, 0)
    hs = hs.reshape((num_steps, *batch_shape, hs.shape[-1]))
    final = jax.tree.map(lambda c: c.reshape((*batch_shape, c.shape[-1])), final)
    return hs, final
