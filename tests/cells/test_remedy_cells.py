"""The remedy cells (expRNN, IndRNN, AntisymmetricRNN, coRNN, Lipschitz RNN, GRUv1, MGU, peephole
and layer-normalised LSTMs) under the runner's whole contract, against a Python loop over
``cell.step``; float64 gradients; registry, model, stack, diagnostics and time-loop selection."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax import diagnostics  # noqa: E402
from rnn_jax.loops import fused, pallas  # noqa: E402
from rnn_jax.rnn import _select  # noqa: E402

I, T, H = 3, 6, 4
CELLS = {
    "exprnn": rj.ExpRNN(3, skew_init="henaff"),  # odd H: one unit outside the 2x2 blocks
    "indrnn": rj.IndRNN(H, memory=T, min_gain=0.5),
    "antisymmetric": rj.AntisymmetricRNN(H, eps=0.5, gamma=0.1),
    "antisymmetric-gated": rj.AntisymmetricRNN(H, eps=0.5, gamma=0.1, gated=True),
    "cornn": rj.CoRNN(H, dt=0.3),
    "cornn-implicit": rj.CoRNN(H, dt=0.3, implicit_damping=True),
    "lipschitz": rj.LipschitzRNN(H, eps=0.5, init_std=4.0),
    "gru_v1": rj.GRUv1(H),
    "mgu": rj.MGU(H),
    "peephole_lstm": rj.PeepholeLSTM(H),
    "ln_lstm": rj.LNLSTM(H),
}
NAMES = {"exprnn", "indrnn", "antisymmetric", "cornn", "lipschitz", "mgu", "gru_v1",
         "peephole_lstm", "ln_lstm"}


def rand_like(tree, seed, scale=0.5, dtype=np.float32):
    """Every leaf of ``tree`` replaced by scale * N(0, 1) noise of its shape (NumPy, no compile)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(scale * rng.standard_normal(np.shape(x)), dtype),
                        tree)


def case(cell, batch_shape, seed, dtype=np.float32):
    """Params perturbed off their init (so peepholes, gains and biases all matter), inputs,
    a random carry, a mask with padding everywhere and probes."""
    params = cell.init(jax.random.key(seed), I)
    params = jax.tree.map(lambda p, n: (p + n).astype(dtype), params, rand_like(params, seed, 0.3))
    rng = np.random.default_rng(seed + 1)
    xs = jnp.asarray(rng.standard_normal((*batch_shape, T, I)), dtype)
    carry = rand_like(cell.initial_carry(batch_shape), seed + 2, dtype=dtype)
    mask = rng.random((*batch_shape, T)) < 0.7
    mask.reshape(-1, T)[0] = False  # one sequence with no real step
    probes = jnp.asarray(0.1 * rng.standard_normal((*batch_shape, T, cell.hidden_size)), dtype)
    return params, xs, carry, jnp.asarray(mask), probes


def loop_oracle(cell, params, xs, carry, mask, probes, reverse=False):
    """The runner's contract as a Python loop over ``cell.step``: (hs, final, carries)."""
    nb = xs.ndim - 2
    c, hs, cs = carry, [None] * xs.shape[-2], [None] * xs.shape[-2]
    for t in (reversed(range(xs.shape[-2])) if reverse else range(xs.shape[-2])):
        new, h = cell.step(params, c, xs[..., t, :])
        h = h + probes[..., t, :]
        new = cell.with_hidden(new, h)
        real = mask[..., t, None]
        c = jax.tree.map(lambda n, o, real=real: jnp.where(real, n, o), new, c)
        hs[t], cs[t] = jnp.where(real, h, 0.0), c
    carries = jax.tree.map(lambda *leaves: jnp.stack(leaves, axis=nb), *cs)
    return jnp.stack(hs, axis=-2), c, carries


RUN = jax.jit(rj.rnn, static_argnums=0,
              static_argnames=("reverse", "unroll", "remat", "return_carries"))


def assert_trees_close(got, want, tol=2e-5):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", CELLS)
def test_runner_equals_step_loop_under_the_whole_contract(name):
    """Masks (padding anywhere, a sequence with none), probes, every carry, reverse, unroll,
    remat, jit and eager: all equal the Python loop over ``step``."""
    cell = CELLS[name]
    params, xs, carry, mask, probes = case(cell, (3,), 0)
    for reverse, unroll, remat in ((False, 1, False), (True, 3, True)):
        want = loop_oracle(cell, params, xs, carry, mask, probes, reverse)  # eager, op by op
        kw = dict(mask=mask, probes=probes, reverse=reverse, unroll=unroll, remat=remat,
                  return_carries=True)
        assert_trees_close(RUN(cell, params, xs, carry, **kw), want)
        if not remat:  # eager once per cell: the same program, not jitted as a whole
            assert_trees_close(rj.rnn(cell, params, xs, carry, **kw), want)
    flat = jax.tree.leaves(want[1])
    assert_trees_close(jax.tree.map(lambda c: c[0], want[1]),  # no real step: carry unchanged
                       jax.tree.map(lambda c: c[0], carry))
    assert all(np.all(np.isfinite(x)) for x in flat)


@pytest.mark.parametrize("name", ["exprnn", "cornn", "ln_lstm", "gru_v1"])
def test_bidirectional_and_batch_axes(name):
    """Two batch axes, lengths, both directions: each direction is its own run."""
    cell = CELLS[name]
    p_f, xs, _, _, _ = case(cell, (2, 2), 1)
    p_b = cell.init(jax.random.key(9), I)
    lengths = jnp.array([[T, 0], [3, 1]])
    hs, (c_f, c_b) = rj.bidirectional(cell, cell, {"fwd": p_f, "bwd": p_b}, xs, lengths=lengths)
    h_f, f_f = rj.rnn(cell, p_f, xs, lengths=lengths)
    h_b, f_b = rj.rnn(cell, p_b, xs, lengths=lengths, reverse=True)
    assert_trees_close((hs, c_f, c_b), (jnp.concatenate([h_f, h_b], -1), f_f, f_b))
    # sequence (1, 0) run alone on its real steps
    alone, _ = rj.rnn(cell, p_f, xs[1, 0, :3])
    assert_trees_close(h_f[1, 0, :3], alone)


@pytest.mark.parametrize("name", CELLS)
def test_step_gradients_float64(name):
    cell = CELLS[name]
    with jax.enable_x64(True):
        params, xs, carry, _, _ = case(cell, (2,), 3, dtype=np.float64)
        x = xs[:, 0]
        assert cell.step(params, carry, x)[1].dtype == jnp.float64
        check_grads(cell.step, (params, carry, x), order=1, modes=("fwd", "rev"))
    assert jnp.zeros(1).dtype == jnp.float32  # x64 did not leak


@pytest.mark.parametrize("name", ["exprnn", "indrnn", "antisymmetric", "cornn", "lipschitz"])
def test_runner_gradients_float64(name):
    """Through the whole runner (prepare once per sequence, masks, reverse, probes)."""
    cell = CELLS[name]
    with jax.enable_x64(True):
        params, xs, carry, mask, probes = case(cell, (2,), 4, dtype=np.float64)

        def loss(params, xs, carry, probes):
            hs, final = rj.rnn(cell, params, xs, carry, mask=mask[..., :4], probes=probes,
                               reverse=True)
            return jnp.sum(hs * jnp.cos(hs)) + sum(jnp.sum(c) for c in jax.tree.leaves(final))

        check_grads(loss, (params, xs[..., :4, :], carry, probes[..., :4, :]), order=1,
                    modes=("fwd", "rev"))


def test_registry_names_and_exports():
    for name in NAMES:
        cell = rj.get_cell(name.upper(), 5)
        assert cell.hidden_size == 5 and cell == rj.cells.CELLS[name](5)
        assert hash(cell) == hash(rj.cells.CELLS[name](5))
    assert rj.get_cell("indrnn", 3, memory=10).bounds()[1] == pytest.approx(2 ** 0.1)


def test_in_sequence_model_and_stack():
    """Every new cell as one layer of a stack, read at the last real step; the logits equal the
    stack run by hand and the gradients are finite (both directions: see the test above)."""
    cells = tuple(rj.get_cell(name, H) for name in sorted(NAMES))
    model = rj.SequenceModel(cells, output_size=2, readout="last")
    params = model.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (3, T, I))
    lengths = jnp.array([T, 2, 1])
    def loss(p):
        logits = model.apply(p, xs, lengths=lengths)
        return jnp.sum(logits ** 2), logits

    grads, logits = jax.jit(jax.grad(loss, has_aux=True))(params)
    assert logits.shape == (3, 2)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert all(np.abs(g["W"]).max() > 0 for g in grads["layers"])
    # sequence 1 (two real steps) alone, through the stack by hand
    _, finals = rj.stack(cells, params["layers"], xs[1:2, :2])
    want = cells[-1].hidden(finals[-1]) @ params["readout"]["V"] + params["readout"]["c"][None]
    np.testing.assert_allclose(logits[1:2], want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_auto_falls_back_to_the_scan_and_diagnostics_run(name):
    """Neither the fused nor the Pallas loop takes these cells (a subclass of LSTM is not an
    LSTM to them); the spectrum and the adjoints work for every cell."""
    cell = rj.get_cell(name, H)
    params = cell.init(jax.random.key(0), I)
    assert not fused.supported(cell, params) and not pallas.supported(cell)
    assert _select("auto", cell, params, probes=None, return_carries=False, remat=False) == "scan"
    assert fused.select("auto", cell, params) == "scan"
    xs = jax.random.normal(jax.random.key(1), (2, T, I))
    rho = diagnostics.recurrent_spectral_radius(cell, params)
    sigma = diagnostics.recurrent_sigma_max(cell, params)
    assert rho.ndim == 1 and np.all(np.isfinite(rho)) and np.all(sigma >= rho - 1e-5)
    norms = diagnostics.last_step_grad_norms(cell, params, xs, lambda h: jnp.sum(h))
    assert norms.shape == (2, T) and np.all(np.isfinite(norms))
    jac = diagnostics.jacobian_product(cell, params, xs[0], start=1, horizon=3)
    d = sum(x.size for x in jax.tree.leaves(cell.initial_carry(())))
    assert jac.shape == (d, d) and np.all(np.isfinite(jac))


def test_jacobian_product_equals_autodiff_of_the_steps():
    """For expRNN (prepared U) and coRNN (carry (y, z)): the dense product equals jax.jacfwd of
    the composed steps."""
    for cell in (CELLS["exprnn"], CELLS["cornn"]):
        params, xs, _, _, _ = case(cell, (), 5)
        _, unravel = ravel_pytree(cell.initial_carry(()))
        _, _, carries = rj.rnn(cell, params, xs, return_carries=True)
        start = jax.tree.map(lambda c: c[0], carries)

        def steps(v, cell=cell, params=params, xs=xs, unravel=unravel):
            c = unravel(v)
            for t in (1, 2, 3):
                c, _ = cell.step(params, c, xs[t])
            return ravel_pytree(c)[0]

        want = jax.jacfwd(steps)(ravel_pytree(start)[0])
        got = diagnostics.jacobian_product(cell, params, xs, start=1, horizon=3)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bad_hyperparameters_name_the_argument():
    for make, word in ((lambda: rj.ExpRNN(4, skew_init="haar"), "skew_init"),
                       (lambda: rj.IndRNN(4, memory=0), "memory"),
                       (lambda: rj.IndRNN(4, max_gain=0.5), "max_gain"),
                       (lambda: rj.IndRNN(4, min_gain=2.0), "min_gain"),
                       (lambda: rj.IndRNN(4, recurrent_range=(1.0, 0.0)), "recurrent_range"),
                       (lambda: rj.IndRNN(4, activation="gelu"), "activation"),
                       (lambda: rj.AntisymmetricRNN(4, eps=0.0), "eps"),
                       (lambda: rj.CoRNN(4, dt=-1.0), "dt"),
                       (lambda: rj.LipschitzRNN(4, beta=1.5), "beta"),
                       (lambda: rj.ExpRNN(0), "hidden_size"),
                       (lambda: rj.ExpRNN(4, input_init="nope"), "input_init")):
        with pytest.raises(ValueError, match=word):
            make()
    with pytest.raises(ValueError, match="input_size"):
        rj.CoRNN(4).init(jax.random.key(0), 0)
