"""Stacked layers: equal to chained runner calls, bidirectional stacks, dropout, bad input."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax.stack import dropout, output_size  # noqa: E402

I, T = 3, 5
LAYERS = (rj.LSTM(4), rj.GRU(3), rj.Elman(5))  # different sizes, so a wrong chaining would show


def normal(seed, shape, scale=1.0):
    """Seeded N(0, scale^2) test data from a local NumPy generator (no compile per shape)."""
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def assert_tree_close(a, b, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def data():
    """Parameters of the three layers, inputs, lengths, an interior mask, initial carries."""
    shapes = jax.eval_shape(lambda: rj.init_stack(jax.random.key(0), LAYERS, I))
    leaves, treedef = jax.tree.flatten(shapes)
    params = jax.tree.unflatten(treedef, [normal(100 + n, z.shape, 0.5)
                                          for n, z in enumerate(leaves)])
    carries = [jax.tree.map(lambda z, n=n: normal(n, z.shape, 0.5), cell.initial_carry((2,)))
               for n, cell in enumerate(LAYERS)]
    mask = np.array([[True, False, True, True, False], [False] * T])
    return dict(params=params, xs=normal(10, (2, T, I)), lengths=np.array([T, 2]), mask=mask,
                carries=carries)


# -- equal to chaining the runner ----------------------------------------------------------------
@pytest.mark.parametrize("num_layers, options", [
    (1, ()), (2, ("lengths", "reverse")), (3, ("mask", "carries"))])
def test_stack_equals_chained_rnn_calls(data, num_layers, options):
    cells, params = LAYERS[:num_layers], data["params"][:num_layers]
    kw = {k: data[k] for k in ("lengths", "mask") if k in options}
    reverse = "reverse" in options
    carries = data["carries"][:num_layers] if "carries" in options else None

    @jax.jit
    def both(params, xs, carries, kw):
        stacked = rj.stack(cells, params, xs, carries, reverse=reverse, **kw)
        h, finals = xs, []
        for layer, (cell, p) in enumerate(zip(cells, params, strict=True)):
            c0 = None if carries is None else carries[layer]
            h, final = rj.rnn(cell, p, h, c0, reverse=reverse, **kw)
            finals.append(final)
        return stacked, (h, finals)

    (hs, finals), expected = both(params, data["xs"], carries, kw)
    assert hs.shape == (2, T, LAYERS[num_layers - 1].hidden_size)
    assert isinstance(finals, list) and len(finals) == num_layers  # one final carry per layer
    assert_tree_close((hs, finals), expected)


def test_one_cell_repeated_with_num_layers():
    cell = rj.GRU(4)
    params = rj.init_stack(jax.random.key(1), cell, I, num_layers=2)
    assert [p["W"].shape for p in params] == [(I, 12), (4, 12)]

    @jax.jit
    def both(params, xs):
        h1, f1 = rj.rnn(cell, params[0], xs)
        h2, f2 = rj.rnn(cell, params[1], h1)
        return rj.stack(cell, params, xs, num_layers=2), (h2, [f1, f2])

    stacked, expected = both(params, normal(11, (2, T, I)))
    assert_tree_close(stacked, expected)


def test_init_stack_layouts():
    shapes = jax.eval_shape(lambda: rj.init_stack(jax.random.key(0), LAYERS, I))
    assert [{k: v.shape for k, v in p.items()} for p in shapes] == [
        {"W": (3, 16), "U": (4, 16), "b": (16,)},
        {"W": (4, 9), "U": (3, 9), "b": (9,), "b_hn": (3,)},
        {"W": (3, 5), "U": (5, 5), "b": (5,)},
    ]
    for merge, width in (("concat", 8), ("sum", 4)):
        bi = jax.eval_shape(lambda merge=merge: rj.init_stack(
            jax.random.key(0), [(rj.LSTM(4), rj.GRU(4)), rj.Elman(4)], I, bidirectional=True,
            merge=merge))
        assert [sorted(p) for p in bi] == [["bwd", "fwd"], ["bwd", "fwd"]]
        assert bi[0]["fwd"]["W"].shape == (I, 16) and bi[0]["bwd"]["W"].shape == (I, 12)
        assert bi[1]["fwd"]["W"].shape == bi[1]["bwd"]["W"].shape == (width, 4)
    assert rj.layer_cells(rj.LSTM(2), 3) == (rj.LSTM(2),) * 3
    assert rj.layer_cells([rj.LSTM(2), rj.GRU(3)]) == (rj.LSTM(2), rj.GRU(3))
    assert output_size(LAYERS) == 5
    assert output_size(rj.LSTM(4), bidirectional=True) == 8
    assert output_size(rj.LSTM(4), bidirectional=True, merge="mean") == 4


@pytest.mark.parametrize("merge", ["concat", "sum"])
def test_bidirectional_stack_equals_chained_bidirectional_calls(data, merge):
    cells = [(rj.LSTM(4), rj.GRU(4)), rj.Elman(4)]
    params = rj.init_stack(jax.random.key(2), cells, I, bidirectional=True, merge=merge)
    mask = data["mask"]

    @jax.jit
    def both(params, xs):
        stacked = rj.stack(cells, params, xs, mask=mask, bidirectional=True, merge=merge)
        h1, f1 = rj.bidirectional(*cells[0], params[0], xs, mask=mask, merge=merge)
        h2, f2 = rj.bidirectional(cells[1], cells[1], params[1], h1, mask=mask, merge=merge)
        return stacked, (h2, [f1, f2])

    (hs, finals), expected = both(params, data["xs"])
    assert hs.shape == (2, T, 8 if merge == "concat" else 4)
    assert len(finals) == 2 and all(len(f) == 2 for f in finals)  # (fwd, bwd) per layer
    assert_tree_close((hs, finals), expected)
    np.testing.assert_array_equal(np.asarray(hs)[~mask], 0.0)


# -- dropout ---------------------------------------------------------------------------------------
def test_dropout_between_layers(data):
    cells, params, xs = LAYERS[:2], data["params"][:2], data["xs"]
    train = dict(dropout_rate=0.5, deterministic=False)

    @jax.jit
    def variants(params, xs, key):
        return dict(
            plain=rj.stack(cells, params, xs),
            # deterministic (evaluation) mode ignores the rate and needs no key
            evaluation=rj.stack(cells, params, xs, dropout_rate=0.5),
            train=rj.stack(cells, params, xs, key=key, **train),
            # never after the last layer: a single layer is unchanged
            one_layer=rj.stack(cells[:1], params[:1], xs, key=key, **train),
            one_layer_plain=rj.stack(cells[:1], params[:1], xs))

    a, b = variants(params, xs, jax.random.key(1)), variants(params, xs, jax.random.key(2))
    plain = a["plain"]
    assert_tree_close(a["evaluation"], plain, rtol=1e-6, atol=1e-7)
    assert_tree_close(variants(params, xs, jax.random.key(1))["train"], a["train"], rtol=0, atol=0)
    assert not np.allclose(a["train"][0], b["train"][0])
    assert not np.allclose(a["train"][0], plain[0])
    # dropout acts between layers: the first layer's carry is untouched, the second's is not
    assert_tree_close(a["train"][1][0], plain[1][0], rtol=1e-6, atol=1e-7)
    assert not np.allclose(a["train"][1][1], plain[1][1])
    assert_tree_close(a["one_layer"], a["one_layer_plain"], rtol=1e-6, atol=1e-7)
    # nor on the top layer's outputs: the last output is still the GRU's final carry
    np.testing.assert_allclose(a["train"][0][:, -1], a["train"][1][-1], rtol=1e-6)
    assert np.all(np.asarray(a["train"][0]) != 0.0)
    # the same, eagerly and without jit
    eager = rj.stack(cells, params, xs, key=jax.random.key(1), **train)
    assert_tree_close(eager, a["train"], rtol=1e-5, atol=1e-6)


def test_inverted_dropout_values():
    x = jnp.asarray(normal(12, (200, 50)) + 3.0)  # no exact zeros
    y = np.asarray(dropout(jax.random.key(3), x, 0.25))
    kept = y != 0
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_array_equal(dropout(jax.random.key(3), x, 0.25), y)
    assert dropout(jax.random.key(3), x, 0.0) is x


# -- bad input -------------------------------------------------------------------------------------
def test_bad_input_is_rejected_with_a_message(data):
    params, xs = data["params"], data["xs"]
    with pytest.raises(ValueError, match=r"key is required for dropout"):
        rj.stack(LAYERS[:2], params[:2], xs, dropout_rate=0.5, deterministic=False)
    with pytest.raises(ValueError, match=r"dropout_rate must lie in \[0, 1\), got 1.0"):
        rj.stack(LAYERS, params, xs, dropout_rate=1.0)
    with pytest.raises(ValueError, match=r"params must be a list with one entry per layer "
                                         r"\(3\), got 2"):
        rj.stack(LAYERS, params[:2], xs)
    with pytest.raises(ValueError, match=r"carries must have one entry per layer \(3\), got 1"):
        rj.stack(LAYERS, params, xs, data["carries"][:1])
    with pytest.raises(ValueError, match=r"num_layers=2 does not match the 3 cells given"):
        rj.stack(LAYERS, params, xs, num_layers=2)
    with pytest.raises(ValueError, match=r"cells must not be empty"):
        rj.layer_cells([])
    with pytest.raises(ValueError, match=r"num_layers must be a positive int, got 0"):
        rj.layer_cells(rj.LSTM(4), 0)
    with pytest.raises(ValueError, match=r"merge='max' is not supported; expected one of"):
        rj.init_stack(jax.random.key(0), LAYERS, I, bidirectional=True, merge="max")
    with pytest.raises(ValueError, match=r"xs has 4 input features"):
        rj.stack(LAYERS, params, normal(0, (2, T, 4)))
