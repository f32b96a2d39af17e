"""rnn_jax.interop.nnx: NNX layers over rnn_jax cells, and NNX's own cells' weights.

The layers must be rnn_jax's runner with ``nnx.Param`` attributes named after its keys, and
train with ``nnx.Optimizer``. The converters are checked against live NNX cells run by
``nnx.RNN``: outputs, final carries, and the gradient with respect to the NNX cell's parameters
(written into a clone of the cell and read back with ``from_nnx``, which only concatenates).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import rnn_jax as rj
from rnn_jax.interop import nnx as rj_nnx

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
def test_rnn_layer_has_named_params_and_is_the_runner():
    layer = rj_nnx.RNN(rj.GRU(H), I, rngs=nnx.Rngs(0))
    assert all(isinstance(getattr(layer, k), nnx.Param) for k in ("W", "U", "b", "b_hn"))
    assert set(nnx.state(layer, nnx.Param)) == {"W", "U", "b", "b_hn"}
    xs, carry0 = _xs(), jnp.ones((B, H))
    hs, carry = nnx.jit(lambda m, x: m(x, carry0, lengths=LENGTHS, return_carry=True))(layer, xs)
    _close((hs, carry), rj.rnn(rj.GRU(H), layer.params, xs, carry0, lengths=LENGTHS))
    # an existing params dict builds the same layer
    same = rj_nnx.RNN(rj.GRU(H), I, params=layer.params)
    _close(same(xs), layer(xs))
    with pytest.raises(ValueError, match="input_size=5"):
        rj_nnx.RNN(rj.GRU(H), 5, params=layer.params)
    with pytest.raises(ValueError, match="rngs"):
        rj_nnx.RNN(rj.GRU(H), I)


def test_bidirectional_and_stack_layers_are_the_runner():
    xs = _xs(1)
    bi = rj_nnx.Bidirectional(rj.LSTM(H), rj.Elman(H), I, rngs=nnx.Rngs(1), merge="mean")
    assert isinstance(bi.fwd.W, nnx.Param) and set(bi.params) == {"fwd", "bwd"}
    cells = [rj.GRU(H), rj.GRU(H)]
    params = rj.init_stack(jax.random.key(2), cells, I, bidirectional=True)
    deep = rj_nnx.Stack(cells, I, params=params, bidirectional=True, dropout_rate=0.5,
                        rngs=nnx.Rngs(dropout=3))
    jax.tree.map(np.testing.assert_array_equal, deep.params, params)

    @nnx.jit
    def through_layers(bi, deep):
        return (bi(xs, lengths=LENGTHS, return_carry=True),
                deep(xs, lengths=LENGTHS, return_carry=True),
                deep(xs, lengths=LENGTHS, deterministic=False))

    @jax.jit
    def through_rnn_jax(p_bi, p):
        return (rj.bidirectional(rj.LSTM(H), rj.Elman(H), p_bi, xs, lengths=LENGTHS,
                                 merge="mean"),
                rj.stack(cells, p, xs, lengths=LENGTHS, bidirectional=True))

    *got, dropped = through_layers(bi, deep)
    _close(tuple(got), through_rnn_jax(bi.params, params))
    assert dropped.shape == got[1][0].shape and not np.allclose(dropped, got[1][0])


def test_one_optimizer_step_lowers_the_loss():
    class Regressor(nnx.Module):
        def __init__(self, rngs):
            self.rnn = rj_nnx.Stack(rj.LSTM(H), I, num_layers=2, rngs=rngs)
            self.out = nnx.Linear(H, 1, rngs=rngs)

        def __call__(self, xs, lengths):
            hs, finals = self.rnn(xs, lengths=lengths, return_carry=True)
            return self.out(finals[-1][0])[..., 0]

    model, xs = Regressor(nnx.Rngs(4)), _xs(5)
    target = xs[:, 0, 0] + xs[:, 1, 1]
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    def loss_fn(model):
        return jnp.mean((model(xs, LENGTHS) - target) ** 2)

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss, grads

    before = model.rnn.params
    loss0, grads = train_step(model, optimizer)
    assert set(grads["rnn"]["layers"][0]) == {"W", "U", "b"}
    assert float(nnx.jit(loss_fn)(model)) < float(loss0)
    assert not np.allclose(model.rnn.params[0]["U"], before[0]["U"])


# -- NNX's own cells ---------------------------------------------------------------------
NNX_CELLS = {
    "simple_tanh": lambda **kw: nnx.SimpleCell(I, H, **kw),
    "simple_relu": lambda **kw: nnx.SimpleCell(I, H, activation_fn=jax.nn.relu, **kw),
    "lstm": lambda **kw: nnx.LSTMCell(I, H, **kw),
    "lstm_optimized": lambda **kw: nnx.OptimizedLSTMCell(I, H, **kw),
    "gru": lambda **kw: nnx.GRUCell(I, H, **kw),
}


def _nnx_cell(name, seed, dtype):
    kw = dict(param_dtype=dtype, rngs=nnx.Rngs(seed))
    if name.startswith("simple"):
        kw["dtype"] = dtype  # SimpleCell computes in float32 unless told
    cell = NNX_CELLS[name](**kw)
    # random biases: NNX initialises them to zero, which would test nothing
    state = nnx.state(cell, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(seed + 1), 16))
    nnx.update(cell, jax.tree.map_with_path(
        lambda path, x: 0.3 * jax.random.normal(next(keys), x.shape, x.dtype)
        if "bias" in str(path[-1]) else x, state))
    return cell


def _random_carry(cell, seed, dtype):
    leaves, tree = jax.tree.flatten(cell.initial_carry((B,), dtype))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape, dtype)
                                     for k, x in zip(keys, leaves, strict=True)])


def _check_cell(name, dtype, tol):
    ncell = _nnx_cell(name, 10, dtype)
    cell, p = rj_nnx.from_nnx(ncell)
    assert cell.param_dtype == dtype and all(x.dtype == dtype for x in jax.tree.leaves(p))
    xs, carry = _xs(11, dtype), _random_carry(cell, 12, dtype)
    real = (jnp.arange(T)[None, :] < LENGTHS[:, None])[..., None]

    def nnx_loss(ncell):
        f_carry, f_hs = nnx.RNN(ncell, return_carry=True)(
            xs, initial_carry=rj_nnx.carry_to_flax(cell, carry), seq_lengths=LENGTHS)
        f_hs = jnp.where(real, f_hs, 0.0)  # NNX leaves padded outputs unspecified
        loss = jnp.sum(f_hs * jnp.cos(f_hs)) + sum(jnp.sum(c ** 2) for c in
                                                   jax.tree.leaves(f_carry))
        return loss, (f_hs, f_carry)

    def rj_loss(p):
        hs, r_carry = rj.rnn(cell, p, xs, carry, lengths=LENGTHS)
        return jnp.sum(hs * jnp.cos(hs)) + sum(jnp.sum(c ** 2) for c in jax.tree.leaves(
            r_carry)), (hs, r_carry)

    (_, (f_hs, f_carry)), n_grads = nnx.jit(nnx.value_and_grad(nnx_loss, has_aux=True))(ncell)
    (_, (hs, r_carry)), grads = jax.jit(jax.value_and_grad(rj_loss, has_aux=True))(p)
    _close(hs, f_hs, tol)
    _close(r_carry, rj_nnx.carry_from_flax(cell, f_carry), tol)
    holder = nnx.clone(ncell)
    nnx.update(holder, n_grads)
    mapped = rj_nnx.from_nnx(holder)[1]
    if name == "gru":  # NNX's GRU has no b_hn, so no gradient for it
        del grads["b_hn"], mapped["b_hn"]
    _close(grads, mapped, tol)

    # the other way: rnn_jax params drive the NNX cell to rnn_jax's outputs
    p2 = jax.tree.map(lambda a: a + 0.1, cell.init(jax.random.key(13), I))
    if name == "gru":
        p2["b_hn"] = jnp.zeros_like(p2["b_hn"])
    target = rj_nnx.to_nnx(cell, p2, nnx.clone(ncell))
    f_carry, f_hs = nnx.jit(lambda c: nnx.RNN(c, return_carry=True)(
        xs, initial_carry=rj_nnx.carry_to_flax(cell, carry)))(target)
    hs, r_carry = jax.jit(lambda p: rj.rnn(cell, p, xs, carry))(p2)
    _close(hs, f_hs, tol)
    _close(rj_nnx.carry_to_flax(cell, r_carry), f_carry, tol)
    # both round trips are exact
    jax.tree.map(np.testing.assert_array_equal, rj_nnx.from_nnx(target)[1], p2)
    again = rj_nnx.to_nnx(cell, p, nnx.clone(target))
    jax.tree.map(np.testing.assert_array_equal, nnx.state(again, nnx.Param),
                 nnx.state(ncell, nnx.Param))


@pytest.mark.parametrize("name", sorted(NNX_CELLS))
def test_nnx_cells_both_ways_float32(name):
    _check_cell(name, jnp.float32, TOL32)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_nnx_cells_both_ways_float64(name):
    with jax.enable_x64(True):
        _check_cell(name, jnp.float64, TOL64)


def test_unrepresentable_nnx_cells_raise():
    gru = nnx.GRUCell(I, H, rngs=nnx.Rngs(0))
    cell, p = rj_nnx.from_nnx(gru)
    np.testing.assert_array_equal(p["b_hn"], jnp.zeros(H))
    with pytest.raises(ValueError, match="b_hn"):
        rj_nnx.to_nnx(cell, {**p, "b_hn": jnp.ones(H)}, gru)
    with pytest.raises(ValueError, match=r"params\['W'\]"):
        rj_nnx.to_nnx(cell, rj.GRU(H).init(jax.random.key(0), I + 1), gru)
    np.testing.assert_array_equal(rj_nnx.from_nnx(gru)[1]["U"], p["U"])  # nothing half-written
    with pytest.raises(ValueError, match="rj.LSTM"):
        rj_nnx.to_nnx(cell, p, nnx.LSTMCell(I, H, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="residual"):
        rj_nnx.from_nnx(nnx.SimpleCell(I, H, residual=True, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match="nnx_cell"):
        rj_nnx.from_nnx(nnx.Linear(I, H, rngs=nnx.Rngs(0)))
