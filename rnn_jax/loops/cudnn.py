"""cuDNN's LSTM through ``jax.experimental.rnn`` (the path Keras 3 takes on JAX), in our layout.

cuDNN computes, per direction (PyTorch's equations, two biases):

    [i, f, g, o] = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh
    c_t = sigma(f) c_{t-1} + sigma(i) tanh(g),   h_t = sigma(o) tanh(c_t)

so rnn_jax's LSTM (``{"W": [I, 4H], "U": [H, 4H], "b": [4H]}``, gate order i, f, g, o) maps
onto it as ``W_ih = W^T``, ``W_hh = U^T``, ``b_ih = b``, ``b_hh = 0``, packed into cuDNN's flat
weight vector: every direction's ``W_ih, W_hh`` first, then every direction's ``b_ih, b_hh``
(``jax.experimental.rnn``'s module docstring). The packing is built with ``jnp`` operations,
so ``jax.grad`` carries cuDNN's weight gradient back to ``W``, ``U`` and ``b``.

Sequence lengths: cuDNN reads each sequence from its first step to ``length`` (a backward
direction from ``length - 1`` down to 0), the runner's rule for ``lengths``; an arbitrary
``mask`` (left or interior padding) has no cuDNN form. Outputs past a sequence's end are set
to zero here, and a sequence of length 0 keeps its initial carry (cuDNN is given length 1 and
its step discarded). ``reverse=True`` alone reverses each sequence within its length before
and after a forward cuDNN call; ``rnn_jax.bidirectional`` makes one bidirectional call.

Precision: cuDNN takes one flag, TF32 allowed or not. ``jax.default_matmul_precision`` of
``"highest"``/``"float32"`` forbids it; anything else (unset, ``"default"``, ``"high"``, ...)
allows it, as the other paths' default does on a GPU. The flag is passed to
``jax.experimental.rnn.lstm`` explicitly, because left to itself it reads a ``"default"``
context as a request for bfloat16 and raises (measured on the H200: jax 0.11.2).

Supported: exactly ``rj.LSTM`` without ``compute_dtype``, float32 inputs, parameters and carry;
``lengths``; either direction; any batch axes (flattened to one); a GPU with jax's CUDA plugin
(``jax[cuda]``). Not: ``mask``, ``probes``, ``return_carries``, ``remat``, ``vmap`` (the cuDNN
primitive has no batching rule). Off a GPU, ``method="cudnn"`` raises a ValueError rather than
falling back: a caller who names cuDNN (a benchmark, above all) must not get another path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def available() -> bool:
    """Whether jax's CUDA plugin provides cuDNN's RNN (needed even to trace the primitive)."""
    from jax._src.lib import gpu_rnn

    return hasattr(gpu_rnn, "compute_rnn_workspace_reserve_space_sizes")


def unsupported(cell, params, xs, carry, *, mask=None, probes=None, return_carries=False,
                remat=False) -> list[str]:
    """What in a request this path cannot run (empty: it can)."""
    from rnn_jax.cells.lstm import LSTM

    reasons = []
    if type(cell) is not LSTM:
        reasons.append(f"cell type {type(cell).__name__} (only rj.LSTM)")
    elif cell.compute_dtype is not None:
        reasons.append(f"compute_dtype={cell.compute_dtype}")
    dtypes = {jnp.result_type(a) for a in jax.tree.leaves((params, xs, carry))}
    if dtypes - {jnp.dtype(jnp.float32)}:
        reasons.append(f"dtypes {sorted(str(d) for d in dtypes)} (cuDNN's RNN here: float32)")
    for name, value in (("mask (pass lengths)", mask is not None),
                        ("probes", probes is not None), ("return_carries", return_carries),
                        ("remat", remat)):
        if value:
            reasons.append(name)
    return reasons


def flat_weights(directions) -> jax.Array:
    """cuDNN's flat weight vector of a one-layer LSTM from rnn_jax parameters per direction.

    ``[W_ih^0, W_hh^0, (W_ih^1, W_hh^1,) b_ih^0, b_hh^0, (b_ih^1, b_hh^1)]`` with
    ``W_ih = W^T: [4H, I]``, ``W_hh = U^T: [4H, H]``, ``b_ih = b``, ``b_hh = 0`` (each raveled).
    """
    mats = [m for p in directions for m in (p["W"].T.ravel(), p["U"].T.ravel())]
    biases = [v for p in directions for v in (p["b"], jnp.zeros_like(p["b"]))]
    return jnp.concatenate(mats + biases)


def cudnn_lstm(x, h0, c0, weights, seq_lengths, *, input_size, hidden_size, bidirectional):
    """One cuDNN LSTM layer: ``jax.experimental.rnn.lstm`` (batch-first).

    Shapes: x: [B, T, I]; h0, c0: [D, B, H]; seq_lengths: [B] int32
    -> (y: [B, T, D*H], h_n: [D, B, H], c_n: [D, B, H]).
    """
    from jax.experimental import rnn as jrnn

    return jrnn.lstm(x, h0, c0, weights, seq_lengths, input_size=input_size,
                     hidden_size=hidden_size, num_layers=1, dropout=0.0,
                     bidirectional=bidirectional, precision=cudnn_precision())


def cudnn_precision() -> jax.lax.Precision:
    """HIGHEST (no TF32) under a ``"highest"``/``"float32"`` matmul precision, else HIGH (TF32)."""
    p = jax.config.jax_default_matmul_precision
    return jax.lax.Precision.HIGHEST if str(p).lower() in ("highest", "float32") else (
        jax.lax.Precision.HIGH)


def reference_lstm(x, h0, c0, weights, seq_lengths, *, input_size, hidden_size, bidirectional):
    """``cudnn_lstm`` computed by ``jax.experimental.rnn.lstm_ref`` from the same flat weights.

    JAX's own reference for its cuDNN LSTM (a ``lax.scan``), unpacking the flat vector with
    ``unpack_lstm_weights``: it runs anywhere, so it checks the packing and this module's
    handling of lengths and directions on a CPU. Same shapes as :func:`cudnn_lstm`.
    """
    from jax.experimental import rnn as jrnn

    w_ih, w_hh, b_ih, b_hh = jrnn.unpack_lstm_weights(weights, input_size, hidden_size, 1,
                                                      bidirectional)
    return jrnn.lstm_ref(x, h0, c0, w_ih, w_hh, b_ih, b_hh, seq_lengths, input_size,
                         hidden_size, 1, 0.0, bidirectional)


def _reverse_within(x_btf, lengths):
    """Each row's first ``length`` steps reversed, the padding left in place. [B, T, F]."""
    t = jnp.arange(x_btf.shape[1])[None, :]
    idx = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return jnp.take_along_axis(x_btf, idx[..., None], axis=1)


def _layer(directions, xs_tm, carries, lengths, *, reverse, lstm):
    """Runs one cuDNN call for 1 or 2 directions; returns per direction (hs_tm, (h, c))."""
    num_steps, batch_shape = xs_tm.shape[0], tuple(xs_tm.shape[1:-1])
    size = 1
    for n in batch_shape:
        size *= n
    hidden = directions[0]["U"].shape[0]
    x = jnp.moveaxis(xs_tm.reshape(num_steps, size, xs_tm.shape[-1]), 0, 1)  # [B, T, I]
    if lengths is None:
        lens = jnp.full((size,), num_steps, jnp.int32)
    else:
        lens = jnp.clip(jnp.asarray(lengths).reshape(size).astype(jnp.int32), 0, num_steps)
    h0 = jnp.stack([c[0].reshape(size, hidden) for c in carries])
    c0 = jnp.stack([c[1].reshape(size, hidden) for c in carries])
    # cuDNN is not asked about empty sequences: length 1, then the step is discarded below
    run_lens = jnp.maximum(lens, 1)
    if reverse:
        x = _reverse_within(x, run_lens)
    y, h_n, c_n = lstm(x, h0, c0, flat_weights(directions), run_lens,
                       input_size=xs_tm.shape[-1], hidden_size=hidden,
                       bidirectional=len(directions) == 2)
    if reverse:
        y = _reverse_within(y, run_lens)
    real = jnp.arange(num_steps)[None, :, None] < lens[:, None, None]  # [B, T, 1]
    y = jnp.where(real, y, jnp.zeros_like(y))
    empty = (lens == 0)[None, :, None]
    h_n, c_n = jnp.where(empty, h0, h_n), jnp.where(empty, c0, c_n)
    out = []
    for d in range(len(directions)):
        hs = jnp.moveaxis(y[..., d * hidden:(d + 1) * hidden], 1, 0)
        final = (h_n[d].reshape(*batch_shape, hidden), c_n[d].reshape(*batch_shape, hidden))
        out.append((hs.reshape(num_steps, *batch_shape, hidden), final))
    return out


def run(params, xs_tm, carry, lengths=None, *, reverse=False, lstm=None):
    """An LSTM over time-major inputs with cuDNN; the runner has validated every argument.

    Shapes: xs_tm: [T, *batch, I]; carry: ([*batch, H], [*batch, H]); lengths: [*batch] or
    None -> (hs: [T, *batch, H], final carry). ``lstm``: :func:`cudnn_lstm` (None) or
    :func:`reference_lstm`.
    """
    ((hs, final),) = _layer([params], xs_tm, [carry], lengths, reverse=reverse,
                            lstm=lstm or cudnn_lstm)
    return hs, final


def run_bidirectional(params, xs_tm, carries, lengths=None, *, lstm=None):
    """Both directions in one cuDNN call (``params = {"fwd", "bwd"}``, carries a pair).

    Shapes as :func:`run`; returns ``((hs_fwd, final_fwd), (hs_bwd, final_bwd))``, the backward
    outputs aligned with the input positions.
    """
    fwd, bwd = _layer([params["fwd"], params["bwd"]], xs_tm, list(carries), lengths,
                      reverse=False, lstm=lstm or cudnn_lstm)
    return fwd, bwd
