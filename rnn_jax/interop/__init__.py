"""rnn_jax inside the ecosystem: Flax layers, and weights to and from PyTorch, Flax and Keras.

One module per framework, each importing it only when used (an optional extra):

    from rnn_jax.interop import torch as rj_torch    # nn.RNN / nn.LSTM / nn.GRU weights and states
    from rnn_jax.interop import linen, nnx           # Flax layers over rnn_jax cells; flax cells
    from rnn_jax.interop import keras as rj_keras    # Keras 3 SimpleRNN / LSTM / GRU weights

The converters are exact re-arrangements (transposes, gate reorders, slices) of the same
function; the one exception is a sum of two biases (PyTorch, Keras's GRU), exact up to one
rounding. ``arrays`` holds the dtype-preserving conversion they share, ``flax_cells`` what
linen's and NNX's cells share.
"""
