"""Recurrent cells as values, and their initialisers.

A cell is a frozen dataclass of hyperparameters (hashable, compared by value, so it can be a
static argument of ``jax.jit``) whose methods are pure functions of explicit parameters:

    params = cell.init(key, input_size)              # plain dict of arrays
    carry  = cell.initial_carry(batch_shape=())      # zeros
    u      = cell.project(params, x)                 # input part:      x W + b
    carry, h = cell.recur(params, carry, u)          # recurrent part:  the nonlinear update
    carry, h = cell.step(params, carry, x)           # == recur(params, carry, project(params, x))

One family per module: ``elman`` (Elman, IRNN), ``lstm``, ``gru``, ``linear`` (minGRU, LRU and
the linear-recurrence solver); the remedies for vanishing gradients: ``orthogonal`` (expRNN),
``indrnn``, ``ode`` (AntisymmetricRNN, coRNN, Lipschitz RNN), ``gru_variants`` (GRUv1, MGU),
``lstm_variants`` (peephole, layer-normalised), ``regularizers`` (variational dropout,
zoneout); ``base`` holds what they share, ``initializers`` the weight initialisers,
``validation`` the checks every runner makes, ``registry`` cells by name.
"""

from rnn_jax.cells.base import ACTIVATIONS, Cell, lead
from rnn_jax.cells.elman import Elman, irnn
from rnn_jax.cells.gru import GRU
from rnn_jax.cells.gru_variants import MGU, GRUv1
from rnn_jax.cells.indrnn import IndRNN
from rnn_jax.cells.linear import LRU, MinGRU
from rnn_jax.cells.lstm import LSTM
from rnn_jax.cells.lstm_variants import LNLSTM, PeepholeLSTM
from rnn_jax.cells.ode import AntisymmetricRNN, CoRNN, LipschitzRNN
from rnn_jax.cells.orthogonal import ExpRNN
from rnn_jax.cells.registry import CELLS, get_cell, torch_like
from rnn_jax.cells.regularizers import VariationalDropout, Zoneout, sequence_dropout

__all__ = ["ACTIVATIONS", "CELLS", "GRU", "LRU", "LSTM", "Cell", "Elman", "MinGRU", "get_cell",
           "irnn", "lead", "torch_like"]
__all__ += ["MGU", "AntisymmetricRNN", "CoRNN", "ExpRNN", "GRUv1", "IndRNN", "LNLSTM",
            "LipschitzRNN", "PeepholeLSTM", "VariationalDropout", "Zoneout", "sequence_dropout"]
