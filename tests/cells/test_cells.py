"""Cells: parameter layouts, the step equations against NumPy, batch axes, gradients, bad input."""

import functools
import re

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax.cells import initializers as inits  # noqa: E402

I, H = 3, 4
CELLS = {
    "elman-tanh": rj.Elman(H),
    "elman-relu": rj.Elman(H, activation="relu"),
    "elman-identity": rj.Elman(H, activation="identity"),
    "lstm": rj.LSTM(H),
    "gru": rj.GRU(H),
}
BATCH_SHAPES = [(), (3,), (2, 3)]


def normal(seed, shape, scale=1.0, dtype=np.float32):
    """Seeded N(0, scale^2) test data from a local NumPy generator (no compile per shape)."""
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def random_params(cell, seed, input_size=I, dtype=np.float32):
    """Parameters in the cell's layout, every entry random, so zero biases hide no layout error."""
    shapes = jax.eval_shape(lambda: cell.init(jax.random.key(0), input_size))
    return {k: jnp.asarray(normal([seed, n], v.shape, 0.5, dtype))
            for n, (k, v) in enumerate(shapes.items())}


def random_carry(cell, batch_shape, seed, dtype=np.float32):
    leaves, treedef = jax.tree.flatten(jax.eval_shape(lambda: cell.initial_carry(batch_shape)))
    return jax.tree.unflatten(
        treedef, [jnp.asarray(normal([seed, n], x.shape, 0.5, dtype))
                  for n, x in enumerate(leaves)])


# -- NumPy references, written from the contract's equations --------------------------------
def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _np(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def ref_step(cell, params, carry, x):
    """The contract's update for one step, in float64 NumPy; returns (carry, h)."""
    p, carry, x = _np(params), _np(carry), np.asarray(x, np.float64)
    h_size = cell.hidden_size

    def blocks(m):  # the gate blocks of a [..., G*H] array, in order
        return [m[..., k * h_size:(k + 1) * h_size] for k in range(m.shape[-1] // h_size)]

    if isinstance(cell, rj.LSTM):
        h, c = carry
        i, f, g, o = blocks(x @ p["W"] + h @ p["U"] + p["b"])
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        return (h, c), h
    if isinstance(cell, rj.GRU):
        h = carry
        w_r, w_z, w_n = blocks(p["W"])
        u_r, u_z, u_n = blocks(p["U"])
        b_r, b_z, b_n = blocks(p["b"])
        r = _sigmoid(x @ w_r + h @ u_r + b_r)
        z = _sigmoid(x @ w_z + h @ u_z + b_z)
        n = np.tanh(x @ w_n + b_n + r * (h @ u_n + p["b_hn"]))
        h = (1.0 - z) * n + z * h
        return h, h
    act = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0.0), "identity": lambda z: z}
    h = act[cell.activation](x @ p["W"] + carry @ p["U"] + p["b"])
    return h, h


def assert_tree_close(a, b, rtol=1e-5, atol=1e-5):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# -- parameter layouts -------------------------------------------------------------------------
EXPECTED_SHAPES = {
    rj.Elman: {"W": (I, H), "U": (H, H), "b": (H,)},
    rj.LSTM: {"W": (I, 4 * H), "U": (H, 4 * H), "b": (4 * H,)},
    rj.GRU: {"W": (I, 3 * H), "U": (H, 3 * H), "b": (3 * H,), "b_hn": (H,)},
}


@pytest.mark.parametrize("name", CELLS)
def test_param_layout(name):
    cell = CELLS[name]
    params = cell.init(jax.random.key(0), I)
    assert isinstance(params, dict)
    assert {k: v.shape for k, v in params.items()} == EXPECTED_SHAPES[type(cell)]
    assert all(v.dtype == jnp.float32 for v in params.values())
    # each gate's recurrent block is orthogonal by default
    u = np.asarray(params["U"])
    for k in range(u.shape[1] // H):
        block = u[:, k * H:(k + 1) * H]
        np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)


def test_init_is_a_pure_function_of_the_key():
    cell = rj.LSTM(H)
    a, b = cell.init(jax.random.key(3), I), cell.init(jax.random.key(3), I)
    c = cell.init(jax.random.key(4), I)
    assert_tree_close(a, b, rtol=0, atol=0)
    assert not np.allclose(a["W"], c["W"])


def test_lstm_forget_bias_is_added_to_the_f_slice():
    b = np.asarray(rj.LSTM(H, forget_bias=1.5).init(jax.random.key(0), I)["b"])
    expected = np.zeros(4 * H)
    expected[H:2 * H] = 1.5  # gate order i, f, g, o
    np.testing.assert_array_equal(b, expected)
    # with random biases the difference is exactly the forget bias on f, and nothing else moves
    key = jax.random.key(1)
    p1 = rj.LSTM(H, forget_bias=1.0, bias_init="torch").init(key, I)
    p0 = rj.LSTM(H, forget_bias=0.0, bias_init="torch").init(key, I)
    np.testing.assert_allclose(np.asarray(p1["b"] - p0["b"]), expected / 1.5, atol=1e-6)
    np.testing.assert_array_equal(p1["W"], p0["W"])
    np.testing.assert_array_equal(p1["U"], p0["U"])


def test_lstm_chrono_init_spreads_forgetting_times_over_the_range():
    t_max, h = 120.0, 2000
    key = jax.random.key(5)
    cell = rj.LSTM(h, chrono_max=t_max, bias_init="torch")
    p = cell.init(key, I)
    b_i, b_f, b_g, b_o = np.split(np.asarray(p["b"], np.float64), 4)
    np.testing.assert_array_equal(b_i, -b_f)
    times = 1.0 + np.exp(b_f)  # 1 / (1 - sigmoid(b_f))
    assert times.min() >= 2.0 - 1e-4 and times.max() <= t_max + 1e-3
    # u = e^{b_f} is uniform on [1, T_max - 1]: its mean and spread, within sampling error
    u = np.exp(b_f)
    assert abs(u.mean() - t_max / 2) < 4 * (t_max - 2) / np.sqrt(12 * h)
    assert abs(u.std() - (t_max - 2) / np.sqrt(12)) < 0.1 * (t_max - 2) / np.sqrt(12)
    # everything else is the plain initialisation from the same key
    plain = rj.LSTM(h, bias_init="torch", forget_bias=0.0).init(key, I)
    np.testing.assert_array_equal(p["W"], plain["W"])
    np.testing.assert_array_equal(p["U"], plain["U"])
    np.testing.assert_array_equal(np.split(np.asarray(p["b"]), 4)[2],
                                  np.split(np.asarray(plain["b"]), 4)[2])
    for bad in (2.0, 1.0, -5.0):
        with pytest.raises(ValueError, match="chrono_max"):
            rj.LSTM(h, chrono_max=bad)


def test_gru_has_separate_b_hn():
    params = rj.GRU(H, bias_init="torch").init(jax.random.key(0), I)
    assert params["b_hn"].shape == (H,)
    assert np.abs(np.asarray(params["b_hn"])).max() > 0
    assert np.abs(np.asarray(params["b_hn"])).max() <= 1 / np.sqrt(H)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
def test_initial_carry(name, batch_shape):
    cell = CELLS[name]
    carry = cell.initial_carry(batch_shape)
    leaves = jax.tree.leaves(carry)
    assert len(leaves) == (2 if isinstance(cell, rj.LSTM) else 1)
    for leaf in leaves:
        assert leaf.shape == (*batch_shape, H) and leaf.dtype == jnp.float32
        assert not np.any(np.asarray(leaf))
    h = jnp.ones((*batch_shape, H))
    assert cell.hidden(cell.with_hidden(carry, h)) is h
    if isinstance(cell, rj.LSTM):
        assert cell.with_hidden(carry, h)[1] is carry[1]


# -- the step equations --------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=0)
def jit_step(cell, params, carry, x):
    return cell.step(params, carry, x)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
def test_step_matches_numpy_equations(name, batch_shape):
    cell = CELLS[name]
    params, carry = random_params(cell, 0), random_carry(cell, batch_shape, 1)
    x = normal(2, (*batch_shape, I))
    expected = ref_step(cell, params, carry, x)
    # compiled once per cell (for two batch axes), eager for every batch shape
    steps = (cell.step, functools.partial(jit_step, cell)) if len(batch_shape) == 2 else (
        cell.step,)
    for step in steps:
        new_carry, h = step(params, carry, x)
        assert h.shape == (*batch_shape, H)
        assert_tree_close((new_carry, h), expected)
        assert jax.tree.structure(new_carry) == jax.tree.structure(carry)
    # the emitted output is the carry's hidden state
    np.testing.assert_array_equal(cell.hidden(new_carry), h)


@pytest.mark.parametrize("name", CELLS)
def test_step_is_recur_after_project(name):
    cell = CELLS[name]
    params, carry, x = random_params(cell, 3), random_carry(cell, (2, 3), 4), normal(5, (2, 3, I))
    u = cell.project(params, x)
    assert u.shape == (2, 3, cell.num_gates * H)
    np.testing.assert_allclose(u, x @ params["W"] + params["b"][None, None], rtol=1e-6)
    assert_tree_close(cell.step(params, carry, x), cell.recur(params, carry, u), rtol=0, atol=0)


@pytest.mark.parametrize("name", CELLS)
def test_batch_axes_are_independent(name):
    """Each example of a [2, 3] batch equals the same example stepped alone."""
    cell = CELLS[name]
    params, carry, x = random_params(cell, 6), random_carry(cell, (2, 3), 7), normal(8, (2, 3, I))
    carry = jax.tree.map(np.asarray, carry)  # NumPy indexing compiles nothing
    batched = jax.tree.map(np.asarray, cell.step(params, carry, x))
    for idx in np.ndindex(2, 3):
        alone = cell.step(params, jax.tree.map(lambda c, idx=idx: c[idx], carry), x[idx])
        assert_tree_close(jax.tree.map(lambda b, idx=idx: b[idx], batched), alone)


def test_cells_are_hashable_values_and_jit_caches_hit():
    assert rj.LSTM(H) == rj.LSTM(H) and hash(rj.LSTM(H)) == hash(rj.LSTM(H))
    assert rj.Elman(H) != rj.Elman(H, activation="relu")
    assert rj.Elman(H) != rj.GRU(H)
    traces = []

    @functools.partial(jax.jit, static_argnums=0)
    def f(cell, params, x):
        traces.append(None)
        return cell.step(params, cell.initial_carry(x.shape[:-1]), x)[1]

    params = random_params(rj.GRU(H), 15)
    x = jnp.ones((2, I))
    f(rj.GRU(H), params, x)
    f(rj.GRU(H), params, x)
    assert len(traces) == 1


def test_get_cell_builds_by_name():
    assert rj.get_cell("lstm", 5, forget_bias=2.0) == rj.LSTM(5, forget_bias=2.0)
    assert rj.get_cell("elman", 5, activation="relu") == rj.Elman(5, activation="relu")
    assert rj.get_cell("gru", 5) == rj.GRU(5)


# -- initialisation options on the cell ---------------------------------------------------------
def test_spectral_radius_and_singular_value_per_gate_block():
    u = np.asarray(rj.Elman(8, spectral_radius=0.9).init(jax.random.key(0), I)["U"])
    np.testing.assert_allclose(np.abs(np.linalg.eigvals(u)).max(), 0.9, rtol=1e-4)
    u = np.asarray(rj.LSTM(4, singular_value=1.5).init(jax.random.key(0), I)["U"])
    for k in range(4):
        np.testing.assert_allclose(
            np.linalg.norm(u[:, 4 * k:4 * (k + 1)], ord=2), 1.5, rtol=1e-4)
    u = np.asarray(rj.Elman(6, recurrent_gain=0.5).init(jax.random.key(0), I)["U"])
    np.testing.assert_allclose(np.linalg.svd(u, compute_uv=False), 0.5 * np.ones(6), rtol=1e-5)


def test_irnn_and_torch_like():
    cell = rj.irnn(H)
    assert cell.activation == "relu"
    p = cell.init(jax.random.key(0), 50)
    np.testing.assert_array_equal(p["U"], np.eye(H))
    np.testing.assert_array_equal(p["b"], np.zeros(H))
    assert 5e-4 < float(jnp.std(p["W"])) < 2e-3  # N(0, 0.001^2)
    for cls in (rj.Elman, rj.LSTM, rj.GRU):
        cell = rj.torch_like(cls, H)
        for leaf in jax.tree.leaves(cell.init(jax.random.key(0), I)):
            assert np.abs(np.asarray(leaf)).max() <= 1 / np.sqrt(H) + 1e-7
    assert rj.torch_like(rj.LSTM, H).forget_bias == 0.0


@pytest.mark.parametrize("cls", [rj.Elman, rj.LSTM, rj.GRU])
def test_bf16_compute_keeps_float32_state(cls):
    cell, cell_bf16 = cls(H), cls(H, compute_dtype=jnp.bfloat16)
    params, carry, x = random_params(cell, 9), random_carry(cell, (2,), 10), normal(11, (2, I))
    out16 = cell_bf16.step(params, carry, x)
    for leaf in jax.tree.leaves(out16):
        assert leaf.dtype == jnp.float32
    assert_tree_close(out16, cell.step(params, carry, x), rtol=0, atol=3e-2)


# -- gradients (float64) -------------------------------------------------------------------------
@pytest.mark.parametrize("name", CELLS)
def test_step_gradients_float64(name):
    cell = CELLS[name]
    with jax.enable_x64(True):
        params = random_params(cell, 12, input_size=2, dtype=np.float64)
        carry = random_carry(cell, (2,), 13, dtype=np.float64)
        x = normal(14, (2, 2), dtype=np.float64)
        assert cell.step(params, carry, x)[1].dtype == jnp.float64
        check_grads(cell.step, (params, carry, x), order=2, modes=("fwd", "rev"))
    assert jnp.zeros(1).dtype == jnp.float32  # x64 did not leak


# -- bad input -----------------------------------------------------------------------------------
def test_unknown_activation():
    with pytest.raises(ValueError, match=r"activation='softplus'.*expected one of.*'tanh'"):
        rj.Elman(H, activation="softplus")


@pytest.mark.parametrize("field", ["recurrent_init", "input_init", "bias_init"])
def test_unknown_initialiser(field):
    with pytest.raises(ValueError, match=rf"{field}='xavier'.*expected one of.*'orthogonal'"):
        rj.LSTM(H, **{field: "xavier"})


def test_bad_sizes():
    with pytest.raises(ValueError, match=r"hidden_size must be a positive int, got 0"):
        rj.GRU(0)
    with pytest.raises(TypeError, match=r"hidden_size must be an int, got float 2.5"):
        rj.Elman(2.5)
    with pytest.raises(ValueError, match=r"input_size must be a positive int, got -1"):
        rj.LSTM(H).init(jax.random.key(0), -1)


def test_exclusive_scalings_and_unknown_cell():
    with pytest.raises(ValueError, match=r"spectral_radius and singular_value.*\(0.9, 1.1\)"):
        rj.Elman(H, spectral_radius=0.9, singular_value=1.1)
    known = re.escape(str(sorted(rj.cells.CELLS)))  # the issue-13 cells joined the five
    assert {"elman", "gru", "lru", "lstm", "mingru", "exprnn", "cornn"} <= set(rj.cells.CELLS)
    with pytest.raises(ValueError, match=rf"cell='rnn'.*expected one of {known} \(any case\)"):
        rj.get_cell("rnn", H)
    assert rj.get_cell("LSTM", H) == rj.LSTM(H) and rj.get_cell("MinGRU", H) == rj.MinGRU(H)
    with pytest.raises(ValueError, match=r"init=.*expected one of"):
        inits.get_initializer(3)
