"""DEER / quasi-DEER: equal to the sequential runner (outputs, final carries, gradients), masks,
reverse, batch axes, non-convergence with and without the sequential fallback, bad input."""

import functools

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax.loops import deer  # noqa: E402

I, H, T = 3, 4, 12
CELLS = {"elman": rj.Elman(H), "gru": rj.GRU(H), "lstm": rj.LSTM(H)}
OPTS = ("reverse", "time_major", "quasi", "tol", "max_iter", "fallback", "return_info")
DEER = jax.jit(deer.deer_rnn, static_argnums=0, static_argnames=OPTS)
RUN = jax.jit(rj.rnn, static_argnums=0, static_argnames=("reverse", "time_major"))


def randomize(tree, seed, scale=0.5):
    """Every leaf replaced by N(0, scale^2) noise (NumPy: no compilation for test data)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype), tree)


def padded_mask(batch_shape, num_steps):
    """Rows cycle through: full, right padding, left padding, interior holes, empty, one step."""
    t = np.arange(num_steps)
    rows = [t >= 0, t < num_steps - 4, t >= 3, (t % 3) != 1, t < 0, t == 5]
    n = int(np.prod(batch_shape, dtype=int))
    return jnp.asarray(np.stack([rows[i % len(rows)] for i in range(n)]).reshape(
        *batch_shape, num_steps))


def case(cell, batch_shape, seed, num_steps=T):
    """(params from cell.init, N(0, 1) inputs, a random initial carry)."""
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.standard_normal((*batch_shape, num_steps, I)), jnp.float32)
    return (cell.init(jax.random.key(seed), I), xs,
            randomize(cell.initial_carry(batch_shape), seed + 1000))


def assert_tree_close(a, b, atol=1e-5, rtol=0.0):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.shape(x) == np.shape(y)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


# -- the linear solver -------------------------------------------------------------------------
@pytest.mark.parametrize("diagonal", [False, True])
def test_solve_linear_equals_the_recurrence_loop(diagonal):
    rng = np.random.default_rng(0)
    a = jnp.asarray(0.6 * rng.standard_normal((9, 3) if diagonal else (9, 3, 3)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((9, 3)), jnp.float32)
    s0 = jnp.asarray(rng.standard_normal(3), jnp.float32)
    s, expected = np.asarray(s0, np.float64), []
    for t in range(9):
        at = np.asarray(a[t], np.float64)
        s = (at * s if diagonal else at @ s) + np.asarray(b[t], np.float64)
        expected.append(s)
    got = jax.jit(deer.solve_linear, static_argnames="diagonal")(a, b, s0, diagonal=diagonal)
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-5, atol=1e-5)


# -- forward: equal to rj.rnn ---------------------------------------------------------------------
@pytest.mark.parametrize("name, reverse, quasi", [
    ("elman", False, False), ("elman", True, True), ("gru", False, True), ("lstm", True, False)])
def test_equals_sequential_runner_with_masks_and_batch_axes(name, reverse, quasi):
    """Two batch axes of padded sequences (full, right, left, interior, empty, one step)."""
    cell = CELLS[name]
    params, xs, c0 = case(cell, (2, 3), 1)
    mask = padded_mask((2, 3), T)
    hs, final, info = DEER(cell, params, xs, c0, mask=mask, reverse=reverse, quasi=quasi,
                           return_info=True)
    hs_ref, final_ref = RUN(cell, params, xs, c0, mask=mask, reverse=reverse)
    assert_tree_close((hs, final), (hs_ref, final_ref))
    assert info["converged"].shape == (2, 3) and bool(info["converged"].all())
    assert not bool(info["fell_back"].any())
    assert int(info["iterations"].max()) <= T + 1  # exact after T steps in exact arithmetic
    np.testing.assert_array_equal(np.asarray(hs)[~np.asarray(mask)], 0.0)


def test_time_major_and_lengths_equal_the_runner():
    cell = CELLS["gru"]
    params, xs, c0 = case(cell, (3,), 2)
    lengths = jnp.array([T, 0, 5])
    xs_tm = jnp.moveaxis(xs, 1, 0)
    got = DEER(cell, params, xs_tm, c0, lengths=lengths, time_major=True, quasi=True)
    hs_ref, final_ref = RUN(cell, params, xs, c0, lengths=lengths)
    assert_tree_close(got, (jnp.moveaxis(hs_ref, 1, 0), final_ref))


def test_zero_length_returns_the_carry():
    cell = CELLS["lstm"]
    params, xs, c0 = case(cell, (2,), 3)
    hs, final = deer.deer_rnn(cell, params, xs[:, :0], c0)
    assert hs.shape == (2, 0, H)
    assert_tree_close(final, c0, atol=0.0)


def test_large_weights_float32():
    """Spectral radius 1.5 (tanh Elman, DEER), 2.5 (GRU, quasi-DEER): still <= 1e-5."""
    for cell, quasi in ((rj.Elman(8, spectral_radius=1.5), False),
                        (rj.GRU(8, spectral_radius=2.5), True)):
        params, xs, _ = case(cell, (2,), 4, num_steps=24)
        hs, final, info = DEER(cell, params, xs, quasi=quasi, return_info=True)
        assert bool(info["converged"].all())
        assert_tree_close((hs, final), RUN(cell, params, xs))


def test_chaotic_weights_float64_without_batch_axes():
    """Spectral radius 3: float32 itself loses ~1e-2 over 40 steps, so compare in float64."""
    cell = rj.Elman(16, spectral_radius=3.0)
    with jax.enable_x64(True):
        params, xs, _ = case(cell, (), 5, num_steps=40)
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        xs = jnp.asarray(xs, jnp.float64)
        hs, final, info = DEER(cell, params, xs, return_info=True)
        assert hs.dtype == jnp.float64 and bool(info["converged"])
        assert_tree_close((hs, final), RUN(cell, params, xs), atol=1e-9)
    assert jnp.zeros(1).dtype == jnp.float32


# -- non-convergence ------------------------------------------------------------------------------
def test_unconverged_reports_it_and_falls_back_to_the_sequential_answer():
    cell = rj.Elman(8, spectral_radius=3.0)
    params, xs, _ = case(cell, (2,), 6, num_steps=20)
    hs_ref, final_ref = RUN(cell, params, xs)
    hs, final, info = DEER(cell, params, xs, max_iter=1, return_info=True)
    assert not bool(info["converged"].any()) and bool(info["fell_back"].all())
    np.testing.assert_array_equal(info["iterations"], 1)
    assert float(info["residual"].min()) > 1e-2
    assert_tree_close((hs, final), (hs_ref, final_ref), atol=1e-6)
    raw, _, info_raw = DEER(cell, params, xs, max_iter=1, fallback=False, return_info=True)
    assert not bool(info_raw["fell_back"].any())
    assert float(jnp.max(jnp.abs(raw - hs_ref))) > 1e-2  # one Newton step is not the answer


# -- gradients: the adjoint rule == BPTT ---------------------------------------------------------
@pytest.mark.parametrize("name, reverse, quasi", [("elman", False, False), ("lstm", True, True)])
def test_gradients_match_autodiff_through_the_sequential_runner(name, reverse, quasi):
    cell = CELLS[name]
    params, xs, c0 = case(cell, (2,), 7)
    params = randomize(params, 8)
    mask = padded_mask((2,), T).at[1].set(padded_mask((4,), T)[3])  # full + interior holes
    a = jnp.asarray(np.random.default_rng(9).standard_normal((2, T, H)), jnp.float32)

    def loss(run, params, xs, c0):
        hs, final = run(cell, params, xs, c0, mask=mask, reverse=reverse)
        return jnp.sum(a * jnp.tanh(hs)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(final))

    run = functools.partial(deer.deer_rnn, quasi=quasi)
    got = jax.jit(jax.grad(functools.partial(loss, run), (0, 1, 2)))(params, xs, c0)
    expected = jax.grad(functools.partial(loss, rj.rnn), (0, 1, 2))(params, xs, c0)
    assert_tree_close(got, expected, atol=1e-5, rtol=1e-4)


def test_gradients_float64_check_grads():
    cell = rj.Elman(2)
    with jax.enable_x64(True):
        params = randomize(cell.init(jax.random.key(10), 2), 10, scale=1.0)
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        xs = jnp.asarray(np.random.default_rng(11).standard_normal((2, 4, 2)))
        c0 = jnp.asarray(np.random.default_rng(12).standard_normal((2, 2)))
        mask = jnp.array([[True, True, False, True], [False, True, True, False]])

        def f(params, xs, c0):
            return deer.deer_rnn(cell, params, xs, c0, mask=mask, reverse=True)

        check_grads(jax.jit(f), (params, xs, c0), order=1, modes=("rev",))
    assert jnp.zeros(1).dtype == jnp.float32


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, err", [
    ({"tol": 0.0}, ValueError), ({"tol": "1e-5"}, ValueError), ({"max_iter": 0}, ValueError),
    ({"max_iter": 2.5}, TypeError), ({"mask": jnp.ones((2, 5), bool)}, ValueError),
    ({"lengths": jnp.array([1, 2]), "mask": jnp.ones((2, T), bool)}, ValueError),
])
def test_bad_input_raises(kw, err):
    cell = CELLS["elman"]
    params, xs, _ = case(cell, (2,), 11)
    with pytest.raises(err):
        deer.deer_rnn(cell, params, xs, **kw)
    with pytest.raises(ValueError, match="input_size"):
        deer.deer_rnn(cell, params, xs[..., :2])


@pytest.mark.parametrize("quasi", [False, True])
def test_iterations_run_at_highest_precision_under_a_default_context(quasi):
    """TF32 products stall a float32 Newton solve (H200: 200 iterations at ~3e-4, every T):
    only the input projection keeps the caller's precision. Checked on the CUDA lowering."""
    import re

    cell = rj.Elman(8)
    params = cell.init(jax.random.key(0), 3)
    xs = jnp.ones((2, 16, 3))
    method = "quasi_deer" if quasi else "deer"

    def loss(p, x):
        return jnp.sum(rj.rnn(cell, p, x, method=method)[0])

    for fn in (loss, jax.grad(loss)):
        with jax.default_matmul_precision("default"):
            text = jax.jit(fn).trace(params, xs).lower(lowering_platforms=("cuda",)).as_text()
        precisions = re.findall(r"stablehlo\.dot_general .*precision = \[(\w+), \w+\]", text)
        solver = [p for p in precisions if p != "DEFAULT"]
        assert solver and set(solver) == {"HIGHEST"}
        assert precisions.count("DEFAULT") <= 2  # x W forward (and its transpose in grad)
