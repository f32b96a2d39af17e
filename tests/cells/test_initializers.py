"""Initialisers: closed-form properties, exact rescaling, cell-level options per gate block."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj
from rnn_jax.cells import initializers as inits

jax.config.update("jax_numpy_rank_promotion", "raise")

H, I = 8, 3


def _key(seed):
    return jax.random.key(seed)


def _svals(m):
    return np.linalg.svd(np.asarray(m, np.float64), compute_uv=False)


def _rho(m):
    return np.max(np.abs(np.linalg.eigvals(np.asarray(m, np.float64))))


def _blocks(u, num_gates):
    """The per-gate [H, H] blocks of U: [H, G*H]."""
    return np.split(np.asarray(u), num_gates, axis=1)


# -- the initialisers themselves -------------------------------------------------------------
@pytest.mark.parametrize("shape", [(16, 16), (20, 6), (6, 20)])
def test_orthogonal(shape):
    q = np.asarray(inits.orthogonal(_key(0), shape), np.float64)
    n, m = shape
    gram = q.T @ q if n >= m else q @ q.T
    np.testing.assert_allclose(gram, np.eye(min(n, m)), atol=1e-5)
    np.testing.assert_allclose(_svals(q), np.ones(min(n, m)), atol=1e-5)
    assert not np.allclose(q, inits.orthogonal(_key(1), shape))  # random, not a fixed matrix


def test_orthogonal_is_haar_distributed_in_sign():
    """The sign fix makes Q Haar: without it diag(R) > 0 would bias Q's diagonal positive."""
    keys = jax.random.split(_key(2), 400)
    diag = jax.vmap(lambda k: jnp.diagonal(inits.orthogonal(k, (4, 4))))(keys)
    # Haar: every diagonal entry has mean 0 and variance 1/n = 0.25; a standard error of 0.025
    np.testing.assert_allclose(np.mean(diag, axis=0), 0.0, atol=0.1)


def test_glorot_uniform_bounds_and_variance():
    fan_in, fan_out = 200, 300
    w = np.asarray(inits.glorot_uniform(_key(3), (fan_in, fan_out)), np.float64)
    a = math.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(w).max() <= a
    assert np.abs(w).max() > 0.99 * a
    # Var U(-a, a) = a^2 / 3 = 2 / (fan_in + fan_out)  (Glorot & Bengio 2010)
    np.testing.assert_allclose(w.var(), 2.0 / (fan_in + fan_out), rtol=0.03)
    np.testing.assert_allclose(w.mean(), 0.0, atol=3e-3)


def test_identity():
    np.testing.assert_array_equal(inits.identity(_key(0), (5, 5)), np.eye(5))
    np.testing.assert_array_equal(inits.identity(_key(0), (3, 5)), np.eye(3, 5))
    np.testing.assert_array_equal(inits.identity(_key(0), (5, 3)), np.eye(5, 3))


def test_torch_uniform_bound():
    hidden = 16
    w = np.asarray(inits.torch_uniform(_key(4), (hidden, 3000), fan_hidden=hidden), np.float64)
    k = 1.0 / math.sqrt(hidden)
    assert np.abs(w).max() <= k
    assert np.abs(w).max() > 0.99 * k
    np.testing.assert_allclose(w.var(), k * k / 3.0, rtol=0.03)


def test_normals_and_zeros():
    w = np.asarray(inits.small_normal(_key(5), (100, 200)), np.float64)
    np.testing.assert_allclose(w.std(), 1e-3, rtol=0.03)
    w = np.asarray(inits.normal(_key(6), (50, 400)), np.float64)
    np.testing.assert_allclose(w.std(), 1.0 / math.sqrt(50), rtol=0.03)
    np.testing.assert_array_equal(inits.zeros(_key(7), (4, 3)), np.zeros((4, 3)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtype_is_respected(dtype):
    for name, init in inits.INITIALIZERS.items():
        assert init(_key(0), (4, 4), dtype, fan_hidden=4).dtype == dtype, name


# -- exact rescaling -----------------------------------------------------------------------
def test_spectral_radius_and_singular_value_helpers():
    m = jax.random.normal(_key(8), (12, 12))
    np.testing.assert_allclose(inits.spectral_radius(m), _rho(m), rtol=1e-5)
    np.testing.assert_allclose(inits.largest_singular_value(m), _svals(m)[0], rtol=1e-5)


@pytest.mark.parametrize("target", [0.5, 1.0, 1.7])
def test_scale_spectral_radius_is_exact(target):
    m = jax.random.normal(_key(9), (12, 12))
    scaled = inits.scale_spectral_radius(m, target)
    np.testing.assert_allclose(_rho(scaled), target, rtol=1e-5)
    # a pure rescaling: same eigenvectors, every entry multiplied by the same factor
    np.testing.assert_allclose(np.asarray(scaled) / np.asarray(m), target / _rho(m), rtol=1e-5)


@pytest.mark.parametrize("target", [0.5, 1.0, 1.7])
def test_scale_singular_value_is_exact(target):
    m = jax.random.normal(_key(10), (12, 12))
    scaled = inits.scale_singular_value(m, target)
    np.testing.assert_allclose(_svals(scaled)[0], target, rtol=1e-5)
    np.testing.assert_allclose(_svals(scaled) / _svals(m), target / _svals(m)[0], rtol=1e-5)


# -- cell-level options, per gate block --------------------------------------------------------
CELLS = [(rj.Elman, 1), (rj.LSTM, 4), (rj.GRU, 3)]
CELL_IDS = ["elman", "lstm", "gru"]


@pytest.mark.parametrize("cls,gates", CELLS, ids=CELL_IDS)
def test_default_recurrent_blocks_are_orthogonal(cls, gates):
    u = cls(H).init(_key(11), I)["U"]
    assert u.shape == (H, gates * H)
    blocks = _blocks(u, gates)
    for blk in blocks:
        np.testing.assert_allclose(_svals(blk), np.ones(H), atol=1e-5)
    if gates > 1:  # independent draws, not one block repeated
        assert not np.allclose(blocks[0], blocks[1])


@pytest.mark.parametrize("cls,gates", CELLS, ids=CELL_IDS)
def test_input_blocks_are_glorot(cls, gates):
    w = cls(H).init(_key(12), I)["W"]
    assert w.shape == (I, gates * H)
    assert np.abs(np.asarray(w)).max() <= math.sqrt(6.0 / (I + H))  # per block: fans (I, H)


@pytest.mark.parametrize("cls,gates", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("recurrent_init", ["orthogonal", "glorot_uniform", "normal"])
def test_spectral_radius_option(cls, gates, recurrent_init):
    u = cls(H, recurrent_init=recurrent_init, spectral_radius=0.9).init(_key(13), I)["U"]
    for blk in _blocks(u, gates):
        np.testing.assert_allclose(_rho(blk), 0.9, rtol=1e-5)


@pytest.mark.parametrize("cls,gates", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("recurrent_init", ["orthogonal", "glorot_uniform"])
def test_singular_value_option(cls, gates, recurrent_init):
    u = cls(H, recurrent_init=recurrent_init, singular_value=1.5).init(_key(14), I)["U"]
    for blk in _blocks(u, gates):
        np.testing.assert_allclose(_svals(blk)[0], 1.5, rtol=1e-5)


@pytest.mark.parametrize("cls,gates", CELLS, ids=CELL_IDS)
def test_recurrent_gain(cls, gates):
    """W_hh = g Q with Q orthogonal: every singular value of every block is g."""
    u = cls(H, recurrent_gain=2.0).init(_key(15), I)["U"]
    for blk in _blocks(u, gates):
        np.testing.assert_allclose(_svals(blk), np.full(H, 2.0), rtol=1e-5)
    # the gain multiplies after the rescaling: spectral radius r, then times g
    u = cls(H, spectral_radius=0.5, recurrent_gain=3.0).init(_key(15), I)["U"]
    for blk in _blocks(u, gates):
        np.testing.assert_allclose(_rho(blk), 1.5, rtol=1e-5)


@pytest.mark.parametrize("cls,gates", CELLS, ids=CELL_IDS)
def test_identity_recurrent_init(cls, gates):
    u = cls(H, recurrent_init="identity").init(_key(16), I)["U"]
    np.testing.assert_array_equal(u, np.tile(np.eye(H), (1, gates)))
    u = cls(H, recurrent_init="identity", recurrent_gain=0.5).init(_key(16), I)["U"]
    np.testing.assert_array_equal(u, np.tile(0.5 * np.eye(H), (1, gates)))


def test_spectral_radius_and_singular_value_are_exclusive():
    with pytest.raises(ValueError, match="spectral_radius and singular_value"):
        rj.Elman(H, spectral_radius=0.9, singular_value=1.0)


@pytest.mark.parametrize("field", ["recurrent_init", "input_init", "bias_init"])
def test_unknown_initialiser_names(field):
    with pytest.raises(ValueError, match=rf"{field}='nope'.*'glorot_uniform'.*'orthogonal'"):
        rj.LSTM(H, **{field: "nope"})
    with pytest.raises(ValueError, match=r"expected one of \[.*'identity'.*'torch'.*'zeros'\]"):
        inits.get_initializer("Orthogonal")
    with pytest.raises(ValueError, match="not a known initialiser"):
        inits.get_initializer(None)


# -- presets -----------------------------------------------------------------------------------
def test_irnn_preset():
    """IRNN (Le, Jaitly, Hinton 2015): ReLU, U = I, W ~ N(0, 0.001^2), b = 0."""
    cell = rj.irnn(64)
    assert cell.activation == "relu"
    p = cell.init(_key(17), 50)
    np.testing.assert_array_equal(p["U"], np.eye(64))
    np.testing.assert_array_equal(p["b"], np.zeros(64))
    np.testing.assert_allclose(np.asarray(p["W"], np.float64).std(), 1e-3, rtol=0.05)
    # overrides are honoured
    assert rj.irnn(4, recurrent_gain=0.5).init(_key(0), 2)["U"][0, 0] == 0.5


@pytest.mark.parametrize("cls", [rj.Elman, rj.LSTM, rj.GRU], ids=CELL_IDS)
def test_torch_like_preset(cls):
    """PyTorch's nn.RNN/LSTM/GRU init: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))."""
    hidden = 16
    cell = rj.torch_like(cls, hidden)
    p = cell.init(_key(18), 200)
    k = 1.0 / math.sqrt(hidden)
    for name, leaf in p.items():
        leaf = np.asarray(leaf, np.float64)
        assert np.abs(leaf).max() <= k, name
        assert np.abs(leaf).max() > 0.8 * k, name  # spread over the whole interval, not zeros
    np.testing.assert_allclose(np.asarray(p["W"]).var(), k * k / 3.0, rtol=0.05)
    if cls is rj.LSTM:
        assert cell.forget_bias == 0.0  # torch adds no forget-gate bias
