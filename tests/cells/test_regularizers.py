"""Variational (recurrent) dropout and zoneout as cell wrappers: rate 0 and deterministic mode,
one mask per sequence, expectations, keys, the runner's contract, the model's training mode."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax import diagnostics  # noqa: E402
from rnn_jax.cells import sequence_dropout  # noqa: E402

I, T, H = 3, 7, 5
RUN = jax.jit(rj.rnn, static_argnums=0, static_argnames=("reverse", "return_carries"))


def data(batch_shape, seed):
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.standard_normal((*batch_shape, T, I)), jnp.float32)
    mask = rng.random((*batch_shape, T)) < 0.7
    probes = jnp.asarray(0.1 * rng.standard_normal((*batch_shape, T, H)), jnp.float32)
    return xs, jnp.asarray(mask), probes


def loop(cell, params, xs, carry, mask, probes, reverse=False):
    """The runner's rule as a Python loop over ``cell.step``."""
    c, hs = carry, [None] * T
    for t in (reversed(range(T)) if reverse else range(T)):
        new, h = cell.step(params, c, xs[..., t, :])
        h = h + probes[..., t, :]
        new = cell.with_hidden(new, h)
        real = mask[..., t, None]
        c = jax.tree.map(lambda n, o, real=real: jnp.where(real, n, o), new, c)
        hs[t] = jnp.where(real, h, 0.0)
    return jnp.stack(hs, axis=-2), c


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def assert_trees_close(a, b, tol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


# -- off: exactly the inner cell ------------------------------------------------------------------
def test_rate_zero_and_deterministic_are_exactly_the_inner_cell():
    """Bit for bit at the step (the same arithmetic); through the runner to float32 round-off,
    since XLA may fuse the wrapper's program differently (a few ulps)."""
    xs, mask, probes = data((3,), 0)
    for inner in (rj.LSTM(H),):
        params = inner.init(jax.random.key(1), I)
        want = RUN(inner, params, xs, mask=mask, probes=probes)
        c0 = jax.tree.map(lambda c: c + 0.3, inner.initial_carry((3,)))
        step = inner.step(params, c0, xs[:, 0])
        wrappers = [(rj.VariationalDropout(inner, 0.0), True),
                    (rj.VariationalDropout(inner, 0.4), False),  # no key: no dropout
                    (rj.Zoneout(inner, 0.0), True)]
        for cell, keyed in wrappers:
            carry = (cell.initial_carry_keyed(jax.random.key(2), (3,)) if keyed
                     else cell.initial_carry((3,)))
            new, h = cell.step(params, {**carry, "cell": c0}, xs[:, 0])
            assert_trees_equal((new["cell"], h), step)
            hs, final = RUN(cell, params, xs, carry, mask=mask, probes=probes)
            np.testing.assert_allclose(hs, want[0], rtol=1e-6, atol=1e-6)
            assert_trees_close(final["cell"], want[1], tol=1e-6)


# -- variational dropout --------------------------------------------------------------------------
def test_variational_mask_is_one_per_sequence_and_drops_h_in_the_product():
    inner = rj.Elman(H)
    cell = rj.VariationalDropout(inner, 0.5)
    params = inner.init(jax.random.key(3), I)
    xs, _, _ = data((4,), 4)
    carry = cell.initial_carry_keyed(jax.random.key(5), (4,))
    m = np.asarray(carry["mask"])
    assert set(np.unique(m)) <= {0.0, 2.0} and 0 < (m == 0).sum() < m.size
    hs, final, carries = RUN(cell, params, xs, carry, return_carries=True)
    np.testing.assert_array_equal(carries["mask"], np.broadcast_to(m[:, None], (4, T, H)))
    h, want = jnp.zeros((4, H)), []  # h_t = tanh(x_t W + b + (m * h_{t-1}) U)
    for t in range(T):
        h = jnp.tanh(xs[:, t] @ params["W"] + params["b"][None] + (m * h) @ params["U"])
        want.append(h)
    np.testing.assert_allclose(hs, jnp.stack(want, 1), atol=1e-5)
    np.testing.assert_array_equal(final["mask"], m)


def test_variational_expectation_and_keys():
    cell = rj.VariationalDropout(rj.LSTM(8), 0.3)
    n = 4000
    masks = np.asarray(cell.initial_carry_keyed(jax.random.key(6), (n,))["mask"])
    se = np.sqrt(0.3 / 0.7 / masks.size)  # std of the mean of m, E[m] = 1
    assert abs(masks.mean() - 1.0) < 5 * se
    assert abs((masks == 0).mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / masks.size)
    a = cell.initial_carry_keyed(jax.random.key(7), (3,))
    assert_trees_equal(a, cell.initial_carry_keyed(jax.random.key(7), (3,)))
    assert np.any(a["mask"] != cell.initial_carry_keyed(jax.random.key(8), (3,))["mask"])


def test_variational_refuses_cells_whose_h_is_their_memory():
    for inner in (rj.GRU(4), rj.MGU(4), rj.CoRNN(4), rj.MinGRU(4)):
        with pytest.raises(ValueError, match=type(inner).__name__):
            rj.VariationalDropout(inner, 0.2)
    with pytest.raises(ValueError, match="rate"):
        rj.VariationalDropout(rj.LSTM(4), 1.0)


# -- zoneout --------------------------------------------------------------------------------------
def test_zoneout_deterministic_is_the_expectation():
    """No key: h_t = r h_{t-1} + (1 - r) h~_t and c_t = r_c c_{t-1} + (1 - r_c) c~_t."""
    inner = rj.LSTM(H)
    cell = rj.Zoneout(inner, rate_h=0.3, rate_c=0.6)
    params = inner.init(jax.random.key(9), I)
    xs, _, _ = data((2,), 10)
    hs, final = RUN(cell, params, xs)
    h, c = inner.initial_carry((2,))
    for t in range(T):
        (h_new, c_new), _ = inner.step(params, (h, c), xs[:, t])
        h, c = 0.3 * h + 0.7 * h_new, 0.6 * c + 0.4 * c_new
        np.testing.assert_allclose(hs[:, t], h, atol=1e-5)
    assert_trees_close(final["cell"], (h, c))


def test_zoneout_keeps_or_updates_each_unit_at_the_rate():
    inner = rj.CoRNN(H, dt=0.5)  # carry (y, z): rate_h acts on y, rate_c on z
    cell = rj.Zoneout(inner, rate_h=0.4, rate_c=0.2)
    params = inner.init(jax.random.key(11), I)
    n = 600
    xs = jax.random.normal(jax.random.key(12), (n, 2, I))
    carry = cell.initial_carry_keyed(jax.random.key(13), (n,))
    carry = {**carry, "cell": (jnp.ones((n, H)), -jnp.ones((n, H)))}
    hs, final = RUN(cell, params, xs[:, :1], carry)
    (y_new, z_new), _ = inner.step(params, carry["cell"], xs[:, 0])
    y, z = final["cell"]
    kept_y, kept_z = np.asarray(y == 1.0), np.asarray(z == -1.0)
    assert np.all(kept_y | np.isclose(y, y_new, atol=1e-6))
    assert np.all(kept_z | np.isclose(z, z_new, atol=1e-6))
    for kept, rate in ((kept_y, 0.4), (kept_z, 0.2)):
        assert abs(kept.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / kept.size)
    # E[h_1] over sequences = the deterministic (expectation) step, within 5 standard errors
    det = cell.initial_carry((n,))
    det = {**det, "cell": carry["cell"]}
    h_mean = RUN(cell, params, xs[:, :1], det)[0][:, 0]
    spread = np.sqrt(0.4 * 0.6) * np.abs(np.asarray(y_new) - 1.0) / np.sqrt(n)
    assert np.all(np.abs(np.asarray(hs[:, 0]).mean(0) - np.asarray(h_mean).mean(0))
                  <= 5 * spread.mean(0) + 1e-6)
    # the key moves on at every step: the second step draws afresh
    a = np.asarray(RUN(cell, params, xs, carry)[1]["key"])
    assert np.any(a != np.asarray(final["key"])) and np.any(a != np.asarray(carry["key"]))


def test_zoneout_keys_masks_and_the_runner_contract():
    """Same key: same run; another key: another run; the runner equals the loop over step under
    masks, probes and reverse; a masked step draws nothing, so interior padding changes nothing
    on the real steps."""
    inner = rj.LSTM(H)
    cell = rj.Zoneout(inner, rate_h=0.3, rate_c=0.3)
    params = inner.init(jax.random.key(14), I)
    xs, mask, probes = data((3,), 15)
    carry = cell.initial_carry_keyed(jax.random.key(16), (3,))
    for reverse in (False, True):
        got = RUN(cell, params, xs, carry, mask=mask, probes=probes, reverse=reverse)
        assert_trees_close(got, loop(cell, params, xs, carry, mask, probes, reverse))
    a = RUN(cell, params, xs, carry)[0]
    np.testing.assert_array_equal(a, RUN(cell, params, xs, carry)[0])
    other = cell.initial_carry_keyed(jax.random.key(17), (3,))
    assert np.any(np.asarray(a) != np.asarray(RUN(cell, params, xs, other)[0]))
    real = np.asarray(mask[0])
    padded = RUN(cell, params, xs[:1], jax.tree.map(lambda c: c[:1], carry), mask=mask[:1])[0]
    alone = RUN(cell, params, xs[:1, real], jax.tree.map(lambda c: c[:1], carry))[0]
    np.testing.assert_allclose(padded[0, real], alone[0], atol=1e-6)


def test_zoneout_bidirectional_and_bad_rates():
    inner = rj.GRU(H)
    cell = rj.Zoneout(inner, rate_h=0.5)
    params = {"fwd": inner.init(jax.random.key(18), I), "bwd": inner.init(jax.random.key(19), I)}
    xs, _, _ = data((2,), 20)
    carries = (cell.initial_carry_keyed(jax.random.key(21), (2,)),
               cell.initial_carry_keyed(jax.random.key(22), (2,)))
    hs, (c_f, c_b) = rj.bidirectional(cell, cell, params, xs, carries, lengths=jnp.array([T, 3]))
    h_b, f_b = rj.rnn(cell, params["bwd"], xs, carries[1], lengths=jnp.array([T, 3]),
                      reverse=True)
    np.testing.assert_allclose(hs[..., H:], h_b, atol=1e-6)
    assert_trees_close(c_b, f_b)
    with pytest.raises(ValueError, match="rate_c"):
        rj.Zoneout(rj.Elman(4), rate_c=0.1)  # its carry is h alone
    with pytest.raises(ValueError, match="rate_h"):
        rj.Zoneout(rj.LSTM(4), rate_h=-0.1)


# -- model, diagnostics, input dropout -------------------------------------------------------------
def test_sequence_model_draws_the_noise_in_training_mode():
    cell = rj.Zoneout(rj.LSTM(H), rate_h=0.2, rate_c=0.2)
    model = rj.SequenceModel((cell, rj.VariationalDropout(rj.LSTM(H), 0.3)), output_size=2,
                             readout="last")
    params = model.init(jax.random.key(23), I)
    xs, _, _ = data((4,), 24)
    evaluate = model.apply(params, xs)
    plain = rj.SequenceModel(rj.LSTM(H), output_size=2, num_layers=2, readout="last")
    np.testing.assert_allclose(  # deterministic VD = LSTM; deterministic zoneout = expectation
        evaluate, model.apply(params, xs, carries=model.initial_carries((4,))), atol=0)
    assert np.any(np.asarray(evaluate) != np.asarray(plain.apply(params, xs)))
    k = jax.random.key(25)
    train = model.apply(params, xs, key=k, deterministic=False)
    np.testing.assert_array_equal(train, model.apply(params, xs, key=k, deterministic=False))
    assert np.any(np.asarray(train) != np.asarray(evaluate))
    grads = jax.grad(lambda p: jnp.sum(model.apply(p, xs, key=k, deterministic=False) ** 2))(
        params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_diagnostics_with_wrappers():
    inner = rj.LSTM(H)
    cell = rj.Zoneout(inner, rate_h=0.1, rate_c=0.1)
    params = inner.init(jax.random.key(26), I)
    xs, _, _ = data((2,), 27)
    norms = diagnostics.grad_norms(cell, params, xs, lambda hs: jnp.sum(hs[..., -1, :]))
    assert norms.shape == (2, T) and np.all(np.isfinite(norms))
    np.testing.assert_array_equal(diagnostics.recurrent_spectral_radius(cell, params),
                                  diagnostics.recurrent_spectral_radius(inner, params))
    with pytest.raises(ValueError, match="inner cell"):
        diagnostics.jacobian_product(cell, params, xs[0])


def test_sequence_dropout_is_constant_over_time():
    xs = jnp.ones((50, T, 8))
    out = np.asarray(sequence_dropout(jax.random.key(28), xs, 0.5))
    np.testing.assert_array_equal(out, np.broadcast_to(out[:, :1], out.shape))
    assert set(np.unique(out)) == {0.0, 2.0}
    assert sequence_dropout(jax.random.key(28), xs, 0.0) is xs
