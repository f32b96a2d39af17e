"""Every method but pallas and cudnn supports jax.jvp, jax.grad, jax.jacfwd and jax.hessian of
its outputs, equal to those of method="scan" (float64, small sizes), for every cell it runs;
pallas is first-order reverse mode only (its gradient equals the scan's; the rest raises).

The outputs are every step's output and the final carry, with lengths (padding) and a random
initial carry; derivatives are taken with respect to all params and xs at once, and with
respect to one leaf at a time (a tangent on the bias alone broke the fused JVP: issue 15).
"""

import functools

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import rnn_jax as rj  # noqa: E402

B, T, I = 2, 3, 2
CELLS = {"elman": rj.Elman(2), "lstm": rj.LSTM(2), "gru": rj.GRU(2), "mingru": rj.MinGRU(2),
         "lru": rj.LRU(2)}
GATED = ("elman", "lstm", "gru")
LENGTHS = np.array([3, 2], np.int32)
# quasi-DEER shares DEER's derivative rule (only the primal solve differs): one cell suffices
CASES = ([(c, m) for c in GATED for m in ("fused", "deer")] + [("gru", "quasi_deer")]
         + [(c, m) for c in ("mingru", "lru") for m in ("deer", "scan_parallel")])


def outputs(cell_name, method, params, xs):
    cell = CELLS[cell_name]
    carry = jax.tree.map(lambda c: 0.3 + 0.1 * c, cell.initial_carry((B,), xs.dtype))
    if method == "scan_parallel":
        hs, final = cell.scan_parallel(params, xs, carry, lengths=jnp.asarray(LENGTHS))
    else:
        hs, final = rj.rnn(cell, params, xs, carry, lengths=jnp.asarray(LENGTHS), method=method)
    return jnp.concatenate([hs.ravel(), *(c.ravel() for c in jax.tree.leaves(final))])


@functools.partial(jax.jit, static_argnums=(0, 1, 4))
def derivatives(cell_name, method, theta, xs, unravel, v_theta, v_xs):
    """jvp, grad, jacfwd and hessian of the outputs (and of a scalar loss of them)."""
    f = lambda th, x: outputs(cell_name, method, unravel(th), x)  # noqa: E731
    loss = lambda th, x: jnp.sum(jnp.sin(f(th, x)))  # noqa: E731
    return {"jvp": jax.jvp(f, (theta, xs), (v_theta, v_xs))[1],
            "grad": jax.grad(loss, argnums=(0, 1))(theta, xs),
            "jacfwd": jax.jacfwd(f, argnums=(0, 1))(theta, xs),
            "hessian": jax.hessian(loss, argnums=(0, 1))(theta, xs)}


def case(cell_name):
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: CELLS[cell_name].init(jax.random.key(0), I))
    params = jax.tree.map(lambda x: jnp.asarray(0.6 * rng.standard_normal(x.shape)), shapes)
    theta, unravel = ravel_pytree(params)
    xs = jnp.asarray(rng.standard_normal((B, T, I)))
    return theta, xs, unravel, jnp.asarray(rng.standard_normal(theta.shape)), jnp.asarray(
        rng.standard_normal(xs.shape))


def assert_close(got, want, rtol=1e-8, atol=1e-10):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


@pytest.mark.parametrize("cell_name, method", CASES, ids=[f"{c}-{m}" for c, m in CASES])
def test_derivatives_of_every_order_equal_the_scan(cell_name, method):
    with jax.enable_x64(True):
        theta, xs, unravel, v_theta, v_xs = case(cell_name)
        assert theta.dtype == jnp.float64
        want = derivatives(cell_name, "scan", theta, xs, unravel, v_theta, v_xs)
        got = derivatives(cell_name, method, theta, xs, unravel, v_theta, v_xs)
        assert np.all(np.isfinite(np.asarray(want["hessian"][0][0])))
        assert float(jnp.max(jnp.abs(want["hessian"][0][0]))) > 1e-3  # not trivially zero
        for name in want:
            assert_close(got[name], want[name])


@pytest.mark.parametrize("cell_name", GATED)
def test_fused_jvp_of_one_leaf_at_a_time(cell_name):
    # a tangent on b alone reached the fused tangent loop as [1, 1, G*H] instead of [T, B, G*H]:
    # "scan got values with different leading axis sizes: 3, 1" (jvp, grad, hessian of b)
    cell = CELLS[cell_name]
    params = cell.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    for leaf in params:
        def loss(v, method, leaf=leaf):
            hs, _ = rj.rnn(cell, {**params, leaf: v}, xs, method=method)
            return jnp.sum(hs ** 2)

        want = jax.jit(jax.hessian(loss), static_argnums=1)(params[leaf], "scan")
        got = jax.jit(jax.hessian(loss), static_argnums=1)(params[leaf], "fused")
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("cell_name", GATED)
def test_pallas_reverse_mode_equals_the_scan(cell_name):
    theta, xs, unravel, _, _ = case(cell_name)  # float32: the kernels compute in float32
    theta, xs = theta.astype(jnp.float32), xs.astype(jnp.float32)

    def grad(method):
        return jax.jit(jax.grad(lambda th: jnp.sum(jnp.sin(
            outputs(cell_name, method, unravel(th), xs)))))(theta)

    np.testing.assert_allclose(np.asarray(grad("pallas")), np.asarray(grad("scan")), rtol=1e-4,
                               atol=1e-5)


# method="pallas" (and "cudnn") is a jax.custom_vjp around hand-written backward kernels, and a
# JAX function has a custom_jvp or a custom_vjp, not both: a JVP rule would make reverse mode
# transpose an XLA scan instead of running the backward kernel. The documented contract (rnn's
# docstring, README): first-order reverse mode only; forward mode and second derivatives raise
# a TypeError, never a wrong number or an error from deep inside JAX.
def pallas_case(cell_name):
    theta, xs, unravel, v_theta, _ = case(cell_name)
    f = lambda th: outputs(cell_name, "pallas", unravel(th), xs.astype(jnp.float32))  # noqa: E731
    return f, theta.astype(jnp.float32), v_theta.astype(jnp.float32)


def test_pallas_forward_mode_raises_naming_custom_vjp():
    f, theta, v_theta = pallas_case("elman")
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(f, (theta,), (v_theta,))
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jacfwd(f)(theta)


@pytest.mark.parametrize("cell_name", GATED)
def test_pallas_second_derivatives_raise_a_clear_error(cell_name):
    f, theta, v_theta = pallas_case(cell_name)
    loss = lambda th: jnp.sum(jnp.sin(f(th)))  # noqa: E731
    hvp = jax.grad(lambda th: jnp.vdot(jax.grad(loss)(th), v_theta))  # reverse over reverse
    first_order = r"method='pallas' supports first-order reverse mode only.*'fused' or 'scan'"
    with pytest.raises(TypeError, match=first_order):
        hvp(theta)
    with pytest.raises(TypeError, match=first_order):
        jax.hessian(loss)(theta)
