"""What each remedy cell's paper says of it, checked: expRNN's U stays orthogonal under an
optimizer, IndRNN's memory bounds on |u| and on the gradient over T steps, the antisymmetric
spectra, coRNN's bounded energy; and each cell's step against its equations in NumPy."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
import scipy.linalg  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax import diagnostics  # noqa: E402
from rnn_jax.cells.orthogonal import skew  # noqa: E402

I, H = 2, 6


def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_tree(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def perturbed(cell, seed, scale=0.5):
    params = cell.init(jax.random.key(seed), I)
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: p + jnp.asarray(scale * rng.standard_normal(p.shape), p.dtype), params)


# -- expRNN -------------------------------------------------------------------------------------
def test_exprnn_U_stays_orthogonal_under_adam():
    """Twenty Adam steps at a large learning rate on a loss through the runner: A moves far,
    U = expm(A) stays orthogonal to float32 round-off (the paper's point: any optimizer)."""
    cell = rj.ExpRNN(16)
    params = cell.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (4, 10, I))
    opt = optax.adam(0.3)

    @jax.jit
    def update(params, state):
        grads = jax.grad(lambda p: jnp.sum(jnp.sin(rj.rnn(cell, p, xs)[0])))(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    a0 = params["A"]
    for _ in range(20):
        params, state = update(params, state)
    assert float(jnp.abs(params["A"] - a0).max()) > 1.0  # the optimizer did move A
    u = cell.prepare(params)["U"]
    np.testing.assert_allclose(u.T @ u, np.eye(16), atol=1e-5)
    np.testing.assert_allclose(jnp.abs(jnp.linalg.eigvals(u)), 1.0, atol=1e-5)
    assert float(jnp.abs(diagnostics.recurrent_sigma_max(cell, params)[0] - 1.0)) < 1e-5


def test_exprnn_initialisations_and_parametrisation():
    """Henaff: rotation angles s ~ U(-pi, pi); Cayley: s = -tan(t/2) in [-1, 0]; only the strict
    upper triangle of the parameter A is read (its lower triangle gets no gradient)."""
    for kind, lo, hi in (("henaff", -np.pi, np.pi), ("cayley", -1.0, 0.0)):
        a = rj.ExpRNN(64, skew_init=kind).init(jax.random.key(2), I)["A"]
        np.testing.assert_array_equal(a, -a.T)
        s = np.asarray(a)[np.arange(0, 64, 2), np.arange(1, 64, 2)]
        assert lo <= s.min() and s.max() <= hi and s.std() > 0.1 * (hi - lo) / 4
        off = np.asarray(a).copy()
        off[np.arange(0, 64, 2), np.arange(1, 64, 2)] = 0
        off[np.arange(1, 64, 2), np.arange(0, 64, 2)] = 0
        assert not off.any()  # 2x2 blocks only
    cell = rj.ExpRNN(5)
    params = perturbed(cell, 3)
    g = jax.grad(lambda p: jnp.sum(cell.prepare(p)["U"] ** 3))(params)["A"]
    assert np.all(np.tril(np.asarray(g)) == 0) and np.abs(np.triu(np.asarray(g), 1)).max() > 0


def test_exprnn_step_equals_numpy():
    cell = rj.ExpRNN(H)
    params = perturbed(cell, 4)
    h, x = np.random.default_rng(5).standard_normal((3, H)), np.ones((3, I))
    p = np_tree(params)
    a = np.triu(p["A"], 1)
    z = x @ p["W"] + h @ scipy.linalg.expm(a - a.T)
    want = np.sign(z) * np.maximum(np.abs(z) + p["b"], 0)
    np.testing.assert_allclose(cell.step(params, jnp.asarray(h, jnp.float32),
                                         jnp.asarray(x, jnp.float32))[1], want, atol=1e-5)
    np.testing.assert_array_equal(skew(params["A"]), -skew(params["A"]).T)


# -- IndRNN -------------------------------------------------------------------------------------
def test_indrnn_bounds_hold_and_set_the_gradient_over_the_memory():
    """With memory=T the weights the cell runs with satisfy min_gain^(1/T) <= |u| <=
    max_gain^(1/T) however far the parameters go, and with ReLU active dh_T/dh_0 = u^T, so the
    gradient over T steps lies in [min_gain, max_gain] (Li et al. 2018, Sec. 3.1)."""
    t = 20
    cell = rj.IndRNN(H, memory=t, max_gain=2.0, min_gain=0.5)
    params = cell.init(jax.random.key(6), I)
    lo, hi = cell.bounds()
    assert hi == pytest.approx(2 ** (1 / t)) and lo == pytest.approx(0.5 ** (1 / t))
    init_u = np.asarray(params["u"])
    assert np.all((init_u >= lo - 1e-7) & (init_u <= hi + 1e-7))
    params["u"] = jnp.array([3.0, -3.0, 0.0, 1e-3, -0.99, 1.01])  # an optimizer went wild
    u = np.asarray(cell.prepare(params)["u"])
    np.testing.assert_allclose(u, np.where(params["u"] >= 0, 1, -1)
                               * np.clip(np.abs(np.asarray(params["u"])), lo, hi), rtol=1e-6)
    # (a negative u makes h alternate and leave the ReLU's active range; keep them active)
    params["u"] = jnp.array([3.0, 1.5, 0.0, 1e-3, -0.99, 1.01])
    u = np.asarray(cell.prepare(params)["u"])
    params["b"] = jnp.full((H,), 5.0)  # every ReLU active along the trajectory
    xs = jnp.zeros((t, I))
    jac = diagnostics.jacobian_product(cell, params, xs)
    gain = np.diag(np.asarray(jac))
    np.testing.assert_allclose(gain, u ** t, rtol=1e-4)
    assert np.all(np.abs(gain) <= 2.0 * (1 + 1e-4)) and np.all(np.abs(gain) >= 0.5 * (1 - 1e-4))
    np.testing.assert_allclose(np.abs(gain[:2]), 2.0, rtol=1e-4)  # clipped at max: exactly 2
    np.testing.assert_allclose(np.abs(gain[2:4]), 0.5, rtol=1e-4)  # clipped at min: exactly 1/2
    free = rj.IndRNN(H)  # no memory: no constraint
    assert free.bounds() is None
    np.testing.assert_array_equal(free.prepare(params)["u"], params["u"])


def test_indrnn_step_equals_numpy():
    cell = rj.IndRNN(H, activation="tanh")
    params = perturbed(cell, 7)
    h, x = np.random.default_rng(8).standard_normal((2, 3, H))
    x = x[:, :I]
    p = np_tree(params)
    want = np.tanh(x @ p["W"] + p["b"] + p["u"] * h)
    got = cell.step(params, jnp.asarray(h, jnp.float32), jnp.asarray(x, jnp.float32))[1]
    np.testing.assert_allclose(got, want, atol=1e-5)


# -- AntisymmetricRNN and Lipschitz RNN --------------------------------------------------------
def test_antisymmetric_spectrum():
    """M - M^T has purely imaginary eigenvalues; A = M - M^T - gamma I has real parts -gamma."""
    cell = rj.AntisymmetricRNN(8, gamma=0.3, init_std=3.0)
    params = perturbed(cell, 9, scale=2.0)
    m = np.asarray(params["M"], np.float64)
    ev = np.linalg.eigvals(m - m.T)
    assert np.abs(ev.imag).max() > 1.0
    np.testing.assert_allclose(ev.real, 0.0, atol=1e-6)
    a = np.asarray(cell.recurrent_matrices(params)[0], np.float64)
    np.testing.assert_allclose(np.linalg.eigvals(a).real, -0.3, atol=1e-5)


def test_antisymmetric_steps_equal_numpy():
    for gated in (False, True):
        cell = rj.AntisymmetricRNN(H, eps=0.2, gamma=0.1, gated=gated)
        params = perturbed(cell, 10)
        h, x = np.random.default_rng(11).standard_normal((2, 3, H))
        x = x[:, :I]
        p = np_tree(params)
        ha = h @ (p["M"] - p["M"].T - 0.1 * np.eye(H))
        u = x @ p["W"] + p["b"]
        step = np.tanh(ha + u[:, :H])
        if gated:
            step = np_sigmoid(ha + u[:, H:]) * step
        got = cell.step(params, jnp.asarray(h, jnp.float32), jnp.asarray(x, jnp.float32))[1]
        np.testing.assert_allclose(got, h + 0.2 * step, atol=1e-5)


def test_lipschitz_matrices_and_step():
    """A_beta's symmetric part is (1 - beta)(M + M^T) - gamma I and its antisymmetric part
    beta (M - M^T); at beta = 1 every eigenvalue has real part -gamma."""
    cell = rj.LipschitzRNN(H, beta=0.7, gamma=0.05, eps=0.3, init_std=6.0)
    params = perturbed(cell, 12)
    p = np_tree(params)
    a, w = np.asarray(cell.recurrent_matrices(params), np.float64)
    np.testing.assert_allclose((a + a.T) / 2, 0.3 * (p["M_A"] + p["M_A"].T) - 0.05 * np.eye(H),
                               atol=1e-5)
    np.testing.assert_allclose((w - w.T) / 2, 0.7 * (p["M_W"] - p["M_W"].T), atol=1e-5)
    h, x = np.random.default_rng(13).standard_normal((2, 3, H))
    x = x[:, :I]
    want = h + 0.3 * (h @ a + np.tanh(h @ w + x @ p["W"] + p["b"]))
    got = cell.step(params, jnp.asarray(h, jnp.float32), jnp.asarray(x, jnp.float32))[1]
    np.testing.assert_allclose(got, want, atol=1e-5)
    one = rj.LipschitzRNN(H, beta=1.0, gamma=0.05)
    a1 = np.asarray(one.recurrent_matrices(params)[0], np.float64)
    np.testing.assert_allclose(np.linalg.eigvals(a1).real, -0.05, atol=1e-5)


# -- coRNN --------------------------------------------------------------------------------------
@pytest.mark.parametrize("implicit", [False, True])
def test_cornn_energy_stays_under_the_bound(implicit):
    """gamma |y_n|^2 + |z_n|^2 <= n H dt / rate at every step, for weights and inputs large
    enough that tanh saturates, with the authors' adding-problem constants (dt = 0.06,
    gamma = 66, epsilon = 15) and with their sMNIST ones."""
    for dt, gamma, eps in ((0.06, 66.0, 15.0), (0.042, 2.7, 4.7)):
        cell = rj.CoRNN(16, dt=dt, gamma=gamma, epsilon=eps, implicit_damping=implicit)
        params = perturbed(cell, 14, scale=3.0)
        xs = 10.0 * jax.random.normal(jax.random.key(15), (4, 300, I))
        _, _, (ys, zs) = rj.rnn(cell, params, xs, return_carries=True)
        energy = gamma * jnp.sum(ys ** 2, -1) + jnp.sum(zs ** 2, -1)  # [4, 300]
        bound = cell.energy_bound(np.arange(1, 301))
        assert np.isfinite(bound).all()
        assert np.all(np.asarray(energy) <= bound[None] * (1 + 1e-5))
        assert float(energy.max()) > 1e-3 * bound[-1]  # the states do move


def test_cornn_step_equals_numpy():
    for implicit in (False, True):
        cell = rj.CoRNN(H, dt=0.1, gamma=2.0, epsilon=3.0, implicit_damping=implicit)
        params = perturbed(cell, 16)
        y, z, x = np.random.default_rng(17).standard_normal((3, 3, H))
        x = x[:, :I]
        p = np_tree(params)
        force = np.tanh(x @ p["W"] + p["b"] + y @ p["W_y"] + z @ p["W_z"])
        if implicit:
            z_new = (z + 0.1 * (force - 2.0 * y)) / (1 + 0.1 * 3.0)
        else:
            z_new = z + 0.1 * (force - 2.0 * y - 3.0 * z)
        carry = (jnp.asarray(y, jnp.float32), jnp.asarray(z, jnp.float32))
        (y_got, z_got), h = cell.step(params, carry, jnp.asarray(x, jnp.float32))
        np.testing.assert_allclose(z_got, z_new, atol=1e-5)
        np.testing.assert_allclose(y_got, y + 0.1 * z_new, atol=1e-5)
        np.testing.assert_array_equal(h, y_got)


# -- gated variants -----------------------------------------------------------------------------
def _gates(params, h, x, n):
    p = np_tree(params)
    return p, np.split(x @ p["W"] + p["b"], n, axis=-1)


def test_gated_variants_equal_their_equations():
    rng = np.random.default_rng(18)
    h, c = rng.standard_normal((2, 3, H))
    x = rng.standard_normal((3, I))
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731

    cell = rj.GRUv1(H)
    params = perturbed(cell, 19)
    p, (ur, uz, un) = _gates(params, h, x, 3)
    ur_, uz_, un_ = np.split(p["U"], 3, axis=-1)
    r, z = np_sigmoid(ur + h @ ur_), np_sigmoid(uz + h @ uz_)
    want = (1 - z) * np.tanh(un + (r * h) @ un_) + z * h
    np.testing.assert_allclose(cell.step(params, f32(h), f32(x))[1], want, atol=1e-5)

    cell = rj.MGU(H)
    params = perturbed(cell, 20)
    p, (uf, un) = _gates(params, h, x, 2)
    uf_, un_ = np.split(p["U"], 2, axis=-1)
    f = np_sigmoid(uf + h @ uf_)
    want = (1 - f) * h + f * np.tanh(un + (f * h) @ un_)
    np.testing.assert_allclose(cell.step(params, f32(h), f32(x))[1], want, atol=1e-5)

    cell = rj.PeepholeLSTM(H)
    params = perturbed(cell, 21)
    p, _ = _gates(params, h, x, 4)
    i, f, g, o = np.split(x @ p["W"] + p["b"] + h @ p["U"], 4, axis=-1)
    pi, pf, po = np.split(p["p"], 3)
    c_new = np_sigmoid(f + pf * c) * c + np_sigmoid(i + pi * c) * np.tanh(g)
    h_new = np_sigmoid(o + po * c_new) * np.tanh(c_new)
    (h_got, c_got), _ = cell.step(params, (f32(h), f32(c)), f32(x))
    np.testing.assert_allclose(c_got, c_new, atol=1e-5)
    np.testing.assert_allclose(h_got, h_new, atol=1e-5)
    plain = {k: v for k, v in params.items() if k != "p"}  # zero peepholes: the plain LSTM
    zero = {**params, "p": jnp.zeros_like(params["p"])}
    for a, b in zip(jax.tree.leaves(cell.step(zero, (f32(h), f32(c)), f32(x))),
                    jax.tree.leaves(rj.LSTM(H).step(plain, (f32(h), f32(c)), f32(x))),
                    strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)

    def ln(v, gain, bias=0.0):
        return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5) \
            * gain + bias

    cell = rj.LNLSTM(H)
    params = perturbed(cell, 22)
    p = np_tree(params)
    z = ln(x @ p["W"], p["gain_x"]) + ln(h @ p["U"], p["gain_h"]) + p["b"]
    i, f, g, o = np.split(z, 4, axis=-1)
    c_new = np_sigmoid(f) * c + np_sigmoid(i) * np.tanh(g)
    h_new = np_sigmoid(o) * np.tanh(ln(c_new, p["gain_c"], p["bias_c"]))
    (h_got, c_got), _ = cell.step(params, (f32(h), f32(c)), f32(x))
    np.testing.assert_allclose(c_got, c_new, atol=1e-5)
    np.testing.assert_allclose(h_got, h_new, atol=1e-5)
    # rescaled weights leave the LN-LSTM unchanged up to LN's eps (what LN is for)
    big = {**params, "W": 7.0 * params["W"], "U": 0.5 * params["U"]}
    (h_big, _), _ = cell.step(big, (f32(h), f32(c)), f32(x))
    np.testing.assert_allclose(h_big, h_got, atol=1e-3)
    assert np.abs(np.asarray(h_big) - np.asarray(h_got)).max() > 0  # it did run other numbers


def test_lstm_variants_keep_the_lstm_init_options():
    params = rj.PeepholeLSTM(H, forget_bias=2.0).init(jax.random.key(0), I)
    np.testing.assert_array_equal(params["b"][H:2 * H], 2.0)
    assert not np.asarray(params["p"]).any()
    params = rj.LNLSTM(H, chrono_max=50).init(jax.random.key(0), I)
    b_f = np.asarray(params["b"][H:2 * H])
    assert np.all((b_f >= 0) & (b_f <= np.log(49) + 1e-6))
    np.testing.assert_array_equal(params["b"][:H], -params["b"][H:2 * H])
