"""The plain time loop: ``lax.scan`` over a cell's ``recur``, differentiated by JAX itself.

    u_t = x_t W + b                        (all t at once, before the loop: hoisted)
    carry_t, h_t = cell.recur(carry_{t-1}, u_t) if mask_t else (carry_{t-1}, 0)
    h_t <- h_t + probe_t                   (if probes; also in carry_t)

Every cell and every runner option runs here; the other loops are faster paths for some of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def recurrence(cell, params, carry, xs_tm, *, mask=None, probes=None, reverse=False, unroll=1,
               return_carries=False):
    """Runs ``cell`` over time-major inputs; the runner has validated every argument.

    Shapes: xs_tm: [T, *batch, I]; mask: [T, *batch] or None; probes: [T, *batch, H] or None
    -> (hs: [T, *batch, H], final carry, carries: leaves [T, *batch, ...] or None).
    """
    us = cell.project(params, xs_tm)  # hoisted: [T, *batch, G*H] in one product
    prepare = getattr(cell, "prepare", None)
    if prepare is not None:  # parameters the steps derive, once per sequence (expRNN's expm(A))
        params = prepare(params)

    def body(c, inp):
        u, m_t, p_t = inp
        new_c, h = cell.recur(params, c, u)
        if p_t is not None:
            h = h + p_t
            new_c = cell.with_hidden(new_c, h)
        if m_t is not None:
            keep = m_t[..., None]
            new_c = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new_c, c)
            h = jnp.where(keep, h, jnp.zeros_like(h))
        return new_c, ((h, new_c) if return_carries else h)
    final, out = jax.lax.scan(body, carry, (us, mask, probes), reverse=reverse, unroll=unroll)
    hs, carries = out if return_carries else (out, None)
    return hs, final, carries
