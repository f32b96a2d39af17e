"""method="cudnn": our LSTM layout mapped onto cuDNN's flat weights, checked on a CPU.

On a CPU the cuDNN kernel is replaced (``monkeypatch``) by ``jax.experimental.rnn.lstm_ref``,
JAX's own reference for it, reading the same flat weight vector: everything of ours (the
packing, lengths, empty sequences, directions, batch axes, time-major, gradients) then runs
and must equal ``method="scan"``. cuDNN itself runs only on a GPU (``make gpu-check``).
"""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import functools  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax.loops import cudnn  # noqa: E402

I, H = 3, 5
CELL = rj.LSTM(H)


@pytest.fixture
def reference_kernel(monkeypatch):
    """cuDNN's LSTM replaced by lstm_ref on the same flat weights (a CPU stands in)."""
    monkeypatch.setattr(cudnn, "cudnn_lstm", cudnn.reference_lstm)
    monkeypatch.setattr(cudnn, "available", lambda: True)


def rand(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def case(seed, batch_shape, t):
    params = CELL.init(jax.random.key(seed), I)
    params = {**params, "b": rand(seed + 1, (4 * H,))}  # non-zero biases in every gate
    xs = rand(seed + 2, (*batch_shape, t, I))
    carry = (0.5 * rand(seed + 3, (*batch_shape, H)), rand(seed + 4, (*batch_shape, H)))
    return params, xs, carry


def close(a, b, tol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_flat_weights_are_cudnn_layout():
    """unpack_lstm_weights (JAX's reading of cuDNN's vector) gives back W^T, U^T, b, 0."""
    from jax.experimental import rnn as jrnn

    pf, pb = CELL.init(jax.random.key(0), I), CELL.init(jax.random.key(1), I)
    flat = cudnn.flat_weights([pf, pb])
    assert flat.shape == (jrnn.get_num_params_in_lstm(I, H, 1, True),)
    w_ih, w_hh, b_ih, b_hh = jrnn.unpack_lstm_weights(flat, I, H, 1, True)
    for d, p in enumerate((pf, pb)):
        close((w_ih[d], w_hh[d], b_ih[d], b_hh[d]), (p["W"].T, p["U"].T, p["b"], 0 * p["b"]), 0)


@functools.partial(jax.jit, static_argnames=("method", "reverse"))
def train_step(params, xs, carry, lengths, *, method, reverse):
    """Loss of outputs and final carry, its gradients for params, inputs and carry."""

    def loss(p, x, c):
        hs, (h_n, c_n) = rj.rnn(CELL, p, x, c, lengths=lengths, reverse=reverse, method=method)
        return jnp.sum(jnp.sin(hs)) + jnp.sum(h_n * c_n), (hs, h_n, c_n)

    with jax.default_matmul_precision("highest"):
        return jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(params, xs, carry)


# the fixture's patch is the same for every example, so sharing it is safe
@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch_shape=st.sampled_from([(3,), (2, 2)]), reverse=st.booleans(), data=st.data())
def test_equals_scan_with_lengths(reference_kernel, batch_shape, reverse, data):
    """Outputs, final carries and every gradient (params, inputs, initial carry) equal scan's,
    for random lengths in [0, T] (0: the carry stays the initial one)."""
    t = 4
    params, xs, carry = case(7, batch_shape, t)
    size = int(np.prod(batch_shape, dtype=int))
    lens = data.draw(st.lists(st.integers(0, t), min_size=size, max_size=size))
    lengths = jnp.asarray(lens, jnp.int32).reshape(batch_shape)
    got, want = (train_step(params, xs, carry, lengths, method=m, reverse=reverse)
                 for m in ("cudnn", "scan"))
    close(got, want)


def test_bidirectional_one_call_equals_scan(reference_kernel):
    pf, xs, cf = case(3, (3,), 6)
    pb, _, cb = case(11, (3,), 6)
    params, lengths = {"fwd": pf, "bwd": pb}, jnp.array([6, 3, 0])

    def loss(method, p, c):
        hs, carries = rj.bidirectional(CELL, CELL, p, xs, c, lengths=lengths, method=method)
        return jnp.sum(jnp.tanh(hs)) + jnp.sum(carries[1][1]), (hs, carries)

    with jax.default_matmul_precision("highest"):
        got, want = (jax.jit(jax.value_and_grad(lambda *a, m=m: loss(m, *a), (0, 1),
                                                has_aux=True))(params, (cf, cb))
                     for m in ("cudnn", "scan"))
    close(got, want)


def test_time_major_no_batch_axis_and_default_carry(reference_kernel):
    params, xs, _ = case(5, (), 4)
    xs_tm = jnp.moveaxis(xs, -2, 0)
    with jax.default_matmul_precision("highest"):
        got, want = (jax.jit(lambda p, x, m=m: rj.rnn(CELL, p, x, time_major=True, method=m))(
            params, xs_tm) for m in ("cudnn", "scan"))
    close(got, want)


def test_unsupported_requests_name_the_reason():
    params, xs, _ = case(0, (2,), 3)
    elman = rj.Elman(H)
    with pytest.raises(ValueError, match="cudnn.*cell type Elman"):
        rj.rnn(elman, elman.init(jax.random.key(0), I), xs, method="cudnn")
    bf16 = rj.LSTM(H, compute_dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match="compute_dtype"):
        rj.rnn(bf16, params, xs, method="cudnn")
    with pytest.raises(ValueError, match=r"mask \(pass lengths\)"):
        rj.rnn(CELL, params, xs, mask=jnp.ones((2, 3), bool), method="cudnn")
    with pytest.raises(ValueError, match="probes, return_carries"):
        rj.rnn(CELL, params, xs, probes=jnp.zeros((2, 3, H)), return_carries=True,
               method="cudnn")
    with pytest.raises(ValueError, match="float16"):
        rj.rnn(CELL, params, xs.astype(jnp.float16), method="cudnn")


@pytest.mark.skipif(cudnn.available(), reason="checks the error where cuDNN is missing")
def test_without_the_cuda_plugin_cudnn_is_an_error_not_a_fallback():
    params, xs, _ = case(0, (2,), 3)
    with pytest.raises(ValueError, match="needs a GPU with jax's CUDA plugin"):
        rj.rnn(CELL, params, xs, method="cudnn")
    with pytest.raises(ValueError, match="needs a GPU"):
        rj.bidirectional(CELL, CELL, {"fwd": params, "bwd": params}, xs, method="cudnn")


def test_auto_never_takes_cudnn(reference_kernel):
    """cuDNN is unmeasured here: "auto" keeps its own paths (the jaxpr has no cuDNN call)."""
    params, xs, _ = case(0, (2,), 3)
    jaxpr = str(jax.make_jaxpr(lambda p, x: rj.rnn(CELL, p, x)[0])(params, xs))
    assert "lstm_ref" not in jaxpr and "rnn_fwd" not in jaxpr
