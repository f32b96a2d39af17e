"""Products of the recurrence's step Jacobians: dense, top singular values, Lyapunov exponents.

The state is the cell's whole carry c (``h`` for Elman and GRU, ``(h, c)`` for the LSTM),
flattened to a vector of D entries (D = H, or 2H for the LSTM). Step t (0-based) reads x_t:

    c_t = F_t(c_{t-1}) = cell.recur(params, c_{t-1}, x_t W + b),    c_{-1} = the initial carry
    J_t = dF_t/dc evaluated at c_{t-1}                               [D, D]
    J(s, n) = J_{s+n-1} ... J_{s+1} J_s                              maps dc_{s-1} to dc_{s+n-1}

For the Elman cell J_t = diag(f'(.)) U^T, so ||J(s, n)|| <= (max|f'| sigma_max(U))^n: the
vanishing/exploding-gradient argument of Pascanu, Mikolov, Bengio (2013).

Products are never materialised (except by :func:`jacobian_product`, for small D): vectors are
pushed through the steps with jvps (J v) or vjps (J^T v), re-orthonormalised by a QR after every
step, and the logs of |diag R| accumulate the growth, so nothing overflows however long the
horizon. That is power (subspace) iteration on J^T J for the top singular values, and the
Benettin et al. (1980) algorithm for Lyapunov exponents.

Inputs are single sequences or batches: ``xs: [*batch, T, I]``; every sequence gets its own
trajectory (run by :func:`rnn_jax.rnn.rnn`) and its own answer. Masks are not supported: every
step is real. ``start`` and ``horizon`` may be traced (e.g. ``vmap``-ed over lags), because
steps outside the window are applied as identities over all T steps.
"""

from __future__ import annotations

import functools
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from rnn_jax.rnn import rnn


# -- validation ------------------------------------------------------------------------------
def _check_cell(cell):
    if getattr(cell, "stochastic", False):
        raise ValueError(
            f"{type(cell).__name__} carries random masks besides the state; the Jacobian "
            "diagnostics measure a deterministic recurrence: pass its inner cell (.cell)")


def _check_xs(xs):
    if not hasattr(xs, "shape") or not hasattr(xs, "dtype"):
        raise TypeError(f"xs must be an array [*batch, T, I], got {type(xs).__name__}")
    if xs.ndim < 2:
        raise ValueError(f"xs must have rank >= 2 ([*batch, T, I]), got shape {np.shape(xs)}")
    if xs.shape[-2] < 1:
        raise ValueError(f"xs must have at least one time step, got shape {np.shape(xs)}")


def _positive_int(name, value):
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if n < 1:
        raise ValueError(f"{name} must be a positive int, got {n}")
    return n


def _window(start, horizon, num_steps):
    """Checks a concrete window against T; returns (start, horizon) with the default horizon."""
    if horizon is None:
        if not isinstance(start, int | np.integer):
            raise ValueError("horizon must be given when start is an array")
        horizon = num_steps - int(start)
    for name, v in (("start", start), ("horizon", horizon)):
        if isinstance(v, int | np.integer) and not isinstance(v, bool):
            if name == "start" and not 0 <= v < num_steps:
                raise ValueError(f"start must lie in [0, T={num_steps}), got {v}")
            if name == "horizon" and v < 1:
                raise ValueError(f"horizon must be >= 1, got {v}")
    if isinstance(start, int | np.integer) and isinstance(horizon, int | np.integer):
        if start + horizon > num_steps:
            raise ValueError(
                f"start + horizon must be <= T={num_steps}, got {start} + {horizon}"
            )
    return start, horizon


# -- one sequence ------------------------------------------------------------------------------
def _trajectory(cell, params, xs, carry):
    """Step function on flat states, the states before each step [T, D], the inputs u [T, G*H]."""
    if carry is None:
        carry = cell.initial_carry(())
    _, _, carries = rnn(cell, params, xs, carry, return_carries=True)
    flat0, unravel = ravel_pytree(carry)
    flats = jax.vmap(lambda c: ravel_pytree(c)[0])(carries)
    prev = jnp.concatenate([flat0[None, :], flats[:-1]], axis=0)
    us = cell.project(params, xs)
    prepare = getattr(cell, "prepare", None)
    params = params if prepare is None else prepare(params)  # e.g. expm(A) once, not per step

    def step(state, u):
        new, _ = cell.recur(params, unravel(state), u)
        return ravel_pytree(new)[0]

    return step, prev, us


def _push(step, prev, us, active, vs, transpose):
    """Pushes the orthonormal columns of vs [D, k] through J (or J^T) with a QR after each step.

    Returns (Q [D, k], sum over active steps of log|diag R| [k]).
    """

    def body(state, inp):
        v, logs = state
        s, u, a = inp
        f = lambda z: step(z, u)  # noqa: E731
        if transpose:
            _, pull = jax.vjp(f, s)
            w = jax.vmap(lambda c: pull(c)[0], in_axes=1, out_axes=1)(v)
        else:
            w = jax.vmap(lambda c: jax.jvp(f, (s,), (c,))[1], in_axes=1, out_axes=1)(v)
        q, r = jnp.linalg.qr(w)
        q = jnp.where(a, q, v)
        logs = logs + jnp.where(a, jnp.log(jnp.abs(jnp.diagonal(r))), 0.0)
        return (q, logs), None

    init = (vs, jnp.zeros((vs.shape[1],), vs.dtype))
    (q, logs), _ = jax.lax.scan(body, init, (prev, us, active), reverse=transpose)
    return q, logs


def _active(num_steps, start, horizon):
    t = jnp.arange(num_steps)
    return (t >= start) & (t < start + horizon)


def _random_basis(key, dim, k):
    q, _ = jnp.linalg.qr(jax.random.normal(key, (dim, k), jnp.float32))
    return q


def _dense_one(cell, params, xs, carry, start, horizon):
    step, prev, us = _trajectory(cell, params, xs, carry)
    active = _active(xs.shape[0], start, horizon)
    dim = prev.shape[1]

    def body(m, inp):
        s, u, a = inp
        f = lambda z: step(z, u)  # noqa: E731
        w = jax.vmap(lambda c: jax.jvp(f, (s,), (c,))[1], in_axes=1, out_axes=1)(m)
        return jnp.where(a, w, m), None

    m, _ = jax.lax.scan(body, jnp.eye(dim, dtype=prev.dtype), (prev, us, active))
    return m


def _top_log_sv_one(key, cell, params, xs, carry, start, horizon, k, num_iters):
    step, prev, us = _trajectory(cell, params, xs, carry)
    active = _active(xs.shape[0], start, horizon)
    v0 = _random_basis(key, prev.shape[1], k)

    def iterate(state, _):
        q, logs = _push(step, prev, us, active, state[0], transpose=False)
        v, _ = _push(step, prev, us, active, q, transpose=True)
        return (v, logs), None

    # the growth of the last forward pass (from the basis of num_iters - 1 iterations) is the
    # estimate; reusing it saves tracing a third product
    init = (v0, jnp.zeros((k,), v0.dtype))
    (_, logs), _ = jax.lax.scan(iterate, init, None, length=num_iters)
    return jnp.sort(logs)[::-1]


def _lyapunov_one(key, cell, params, xs, carry, start, horizon, k, random):
    step, prev, us = _trajectory(cell, params, xs, carry)
    active = _active(xs.shape[0], start, horizon)
    dim = prev.shape[1]
    v0 = _random_basis(key, dim, k) if random else jnp.eye(dim, k, dtype=prev.dtype)
    _, logs = _push(step, prev, us, active, v0, transpose=False)
    return jnp.sort(logs)[::-1] / horizon


# -- batches -------------------------------------------------------------------------------------
def _over_sequences(fn, key, xs, carry):
    """Applies fn(key, xs [T, I], carry) to every sequence of xs [*batch, T, I]."""
    batch_shape = tuple(xs.shape[:-2])
    n = math.prod(batch_shape)
    xs_n = xs.reshape((n, *xs.shape[-2:]))
    carry_n = jax.tree.map(lambda c: c.reshape((n, *c.shape[len(batch_shape):])), carry)
    keys = jax.random.split(key, n)
    out = jax.vmap(fn)(keys, xs_n, carry_n)
    return out.reshape((*batch_shape, *out.shape[1:]))


# one compiled function per (cell, quantity, k, ...): repeated calls hit jit's cache
@functools.partial(jax.jit, static_argnames=("cell", "what", "k", "num_iters", "random"))
def _run(key, params, xs, carry, start, horizon, *, cell, what, k=0, num_iters=0,
         random=False):
    def one(key_, x, c):
        if what == "dense":
            return _dense_one(cell, params, x, c, start, horizon)
        if what == "singular":
            return _top_log_sv_one(key_, cell, params, x, c, start, horizon, k, num_iters)
        return _lyapunov_one(key_, cell, params, x, c, start, horizon, k, random)

    return _over_sequences(one, key, xs, carry)


def _state_size(cell):
    return sum(x.size for x in jax.tree.leaves(jax.eval_shape(lambda: cell.initial_carry(()))))


# -- public ---------------------------------------------------------------------------------------
def jacobian_product(cell, params, xs, carry=None, *, start=0, horizon=None):
    """The dense product J(start, horizon) = J_{start+horizon-1} ... J_start, for small D.

        J_t = d c_t / d c_{t-1}   (column convention: dc_t = J_t dc_{t-1})

    Shapes: xs [*batch, T, I], carry leaves [*batch, ...] or None (zeros) -> [*batch, D, D].
    """
    _check_cell(cell)
    _check_xs(xs)
    start, horizon = _window(start, horizon, xs.shape[-2])
    return _run(jax.random.key(0), params, xs, carry, start, horizon, cell=cell, what="dense")


def top_log_singular_values(key, cell, params, xs, carry=None, *, start=0, horizon=None,
                            k=1, num_iters=20):
    """log sigma_1 >= ... >= log sigma_k of J(start, horizon), by power iteration on J^T J.

        V <- orth(J^T orth(J V))   (num_iters times; a QR after every step of each product)
        log sigma_i ~ sum_t log|diag R_t|_i  of the last pass of V through J

    The estimate converges like (sigma_{k+1}/sigma_k)^(2 num_iters); over long horizons the
    singular values of a product separate exponentially, so a few iterations suffice. Logs, so
    that sigma ~ 1e40 or 1e-40 stays representable in float32.

    Shapes: xs [*batch, T, I] -> [*batch, k].
    """
    _check_cell(cell)
    _check_xs(xs)
    start, horizon = _window(start, horizon, xs.shape[-2])
    k = _positive_int("k", k)
    num_iters = _positive_int("num_iters", num_iters)
    if k > _state_size(cell):
        raise ValueError(f"k must be <= the state size D={_state_size(cell)}, got {k}")

    return _run(key, params, xs, carry, start, horizon, cell=cell, what="singular", k=k,
                num_iters=num_iters)


def top_singular_values(key, cell, params, xs, carry=None, *, start=0, horizon=None, k=1,
                        num_iters=20):
    """sigma_1 >= ... >= sigma_k of J(start, horizon): exp of :func:`top_log_singular_values`.

    Shapes: xs [*batch, T, I] -> [*batch, k] (inf/0 where float32 over/underflows).
    """
    return jnp.exp(top_log_singular_values(key, cell, params, xs, carry, start=start,
                                           horizon=horizon, k=k, num_iters=num_iters))


def lyapunov_exponents(cell, params, xs, carry=None, *, start=0, horizon=None, k=None,
                       key=None):
    """Finite-time Lyapunov exponents of the driven recurrence over the window, per step.

        V_0 orthonormal [D, k];   Q_t R_t = J_t V_{t-1},  V_t = Q_t
        lambda_i = (1 / horizon) sum_t log|R_t[i, i]|      (Benettin et al. 1980), sorted desc.

    V_0 is the first k columns of the identity, or a random orthonormal basis when ``key`` is
    given (k < D on a structured U may need it). Finite-time exponents depend on V_0 by O(1/n);
    with V_0 = I and diagonal U on a linear cell, lambda = sorted log|U_ii| exactly.
    k defaults to D (all of them).

    Shapes: xs [*batch, T, I] -> [*batch, k].
    """
    _check_cell(cell)
    _check_xs(xs)
    start, horizon = _window(start, horizon, xs.shape[-2])
    d = _state_size(cell)
    k = d if k is None else _positive_int("k", k)
    if k > d:
        raise ValueError(f"k must be <= the state size D={d}, got {k}")

    return _run(jax.random.key(0) if key is None else key, params, xs, carry, start, horizon,
                cell=cell, what="lyapunov", k=k, random=key is not None)
