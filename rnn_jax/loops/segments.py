"""BPTT in O(√T) memory: segment checkpointing over the fused or the plain time loop.

Chen, Xu, Zhang, Guestrin (2016), "Training deep nets with sublinear memory cost": split the
T steps into segments of k steps, keep only the carry at the start of each segment in the
forward pass, and recompute one segment at a time in the backward pass:

    c_0 -> [steps 1..k] -> c_k -> [steps k+1..2k] -> c_2k -> ... -> c_T     (forward: keep c_jk)
    backward, segment j from last to first:  re-run steps jk+1..(j+1)k from c_jk, keeping
    their residuals (input projection included), then backpropagate through them

Memory: ceil(T/k) carries plus one segment's residuals (k steps), so with the default
k ≈ √T it grows like √T instead of T (outputs and inputs aside). Cost: every step runs
forward twice: about one extra forward pass.

Each segment runs the inner loop it is given: the fused JVP loop (``rnn_jax.loops.fused``)
where it applies, else the plain scan (``rnn_jax.loops.scan``). The outer loop is a
``lax.scan`` over the ``T // k`` whole segments whose body is ``jax.checkpoint``-ed; the
``T mod k`` remaining steps form one shorter, separately checkpointed segment (no padding,
so no extra masking). Results equal the unsegmented loop's up to round-off.

Shapes: xs_tm: [T, *batch, I]; mask: [T, *batch] or None; probes: [T, *batch, H] or None
-> (hs: [T, *batch, H], final carry, carries: leaves [T, *batch, ...] or None).
"""

from __future__ import annotations

import math
import operator

import jax
import jax.numpy as jnp

from rnn_jax.loops import fused, scan


def check_remat(remat):
    """Validates ``remat``: False/None (off), True or "segments" (k ≈ √T), or an int k >= 1.

    Returns None (off), "segments", or the segment length k as an int.
    """
    if remat is False or remat is None:
        return None
    if remat is True or (isinstance(remat, str) and remat == "segments"):
        return "segments"
    if not isinstance(remat, str):
        try:
            k = operator.index(remat)
        except TypeError:
            k = None
        if k is not None and k >= 1:
            return k
    raise ValueError(f"remat={remat!r} is not supported; expected False (no recomputation), "
                     "True or 'segments' (segments of ceil(sqrt(T)) steps), or a segment "
                     "length k >= 1 (an int)")


def segment_length(remat, num_steps: int) -> int:
    """k for a checked ``remat`` value: about √T for "segments", else the int (at most T).

    "segments" takes the smallest divisor of T in [√T, 2√T] when there is one, so the
    segments tile the sequence exactly (T/k + k <= 2.5√T carries and steps), else ceil(√T)
    with a shorter last segment, whose split costs a copy of the inputs and of the outputs'
    cotangents (O(T), though in the inputs' and outputs' size only).
    """
    if remat != "segments":
        return max(1, min(int(remat), num_steps))
    root = math.isqrt(num_steps - 1) + 1 if num_steps > 0 else 1  # ceil(√T)
    return next((k for k in range(root, 2 * root + 1) if num_steps % k == 0), root)


def _inner(path, cell, params, reverse, unroll, return_carries):
    """One segment's loop: ``(carry, (xs, mask, probes)) -> (final, (hs, carries))``."""

    def run(carry, inputs):
        xs, mask, probes = inputs
        if path == "fused":
            hs, final = fused.recurrence(cell, params, carry, xs, mask=mask, reverse=reverse,
                                         unroll=unroll)
            return final, (hs, None)
        hs, final, carries = scan.recurrence(cell, params, carry, xs, mask=mask, probes=probes,
                                             reverse=reverse, unroll=unroll,
                                             return_carries=return_carries)
        return final, (hs, carries)

    return run


def recurrence(path, cell, params, carry, xs_tm, *, mask=None, probes=None, reverse=False,
               unroll=1, return_carries=False, remat="segments"):
    """Runs ``cell`` over time-major inputs in checkpointed segments (see the module doc).

    ``path`` is the inner loop, "fused" or "scan"; ``remat`` a value ``check_remat`` returned
    ("segments" or k). The runner has validated every argument.
    """
    num_steps = xs_tm.shape[0]
    inner = _inner(path, cell, params, reverse, unroll, return_carries)
    inputs = (xs_tm, mask, probes)
    if num_steps == 0:
        final, (hs, carries) = inner(carry, inputs)
        return hs, final, carries
    k = segment_length(remat, num_steps)
    whole, rest = divmod(num_steps, k)  # whole >= 1: k <= T
    main = jax.tree.map(lambda a: a[:whole * k].reshape(whole, k, *a.shape[1:]), inputs)
    tail = jax.tree.map(lambda a: a[whole * k:], inputs)
    # prevent_cse=False in the scan, which already keeps XLA from merging the recomputation
    # with the forward pass; the tail, outside any loop, needs the default.
    body = jax.checkpoint(inner, prevent_cse=False)
    final = carry
    if rest and reverse:  # reverse: the last positions (the tail) come first
        final, tail_out = jax.checkpoint(inner)(final, tail)
    final, out = jax.lax.scan(body, final, main, reverse=reverse)
    out = jax.tree.map(lambda a: a.reshape(whole * k, *a.shape[2:]), out)
    if rest and not reverse:
        final, tail_out = jax.checkpoint(inner)(final, tail)
    if rest:
        out = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), out, tail_out)
    hs, carries = out
    return hs, final, carries
