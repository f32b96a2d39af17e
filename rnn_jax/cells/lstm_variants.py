"""LSTM variants: peephole connections (Gers & Schmidhuber 2000) and layer normalisation
(Ba, Kiros, Hinton 2016). Both are LSTM subclasses (forget_bias, chrono init, carry (h, c));
the fused and Pallas loops, which take ``type(cell) is LSTM`` only, leave them to the scan."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rnn_jax.cells.base import lead
from rnn_jax.cells.lstm import LSTM


@dataclasses.dataclass(frozen=True)
class PeepholeLSTM(LSTM):
    """LSTM whose gates also read the cell state (Gers & Schmidhuber 2000, "Recurrent nets that
    time and count"; the form of Gers, Schraudolph, Schmidhuber 2002).

        i = sigma(x W_i + h U_i + p_i * c_{t-1} + b_i)
        f = sigma(x W_f + h U_f + p_f * c_{t-1} + b_f)
        c_t = f * c_{t-1} + i * tanh(x W_g + h U_g + b_g)
        o = sigma(x W_o + h U_o + p_o * c_t + b_o)          (the output gate sees the new c)
        h_t = o * tanh(c_t)

    Params: the LSTM's plus ``"p": [3H]`` (diagonal peephole weights, order i, f, o), zero at
    init so the cell starts as a plain LSTM. Carry ``(h, c)``.
    """

    def init(self, key, input_size: int) -> dict:
        params = super().init(key, input_size)
        params["p"] = jnp.zeros((3 * self.hidden_size,), self.param_dtype)
        return params

    def recur(self, params, carry, u):
        h, c = carry
        z = u + self._mm(h, params["U"])
        i, f, g, o = jnp.split(z, 4, axis=-1)
        p_i, p_f, p_o = (lead(p, c.ndim) for p in jnp.split(params["p"], 3))
        c = jax.nn.sigmoid(f + p_f * c) * c + jax.nn.sigmoid(i + p_i * c) * jnp.tanh(g)
        h = jax.nn.sigmoid(o + p_o * c) * jnp.tanh(c)
        return (h, c), h


def layer_norm(v, gain, bias=None, eps=1e-5):
    """(v - mean) / sqrt(var + eps) * gain (+ bias), over the last axis, in float32 at least."""
    v = v.astype(jnp.promote_types(v.dtype, jnp.float32))
    mu = jnp.mean(v, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(v - mu), axis=-1, keepdims=True)
    out = (v - mu) * jax.lax.rsqrt(var + eps) * lead(gain, v.ndim)
    return out if bias is None else out + lead(bias, v.ndim)


@dataclasses.dataclass(frozen=True)
class LNLSTM(LSTM):
    """Layer-normalised LSTM (Ba, Kiros, Hinton 2016, "Layer normalization", Sec. 3.1 form).

        [i, f, g, o] = LN(x_t W; a_x) + LN(h_{t-1} U; a_h) + b     (LN over all 4H at once)
        c_t = sigma(f) * c_{t-1} + sigma(i) * tanh(g)
        h_t = sigma(o) * tanh(LN(c_t; a_c, beta_c))

    LN(v; a, beta) = a * (v - mean(v)) / std(v) + beta. The two LN biases of the gates would
    add to b, so b stands for all three. ``project`` (LN of x W, plus b) is hoisted like every
    cell's input part. Params: the LSTM's plus ``"gain_x": [4H], "gain_h": [4H]`` (ones),
    ``"gain_c": [H]`` (ones), ``"bias_c": [H]`` (zeros). Carry ``(h, c)``.
    """

    ln_eps: float = 1e-5

    def init(self, key, input_size: int) -> dict:
        params = super().init(key, input_size)
        h, dt = self.hidden_size, self.param_dtype
        params.update(gain_x=jnp.ones((4 * h,), dt), gain_h=jnp.ones((4 * h,), dt),
                      gain_c=jnp.ones((h,), dt), bias_c=jnp.zeros((h,), dt))
        return params

    def project(self, params, x):
        """LN(x W; a_x) + b."""
        u = layer_norm(self._mm(x, params["W"]), params["gain_x"], eps=self.ln_eps)
        return u + lead(params["b"], u.ndim)

    def recur(self, params, carry, u):
        h, c = carry
        z = u + layer_norm(self._mm(h, params["U"]), params["gain_h"], eps=self.ln_eps)
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(layer_norm(c, params["gain_c"], params["bias_c"],
                                                    self.ln_eps))
        return (h, c), h
