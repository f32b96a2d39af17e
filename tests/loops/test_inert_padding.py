"""Inert padding: whatever sits at a masked step of xs (NaN, +-inf, 1e30) reaches no output,
carry or gradient, on every method and cell, and through bidirectional, stack, SequenceModel.

The oracle is the same call with zeros at the masked steps: outputs, final carries and the
gradients with respect to params and xs must equal it exactly (the runner zeroes those steps
with ``jnp.where`` before any loop, so both runs compute the same program on the same values).
"""

import functools

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import rnn_jax as rj  # noqa: E402

B, T, I = 3, 6, 2
CELLS = {"elman": rj.Elman(3), "lstm": rj.LSTM(3), "gru": rj.GRU(3), "mingru": rj.MinGRU(3),
         "lru": rj.LRU(4)}
GATED = ("elman", "lstm", "gru")  # the cells the fused and Pallas loops run
CASES = [(c, m) for c in CELLS for m in ("scan", "deer", "quasi_deer")]
CASES += [(c, m) for c in GATED for m in ("fused", "pallas")]
CASES += [(c, "scan_parallel") for c in ("mingru", "lru")]
GARBAGE = (np.nan, np.inf, -np.inf, 1e30, -1e30)
PROPERTY = settings(max_examples=6, deadline=None)


def run(cell, method, params, xs, **kw):
    if method == "scan_parallel":
        return cell.scan_parallel(params, xs, **kw)
    return rj.rnn(cell, params, xs, method=method, **kw)


@functools.partial(jax.jit, static_argnums=(0, 1))
def outputs_and_grads(cell_name, method, params, xs, mask):
    """(hs, final), and d/d(params, xs) of a loss of every output and the final carry."""
    cell = CELLS[cell_name]

    def loss(p, x):
        hs, final = run(cell, method, p, x, mask=mask)
        carry_term = sum(jnp.sum(jnp.cos(c)) for c in jax.tree.leaves(final))
        weights = jnp.arange(1, hs.shape[-1] + 1, dtype=hs.dtype).reshape(1, 1, -1)
        return jnp.sum(jnp.sin(hs) * weights) + carry_term, (hs, final)

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, xs)
    return out, grads


def data(cell_name, seed):
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda x: jnp.asarray(0.5 * rng.standard_normal(x.shape), x.dtype),
        jax.eval_shape(lambda: CELLS[cell_name].init(jax.random.key(0), I)))
    xs = rng.standard_normal((B, T, I)).astype(np.float32)
    return params, xs


def poisoned(xs, mask, value, where):
    """``xs`` with ``value`` at the masked steps (every masked step, or the ``where`` ones)."""
    bad = np.array(xs)
    hit = ~np.asarray(mask)[..., None] & np.asarray(where)[..., None]
    bad[np.broadcast_to(hit, bad.shape)] = value
    clean = np.where(np.asarray(mask)[..., None], xs, 0.0).astype(np.float32)
    return jnp.asarray(bad), jnp.asarray(clean)


def assert_equal_and_finite(got, want):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert np.all(np.isfinite(np.asarray(g)))
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@pytest.mark.parametrize("cell_name, method", CASES, ids=[f"{c}-{m}" for c, m in CASES])
@PROPERTY
@given(mask=st.lists(st.lists(st.booleans(), min_size=T, max_size=T), min_size=B, max_size=B),
       where=st.lists(st.lists(st.booleans(), min_size=T, max_size=T), min_size=B, max_size=B),
       value=st.sampled_from(GARBAGE), seed=st.integers(0, 2**16))
def test_garbage_at_masked_steps_is_inert(cell_name, method, mask, where, value, seed):
    params, xs = data(cell_name, seed)
    mask = jnp.asarray(mask)
    bad, clean = poisoned(xs, mask, value, where)
    (out_bad, grads_bad) = outputs_and_grads(cell_name, method, params, bad, mask)
    (out_clean, grads_clean) = outputs_and_grads(cell_name, method, params, clean, mask)
    assert_equal_and_finite(out_bad, out_clean)
    assert_equal_and_finite(grads_bad, grads_clean)
    d_xs = np.asarray(grads_bad[1])
    np.testing.assert_array_equal(d_xs[~np.asarray(mask)], 0.0)  # padding gets no gradient


@pytest.mark.parametrize("cell_name, method", [c for c in CASES if c[0] in GATED],
                         ids=[f"{c}-{m}" for c, m in CASES if c[0] in GATED])
def test_the_reported_reproducer(cell_name, method):
    # issue 15, found item 2: NaN at xs[0, 5] with lengths [4, 3, 6] made the gradients NaN
    cell = CELLS[cell_name]
    params, xs = data(cell_name, 7)
    lengths = jnp.array([4, 3, 6])
    x = jnp.asarray(xs).at[0, 5].set(jnp.nan)

    def loss(p, x):
        return jnp.sum(run(cell, method, p, x, lengths=lengths)[0] ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    assert_equal_and_finite(grad(params, x), grad(params, jnp.asarray(xs).at[0, 5].set(0.0)))


STACK_CELLS = (rj.GRU(3), rj.LSTM(2))
MODEL = rj.SequenceModel((rj.GRU(3), (rj.LSTM(2), rj.Elman(2))), 2, bidirectional=True,
                         input_projection=4, readout="last")


@jax.jit
def composite_outputs_and_grads(params, xs, lengths):
    """bidirectional, stack and a SequenceModel (input projection: its gradient is x^T de)."""
    def loss(p, x):
        hs_b, carry_b = rj.bidirectional(CELLS["lstm"], CELLS["gru"], p["bidirectional"], x,
                                         lengths=lengths)
        hs_s, carry_s = rj.stack(STACK_CELLS, p["stack"], x, lengths=lengths)
        logits = MODEL.apply(p["model"], x, lengths=lengths)
        parts = [hs_b, hs_s, logits, *jax.tree.leaves((carry_b, carry_s))]
        return sum(jnp.sum(jnp.sin(v)) for v in parts), parts
    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, xs)


@PROPERTY
@given(lengths=st.lists(st.integers(0, T), min_size=B, max_size=B),
       value=st.sampled_from(GARBAGE), seed=st.integers(0, 2**16))
def test_bidirectional_stack_and_model_padding_is_inert(lengths, value, seed):
    lengths = jnp.asarray(lengths)
    mask = jnp.arange(T)[None, :] < lengths[:, None]
    _, xs = data("gru", seed)
    bad, clean = poisoned(xs, mask, value, np.ones((B, T), bool))
    key = jax.random.key(seed)
    params = {
        "bidirectional": {"fwd": CELLS["lstm"].init(key, I), "bwd": CELLS["gru"].init(key, I)},
        "stack": rj.init_stack(key, STACK_CELLS, I),
        "model": MODEL.init(key, I),
    }
    (_, out_bad), g_bad = composite_outputs_and_grads(params, bad, lengths)
    (_, out_clean), g_clean = composite_outputs_and_grads(params, clean, lengths)
    assert_equal_and_finite(out_bad, out_clean)
    assert_equal_and_finite(g_bad, g_clean)


def test_token_model_padding_ids_are_inert():
    # a token model's padded ids may be anything (here -1, outside the vocabulary): they are
    # replaced by id 0 before the embedding reads them, and the eager range check sees only
    # the real steps
    model = rj.SequenceModel(rj.GRU(3), 2, vocab_size=5, embed_size=4, readout="last")
    params = model.init(jax.random.key(0))
    ids = jnp.array([[1, 2, 3, -1, -1], [4, 0, -1, -1, -1]])
    lengths = jnp.array([3, 2])
    got = model.apply(params, ids, lengths=lengths)
    want = model.apply(params, jnp.where(ids < 0, 0, ids), lengths=lengths)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
