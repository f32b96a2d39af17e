"""Every method keeps the input dtype: float64 in (params and xs), float64 out (outputs, final
carry, gradients), equal to the float64 scan; float32 params with float64 xs also give float64."""

import functools

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rnn_jax as rj  # noqa: E402

B, T, I = 2, 4, 3
CELLS = {"elman": rj.Elman(3), "lstm": rj.LSTM(3), "gru": rj.GRU(3), "mingru": rj.MinGRU(3),
         "lru": rj.LRU(4)}
GATED = ("elman", "lstm", "gru")
CASES = ([(c, m) for c in GATED for m in ("fused", "auto", "deer")]
         + [("lstm", "quasi_deer"), ("mingru", "quasi_deer")]
         + [(c, m) for c in ("mingru", "lru") for m in ("auto", "deer", "scan_parallel")])


def run(cell, method, params, xs):
    lengths = jnp.array([T, 2])
    if method == "scan_parallel":
        return cell.scan_parallel(params, xs, lengths=lengths)
    return rj.rnn(cell, params, xs, lengths=lengths, method=method)


@functools.partial(jax.jit, static_argnums=(0, 1))
def value_and_grad(cell, method, params, xs):
    def loss(p):
        hs, final = run(cell, method, p, xs)
        return jnp.sum(jnp.sin(hs)) + sum(jnp.sum(c) for c in jax.tree.leaves(final)), (hs, final)
    return jax.value_and_grad(loss, has_aux=True)(params)


@pytest.mark.parametrize("cell_name, method", CASES, ids=[f"{c}-{m}" for c, m in CASES])
def test_float64_in_float64_out(cell_name, method):
    cell = CELLS[cell_name]
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: p.astype(jnp.float64), cell.init(jax.random.key(0), I))
        xs = jax.random.normal(jax.random.key(1), (B, T, I), jnp.float64)
        (_, out), grads = value_and_grad(cell, method, params, xs)
        (_, want_out), want_grads = value_and_grad(cell, "scan", params, xs)
        for got, want in ((out, want_out), (grads, want_grads)):
            for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                assert g.dtype == jnp.float64
                np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-9, atol=1e-11)
        # float32 params with float64 inputs: float64 outputs (the wider of the two)
        hs, final = jax.jit(run, static_argnums=(0, 1))(cell, method,
                                                         cell.init(jax.random.key(0), I), xs)
        assert hs.dtype == jnp.float64
        assert all(c.dtype == jnp.float64 for c in jax.tree.leaves(final))


# The Pallas kernels keep float64 (exact in interpret mode on the CPU; issue 15, found item 7).
@pytest.mark.parametrize("cell_name", GATED)
def test_pallas_float64(cell_name):
    cell = CELLS[cell_name]
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: p.astype(jnp.float64), cell.init(jax.random.key(0), I))
        xs = jax.random.normal(jax.random.key(1), (B, T, I), jnp.float64)
        hs, _ = run(cell, "pallas", params, xs)
        assert hs.dtype == jnp.float64
