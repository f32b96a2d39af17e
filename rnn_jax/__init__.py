"""rnn_jax: recurrent neural networks as pure JAX functions.

Notation (used in every docstring and in shape-suffixed names such as ``xs_BxTxI``):

    B  batch (any number of leading batch axes is allowed: [*batch, ...])
    T  time steps            I  input features
    H  hidden units          O  outputs
    G  gates (1 Elman, 4 LSTM, 3 GRU); W: [I, G*H], U: [H, G*H], b: [G*H]

The vanilla (Elman) RNN the project starts from:

    h_t = tanh(x_t W + h_{t-1} U + b)
    y_t = softmax(h_t V + c)

A cell step is a pure function, ``rnn`` unrolls it with ``lax.scan``, ``jax.grad`` of the
unrolled loss is backpropagation through time, and optax applies the clipped update.
"""

from rnn_jax.cells import (  # the remedies for vanishing gradients (issue 13)
    GRU,
    LNLSTM,
    LRU,
    LSTM,
    MGU,
    AntisymmetricRNN,
    CoRNN,
    Elman,
    ExpRNN,
    GRUv1,
    IndRNN,
    LipschitzRNN,
    MinGRU,
    PeepholeLSTM,
    VariationalDropout,
    Zoneout,
    get_cell,
    initializers,
    irnn,
    torch_like,
)
from rnn_jax.loops.deer import deer_rnn
from rnn_jax.model import SequenceModel
from rnn_jax.rnn import bidirectional, merge_directions, rnn
from rnn_jax.stack import init_stack, layer_cells, stack

__all__ = [
    "GRU",
    "LRU",
    "LSTM",
    "Elman",
    "MinGRU",
    "SequenceModel",
    "bidirectional",
    "deer_rnn",
    "get_cell",
    "init_stack",
    "initializers",
    "irnn",
    "layer_cells",
    "merge_directions",
    "rnn",
    "stack",
    "torch_like",
]
__all__ += ["MGU", "AntisymmetricRNN", "CoRNN", "ExpRNN", "GRUv1", "IndRNN", "LNLSTM",
            "LipschitzRNN", "PeepholeLSTM", "VariationalDropout", "Zoneout"]
