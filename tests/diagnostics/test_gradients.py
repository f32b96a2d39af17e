"""Diagnostics against closed forms: geometric adjoints, diagonal spectra, dense SVDs, Pascanu."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax import diagnostics as dg  # noqa: E402
from rnn_jax.diagnostics import jacobians  # noqa: E402

KEY = jax.random.key(0)


def _inputs(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _dot_loss(v):
    return lambda h: jnp.sum(h * v)


# -- adjoints --------------------------------------------------------------------------------------
# jitted once with the cell and loss static, so the loops below reuse one compilation
_last_step_norms = jax.jit(dg.last_step_grad_norms, static_argnums=(0, 3))


def _first_unit_loss(h):
    return jnp.sum(h[..., 0])


def test_linear_orthogonal_adjoint_is_geometric():
    """Linear RNN, U = g Q: ||dL_T/dh_{T-1-k}|| = g^k ||dL_T/dh_{T-1}|| exactly."""
    cell = rj.Elman(8, activation="identity")
    params = cell.init(KEY, 3)
    xs = _inputs(1, (2, 25, 3))
    for gain in (0.7, 1.0, 1.3):
        norms = _last_step_norms(cell, {**params, "U": gain * params["U"]}, xs,
                                 _first_unit_loss)
        np.testing.assert_allclose(norms[:, 0], 1.0, rtol=1e-6)
        want = np.broadcast_to(gain ** np.arange(25), (2, 25))
        np.testing.assert_allclose(norms, want, rtol=2e-5)
        np.testing.assert_allclose(dg.log_slope(norms), np.log(gain), atol=2e-6)


def test_probe_grads_equal_the_explicit_adjoint_recursion():
    """g_{t-1} = (g_t * (1 - h_t^2)) U^T for a tanh Elman cell and a loss on h_{T-1}."""
    cell = rj.Elman(5)
    params = cell.init(KEY, 2)
    params["b"] = _inputs(3, (5,))
    xs = _inputs(4, (9, 2))
    v = _inputs(5, (5,))
    grads = dg.hidden_grads(cell, params, xs, lambda hs: jnp.sum(hs[-1] * v))
    hs, _ = rj.rnn(cell, params, xs)
    u, hs = np.asarray(params["U"], np.float64), np.asarray(hs, np.float64)
    g = np.asarray(v, np.float64)
    want = [g]
    for t in range(8, 0, -1):
        g = (g * (1 - hs[t] ** 2)) @ u.T
        want.append(g)
    np.testing.assert_allclose(grads, np.stack(want[::-1]), rtol=1e-4, atol=1e-6)


def test_grad_norms_of_a_summed_loss_include_every_later_step():
    """For L = sum_t <v, h_t> on a linear cell, g_t = v (I + U^T + ... + (U^T)^(T-1-t))."""
    cell = rj.Elman(4, activation="identity", recurrent_gain=0.5)
    params = cell.init(KEY, 2)
    v = _inputs(6, (4,))
    norms = dg.grad_norms(cell, params, _inputs(7, (6, 2)), lambda hs: jnp.sum(hs * v[None, :]))
    u_t = np.asarray(params["U"], np.float64).T
    want, g = [], np.zeros(4)
    for _ in range(6):
        g = np.asarray(v, np.float64) + g @ u_t
        want.append(np.linalg.norm(g))
    np.testing.assert_allclose(norms, want[::-1], rtol=1e-5)


def test_pascanu_bound_holds_for_random_tanh_cells():
    """||dL_T/dh_t|| <= sigma_max(U)^(T-t) ||dL_T/dh_T|| (|tanh'| <= 1), random cells."""
    cell = rj.Elman(6, recurrent_init="normal")
    for seed in range(6):
        k_p, k_s, k_x = jax.random.split(jax.random.key(seed), 3)
        params = cell.init(k_p, 3)
        params["U"] = params["U"] * jax.random.uniform(k_s, (), minval=0.3, maxval=2.5)
        xs = 2.0 * jax.random.normal(k_x, (3, 30, 3))
        norms = _last_step_norms(cell, params, xs, _first_unit_loss)
        sigma = dg.recurrent_sigma_max(cell, params)[0]
        bound = dg.pascanu_bound(jnp.full((3,), sigma), norms[:, 0], 30)
        assert bound.shape == norms.shape
        assert bool(jnp.all(norms <= bound * (1 + 1e-4) + 1e-30)), seed


def test_time_major_last_step_norms_match_batch_major():
    cell = rj.Elman(4)
    params = cell.init(KEY, 2)
    xs = _inputs(8, (3, 7, 2))
    loss = _dot_loss(_inputs(9, (3, 4)))
    a = dg.last_step_grad_norms(cell, params, xs, loss)
    b = dg.last_step_grad_norms(cell, params, jnp.swapaxes(xs, 0, 1), loss, time_major=True)
    np.testing.assert_allclose(a, b, rtol=1e-6)


# -- Jacobian products -----------------------------------------------------------------------------
def _diagonal_cell(activation):
    d = jnp.array([1.2, -0.9, 0.5, 0.25])
    cell = rj.Elman(4, activation=activation)
    params = cell.init(KEY, 2)
    params = {"W": jnp.zeros_like(params["W"]), "U": jnp.diag(d), "b": jnp.zeros(4)}
    return cell, params, np.sort(np.log(np.abs(np.asarray(d))))[::-1]


@pytest.mark.parametrize("activation", ["identity", "tanh"])
def test_diagonal_U_gives_log_abs_diagonal(activation):
    """h = 0 stays 0 with zero input, so every J_t = diag(d): lambda_i = log|d_i|, sigma = |d|^n."""
    cell, params, want = _diagonal_cell(activation)
    xs = jnp.zeros((2, 12, 2))
    lyap = dg.lyapunov_exponents(cell, params, xs)
    np.testing.assert_allclose(lyap, np.broadcast_to(want, (2, 4)), atol=1e-5)
    log_sv = dg.top_log_singular_values(KEY, cell, params, xs, start=2, horizon=7, k=3)
    np.testing.assert_allclose(log_sv, np.broadcast_to(7 * want[:3], (2, 3)), atol=1e-4)
    sv = dg.top_singular_values(KEY, cell, params, xs, start=2, horizon=7, k=3)
    np.testing.assert_allclose(sv, np.broadcast_to(np.exp(7 * want[:3]), (2, 3)), rtol=1e-4)


def _composed_jacobian(cell, params, xs, start, horizon):
    """Oracle: jax.jacobian of a Python loop over cell.step from the carry before ``start``."""

    @jax.jit
    def oracle(params, xs):
        carry = cell.initial_carry(())
        for t in range(start):
            carry, _ = cell.step(params, carry, xs[t])
        flat, unravel = ravel_pytree(carry)

        def run(z):
            c = unravel(z)
            for t in range(start, start + horizon):
                c, _ = cell.step(params, c, xs[t])
            return ravel_pytree(c)[0]

        return jax.jacobian(run)(flat)

    return oracle(params, xs)


@pytest.mark.parametrize("cell", [rj.Elman(5), rj.LSTM(3)], ids=type)
def test_dense_product_and_power_iteration_match_the_oracle(cell):
    params = cell.init(KEY, 2)
    xs = _inputs(10, (11, 2))
    dense = dg.jacobian_product(cell, params, xs, start=3, horizon=6)
    np.testing.assert_allclose(dense, _composed_jacobian(cell, params, xs, 3, 6), atol=2e-5)
    want = np.linalg.svd(np.asarray(dense, np.float64), compute_uv=False)
    got = dg.top_singular_values(KEY, cell, params, xs, start=3, horizon=6, k=2, num_iters=60)
    np.testing.assert_allclose(got, want[:2], rtol=2e-3)


def test_lyapunov_exponents_sum_to_log_det_of_the_product():
    """sum_i lambda_i = log|det J(s, n)| / n for the full spectrum (k = D)."""
    cell = rj.Elman(4)
    params = cell.init(KEY, 2)
    xs = _inputs(11, (10, 2))
    lyap = dg.lyapunov_exponents(cell, params, xs, start=1, horizon=8)
    dense = dg.jacobian_product(cell, params, xs, start=1, horizon=8)
    _, logdet = np.linalg.slogdet(np.asarray(dense, np.float64))
    np.testing.assert_allclose(np.sum(lyap), logdet / 8, rtol=1e-4)


def test_long_horizons_do_not_overflow():
    """g = 3 over 200 steps: sigma = 3^200 ~ 1e95 overflows float32, its log does not."""
    cell = rj.Elman(4, activation="identity", recurrent_gain=3.0)
    params = cell.init(KEY, 2)
    log_sv = dg.top_log_singular_values(KEY, cell, params, _inputs(12, (200, 2)), k=2)
    np.testing.assert_allclose(log_sv, [200 * np.log(3.0)] * 2, rtol=1e-4)


def test_functions_work_under_jit_and_vmap_over_the_window():
    cell = rj.Elman(4)
    params = cell.init(KEY, 2)
    xs = _inputs(13, (2, 9, 2))
    loss = _dot_loss(_inputs(14, (2, 4)))
    eager = dg.last_step_grad_norms(cell, params, xs, loss)
    jitted = jax.jit(dg.last_step_grad_norms, static_argnums=(0, 3))(cell, params, xs, loss)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)

    def svs(p, x, start, horizon):
        return dg.top_log_singular_values(KEY, cell, p, x, start=start, horizon=horizon)

    lags = jnp.array([1, 5, 8])
    by_lag = jax.jit(jax.vmap(svs, in_axes=(None, None, 0, 0)))(params, xs, 9 - lags, lags)
    for i, lag in enumerate((1, 8)):
        np.testing.assert_allclose(by_lag[2 * i], svs(params, xs, 9 - lag, lag), rtol=1e-4,
                                   atol=1e-5)
    lyap = jax.jit(lambda p, x: dg.lyapunov_exponents(cell, p, x, k=2, key=KEY))(params, xs)
    assert lyap.shape == (2, 2) and bool(jnp.all(lyap[:, 0] >= lyap[:, 1]))
    for fn in (dg.log_slope, dg.gradient_horizon):
        np.testing.assert_array_equal(jax.jit(fn)(eager), fn(eager))
    np.testing.assert_allclose(jax.jit(lambda p: dg.recurrent_sigma_max(cell, p))(params),
                               dg.recurrent_sigma_max(cell, params), rtol=1e-6)
    stats = jax.jit(dg.clipping_stats)(eager[0], eager[0] > 0.1)
    assert set(stats) >= {"fraction_clipped", "quantiles", "max"}


# -- recurrent matrix, curves, clipping ------------------------------------------------------------
def test_gate_blocks_spectrum_of_a_scaled_orthogonal_lstm():
    cell = rj.LSTM(5)
    params = cell.init(KEY, 2)
    scales = jnp.array([0.5, 1.0, 1.5, 2.0])
    blocks = jnp.stack(jnp.split(params["U"], 4, axis=1))  # orthogonal blocks
    params["U"] = jnp.concatenate(list(blocks * scales[:, None, None]), axis=1)
    np.testing.assert_allclose(dg.recurrent_sigma_max(cell, params), scales, rtol=1e-5)
    np.testing.assert_allclose(dg.recurrent_spectral_radius(cell, params), scales, rtol=1e-5)


def test_safe_norm_does_not_overflow():
    x = jnp.full((3, 128), 1e25, jnp.float32).at[1].set(0.0)
    np.testing.assert_allclose(dg.safe_norm(x), [1e25 * np.sqrt(128), 0.0, 1e25 * np.sqrt(128)],
                               rtol=1e-6)
    np.testing.assert_allclose(dg.safe_norm(x[:, :4], axis=0), [np.sqrt(2) * 1e25] * 4,
                               rtol=1e-6)
    np.testing.assert_allclose(dg.safe_norm(jnp.array([3e-30, 4e-30])), 5e-30, rtol=1e-6)
    assert np.isinf(dg.safe_norm(jnp.array([1.0, jnp.inf])))


def test_log_slope_ignores_underflow_and_gradient_horizon():
    norms = jnp.asarray(0.5 ** np.arange(30), jnp.float32).at[20:].set(0.0)
    np.testing.assert_allclose(dg.log_slope(norms), np.log(0.5), rtol=1e-6)
    assert np.isnan(dg.log_slope(jnp.array([1.0, 0.0, 0.0])))
    np.testing.assert_allclose(dg.log_slope(jnp.array([1.0, 4.0]), lags=jnp.array([0.0, 2.0])),
                               np.log(2.0), rtol=1e-6)
    assert int(dg.gradient_horizon(norms, 1e-3)) == 10  # 0.5^10 < 1e-3 < 0.5^9
    assert int(dg.gradient_horizon(jnp.ones(7), 1e-3)) == 7
    batched = dg.gradient_horizon(jnp.stack([norms, 2 * norms]), 1e-2)
    np.testing.assert_array_equal(batched, [7, 7])


def test_clipping_stats():
    norms = jnp.array([0.5, 1.0, 2.0, 4.0, jnp.inf])
    clipped = jnp.array([False, False, True, True, True])
    stats = dg.clipping_stats(norms, clipped, quantiles=(0.0, 0.5, 1.0))
    np.testing.assert_allclose(stats["fraction_clipped"], 0.6)
    np.testing.assert_allclose(stats["quantiles"], [0.5, 1.5, 4.0])
    np.testing.assert_allclose(stats["mean"], 7.5 / 4)
    np.testing.assert_allclose(stats["max"], 4.0)
    assert int(stats["num_nonfinite"]) == 1


def test_bad_input_raises():
    cell = rj.Elman(4)
    params = cell.init(KEY, 2)
    xs = jnp.zeros((6, 2))
    with pytest.raises(TypeError, match="loss_fn"):
        dg.grad_norms(cell, params, xs, "mse")
    with pytest.raises(ValueError, match="start"):
        dg.jacobian_product(cell, params, xs, start=6)
    with pytest.raises(ValueError, match="start \\+ horizon"):
        dg.top_log_singular_values(KEY, cell, params, xs, start=2, horizon=5)
    with pytest.raises(ValueError, match="k must be"):
        dg.lyapunov_exponents(cell, params, xs, k=5)
    with pytest.raises(ValueError, match="rank"):
        jacobians.jacobian_product(cell, params, jnp.zeros((2,)))
    with pytest.raises(ValueError, match="clipped"):
        dg.clipping_stats(jnp.ones(3), jnp.ones(4, bool))
    with pytest.raises(ValueError, match="quantiles"):
        dg.clipping_stats(jnp.ones(3), jnp.ones(3, bool), quantiles=(0.5, 2.0))
    with pytest.raises(ValueError, match="U"):
        dg.recurrent_sigma_max(rj.LSTM(4), params)
    with pytest.raises(ValueError, match="eps"):
        dg.gradient_horizon(jnp.ones(3), 0.0)
