"""rnn_jax.interop.linen: linen layers over rnn_jax cells, and flax.linen cells' weights.

The layers must be rnn_jax's runner with the parameters in a linen variables dict (outputs,
carries, lengths/masks, jit, vmap, inside a user's module). The converters are checked against
live flax.linen cells: a sequence through ``nn.RNN`` (outputs, final carry) and the gradient of a
loss with respect to the flax parameters, which ``from_linen`` maps like the parameters (it only
concatenates).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj
from rnn_jax.interop import linen

jax.config.update("jax_numpy_rank_promotion", "raise")

I, H, B, T = 3, 4, 3, 6
LENGTHS = jnp.array([4, 6, 1])
TOL32 = dict(rtol=1e-5, atol=1e-6)
TOL64 = dict(rtol=1e-12, atol=1e-13)


def _xs(seed=0, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), (B, T, I), dtype)


def _close(a, b, tol=TOL32):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, **tol), a, b)


# -- layers --------------------------------------------------------------------------------
def test_rnn_layer_is_the_runner():
    """Initial carry, lengths, mask, reverse, jit and vmap (one jit per side keeps it fast)."""
    cell = rj.LSTM(H)
    layer, rev = linen.RNN(cell, method="scan"), linen.RNN(cell, reverse=True)
    xs = _xs()
    v = layer.init(jax.random.key(1), xs)
    assert set(v["params"]) == {"cell"}
    p = v["params"]["cell"]
    assert jax.tree.map(jnp.shape, p) == jax.tree.map(jnp.shape, cell.init(jax.random.key(0), I))
    carry0 = (jnp.ones((B, H)), -jnp.ones((B, H)))
    mask = jnp.arange(T)[None, :] < LENGTHS[:, None]

    @jax.jit
    def through_layer(v, xs):
        return (layer.apply(v, xs, carry0, lengths=LENGTHS, return_carry=True),
                layer.apply(v, xs, carry0, mask=mask),
                rev.apply(v, xs, lengths=LENGTHS),
                jax.vmap(lambda x, n: layer.apply(v, x, lengths=n))(xs, LENGTHS))

    @jax.jit
    def through_rnn_jax(p, xs):
        out = rj.rnn(cell, p, xs, carry0, lengths=LENGTHS, method="scan")
        return (out, out[0], rj.rnn(cell, p, xs, lengths=LENGTHS, reverse=True)[0],
                rj.rnn(cell, p, xs, lengths=LENGTHS)[0])

    _close(through_layer(v, xs), through_rnn_jax(p, xs))


def test_bidirectional_and_stack_layers_are_the_runner():
    xs = _xs(2)
    bi = linen.Bidirectional(rj.GRU(H), rj.Elman(H), merge="sum")
    v_bi = bi.init(jax.random.key(3), xs)
    assert set(v_bi["params"]) == {"fwd", "bwd"}
    cells = [rj.LSTM(H), rj.LSTM(H)]
    deep = linen.Stack(cells, bidirectional=True, dropout_rate=0.5)
    v = deep.init(jax.random.key(4), xs)
    params = v["params"]["layers"]
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, rj.init_stack(jax.random.key(0), cells, I, bidirectional=True))

    @jax.jit
    def through_layers(v_bi, v, key):
        return (bi.apply(v_bi, xs, lengths=LENGTHS, return_carry=True),
                deep.apply(v, xs, lengths=LENGTHS, return_carry=True),
                deep.apply(v, xs, lengths=LENGTHS, deterministic=False, rngs={"dropout": key}))

    @jax.jit
    def through_rnn_jax(p_bi, p):
        return (rj.bidirectional(rj.GRU(H), rj.Elman(H), p_bi, xs, lengths=LENGTHS, merge="sum"),
                rj.stack(cells, p, xs, lengths=LENGTHS, bidirectional=True))

    *got, dropped = through_layers(v_bi, v, jax.random.key(5))
    _close(tuple(got), through_rnn_jax(v_bi["params"], params))
    assert dropped.shape == got[1][0].shape and not np.allclose(dropped, got[1][0])
    with pytest.raises(Exception, match="dropout"):  # no dropout stream: flax says which
        deep.apply(v, xs, deterministic=False)


def test_layer_inside_a_users_module_trains():
    class Tagger(nn.Module):
        @nn.compact
        def __call__(self, xs, lengths):
            hs = linen.Bidirectional(rj.GRU(H), rj.GRU(H))(xs, lengths=lengths)
            return nn.Dense(2)(hs)

    model, xs = Tagger(), _xs(6)
    v = model.init(jax.random.key(7), xs, LENGTHS)
    assert set(v["params"]) == {"Bidirectional_0", "Dense_0"}
    assert set(v["params"]["Bidirectional_0"]) == {"fwd", "bwd"}

    def loss(v):
        return jnp.mean(model.apply(v, xs, LENGTHS) ** 2)

    loss = jax.jit(loss)
    grads = jax.jit(jax.grad(loss))(v)
    stepped = jax.tree.map(lambda p, g: p - 0.1 * g, v, grads)
    assert loss(stepped) < loss(v)
    # the recurrent layer's gradient is rnn_jax's own
    dense = v["params"]["Dense_0"]

    def rj_loss(p):
        hs, _ = rj.bidirectional(rj.GRU(H), rj.GRU(H), p, xs, lengths=LENGTHS)
        return jnp.mean((hs @ dense["kernel"] + dense["bias"][None, None]) ** 2)

    _close(grads["params"]["Bidirectional_0"],
           jax.jit(jax.grad(rj_loss))(v["params"]["Bidirectional_0"]))


# -- flax.linen cells ----------------------------------------------------------------------
FLAX_CELLS = {
    "simple_tanh": lambda **kw: nn.SimpleCell(H, **kw),
    "simple_relu": lambda **kw: nn.SimpleCell(H, activation_fn=jax.nn.relu, **kw),
    "lstm": lambda **kw: nn.LSTMCell(H, **kw),
    "lstm_optimized": lambda **kw: nn.OptimizedLSTMCell(H, **kw),
    "gru": lambda **kw: nn.GRUCell(H, **kw),
}


def _flax_variables(fcell, seed, dtype):
    """flax's init, with random biases (flax's are zero, which would test nothing)."""
    v = fcell.init(jax.random.key(seed), fcell.initialize_carry(jax.random.key(0), (B, I)),
                   jnp.zeros((B, I), dtype))
    leaves, tree = jax.tree.flatten_with_path(v)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    new = [0.3 * jax.random.normal(k, x.shape, x.dtype) if path[-1].key == "bias" else x
           for k, (path, x) in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(jax.tree.structure(v), new)


def _random_carry(cell, seed, dtype):
    leaves, tree = jax.tree.flatten(cell.initial_carry((B,), dtype))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape, dtype)
                                     for k, x in zip(keys, leaves, strict=True)])


def _check_cell(name, dtype, tol):
    fcell = FLAX_CELLS[name](param_dtype=dtype)
    v = _flax_variables(fcell, 10, dtype)
    cell, p = linen.from_linen(fcell, v)
    assert cell.param_dtype == dtype and all(x.dtype == dtype for x in jax.tree.leaves(p))
    xs, carry = _xs(11, dtype), _random_carry(cell, 12, dtype)
    real = (jnp.arange(T)[None, :] < LENGTHS[:, None])[..., None]
    f_rnn = nn.RNN(fcell, return_carry=True)

    def flax_loss(v):
        f_carry, f_hs = f_rnn.apply({"params": {"cell": v["params"]}}, xs, seq_lengths=LENGTHS,
                                    initial_carry=linen.carry_to_flax(cell, carry))
        f_hs = jnp.where(real, f_hs, 0.0)  # flax leaves padded outputs unspecified
        return jnp.sum(f_hs * jnp.cos(f_hs)) + sum(jnp.sum(c ** 2) for c in f_carry), (f_hs,
                                                                                        f_carry)

    def rj_loss(p):
        hs, r_carry = rj.rnn(cell, p, xs, carry, lengths=LENGTHS)
        return jnp.sum(hs * jnp.cos(hs)) + sum(jnp.sum(c ** 2) for c in jax.tree.leaves(
            r_carry)), (hs, r_carry)

    (_, (f_hs, f_carry)), f_grads = jax.jit(jax.value_and_grad(flax_loss, has_aux=True))(v)
    (_, (hs, r_carry)), grads = jax.jit(jax.value_and_grad(rj_loss, has_aux=True))(p)
    _close(hs, f_hs, tol)
    _close(r_carry, linen.carry_from_flax(cell, f_carry), tol)
    _close(grads, linen.from_linen(fcell, f_grads)[1], tol)

    # the other way: rnn_jax params (nonzero everywhere) drive the flax cell to rnn_jax's outputs
    p2 = jax.tree.map(lambda a: a + 0.1, cell.init(jax.random.key(13), I))
    v2 = linen.to_linen(cell, p2, fcell)
    f_carry, f_hs = jax.jit(lambda v: f_rnn.apply(
        {"params": {"cell": v["params"]}}, xs,
        initial_carry=linen.carry_to_flax(cell, carry)))(v2)
    hs, r_carry = jax.jit(lambda p: rj.rnn(cell, p, xs, carry))(p2)
    _close(hs, f_hs, tol)
    _close(linen.carry_to_flax(cell, r_carry), f_carry, tol)
    # both round trips are exact
    jax.tree.map(np.testing.assert_array_equal, linen.from_linen(fcell, v2)[1], p2)
    jax.tree.map(np.testing.assert_array_equal, linen.to_linen(cell, p, fcell), v)
    return float(np.abs(hs - f_hs).max())


@pytest.mark.parametrize("name", sorted(FLAX_CELLS))
def test_flax_cells_both_ways_float32(name):
    _check_cell(name, jnp.float32, TOL32)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_flax_cells_both_ways_float64(name):
    with jax.enable_x64(True):
        _check_cell(name, jnp.float64, TOL64)


def test_converted_cell_runs_in_the_linen_layer():
    """Weights from a flax cell, run by linen.RNN: the same as flax's nn.RNN."""
    fcell = nn.GRUCell(H)
    v = _flax_variables(fcell, 20, jnp.float32)
    cell, p = linen.from_linen(fcell, v)
    xs = _xs(21)
    _close(linen.RNN(cell).apply({"params": {"cell": p}}, xs),
           nn.RNN(fcell).apply({"params": {"cell": v["params"]}}, xs))


def test_unrepresentable_flax_cells_raise():
    xs = jnp.zeros((B, I))
    with pytest.raises(ValueError, match="residual"):
        fcell = nn.SimpleCell(H, residual=True)
        linen.from_linen(fcell, fcell.init(jax.random.key(0), jnp.zeros((B, H)), xs))
    with pytest.raises(ValueError, match="gate_fn"):
        fcell = nn.GRUCell(H, gate_fn=jax.nn.hard_sigmoid)
        linen.from_linen(fcell, fcell.init(jax.random.key(0), jnp.zeros((B, H)), xs))
    with pytest.raises(ValueError, match="dtype"):
        fcell = nn.LSTMCell(H, dtype=jnp.bfloat16)
        carry = fcell.initialize_carry(jax.random.key(0), (B, I))
        linen.from_linen(fcell, fcell.init(jax.random.key(0), carry, xs))
    with pytest.raises(TypeError, match="flax_cell"):
        linen.from_linen(nn.MGUCell(H), {})
    with pytest.raises(ValueError, match="no ir.kernel"):
        linen.from_linen(nn.GRUCell(H), {"params": {}})
    with pytest.raises(ValueError, match="rj.LSTM"):
        linen.to_linen(rj.GRU(H), rj.GRU(H).init(jax.random.key(0), I), nn.LSTMCell(H))
    with pytest.raises(ValueError, match="hidden_size"):
        linen.to_linen(rj.GRU(H + 1), rj.GRU(H + 1).init(jax.random.key(0), I), nn.GRUCell(H))
