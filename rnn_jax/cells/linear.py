"""Cells whose recurrence is linear in the state: minGRU and a diagonal LRU.

Both have the form

    z_t = a_t * z_{t-1} + b_t        (elementwise; a_t, b_t depend on the input x_t only)

so besides the sequential step (they run under ``rj.rnn`` like any cell) the whole sequence is
one ``jax.lax.associative_scan`` over the pairs (a_t, b_t) with
(a2, b2) o (a1, b1) = (a2 a1, a2 b1 + b2): :meth:`scan_parallel`, with the same arguments and
results as ``rj.rnn``. The cell interface is that of ``rnn_jax.cells`` (``init``,
``initial_carry``, ``project``, ``recur``, ``step``, ``hidden``, ``with_hidden``, ``num_gates``,
``hidden_size``); the carry is the real array h: [*batch, H].

``solve_linear`` (also in its dense form, s_t = A_t s_{t-1} + b_t with A_t: [D, D]) is the one
linear-recurrence solver of the project: DEER's Newton steps (``rnn_jax.loops.deer``) use it too.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from rnn_jax.cells import initializers as inits
from rnn_jax.cells.base import check_dtype, check_key, check_number, check_size, lead
from rnn_jax.cells.validation import (
    check_bool,
    check_carry,
    check_params,
    check_xs,
    mask_from,
    zero_padding,
)

HIGHEST = jax.lax.Precision.HIGHEST  # TF32 on GPUs would put a 1e-3 floor under the Newton update


def matvec(a, v, diagonal):
    return a * v if diagonal else jnp.einsum("...ij,...j->...i", a, v, precision=HIGHEST)


def solve_linear(a, b, s0, *, diagonal=False):
    """All states of s_t = a_t s_{t-1} + b_t (t = 1..T) from s0, with one associative scan.

    Shapes: a: [T, D, D] (``diagonal=False``) or [T, D]; b: [T, D]; s0: [D]  ->  [T, D].
    """
    b = b.at[0].add(matvec(a[0], s0, diagonal))

    def combine(early, late):
        (a1, b1), (a2, b2) = early, late
        a12 = a2 * a1 if diagonal else jnp.matmul(a2, a1, precision=HIGHEST)
        return a12, matvec(a2, b1, diagonal) + b2

    return jax.lax.associative_scan(combine, (a, b))[1]


CANDIDATES = ("identity", "g")


def _g(x):
    """Feng et al.'s positive candidate map: x + 1/2 for x >= 0, sigmoid(x) below."""
    return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


@dataclasses.dataclass(frozen=True)
class _LinearCell:
    """Shared behaviour: a linear recurrence z' = a z + b in a scan space z (not public)."""

    hidden_size: int
    num_gates = 1

    def __post_init__(self):
        check_size("hidden_size", self.hidden_size)

    # -- carry (the real hidden state h) -----------------------------------------------------
    def initial_carry(self, batch_shape=(), dtype=jnp.float32):
        """Zeros, ``[*batch_shape, H]``."""
        return jnp.zeros((*tuple(batch_shape), self.hidden_size), dtype)

    def hidden(self, carry):
        return carry

    def with_hidden(self, carry, h):
        del carry
        return h

    # -- computation ---------------------------------------------------------------------------
    def project(self, params, x):
        """u = x W + b for any leading axes of x."""
        u = x @ params["W"]
        return u + lead(params["b"], u.ndim)

    def to_scan(self, h):
        return h

    def from_scan(self, z):
        return z

    def coefficients(self, params, u):
        """(a, b) of z' = a z + b for the projected input u."""
        raise NotImplementedError

    def recur(self, params, carry, u):
        """h' = from_scan(a * to_scan(h) + b)."""
        a, b = self.coefficients(params, u)
        h = self.from_scan(a * self.to_scan(carry) + b)
        return h, h

    def step(self, params, carry, x):
        return self.recur(params, carry, self.project(params, x))

    def scan_parallel(self, params, xs, carry=None, *, lengths=None, mask=None, reverse=False,
                      time_major=False):
        """``rj.rnn(self, params, xs, carry, ...)`` as one associative scan over time.

            z_t = A_t z_0 + sum_{s<=t} (a_{s+1} ... a_t) b_s,   masked steps: a = 1, b = 0

        Same arguments, masking rule and ``reverse`` alignment as ``rj.rnn``; returns
        ``(hs, final_carry)``. Shapes: xs: [*batch, T, I] -> hs: [*batch, T, H].
        """
        reverse, time_major = check_bool("reverse", reverse), check_bool("time_major", time_major)
        check_xs(self, params, xs, time_major)
        check_params(self, params, xs.shape[-1])
        xs_tm = xs if time_major else jnp.moveaxis(xs, -2, 0)
        num_steps, batch_shape = xs_tm.shape[0], tuple(xs_tm.shape[1:-1])
        m = mask_from(lengths, mask, batch_shape, num_steps)
        if m is not None:  # inert padding, as in rj.rnn
            xs_tm = zero_padding(xs_tm, jnp.moveaxis(m, -1, 0))
        dtype = jnp.result_type(jnp.float32, xs.dtype, *jax.tree.leaves(params))
        if carry is None:
            carry = self.initial_carry(batch_shape, dtype)
        else:
            check_carry(self, carry, batch_shape, dtype)
            carry = jnp.asarray(carry, dtype)
        if num_steps == 0:
            return jnp.zeros((*xs.shape[:-1], self.hidden_size), dtype), carry

        a, b = self.coefficients(params, self.project(params, xs_tm))
        a = jnp.broadcast_to(a, b.shape)  # the LRU's a does not depend on t
        if m is not None:
            keep = jnp.moveaxis(m, -1, 0)[..., None]  # [T, *batch, 1]
            a = jnp.where(keep, a, jnp.ones_like(a))
            b = jnp.where(keep, b, jnp.zeros_like(b))
        if reverse:
            a, b = a[::-1], b[::-1]
        hs = self.from_scan(solve_linear(a, b, self.to_scan(carry), diagonal=True))
        final = hs[-1]
        if reverse:
            hs = hs[::-1]
        if m is not None:
            hs = jnp.where(jnp.moveaxis(m, -1, 0)[..., None], hs, jnp.zeros_like(hs))
        return (hs if time_major else jnp.moveaxis(hs, 0, -2)), final


@dataclasses.dataclass(frozen=True)
class MinGRU(_LinearCell):
    """minGRU (Feng et al. 2024, "Were RNNs all we needed?"): gates from the input only.

        z_t = sigma(x_t W_z + b_z),   h~_t = g(x_t W_h + b_h)
        h_t = (1 - z_t) * h_{t-1} + z_t * h~_t

    g is the identity (the paper's minGRU) or, with ``candidate="g"``, their positive map
    g(v) = v + 1/2 (v >= 0), sigma(v) (v < 0) of the log-space version. Params:
    ``{"W": [I, 2H], "b": [2H]}``, gate order z, h~; carry ``h: [*batch, H]``.
    """

    input_init: str = "glorot_uniform"
    bias_init: str = "zeros"
    candidate: str = "identity"
    param_dtype: Any = jnp.float32
    num_gates = 2

    def __post_init__(self):
        super().__post_init__()
        inits.get_initializer(self.input_init, argument="input_init")
        inits.get_initializer(self.bias_init, argument="bias_init")
        check_dtype("param_dtype", self.param_dtype)
        if not isinstance(self.candidate, str) or self.candidate not in CANDIDATES:
            raise ValueError(f"candidate={self.candidate!r} is not supported; expected one of "
                             f"{list(CANDIDATES)}")

    def init(self, key, input_size: int) -> dict:
        """Fresh parameters ``{"W": [I, 2H], "b": [2H]}`` (each gate block separately)."""
        check_key(key)
        input_size = check_size("input_size", input_size)
        h = self.hidden_size
        k_w, k_b = jax.random.split(key)
        w_init = inits.get_initializer(self.input_init)
        w = jnp.concatenate([w_init(k, (input_size, h), jnp.float32, fan_hidden=h)
                             for k in jax.random.split(k_w, 2)], axis=1)
        b = inits.get_initializer(self.bias_init)(k_b, (2 * h,), jnp.float32, fan_hidden=h)
        return {"W": w.astype(self.param_dtype), "b": b.astype(self.param_dtype)}

    def coefficients(self, params, u):
        """a = 1 - z, b = z * h~."""
        u_z, u_h = jnp.split(u, 2, axis=-1)
        z = jax.nn.sigmoid(u_z)
        cand = _g(u_h) if self.candidate == "g" else u_h
        return 1.0 - z, z * cand


@dataclasses.dataclass(frozen=True)
class LRU(_LinearCell):
    """Linear recurrent unit: a diagonal complex recurrence (Orvieto et al., ICML 2023,
    "Resurrecting recurrent neural networks for long sequences").

        lambda = exp(-exp(nu) + i theta)              (|lambda| < 1 for every nu: stable)
        x_t = lambda * x_{t-1} + gamma * (u_t B),     gamma = exp(gamma_log)
        h_t = [Re x_t ; Im x_t]                       (N = H / 2 complex modes)

    The hidden state is kept real: the carry and output h: [*batch, H] hold the real and
    imaginary parts of the N complex modes. A real linear map of h is therefore exactly the
    paper's output Re(C x) for an arbitrary complex C (Re(C x) = Re C Re x - Im C Im x), so the
    next layer or readout plays the role of C; the skip term D u is left to the model.
    Params: ``{"W": [I, H] = [Re B | Im B], "b": [H] (zeros; the shared x W + b interface),
    "nu": [N], "theta": [N], "gamma_log": [N]}``. Init as in the paper: |lambda| uniform on the
    ring [r_min, r_max], theta uniform in [0, max_phase], gamma = sqrt(1 - |lambda|^2),
    Re B, Im B ~ N(0, 1 / (2 I)).
    """

    r_min: float = 0.0
    r_max: float = 1.0
    max_phase: float = 2 * math.pi
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        super().__post_init__()
        for name in ("r_min", "r_max", "max_phase"):
            check_number(name, getattr(self, name))
        check_dtype("param_dtype", self.param_dtype)
        if self.hidden_size % 2:
            raise ValueError(f"hidden_size must be even for the LRU (H = 2N real numbers for N "
                             f"complex modes), got {self.hidden_size}")
        if not 0.0 <= self.r_min < self.r_max <= 1.0:
            raise ValueError(f"need 0 <= r_min < r_max <= 1, got r_min={self.r_min}, "
                             f"r_max={self.r_max}")

    def init(self, key, input_size: int) -> dict:
        check_key(key)
        input_size = check_size("input_size", input_size)
        n = self.hidden_size // 2
        k_r, k_p, k_b = jax.random.split(key, 3)
        # u in (eps, 1 - eps): |lambda|^2 = u (r_max^2 - r_min^2) + r_min^2 stays in (0, 1)
        u = jax.random.uniform(k_r, (n,), jnp.float32, 1e-6, 1.0 - 1e-6)
        mod2 = u * (self.r_max**2 - self.r_min**2) + self.r_min**2
        nu = jnp.log(-0.5 * jnp.log(mod2))
        theta = self.max_phase * jax.random.uniform(k_p, (n,), jnp.float32)
        gamma_log = 0.5 * jnp.log1p(-mod2)
        w = jax.random.normal(k_b, (input_size, 2 * n), jnp.float32) / math.sqrt(2 * input_size)
        params = {"W": w, "b": jnp.zeros((2 * n,)), "nu": nu, "theta": theta,
                  "gamma_log": gamma_log}
        return jax.tree.map(lambda p: p.astype(self.param_dtype), params)

    def eigenvalues(self, params):
        """lambda = exp(-exp(nu) + i theta), ``[N]`` complex."""
        return jnp.exp(-jnp.exp(params["nu"]) + 1j * params["theta"])

    def to_scan(self, h):
        re, im = jnp.split(h, 2, axis=-1)
        return jax.lax.complex(re, im)

    def from_scan(self, z):
        return jnp.concatenate([jnp.real(z), jnp.imag(z)], axis=-1)

    def coefficients(self, params, u):
        """a = lambda, b = gamma * (u_re + i u_im)."""
        bu = self.to_scan(u)
        gamma = lead(jnp.exp(params["gamma_log"]), bu.ndim)
        return lead(self.eigenvalues(params), bu.ndim), gamma * bu


LINEAR_CELLS = {"mingru": MinGRU, "lru": LRU}
