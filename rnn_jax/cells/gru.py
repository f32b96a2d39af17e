"""Gated recurrent unit (Cho et al. 2014), PyTorch's formulation and gate order r, z, n."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rnn_jax.cells import initializers as inits
from rnn_jax.cells.base import Cell, check_key, lead


@dataclasses.dataclass(frozen=True)
class GRU(Cell):
    """Gated recurrent unit (Cho et al. 2014), in PyTorch's formulation (gate order r, z, n).

        r = sigma(x W_r + h U_r + b_r)
        z = sigma(x W_z + h U_z + b_z)
        n = tanh(x W_n + b_n + r * (h U_n + b_hn))
        h' = (1 - z) * n + z * h

    Params: ``{"W": [I, 3H], "U": [H, 3H], "b": [3H], "b_hn": [H]}``; carry: ``h``.
    """

    num_gates = 3

    def init(self, key, input_size: int) -> dict:
        check_key(key)
        k_common, k_hn = jax.random.split(key)
        params = self._init_common(k_common, input_size)
        b_init = inits.get_initializer(self.bias_init)
        h = self.hidden_size
        params["b_hn"] = b_init(k_hn, (h,), jnp.float32, fan_hidden=h).astype(self.param_dtype)
        return params

    def recur(self, params, carry, u):
        h = carry
        hu = self._mm(h, params["U"])
        u_r, u_z, u_n = jnp.split(u, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(hu, 3, axis=-1)
        r = jax.nn.sigmoid(u_r + h_r)
        z = jax.nn.sigmoid(u_z + h_z)
        n = jnp.tanh(u_n + r * (h_n + lead(params["b_hn"], h_n.ndim)))
        h = (1.0 - z) * n + z * h
        return h, h

