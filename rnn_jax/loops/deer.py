"""Parallel-in-time evaluation of a nonlinear recurrence: DEER and quasi-DEER.

The trajectory of ``s_t = f(s_{t-1}, u_t)`` (t = 1..T) is the root of the residual
``r_t(s) = s_t - f(s_{t-1}, u_t)``. Newton's method linearises f at the current guess s^k:

    s_t^{k+1} = J_t s_{t-1}^{k+1} + c_t,   J_t = df/ds (s_{t-1}^k, u_t),
                                            c_t = f(s_{t-1}^k, u_t) - J_t s_{t-1}^k

a linear recurrence, solved for every t at once by ``jax.lax.associative_scan`` over the pairs
(J_t, c_t) with (A2, b2) o (A1, b1) = (A2 A1, A2 b1 + b2): depth O(log T). That is DEER (Lim
et al., ICLR 2024, "Parallelizing non-linear sequential models over the sequence length").
quasi-DEER keeps only diag(J_t), so the scan is elementwise (Gonzalez et al., NeurIPS 2024,
"Towards scalable and stable parallelization of nonlinear RNNs"). In exact arithmetic both
reach the exact trajectory in at most T iterations (step t is exact after iteration t); they
stop when max_t |s^{k+1}_t - s^k_t| <= tol or after ``max_iter`` iterations.

Derivatives follow the implicit-function theorem at the solution, not the Newton loop: a
tangent (dtheta, du, ds_0) of the parameters, inputs and initial state moves the solution by

    ds_t = J_t ds_{t-1} + (df/dtheta dtheta + df/du du_t)(s_{t-1}, u_t)

one more linear recurrence (the same associative scan, with exact full Jacobians also for
quasi-DEER). It is a ``jax.custom_jvp``: linear in the tangents, so reverse mode transposes it
into the adjoint lambda_t = g_t + J_{t+1}^T lambda_{t+1} (BPTT), and the rule calls the solver
itself for the primal, so ``jax.jvp``, ``jax.grad``, ``jax.jacfwd`` and ``jax.hessian`` all
work, every order by the same rule.

Precision: the iterations (and their derivative) run at "highest" matmul precision whatever
the caller's default. A Newton solve to a float32 tolerance cannot converge through TF32
products (~1e-3 relative rounding): on the H200, at the default precision, DEER and quasi-DEER
stalled at ~3e-4 for all 200 iterations at every T (and fell back), where the CPU (float32
products) converges in 6. The input projection keeps the caller's precision.

The carry pytree is flattened to one vector s in R^D (D = H; 2H for the LSTM's (h, c)). On a
masked step f is the identity (J = I): the masking rule of ``rj.rnn``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from rnn_jax.cells.base import ACTIVATIONS
from rnn_jax.cells.elman import Elman
from rnn_jax.cells.linear import matvec, solve_linear
from rnn_jax.cells.validation import (
    check_bool,
    check_carry,
    check_cell,
    check_params,
    check_xs,
    mask_from,
    zero_padding,
)


# -- the flattened step ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Solver:
    cell: object
    quasi: bool
    tol: float
    max_iter: int
    fallback: bool

    def unravel(self, s):
        return ravel_pytree(self.cell.initial_carry((), s.dtype))[1](s)

    def f(self, params, s, u, m):
        """One masked step on the flat state: s' = f(s, u) if m else s.  s: [D], u: [G*H]."""
        new, _ = self.cell.recur(params, self.unravel(s), u)
        return jnp.where(m, ravel_pytree(new)[0], s)

    def f_and_jac(self, params, s, u, m, diagonal):
        """(f(s, u), df/ds): the Jacobian [D, D], or its diagonal [D] if ``diagonal``."""
        cell = self.cell
        if type(cell) is Elman:  # closed form J = diag(act'(z)) U^T: no D tangents needed
            z = u + cell._mm(s, params["U"])
            y, d = jax.jvp(ACTIVATIONS[cell.activation], (z,), (jnp.ones_like(z),))
            u_mat = params["U"].astype(d.dtype)
            jac = d * jnp.diagonal(u_mat) if diagonal else d[:, None] * u_mat.T
        else:
            jac, y = jax.jacfwd(lambda v: (self.f(params, v, u, True),) * 2, has_aux=True)(s)
            jac = jnp.diagonal(jac) if diagonal else jac
        eye = jnp.ones_like(s) if diagonal else jnp.eye(s.shape[0], dtype=jac.dtype)
        return jnp.where(m, y, s), jnp.where(m, jac, eye)

    # -- one sequence: s0: [D], us: [T, G*H], m: [T] ---------------------------------------
    def newton(self, params, s0, us, m):
        """Newton (or quasi-Newton) iterations from s^0 = 0 -> (states, iterations, delta)."""
        lin = jax.vmap(functools.partial(self.f_and_jac, params, diagonal=self.quasi))

        def body(val):
            states, k, _ = val
            prev = jnp.concatenate([s0[None], states[:-1]], axis=0)
            fs, jac = lin(prev, us, m)
            new = solve_linear(jac, fs - matvec(jac, prev, self.quasi), s0, diagonal=self.quasi)
            return new, k + 1, jnp.max(jnp.abs(new - states))

        def cond(val):  # a NaN delta compares False: the loop stops, unconverged
            return (val[1] < self.max_iter) & (val[2] > self.tol)

        init = (jnp.zeros((us.shape[0], s0.shape[0]), s0.dtype), jnp.int32(0),
                jnp.array(jnp.inf, s0.dtype))
        return jax.lax.while_loop(cond, body, init)

    def sequential(self, params, s0, us, m):
        """The sequential scan: the same masked update as ``rj.rnn``, on the flat state."""
        step = lambda s, um: (self.f(params, s, *um),) * 2  # noqa: E731
        return jax.lax.scan(step, s0, (us, m))[1]

    def residual(self, params, s0, us, m, states):
        prev = jnp.concatenate([s0[None], states[:-1]], axis=0)
        fs = jax.vmap(functools.partial(self.f, params))(prev, us, m)
        return jnp.max(jnp.abs(states - fs))


# -- the batch, with the implicit-function derivative ----------------------------------------
@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _solve(solver, params, s0, us, m):
    """Batched solve: s0: [B, D], us: [B, T, G*H], m: [B, T] -> (states [B, T, D], info...)."""
    over_b = functools.partial(jax.vmap, in_axes=(None, 0, 0, 0))
    states, iters, delta = over_b(solver.newton)(params, s0, us, m)
    conv = delta <= solver.tol
    residual = jax.vmap(solver.residual, (None, 0, 0, 0, 0))(params, s0, us, m, states)
    fell_back = jnp.zeros_like(conv)
    if solver.fallback:
        fell_back = ~conv

        def mixed():  # only runs when some sequence of the batch did not converge
            seq = over_b(solver.sequential)(params, s0, us, m)
            return jnp.where(conv[:, None, None], states, seq)

        states = jax.lax.cond(jnp.all(conv), lambda: states, mixed)
    return states, iters, conv, residual, fell_back


def _no_tangent(x):
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)


@_solve.defjvp
def _solve_jvp(solver, primals, tangents):
    """ds_t = J_t ds_{t-1} + df(dtheta, du_t) at the solution (module doc), per sequence."""
    params, s0, us, m = primals
    t_params, t_s0, t_us, _ = tangents
    out = _solve(solver, params, s0, us, m)  # the rule again at the next order
    states = out[0]
    prev = jnp.concatenate([s0[:, None], states[:, :-1]], axis=1)
    step = jax.vmap(jax.vmap(solver.f, (None, 0, 0, 0)), (None, 0, 0, 0))
    _, rhs = jax.jvp(lambda p, u: step(p, prev, u, m), (params, us), (t_params, t_us))
    jac_fn = functools.partial(solver.f_and_jac, params, diagonal=False)
    _, jac = jax.vmap(jax.vmap(jac_fn))(prev, us, m)  # [B, T, D, D]
    t_states = jax.vmap(solve_linear)(jac, rhs, t_s0)
    return out, (t_states, *(_no_tangent(x) for x in out[1:]))


# -- the public runner -----------------------------------------------------------------------------
def default_tol(quasi: bool, dtype) -> float:
    """The stopping tolerance used when ``tol=None``.

    Newton (DEER) converges quadratically, so the error at exit is ~tol^2 and tol = 1e-5 is
    enough in float32; quasi-DEER converges linearly (error ~ tol r / (1 - r) at rate r), so it
    gets 1e-6. float32 rounding leaves a floor of ~5e-7..1e-6 under the update at T = 65536,
    H = 32: a smaller float32 tol may never be met. float64 gets 1e-10 / 1e-12.
    """
    if jnp.dtype(dtype) == jnp.float64:
        return 1e-12 if quasi else 1e-10
    return 1e-6 if quasi else 1e-5


def _check_options(tol, max_iter):
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not tol > 0:
        raise ValueError(f"tol must be a positive float, got {tol!r}")
    if isinstance(max_iter, bool):
        raise TypeError(f"max_iter must be a positive int, got {max_iter!r}")
    try:
        n = operator.index(max_iter)
    except TypeError:
        raise TypeError(f"max_iter must be a positive int, got {max_iter!r}") from None
    if n < 1:
        raise ValueError(f"max_iter must be a positive int, got {n}")
    return float(tol), n


def deer_rnn(cell, params, xs, carry=None, *, lengths=None, mask=None, reverse=False,
             time_major=False, quasi=False, tol=None, max_iter=200, fallback=True,
             return_info=False):
    """``rj.rnn`` evaluated by DEER Newton iterations (quasi-DEER with ``quasi=True``).

        s^{k+1}_t = J_t s^{k+1}_{t-1} + f(s^k_{t-1}, u_t) - J_t s^k_{t-1}   (one associative scan)

    Same arguments, masking rule, ``reverse`` alignment and results as :func:`rnn_jax.rnn`
    (without ``unroll``/``probes``). Works for any cell whose ``recur`` is differentiable; the
    carry pytree is flattened (the LSTM's (h, c) becomes one 2H vector). Leading batch axes are
    vmapped; every sequence iterates until it converges.

    Args:
      quasi: keep only diag(J_t) (quasi-DEER, Gonzalez et al. 2024): O(T D) per iteration.
      tol: stop when max_t |s^{k+1}_t - s^k_t| <= tol (absolute, per sequence); None picks
        :func:`default_tol` (1e-5 DEER, 1e-6 quasi-DEER in float32).
      max_iter: iteration cap.
      fallback: a sequence that has not converged after ``max_iter`` gets the sequential
        result instead (``lax.cond``: the sequential scan runs only when one is needed).
      return_info: also return ``{"iterations", "converged", "residual", "fell_back"}``, each
        ``[*batch]``; residual = max_t |s_t - f(s_{t-1}, u_t)| of the Newton trajectory.

    Derivatives: the implicit-function rule at the returned trajectory, see module doc;
    forward and reverse mode, any order (``jax.custom_jvp``).

    Shapes: xs: [*batch, T, I] ([T, *batch, I] if ``time_major``)  ->  hs: [*batch, T, H].
    """
    reverse, time_major = check_bool("reverse", reverse), check_bool("time_major", time_major)
    quasi, fallback = check_bool("quasi", quasi), check_bool("fallback", fallback)
    return_info = check_bool("return_info", return_info)
    check_cell(cell)
    check_xs(cell, params, xs, time_major)
    check_params(cell, params, xs.shape[-1])
    carry_dtype = jnp.result_type(jnp.float32, xs.dtype, *jax.tree.leaves(params))  # as rj.rnn
    tol, max_iter = _check_options(default_tol(quasi, carry_dtype) if tol is None else tol,
                                   max_iter)
    xs_tm = xs if time_major else jnp.moveaxis(xs, -2, 0)
    num_steps, batch_shape = xs_tm.shape[0], tuple(xs_tm.shape[1:-1])
    m = mask_from(lengths, mask, batch_shape, num_steps)
    if m is not None:  # inert padding, as in rj.rnn
        xs_tm = zero_padding(xs_tm, jnp.moveaxis(m, -1, 0))
    if carry is None:
        carry = cell.initial_carry(batch_shape, carry_dtype)
    else:
        check_carry(cell, carry, batch_shape, carry_dtype)
        carry = jax.tree.map(lambda c: jnp.asarray(c, carry_dtype), carry)
    n = math.prod(batch_shape)
    if num_steps == 0 or n == 0:  # nothing to solve: zero outputs, the carry unchanged
        hs = jnp.zeros((*xs.shape[:-1], cell.hidden_size), carry_dtype)
        info = {"iterations": jnp.zeros(batch_shape, jnp.int32),
                "converged": jnp.ones(batch_shape, bool),
                "residual": jnp.zeros(batch_shape), "fell_back": jnp.zeros(batch_shape, bool)}
        return (hs, carry, info) if return_info else (hs, carry)

    us = cell.project(params, xs_tm)
    us = jnp.swapaxes(us.reshape(num_steps, n, us.shape[-1]), 0, 1)  # [B, T, G*H]
    m_bt = (jnp.ones((n, num_steps), bool) if m is None else m.reshape(n, num_steps))
    flat = jax.tree.map(lambda c: c.reshape(n, *c.shape[len(batch_shape):]), carry)
    s0 = jax.vmap(lambda c: ravel_pytree(c)[0])(flat)
    us = us.astype(carry_dtype)
    if reverse:
        us, m_bt = us[:, ::-1], m_bt[:, ::-1]

    solver = _Solver(cell, bool(quasi), tol, max_iter, bool(fallback))
    with jax.default_matmul_precision("highest"):  # see "Precision" in the module docstring
        states, iters, conv, residual, fell_back = _solve(solver, params, s0, us, m_bt)

    carries = jax.vmap(jax.vmap(solver.unravel))(states)
    hs = jax.vmap(jax.vmap(cell.hidden))(carries)
    hs = jnp.where(m_bt[..., None], hs, jnp.zeros_like(hs))  # [B, T, H]
    if reverse:
        hs = hs[:, ::-1]
    hs = hs.reshape(*batch_shape, num_steps, hs.shape[-1])
    if time_major:
        hs = jnp.moveaxis(hs, -2, 0)
    final = jax.tree.map(lambda c: c[:, -1].reshape(*batch_shape, *c.shape[2:]), carries)
    if not return_info:
        return hs, final
    info = {"iterations": iters, "converged": conv, "residual": residual,
            "fell_back": fell_back}
    return hs, final, {k: v.reshape(batch_shape) for k, v in info.items()}
