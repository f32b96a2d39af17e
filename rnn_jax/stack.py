"""Stacked (deep) recurrent layers, uni- or bidirectional, with dropout between layers.

    h^0_t = x_t,    h^l = RNN_l(h^{l-1})  (or BiRNN_l),    l = 1..L
    between layers, in training: h^l <- dropout(h^l, p)   (Zaremba, Sutskever, Vinyals 2014)

Every layer is run by :func:`rnn_jax.rnn.rnn`, so masks, ``reverse``, ``unroll`` and ``remat``
mean the same here. Dropout is inverted (kept units scaled by 1/(1-p)), drawn from an explicit
key, and off when ``deterministic=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from rnn_jax.cells.base import check_number
from rnn_jax.cells.validation import check_bool, check_cell, check_params, check_xs
from rnn_jax.rnn import MERGES, rnn
from rnn_jax.rnn import bidirectional as birnn


def layer_cells(cells, num_layers: int | None = None) -> tuple:
    """Normalises ``cells`` to a tuple of cells: one cell repeated ``num_layers`` times, or a list.

    For a bidirectional stack each entry is a cell used for both directions, or a pair
    ``(fwd_cell, bwd_cell)``.
    """
    if isinstance(cells, Sequence) and not isinstance(cells, str):
        cells = tuple(cells)
        if not cells:
            raise ValueError("cells must not be empty")
        if num_layers is not None and num_layers != len(cells):
            raise ValueError(
                f"num_layers={num_layers} does not match the {len(cells)} cells given"
            )
        return cells
    n = 1 if num_layers is None else num_layers
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
    return (cells,) * n


def _pair(cell):
    return tuple(cell) if isinstance(cell, tuple) else (cell, cell)


def output_size(cells, *, bidirectional: bool = False, merge: str = "concat") -> int:
    """Feature size of the stack's output: H of the top layer (2H for a concat BiRNN)."""
    top = _pair(layer_cells(cells)[-1])[0] if bidirectional else layer_cells(cells)[-1]
    return top.hidden_size * (2 if bidirectional and merge == "concat" else 1)


def init_stack(key, cells, input_size: int, *, num_layers: int | None = None,
               bidirectional: bool = False, merge: str = "concat") -> list:
    """Parameters of every layer: a list (``{"fwd", "bwd"}`` dicts when bidirectional)."""
    if merge not in MERGES:
        raise ValueError(f"merge={merge!r} is not supported; expected one of {MERGES}")
    params, size = [], input_size
    for k, cell in zip(jax.random.split(key, len(layer_cells(cells, num_layers))),
                       layer_cells(cells, num_layers), strict=True):
        if bidirectional:
            c_f, c_b = _pair(cell)
            k_f, k_b = jax.random.split(k)
            params.append({"fwd": c_f.init(k_f, size), "bwd": c_b.init(k_b, size)})
            size = c_f.hidden_size * (2 if merge == "concat" else 1)
        else:
            params.append(cell.init(k, size))
            size = cell.hidden_size
    return params


def dropout(key, x, rate: float):
    """Inverted dropout: zero each entry with probability ``rate``, scale the rest by 1/(1-rate)."""
    if rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _check_layers(cells, params, xs, bidirectional, merge, time_major):
    """Every layer's cell and params, before any layer runs; the first layer's input is xs."""
    size = None
    for layer, (cell, p) in enumerate(zip(cells, params, strict=True)):
        if bidirectional:
            pair = _pair(cell)
            if len(pair) != 2:
                raise ValueError(f"cells[{layer}] must be a cell or a (fwd, bwd) pair of cells, "
                                 f"got {len(pair)} entries")
            if not isinstance(p, dict) or set(p) != {"fwd", "bwd"}:
                got = sorted(p) if isinstance(p, dict) else type(p).__name__
                raise ValueError(f"params[{layer}] must be a dict with keys 'fwd' and 'bwd' "
                                 f"(bidirectional=True), got {got}")
            named = [(c, p[d], f"params[{layer}]['{d}']")
                     for d, c in zip(("fwd", "bwd"), pair, strict=True)]
        else:
            named = [(cell, p, f"params[{layer}]")]
        for c, p_c, name in named:
            check_cell(c, f"cells[{layer}]")
            if size is None:  # the first layer reads xs: a feature mismatch names xs
                check_xs(c, p_c, xs, time_major)
            check_params(c, p_c, xs.shape[-1] if size is None else size, name)
        size = (sum(c.hidden_size for c, _, _ in named) if merge == "concat"
                else named[0][0].hidden_size)


def stack(cells, params, xs, carries=None, *, num_layers: int | None = None, lengths=None,
          mask=None, bidirectional: bool = False, merge: str = "concat", dropout_rate=0.0,
          key=None, deterministic: bool = True, time_major: bool = False, unroll=1,
          remat: bool = False, reverse: bool = False, method: str = "auto"):
    """Runs a stack of recurrent layers; returns the top layer's outputs and every final carry.

    Args:
      cells: one cell (with ``num_layers``) or a sequence of cells, one per layer.
      params: from :func:`init_stack`.
      carries: optional list of initial carries, one per layer.
      dropout_rate: dropout probability between layers (not after the last).
      key: PRNG key for dropout; required when ``dropout_rate > 0`` and not ``deterministic``.
      Everything else as in :func:`rnn_jax.rnn.rnn` / :func:`rnn_jax.rnn.bidirectional`.

    Returns:
      ``(hs, carries)``: ``hs: [*batch, T, H_top]`` (``2H`` for a concat BiRNN), ``carries``
      a list with each layer's final carry.
    """
    cells = layer_cells(cells, num_layers)
    bidirectional = check_bool("bidirectional", bidirectional)
    deterministic = check_bool("deterministic", deterministic)
    time_major, reverse = check_bool("time_major", time_major), check_bool("reverse", reverse)
    if not isinstance(params, Sequence) or len(params) != len(cells):
        got = len(params) if isinstance(params, Sequence) else type(params).__name__
        raise ValueError(
            f"params must be a list with one entry per layer ({len(cells)}), got {got}")
    if merge not in MERGES:
        raise ValueError(f"merge={merge!r} is not supported; expected one of {MERGES}")
    _check_layers(cells, params, xs, bidirectional, merge, time_major)
    check_number("dropout_rate", dropout_rate)
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must lie in [0, 1), got {dropout_rate}")
    use_dropout = dropout_rate > 0.0 and not deterministic and len(cells) > 1
    if use_dropout and key is None:
        raise ValueError(
            "key is required for dropout when deterministic=False and dropout_rate > 0")
    if carries is not None and len(carries) != len(cells):
        raise ValueError(
            f"carries must have one entry per layer ({len(cells)}), got {len(carries)}")
    keys = jax.random.split(key, len(cells)) if use_dropout else [None] * len(cells)
    h, finals = xs, []
    for layer, (cell, p) in enumerate(zip(cells, params, strict=True)):
        c0 = None if carries is None else carries[layer]
        kw = dict(lengths=lengths, mask=mask, time_major=time_major, unroll=unroll, remat=remat,
                  method=method)
        if bidirectional:
            c_f, c_b = _pair(cell)
            h, final = birnn(c_f, c_b, p, h, c0, merge=merge, **kw)
        else:
            h, final = rnn(cell, p, h, c0, reverse=reverse, **kw)
        finals.append(final)
        if use_dropout and layer < len(cells) - 1:
            h = dropout(keys[layer], h, dropout_rate)
    return h, finals

