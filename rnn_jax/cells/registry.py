"""Cells by name, and PyTorch-like initialisation of any cell."""

from __future__ import annotations

from rnn_jax.cells.base import Cell
from rnn_jax.cells.elman import Elman
from rnn_jax.cells.gru import GRU
from rnn_jax.cells.linear import LRU, MinGRU
from rnn_jax.cells.lstm import LSTM

CELLS = {"elman": Elman, "lstm": LSTM, "gru": GRU, "mingru": MinGRU, "lru": LRU}


def get_cell(name: str, hidden_size: int, **kwargs) -> Cell:
    """Builds a cell by name, case-insensitively (``"elman"``, ``"LSTM"``, ``"MinGRU"``, ...)."""
    if not isinstance(name, str) or name.lower() not in CELLS:
        raise ValueError(f"cell={name!r} is not a known cell; expected one of {sorted(CELLS)} "
                         "(any case)")
    return CELLS[name.lower()](hidden_size, **kwargs)


def torch_like(cell_cls, hidden_size: int, **kwargs):
    """A cell initialised as PyTorch initialises nn.RNN/LSTM/GRU: every weight ~ U(+-1/sqrt(H))."""
    kwargs.setdefault("recurrent_init", "torch")
    kwargs.setdefault("input_init", "torch")
    kwargs.setdefault("bias_init", "torch")
    if cell_cls is LSTM:
        kwargs.setdefault("forget_bias", 0.0)
    return cell_cls(hidden_size, **kwargs)
