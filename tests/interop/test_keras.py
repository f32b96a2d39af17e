"""rnn_jax.interop.keras against live Keras 3 (JAX backend): weights both ways.

Keras layers run with ``return_sequences`` and ``return_state``, a right-padding mask and a
random initial state; rnn_jax runs the converted weights with the same lengths and state.
Gradients come from Keras's own ``stateless_call`` differentiated by JAX, and rnn_jax's go back
to Keras's layout through ``to_keras`` (a linear map, so it maps gradients too).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj

os.environ.setdefault("KERAS_BACKEND", "jax")
keras = pytest.importorskip("keras")
from rnn_jax.interop import keras as rj_keras  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

I, H, B, T = 3, 4, 3, 6
LENGTHS = np.array([4, 6, 1])
TOL32 = dict(rtol=2e-5, atol=2e-6)
# Keras 3.15's float64 GRU/LSTM (JAX backend, float64 weights, inputs and state) differs from a
# plain NumPy float64 loop over its own weights by ~7e-8, while rnn_jax agrees with that loop
# to 2e-16: Keras's float64 path is float32-accurate somewhere, so float64 is checked to 1e-6.
# (Its float64 SimpleRNN called eagerly even fails: a float64 scan carry comes back float32.)
TOL64 = dict(rtol=1e-6, atol=1e-7)
LAYERS = {
    "simple_tanh": lambda **kw: keras.layers.SimpleRNN(H, **kw),
    "simple_relu": lambda **kw: keras.layers.SimpleRNN(H, activation="relu", **kw),
    "lstm": lambda **kw: keras.layers.LSTM(H, **kw),
    "gru": lambda **kw: keras.layers.GRU(H, **kw),
    "gru_no_bias": lambda **kw: keras.layers.GRU(H, use_bias=False, **kw),
    "gru_v1": lambda **kw: keras.layers.GRU(H, reset_after=False, **kw),  # -> rj.GRUv1
}


def _lenient():
    """Keras's own code broadcasts implicitly: rank promotion is allowed inside Keras only."""
    return jax.numpy_rank_promotion("allow")


def _layer(name, seed, dtype="float32"):
    """A built layer with random weights, biases included (Keras's are zero or one)."""
    layer = LAYERS[name](return_sequences=True, return_state=True, dtype=dtype)
    with _lenient():
        layer.build((None, None, I))
    rng = np.random.default_rng(seed)
    layer.set_weights([0.5 * rng.standard_normal(w.shape).astype(w.dtype)
                       for w in layer.get_weights()])
    return layer


def _inputs(cell, seed, dtype):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((B, T, I)).astype(dtype)
    carry = jax.tree.map(lambda z: rng.standard_normal(z.shape).astype(dtype),
                         cell.initial_carry((B,), dtype))
    return xs, carry


def _keras_state(cell, carry):
    return list(carry) if isinstance(cell, rj.LSTM) else [carry]


def _check(name, dtype, tol):
    layer = _layer(name, 0, dtype)
    cell, params = rj_keras.from_keras(layer)
    assert all(p.dtype == dtype for p in jax.tree.leaves(params))
    xs, carry = _inputs(cell, 1, dtype)
    mask = np.arange(T)[None, :] < LENGTHS[:, None]
    real = mask[..., None]

    def keras_loss(weights):
        out, *state = layer.stateless_call(weights, fixed, xs, mask=mask,
                                           initial_state=_keras_state(cell, carry))[0]
        out = jnp.where(real, out, 0.0)  # Keras repeats the last output on padded steps
        return jnp.sum(out * jnp.cos(out)) + sum(jnp.sum(s ** 2) for s in state), (out, state)

    def rj_loss(p):
        hs, final = rj.rnn(cell, p, xs, carry, lengths=jnp.asarray(LENGTHS))
        return (jnp.sum(hs * jnp.cos(hs)) + sum(jnp.sum(s ** 2) for s in jax.tree.leaves(final)),
                (hs, list(jax.tree.leaves(final))))

    weights = [jnp.asarray(v.value) for v in layer.trainable_variables]
    fixed = [v.value for v in layer.non_trainable_variables]  # Keras's dropout seed state
    with _lenient():
        (_, (out, state)), k_grads = jax.jit(jax.value_and_grad(keras_loss, has_aux=True))(
            weights)
    (_, (hs, final)), grads = jax.jit(jax.value_and_grad(rj_loss, has_aux=True))(params)
    np.testing.assert_allclose(hs, out, **tol)
    for a, b in zip(final, state, strict=True):
        np.testing.assert_allclose(a, b, **tol)
    # rnn_jax's gradients in Keras's layout (a bias-free layer has no bias to compare)
    holder = LAYERS[name.replace("_no_bias", "")](dtype=dtype)
    mapped = rj_keras.to_keras(cell, grads, holder).get_weights()
    if name in ("gru", "gru_no_bias"):  # Keras trains both bias rows: z, r get the same grad
        mapped[2][1, :2 * H] = mapped[2][0, :2 * H]
    for g, k in zip(mapped, k_grads, strict=False):
        np.testing.assert_allclose(g, k, **tol)
    return float(np.abs(hs - out).max())


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_from_keras_matches_keras_float32(name):
    _check(name, np.float32, TOL32)


@pytest.mark.parametrize("name", ["lstm", "gru", "gru_v1"])
def test_from_keras_matches_keras_float64(name):
    with jax.enable_x64(True):
        _check(name, np.float64, TOL64)


@pytest.mark.parametrize("name", ["simple_tanh", "lstm", "gru", "gru_v1"])
def test_to_keras_and_round_trips(name):
    layer = _layer(name, 2)
    cell, params = rj_keras.from_keras(layer)
    p2 = jax.tree.map(lambda a: a + 0.1, cell.init(jax.random.key(3), I))  # nonzero b_hn
    target = rj_keras.to_keras(cell, p2, LAYERS[name](return_sequences=True))
    xs, _ = _inputs(cell, 4, np.float32)
    with _lenient():
        want = target(xs)
    np.testing.assert_allclose(rj.rnn(cell, p2, xs)[0], want, **TOL32)
    jax.tree.map(np.testing.assert_array_equal, rj_keras.from_keras(target)[1], p2)
    again = rj_keras.to_keras(cell, params, LAYERS[name](return_sequences=True)).get_weights()
    if name == "gru":  # merged bias rows: the same function, not the same two rows
        np.testing.assert_allclose(again[2].sum(0), layer.get_weights()[2].sum(0), **TOL32)
        again, before = again[:2], layer.get_weights()[:2]
    else:
        before = layer.get_weights()
    for a, b in zip(again, before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_layer_trained_in_keras_gives_the_same_outputs():
    rng = np.random.default_rng(5)
    xs, ys = rng.standard_normal((8, T, I)).astype("float32"), rng.standard_normal((8, T, 1))
    with _lenient():
        model = keras.Sequential([keras.Input((T, I)),
                                  keras.layers.GRU(H, return_sequences=True),
                                  keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = model.layers[0].get_weights()
        model.fit(xs, ys.astype("float32"), batch_size=4, epochs=1, verbose=0)
        want = model.layers[0](xs)
    assert not np.allclose(before[2], model.layers[0].get_weights()[2])  # the biases trained
    cell, params = rj_keras.from_keras(model.layers[0])
    np.testing.assert_allclose(rj.rnn(cell, params, xs)[0], want, **TOL32)


def test_reset_after_false_is_gru_v1_and_the_two_grus_do_not_mix():
    cell, params = rj_keras.from_keras(_layer("gru_v1", 7))
    assert cell == rj.GRUv1(H) and set(params) == {"W", "U", "b"}
    with pytest.raises(ValueError, match="GRUv1"):
        rj_keras.to_keras(rj.GRU(H), rj.GRU(H).init(jax.random.key(0), I),
                          keras.layers.GRU(H, reset_after=False))
    with pytest.raises(ValueError, match="rj.GRU"):
        rj_keras.to_keras(cell, params, keras.layers.GRU(H))


def test_unrepresentable_layers_and_bad_input_raise():
    with pytest.raises(ValueError, match="recurrent_activation"):
        rj_keras.from_keras(keras.layers.LSTM(H, recurrent_activation="hard_sigmoid"))
    with pytest.raises(ValueError, match="not built"):
        rj_keras.from_keras(keras.layers.LSTM(H))
    with pytest.raises(TypeError, match="layer"):
        rj_keras.from_keras(keras.layers.Dense(H))
    params = rj.GRU(H, bias_init="torch").init(jax.random.key(0), I)
    with pytest.raises(ValueError, match="use_bias=False"):
        rj_keras.to_keras(rj.GRU(H), params, keras.layers.GRU(H, use_bias=False))
    with pytest.raises(ValueError, match="units"):
        rj_keras.to_keras(rj.GRU(H), params, keras.layers.GRU(H + 1))
    with pytest.raises(ValueError, match="activation='relu'"):
        rj_keras.to_keras(rj.Elman(H), rj.Elman(H).init(jax.random.key(0), I),
                          keras.layers.SimpleRNN(H, activation="relu"))
    cell, p = rj_keras.from_keras(_layer("simple_tanh", 6))
    assert cell == rj.Elman(H)
    identity = keras.layers.SimpleRNN(H, activation="linear")
    assert rj_keras.to_keras(rj.Elman(H, activation="identity"), p, identity) is identity
