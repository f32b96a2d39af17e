"""Flax linen layers over rnn_jax cells, and flax.linen cells' weights to and from rnn_jax.

    layer = RNN(rj.GRU(64))                          params {"cell": <the cell's params>}
    layer = Bidirectional(fwd_cell, bwd_cell)        params {"fwd": ..., "bwd": ...}
    layer = Stack(cells, bidirectional=True)         params {"layers": <rj.init_stack's list>}
    hs = layer.apply(variables, xs, lengths=None, mask=None)
    hs, carry = layer.apply(variables, xs, carry, return_carry=True)

The parameters are exactly rnn_jax's dicts, so weights from ``interop.torch`` or ``keras`` drop
in, and ``rj.rnn`` on them gives the same numbers. The time loop is a field (``method=``),
because ``Module.apply``'s own ``method`` argument picks the module method to run.

Converters (equations in ``interop.flax_cells``): :func:`from_linen` and :func:`to_linen` for
``nn.SimpleCell``, ``nn.LSTMCell``, ``nn.OptimizedLSTMCell`` (the same parameters as
``LSTMCell``) and ``nn.GRUCell``; :func:`carry_from_flax` / :func:`carry_to_flax` for their carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rnn_jax.interop.arrays import to_jax
from rnn_jax.interop.flax_cells import carry_from_flax, carry_to_flax, check_cell, rj_cell
from rnn_jax.rnn import bidirectional, rnn
from rnn_jax.stack import init_stack, layer_cells, stack

__all__ = ["RNN", "Bidirectional", "Stack", "from_linen", "to_linen", "carry_from_flax",
           "carry_to_flax"]


class RNN(nn.Module):
    """One recurrent layer: ``rj.rnn(cell, params["cell"], xs, carry, ...)`` as a linen module.

    Shapes: ``xs: [*batch, T, I]`` (``[T, *batch, I]`` with ``time_major``) -> ``hs: [*batch, T,
    H]``; ``carry`` as ``cell.initial_carry``. Returns ``hs``, or ``(hs, carry)`` with
    ``return_carry=True`` (the final carry, rnn_jax's order: outputs first).
    """

    cell: Any
    reverse: bool = False
    time_major: bool = False
    unroll: int = 1
    method: str = "auto"

    @nn.compact
    def __call__(self, xs, carry=None, *, lengths=None, mask=None, return_carry=False):
        params = self.param("cell", lambda key: self.cell.init(key, xs.shape[-1]))
        hs, final = rnn(self.cell, params, xs, carry, lengths=lengths, mask=mask,
                        reverse=self.reverse, time_major=self.time_major, unroll=self.unroll,
                        method=self.method)
        return (hs, final) if return_carry else hs


class Bidirectional(nn.Module):
    """``rj.bidirectional`` as a linen module: params ``{"fwd": ..., "bwd": ...}``.

    Shapes: ``hs: [*batch, T, 2H]`` for ``merge="concat"``, ``[*batch, T, H]`` for sum/mean;
    ``carry`` (in and out) is the pair ``(carry_fwd, carry_bwd)``.
    """

    fwd_cell: Any
    bwd_cell: Any
    merge: str = "concat"
    time_major: bool = False
    unroll: int = 1
    method: str = "auto"

    @nn.compact
    def __call__(self, xs, carry=None, *, lengths=None, mask=None, return_carry=False):
        p = {"fwd": self.param("fwd", lambda key: self.fwd_cell.init(key, xs.shape[-1])),
             "bwd": self.param("bwd", lambda key: self.bwd_cell.init(key, xs.shape[-1]))}
        hs, final = bidirectional(self.fwd_cell, self.bwd_cell, p, xs, carry, lengths=lengths,
                                  mask=mask, merge=self.merge, time_major=self.time_major,
                                  unroll=self.unroll, method=self.method)
        return (hs, final) if return_carry else hs


class Stack(nn.Module):
    """``rj.stack`` as a linen module: params ``{"layers": rj.init_stack(...)}``.

    Dropout between layers (``dropout_rate``) is on when called with ``deterministic=False``,
    drawing from the ``"dropout"`` RNG stream. ``carry`` is a list with one carry per layer.
    """

    cells: Any
    num_layers: int | None = None
    bidirectional: bool = False
    merge: str = "concat"
    dropout_rate: float = 0.0
    time_major: bool = False
    unroll: int = 1
    method: str = "auto"

    @nn.compact
    def __call__(self, xs, carry=None, *, lengths=None, mask=None, deterministic=True,
                 return_carry=False):
        cells = layer_cells(self.cells, self.num_layers)
        params = self.param("layers", lambda key: init_stack(
            key, cells, xs.shape[-1], bidirectional=self.bidirectional, merge=self.merge))
        use_dropout = self.dropout_rate > 0 and not deterministic and len(cells) > 1
        hs, finals = stack(cells, list(params), xs, carry, lengths=lengths, mask=mask,
                           bidirectional=self.bidirectional, merge=self.merge,
                           dropout_rate=self.dropout_rate, deterministic=deterministic,
                           key=self.make_rng("dropout") if use_dropout else None,
                           time_major=self.time_major, unroll=self.unroll, method=self.method)
        return (hs, finals) if return_carry else hs


# -- flax.linen cells -------------------------------------------------------------------------
_GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}


def _kind(flax_cell) -> str:
    kinds = {nn.SimpleCell: "simple", nn.LSTMCell: "lstm", nn.OptimizedLSTMCell: "lstm",
             nn.GRUCell: "gru"}
    if type(flax_cell) not in kinds:
        raise TypeError("flax_cell must be a flax.linen SimpleCell, LSTMCell, OptimizedLSTMCell "
                        f"or GRUCell, got {type(flax_cell).__name__}")
    return kinds[type(flax_cell)]


def from_linen(flax_cell, variables):
    """An rnn_jax cell and its params from a flax.linen cell and its variables.

        SimpleCell:  W = i.kernel            U = h.kernel           b = i.bias
        LSTMCell:    W = [ii|if|ig|io].kernel   U = [hi|hf|hg|ho].kernel   b = [hi|..|ho].bias
        GRUCell:     W = [ir|iz|in].kernel   U = [hr|hz|hn].kernel   b = [ir|iz|in].bias,
                     b_hn = hn.bias

    Args:
      flax_cell: the ``nn.SimpleCell`` / ``nn.LSTMCell`` / ``nn.OptimizedLSTMCell`` /
        ``nn.GRUCell`` the variables belong to (it fixes the activation).
      variables: ``flax_cell.init(...)``'s result, or its ``"params"`` (for an ``nn.RNN``, pass
        ``variables["params"]["cell"]``).

    Returns:
      ``(cell, params)``, params in the variables' dtype. Exact: only concatenations.
    """
    kind = _kind(flax_cell)
    fp = variables["params"] if isinstance(variables, Mapping) and "params" in variables \
        else variables
    what = type(flax_cell).__name__

    def get(name, leaf):
        try:
            return to_jax(fp[name][leaf], f"{what} {name}.{leaf}")
        except (KeyError, TypeError):
            raise ValueError(f"variables has no {name}.{leaf}: not the parameters of a {what}"
                             ) from None

    if kind == "simple":
        p = {"W": get("i", "kernel"), "U": get("h", "kernel"), "b": get("i", "bias")}
    else:
        def cat(prefix, leaf):
            return jnp.concatenate([get(prefix + g, leaf) for g in _GATES[kind]], -1)

        p = {"W": cat("i", "kernel"), "U": cat("h", "kernel")}
        if kind == "lstm":
            p["b"] = cat("h", "bias")
        else:
            p["b"], p["b_hn"] = cat("i", "bias"), get("hn", "bias")
    if flax_cell.features != p["U"].shape[0]:
        raise ValueError(f"{what} has features={flax_cell.features}, its variables hold "
                         f"H={p['U'].shape[0]}")
    cell = rj_cell(kind, flax_cell, flax_cell.features)
    return cell, p


def to_linen(cell, params, flax_cell) -> dict:
    """``{"params": ...}`` for ``flax_cell`` (a linen SimpleCell / LSTMCell / OptimizedLSTMCell /
    GRUCell) holding rnn_jax's ``params`` of ``cell``; the inverse of :func:`from_linen`."""
    kind = _kind(flax_cell)
    check_cell(cell, kind, flax_cell.features, type(flax_cell).__name__)
    if kind == "simple":
        return {"params": {"i": {"kernel": params["W"], "bias": params["b"]},
                           "h": {"kernel": params["U"]}}}
    gates = _GATES[kind]
    ws, us, bs = (jnp.split(params[k], len(gates), -1) for k in ("W", "U", "b"))
    out = {}
    for g, w, u, b in zip(gates, ws, us, bs, strict=True):
        out["i" + g] = {"kernel": w} if kind == "lstm" else {"kernel": w, "bias": b}
        out["h" + g] = {"kernel": u, "bias": b} if kind == "lstm" else {"kernel": u}
    if kind == "gru":
        out["hn"]["bias"] = params["b_hn"]
    return {"params": out}
