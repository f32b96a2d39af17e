"""method="cudnn" lowers for CUDA on a CPU: the train step holds cuDNN's forward and backward.

cuDNN's RNN needs jax's CUDA plugin twice before any GPU runs: to size its workspace (at
tracing) and to build its descriptor (at lowering). Without the plugin both are stood in here
(a fixed workspace size, an empty descriptor); everything else, our weight packing, lengths,
directions and their gradients, is lowered for ``cuda`` exactly as a GPU lowers it. Needs jax
only (runs in the main environment and in ``.venv-gpu``, jax 0.11.2).
"""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import dataclasses  # noqa: E402
import functools  # noqa: E402
import re  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax.loops import cudnn  # noqa: E402


class _Descriptor:
    """Stands in for the CUDA plugin's ``_rnn`` module at lowering (descriptor bytes only)."""

    @staticmethod
    def build_rnn_descriptor(*args):
        return b""


@pytest.fixture
def cuda_rnn_lowering(monkeypatch):
    """Lets ``jax.experimental.rnn``'s primitives trace and lower for cuda without the plugin."""
    from jax._src.interpreters import mlir
    from jax._src.lib import gpu_rnn
    from jax.experimental import rnn as jrnn

    if not cudnn.available():
        monkeypatch.setattr(gpu_rnn, "compute_rnn_workspace_reserve_space_sizes",
                            lambda *args: (1 << 20, 1 << 20), raising=False)
        monkeypatch.setattr(cudnn, "available", lambda: True)
        table = mlir._platform_specific_lowerings["cuda"]
        for prim, rule in ((jrnn.rnn_fwd_p, gpu_rnn._rnn_fwd_lowering),
                           (jrnn.rnn_bwd_p, gpu_rnn._rnn_bwd_lowering)):
            entry = dataclasses.replace(table[prim], rule=functools.partial(rule, _Descriptor,
                                                                            "cu"))
            monkeypatch.setitem(table, prim, entry)


def lower_for_cuda(fn, *args) -> str:
    """StableHLO of ``jax.jit(fn)`` lowered for the CUDA platform (no GPU needed)."""
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def custom_calls(text):
    return re.findall(r"custom_call @(\w+)\(", text)


@pytest.mark.parametrize("reverse", [False, True])
def test_train_step_lowers_with_cudnn_forward_and_backward(cuda_rnn_lowering, reverse):
    cell, b, t, i, h = rj.LSTM(8), 3, 5, 4, 8
    params = cell.init(jax.random.key(0), i)
    xs = jnp.ones((b, t, i))
    lengths = jnp.array([5, 2, 0])

    def loss(p, x):
        hs, (h_n, c_n) = rj.rnn(cell, p, x, lengths=lengths, reverse=reverse, method="cudnn")
        return jnp.mean(hs ** 2) + jnp.mean(c_n)

    text = lower_for_cuda(jax.grad(loss), params, xs)
    calls = custom_calls(text)
    assert calls.count("cudnn_rnn_ffi") == 1 and calls.count("cudnn_rnn_bwd_ffi") == 1
    n_weights = 4 * h * (i + h) + 2 * 4 * h
    assert f"tensor<{n_weights}xf32>" in text  # cuDNN's flat vector: W, U, b and a zero b_hh


def test_bidirectional_is_one_cudnn_call(cuda_rnn_lowering):
    cell, i, h = rj.LSTM(6), 3, 6
    params = {"fwd": cell.init(jax.random.key(1), i), "bwd": cell.init(jax.random.key(2), i)}
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, i)), jnp.float32)

    def loss(p, x):
        return jnp.sum(rj.bidirectional(cell, cell, p, x, lengths=jnp.array([4, 1]),
                                        method="cudnn")[0])

    text = lower_for_cuda(jax.value_and_grad(loss), params, xs)
    calls = custom_calls(text)
    assert calls.count("cudnn_rnn_ffi") == 1 and calls.count("cudnn_rnn_bwd_ffi") == 1
    assert f"tensor<{2 * (4 * h * (i + h) + 2 * 4 * h)}xf32>" in text


@pytest.mark.parametrize("precision, tf32", [(None, True), ("default", True), ("high", True),
                                             ("bfloat16", True), ("highest", False),
                                             ("float32", False)])
def test_matmul_precision_sets_cudnn_tf32_flag(cuda_rnn_lowering, precision, tf32):
    """cuDNN's one flag follows the caller's precision; "default" lowers (jax.experimental.rnn
    alone reads it as bfloat16 and raises: found on the H200)."""
    import contextlib

    cell, i = rj.LSTM(4), 3
    params = cell.init(jax.random.key(0), i)
    xs = jnp.ones((2, 3, i))

    def loss(p, x):
        return jnp.sum(rj.rnn(cell, p, x, method="cudnn")[0])

    ctx = jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()
    with ctx:
        flags = re.findall(r"cudnn_allow_tf32=(\w+)", str(jax.make_jaxpr(jax.grad(loss))(params,
                                                                                           xs)))
        calls = custom_calls(lower_for_cuda(jax.grad(loss), params, xs))
    assert flags and set(flags) == {str(tf32)}
    assert calls.count("cudnn_rnn_ffi") == 1 and calls.count("cudnn_rnn_bwd_ffi") == 1
