"""Segment checkpointing (``remat``): the same outputs and gradients as the default, less memory."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax.loops import segments  # noqa: E402

I, H, T = 3, 4, 7
CELLS = {
    "elman": rj.Elman(H),
    "lstm": rj.LSTM(H),
    "gru": rj.GRU(H),
    "mingru": rj.MinGRU(H),
    "lru": rj.LRU(H),
    "lstm-bf16": rj.LSTM(H, compute_dtype=jnp.bfloat16),  # not fused: the plain scan inside
}
# k = 1 (T segments), the default (k = 3 here: a shorter last segment) and k > T (one segment)
REMATS = (1, "segments", T + 5)


def normal(seed, shape, dtype=jnp.float32, scale=0.5):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def case(cell, batch_shape, seed, dtype=jnp.float32, num_steps=T):
    """Random params (every entry), inputs, initial carry and a mask with ~70% real steps."""
    shapes = jax.eval_shape(lambda: (cell.init(jax.random.key(0), I),
                                     cell.initial_carry(batch_shape)))
    leaves, tree = jax.tree.flatten(shapes)
    params, carry = jax.tree.unflatten(
        tree, [normal((seed, k), x.shape, dtype) for k, x in enumerate(leaves)])
    xs = normal((seed, 99), (*batch_shape, num_steps, I), dtype, 1.0)
    mask = normal((seed, 98), (*batch_shape, num_steps)) > -0.3
    return params, xs, carry, mask


def outputs_and_grads(cell, remats, **kw):
    """For each remat: (hs, final carry) and the gradients of a loss reading both, for (params,
    xs, carry). One compiled program for all of them (compiling is what makes tests slow)."""

    def one(remat, params, xs, carry):
        def loss(params, xs, carry):
            hs, final = rj.rnn(cell, params, xs, carry, remat=remat, **kw)
            w = jnp.cos(jnp.arange(hs.size, dtype=hs.dtype)).reshape(hs.shape)
            return jnp.sum(w * hs + hs**2) + sum(jnp.sum(jnp.sin(c))
                                                 for c in jax.tree.leaves(final))

        return (rj.rnn(cell, params, xs, carry, remat=remat, **kw),
                jax.grad(loss, argnums=(0, 1, 2))(params, xs, carry))

    return jax.jit(lambda *args: [one(r, *args) for r in remats])


def assert_close(got, want, tol, err_msg=""):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, err_msg
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64),
                                   rtol=tol, atol=tol, err_msg=err_msg)


# -- the same results as the default ----------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CELLS))
def test_outputs_and_gradients_equal_the_default(name):
    """Every segment length, masked and reversed, against remat=False (float32 round-off)."""
    cell = CELLS[name]
    params, xs, carry, mask = case(cell, (2,), 1)
    tol = 2e-2 if "bf16" in name else 2e-5
    assert segments.segment_length("segments", T) == 3
    want, *got = outputs_and_grads(cell, (False, *REMATS), mask=mask, reverse=True)(
        params, xs, carry)
    for remat, g in zip(REMATS, got, strict=True):
        assert_close(g, want, tol, err_msg=f"{name} remat={remat}")
    if name == "lstm":  # the fused loop without a mask, forwards
        want, got = outputs_and_grads(cell, (False, "segments"))(params, xs, carry)
        assert_close(got, want, tol)


def test_float64_to_1e_12():
    """In float64 the segmented and default runs agree to 1e-12 (both inner loops)."""
    with jax.enable_x64(True):
        for name, method in (("lstm", "fused"), ("gru", "scan")):
            cell = type(CELLS[name])(H, param_dtype=jnp.float64)
            params, xs, carry, _ = case(cell, (2, 2), 2, jnp.float64)
            kw = dict(lengths=jnp.array([[7, 0], [3, 5]]), method=method)
            want, *got = outputs_and_grads(cell, (False, 2, "segments"), **kw)(
                params, xs, carry)
            for remat, g in zip((2, "segments"), got, strict=True):
                assert g[0][0].dtype == jnp.float64
                assert_close(g, want, 1e-12, err_msg=f"{name} {method} remat={remat}")
    assert jnp.zeros(1).dtype == jnp.float32  # x64 did not leak


def test_probes_and_return_carries_run_segmented_scans():
    """Probes, their gradient (dL/dh_t) and every step's carry, as without remat."""
    cell = CELLS["lstm"]
    params, xs, carry, mask = case(cell, (2,), 3)
    probes = jnp.zeros((2, T, H))

    def f(remat):
        def run(params, probes):
            return rj.rnn(cell, params, xs, carry, mask=mask, probes=probes, reverse=True,
                          return_carries=True, remat=remat)

        def loss(params, probes):
            hs, final, carries = run(params, probes)
            return jnp.sum(hs**2) + jnp.sum(jnp.tanh(carries[1])) + jnp.sum(final[0])

        return jax.jit(lambda p, pr: (run(p, pr), jax.grad(loss, (0, 1))(p, pr)))

    want = f(False)(params, probes)
    assert float(jnp.abs(want[1][1]).max()) > 1e-3  # the probe gradient is not trivially 0
    assert_close(f("segments")(params, probes), want, 2e-5)


def test_vmap_time_major_and_unroll():
    cell = CELLS["gru"]
    params, xs, carry, mask = case(cell, (3, 2), 4)
    want = jax.jit(lambda x, c, m: rj.rnn(cell, params, x, c, mask=m))(xs, carry, mask)
    mapped = jax.jit(jax.vmap(lambda x, c, m: rj.rnn(cell, params, x, c, mask=m, remat=3,
                                                     unroll=2)))(xs, carry, mask)
    assert_close(mapped, want, 2e-5)
    tm = rj.rnn(cell, params, jnp.moveaxis(xs, -2, 0), carry, mask=mask, time_major=True,
                remat="segments")
    assert_close((jnp.moveaxis(tm[0], 0, -2), tm[1]), want, 2e-5)
    # gradients of a vmapped loss (per-example gradients)
    grads = [jax.jit(jax.vmap(jax.grad(
        lambda p, x, r=r: jnp.sum(rj.rnn(cell, p, x, remat=r)[0] ** 2)), (None, 0)))(params, xs)
        for r in (False, 2)]
    assert_close(grads[1], grads[0], 2e-5)


def test_bidirectional_stack():
    cells = (CELLS["lstm"], CELLS["gru"])
    params = rj.init_stack(jax.random.key(0), cells, I, bidirectional=True)
    _, xs, _, _ = case(cells[0], (2,), 5)
    lengths = jnp.array([T, 4])

    def f(remat):
        def loss(params, xs):
            hs, finals = rj.stack(cells, params, xs, lengths=lengths, bidirectional=True,
                                  remat=remat)
            return jnp.sum(hs**2) + sum(jnp.sum(c) for c in jax.tree.leaves(finals))

        return jax.value_and_grad(loss, (0, 1))(params, xs)

    want, got = jax.jit(lambda: (f(False), f(True)))()
    assert_close(got, want, 2e-5)


def test_sequence_model_passes_remat_through():
    model = rj.SequenceModel(rj.LSTM(H), 2, num_layers=2, readout="last", remat="segments")
    params = model.init(jax.random.key(0), I)
    _, xs, _, _ = case(model.cell, (2,), 6)
    plain = rj.SequenceModel(rj.LSTM(H), 2, num_layers=2, readout="last")
    grads = jax.jit(lambda params: [jax.grad(lambda p, m=m: jnp.sum(m.apply(p, xs) ** 2))(params)
                                    for m in (plain, model)])(params)
    assert_close(grads[1], grads[0], 2e-5)
    with pytest.raises(ValueError, match="remat"):
        rj.SequenceModel(rj.LSTM(H), 2, remat="all")


@settings(max_examples=8, deadline=None)
@given(num_steps=st.integers(1, 12), k=st.integers(1, 14), reverse=st.booleans(),
       lengths=st.lists(st.integers(0, 12), min_size=2, max_size=2))
def test_any_segment_length_any_padding(num_steps, k, reverse, lengths):
    """Any T, any k (dividing T or not, k >= T), right padding: the default's results."""
    cell = CELLS["lstm"]
    params, xs, carry, _ = case(cell, (2,), 7, num_steps=12)
    xs = xs[:, :num_steps]
    lengths = jnp.minimum(jnp.array(lengths), num_steps)
    outs = [rj.rnn(cell, params, xs, carry, lengths=lengths, reverse=reverse, remat=r)
            for r in (False, k)]
    assert_close(outs[1], outs[0], 2e-5)


def test_zero_steps():
    cell = CELLS["gru"]
    params, xs, carry, _ = case(cell, (2,), 8)
    hs, final = rj.rnn(cell, params, xs[:, :0], carry, remat="segments")
    assert hs.shape == (2, 0, H)
    assert_close(final, carry, 0.0)


# -- memory -----------------------------------------------------------------------------------
def _temp_bytes(cell, params, num_steps, remat):
    xs = jax.ShapeDtypeStruct((num_steps, 2, I), jnp.float32)
    dhs = jax.ShapeDtypeStruct((num_steps, 2, H), jnp.float32)

    def bptt(params, xs, dhs):  # the outputs' cotangent given: inputs and outputs excluded
        run = lambda p: rj.rnn(cell, p, xs, time_major=True, remat=remat)[0]  # noqa: E731
        return jax.vjp(run, params)[1](dhs)

    return jax.jit(bptt).lower(params, xs, dhs).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("name", ["lstm", "mingru"])
def test_memory_grows_like_sqrt_t(name):
    """Compiled temp memory of BPTT: linear in T by default, about √T with segments."""
    cell = CELLS[name]
    params = cell.init(jax.random.key(0), I)
    default = [_temp_bytes(cell, params, t, False) for t in (1024, 16384)]
    segmented = [_temp_bytes(cell, params, t, "segments") for t in (1024, 16384)]
    assert default[1] > 12 * default[0]  # 16x more steps: linear
    assert segmented[1] < 6 * segmented[0]  # √16 = 4
    assert segmented[1] < default[1] / 20


# -- misuse -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -2, 2.5, "all", "segment", [3], np.float32(4)])
def test_bad_remat_is_named(bad):
    cell = CELLS["elman"]
    params, xs, _, _ = case(cell, (2,), 9)
    with pytest.raises(ValueError, match="remat="):
        rj.rnn(cell, params, xs, remat=bad)


def test_what_cannot_be_segmented_says_so():
    cell = CELLS["elman"]
    params, xs, _, _ = case(cell, (2,), 10)
    with pytest.raises(ValueError, match="does not support .*remat"):
        rj.rnn(cell, params, xs, remat=True, method="deer")
    with pytest.raises(ValueError, match="pallas"):
        rj.rnn(cell, params, xs, remat=True, method="pallas")


def test_segment_length():
    assert segments.segment_length("segments", 10_000) == 100
    assert segments.segment_length("segments", 100_000) == 400  # a divisor in [√T, 2√T]
    assert segments.segment_length("segments", 99_991) == 317  # prime: ceil(√T)
    assert segments.segment_length(5, 3) == 3
    assert segments.check_remat(True) == segments.check_remat("segments") == "segments"
    assert segments.check_remat(False) is None and segments.check_remat(np.int64(7)) == 7
