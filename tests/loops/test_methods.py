"""Every time-loop method of rj.rnn computes the same function (outputs, carries, gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj

jax.config.update("jax_numpy_rank_promotion", "raise")

CELLS = {"elman": rj.Elman(16), "lstm": rj.LSTM(16), "gru": rj.GRU(16)}
LENGTHS = jnp.array([9, 3, 0, 5])


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("method", ["fused", "pallas", "deer", "quasi_deer"])
def test_method_equals_scan(name, method):
    cell = CELLS[name]
    params = cell.init(jax.random.key(0), 3)
    xs = jax.random.normal(jax.random.key(1), (4, 9, 3))

    def loss(p, m):
        hs, final = rj.rnn(cell, p, xs, lengths=LENGTHS, reverse=True, method=m)
        return jnp.sum(jnp.sin(hs)) + sum(jnp.sum(c ** 2) for c in jax.tree.leaves(final)), (
            hs, final)

    (l_ref, out_ref), g_ref = jax.value_and_grad(loss, has_aux=True)(params, "scan")
    (l_got, out_got), g_got = jax.value_and_grad(loss, has_aux=True)(params, method)
    for want, got in zip(jax.tree.leaves(out_ref), jax.tree.leaves(out_got), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)
    for want, got in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_got), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_auto_on_cpu_is_not_the_interpreted_kernel():
    assert jax.default_backend() != "gpu"
    cell = CELLS["elman"]
    from rnn_jax.rnn import _select

    assert _select("auto", cell, {"U": None}, probes=None, return_carries=False,
                   remat=False) != "pallas"


def test_zero_length_sequences_on_every_method():
    cell = CELLS["gru"]
    params = cell.init(jax.random.key(0), 3)
    for method in ("scan", "fused", "pallas"):
        hs, final = rj.rnn(cell, params, jnp.zeros((2, 0, 3)), method=method)
        assert hs.shape == (2, 0, 16)
        np.testing.assert_array_equal(final, jnp.zeros((2, 16)))


def test_unsupported_options_and_unknown_methods_raise():
    cell = CELLS["elman"]
    params = cell.init(jax.random.key(0), 3)
    xs = jnp.zeros((2, 4, 3))
    with pytest.raises(ValueError, match="method='bogus'.*expected one of"):
        rj.rnn(cell, params, xs, method="bogus")
    with pytest.raises(ValueError, match="deer.*probes"):
        rj.rnn(cell, params, xs, probes=jnp.zeros((2, 4, 16)), method="deer")
    with pytest.raises(ValueError, match="pallas"):
        rj.rnn(cell, params, xs, probes=jnp.zeros((2, 4, 16)), method="pallas")
