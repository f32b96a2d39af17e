"""Lengths outside [0, T]: concrete ones raise; traced ones (under jit) are clamped into [0, T]
identically on every method; ``jax.experimental.checkify`` turns them into an error under jit."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.experimental import checkify  # noqa: E402

import rnn_jax as rj  # noqa: E402

B, T, I = 4, 5, 2
CELLS = {"elman": rj.Elman(3), "lstm": rj.LSTM(3), "gru": rj.GRU(3), "mingru": rj.MinGRU(3),
         "lru": rj.LRU(4)}
CASES = ([(c, m) for c in ("elman", "lstm", "gru") for m in ("scan", "fused", "pallas")]
         + [(c, m) for c in ("lstm", "mingru") for m in ("deer", "quasi_deer")]
         + [(c, m) for c in ("mingru", "lru") for m in ("scan", "scan_parallel")])
OUT_OF_RANGE = np.array([T + 5, -1, 2, -7])
CLAMPED = np.clip(OUT_OF_RANGE, 0, T)


def run(cell_name, method, params, xs, lengths):
    cell = CELLS[cell_name]
    carry = jax.tree.map(lambda c: c + 0.5, cell.initial_carry((B,)))  # the -1 row keeps it
    if method == "scan_parallel":
        return cell.scan_parallel(params, xs, carry, lengths=lengths)
    return rj.rnn(cell, params, xs, carry, lengths=lengths, method=method)


@pytest.mark.parametrize("cell_name, method", CASES, ids=[f"{c}-{m}" for c, m in CASES])
def test_traced_lengths_are_clamped_on_every_method(cell_name, method):
    params = CELLS[cell_name].init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    f = jax.jit(run, static_argnums=(0, 1))
    got = f(cell_name, method, params, xs, jnp.asarray(OUT_OF_RANGE))
    want = run(cell_name, method, params, xs, jnp.asarray(CLAMPED))  # eager: concrete, valid
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)
    hs, final = got
    np.testing.assert_array_equal(np.asarray(hs[1]), 0.0)  # -1: no real step, zero outputs
    for c in jax.tree.leaves(final):  # ... and the initial carry back, not a zero carry
        np.testing.assert_array_equal(np.asarray(c[1]), 0.5)
    reference = jax.jit(run, static_argnums=(0, 1))(cell_name, "scan", params, xs,
                                                     jnp.asarray(OUT_OF_RANGE))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)


def test_concrete_lengths_out_of_range_raise():
    cell = CELLS["gru"]
    params = cell.init(jax.random.key(0), I)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=5\], got min -7 max 10"):
        rj.rnn(cell, params, jnp.ones((B, T, I)), lengths=jnp.asarray(OUT_OF_RANGE))


def test_checkify_raises_under_jit():
    cell = CELLS["lstm"]
    params = cell.init(jax.random.key(0), I)
    xs = jnp.ones((B, T, I))

    def loss(params, lengths):
        return jnp.sum(rj.rnn(cell, params, xs, lengths=lengths)[0])

    checked = checkify.checkify(jax.jit(loss))
    err, _ = checked(params, jnp.asarray(OUT_OF_RANGE))
    assert err.get() == ("lengths must lie in [0, T=5], got min -7 max 10 (`check` failed)")
    with pytest.raises(Exception, match=r"lengths must lie in \[0, T=5\], got min -7 max 10"):
        err.throw()
    err, value = checked(params, jnp.asarray(CLAMPED))
    assert err.get() is None
    np.testing.assert_allclose(float(value), float(loss(params, jnp.asarray(CLAMPED))),
                               rtol=1e-6)
    # also through grad and vmap, as training steps and sweeps run it
    err, _ = checkify.checkify(jax.jit(jax.grad(loss)))(params, jnp.asarray(OUT_OF_RANGE))
    assert "lengths must lie in [0, T=5]" in err.get()
    batched = jnp.stack([jnp.asarray(CLAMPED), jnp.asarray(OUT_OF_RANGE)])
    err, _ = checkify.checkify(jax.vmap(loss, (None, 0)))(params, batched)
    assert "lengths must lie in [0, T=5]" in err.get()
