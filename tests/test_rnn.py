"""The runner: oracle equivalence with a Python loop, transforms, masking, gradients, bad input."""

import functools

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import rnn_jax as rj  # noqa: E402

I, H, T = 3, 4, 5
CELLS = {
    "elman-tanh": rj.Elman(H),
    "elman-relu": rj.Elman(H, activation="relu"),
    "elman-identity": rj.Elman(H, activation="identity"),
    "lstm": rj.LSTM(H),
    "gru": rj.GRU(H),
}
STATIC = ("reverse", "time_major", "unroll", "return_carries", "remat")
RUN = jax.jit(rj.rnn, static_argnums=0, static_argnames=STATIC)
PROPERTY = settings(max_examples=20, deadline=None)


def normal(seed, shape, scale=1.0, dtype=jnp.float32):
    """Seeded N(0, scale^2) test data from a local NumPy generator (no compile per shape).

    ``seed`` is an int or a nested tuple of ints (named sub-streams, like key splits).
    """
    rng = np.random.default_rng(_flatten(seed))
    return (scale * rng.standard_normal(shape)).astype(dtype)


def _flatten(seed):
    return [seed] if isinstance(seed, int) else [i for part in seed for i in _flatten(part)]


def randomize(tree, seed, scale=0.5, dtype=None):
    """Every leaf (an array or a ShapeDtypeStruct) replaced by N(0, scale^2) noise."""
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, [
        normal((seed, k), x.shape, scale, dtype or x.dtype) for k, x in enumerate(leaves)])


def random_params(cell, seed, input_size=I, dtype=None):
    """Parameters in the cell's layout, every entry random (non-zero biases too)."""
    return randomize(jax.eval_shape(lambda: cell.init(jax.random.key(0), input_size)), seed,
                     dtype=dtype)


def random_carry(cell, batch_shape, seed, dtype=None):
    return randomize(jax.eval_shape(lambda: cell.initial_carry(batch_shape)), seed, dtype=dtype)


def assert_tree_close(a, b, rtol=2e-5, atol=2e-5, err_msg=""):
    assert jax.tree.structure(a) == jax.tree.structure(b), err_msg
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.shape(x) == np.shape(y), err_msg
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                                   err_msg=err_msg)


def take(tree, idx):
    return jax.tree.map(lambda x: x[idx], tree)


def to_np(tree):
    """Outputs as NumPy arrays, so that indexing them compiles nothing."""
    return jax.tree.map(np.asarray, tree)


def loop_oracle(cell, params, xs, carry=None, *, mask=None, lengths=None, reverse=False,
                probes=None):
    """The contract, as a plain Python loop over ``cell.step`` (batch-major).

    Returns ``(hs, final_carry, carries)`` with ``carries`` stacked on the time axis.
    """
    batch_shape, num_steps = xs.shape[:-2], xs.shape[-2]
    if lengths is not None:
        steps = jnp.arange(num_steps).reshape((1,) * len(batch_shape) + (num_steps,))
        mask = steps < jnp.asarray(lengths)[..., None]
    c = cell.initial_carry(batch_shape) if carry is None else carry
    hs, carries = [None] * num_steps, [None] * num_steps
    for t in (reversed(range(num_steps)) if reverse else range(num_steps)):
        new_c, h = cell.step(params, c, xs[..., t, :])
        if probes is not None:
            h = h + probes[..., t, :]
            new_c = cell.with_hidden(new_c, h)
        if mask is not None:
            real = mask[..., t, None]
            new_c = jax.tree.map(lambda n, o, real=real: jnp.where(real, n, o), new_c, c)
            h = jnp.where(real, h, 0.0)
        c, hs[t], carries[t] = new_c, h, new_c
    axis = len(batch_shape)
    return (jnp.stack(hs, axis=-2), c,
            jax.tree.map(lambda *cs: jnp.stack(cs, axis=axis), *carries))


def make_case(cell, batch_shape, seed, num_steps=T):
    """Random params, inputs, initial carry, mask, lengths (3, 0, T, 1, 2, 4) and probes."""
    n = int(np.prod(batch_shape, dtype=int))
    lengths = np.minimum(np.resize([3, 0, num_steps, 1, 2, 4], n), num_steps)
    mask = normal((seed, 3), (*batch_shape, num_steps)) < 0.25  # about 60% real steps
    return dict(
        params=random_params(cell, (seed, 0)),
        xs=normal((seed, 1), (*batch_shape, num_steps, I)),
        carry=random_carry(cell, batch_shape, (seed, 2)),
        mask=mask,
        lengths=lengths.astype(np.int32).reshape(batch_shape),
        probes=normal((seed, 4), (*batch_shape, num_steps, cell.hidden_size), 0.3),
    )


# -- oracle equivalence ------------------------------------------------------------------------
# (batch_shape, options used, unroll, remat, jit): every option meets every batch rank, several
# unroll values, remat, and both jit and eager.
COMBOS = [
    ((2,), (), 1, False, False),
    ((), ("carry", "mask"), 2, False, True),
    ((2, 3), ("carry", "lengths", "reverse"), 3, False, True),
    ((2,), ("carry", "mask", "reverse", "probes"), T, False, True),
    ((2, 3), ("carry", "mask", "probes"), True, False, True),
    ((2,), ("mask", "reverse", "probes"), 1, True, True),
    ((), ("lengths", "probes", "reverse"), 3, True, False),
    ((2, 3), ("carry", "reverse"), 2, False, True),
]


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: f"{c[0]}-{'+'.join(c[1])}-u{c[2]}"
                         f"{'-remat' if c[3] else ''}-{'jit' if c[4] else 'eager'}")
def test_runner_equals_python_loop(combo):
    """Every cell (all five in one compiled program, to compile once) against the loop."""
    batch_shape, options, unroll, remat, use_jit = combo
    seed = len(options) + 7 * unroll
    cases = {name: make_case(cell, batch_shape, (seed, k)) for k, (name, cell)
             in enumerate(CELLS.items())}
    inputs = {name: (case["params"], case["xs"], {k: case[k] for k in options if k in case})
              for name, case in cases.items()}
    reverse = "reverse" in options
    # without probes, remat and return_carries the default method="auto" takes another time
    # loop (rnn_jax.loops.fused): run it too
    default_path_differs = "probes" not in options and not remat

    def run_all(inputs):
        out = {}
        for name, (params, xs, kw) in inputs.items():
            common = dict(reverse=reverse, unroll=unroll, remat=remat, **kw)
            out[name] = (rj.rnn(CELLS[name], params, xs, return_carries=True, **common),
                         rj.rnn(CELLS[name], params, xs, **common) if default_path_differs
                         else None)
        return out

    got = (jax.jit(run_all) if use_jit else run_all)(inputs)
    for name, (params, xs, kw) in inputs.items():
        expected = loop_oracle(CELLS[name], params, xs, reverse=reverse, **kw)
        with_carries, default = got[name]
        assert with_carries[0].shape == (*batch_shape, T, H)
        assert_tree_close(with_carries, expected, err_msg=name)
        if default_path_differs:
            assert_tree_close(default, expected[:2], err_msg=f"{name}, default path")


def test_return_carries_and_zero_probes_change_nothing():
    cell = CELLS["lstm"]
    case = make_case(cell, (2,), 0)

    @jax.jit
    def variants(params, xs, carry, mask):
        return (rj.rnn(cell, params, xs, carry, mask=mask),
                rj.rnn(cell, params, xs, carry, mask=mask, return_carries=True),
                rj.rnn(cell, params, xs, carry, mask=mask, return_carries=True,
                       probes=jnp.zeros((2, T, H))))

    without, with_c, probed = variants(*(case[k] for k in ("params", "xs", "carry", "mask")))
    assert len(without) == 2 and len(with_c) == 3
    assert_tree_close(without, with_c[:2], rtol=1e-6, atol=1e-7)
    assert_tree_close(probed, with_c, rtol=1e-6, atol=1e-7)
    # the carry after the last position is the final carry in the forward direction
    assert_tree_close(take(with_c[2], (slice(None), -1)), with_c[1], rtol=0, atol=0)


def _loss(run, cell, mask, weights, args, **kw):
    """A loss that reads every output and the final carry; args: (params, xs, carry[, probes])."""
    params, xs, carry, *probes = args
    hs, final, *_ = run(cell, params, xs, carry, mask=mask, probes=(probes or [None])[0], **kw)
    return jnp.sum(weights * hs) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(final))


def test_unroll_and_remat_never_change_gradients():
    """Gradients for (params, xs, carry) and zero probes equal those through the loop.

    Two compiled programs, each for all five cells: remat (with probes: the plain scan), and
    unroll=2 without probes (the default method's other time loop, ``rnn_jax.loops.fused``).
    """
    cases = {name: make_case(cell, (2,), (11, k)) for k, (name, cell) in enumerate(CELLS.items())}
    zero = np.zeros((2, T, H), np.float32)
    args = {n: (c["params"], c["xs"], c["carry"], zero) for n, c in cases.items()}
    weights = normal(12, (2, T, H))
    expected = {n: jax.grad(functools.partial(_loss, loop_oracle, CELLS[n], cases[n]["mask"],
                                              weights))(a) for n, a in args.items()}
    assert all(np.abs(e[3]).max() > 1e-3 for e in expected.values())
    for with_probes, unroll, remat in ((True, 1, True), (False, 2, False)):
        def total(args, unroll=unroll, remat=remat):
            return sum(_loss(rj.rnn, CELLS[n], cases[n]["mask"], weights, a, unroll=unroll,
                             remat=remat) for n, a in args.items())

        got = jax.jit(jax.grad(total))(
            {n: a if with_probes else a[:3] for n, a in args.items()})
        for name in CELLS:
            assert_tree_close(got[name], expected[name][:len(got[name])], rtol=1e-4, atol=1e-5,
                              err_msg=f"{name} unroll={unroll} remat={remat}")


# -- transform invariance ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lstm"])
def test_vmap_and_flattened_batch_equal_native_batch(name):
    cell = CELLS[name]
    case = make_case(cell, (2, 3), 3)
    p, xs, c0, lengths, probes = (case[k] for k in ("params", "xs", "carry", "lengths", "probes"))
    native = RUN(cell, p, xs, c0, lengths=lengths, probes=probes, return_carries=True)
    # vmap over the leading batch axis, the runner seeing batch shape (3,)
    mapped = jax.jit(jax.vmap(
        lambda x, c, n, pr: rj.rnn(cell, p, x, c, lengths=n, probes=pr, return_carries=True)
    ))(xs, c0, lengths, probes)
    assert_tree_close(mapped, native, rtol=1e-6, atol=1e-6)
    # the two batch axes flattened into one
    flat = RUN(cell, p, xs.reshape(6, T, I), jax.tree.map(lambda c: c.reshape(6, H), c0),
               lengths=lengths.reshape(6), probes=probes.reshape(6, T, H), return_carries=True)
    assert_tree_close(jax.tree.map(lambda a: a.reshape(2, 3, *a.shape[1:]), flat), native,
                      rtol=1e-6, atol=1e-6)


def test_vmap_over_parameters_equals_separate_runs():
    cell = CELLS["gru"]
    cases = [make_case(cell, (2,), k) for k in (4, 5)]
    params = jax.tree.map(lambda *a: np.stack(a), *(c["params"] for c in cases))
    xs = cases[0]["xs"]
    hs, final = jax.jit(jax.vmap(lambda p: rj.rnn(cell, p, xs)))(params)
    for k, c in enumerate(cases):
        assert_tree_close((hs[k], final[k]), RUN(cell, c["params"], xs), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name, reverse", [("elman-tanh", False), ("lstm", True)])
def test_time_major_equals_batch_major(name, reverse):
    cell = CELLS[name]
    case = make_case(cell, (2, 3), 5)
    p, xs, c0, mask, probes = (case[k] for k in ("params", "xs", "carry", "mask", "probes"))
    bm = RUN(cell, p, xs, c0, mask=mask, probes=probes, reverse=reverse,
             return_carries=True)
    tm = RUN(cell, p, jnp.moveaxis(xs, -2, 0), c0, mask=mask,
             probes=jnp.moveaxis(probes, -2, 0), reverse=reverse, time_major=True,
             return_carries=True)
    assert tm[0].shape == (T, 2, 3, H)
    to_bm = functools.partial(jnp.moveaxis, source=0, destination=2)
    assert_tree_close((to_bm(tm[0]), tm[1], jax.tree.map(to_bm, tm[2])), bm,
                      rtol=1e-6, atol=1e-6)


# -- masking (property-based) --------------------------------------------------------------------
# Shapes are drawn from small sets and each compiled program computes both directions, so that
# programs are shared between examples; lengths, paddings and values vary freely. The LSTM is
# used because its carry is a pair.
PROP_CELL = CELLS["lstm"]
batch_shapes = st.sampled_from([(3,), (2, 2)])
num_steps_choices = st.sampled_from([1, 4])


@jax.jit
def both_directions(params, xs, carry, mask=None, lengths=None):
    """{reverse: (hs, final)} for reverse in (False, True)."""
    return {reverse: rj.rnn(PROP_CELL, params, xs, carry, mask=mask, lengths=lengths,
                            reverse=reverse) for reverse in (False, True)}


@st.composite
def padded_masks(draw):
    """A [*batch, T] mask: per sequence a length in 0..T and a left, right or interior padding."""
    batch_shape, num_steps = draw(batch_shapes), draw(num_steps_choices)
    rows = []
    for _ in range(int(np.prod(batch_shape))):
        length = draw(st.integers(0, num_steps))
        padding = draw(st.sampled_from(["left", "right", "interior"]))
        if padding == "left":
            real = range(num_steps - length, num_steps)
        elif padding == "right":
            real = range(length)
        else:
            real = draw(st.permutations(range(num_steps)))[:length]
        rows.append([t in real for t in range(num_steps)])
    return np.asarray(rows, bool).reshape(*batch_shape, num_steps)


@PROPERTY
@given(padded_masks(), st.integers(0, 2**16))
def test_padded_batch_equals_each_sequence_alone(mask, seed):
    """Left, right and interior padding, lengths 0..T, forward and reverse.

    The padded positions hold ordinary random inputs, so any leak would show.
    """
    batch_shape, num_steps = mask.shape[:-1], mask.shape[-1]
    case = make_case(PROP_CELL, batch_shape, seed, num_steps)
    p, xs, c0 = case["params"], case["xs"], case["carry"]
    padded = to_np(both_directions(p, xs, c0, mask=mask))
    for idx in np.ndindex(*batch_shape):
        real = mask[idx]
        alone = to_np(both_directions(p, xs[idx][real], take(c0, idx))) if real.any() else None
        for reverse, (hs, final) in padded.items():
            np.testing.assert_array_equal(hs[idx][~real], 0.0)  # padded steps emit zeros
            if alone is None:  # length 0: the initial carry comes back
                assert_tree_close(take(final, idx), take(c0, idx), rtol=0, atol=0)
                continue
            hs_alone, final_alone = alone[reverse]
            np.testing.assert_allclose(hs[idx][real], hs_alone, rtol=1e-5, atol=1e-6)
            assert_tree_close(take(final, idx), final_alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padding", ["left", "right", "interior"])
def test_padding_edge_lengths(padding):
    """Lengths 0, 1 and T side by side in one batch, for each padding (deterministic)."""
    cell = CELLS["gru"]
    case = make_case(cell, (3,), 6)
    if padding == "left":
        mask = np.arange(T)[None] >= T - np.array([0, 1, T])[:, None]
    elif padding == "right":
        mask = np.arange(T)[None] < np.array([0, 1, T])[:, None]
    else:
        mask = np.array([[False] * T, [False, False, True, False, False], [True] * T])
    hs, final = to_np(RUN(cell, case["params"], case["xs"], case["carry"], mask=mask))
    assert_tree_close(final[0], case["carry"][0], rtol=0, atol=0)
    np.testing.assert_array_equal(hs[0], 0.0)
    one = mask[1].argmax()
    c1, h1 = cell.step(case["params"], case["carry"][1], case["xs"][1, one])
    np.testing.assert_allclose(hs[1, one], h1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final[1], c1, rtol=1e-5, atol=1e-6)
    assert np.count_nonzero(np.abs(hs[1]).sum(-1)) == 1
    full = RUN(cell, case["params"], case["xs"][2], case["carry"][2])
    assert_tree_close((hs[2], final[2]), full, rtol=1e-5, atol=1e-6)


@PROPERTY
@given(batch_shapes, num_steps_choices, st.data())
def test_lengths_equal_the_equivalent_mask(batch_shape, num_steps, data):
    n = int(np.prod(batch_shape))
    lengths = data.draw(st.lists(st.integers(0, num_steps), min_size=n, max_size=n))
    lengths = np.asarray(lengths, np.int32).reshape(batch_shape)
    case = make_case(PROP_CELL, batch_shape, int(lengths.sum()), num_steps)
    mask = np.arange(num_steps) < lengths[..., None]
    args = (case["params"], case["xs"], case["carry"])
    assert_tree_close(both_directions(*args, lengths=lengths), both_directions(*args, mask=mask),
                      rtol=1e-6, atol=1e-7)


@jax.jit
def reverse_and_flipped_forward(params, xs, carry):
    flip = functools.partial(jnp.flip, axis=xs.ndim - 2)
    hs_r, final_r, carries_r = rj.rnn(PROP_CELL, params, xs, carry, reverse=True,
                                      return_carries=True)
    hs_f, final_f, carries_f = rj.rnn(PROP_CELL, params, flip(xs), carry, return_carries=True)
    return (hs_r, final_r, carries_r), (flip(hs_f), final_f, jax.tree.map(flip, carries_f))


@PROPERTY
@given(batch_shapes, num_steps_choices, st.integers(0, 2**16))
def test_reverse_is_forward_on_flipped_input(batch_shape, num_steps, seed):
    case = make_case(PROP_CELL, batch_shape, seed, num_steps)
    reverse, flipped = reverse_and_flipped_forward(case["params"], case["xs"], case["carry"])
    assert_tree_close(reverse, flipped, rtol=1e-5, atol=1e-6)


BI_FWD, BI_BWD = rj.LSTM(H), rj.GRU(H)


BI = jax.jit(functools.partial(rj.bidirectional, BI_FWD, BI_BWD))  # merge="concat"


@jax.jit
def every_merge(params, xs, lengths):
    return {merge: rj.bidirectional(BI_FWD, BI_BWD, params, xs, lengths=lengths, merge=merge)
            for merge in ("concat", "sum", "mean")}


@PROPERTY
@given(batch_shapes, st.data())
def test_bidirectional_padded_equals_unpadded(batch_shape, data):
    """Each right-padded sequence gives, on its real steps, what it gives alone."""
    n, num_steps = int(np.prod(batch_shape)), 4
    lengths = data.draw(st.lists(st.integers(0, num_steps), min_size=n, max_size=n))
    lengths = np.asarray(lengths, np.int32).reshape(batch_shape)
    seed = int(lengths.sum())
    params = {"fwd": random_params(BI_FWD, (seed, 0)), "bwd": random_params(BI_BWD, (seed, 1))}
    xs = normal((seed, 2), (*batch_shape, num_steps, I))
    padded = to_np(every_merge(params, xs, lengths))
    for idx in np.ndindex(*batch_shape):
        length = int(lengths[idx])
        if length:
            both, finals_alone = BI(params, xs[idx][:length])  # concat: [forward; backward]
            h_f, h_b = both[..., :H], both[..., H:]
            expected = {"concat": both, "sum": h_f + h_b, "mean": (h_f + h_b) / 2}
        else:  # no real step: the initial carries come back
            finals_alone = (BI_FWD.initial_carry(), BI_BWD.initial_carry())
        for merge, (hs, finals) in padded.items():
            assert hs.shape == (*batch_shape, num_steps, 2 * H if merge == "concat" else H)
            np.testing.assert_array_equal(hs[idx][length:], 0.0)
            if length:
                np.testing.assert_allclose(hs[idx][:length], expected[merge], rtol=1e-5,
                                           atol=1e-6, err_msg=merge)
            assert_tree_close(take(finals, idx), finals_alone, rtol=1e-5, atol=1e-6)


def test_bidirectional_is_a_forward_and_a_reverse_run():
    fwd, bwd = rj.LSTM(H), rj.Elman(H + 1)
    case = make_case(fwd, (2,), 8)
    params = {"fwd": case["params"], "bwd": random_params(bwd, 9)}
    carry = (case["carry"], jnp.ones((2, H + 1)))

    @jax.jit
    def both(params, xs, carry, mask):
        return (rj.bidirectional(fwd, bwd, params, xs, carry, mask=mask, return_carries=True),
                rj.rnn(fwd, params["fwd"], xs, carry[0], mask=mask, return_carries=True),
                rj.rnn(bwd, params["bwd"], xs, carry[1], mask=mask, reverse=True,
                       return_carries=True))

    (hs, finals, carries), out_f, out_b = both(params, case["xs"], carry, case["mask"])
    assert hs.shape == (2, T, 2 * H + 1)
    assert_tree_close((hs, finals, carries),
                      (jnp.concatenate([out_f[0], out_b[0]], -1), (out_f[1], out_b[1]),
                       (out_f[2], out_b[2])), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("merge", ["sum", "mean"])
def test_merge_directions(merge):
    a, b = jnp.arange(6.0).reshape(2, 3), jnp.ones((2, 3))
    expected = {"sum": a + b, "mean": (a + b) / 2}[merge]
    np.testing.assert_array_equal(rj.merge_directions(a, b, merge), expected)
    np.testing.assert_array_equal(rj.merge_directions(a, b, "concat"),
                                  jnp.concatenate([a, b], -1))


# -- gradients (float64) -------------------------------------------------------------------------
def test_runner_gradients_float64_with_mask():
    """check_grads, forward and reverse mode to order 2, through masked runs of the runner."""
    mask = jnp.array([[True, False, True], [False, True, True]])
    cell = rj.LSTM(2)
    with jax.enable_x64(True):
        params = random_params(cell, 0, input_size=2, dtype=jnp.float64)
        xs = normal(1, (2, 3, 2), dtype=jnp.float64)
        carry = random_carry(cell, (2,), 2, dtype=jnp.float64)
        probes = normal(3, (2, 3, 2), 0.3, dtype=jnp.float64)

        def f(params, xs, carry, probes):
            hs, final = rj.rnn(cell, params, xs, carry, mask=mask, probes=probes)
            assert hs.dtype == final[1].dtype == jnp.float64
            return hs, final

        check_grads(jax.jit(f), (params, xs, carry, probes), order=2, modes=("fwd", "rev"))
    assert jnp.zeros(1).dtype == jnp.float32  # x64 did not leak


# -- probes ----------------------------------------------------------------------------------------
def elman_adjoint(hs, direct, u, order, final_grad):
    """dL/dh_t by the BPTT recursion along the visiting ``order`` of the real steps.

        delta_t = dL/dh_t (direct) + (delta_next * (1 - h_next^2)) U^T
    """
    delta = np.zeros_like(hs)
    nxt = None
    for t in reversed(order):
        delta[t] = direct[t] + (final_grad if nxt is None else
                                (delta[nxt] * (1.0 - hs[nxt] ** 2)) @ u.T)
        nxt = t
    return delta


@pytest.mark.parametrize("reverse", [False, True])
def test_probe_gradients_equal_the_adjoint_recursion(reverse):
    cell = CELLS["elman-tanh"]
    case = make_case(cell, (2,), 21)
    p, xs, c0 = case["params"], case["xs"], case["carry"]
    lengths = jnp.array([T, 3])
    a, w = normal(22, (2, T, H)), normal(23, (2, H))

    def loss(probes):
        hs, final = rj.rnn(cell, p, xs, c0, lengths=lengths, reverse=reverse, probes=probes)
        return jnp.sum(a * hs) + 0.5 * jnp.sum(hs**2) + jnp.sum(w * final)

    zero = jnp.zeros((2, T, H))
    got = np.asarray(jax.jit(jax.grad(loss))(zero))
    hs = np.asarray(rj.rnn(cell, p, xs, c0, lengths=lengths, reverse=reverse)[0], np.float64)
    direct = np.asarray(a, np.float64) + hs
    u = np.asarray(p["U"], np.float64)
    for b, length in enumerate(np.asarray(lengths)):
        order = list(range(length))[::-1] if reverse else list(range(length))
        expected = elman_adjoint(hs[b], direct[b], u, order, np.asarray(w[b], np.float64))
        np.testing.assert_allclose(got[b], expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(got[b, length:], 0.0)  # padded steps see no probe


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_probe_gradients_equal_the_python_loop(name):
    cell = CELLS[name]
    case = make_case(cell, (2,), 31)
    p, xs, c0, mask = (case[k] for k in ("params", "xs", "carry", "mask"))
    a = normal(32, (2, T, H))

    def loss(run, probes):
        hs, final, *_ = run(cell, p, xs, c0, mask=mask, probes=probes)
        return jnp.sum(a * jnp.tanh(hs)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(final))

    zero = jnp.zeros((2, T, H))
    got = jax.jit(jax.grad(functools.partial(loss, rj.rnn)))(zero)
    expected = jax.grad(functools.partial(loss, loop_oracle))(zero)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(got)[~np.asarray(mask)] == 0.0)
    assert np.abs(np.asarray(got)).max() > 1e-3


# -- bad input -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lstm_case():
    cell = CELLS["lstm"]
    return cell, make_case(cell, (2,), 0)


BAD_INPUTS = [
    ("xs features", dict(xs=jnp.ones((2, T, I + 1))), ValueError,
     r"xs has 4 input features .*input_size=3"),
    ("rank-1 xs", dict(xs=jnp.ones((T,))), ValueError,
     r"xs must have rank >= 2 \(\[\*batch, T, I\]\), got shape \(5,\)"),
    ("int xs", dict(xs=jnp.ones((2, T, I), jnp.int32)), TypeError,
     r"xs must be floating point, got dtype int32"),
    ("lengths shape", dict(lengths=jnp.array([1, 2, 3])), ValueError,
     r"lengths must have the batch shape \(2,\), got shape \(3,\)"),
    ("float lengths", dict(lengths=jnp.array([1.0, 2.0])), TypeError,
     r"lengths must be integers, got dtype float32"),
    ("negative length", dict(lengths=jnp.array([-1, 2])), ValueError,
     r"lengths must lie in \[0, T=5\], got min -1"),
    ("too long", dict(lengths=jnp.array([6, 2])), ValueError,
     r"lengths must lie in \[0, T=5\], got .*max 6"),
    ("mask shape", dict(mask=jnp.ones((2, T + 1), bool)), ValueError,
     r"mask must have shape \[\*batch, T\] = \(2, 5\), got \(2, 6\)"),
    ("mask batch", dict(mask=jnp.ones((3, T), bool)), ValueError,
     r"mask must have shape .*\(2, 5\), got \(3, 5\)"),
    ("int mask", dict(mask=jnp.ones((2, T), jnp.int32)), TypeError,
     r"mask must be bool, got dtype int32"),
    ("both", dict(lengths=jnp.array([1, 2]), mask=jnp.ones((2, T), bool)), ValueError,
     r"either lengths or mask, not both"),
    ("carry not a pair", dict(carry=jnp.zeros((2, H))), ValueError,
     r"carry does not match the cell's carry for batch shape \(2,\): expected shapes "
     r"\[\(2, 4\), \(2, 4\)\].*got \[\(2, 4\)\]"),
    ("carry shape", dict(carry=(jnp.zeros((3, H)), jnp.zeros((3, H)))), ValueError,
     r"carry does not match.*expected shapes \[\(2, 4\), \(2, 4\)\].*got \[\(3, 4\), \(3, 4\)\]"),
    ("probes shape", dict(probes=jnp.zeros((2, T, H + 1))), ValueError,
     r"probes must have shape \(2, 5, 4\), got \(2, 5, 5\)"),
    ("unroll 0", dict(unroll=0), ValueError, r"unroll must be a positive int, got 0"),
    ("unroll float", dict(unroll=1.5), TypeError, r"unroll must be a positive int, got 1.5"),
]


@pytest.mark.parametrize("what, override, error, message", BAD_INPUTS,
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_rejected_with_a_message(lstm_case, what, override, error, message):
    cell, case = lstm_case
    kw = {"xs": case["xs"], **override}
    with pytest.raises(error, match=message):
        rj.rnn(cell, case["params"], **kw)


def test_bad_input_time_major_and_bidirectional(lstm_case):
    cell, case = lstm_case
    with pytest.raises(ValueError, match=r"rank >= 2 \(\[T, \*batch, I\]\), got shape \(3,\)"):
        rj.rnn(cell, case["params"], jnp.ones(3), time_major=True)
    with pytest.raises(ValueError, match=r"probes must have shape \(5, 2, 4\), got \(2, 5, 4\)"):
        rj.rnn(cell, case["params"], jnp.moveaxis(case["xs"], 1, 0), time_major=True,
               probes=jnp.zeros((2, T, H)))
    params = {"fwd": case["params"], "bwd": case["params"]}
    with pytest.raises(ValueError, match=r"merge='max' is not supported; expected one of "
                                         r"\('concat', 'sum', 'mean'\)"):
        rj.bidirectional(cell, cell, params, case["xs"], merge="max")
    with pytest.raises(ValueError, match=r"merge='max' is not supported"):
        rj.merge_directions(case["xs"], case["xs"], "max")
    with pytest.raises(ValueError, match=r"params must be a dict with keys 'fwd' and 'bwd', "
                                         r"got \['b', 'f'\]"):
        rj.bidirectional(cell, cell, {"f": case["params"], "b": case["params"]}, case["xs"])


def test_float64_probes_on_a_float32_run():
    # Under x64 plain zeros are float64: the probes take the carry's dtype, the gradient
    # comes back in theirs, and it equals the float32 probes' gradient.
    cell = rj.Elman(4)
    params = cell.init(jax.random.key(0), 3)
    xs = jax.random.normal(jax.random.key(1), (2, 5, 3), jnp.float32)

    def grad(probes):
        return jax.grad(lambda pr: jnp.sum(rj.rnn(cell, params, xs, probes=pr)[0] ** 2))(probes)

    want = grad(jnp.zeros((2, 5, 4), jnp.float32))
    with jax.enable_x64(True):
        probes = jnp.zeros((2, 5, 4))
        assert probes.dtype == jnp.float64
        got = grad(probes)
        assert got.dtype == jnp.float64
        hs, _ = rj.rnn(cell, params, xs, probes=probes)
        assert hs.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
