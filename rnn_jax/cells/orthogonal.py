"""expRNN: an orthogonal recurrent matrix U = expm(A), A skew-symmetric (Lezcano-Casado &
Martínez-Rubio, ICML 2019, "Cheap orthogonal constraints in neural networks")."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from rnn_jax.cells import initializers as inits
from rnn_jax.cells.base import InputCell, check_key, check_size, lead

SKEW_INITS = ("henaff", "cayley")


def skew(a):
    """A - A^T from the strict upper triangle of ``a`` (the lower triangle is not read)."""
    upper = jnp.triu(a, 1)
    return upper - upper.T


def skew_init(key, hidden_size: int, kind: str):
    """The paper's block-diagonal initialisations of A: 2x2 blocks [[0, s], [-s, 0]].

        "henaff": s ~ U(-pi, pi)                       (Henaff, Szlam, LeCun 2016)
        "cayley": s = -sqrt((1 - cos t) / (1 + cos t)), t ~ U(0, pi/2)   (Helfrich et al. 2018)

    expm of a block [[0, s], [-s, 0]] is a rotation by s, so U starts as H/2 plane rotations
    (an odd H leaves one unit on the identity). Shapes: -> A: [H, H], skew-symmetric.
    """
    n = hidden_size // 2
    if kind == "henaff":
        s = jax.random.uniform(key, (n,), jnp.float32, -math.pi, math.pi)
    else:
        t = jax.random.uniform(key, (n,), jnp.float32, 0.0, math.pi / 2)
        s = -jnp.sqrt((1.0 - jnp.cos(t)) / (1.0 + jnp.cos(t)))
    rows = jnp.arange(n) * 2
    a = jnp.zeros((hidden_size, hidden_size), jnp.float32).at[rows, rows + 1].set(s)
    return a - a.T


def modrelu(z, b):
    """modReLU (Arjovsky, Shah, Bengio 2016) for real z: sign(z) * relu(|z| + b)."""
    return jnp.sign(z) * jax.nn.relu(jnp.abs(z) + b)


@dataclasses.dataclass(frozen=True)
class ExpRNN(InputCell):
    """expRNN: an Elman cell whose recurrent matrix is orthogonal by construction.

        A = triu(X, 1) - triu(X, 1)^T          (skew-symmetric; X: [H, H] is the parameter)
        U = expm(A)                             (U^T U = I for every X, under any optimizer)
        h_t = modReLU(x_t W + h_{t-1} U; b),    modReLU(z; b) = sign(z) relu(|z| + b)

    Lezcano-Casado & Martínez-Rubio (ICML 2019). Params: ``{"W": [I, H], "A": [H, H] (only its
    strict upper triangle is used), "b": [H] (modReLU's bias)}``; the input part has no bias of
    its own (``project`` is x W), as in the authors' code. Init as theirs: W ~ He normal,
    b ~ U(-0.01, 0.01), A by ``skew_init`` ("henaff" or "cayley"). ``prepare`` computes U once
    per sequence. Carry ``h: [*batch, H]``.
    """

    skew_init: str = "cayley"
    input_init: str = "he_normal"

    def __post_init__(self):
        super().__post_init__()
        if self.skew_init not in SKEW_INITS:
            raise ValueError(f"skew_init={self.skew_init!r} is not supported; expected one of "
                             f"{list(SKEW_INITS)}")
        inits.get_initializer(self.input_init, argument="input_init")

    def init(self, key, input_size: int) -> dict:
        check_key(key)
        input_size = check_size("input_size", input_size)
        k_w, k_a, k_b = jax.random.split(key, 3)
        params = self._input_params(k_w, input_size, self.input_init)
        params["A"] = skew_init(k_a, self.hidden_size, self.skew_init)
        params["b"] = jax.random.uniform(k_b, (self.hidden_size,), jnp.float32, -0.01, 0.01)
        return self._cast(params)

    def prepare(self, params):
        """Adds ``"U": expm(skew(A))``, once per sequence (a no-op when U is already there)."""
        if "U" in params:
            return params
        a = skew(params["A"])
        return {**params, "U": jax.scipy.linalg.expm(a).astype(a.dtype)}

    def recurrent_matrices(self, params):
        """U, ``[1, H, H]``: the matrix that multiplies h_{t-1}."""
        return self.prepare(params)["U"][None]

    def project(self, params, x):
        """x W (modReLU's b is applied in ``recur``)."""
        return self._mm(x, params["W"])

    def recur(self, params, carry, u):
        p = self.prepare(params)
        z = u + self._mm(carry, p["U"])
        h = modrelu(z, lead(p["b"], z.ndim))
        return h, h
