"""PyTorch's nn.RNN / nn.LSTM / nn.GRU in rnn_jax: weights and final states, both ways.

For every layer l and direction (suffix ``_l{l}`` or ``_l{l}_reverse``), torch computes each
gate as ``x W_ih^T + b_ih + h W_hh^T + b_hh``, with the gate order rnn_jax uses (LSTM i, f, g, o;
GRU r, z, n). Hence

    W = weight_ih^T      U = weight_hh^T      b = bias_ih + bias_hh
    GRU:  b = [b_ih,r + b_hh,r ; b_ih,z + b_hh,z ; b_ih,n]     b_hn = b_hh,n

since the GRU candidate n = tanh(x W_n + b_in + r * (h U_n + b_hn)) keeps b_hn inside the reset
product. Back to torch: ``bias_ih = b`` and ``bias_hh = 0`` (GRU: ``[0 ; 0 ; b_hn]``).

Merging the biases is *function-equal but not training-equal*: torch trains two copies of every
merged bias, so its bias gradient is in effect doubled (each copy gets dL/db) and weight decay
acts on both copies; a model trained here from the merged ``b`` follows a different trajectory
than the torch module would, from the same start.

Final states: torch's ``h_n`` (and the LSTM's ``c_n``) is ``[L * D, B, H]``, index
``layer * D + direction``; :func:`states_to_torch` and :func:`states_from_torch` convert it
to and from the per-layer carries of :func:`rnn_jax.stack` (a ``(fwd, bwd)`` pair per layer when
bidirectional; an LSTM carry is ``(h, c)``).

PyTorch is imported only when a function here needs it (the ``torch`` extra).
"""

from __future__ import annotations

import importlib

import jax.numpy as jnp
import numpy as np

from rnn_jax.cells import GRU, LSTM, Elman, torch_like
from rnn_jax.interop.arrays import to_jax, to_numpy

MODES = {"RNN_TANH": (Elman, "tanh"), "RNN_RELU": (Elman, "relu"), "LSTM": (LSTM, None),
         "GRU": (GRU, None)}


def _torch():
    try:
        return importlib.import_module("torch")
    except ImportError as e:  # depends on the environment
        raise ImportError("rnn_jax.interop.torch needs PyTorch: pip install 'rnn_jax[torch]'"
                          ) from e


def _suffixes(num_layers: int, bidirectional: bool) -> list[list[str]]:
    dirs = ("", "_reverse") if bidirectional else ("",)
    return [[f"_l{layer}{d}" for d in dirs] for layer in range(num_layers)]


def _tensor_to_numpy(t) -> np.ndarray:
    torch = _torch()
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:  # NumPy has no bfloat16: go through float32 (exact)
            return np.asarray(jnp.asarray(t.float().numpy(), jnp.bfloat16))
        return t.numpy()
    return np.asarray(t)


def _numpy_to_tensor(a):
    torch = _torch()
    a = to_numpy(a)
    if a.dtype == jnp.bfloat16:
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(a)


def _check_module(module):
    torch = _torch()
    kinds = (torch.nn.RNN, torch.nn.LSTM, torch.nn.GRU)
    if not isinstance(module, kinds):
        raise TypeError(f"module must be a torch.nn.RNN, LSTM or GRU, got {type(module).__name__}")
    if getattr(module, "proj_size", 0):
        raise ValueError(f"module has proj_size={module.proj_size}: an LSTM with projections "
                         "(weight_hr) is not representable by rj.LSTM; use proj_size=0")
    if module.mode not in MODES:
        raise ValueError(f"module.mode={module.mode!r} is not supported; expected one of "
                         f"{sorted(MODES)}")


def from_torch(module):
    """The cells and parameters of a torch recurrent module (see the module doc for the map).

    Args:
      module: ``torch.nn.RNN`` (tanh or relu), ``torch.nn.LSTM`` or ``torch.nn.GRU``, any
        ``num_layers``, uni- or bidirectional, with or without biases (``bias=False`` gives
        zero biases), ``batch_first`` either way (it does not touch the weights).

    Returns:
      ``(cells, params)``: ``cells`` a list with one cell per layer (a ``(fwd, bwd)`` pair when
      bidirectional), initialised like torch if re-initialised (``rj.torch_like``); ``params``
      in ``rj.init_stack``'s layout (a list; ``{"fwd", "bwd"}`` dicts when bidirectional), in
      the module's dtype. Run it with ``rj.stack(cells, params, xs,
      bidirectional=module.bidirectional)`` (``time_major=not module.batch_first``); the
      module's inter-layer ``dropout`` is ``rj.stack``'s ``dropout_rate``.

    Raises:
      ValueError: ``proj_size > 0``; a float64 module while JAX's x64 mode is off.
    """
    _check_module(module)
    cls, activation = MODES[module.mode]
    h = module.hidden_size
    tensors = dict(module.named_parameters())
    dtype = _tensor_to_numpy(next(iter(tensors.values()))).dtype
    kw = {"activation": activation} if activation else {}
    cell = torch_like(cls, h, param_dtype=dtype, **kw)

    def one(suffix):
        def get(name):
            return _tensor_to_numpy(tensors[name + suffix])

        w_ih, w_hh = get("weight_ih"), get("weight_hh")
        if module.bias:
            b_ih, b_hh = get("bias_ih"), get("bias_hh")
        else:
            b_ih = b_hh = np.zeros(w_ih.shape[0], w_ih.dtype)
        p = {"W": w_ih.T, "U": w_hh.T, "b": b_ih + b_hh}
        if cls is GRU:
            p["b"] = np.concatenate([b_ih[:2 * h] + b_hh[:2 * h], b_ih[2 * h:]])
            p["b_hn"] = b_hh[2 * h:]
        return {k: to_jax(v, f"{module.mode} weights{suffix}") for k, v in p.items()}

    cells, params = [], []
    for sufs in _suffixes(module.num_layers, module.bidirectional):
        if module.bidirectional:
            cells.append((cell, cell))
            params.append({"fwd": one(sufs[0]), "bwd": one(sufs[1])})
        else:
            cells.append(cell)
            params.append(one(sufs[0]))
    return cells, params


def _mode(cell) -> str:
    if type(cell) is Elman and cell.activation in ("tanh", "relu"):
        return f"RNN_{cell.activation.upper()}"
    if type(cell) is LSTM:
        return "LSTM"
    if type(cell) is GRU and getattr(cell, "reset_after", True):
        return "GRU"
    raise ValueError(f"cells: {cell!r} has no torch counterpart; expected rj.Elman (tanh or "
                     "relu), rj.LSTM or rj.GRU")


def _layer_directions(cells, params, bidirectional):
    """[(cell, params) per direction] per layer, checked against torch's single-module shape."""
    if isinstance(cells, (Elman, LSTM, GRU)) or not isinstance(cells, (list, tuple)):
        raise TypeError(f"cells must be a list with one cell per layer, got {type(cells).__name__}")
    if not isinstance(params, (list, tuple)) or len(params) != len(cells):
        got = len(params) if isinstance(params, (list, tuple)) else type(params).__name__
        raise ValueError(f"params must be a list with one entry per layer ({len(cells)}), "
                         f"got {got}")
    layers = []
    for layer, (c, p) in enumerate(zip(cells, params, strict=True)):
        if bidirectional:
            pair = tuple(c) if isinstance(c, (tuple, list)) else (c, c)
            if not isinstance(p, dict) or set(p) != {"fwd", "bwd"}:
                raise ValueError(f"params[{layer}] must be a dict with keys 'fwd' and 'bwd' "
                                 "(bidirectional=True), got "
                                 f"{sorted(p) if isinstance(p, dict) else type(p).__name__}")
            layers.append([(pair[0], p["fwd"]), (pair[1], p["bwd"])])
        else:
            if isinstance(c, (tuple, list)):
                raise ValueError(f"cells[{layer}] is a pair but bidirectional=False")
            layers.append([(c, p)])
    flat = [cp for layer in layers for cp in layer]
    modes = {_mode(c) for c, _ in flat}
    sizes = {c.hidden_size for c, _ in flat}
    if len(modes) != 1 or len(sizes) != 1:
        raise ValueError("cells: a torch module has one cell type and one hidden size for all "
                         f"layers, got types {sorted(modes)} and hidden sizes {sorted(sizes)}")
    h, d = sizes.pop(), 2 if bidirectional else 1
    for layer, dirs in enumerate(layers[1:], start=1):
        for _, p in dirs:
            rows = np.shape(p["W"])[0]
            if rows != d * h:
                raise ValueError(
                    f"params[{layer}]['W'] has {rows} input rows; torch's layer {layer} reads "
                    f"the {d * h} features of the layer below (bidirectional layers merged by "
                    "concat): other merges are not representable")
    return layers, modes.pop(), h


def to_torch(cells, params, bidirectional: bool = False, *, bias: bool = True) -> dict:
    """A torch state dict for ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` from rnn_jax cells and params.

        weight_ih = W^T   weight_hh = U^T   bias_ih = b   bias_hh = 0  (GRU: [0 ; 0 ; b_hn])

    Args:
      cells, params: as :func:`from_torch` returns them (``rj.init_stack``'s layout).
      bidirectional: whether ``params`` holds ``{"fwd", "bwd"}`` per layer.
      bias: ``False`` for a module built with ``bias=False``; then every bias must be zero.

    Returns:
      A dict of torch tensors (in the params' dtype) that the module built with the same
      ``input_size``, ``hidden_size``, ``num_layers``, ``bidirectional`` and ``bias`` accepts with
      ``load_state_dict(..., strict=True)``. This map also carries gradients: ``to_torch(cells,
      grads)`` gives ``dW^T`` etc. (torch's ``bias_hh`` gradient equals ``bias_ih``'s on every
      merged slice).

    Raises:
      ValueError: a cell without a torch counterpart (identity Elman, minGRU, LRU, ...), mixed
      cell types or hidden sizes, layers not merged by concat, nonzero biases with ``bias=False``.
    """
    layers, mode, h = _layer_directions(cells, params, bidirectional)
    out = {}
    for layer, (dirs, sufs) in enumerate(zip(layers, _suffixes(len(layers), bidirectional),
                                             strict=True)):
        for (_, p), s in zip(dirs, sufs, strict=True):
            w, u, b = (to_numpy(p[k]) for k in ("W", "U", "b"))
            b_hh = np.zeros_like(b)
            if mode == "GRU":
                b_hh[2 * h:] = to_numpy(p["b_hn"])
            if not bias and (np.any(b) or np.any(b_hh)):
                raise ValueError(f"params[{layer}] has nonzero biases, which a module with "
                                 "bias=False cannot hold; pass bias=True")
            out["weight_ih" + s] = _numpy_to_tensor(np.ascontiguousarray(w.T))
            out["weight_hh" + s] = _numpy_to_tensor(np.ascontiguousarray(u.T))
            if bias:
                out["bias_ih" + s] = _numpy_to_tensor(b)
                out["bias_hh" + s] = _numpy_to_tensor(b_hh)
    return out


def states_to_torch(carries, bidirectional: bool = False):
    """Per-layer final carries (``rj.stack``'s) -> torch's ``h_n`` (LSTM: ``(h_n, c_n)``).

    Shapes: each carry ``[*batch, H]`` -> ``[L * D, *batch, H]``, index ``layer * D + direction``;
    torch tensors in the carries' dtype.
    """
    if not isinstance(carries, (list, tuple)) or not carries:
        raise ValueError(f"carries must be a non-empty list with one carry per layer, got "
                         f"{type(carries).__name__}")
    flat = []
    for layer, c in enumerate(carries):
        if bidirectional and not (isinstance(c, tuple) and len(c) == 2):
            raise ValueError(f"carries[{layer}] must be a (fwd, bwd) pair (bidirectional=True)")
        flat.extend(c if bidirectional else (c,))
    if isinstance(flat[0], tuple):  # LSTM: (h, c)
        return tuple(_numpy_to_tensor(np.stack([to_numpy(d[i]) for d in flat])) for i in (0, 1))
    return _numpy_to_tensor(np.stack([to_numpy(d) for d in flat]))


def states_from_torch(state, bidirectional: bool = False) -> list:
    """torch's ``h_n`` (LSTM: the pair ``(h_n, c_n)``) -> per-layer carries for ``rj.stack``.

    Shapes: ``[L * D, *batch, H]`` -> a list of ``L`` carries ``[*batch, H]`` (a ``(fwd, bwd)``
    pair when bidirectional; ``(h, c)`` for the LSTM), JAX arrays in the state's dtype.
    """
    parts = tuple(state) if isinstance(state, (tuple, list)) else (state,)
    if len(parts) not in (1, 2):
        raise ValueError(f"state must be h_n or the LSTM pair (h_n, c_n), got {len(parts)} parts")
    arrays = [to_jax(_tensor_to_numpy(x), "state") for x in parts]
    d = 2 if bidirectional else 1
    n = arrays[0].shape[0] if arrays[0].ndim >= 2 else 0
    if n == 0 or n % d or any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"state must be [L * D, *batch, H] with D={d}, got shapes "
                         f"{[tuple(a.shape) for a in arrays]}")

    def carry(k):
        return (arrays[0][k], arrays[1][k]) if len(arrays) == 2 else arrays[0][k]

    return [tuple(carry(layer * d + j) for j in range(d)) if bidirectional else carry(layer)
            for layer in range(n // d)]
