"""Flax NNX layers over rnn_jax cells, and NNX's own cells' weights to and from rnn_jax.

    layer = RNN(rj.GRU(64), input_size, rngs=nnx.Rngs(0))   # nnx.Param attributes W, U, b, b_hn
    layer = Bidirectional(fwd_cell, bwd_cell, input_size, rngs=...)   # .fwd, .bwd: RNN layers
    layer = Stack(cells, input_size, rngs=..., bidirectional=True)    # .layers
    hs = layer(xs, lengths=None, mask=None)
    hs, carry = layer(xs, carry, return_carry=True)

Each ``nnx.Param`` is named after its rnn_jax key, so ``layer.params`` is the rnn_jax dict
(``Stack``: ``rj.init_stack``'s list), and ``params=`` builds a layer around weights brought from
elsewhere (``interop.torch``, ``keras``, ``linen``). Train with ``nnx.Optimizer(layer, tx,
wrt=nnx.Param)``.

Converters (equations in ``interop.flax_cells``): :func:`from_nnx` / :func:`to_nnx` for
``nnx.SimpleCell``, ``nnx.LSTMCell``, ``nnx.OptimizedLSTMCell`` and ``nnx.GRUCell``. NNX's
GRUCell has no ``b_hn``: it comes in as zeros and must be zero to go out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnn_jax.interop.arrays import to_jax
from rnn_jax.interop.flax_cells import carry_from_flax, carry_to_flax, check_cell, rj_cell
from rnn_jax.rnn import MERGES, bidirectional, rnn
from rnn_jax.stack import layer_cells

__all__ = ["RNN", "Bidirectional", "Stack", "from_nnx", "to_nnx", "carry_from_flax",
           "carry_to_flax"]


def _check_params(cell, params, input_size):
    """``params`` has the keys and shapes ``cell.init(key, input_size)`` would give."""
    want = {k: v.shape for k, v in jax.eval_shape(
        lambda: cell.init(jax.random.key(0), input_size)).items()}
    got = ({k: np.shape(v) for k, v in params.items()} if isinstance(params, dict)
           else type(params).__name__)
    if got != want:
        raise ValueError(f"params must be {type(cell).__name__} params for input_size="
                         f"{input_size} with shapes {want}, got {got}")


class RNN(nnx.Module):
    """One recurrent layer with ``nnx.Param`` attributes named after the cell's params.

        hs, carry = rj.rnn(cell, {"W": W, "U": U, "b": b, ...}, xs, carry, ...)

    Args:
      cell: an rnn_jax cell. input_size: I.
      rngs: ``nnx.Rngs`` (its ``params`` stream initialises the weights).
      params: optional existing rnn_jax params (then ``rngs`` may be omitted).
      reverse, time_major, unroll, method: as in ``rj.rnn``.

    Shapes: ``xs: [*batch, T, I]`` -> ``hs: [*batch, T, H]``.
    """

    def __init__(self, cell, input_size: int, *, rngs: nnx.Rngs | None = None, params=None,
                 reverse: bool = False, time_major: bool = False, unroll: int = 1,
                 method: str = "auto"):
        if params is None:
            if rngs is None:
                raise ValueError("rngs is required when params is not given")
            params = cell.init(rngs.params(), input_size)
        else:
            _check_params(cell, params, input_size)
        self.cell, self.names = cell, tuple(params)
        self.reverse, self.time_major, self.unroll, self.method = (reverse, time_major, unroll,
                                                                   method)
        for name, value in params.items():
            setattr(self, name, nnx.Param(jnp.asarray(value)))

    @property
    def params(self) -> dict:
        """The rnn_jax params dict (the current values of the ``nnx.Param`` attributes)."""
        return {name: getattr(self, name)[...] for name in self.names}

    def __call__(self, xs, carry=None, *, lengths=None, mask=None, return_carry=False):
        hs, final = rnn(self.cell, self.params, xs, carry, lengths=lengths, mask=mask,
                        reverse=self.reverse, time_major=self.time_major, unroll=self.unroll,
                        method=self.method)
        return (hs, final) if return_carry else hs


class Bidirectional(nnx.Module):
    """``rj.bidirectional`` as an NNX module: ``.fwd`` and ``.bwd`` are :class:`RNN` layers.

    ``params`` (in and out) is ``{"fwd": ..., "bwd": ...}``; ``carry`` the pair ``(carry_fwd,
    carry_bwd)``. Shapes: ``hs: [*batch, T, 2H]`` for ``merge="concat"``, else ``[*batch, T, H]``.
    """

    def __init__(self, fwd_cell, bwd_cell, input_size: int, *, rngs: nnx.Rngs | None = None,
                 params=None, merge: str = "concat", time_major: bool = False, unroll: int = 1,
                 method: str = "auto"):
        if merge not in MERGES:
            raise ValueError(f"merge={merge!r} is not supported; expected one of {MERGES}")
        if params is not None and (not isinstance(params, dict) or set(params) != {"fwd", "bwd"}):
            raise ValueError("params must be a dict with keys 'fwd' and 'bwd', got "
                             f"{sorted(params) if isinstance(params, dict) else params!r}")
        kw = dict(rngs=rngs, time_major=time_major, unroll=unroll, method=method)
        p_f, p_b = (None, None) if params is None else (params["fwd"], params["bwd"])
        self.fwd = RNN(fwd_cell, input_size, params=p_f, **kw)
        self.bwd = RNN(bwd_cell, input_size, params=p_b, reverse=True, **kw)
        self.merge, self.time_major, self.unroll, self.method = merge, time_major, unroll, method

    @property
    def params(self) -> dict:
        return {"fwd": self.fwd.params, "bwd": self.bwd.params}

    def __call__(self, xs, carry=None, *, lengths=None, mask=None, return_carry=False):
        hs, final = bidirectional(self.fwd.cell, self.bwd.cell, self.params, xs, carry,
                                  lengths=lengths, mask=mask, merge=self.merge,
                                  time_major=self.time_major, unroll=self.unroll,
                                  method=self.method)
        return (hs, final) if return_carry else hs


class Stack(nnx.Module):
    """Stacked layers (``rj.stack``) as an NNX module; ``.layers`` holds RNN or Bidirectional.

    ``params`` (in and out) has ``rj.init_stack``'s layout, so ``from_torch``'s drop in.
    Dropout between layers (``dropout_rate``) is on with ``deterministic=False`` and draws from
    the ``dropout`` stream of the constructor's ``rngs`` (or of the call's ``rngs``).
    """

    def __init__(self, cells, input_size: int, *, rngs: nnx.Rngs | None = None, params=None,
                 num_layers: int | None = None, bidirectional: bool = False,
                 merge: str = "concat", dropout_rate: float = 0.0, time_major: bool = False,
                 unroll: int = 1, method: str = "auto"):
        cells = layer_cells(cells, num_layers)
        if params is not None and (not isinstance(params, list | tuple)
                                   or len(params) != len(cells)):
            raise ValueError(f"params must be a list with one entry per layer ({len(cells)}), "
                             f"got {type(params).__name__}")
        kw = dict(rngs=rngs, time_major=time_major, unroll=unroll, method=method)
        layers, size = [], input_size
        for i, cell in enumerate(cells):
            p = None if params is None else params[i]
            if bidirectional:
                c_f, c_b = tuple(cell) if isinstance(cell, tuple) else (cell, cell)
                layers.append(Bidirectional(c_f, c_b, size, params=p, merge=merge, **kw))
                size = c_f.hidden_size * (2 if merge == "concat" else 1)
            else:
                layers.append(RNN(cell, size, params=p, **kw))
                size = cell.hidden_size
        self.layers = nnx.List(layers)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

    @property
    def params(self) -> list:
        return [layer.params for layer in self.layers]

    def __call__(self, xs, carry=None, *, lengths=None, mask=None, deterministic=True,
                 rngs=None, return_carry=False):
        if carry is not None and len(carry) != len(self.layers):
            raise ValueError(f"carry must have one entry per layer ({len(self.layers)}), "
                             f"got {len(carry)}")
        h, finals = xs, []
        for i, layer in enumerate(self.layers):
            h, final = layer(h, None if carry is None else carry[i], lengths=lengths, mask=mask,
                             return_carry=True)
            finals.append(final)
            if i < len(self.layers) - 1 and self.dropout.rate > 0 and not deterministic:
                h = self.dropout(h, deterministic=False, rngs=rngs)
        return (h, finals) if return_carry else h


# -- NNX's own cells ----------------------------------------------------------------------
def _kind(nnx_cell) -> str:
    kinds = {nnx.SimpleCell: "simple", nnx.LSTMCell: "lstm", nnx.OptimizedLSTMCell: "lstm",
             nnx.GRUCell: "gru"}
    if type(nnx_cell) not in kinds:
        raise TypeError("nnx_cell must be a flax.nnx SimpleCell, LSTMCell, OptimizedLSTMCell or "
                        f"GRUCell, got {type(nnx_cell).__name__}")
    return kinds[type(nnx_cell)]


_LSTM_PARTS = (("ii", "hi"), ("if_", "hf"), ("ig", "hg"), ("io", "ho"))


def _variables(nnx_cell) -> dict:
    """rnn_jax key -> a list of (nnx Variable, column slice) that hold it, in gate order."""
    kind, h = _kind(nnx_cell), nnx_cell.hidden_features
    if kind == "lstm" and isinstance(nnx_cell, nnx.LSTMCell):
        w, u, b = [], [], []
        for g, (i_name, h_name) in enumerate(_LSTM_PARTS):
            cols = slice(g * h, (g + 1) * h)
            w.append((getattr(nnx_cell, i_name).kernel, cols))
            u.append((getattr(nnx_cell, h_name).kernel, cols))
            b.append((getattr(nnx_cell, h_name).bias, cols))
        return {"W": w, "U": u, "b": b}
    full = slice(None)
    bias = nnx_cell.dense_h.bias if kind == "lstm" else nnx_cell.dense_i.bias
    return {"W": [(nnx_cell.dense_i.kernel, full)], "U": [(nnx_cell.dense_h.kernel, full)],
            "b": [(bias, full)]}


def from_nnx(nnx_cell):
    """An rnn_jax cell and its params from an NNX cell (exact: only concatenations).

        SimpleCell / GRUCell:   W = dense_i.kernel   U = dense_h.kernel   b = dense_i.bias
                                (GRUCell: b_hn = 0)
        OptimizedLSTMCell:      W = dense_i.kernel   U = dense_h.kernel   b = dense_h.bias
        LSTMCell:               W = [ii|if_|ig|io].kernel  U = [hi|hf|hg|ho].kernel
                                b = [hi|hf|hg|ho].bias
    """
    kind = _kind(nnx_cell)
    what = type(nnx_cell).__name__
    params = {key: jnp.concatenate([to_jax(v[...], f"{what} {key}") for v, _ in parts], -1)
              for key, parts in _variables(nnx_cell).items()}
    if kind == "gru":
        params["b_hn"] = jnp.zeros((nnx_cell.hidden_features,), params["b"].dtype)
    return rj_cell(kind, nnx_cell, nnx_cell.hidden_features), params


def to_nnx(cell, params, nnx_cell):
    """Writes rnn_jax's ``params`` of ``cell`` into ``nnx_cell`` in place; returns ``nnx_cell``.

    The inverse of :func:`from_nnx`. Raises ValueError for a GRU with nonzero ``b_hn`` (NNX's
    GRUCell has no such bias), a cell of another kind or size, or shapes that do not fit.
    """
    kind = _kind(nnx_cell)
    what = type(nnx_cell).__name__
    check_cell(cell, kind, nnx_cell.hidden_features, what)
    if kind == "gru" and np.any(np.asarray(params["b_hn"])):
        raise ValueError(f"params['b_hn'] is nonzero, but nnx.{what} has no b_hn "
                         "(n = tanh(x K_in + b_in + r * h K_hn)): not representable")
    writes = []
    for key, parts in _variables(nnx_cell).items():
        value = jnp.asarray(params[key])
        shapes = [v[...].shape for v, _ in parts]
        if value.shape != (*shapes[0][:-1], sum(s[-1] for s in shapes)):
            raise ValueError(f"params[{key!r}] has shape {value.shape}, which does not fit "
                             f"nnx.{what}")
        writes.extend((v, value[..., cols]) for v, cols in parts)
    for v, value in writes:  # only once every shape is checked: no half-written cell
        v[...] = value.astype(v[...].dtype)
    return nnx_cell
