"""GRU-family variants: the original GRU with the reset gate before the product (Cho et al.
2014; Keras's ``reset_after=False``) and the minimal gated unit (Zhou et al. 2016)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rnn_jax.cells.base import Cell


@dataclasses.dataclass(frozen=True)
class GRUv1(Cell):
    """GRU with the reset gate applied before the recurrent product (Cho et al. 2014).

        r = sigma(x W_r + h U_r + b_r)
        z = sigma(x W_z + h U_z + b_z)
        n = tanh(x W_n + (r * h) U_n + b_n)
        h' = (1 - z) * n + z * h

    Keras's ``GRU(reset_after=False)`` and TF1's GRUCell; ``rj.GRU`` is the cuDNN/PyTorch form
    (r applied after the product, with its own b_hn). A class of its own, not an option of
    ``rj.GRU``: its params ``{"W": [I, 3H], "U": [H, 3H], "b": [3H]}`` have no b_hn, and the
    fused and Pallas time loops, which run ``rj.GRU`` itself, do not take it (it runs on the
    scan). Gate order r, z, n; carry ``h``.
    """

    num_gates = 3

    def recur(self, params, carry, u):
        h = carry
        h2 = params["U"].shape[0] * 2
        hu = self._mm(h, params["U"][:, :h2])
        u_r, u_z, u_n = jnp.split(u, 3, axis=-1)
        h_r, h_z = jnp.split(hu, 2, axis=-1)
        r = jax.nn.sigmoid(u_r + h_r)
        z = jax.nn.sigmoid(u_z + h_z)
        n = jnp.tanh(u_n + self._mm(r * h, params["U"][:, h2:]))
        h = (1.0 - z) * n + z * h
        return h, h


@dataclasses.dataclass(frozen=True)
class MGU(Cell):
    """Minimal gated unit (Zhou, Wu, Zhang, Zhou 2016): one forget gate does the GRU's two jobs.

        f = sigma(x W_f + h U_f + b_f)
        n = tanh(x W_n + (f * h) U_n + b_n)
        h' = (1 - f) * h + f * n

    Params: ``{"W": [I, 2H], "U": [H, 2H], "b": [2H]}``, gate order f, n; carry ``h``.
    """

    num_gates = 2

    def recur(self, params, carry, u):
        h = carry
        size = params["U"].shape[0]
        u_f, u_n = jnp.split(u, 2, axis=-1)
        f = jax.nn.sigmoid(u_f + self._mm(h, params["U"][:, :size]))
        n = jnp.tanh(u_n + self._mm(f * h, params["U"][:, size:]))
        h = (1.0 - f) * h + f * n
        return h, h
