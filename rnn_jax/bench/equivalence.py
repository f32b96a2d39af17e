"""Every time loop against the plain scan: outputs, final carries and gradients, one check each.

One ``Check`` is a cell, a method of ``rj.rnn``, a matmul precision and an option (``plain``;
``lengths``: ragged lengths including 0, 1 and T; ``reverse``: the same lengths read backwards;
``bidirectional``: ``rj.bidirectional`` with those lengths, each direction its own params and
initial carry, merged by sum).
Its train-like function returns, for random cotangents ``r, s``,

    L = sum(r * hs) + sum(s * h_T),   hs, carry_T = rj.rnn(cell, params, xs, ...)

with ``hs``, the final carry and ``dL/d(params, xs, carry_0)``; the method's values are
compared with ``method="scan"`` at ``"highest"`` precision (the truth) by the relative error
``max|got - want| / max|want|`` per array, against ``harness.tolerance`` for the precision.
A method that raises is recorded with its error; nothing stops the others.

Shapes: B, T, I = H (``size``); any cell of ``rnn_jax.bench.harness.CELLS``.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

import rnn_jax as rj
from rnn_jax.bench import harness

METHODS = ("auto", "fused", "pallas", "cudnn", "deer", "quasi_deer")
OPTIONS = ("plain", "lengths", "reverse", "bidirectional")


@dataclasses.dataclass(frozen=True)
class Check:
    """One comparison with the scan path."""

    cell: str
    method: str
    precision: str = "highest"
    option: str = "plain"
    B: int = 8
    T: int = 32
    H: int = 64


def _inputs(check: Check, seed: int = 0):
    cell = harness.Problem(check.cell, "train", check.B, check.T, check.H).rj_cell
    keys = jax.random.split(jax.random.key(seed), 5)
    params = cell.init(keys[0], check.H)
    xs = jax.random.normal(keys[1], (check.B, check.T, check.H), jnp.float32)
    carry = jax.tree.map(lambda c: 0.5 * jax.random.normal(keys[2], c.shape, c.dtype),
                         cell.initial_carry((check.B,)))
    r = jax.random.normal(keys[3], (check.B, check.T, check.H), jnp.float32)
    s = jax.random.normal(keys[4], (check.B, check.H), jnp.float32)
    rng = np.random.default_rng(seed)
    lengths = np.concatenate([[check.T, 0, 1], rng.integers(1, check.T + 1, check.B)])
    lengths = jnp.asarray(lengths[:check.B], jnp.int32)
    if check.option == "bidirectional":  # the backward direction: params and carry of its own
        k_p, k_c = jax.random.split(jax.random.fold_in(keys[0], 1))
        params = {"fwd": params, "bwd": cell.init(k_p, check.H)}
        carry = (carry, jax.tree.map(lambda c: 0.5 * jax.random.normal(k_c, c.shape, c.dtype),
                                     cell.initial_carry((check.B,))))
    return cell, params, xs, carry, r, s, lengths


@functools.partial(jax.jit, static_argnames=("cell", "method", "option", "precision"))
def _values(cell, params, xs, carry, r, s, lengths, *, method, option, precision):
    def loss(p, x, c):
        if option == "bidirectional":
            hs, final = rj.bidirectional(cell, cell, p, x, c, lengths=lengths, merge="sum",
                                         method=method)
            last = sum(jnp.sum(s * cell.hidden(f)) for f in final)
            return jnp.sum(r * hs) + last, (hs, final)
        kw = {} if option == "plain" else {"lengths": lengths, "reverse": option == "reverse"}
        hs, final = rj.rnn(cell, p, x, c, method=method, **kw)
        return jnp.sum(r * hs) + jnp.sum(s * cell.hidden(final)), (hs, final)

    with jax.default_matmul_precision(precision):
        (_, (hs, final)), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(
            params, xs, carry)
    return {"hs": hs, "carry": final, "d_params": grads[0], "d_xs": grads[1],
            "d_carry": grads[2]}


def values(check: Check, method: str | None = None, precision: str | None = None) -> dict:
    """The check's arrays (NumPy) for ``method`` (default: the check's) at ``precision``."""
    cell, *args = _inputs(check)
    out = _values(cell, *args, method=method or check.method, option=check.option,
                  precision=precision or check.precision)
    return jax.tree.map(np.asarray, out)


def errors(got: dict, want: dict) -> dict:
    """Relative error per part (``hs``, ``carry``, ``d_params``, ``d_xs``, ``d_carry``)."""
    out = {}
    for part, ref in want.items():
        flat_ref = {str(i): a for i, a in enumerate(jax.tree.leaves(ref))}
        flat_got = {str(i): a for i, a in enumerate(jax.tree.leaves(got.get(part)))}
        out[part] = harness.relative_error(flat_got, flat_ref)
    return out


def run(check: Check, reference: dict | None = None) -> dict:
    """One record: the check, its status (``ok``, ``mismatch``, ``error``), errors, seconds.

    ``reference`` (scan at highest precision for this cell, option and size) is computed when
    not given; pass it to share it between methods.
    """
    record = dataclasses.asdict(check)
    start = time.perf_counter()
    try:
        want = reference if reference is not None else values(check, "scan", "highest")
        got = values(check)
    except Exception as err:  # noqa: BLE001 - recorded; the other checks go on
        return {**record, "status": "error", "error": harness.error_text(err),
                "seconds": time.perf_counter() - start}
    errs = errors(got, want)
    limit = harness.tolerance(check.precision, jax.default_backend())
    worst = max(errs.values())
    return {**record, "status": "ok" if worst <= limit else "mismatch", "max_rel_err": worst,
            "errors": errs, "tolerance": limit, "seconds": time.perf_counter() - start}
