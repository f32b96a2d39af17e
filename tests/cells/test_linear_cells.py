"""minGRU and LRU: one associative scan == the sequential runner == a Python loop over ``step``,
closed forms, initialisation, gradients, bad input."""

import functools

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax.cells.linear import LRU, MinGRU  # noqa: E402
from rnn_jax.loops import deer  # noqa: E402

I, T = 3, 9
CELLS = {"mingru": MinGRU(4), "mingru-g": MinGRU(4, candidate="g"), "lru": LRU(6)}
STATIC = ("reverse", "time_major")
RUN = jax.jit(rj.rnn, static_argnums=0, static_argnames=STATIC)


@functools.partial(jax.jit, static_argnums=0, static_argnames=STATIC)
def parallel(cell, params, xs, carry=None, **kw):
    return cell.scan_parallel(params, xs, carry, **kw)


@functools.partial(jax.jit, static_argnums=(0, 5))
def loop_oracle(cell, params, xs, carry, mask, reverse=False):
    """The runner's contract as a Python loop over ``cell.step`` (batch-major)."""
    c, hs = carry, [None] * xs.shape[-2]
    for t in (reversed(range(xs.shape[-2])) if reverse else range(xs.shape[-2])):
        new_c, h = cell.step(params, c, xs[..., t, :])
        real = mask[..., t, None]
        c, hs[t] = jnp.where(real, new_c, c), jnp.where(real, h, 0.0)
    return jnp.stack(hs, axis=-2), c


def case(cell, batch_shape, seed):
    """(params with a random bias, N(0, 1) inputs, a random carry); NumPy data, no compiles."""
    rng = np.random.default_rng(seed)
    params = cell.init(jax.random.key(seed), I)
    params["b"] = jnp.asarray(0.3 * rng.standard_normal(params["b"].shape), jnp.float32)
    xs = jnp.asarray(rng.standard_normal((*batch_shape, T, I)), jnp.float32)
    c0 = jnp.asarray(0.5 * rng.standard_normal((*batch_shape, cell.hidden_size)), jnp.float32)
    return params, xs, c0


# -- oracle equivalence ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mingru", "lru"])
def test_parallel_scan_equals_runner_and_step_loop(name):
    cell = CELLS[name]
    params, xs, c0 = case(cell, (2, 3), 0)
    mask = np.random.default_rng(1).random((2, 3, T)) < 0.6
    mask[0, 0] = False
    mask = jnp.asarray(mask)
    for reverse in (False, True):
        expected = loop_oracle(cell, params, xs, c0, mask, reverse)
        for got in (parallel(cell, params, xs, c0, mask=mask, reverse=reverse),
                    RUN(cell, params, xs, c0, mask=mask, reverse=reverse)):
            for g, e in zip(got, expected, strict=True):
                np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(parallel(cell, params, xs, c0, mask=mask)[1][0, 0], c0[0, 0])


def test_time_major_lengths_and_no_batch_axes():
    cell = CELLS["lru"]
    params, xs, _ = case(cell, (3,), 2)
    lengths = jnp.array([T, 0, 4])
    got = parallel(cell, params, jnp.moveaxis(xs, 1, 0), lengths=lengths, time_major=True)
    hs, final = RUN(cell, params, xs, lengths=lengths)
    np.testing.assert_allclose(got[0], jnp.moveaxis(hs, 1, 0), atol=1e-5)
    np.testing.assert_allclose(got[1], final, atol=1e-5)
    np.testing.assert_allclose(parallel(cell, params, xs[2])[0], RUN(cell, params, xs[2])[0],
                               atol=1e-5)
    assert cell.scan_parallel(params, xs[:, :0])[0].shape == (3, 0, cell.hidden_size)


# -- closed forms ----------------------------------------------------------------------------------
def test_lru_is_the_complex_diagonal_recurrence():
    cell = LRU(4, r_min=0.5, r_max=0.95)
    params, xs, _ = case(cell, (), 3)
    w = np.asarray(params["W"], np.float64)
    b_complex = w[:, :2] + 1j * w[:, 2:]
    lam = np.exp(-np.exp(np.asarray(params["nu"], np.float64)) + 1j * np.asarray(params["theta"]))
    gamma = np.exp(np.asarray(params["gamma_log"], np.float64))
    bias = np.asarray(params["b"], np.float64)
    x, expected = np.zeros(2, complex), []
    for t in range(T):
        u = np.asarray(xs[t], np.float64) @ b_complex + bias[:2] + 1j * bias[2:]
        x = lam * x + gamma * u
        expected.append(np.concatenate([x.real, x.imag]))
    np.testing.assert_allclose(parallel(cell, params, xs)[0], np.stack(expected), atol=1e-5)


def test_lru_initialisation_follows_the_paper():
    cell = LRU(512, r_min=0.9, r_max=0.99, max_phase=np.pi / 10)
    params = cell.init(jax.random.key(4), 7)
    mod = np.abs(np.asarray(cell.eigenvalues(params)))
    assert mod.min() >= 0.9 - 1e-6 and mod.max() <= 0.99 + 1e-6
    theta = np.asarray(params["theta"])
    assert theta.min() >= 0.0 and theta.max() <= np.pi / 10
    np.testing.assert_allclose(np.exp(params["gamma_log"]), np.sqrt(1 - mod**2), rtol=1e-4)
    assert params["W"].shape == (7, 512) and params["nu"].shape == (256,)
    assert abs(float(jnp.std(params["W"])) - (1 / np.sqrt(14))) < 0.02
    np.testing.assert_array_equal(params["b"], 0.0)


def test_mingru_closed_form():
    cell = MinGRU(4, candidate="g")
    params, xs, c0 = case(cell, (), 5)
    u = np.asarray(xs, np.float64) @ np.asarray(params["W"]) + np.asarray(params["b"])
    z = 1 / (1 + np.exp(-u[:, :4]))
    cand = np.where(u[:, 4:] >= 0, u[:, 4:] + 0.5, 1 / (1 + np.exp(-u[:, 4:])))
    h, expected = np.asarray(c0, np.float64), []
    for t in range(T):
        h = (1 - z[t]) * h + z[t] * cand[t]
        expected.append(h)
    np.testing.assert_allclose(parallel(cell, params, xs, c0)[0], np.stack(expected), atol=1e-5)


def test_deer_solves_a_linear_cell_in_one_newton_step():
    cell = CELLS["lru"]
    params, xs, c0 = case(cell, (2,), 6)
    hs, final, info = deer.deer_rnn(cell, params, xs, c0, return_info=True)
    assert int(info["iterations"].max()) <= 2  # exact after one, confirmed by the second
    np.testing.assert_allclose(hs, parallel(cell, params, xs, c0)[0], atol=1e-5)


# -- gradients -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mingru", "lru"])
def test_gradients_match_the_sequential_runner(name):
    cell = CELLS[name]
    params, xs, c0 = case(cell, (2,), 7)
    mask = jnp.arange(T)[None] < jnp.array([[T], [5]])
    a = jnp.asarray(np.random.default_rng(8).standard_normal((2, T, cell.hidden_size)),
                    jnp.float32)

    def loss(run, params, xs, c0):
        hs, final = run(params, xs, c0, mask=mask, reverse=True)
        return jnp.sum(a * jnp.tanh(hs)) + jnp.sum(final**2)

    got = jax.jit(jax.grad(functools.partial(loss, cell.scan_parallel), (0, 1, 2)))(params, xs,
                                                                                   c0)
    run = functools.partial(rj.rnn, cell)
    expected = jax.grad(functools.partial(loss, run), (0, 1, 2))(params, xs, c0)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_gradients_float64_check_grads():
    cell = LRU(2)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                              cell.init(jax.random.key(9), 2))
        xs = jnp.asarray(np.random.default_rng(10).standard_normal((2, 4, 2)))
        c0 = jnp.asarray(np.random.default_rng(11).standard_normal((2, 2)))
        mask = jnp.array([[True, False, True, True], [True, True, True, False]])

        def f(params, xs, c0):
            return cell.scan_parallel(params, xs, c0, mask=mask, reverse=True)

        check_grads(jax.jit(f), (params, xs, c0), order=1, modes=("fwd", "rev"))
    assert jnp.zeros(1).dtype == jnp.float32


# -- bad input -------------------------------------------------------------------------------------
def test_bad_input_raises():
    with pytest.raises(ValueError, match="even"):
        LRU(5)
    with pytest.raises(ValueError, match="r_min"):
        LRU(4, r_min=0.5, r_max=0.4)
    with pytest.raises(ValueError, match="candidate"):
        MinGRU(4, candidate="relu")
    with pytest.raises(ValueError, match="hidden_size"):
        MinGRU(0)
    cell = CELLS["lru"]
    params, xs, c0 = case(cell, (2,), 10)
    with pytest.raises(ValueError, match="input_size"):
        cell.scan_parallel(params, xs[..., :2])
    with pytest.raises(ValueError, match="carry"):
        cell.scan_parallel(params, xs, c0[:, :2])
    with pytest.raises(ValueError, match="mask"):
        cell.scan_parallel(params, xs, mask=jnp.ones((2, 3), bool))
