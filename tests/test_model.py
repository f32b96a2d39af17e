"""SequenceModel: shapes, readouts, padding, dropout, transforms, carries and input errors."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj

jax.config.update("jax_numpy_rank_promotion", "raise")

B, T, I, H, O, VOCAB = 3, 6, 3, 5, 2, 7
TOL = dict(rtol=1e-5, atol=1e-5)


@functools.partial(jax.jit, static_argnames=("model", "deterministic", "return_carries"))
def apply(model, params, xs, *, lengths=None, carries=None, key=None, deterministic=True,
          return_carries=False):
    """model.apply, compiled once per model value and shapes (eager scans recompile each call)."""
    return model.apply(params, xs, lengths=lengths, carries=carries, key=key,
                       deterministic=deterministic, return_carries=return_carries)


def _key(seed):
    return jax.random.key(seed)


def _floats(seed, shape):
    return jax.random.normal(_key(seed), shape)


def _tokens(seed, shape):
    return jax.random.randint(_key(seed), shape, 0, VOCAB)


def _with_readout_bias(params, seed=99):
    """Nonzero readout bias c, so that a readout of a zero state is not trivially zero."""
    c = params["readout"]["c"]
    return {**params, "readout": {**params["readout"], "c": _floats(seed, c.shape)}}


def _random_carries(model, seed, batch_shape):
    leaves, tree = jax.tree.flatten(model.initial_carries(batch_shape))
    keys = jax.random.split(_key(seed), len(leaves))
    return jax.tree.unflatten(tree, [0.5 * jax.random.normal(k, x.shape)
                                     for k, x in zip(keys, leaves, strict=True)])


# -- shapes ------------------------------------------------------------------------------------
INPUTS = ("float", "projected", "tokens")


def _model(inputs, **kw):
    if inputs == "tokens":
        kw.update(vocab_size=VOCAB, embed_size=4)
    elif inputs == "projected":
        kw.update(input_projection=4)
    return rj.SequenceModel(**kw)


def _xs(inputs, batch_shape=(B,)):
    return _tokens(0, (*batch_shape, T)) if inputs == "tokens" else _floats(0, (*batch_shape, T, I))


@pytest.mark.parametrize("inputs,readout,bidirectional,num_layers",
                         list(itertools.product(INPUTS, ("all", "last"), (False, True), (1, 2))))
def test_shapes(inputs, readout, bidirectional, num_layers):
    model = _model(inputs, cell=rj.LSTM(H), output_size=O, num_layers=num_layers,
                   bidirectional=bidirectional, readout=readout)
    # eval_shape: shapes are checked by tracing only, nothing is compiled
    params = jax.eval_shape(lambda: model.init(_key(0), I))
    xs = _xs(inputs, (2, B))  # two leading batch axes
    out = jax.eval_shape(lambda p, x: apply(model, p, x, lengths=jnp.full((2, B), T)), params, xs)
    assert out.shape == ((2, B, T, O) if readout == "all" else (2, B, O))
    h_top = 2 * H if bidirectional else H
    assert params["readout"]["V"].shape == (h_top, O)
    assert params["readout"]["c"].shape == (O,)
    assert len(params["layers"]) == num_layers
    size = {"float": I, "projected": 4, "tokens": 4}[inputs]
    first = params["layers"][0]["fwd"] if bidirectional else params["layers"][0]
    assert first["W"].shape == (size, 4 * H)
    if num_layers == 2:
        second = params["layers"][1]["fwd"] if bidirectional else params["layers"][1]
        assert second["W"].shape == (h_top, 4 * H)
    assert ("embed" in params) == (inputs == "tokens")
    assert ("proj" in params) == (inputs == "projected")
    if inputs == "tokens":
        assert params["embed"]["E"].shape == (VOCAB, 4)
    if inputs == "projected":
        assert params["proj"]["P"].shape == (I, 4) and params["proj"]["p"].shape == (4,)


@pytest.mark.parametrize("merge,width", [("concat", 2 * H), ("sum", H), ("mean", H)])
def test_bidirectional_merge_widths(merge, width):
    model = rj.SequenceModel(rj.GRU(H), O, bidirectional=True, merge=merge, num_layers=2)
    params = jax.eval_shape(lambda: model.init(_key(0), I))
    assert params["readout"]["V"].shape == (width, O)
    assert params["layers"][1]["fwd"]["W"].shape == (width, 3 * H)


def test_token_embedding_is_a_table_lookup():
    model = rj.SequenceModel(rj.Elman(H), O, vocab_size=VOCAB, embed_size=4)
    params = model.init(_key(1))
    xs = _tokens(2, (B, T))
    np.testing.assert_array_equal(model.embed(params, xs), params["embed"]["E"][xs])
    # the default embedding width is the first layer's hidden size
    default = rj.SequenceModel(rj.Elman(H), O, vocab_size=VOCAB).init(_key(1))
    assert default["embed"]["E"].shape == (VOCAB, H)


# -- readout "last" --------------------------------------------------------------------------
def test_last_equals_all_at_the_last_real_step():
    cell = rj.LSTM(H)  # a tuple carry: "last" must read h, not c
    kw = dict(cell=cell, output_size=O, num_layers=2)
    all_model = rj.SequenceModel(**kw, readout="all")
    last_model = rj.SequenceModel(**kw, readout="last")
    params = _with_readout_bias(all_model.init(_key(3), I))
    xs = _floats(4, (4, T, I))
    lengths = jnp.array([T, 3, 0, 1])
    # random initial carries: for length 0 the readout must see the initial carry itself
    carries = _random_carries(all_model, 5, (4,))
    every = apply(all_model, params, xs, lengths=lengths, carries=carries)
    last = apply(last_model, params, xs, lengths=lengths, carries=carries)
    for b, n in enumerate(lengths.tolist()):
        if n > 0:
            np.testing.assert_allclose(last[b], every[b, n - 1], **TOL)
        else:
            h0 = cell.hidden(jax.tree.map(lambda c, i=b: c[i], carries[-1]))  # top layer's
            want = h0 @ params["readout"]["V"] + params["readout"]["c"]
            np.testing.assert_allclose(last[b], want, **TOL)


@pytest.mark.parametrize("readout", ["all", "last"])
def test_padding_does_not_change_real_steps(readout):
    """A padded batch of a bidirectional 2-layer model equals each sequence run alone."""
    model = rj.SequenceModel(rj.GRU(H), O, num_layers=2, bidirectional=True, readout=readout,
                             vocab_size=VOCAB)
    params = model.init(_key(6))
    xs = _tokens(7, (B, T))
    lengths = [T, 4, 1]
    padded = apply(model, params, xs, lengths=jnp.array(lengths))
    for b, n in enumerate(lengths):
        alone = apply(model, params, xs[b:b + 1, :n])[0]
        got = padded[b, :n] if readout == "all" else padded[b]
        np.testing.assert_allclose(got, alone, **TOL)
    # changing the padding tokens changes nothing
    garbage = xs.at[1, 4:].set((xs[1, 4:] + 1) % VOCAB)
    np.testing.assert_allclose(apply(model, params, garbage, lengths=jnp.array(lengths)), padded,
                               **TOL)


# -- dropout ---------------------------------------------------------------------------------
def test_dropout():
    kw = dict(cell=rj.Elman(H), output_size=O, num_layers=2)
    model = rj.SequenceModel(**kw, dropout_rate=0.5)
    params = model.init(_key(8), I)
    xs = _floats(9, (B, T, I))
    plain = apply(rj.SequenceModel(**kw), params, xs)
    np.testing.assert_array_equal(apply(model, params, xs), plain)  # deterministic by default
    np.testing.assert_array_equal(apply(model, params, xs, key=_key(1), deterministic=True), plain)
    train = apply(model, params, xs, key=_key(1), deterministic=False)
    assert not np.allclose(train, plain)
    np.testing.assert_array_equal(apply(model, params, xs, key=_key(1), deterministic=False), train)
    assert not np.allclose(apply(model, params, xs, key=_key(2), deterministic=False), train)
    with pytest.raises(ValueError, match="key"):
        apply(model, params, xs, deterministic=False)
    # dropout acts between layers only: a one-layer model has nothing to drop
    one = rj.SequenceModel(rj.Elman(H), O, dropout_rate=0.5)
    p1 = one.init(_key(8), I)
    np.testing.assert_array_equal(apply(one, p1, xs, key=_key(1), deterministic=False),
                                  apply(one, p1, xs))


# -- transforms ------------------------------------------------------------------------------
def test_jit_and_vmap():
    model = rj.SequenceModel(rj.GRU(H), O, bidirectional=True)
    params = model.init(_key(10), I)
    xs = _floats(11, (B, T, I))
    lengths = jnp.array([T, 2, 4])
    eager = model.apply(params, xs, lengths=lengths)
    jitted = jax.jit(model.apply)(params, xs, lengths=lengths)
    np.testing.assert_allclose(jitted, eager, **TOL)
    # vmap over the batch == the native batch
    per_seq = jax.vmap(lambda x, n: apply(model, params, x, lengths=n))(xs, lengths)
    np.testing.assert_allclose(per_seq, eager, **TOL)
    # vmap over parameters (e.g. seeds): several models at once
    keys = jax.random.split(_key(12), 2)
    inits = [model.init(k, I) for k in keys]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *inits)
    many = jax.vmap(lambda p: apply(model, p, xs, lengths=lengths))(stacked)
    for p, out in zip(inits, many, strict=True):
        np.testing.assert_allclose(out, apply(model, p, xs, lengths=lengths), **TOL)


def test_carries_round_trip():
    """Two halves with the carries passed on == one run over the whole sequence."""
    model = rj.SequenceModel(rj.LSTM(H), O, num_layers=2, input_projection=4)
    params = model.init(_key(13), I)
    xs = _floats(14, (B, T, I))
    full, finals = apply(model, params, xs, return_carries=True)
    first, mid = apply(model, params, xs[:, :2], return_carries=True)
    second, end = apply(model, params, xs[:, 2:], carries=mid, return_carries=True)
    np.testing.assert_allclose(jnp.concatenate([first, second], axis=1), full, **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), end, finals)
    assert jax.tree.structure(finals) == jax.tree.structure(model.initial_carries((B,)))


def test_model_is_a_hashable_static_argument():
    def make():
        return rj.SequenceModel([rj.GRU(H), rj.GRU(H)], O, readout="last")

    m1, m2 = make(), make()
    assert m1 == m2 and hash(m1) == hash(m2) and m1 is not m2
    assert m1.cell == (rj.GRU(H), rj.GRU(H))  # a list of cells becomes a tuple
    assert m1 != rj.SequenceModel([rj.GRU(H), rj.GRU(H)], O, readout="all")
    traces = []

    def _apply(model, params, xs):
        traces.append(model)
        return model.apply(params, xs)

    run = jax.jit(_apply, static_argnums=0)
    params = m1.init(_key(15), I)
    xs = _floats(16, (B, T, I))
    a = run(m1, params, xs)
    b = run(m2, params, xs)  # an equal model hits the cache: no second trace
    assert len(traces) == 1
    np.testing.assert_array_equal(a, b)
    assert a.shape == (B, O)


# -- bad input -------------------------------------------------------------------------------
def test_bad_inputs_raise_informative_errors():
    tokens = rj.SequenceModel(rj.Elman(H), O, vocab_size=VOCAB)
    pt = tokens.init(_key(0))
    with pytest.raises(TypeError, match="integer token ids.*float32"):
        tokens.apply(pt, _floats(0, (B, T)))
    floats = rj.SequenceModel(rj.Elman(H), O)
    pf = floats.init(_key(0), I)
    with pytest.raises(TypeError, match="floating point.*int32"):
        floats.apply(pf, jnp.ones((B, T, I), jnp.int32))
    with pytest.raises(ValueError, match="2 input features.*input_size=3"):
        floats.apply(pf, _floats(0, (B, T, 2)))
    with pytest.raises(ValueError, match="rank"):
        floats.apply(pf, _floats(0, (T,)))
    projected = rj.SequenceModel(rj.Elman(H), O, input_projection=4)
    pp = projected.init(_key(0), I)
    with pytest.raises(ValueError, match="2 input features.*input_size=3"):
        projected.apply(pp, _floats(0, (B, T, 2)))
    with pytest.raises(ValueError, match="input_size is required"):
        floats.init(_key(0))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(readout="first"), ValueError, r"readout: expected one of \('all', 'last'.*'first'"),
    (dict(merge="max", bidirectional=True), ValueError,
     r"merge: expected one of \('concat', 'sum', 'mean'\), got 'max'"),
    (dict(output_size=0), ValueError, "output_size: expected an int >= 1, got 0"),
    (dict(output_size=2.0), TypeError, "output_size: expected an int, got float"),
    (dict(num_layers=0), ValueError, "num_layers: expected an int >= 1, got 0"),
    (dict(vocab_size=VOCAB, input_projection=4), ValueError, "alternatives"),
    (dict(dropout_rate=1.5), ValueError, r"dropout_rate: expected a float in \[0, 1\), got 1.5"),
    (dict(dropout_rate=-0.1), ValueError, "dropout_rate"),
    (dict(dropout_rate="0.1"), ValueError, "dropout_rate"),
    (dict(bidirectional="yes"), TypeError, "bidirectional: expected a bool, got str"),
    (dict(remat="yes"), ValueError, "remat='yes' is not supported"),
    (dict(remat=0), ValueError, "remat=0 is not supported"),
    (dict(method="loop"), ValueError, "method: expected one of"),
    (dict(unroll=0), ValueError, "SequenceModel.unroll must be a positive int"),
    (dict(readout="flatten"), ValueError, "seq_len"),
    (dict(seq_len=0), ValueError, "seq_len: expected an int >= 1"),
    (dict(embed_size=4), ValueError, "embed_size=4 needs vocab_size"),
    (dict(cell="gru"), TypeError, "SequenceModel.cell: expected a cell"),
])
def test_bad_configuration_raises_at_construction(kwargs, error, match):
    kw = dict(cell=rj.Elman(H), output_size=O) | kwargs
    with pytest.raises(error, match=match):
        rj.SequenceModel(**kw)


def test_params_of_another_layout_raise_naming_params():
    model = rj.SequenceModel(rj.Elman(H), O, readout="last")
    params = model.init(_key(0), I)
    xs = _floats(0, (B, T, I))
    with pytest.raises(ValueError, match=r"params: expected a dict with keys \['layers', 're"):
        model.apply({"layers": params["layers"]}, xs)
    with pytest.raises(ValueError, match=r"params\['readout'\]\['V'\]: expected shape"):
        model.apply(dict(params, readout={"V": params["readout"]["V"][:, :1],
                                          "c": params["readout"]["c"]}), xs)
    with pytest.raises(ValueError, match=r"params\['layers'\]: expected a list of 2"):
        rj.SequenceModel(rj.Elman(H), O, num_layers=2).apply(params, xs)
    with pytest.raises(TypeError, match="xs: expected an array"):
        model.apply(params, [[0.0]])
    with pytest.raises(TypeError, match="deterministic: expected a bool"):
        model.apply(params, xs, deterministic="no")
