"""The vanilla (Elman 1990) cell and the IRNN initialisation (Le, Jaitly, Hinton 2015)."""

from __future__ import annotations

import dataclasses

from rnn_jax.cells.base import ACTIVATIONS, Cell


@dataclasses.dataclass(frozen=True)
class Elman(Cell):
    """The vanilla (Elman 1990) recurrent cell.

        h_t = f(x_t W + h_{t-1} U + b),   f in {tanh, relu, identity}

    Params: ``{"W": [I, H], "U": [H, H], "b": [H]}``; carry: ``h: [*batch, H]``.
    With ``recurrent_init="identity"``, ``input_init="small_normal"`` and ``activation="relu"``
    this is the IRNN of Le, Jaitly, Hinton (2015).
    """

    activation: str = "tanh"

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.activation, str) or self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation={self.activation!r} is not supported; expected one of "
                f"{sorted(ACTIVATIONS)}"
            )

    def recur(self, params, carry, u):
        """h' = f(u + h U)."""
        h = ACTIVATIONS[self.activation](u + self._mm(carry, params["U"]))
        return h, h



def irnn(hidden_size: int, **kwargs) -> Elman:
    """The IRNN of Le, Jaitly, Hinton (2015): ReLU Elman cell, U = I, W ~ N(0, 0.001^2), b = 0."""
    kwargs.setdefault("recurrent_init", "identity")
    kwargs.setdefault("input_init", "small_normal")
    return Elman(hidden_size, activation="relu", **kwargs)
