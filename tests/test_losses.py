"""Tests for rnn_jax.losses: hand-computed values, masking invariance, transforms, errors."""

import math

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rnn_jax import losses  # noqa: E402


@jax.jit
def _all_losses(logits, labels, targets, mask):
    return (
        losses.softmax_cross_entropy(logits, labels, mask),
        losses.accuracy(logits, labels, mask),
        losses.mse(logits, targets, mask),
    )


def test_cross_entropy_hand_computed():
    logits = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    labels = jnp.array([2, 0])
    ce0 = math.log(math.e + math.e**2 + math.e**3) - 3.0
    ce1 = math.log(3.0)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, labels), (ce0 + ce1) / 2, rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, labels, jnp.array([True, False])), ce0, rtol=1e-6
    )


def test_cross_entropy_per_step_with_mask():
    # [B=1, T=3, O=2]; the padded step holds NaN logits and a -1 label.
    logits = jnp.array([[[0.0, 1.0], [2.0, 0.0], [jnp.nan, jnp.nan]]])
    labels = jnp.array([[1, 1, -1]])
    mask = jnp.array([[True, True, False]])
    ce_a = math.log(1 + math.e) - 1.0
    ce_b = math.log(math.e**2 + 1)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, labels, mask), (ce_a + ce_b) / 2, rtol=1e-6
    )


def test_cross_entropy_extreme_logits_stay_finite():
    logits = jnp.array([[1e4, -1e4], [-jnp.inf, 0.0]])
    labels = jnp.array([0, 1])
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels), 0.0, atol=1e-6)


def test_mse_hand_computed_and_mask_broadcast():
    preds = jnp.array([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [9.0, 9.0]]])  # [B=2, T=2, O=2]
    targets = jnp.zeros_like(preds)
    np.testing.assert_allclose(losses.mse(preds, targets), (1 + 4 + 9 + 16 + 0 + 0 + 81 + 81) / 8)
    mask = jnp.array([[True, True], [True, False]])  # covers both output features of a step
    np.testing.assert_allclose(losses.mse(preds, targets, mask), (1 + 4 + 9 + 16) / 6)


def test_accuracy_hand_computed():
    logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.5, 0.4]])
    labels = jnp.array([1, 1, 1, 0])
    np.testing.assert_allclose(losses.accuracy(logits, labels), 0.75)
    np.testing.assert_allclose(
        losses.accuracy(logits, labels, jnp.array([True, True, False, False])), 0.5
    )


def test_bits_per_char():
    np.testing.assert_allclose(losses.bits_per_char(math.log(2.0)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(
        losses.bits_per_char(jnp.array([0.0, math.log(8.0)])), [0.0, 3.0], rtol=1e-6
    )


def test_masked_mean_definition():
    v = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    np.testing.assert_allclose(losses.masked_mean(v), 3.5)
    m = jnp.array([[True, False, True], [False, False, True]])
    np.testing.assert_allclose(losses.masked_mean(v, m), (1 + 3 + 6) / 3)
    # A prefix mask covers whole rows; numeric 0/1 masks act as bools.
    np.testing.assert_allclose(losses.masked_mean(v, jnp.array([0, 1])), 5.0)


def test_fully_masked_batch_gives_zero_and_finite_grad():
    logits = jnp.full((2, 3, 4), jnp.nan)
    labels = jnp.zeros((2, 3), jnp.int32)
    mask = jnp.zeros((2, 3), bool)
    ce, acc, err = _all_losses(logits, labels, logits, mask)
    assert float(ce) == float(acc) == float(err) == 0.0
    grad = jax.jit(jax.grad(losses.softmax_cross_entropy))(jnp.ones((2, 3, 4)), labels, mask)
    assert np.all(np.asarray(grad) == 0.0)


def test_padding_gets_no_gradient_even_with_nan():
    logits = jnp.array([[[0.5, -0.5], [jnp.nan, jnp.inf]]])
    labels = jnp.array([[0, 5]])
    mask = jnp.array([[True, False]])
    grad = jax.jit(jax.grad(losses.softmax_cross_entropy))(logits, labels, mask)
    assert np.all(np.isfinite(np.asarray(grad)))
    assert np.all(np.asarray(grad)[0, 1] == 0.0)
    p = np.exp([0.5, -0.5]) / np.exp([0.5, -0.5]).sum()
    np.testing.assert_allclose(grad[0, 0], p - np.array([1.0, 0.0]), rtol=1e-6)
    targets = jnp.array([[[1.0, 1.0], [jnp.nan, 0.0]]])
    grad = jax.jit(jax.grad(losses.mse))(logits, targets, mask)
    np.testing.assert_allclose(grad, [[[-0.5, -1.5], [0.0, 0.0]]], rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    shape=st.sampled_from([(1, 1, 2), (3, 5, 4)]),
    density=st.sampled_from([0.0, 0.3, 0.8, 1.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_padding_never_changes_the_loss(shape, density, seed):
    b, t, o = shape
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, t, o)).astype(np.float32)
    labels = rng.integers(0, o, size=(b, t)).astype(np.int32)
    targets = rng.normal(size=(b, t, o)).astype(np.float32)
    mask = rng.random((b, t)) < density
    # Garbage in padding (NaN logits, out-of-range labels) must not matter.
    noisy_logits = np.where(mask[..., None], logits, np.nan).astype(np.float32)
    noisy_labels = np.where(mask, labels, -7).astype(np.int32)
    ce, acc, err = _all_losses(noisy_logits, noisy_labels, targets, mask)
    real = mask.reshape(-1)
    if not real.any():
        assert float(ce) == float(acc) == float(err) == 0.0
        return
    # Reference: the unmasked definitions on the real entries only, in float64 NumPy.
    z = logits.reshape(-1, o)[real].astype(np.float64)
    y = labels.reshape(-1)[real]
    zmax = z.max(axis=1)
    lse = zmax + np.log(np.exp(z - zmax[:, None]).sum(axis=1))
    ce_ref = np.mean(lse - z[np.arange(len(y)), y])
    acc_ref = np.mean(z.argmax(axis=1) == y)
    err_ref = np.mean((z - targets.reshape(-1, o)[real]) ** 2)
    np.testing.assert_allclose(ce, ce_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acc, acc_ref, atol=1e-6)
    np.testing.assert_allclose(err, err_ref, rtol=1e-5, atol=1e-6)


def test_jit_and_vmap_agree_with_eager():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 4, size=(3, 5)), jnp.int32)
    mask = jnp.asarray(rng.random((3, 5)) < 0.7)
    eager = losses.softmax_cross_entropy(logits, labels, mask)
    metrics = jax.jit(losses.classification_metrics)(logits, labels, mask)
    np.testing.assert_allclose(metrics["loss"], eager, rtol=1e-6)
    np.testing.assert_allclose(metrics["accuracy"] + metrics["error"], 1.0, rtol=1e-6)
    # vmap over sequences == each sequence alone (checked in NumPy, float64).
    per_row = jax.jit(jax.vmap(losses.softmax_cross_entropy))(logits, labels, mask)
    z, y, m = np.asarray(logits, np.float64), np.asarray(labels), np.asarray(mask)
    lse = np.log(np.exp(z).sum(-1))
    ce = lse - np.take_along_axis(z, y[..., None], -1)[..., 0]
    expected = [ce[i][m[i]].mean() if m[i].any() else 0.0 for i in range(3)]
    np.testing.assert_allclose(per_row, expected, rtol=1e-5)
    np.testing.assert_allclose(eager, ce[m].mean(), rtol=1e-5)


def test_low_precision_logits_reduce_in_float32():
    logits = jnp.array([[1.0, 2.0, 3.0]], jnp.bfloat16)
    out = losses.softmax_cross_entropy(logits, jnp.array([2]))
    assert out.dtype == jnp.float32


def test_bad_input_raises_with_argument_name():
    logits = jnp.zeros((2, 3, 4))
    with pytest.raises(ValueError, match="labels"):
        losses.softmax_cross_entropy(logits, jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(TypeError, match="labels"):
        losses.softmax_cross_entropy(logits, jnp.zeros((2, 3)))
    with pytest.raises(TypeError, match="logits"):
        losses.accuracy(jnp.zeros((2, 3, 4), jnp.int32), jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="mask"):
        losses.softmax_cross_entropy(logits, jnp.zeros((2, 3), jnp.int32), jnp.ones((3, 2), bool))
    with pytest.raises(ValueError, match="targets"):
        losses.mse(jnp.zeros((2, 3)), jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="mask"):
        losses.masked_mean(jnp.zeros((2, 3)), jnp.ones((2, 3, 1), bool))
