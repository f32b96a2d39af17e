"""Gradient-behaviour measurements: BPTT adjoints, their decay, the recurrent spectrum, clipping.

The total derivative of a loss with respect to the hidden state after step t,

    g_t = dL/dh_t = dL/dh_t|_direct + g_{t+1} dh_{t+1}/dh_t          (BPTT's adjoint)

comes from ONE backward pass: the runner adds zero ``probes`` to every h_t, and ``jax.grad``
with respect to the probes is g_t for all t at once. For a loss on the last step only,
||g_{T-1-k}|| against the lag k shows vanishing (decay) or exploding (growth) gradients; for a
tanh Elman cell Pascanu, Mikolov, Bengio (2013) bound it by

    ||dL_T/dh_t|| <= sigma_max(U)^(T-t) ||dL_T/dh_T||                   (|tanh'| <= 1)

Every function returns plain arrays and works under ``jax.jit`` (cells and loss functions as
static arguments). Jacobian products, their singular values and Lyapunov exponents live in
:mod:`rnn_jax.diagnostics.jacobians`; the package exports both modules' functions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.cells import lead
from rnn_jax.rnn import rnn

__all__ = [
    "clipping_stats",
    "grad_norms",
    "gradient_horizon",
    "hidden_grads",
    "last_step_grad_norms",
    "log_slope",
    "pascanu_bound",
    "recurrent_sigma_max",
    "recurrent_spectral_radius",
    "safe_norm",
]


def _check_callable(name, fn):
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")


def _check_array(name, x, min_ndim=1):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have rank >= {min_ndim}, got shape {np.shape(x)}")


def safe_norm(x, axis: int = -1):
    """||x||_2 along ``axis`` without float32 over/underflow: m ||x / m||, m = max|x|.

    A plain sum of squares overflows once ||x|| passes ~1.8e19 in float32 and underflows below
    ~1e-19; exploding or vanishing adjoints get there within ~100 steps. Zero for x = 0, inf if
    an entry is infinite.

    Shapes: [*s, N, *r] -> [*s, *r] (``axis`` removed).
    """
    m = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
    ok = (m > 0) & jnp.isfinite(m)
    scaled = x / jnp.where(ok, m, 1.0)
    norm = jnp.squeeze(m, axis) * jnp.sqrt(jnp.sum(scaled * scaled, axis=axis))
    return jnp.where(jnp.squeeze(ok, axis), norm, jnp.squeeze(m, axis))


# -- adjoints from one backward pass ----------------------------------------------------------
def hidden_grads(cell, params, xs, loss_fn, carry=None, **rnn_kwargs):
    """g_t = dL/dh_t for every step, the total derivative through all later steps.

        L = loss_fn(hs),  hs = rnn(cell, params, xs, carry, probes=0, **rnn_kwargs)[0]
        g = dL/dprobes at probes = 0

    ``rnn_kwargs`` go to :func:`rnn_jax.rnn.rnn` (``lengths``, ``mask``, ``reverse``,
    ``time_major``, ``unroll``); ``loss_fn`` maps the outputs to a scalar.

    Shapes: xs [*batch, T, I] -> [*batch, T, H] (the layout of hs).
    """
    _check_callable("loss_fn", loss_fn)
    _check_array("xs", xs, 2)
    shape = jax.eval_shape(lambda: rnn(cell, params, xs, carry, **rnn_kwargs)[0])
    zeros = jnp.zeros(shape.shape, jnp.float32)

    def loss(probes):
        hs, _ = rnn(cell, params, xs, carry, probes=probes, **rnn_kwargs)
        return loss_fn(hs)

    return jax.grad(loss)(zeros)


def grad_norms(cell, params, xs, loss_fn, carry=None, **rnn_kwargs):
    """||dL/dh_t|| for every step t, from one backward pass (see :func:`hidden_grads`).

    Shapes: xs [*batch, T, I] -> [*batch, T].
    """
    return safe_norm(hidden_grads(cell, params, xs, loss_fn, carry, **rnn_kwargs))


def last_step_grad_norms(cell, params, xs, loss_fn, carry=None, **rnn_kwargs):
    """||dL_T/dh_{T-1-k}|| against the lag k, for a loss on the last step's output only.

        L_T = loss_fn(h_{T-1}),   out[..., k] = ||dL_T/dh_{T-1-k}||,  k = 0..T-1

    The loss sits on position T-1 for every sequence; with ``lengths``/``mask`` a shorter
    sequence has output 0 there, so use :func:`hidden_grads` with a loss on each sequence's
    own last step instead.

    Shapes: xs [*batch, T, I] -> [*batch, T] (index = lag; [*batch] batch-major even when
    ``time_major=True``).
    """
    _check_callable("loss_fn", loss_fn)
    time_major = bool(rnn_kwargs.get("time_major", False))
    if rnn_kwargs.get("reverse", False):
        raise ValueError("last_step_grad_norms needs reverse=False (the last step is T-1)")
    pick = (lambda hs: hs[-1]) if time_major else (lambda hs: hs[..., -1, :])
    norms = grad_norms(cell, params, xs, lambda hs: loss_fn(pick(hs)), carry, **rnn_kwargs)
    if time_major:
        norms = jnp.moveaxis(norms, 0, -1)
    return norms[..., ::-1]


def pascanu_bound(sigma_max, norm_at_lag0, num_lags: int):
    """The bound sigma_max^k ||g_0|| on ||dL_T/dh_{T-1-k}||, k = 0..num_lags-1 (Pascanu 2013).

    Computed as exp(k log sigma + log ||g_0||), so it saturates to inf/0 instead of NaN.

    Shapes: sigma_max [*s], norm_at_lag0 [*s] -> [*s, num_lags].
    """
    sigma = jnp.asarray(sigma_max, jnp.float32)
    g0 = jnp.asarray(norm_at_lag0, jnp.float32)
    k = jnp.arange(num_lags, dtype=jnp.float32)
    log_b = lead(k, sigma.ndim + 1) * jnp.log(sigma)[..., None] + jnp.log(g0)[..., None]
    return jnp.exp(log_b)


# -- the recurrent matrix ---------------------------------------------------------------------
def _gate_blocks(cell, params):
    matrices = getattr(cell, "recurrent_matrices", None)
    if matrices is not None:  # cells without gate blocks of one U say which matrices they have
        return jnp.asarray(matrices(params), jnp.float32)
    u = params["U"] if isinstance(params, dict) and "U" in params else None
    if u is None:
        raise ValueError(f"params must be a dict with a recurrent matrix 'U' for "
                         f"{type(cell).__name__} (a cell without one defines recurrent_matrices)")
    h, g = cell.hidden_size, cell.num_gates
    if u.shape != (h, g * h):
        raise ValueError(f"params['U'] must have shape {(h, g * h)} for this cell, got {u.shape}")
    return jnp.moveaxis(u.astype(jnp.float32).reshape(h, g, h), 1, 0)  # [G, H, H]


def recurrent_spectral_radius(cell, params):
    """rho(U_g) = max |eigenvalue| of each gate block U_g (order of the cell's gates).

    A cell whose recurrent parameters are not gate blocks of one U names its matrices with
    ``cell.recurrent_matrices(params)`` (expRNN: expm(A); IndRNN: diag(u); AntisymmetricRNN:
    M - M^T - gamma I; coRNN: W_y, W_z; Lipschitz RNN: A_beta, W_beta), one result per matrix.

    Shapes: U [H, G*H] -> [G].
    """
    blocks = _gate_blocks(cell, params)
    return jnp.max(jnp.abs(jnp.linalg.eigvals(blocks)), axis=-1)


def recurrent_sigma_max(cell, params):
    """sigma_max(U_g), the largest singular value of each gate block (or recurrent matrix).

    Shapes: U [H, G*H] -> [G].
    """
    return jnp.linalg.svd(_gate_blocks(cell, params), compute_uv=False)[..., 0]


# -- curves ----------------------------------------------------------------------------------
def log_slope(norms, lags=None, *, floor=None):
    """Least-squares slope of log ||g_k|| against the lag k (per step: log g for U = g Q, linear).

        slope = sum w (k - k̄)(y - ȳ) / sum w (k - k̄)^2,   y = log ||g_k||,
        w = 1 where floor < ||g_k|| < inf (underflowed, zero and non-finite entries ignored)

    ``floor`` defaults to 1e-30: below it the float32 components of a norm computed from ~100
    or more entries are denormal or flushed to zero, and the norm loses its precision. NaN when
    fewer than two entries count.

    Shapes: norms [*s, L], lags [L] (default 0..L-1) -> [*s].
    """
    _check_array("norms", norms)
    num = norms.shape[-1]
    lags = jnp.arange(num, dtype=jnp.float32) if lags is None else jnp.asarray(lags, jnp.float32)
    if lags.shape != (num,):
        raise ValueError(f"lags must have shape ({num},) to match norms, got {lags.shape}")
    floor = 1e-30 if floor is None else floor
    x = lead(lags, norms.ndim)
    w = ((norms > floor) & jnp.isfinite(norms)).astype(jnp.float32)
    y = jnp.log(jnp.where(w > 0, norms, 1.0))
    n = jnp.sum(w, axis=-1, keepdims=True)
    xm = jnp.sum(w * x, axis=-1, keepdims=True) / n
    ym = jnp.sum(w * y, axis=-1, keepdims=True) / n
    cov = jnp.sum(w * (x - xm) * (y - ym), axis=-1)
    var = jnp.sum(w * (x - xm) ** 2, axis=-1)
    return jnp.where(n[..., 0] >= 2, cov / var, jnp.nan)


def gradient_horizon(norms, eps: float = 1e-3):
    """The first lag k with ||g_k|| < eps ||g_0||; L (the curve's length) if there is none.

    Shapes: norms [*s, L] -> int32 [*s].
    """
    _check_array("norms", norms)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    below = norms < eps * norms[..., :1]
    first = jnp.argmax(below, axis=-1).astype(jnp.int32)
    return jnp.where(jnp.any(below, axis=-1), first, jnp.int32(norms.shape[-1]))


# -- clipping -----------------------------------------------------------------------------------
def clipping_stats(grad_norms_pre_clip, clipped, quantiles=(0.5, 0.9, 0.99)):
    """How often and how hard global-norm clipping acted, from a training loop's metrics.

        fraction_clipped = mean(clipped);   quantiles of the pre-clip global norm ||g||

    Non-finite norms (skipped steps) are left out of the quantiles, mean and max and counted in
    ``num_nonfinite``.

    Shapes: grad_norms_pre_clip [N], clipped [N] bool -> dict of arrays: ``fraction_clipped``
    [], ``quantiles`` [Q], ``quantile_levels`` [Q], ``mean`` [], ``max`` [],
    ``num_nonfinite`` [].
    """
    _check_array("grad_norms_pre_clip", grad_norms_pre_clip)
    if np.shape(clipped) != np.shape(grad_norms_pre_clip):
        raise ValueError(
            f"clipped must have the shape of grad_norms_pre_clip {np.shape(grad_norms_pre_clip)},"
            f" got {np.shape(clipped)}"
        )
    if grad_norms_pre_clip.size == 0:
        raise ValueError("grad_norms_pre_clip must not be empty")
    levels = jnp.asarray(quantiles, jnp.float32)
    if levels.ndim != 1 or not bool(np.all((np.asarray(quantiles) >= 0)
                                          & (np.asarray(quantiles) <= 1))):
        raise ValueError(f"quantiles must be a sequence of levels in [0, 1], got {quantiles}")
    g = jnp.ravel(grad_norms_pre_clip).astype(jnp.float32)
    finite = jnp.isfinite(g)
    return {
        "fraction_clipped": jnp.mean(jnp.ravel(clipped).astype(jnp.float32)),
        "quantiles": jnp.nanquantile(jnp.where(finite, g, jnp.nan), levels),
        "quantile_levels": levels,
        "mean": jnp.sum(jnp.where(finite, g, 0.0)) / jnp.maximum(jnp.sum(finite), 1),
        "max": jnp.max(jnp.where(finite, g, -jnp.inf)),
        "num_nonfinite": jnp.sum(~finite),
    }
