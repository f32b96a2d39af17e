"""Long short-term memory (Hochreiter & Schmidhuber 1997), PyTorch's gate order i, f, g, o."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rnn_jax.cells.base import Cell, check_number


@dataclasses.dataclass(frozen=True)
class LSTM(Cell):
    """Long short-term memory (Hochreiter & Schmidhuber 1997; forget gate: Gers et al. 2000).

        [i, f, g, o] = x_t W + h_{t-1} U + b          (gate order i, f, g, o, as PyTorch)
        c_t = sigma(f) * c_{t-1} + sigma(i) * tanh(g)
        h_t = sigma(o) * tanh(c_t)

    Params: ``{"W": [I, 4H], "U": [H, 4H], "b": [4H]}``; ``forget_bias`` is added to the f slice
    of b at init (Jozefowicz, Zaremba, Sutskever 2015 recommend 1). Carry: ``(h, c)``.

    ``chrono_max = T_max`` instead sets the chrono initialisation (Tallec & Ollivier 2018, "Can
    recurrent neural networks warp time?"): per unit, b_f = log(u), u ~ U(1, T_max - 1), and
    b_i = -b_f, so that at init the cell forgets with characteristic times 1 / (1 - sigma(b_f))
    = 1 + u spread over [2, T_max]: memory for the time scales the task needs.
    """

    forget_bias: float = 1.0
    chrono_max: float | None = None
    num_gates = 4

    def __post_init__(self):
        super().__post_init__()
        check_number("forget_bias", self.forget_bias)
        check_number("chrono_max", self.chrono_max, optional=True)
        if self.chrono_max is not None and not self.chrono_max > 2:
            raise ValueError(f"chrono_max must be > 2 (the longest time scale, in steps), got "
                             f"{self.chrono_max!r}")

    def init(self, key, input_size: int) -> dict:
        params = self._init_common(key, input_size)
        h = self.hidden_size
        b = params["b"]
        if self.chrono_max is None:
            b = b.at[h:2 * h].add(self.forget_bias)
        else:  # its own stream: W, U and the other biases are those of the plain init
            u = jax.random.uniform(jax.random.fold_in(key, 0xC4), (h,), jnp.float32, 1.0,
                                   self.chrono_max - 1.0)
            b_f = jnp.log(u).astype(b.dtype)
            b = b.at[h:2 * h].set(b_f).at[:h].set(-b_f)
        params["b"] = b
        return params

    def initial_carry(self, batch_shape=(), dtype=jnp.float32):
        z = jnp.zeros((*tuple(batch_shape), self.hidden_size), dtype)
        return (z, z)

    def hidden(self, carry):
        return carry[0]

    def with_hidden(self, carry, h):
        return (h, carry[1])

    def recur(self, params, carry, u):
        h, c = carry
        z = u + self._mm(h, params["U"])
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

