"""The fused time loop: same values, gradients and JVPs as the plain scan; path selection."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax.loops import fused  # noqa: E402

I, H, T = 3, 4, 6
CELLS = {
    "elman-tanh": rj.Elman(H),
    "elman-relu": rj.Elman(H, activation="relu"),
    "elman-identity": rj.Elman(H, activation="identity"),
    "lstm": rj.LSTM(H),
    "gru": rj.GRU(H),
}


def rand(seed, shape, dtype):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def random_case(cell, batch_shape, seed, dtype):
    """Random params (non-zero biases too), inputs, initial carry and a mask with gaps."""
    shapes = jax.eval_shape(lambda: cell.init(jax.random.key(0), I))
    params = {k: 0.5 * rand((seed, j), v.shape, dtype) for j, (k, v) in
              enumerate(sorted(shapes.items()))}
    xs = rand((seed, 10), (*batch_shape, T, I), dtype)
    carry = jax.tree.map(lambda c: 0.5 * rand((seed, 11), c.shape, dtype),
                         cell.initial_carry(batch_shape, dtype))
    mask = np.random.default_rng((seed, 12)).random((*batch_shape, T)) < 0.7
    return params, xs, carry, jnp.asarray(mask)


def scalar(hs, final):
    """A scalar that depends non-linearly on every output and on the final carry."""
    weights = jnp.arange(1, hs.shape[-1] + 1).reshape((1,) * (hs.ndim - 1) + (-1,))
    return jnp.sum(jnp.sin(hs) * weights) + sum(
        jnp.sum(jnp.cos(c)) for c in jax.tree.leaves(final))


def loss(method, cell, params, xs, carry, mask, reverse):
    return scalar(*rj.rnn(cell, params, xs, carry, mask=mask, reverse=reverse, method=method))


def assert_close(a, b, tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def outputs_gradients_jvp(method, cell, mask, reverse):
    """jit: (outputs, final carry), grads for (params, xs, carry), and a JVP, in one program."""

    def f(params, xs, carry):
        def g(*args):
            return loss(method, cell, *args, mask, reverse)

        args = (params, xs, carry)
        tangent = jax.tree.map(lambda a: 0.3 * jnp.cos(a), args)
        run = rj.rnn(cell, params, xs, carry, mask=mask, reverse=reverse, method=method)
        return run, jax.grad(g, argnums=(0, 1, 2))(*args), jax.jvp(g, args, tangent)[1]

    return jax.jit(f)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_values_gradients_and_jvps_equal_the_scan(name):
    """Outputs, final carry, reverse-mode gradients (params, xs, carry) and forward-mode JVPs,
    masked and reversed, and for the gated cells also unmasked with two batch axes; float64."""
    with jax.enable_x64(True):
        cell = type(CELLS[name])(**{**CELLS[name].__dict__, "param_dtype": jnp.float64})
        configs = [((3,), True, True), ((2, 2), False, False)]
        for k, (batch_shape, masked, reverse) in enumerate(configs[:1 if "elman" in name else 2]):
            params, xs, carry, mask = random_case(cell, batch_shape, k, jnp.float64)
            mask = mask if masked else None
            got, want = (outputs_gradients_jvp(m, cell, mask, reverse)(params, xs, carry)
                         for m in ("fused", "scan"))
            assert_close(got, want, 1e-10)


def test_unbatched_input():
    cell = CELLS["lstm"]
    params, xs, carry, mask = random_case(cell, (), 3, jnp.float32)
    got, want = (rj.rnn(cell, params, xs, carry, mask=mask, method=m) for m in ("fused", "scan"))
    assert_close(got, want, 1e-6)


def test_time_major_and_unroll_give_the_same_results():
    cell = CELLS["lstm"]
    params, xs, carry, mask = random_case(cell, (2,), 3, jnp.float32)
    ref = jax.grad(lambda p: loss("scan", cell, p, xs, carry, mask, True))(params)
    xs_tm = jnp.moveaxis(xs, 1, 0)
    got = jax.grad(lambda p: scalar(*rj.rnn(cell, p, xs_tm, carry, mask=mask, reverse=True,
                                            time_major=True, method="fused")))(params)
    assert_close(got, ref, 1e-5)
    hs = {u: rj.rnn(cell, params, xs, carry, mask=mask, unroll=u, method="fused")[0]
          for u in (1, 3)}
    assert_close(hs[3], hs[1], 1e-6)


def test_numerical_gradients_and_second_order_float64():
    """check_grads (forward and reverse mode: the JVP is hand-written), and Hessian-vector
    products (JAX differentiates the JVP rule) equal to the scan's."""
    with jax.enable_x64(True):
        cell = rj.GRU(2, param_dtype=jnp.float64)
        params, xs, carry, mask = random_case(cell, (2,), 5, jnp.float64)

        def f(params, xs, carry):
            return rj.rnn(cell, params, xs[..., :3, :], carry, mask=mask[..., :3],
                          method="fused")

        check_grads(jax.jit(f), (params, xs, carry), order=1, modes=("fwd", "rev"))

        def hvp(method):
            grad = jax.grad(lambda p: loss(method, cell, p, xs, carry, mask, False))
            return jax.jit(lambda p, v: jax.jvp(grad, (p,), (v,))[1])

        v = jax.tree.map(jnp.sin, params)
        assert_close(hvp("fused")(params, v), hvp("scan")(params, v), 1e-9)


def test_vmap_over_parameters_equals_separate_runs():
    """vmap of the outputs and of the gradients (e.g. seeds of a training run, vmapped)."""
    cell = CELLS["lstm"]
    cases = [random_case(cell, (2,), s, jnp.float32) for s in (1, 2)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[c[0] for c in cases])
    _, xs, carry, mask = cases[0]

    def grad(p, method):
        return jax.grad(lambda p: loss(method, cell, p, xs, carry, mask, False))(p)

    batched = jax.vmap(lambda p: (rj.rnn(cell, p, xs, method="fused")[0], grad(p, "fused")))(
        stacked)
    for k, case in enumerate(cases):
        want = (rj.rnn(cell, case[0], xs, method="scan")[0], grad(case[0], "scan"))
        assert_close(jax.tree.map(lambda a, k=k: a[k], batched), want, 1e-5)


def test_bidirectional_passes_the_method_through():
    cell = CELLS["gru"]
    params = {"fwd": random_case(cell, (2,), 1, jnp.float32)[0],
              "bwd": random_case(cell, (2,), 2, jnp.float32)[0]}
    _, xs, _, mask = random_case(cell, (2,), 3, jnp.float32)
    a = rj.bidirectional(cell, cell, params, xs, mask=mask, method="fused")
    b = rj.bidirectional(cell, cell, params, xs, mask=mask, method="scan")
    assert_close(a, b, 1e-5)


def test_auto_takes_the_fused_path_only_where_it_applies():
    lstm = rj.LSTM(H)
    params = lstm.init(jax.random.key(0), I)
    assert fused.select("auto", lstm, params) == "fused"
    assert fused.select("scan", lstm, params) == "scan"
    for options in ({"probes": jnp.zeros((T, H))}, {"return_carries": True}):
        assert fused.select("auto", lstm, params, **options) == "scan"
        with pytest.raises(ValueError, match="method='fused' does not support"):
            fused.select("fused", lstm, params, **options)
    bf16 = rj.LSTM(H, compute_dtype=jnp.bfloat16)
    assert fused.select("auto", bf16, params) == "scan"

    class MyLSTM(rj.LSTM):  # a subclass may change the update: never assumed to be an LSTM
        pass

    assert fused.select("auto", MyLSTM(H), params) == "scan"
    with pytest.raises(ValueError, match="cell type MyLSTM"):
        fused.select("fused", MyLSTM(H), params)


def test_options_the_fused_path_lacks_still_work_under_auto():
    cell = CELLS["lstm"]
    params, xs, carry, _ = random_case(cell, (2,), 4, jnp.float32)
    hs, final, carries = rj.rnn(cell, params, xs, carry, return_carries=True)
    ref_hs, ref_final = rj.rnn(cell, params, xs, carry, method="fused")
    assert_close((hs, final), (ref_hs, ref_final), 1e-5)
    assert carries[0].shape == (2, T, H)


def test_unknown_method_is_rejected():
    cell = CELLS["lstm"]
    params, xs, _, _ = random_case(cell, (2,), 4, jnp.float32)
    with pytest.raises(ValueError, match=r"method='bogus' is not supported; expected one of"):
        rj.rnn(cell, params, xs, method="bogus")


@pytest.mark.parametrize("name", ["elman-identity", "gru"])
def test_gradient_for_the_initial_carry_alone(name):
    """Only the carry perturbed (no input, W or b tangent): the hand-written JVP still applies."""
    cell = CELLS[name]
    params, xs, carry, mask = random_case(cell, (2,), 8, jnp.float32)
    grads = [jax.grad(lambda c, m=m: loss(m, cell, params, xs, c, mask, False))(carry)
             for m in ("fused", "scan")]
    assert_close(grads[0], grads[1], 1e-5)
