"""IndRNN: one recurrent weight per unit (Li, Li, Cook, Zhu, Gao, CVPR 2018, "Independently
recurrent neural network (IndRNN): building a longer and deeper RNN")."""

from __future__ import annotations

import dataclasses
import operator

import jax
import jax.numpy as jnp

from rnn_jax.cells import initializers as inits
from rnn_jax.cells.base import ACTIVATIONS, InputCell, check_key, check_size, lead


@dataclasses.dataclass(frozen=True)
class IndRNN(InputCell):
    """Independently recurrent cell: each unit sees only its own past.

        h_t = f(x_t W + u * h_{t-1} + b),        u: [H], elementwise

    For a unit whose ReLU is active the gradient over T steps is dh_T/dh_0 = u^T, so the paper
    (Sec. 3.1) bounds |u| for a memory of T steps: |u| <= gamma^(1/T) keeps the gradient from
    growing by more than gamma, |u| >= eps^(1/T) from shrinking below eps. With ``memory=T``
    the cell uses u clipped to [min_gain^(1/T), max_gain^(1/T)] in magnitude (sign kept), so
    the bound holds for the weights it runs with whatever the optimizer does (the authors clip
    after each update, with MAG = max_gain = 2 or 10). Without ``memory``, u is unconstrained.

    Init as the authors' ReLU networks: u ~ U(recurrent_range), (0, 1) by default (different
    units keep different memories); (1 - e, 1 + e) suits a last layer read at the last step.
    Params: ``{"W": [I, H], "u": [H], "b": [H]}``; carry ``h: [*batch, H]``.
    """

    activation: str = "relu"
    memory: int | None = None
    max_gain: float = 2.0
    min_gain: float | None = None
    recurrent_range: tuple = (0.0, 1.0)
    input_init: str = "glorot_uniform"

    def __post_init__(self):
        super().__post_init__()
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not supported; expected one of "
                             f"{sorted(ACTIVATIONS)}")
        inits.get_initializer(self.input_init, argument="input_init")
        if self.memory is not None:
            try:
                ok = operator.index(self.memory) >= 1 and not isinstance(self.memory, bool)
            except TypeError:
                ok = False
            if not ok:
                raise ValueError(f"memory must be a positive int (steps), got {self.memory!r}")
        if not self.max_gain >= 1.0:
            raise ValueError(f"max_gain must be >= 1, got {self.max_gain!r}")
        if self.min_gain is not None and not 0.0 < self.min_gain <= 1.0:
            raise ValueError(f"min_gain must lie in (0, 1], got {self.min_gain!r}")
        object.__setattr__(self, "recurrent_range", tuple(self.recurrent_range))
        if len(self.recurrent_range) != 2 or not self.recurrent_range[0] < self.recurrent_range[1]:
            raise ValueError(f"recurrent_range must be (low, high) with low < high, got "
                             f"{self.recurrent_range!r}")

    def bounds(self) -> tuple[float, float] | None:
        """(min |u|, max |u|) = (min_gain^(1/T), max_gain^(1/T)), or None without ``memory``."""
        if self.memory is None:
            return None
        lo = 0.0 if self.min_gain is None else self.min_gain ** (1.0 / self.memory)
        return lo, self.max_gain ** (1.0 / self.memory)

    def _clip(self, u):
        b = self.bounds()
        if b is None:
            return u
        sign = jnp.where(u >= 0, 1.0, -1.0).astype(u.dtype)
        return sign * jnp.clip(jnp.abs(u), b[0], b[1])

    def init(self, key, input_size: int) -> dict:
        check_key(key)
        input_size = check_size("input_size", input_size)
        k_w, k_u = jax.random.split(key)
        params = self._input_params(k_w, input_size, self.input_init)
        lo, hi = self.recurrent_range
        params["u"] = self._clip(jax.random.uniform(k_u, (self.hidden_size,), jnp.float32, lo, hi))
        return self._cast(params)

    def prepare(self, params):
        """u within the memory bounds (clipping is idempotent, so preparing twice is a no-op)."""
        return {**params, "u": self._clip(params["u"])}

    def recurrent_matrices(self, params):
        """diag(u) as the cell uses it, ``[1, H, H]``."""
        return jnp.diag(self.prepare(params)["u"])[None]

    def recur(self, params, carry, u):
        w = self.prepare(params)["u"]
        h = ACTIVATIONS[self.activation](u + lead(w, carry.ndim) * carry)
        return h, h
