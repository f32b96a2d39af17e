"""Keras 3's SimpleRNN, LSTM and GRU layers' weights to and from rnn_jax.

Keras keeps ``kernel: [I, G*H]``, ``recurrent_kernel: [H, G*H]`` and ``bias`` per layer, so

    SimpleRNN:  W = kernel   U = recurrent_kernel   b = bias      activation tanh/relu/linear
    LSTM:       the same, gate order i, f, c, o = rnn_jax's i, f, g, o (recurrent_activation
                sigmoid, activation tanh); unit_forget_bias only initialises
    GRU (reset_after=True, Keras's default): gates ordered z, r, h and ``bias: [2, 3H]`` (an
                input row b_i and a recurrent row b_r), computing
                  z = σ(x K_z + b_i,z + h R_z + b_r,z),  r = σ(x K_r + b_i,r + h R_r + b_r,r)
                  hh = tanh(x K_h + b_i,h + r ⊙ (h R_h + b_r,h)),  h' = z h + (1 - z) hh
                which is rnn_jax's GRU with
                  W = [K_r | K_z | K_h]   U = [R_r | R_z | R_h]
                  b = [b_i,r + b_r,r | b_i,z + b_r,z | b_i,h]   b_hn = b_r,h
    GRU (reset_after=False, Cho et al. 2014): one bias row ``[3H]``, computing
                  hh = tanh(x K_h + (r ⊙ h) R_h + b_h)   (z, r and h' as above)
                which is rnn_jax's GRUv1 with W = [K_r | K_z | K_h], U = [R_r | R_z | R_h],
                b = [b_r | b_z | b_h]

Back to Keras the GRU's bias rows are ``[b_z | b_r | b_n]`` and ``[0 | 0 | b_hn]``; as with
PyTorch, merging the two bias rows is function-equal but not training-equal (Keras trains both
copies); GRUv1's one bias row maps exactly both ways. ``use_bias=False`` gives zero biases,
and needs them zero to go back.

Keras is imported only when a function here needs it (the ``keras`` extra); if it is not yet
imported and ``KERAS_BACKEND`` is unset, the JAX backend is chosen. The weights are read with
``get_weights``, so any backend works.
"""

from __future__ import annotations

import importlib
import os
import sys

import jax
import numpy as np

from rnn_jax.cells import GRU, LSTM, Elman, GRUv1
from rnn_jax.interop.arrays import to_jax, to_numpy

_ACTIVATIONS = {"tanh": "tanh", "relu": "relu", "linear": "identity"}


def _keras():
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        return importlib.import_module("keras")
    except ImportError as e:  # depends on the environment
        raise ImportError("rnn_jax.interop.keras needs Keras 3: pip install 'rnn_jax[keras]'"
                          ) from e


def _kind(layer) -> str:
    keras = _keras()
    kinds = {keras.layers.SimpleRNN: "simple", keras.layers.LSTM: "lstm",
             keras.layers.GRU: "gru"}
    if type(layer) not in kinds:
        raise TypeError(f"layer must be a keras.layers.SimpleRNN, LSTM or GRU, got "
                        f"{type(layer).__name__}")
    kind = kinds[type(layer)]
    return "gru_v1" if kind == "gru" and not layer.reset_after else kind


def _activation(layer) -> str:
    keras = _keras()
    names = {getattr(keras.activations, k): v for k, v in _ACTIVATIONS.items()}
    if layer.activation not in names:
        raise ValueError(f"layer.activation={layer.activation!r} is not supported; expected "
                         f"one of {sorted(_ACTIVATIONS)}")
    if hasattr(layer, "recurrent_activation"):
        if layer.recurrent_activation is not keras.activations.sigmoid:
            raise ValueError(f"layer.recurrent_activation={layer.recurrent_activation!r} is "
                             "not supported; expected 'sigmoid'")
        if names[layer.activation] != "tanh":
            raise ValueError(f"layer.activation={layer.activation!r} is not supported for "
                             f"{type(layer).__name__}; expected 'tanh'")
    return names[layer.activation]


def _perm(h: int) -> np.ndarray:
    """Columns of Keras's GRU gates (z, r, h) in rnn_jax's order (r, z, n); its own inverse."""
    return np.concatenate([np.arange(h, 2 * h), np.arange(h), np.arange(2 * h, 3 * h)])


def from_keras(layer):
    """The rnn_jax cell and params of a built Keras SimpleRNN / LSTM / GRU layer.

    Returns:
      ``(cell, params)``: ``rj.Elman`` / ``rj.LSTM`` / ``rj.GRU`` (``GRUv1`` for
      ``reset_after=False``) with ``hidden_size =
      layer.units`` and the layer's weights (see the module doc), in their dtype. Run with
      ``rj.rnn(cell, params, xs)``: Keras's ``return_sequences`` outputs on real steps and its
      final state, for any mask that is True on a prefix of each sequence.
    """
    kind = _kind(layer)
    activation = _activation(layer)
    if not layer.built:
        raise ValueError(f"layer {layer.name!r} is not built and has no weights yet: call it "
                         "on an input (or layer.build((None, None, input_size))) first")
    weights = layer.get_weights()
    k, r = weights[0], weights[1]
    h = layer.units
    bias = weights[2] if layer.use_bias else np.zeros((2, 3 * h) if kind == "gru"
                                                      else k.shape[1], k.dtype)
    if kind == "gru_v1":
        p = _perm(h)
        params = {"W": k[:, p], "U": r[:, p], "b": bias[p]}
    elif kind == "gru":
        p = _perm(h)
        params = {"W": k[:, p], "U": r[:, p],
                  "b": np.concatenate([bias[0, p[:2 * h]] + bias[1, p[:2 * h]], bias[0, 2 * h:]]),
                  "b_hn": bias[1, 2 * h:]}
    else:
        params = {"W": k, "U": r, "b": bias}
    params = {key: to_jax(v, f"{layer.name} weights") for key, v in params.items()}
    dtype = params["W"].dtype
    if kind == "simple":
        return Elman(h, activation=activation, param_dtype=dtype), params
    return _CELLS[kind](h, param_dtype=dtype), params


_CELLS = {"simple": Elman, "lstm": LSTM, "gru": GRU, "gru_v1": GRUv1}


def to_keras(cell, params, layer):
    """Sets a Keras SimpleRNN / LSTM / GRU layer's weights to rnn_jax's ``params`` of ``cell``.

    The inverse of :func:`from_keras`. An unbuilt layer is built for ``input_size =
    W.shape[0]``; the values are cast to the layer's weight dtype. Returns ``layer``.

    Raises:
      ValueError: the cell's kind, hidden size or activation differs from the layer's; a layer
      with ``use_bias=False`` and nonzero biases in ``params``.
    """
    kind = _kind(layer)
    activation = _activation(layer)
    want = _CELLS[kind]
    if type(cell) is not want or (kind == "simple" and cell.activation != activation):
        raise ValueError(f"cell {cell!r} does not match the {type(layer).__name__} layer "
                         f"(expected rj.{want.__name__}"
                         f"{f' with activation={activation!r}' if kind == 'simple' else ''})")
    if cell.hidden_size != layer.units:
        raise ValueError(f"cell.hidden_size={cell.hidden_size} but layer.units={layer.units}")
    w, u, b = (to_numpy(params[key]) for key in ("W", "U", "b"))
    h = layer.units
    if kind == "gru":
        p = _perm(h)
        b_hn = to_numpy(params["b_hn"])
        bias = np.stack([b[p], np.concatenate([np.zeros(2 * h, b.dtype), b_hn])])
        w, u = w[:, p], u[:, p]
    elif kind == "gru_v1":
        p = _perm(h)
        w, u, bias = w[:, p], u[:, p], b[p]
    else:
        bias = b
    if not layer.use_bias and np.any(bias):
        raise ValueError(f"layer {layer.name!r} has use_bias=False, but params holds nonzero "
                         "biases")
    if not layer.built:
        # Keras's own initialisers broadcast implicitly, which rnn_jax's usual
        # jax_numpy_rank_promotion="raise" would refuse: allow it for Keras's code only.
        with jax.numpy_rank_promotion("allow"):
            layer.build((None, None, w.shape[0]))
    current = layer.get_weights()
    new = [w, u, bias][:len(current)]
    for name, old, value in zip(("kernel", "recurrent_kernel", "bias"), current, new,
                                strict=False):
        if old.shape != value.shape:
            raise ValueError(f"params give {name} the shape {value.shape}, the layer has "
                             f"{old.shape}")
    layer.set_weights([value.astype(old.dtype) for old, value in zip(current, new, strict=True)])
    return layer
