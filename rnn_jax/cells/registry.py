"""Cells by name, and PyTorch-like initialisation of any cell."""

from __future__ import annotations

from rnn_jax.cells.base import Cell
from rnn_jax.cells.elman import Elman
from rnn_jax.cells.gru import GRU
from rnn_jax.cells.gru_variants import MGU, GRUv1
from rnn_jax.cells.indrnn import IndRNN
from rnn_jax.cells.linear import LRU, MinGRU
from rnn_jax.cells.lstm import LSTM
from rnn_jax.cells.lstm_variants import LNLSTM, PeepholeLSTM
from rnn_jax.cells.ode import AntisymmetricRNN, CoRNN, LipschitzRNN
from rnn_jax.cells.orthogonal import ExpRNN

CELLS = {"elman": Elman, "lstm": LSTM, "gru": GRU, "mingru": MinGRU, "lru": LRU}
# the published remedies for vanishing gradients, and the gated variants compared with them
CELLS.update(exprnn=ExpRNN, indrnn=IndRNN, antisymmetric=AntisymmetricRNN, cornn=CoRNN,
             lipschitz=LipschitzRNN, mgu=MGU, gru_v1=GRUv1, peephole_lstm=PeepholeLSTM,
             ln_lstm=LNLSTM)


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
