"""Both directions of a bidirectional layer in one Pallas launch (interpret mode on the CPU):
equal to two scans, in outputs, carries and gradients, and really one launch per pass."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rnn_jax as rj
from rnn_jax.loops import pallas as pallas_rnn
from rnn_jax.loops.pallas_launch import Kernel

jax.config.update("jax_numpy_rank_promotion", "raise")

CELLS = {
    "elman_tanh": rj.Elman(12),
    "elman_relu": rj.Elman(12, activation="relu", recurrent_init="identity"),
    "lstm": rj.LSTM(12),
    "gru": rj.GRU(12),
}


def _params(cell, input_size, seed):
    """Random params with non-zero biases, different per seed (so per direction)."""
    params = cell.init(jax.random.key(seed), input_size)
    noise = jax.random.split(jax.random.key(seed + 100), len(params))
    return {k: v + 0.1 * jax.random.normal(n, v.shape, v.dtype)
            for (k, v), n in zip(sorted(params.items()), noise, strict=True)}


def _loss_and_outputs(fwd, bwd, method, **kw):
    def loss(params, xs, carries):
        hs, final, every = rj.bidirectional(fwd, bwd, params, xs, carries, method=method,
                                            return_carries=True, **kw)
        total = jnp.sum(jnp.sin(hs)) + sum(jnp.sum(jnp.cos(c)) for c in jax.tree.leaves(final))
        return total + 0.1 * sum(jnp.sum(c ** 2) for c in jax.tree.leaves(every)), (hs, final,
                                                                                     every)
    return loss


def _compare(fwd, bwd, params, xs, carries, rtol, atol, **kw):
    results = {}
    for method in ("scan", "pallas"):
        loss = _loss_and_outputs(fwd, bwd, method, **kw)
        (_, outs), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(params, xs, carries)
        results[method] = (outs, grads)
    want, got = (jax.tree.leaves(results[m]) for m in ("scan", "pallas"))
    assert len(want) == len(got)
    for w, g in zip(want, got, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def _carries(fwd, bwd, batch, dtype=jnp.float32):
    return tuple(jax.tree.map(lambda z, k=k: 0.5 * jax.random.normal(jax.random.key(k),
                                                                       z.shape, dtype),
                              cell.initial_carry(batch, dtype))
                 for k, cell in enumerate((fwd, bwd)))


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("merge", ["concat", "sum"])
def test_one_launch_equals_two_scans_with_ragged_lengths(name, merge):
    """B = 40 rows: three programs of 16 per direction, the last one part padding; lengths
    0, 1 and T among them."""
    cell = CELLS[name]
    b, t, i = 40, 9, 5
    params = {"fwd": _params(cell, i, 0), "bwd": _params(cell, i, 1)}
    xs = jax.random.normal(jax.random.key(2), (b, t, i))
    lengths = jnp.asarray(np.r_[[t, 0, 1], np.random.default_rng(0).integers(0, t + 1, b - 3)])
    _compare(cell, cell, params, xs, _carries(cell, cell, (b,)), 2e-5, 2e-5, lengths=lengths,
             merge=merge)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_two_batch_axes_time_major_and_a_mask(name):
    cell = CELLS[name]
    batch, t, i = (2, 3), 6, 4
    params = {"fwd": _params(cell, i, 3), "bwd": _params(cell, i, 4)}
    xs = jax.random.normal(jax.random.key(5), (t, *batch, i))
    mask = jax.random.bernoulli(jax.random.key(6), 0.6, (*batch, t))  # interior padding too
    _compare(cell, cell, params, xs, _carries(cell, cell, batch), 2e-5, 2e-5, mask=mask,
             time_major=True)


def test_cells_that_share_a_kernel_but_not_their_init_share_the_launch():
    fwd, bwd = rj.LSTM(12), rj.LSTM(12, forget_bias=0.0, recurrent_init="identity")
    params = {"fwd": _params(fwd, 3, 7), "bwd": _params(bwd, 3, 8)}
    xs = jax.random.normal(jax.random.key(9), (3, 5, 3))
    assert _launches(fwd, bwd, params, xs) == 1
    _compare(fwd, bwd, params, xs, _carries(fwd, bwd, (3,)), 2e-5, 2e-5,
             lengths=jnp.array([5, 2, 0]))


def _launches(fwd, bwd, params, xs, grad=False):
    """How many Pallas kernel launches the program has: each launch is one interpreted and
    one compiled pallas_call, of which lowering keeps one (``pallas_launch.call``)."""
    def f(p):
        return jnp.sum(rj.bidirectional(fwd, bwd, p, xs, method="pallas")[0])
    jaxpr = str(jax.make_jaxpr(jax.grad(f) if grad else f)(params))
    compiled = jaxpr.count("compiler_params=CompilerParams(")
    assert jaxpr.count("pallas_call[") == 2 * compiled
    return compiled


def test_one_launch_per_pass_and_two_where_the_kernels_differ():
    cell = CELLS["gru"]
    params = {"fwd": _params(cell, 3, 0), "bwd": _params(cell, 3, 1)}
    xs = jnp.ones((2, 4, 3))
    assert _launches(cell, cell, params, xs) == 1
    assert _launches(cell, cell, params, xs, grad=True) == 2  # the forward and backward kernel
    tanh, relu = CELLS["elman_tanh"], CELLS["elman_relu"]
    p2 = {"fwd": _params(tanh, 3, 0), "bwd": _params(relu, 3, 1)}
    assert _launches(tanh, relu, p2, xs) == 2  # different kernels: a launch each
    _compare(tanh, relu, p2, xs, _carries(tanh, relu, (2,)), 2e-5, 2e-5,
             lengths=jnp.array([4, 1]))
    lstm, gru = CELLS["lstm"], CELLS["gru"]
    p3 = {"fwd": _params(lstm, 3, 0), "bwd": _params(gru, 3, 1)}
    assert _launches(lstm, gru, p3, xs) == 2
    # auto on the CPU takes the fused scan: no kernel at all
    assert str(jax.make_jaxpr(lambda p: rj.bidirectional(cell, cell, p, xs)[0])(params)).count(
        "pallas_call") == 0


def test_float64_stays_exact_and_bf16_compute_rounds_like_the_scan():
    cell = CELLS["lstm"]
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: a.astype(jnp.float64),
                              {"fwd": _params(cell, 3, 0), "bwd": _params(cell, 3, 1)})
        xs = jax.random.normal(jax.random.key(1), (3, 6, 3), jnp.float64)
        _compare(cell, cell, params, xs, _carries(cell, cell, (3,), jnp.float64), 1e-12,
                 1e-12, lengths=jnp.array([6, 0, 4]))
    cell = dataclasses.replace(CELLS["gru"], compute_dtype=jnp.bfloat16)
    params = {"fwd": _params(cell, 3, 0), "bwd": _params(cell, 3, 1)}
    xs = jax.random.normal(jax.random.key(1), (2, 5, 3))
    _compare(cell, cell, params, xs, _carries(cell, cell, (2,)), 3e-2, 3e-2,
             lengths=jnp.array([5, 3]))


def test_zero_steps_and_bad_arguments():
    cell = CELLS["gru"]
    params = {"fwd": _params(cell, 3, 0), "bwd": _params(cell, 3, 1)}
    hs, (cf, cb) = rj.bidirectional(cell, cell, params, jnp.zeros((2, 0, 3)), method="pallas")
    assert hs.shape == (2, 0, 24) and cf.shape == cb.shape == (2, 12)
    with pytest.raises(ValueError, match=r"params\['bwd'\]|params\['U'\]|expects"):
        bad = {"fwd": params["fwd"], "bwd": {**params["bwd"], "U": jnp.zeros((4, 36))}}
        rj.bidirectional(cell, cell, bad, jnp.zeros((2, 3, 3)), method="pallas")
    with pytest.raises(ValueError, match="lengths"):
        rj.bidirectional(cell, cell, params, jnp.zeros((2, 3, 3)), lengths=jnp.array([1, 9]),
                         method="pallas")


@pytest.mark.parametrize("cell,kernel", [(CELLS["elman_tanh"], None),
                                         (rj.LSTM(40), Kernel(tile=32, resident=False))],
                         ids=["default", "lstm-tiles"])
def test_run_bidirectional_equals_two_runs_of_run(cell, kernel):
    """The loop-level entry point against ``pallas.run`` once per direction (also with U in
    tiles, where each direction's program reads the tiles of its own U)."""
    pf, pb = _params(cell, 3, 0), _params(cell, 3, 1)
    xs_tm = jax.random.normal(jax.random.key(2), (5, 4, 3))
    mask = jnp.arange(5)[:, None] < jnp.array([5, 3, 0, 1])[None, :]
    c = cell.initial_carry((4,))
    both = pallas_rnn.run_bidirectional((cell, cell), (pf, pb), xs_tm, (c, c), mask,
                                        kernel=kernel)
    one = (pallas_rnn.run(cell, pf, xs_tm, c, mask, kernel=kernel),
           pallas_rnn.run(cell, pb, xs_tm, c, mask, reverse=True, kernel=kernel))
    for w, g in zip(jax.tree.leaves(one), jax.tree.leaves(both), strict=True):
        np.testing.assert_array_equal(g, w)


@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 20), steps=st.integers(1, 6), data=st.data())
def test_padded_batch_equals_each_sequence_alone(batch, steps, data):
    """Property: every row of a padded one-launch batch equals that sequence run alone."""
    cell = CELLS["gru"]
    lengths = np.array(data.draw(st.lists(st.integers(0, steps), min_size=batch,
                                          max_size=batch)))
    params = {"fwd": _params(cell, 2, 0), "bwd": _params(cell, 2, 1)}
    xs = jax.random.normal(jax.random.key(batch * 7 + steps), (batch, steps, 2))
    hs, (cf, cb) = rj.bidirectional(cell, cell, params, xs, lengths=jnp.asarray(lengths),
                                    method="pallas")
    for row in range(batch):
        n = int(lengths[row])
        alone, (af, ab) = rj.bidirectional(cell, cell, params, xs[row:row + 1, :n],
                                           method="scan")
        np.testing.assert_allclose(hs[row, :n], alone[0], rtol=2e-5, atol=2e-5)
        np.testing.assert_array_equal(hs[row, n:], 0.0)
        np.testing.assert_allclose(cf[row], af[0], rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(cb[row], ab[0], rtol=2e-5, atol=2e-5)
