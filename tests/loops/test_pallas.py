"""Fused Pallas kernels (interpret mode on the CPU) against the scan runner: outputs and grads."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj
from rnn_jax.loops import gpu_fit, gpu_speed_table, pallas_kernels
from rnn_jax.loops import pallas as pallas_rnn
from rnn_jax.loops.pallas_launch import Kernel

jax.config.update("jax_numpy_rank_promotion", "raise")

CELLS = {
    "elman_tanh": rj.Elman(16),
    "elman_relu": rj.Elman(16, activation="relu", recurrent_init="identity"),
    "lstm": rj.LSTM(16),
    "gru": rj.GRU(16),
}


def _perturbed_params(cell, input_size):
    params = cell.init(jax.random.key(0), input_size)
    noise = jax.random.split(jax.random.key(9), len(params))
    return {k: v + 0.1 * jax.random.normal(n, v.shape)
            for (k, v), n in zip(sorted(params.items()), noise, strict=True)}


def _fused(cell, reverse, mask, kernel=None):
    def run(params, xs, carry):
        m = None if mask is None else jnp.moveaxis(mask, -1, 0)
        hs, final, carries = pallas_rnn.run(cell, params, jnp.moveaxis(xs, -2, 0), carry, m,
                                            reverse=reverse, kernel=kernel)
        lead = xs.ndim - 2
        return (jnp.moveaxis(hs, 0, -2), final,
                jax.tree.map(lambda c: jnp.moveaxis(c, 0, lead), carries))
    return run


def _loss(outputs):
    hs, final = outputs[:2]
    return jnp.sum(jnp.sin(hs)) + sum(jnp.sum(c ** 2) for c in jax.tree.leaves(final))


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kernel", [Kernel(), Kernel(resident=False), Kernel(prefetch=True)],
                         ids=["resident", "streamed", "prefetch"])
def test_fused_equals_scan_with_mask(name, reverse, kernel):
    """Every kernel kind: U resident on chip, U streamed a gate block at a time, and each
    step's inputs read one step ahead."""
    cell = CELLS[name]
    batch, steps, feats = (2, 5), 7, 3
    params = _perturbed_params(cell, feats)
    xs = jax.random.normal(jax.random.key(1), (*batch, steps, feats))
    mask = jax.random.bernoulli(jax.random.key(2), 0.7, (*batch, steps))
    carry = jax.tree.map(lambda z: jax.random.normal(jax.random.key(3), z.shape),
                         cell.initial_carry(batch))
    scan = lambda p, x, c: rj.rnn(cell, p, x, c, mask=mask, reverse=reverse,  # noqa: E731
                                  return_carries=True)
    fused = _fused(cell, reverse, mask, kernel)
    for want, got in zip(jax.tree.leaves(scan(params, xs, carry)),
                         jax.tree.leaves(fused(params, xs, carry)), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    g_scan = jax.grad(lambda *a: _loss(scan(*a)), argnums=(0, 1, 2))(params, xs, carry)
    g_fused = jax.grad(lambda *a: _loss(fused(*a)), argnums=(0, 1, 2))(params, xs, carry)
    for want, got in zip(jax.tree.leaves(g_scan), jax.tree.leaves(g_fused), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name", ["elman_tanh", "lstm", "gru"])
def test_fused_unbatched_unmasked_and_empty_rows(name):
    """No batch axis, no mask (batch padded to one block), and a zero-length sequence row."""
    cell = CELLS[name]
    params = _perturbed_params(cell, 2)
    xs = jax.random.normal(jax.random.key(4), (6, 2))
    want = rj.rnn(cell, params, xs)
    got = _fused(cell, False, None)(params, xs, cell.initial_carry(()))
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got[:2]), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    # lengths 0 and 3: length 0 keeps the initial carry and emits zeros
    xs2 = jax.random.normal(jax.random.key(5), (2, 6, 2))
    mask = jnp.arange(6)[None, :] < jnp.array([[0], [3]])
    want = rj.rnn(cell, params, xs2, mask=mask)
    got = _fused(cell, False, mask)(params, xs2, cell.initial_carry((2,)))
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got[:2]), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_supported_cells_and_options():
    assert pallas_rnn.supported(rj.LSTM(8))
    assert pallas_rnn.supported(rj.GRU(8, compute_dtype=jnp.bfloat16))
    assert not pallas_rnn.supported(rj.Elman(8), probes=jnp.zeros((3, 8)))
    assert not pallas_rnn.supported(rj.GRU(8, compute_dtype=jnp.float16))


def _compare(cell, params, xs, mask, reverse, rtol, atol, dtype=None):
    """Outputs, final carries and gradients of the kernels against the scan path."""
    def loss(p, x, c, method):
        out = rj.rnn(cell, p, x, c, mask=mask, reverse=reverse, method=method)
        return _loss(out), out

    carry = cell.initial_carry(xs.shape[:-2], xs.dtype)
    grads = {m: jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, carry, m)
             for m in ("scan", "pallas")}
    (g_want, out_want), (g_got, out_got) = grads["scan"], grads["pallas"]
    for want, got in zip(jax.tree.leaves((out_want, g_want)), jax.tree.leaves((out_got, g_got)),
                         strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    if dtype is not None:
        assert all(x.dtype == dtype for x in jax.tree.leaves(out_got))


@pytest.mark.parametrize("name", sorted(CELLS))
def test_hidden_sizes_off_a_power_of_two_run_zero_padded(name):
    """H = 20 runs at 32 inside the kernels; the padded units never reach the real ones."""
    cell = type(CELLS[name])(20, **({"activation": "relu"} if name == "elman_relu" else {}))
    params = _perturbed_params(cell, 3)
    xs = jax.random.normal(jax.random.key(1), (3, 6, 3))
    mask = jnp.arange(6)[None, :] < jnp.array([[6], [2], [4]])
    _compare(cell, params, xs, mask, True, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_bf16_compute_stores_u_in_bf16_and_matches_the_scan(name):
    """bf16 products, float32 state: the same rounding as the cell's own bf16 matmuls."""
    cell = dataclasses.replace(CELLS[name], compute_dtype=jnp.bfloat16)
    params = _perturbed_params(cell, 3)
    xs = jax.random.normal(jax.random.key(1), (2, 5, 3))
    mask = jax.random.bernoulli(jax.random.key(2), 0.7, (2, 5))
    _compare(cell, params, xs, mask, False, rtol=3e-2, atol=3e-2, dtype=jnp.float32)


@pytest.mark.parametrize("name", ["elman_tanh", "lstm", "gru"])
def test_float64_stays_float64(name):
    """Under x64 the kernels keep float64 (interpret mode: exact float64 products)."""
    cell = CELLS[name]
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: p.astype(jnp.float64), _perturbed_params(cell, 3))
        xs = jax.random.normal(jax.random.key(1), (2, 5, 3), jnp.float64)
        mask = jax.random.bernoulli(jax.random.key(2), 0.7, (2, 5))
        _compare(cell, params, xs, mask, True, rtol=1e-12, atol=1e-12, dtype=jnp.float64)


def test_matmul_precision_setting_is_accepted_and_bad_names_raise():
    cell = CELLS["gru"]
    params = _perturbed_params(cell, 3)
    xs = jax.random.normal(jax.random.key(1), (2, 4, 3))
    want = rj.rnn(cell, params, xs, method="scan")
    with jax.default_matmul_precision("highest"):
        got = rj.rnn(cell, params, xs, method="pallas")
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="precision='bogus'"):
        pallas_rnn.run(cell, params, jnp.moveaxis(xs, 1, 0), cell.initial_carry((2,)), None,
                       precision="bogus")


def test_streamed_kernels_in_float64_and_bf16_match_the_scan():
    """Streaming U changes where U is read from, not the arithmetic: float64 stays exact."""
    cell = rj.LSTM(20)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: p.astype(jnp.float64), _perturbed_params(cell, 3))
        xs = jax.random.normal(jax.random.key(1), (3, 6, 3), jnp.float64)
        mask = jnp.arange(6)[None, :] < jnp.array([[6], [0], [4]])
        carry = cell.initial_carry((3,), jnp.float64)
        run = _fused(cell, True, mask, Kernel(resident=False, num_warps=8))
        want = rj.rnn(cell, params, xs, carry, mask=mask, reverse=True, return_carries=True)
        for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(run(params, xs, carry)),
                        strict=True):
            assert g.dtype == jnp.float64
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    cell = dataclasses.replace(rj.GRU(16), compute_dtype=jnp.bfloat16)
    params = _perturbed_params(cell, 3)
    xs = jax.random.normal(jax.random.key(1), (2, 5, 3))
    carry = cell.initial_carry((2,))
    got = _fused(cell, False, None, Kernel(resident=False))(params, xs, carry)
    resident = _fused(cell, False, None, Kernel())(params, xs, carry)
    for r, g in zip(jax.tree.leaves(resident), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(g, r)  # same products, same rounding


@pytest.mark.parametrize("name", sorted(CELLS))
def test_prefetch_changes_when_inputs_are_read_not_the_values(name):
    """Reading step t+1's inputs during step t gives bitwise the same states and gradients,
    forward and reverse, with a mask (both the forward and the backward kernels)."""
    cell = CELLS[name]
    params = _perturbed_params(cell, 3)
    xs = jax.random.normal(jax.random.key(1), (3, 6, 3))
    mask = jax.random.bernoulli(jax.random.key(2), 0.6, (3, 6))
    carry = jax.tree.map(lambda z: jax.random.normal(jax.random.key(3), z.shape),
                         cell.initial_carry((3,)))
    for reverse in (False, True):
        runs = [_fused(cell, reverse, mask, Kernel(resident=resident, prefetch=prefetch))
                for resident, prefetch in ((True, False), (True, True), (False, True))]
        values = [jax.value_and_grad(lambda *a, run=run: _loss(run(*a)), argnums=(0, 1, 2))(
            params, xs, carry) for run in runs]
        outputs = [run(params, xs, carry) for run in runs]
        for other in range(1, len(runs)):
            for want, got in zip(jax.tree.leaves((outputs[0], values[0])),
                                 jax.tree.leaves((outputs[other], values[other])), strict=True):
                np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["elman_tanh", "lstm", "gru"])
def test_tiles_change_how_products_are_summed_not_the_result(name):
    """H = 40 runs at 64 units: streamed in 16- or 32-unit tiles (4 or 2 column blocks, 16 or 4
    tiles of each gate block), with and without prefetch, the states and gradients equal the
    scan path's in float64 (a reverse, masked run); one tile as wide as H is the untiled
    streamed kernel, bitwise. (H = 100 in 16-unit tiles, 8 blocks: below.)"""
    cell = {"elman_tanh": rj.Elman(40), "lstm": rj.LSTM(40), "gru": rj.GRU(40)}[name]
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: p.astype(jnp.float64), _perturbed_params(cell, 3))
        xs = jax.random.normal(jax.random.key(1), (2, 4, 3), jnp.float64)
        mask = jnp.array([[True, False, True, True], [True, True, True, False]])
        carry = jax.tree.map(lambda z: jax.random.normal(jax.random.key(3), z.shape, z.dtype),
                             cell.initial_carry((2,), jnp.float64))
        scan = lambda p, x, c: rj.rnn(cell, p, x, c, mask=mask, reverse=True,  # noqa: E731
                                      return_carries=True)

        def results(kernel):
            run = scan if kernel is None else _fused(cell, True, mask, kernel)
            return run(params, xs, carry), jax.grad(lambda *a: _loss(run(*a)), argnums=(0, 1, 2))(
                params, xs, carry)

        want = results(None)
        for kernel in (Kernel(tile=16, resident=False, prefetch=True),
                       Kernel(tile=32, resident=False)):
            for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(results(kernel)), strict=True):
                assert g.dtype == jnp.float64
                np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-12)
        untiled, whole = results(Kernel(resident=False)), results(Kernel(tile=64, resident=False))
        for w, g in zip(jax.tree.leaves(untiled), jax.tree.leaves(whole), strict=True):
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize(("name", "hidden", "tile"),
                         [("elman_tanh", 100, 16), ("lstm", 300, 128), ("gru", 300, 128)])
def test_wide_states_in_tiles_equal_the_scan(name, hidden, tile):
    """Elman H = 100 in 16-unit tiles (8 column blocks of its 128 units); the LSTM and the GRU
    at H = 300 (512 units) in 128-unit tiles, where their backward adds each block's products
    to the sums as the block is made (``_Layout.accumulates``): a reverse, masked float64 run
    equals the scan path, gradients included."""
    cell = {"elman_tanh": rj.Elman, "lstm": rj.LSTM, "gru": rj.GRU}[name](hidden)
    if name != "elman_tanh":
        assert pallas_kernels._Layout(512, tile).accumulates(cell.num_gates, jnp.float64)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: p.astype(jnp.float64), _perturbed_params(cell, 3))
        xs = jax.random.normal(jax.random.key(4), (2, 3, 3), jnp.float64)
        mask = jnp.array([[True, True, False], [False, True, True]])
        carry = jax.tree.map(lambda z: jax.random.normal(jax.random.key(5), z.shape, z.dtype),
                             cell.initial_carry((2,), jnp.float64))
        scan = lambda p, x, c: rj.rnn(cell, p, x, c, mask=mask, reverse=True,  # noqa: E731
                                      return_carries=True)
        tiled = _fused(cell, True, mask, Kernel(tile=tile, resident=False))
        want, got = ((run(params, xs, carry), jax.grad(lambda *a, run=run: _loss(run(*a)),
                                                       argnums=(0, 1, 2))(params, xs, carry))
                     for run in (scan, tiled))
        for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
            assert g.dtype == jnp.float64
            np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-12)


def test_kernel_config_is_checked():
    with pytest.raises(TypeError, match="resident must be a bool"):
        Kernel(resident="yes")
    with pytest.raises(TypeError, match="prefetch must be a bool"):
        Kernel(prefetch=1)
    with pytest.raises(ValueError, match="block_b must be a power of two"):
        Kernel(block_b=24)
    for bad in (24, 8, True, 16.0):
        with pytest.raises(ValueError, match=f"tile must be None or a power of two.*{bad!r}"):
            Kernel(tile=bad, resident=False)
    with pytest.raises(ValueError, match="tile=32 needs a streamed kernel"):
        Kernel(tile=32)


def test_method_pallas_streams_u_where_resident_u_does_not_fit():
    """LSTM H = 128 in float32: U (256 KiB) cannot stay in shared memory, one gate block can.

    auto keeps to resident kernels (and falls back to the fused scan here) until a GPU has
    timed the streamed ones; method='pallas' runs the streamed kernel."""
    cell = rj.LSTM(128)
    assert gpu_fit.kernel_for(cell, jnp.float32) is None
    streamed = gpu_fit.pallas_kernel_for(cell, jnp.float32)
    assert streamed is not None and not streamed.resident
    assert gpu_fit.pallas_kernel_for(cell, jnp.float32, resident=True) is None
    assert gpu_fit.key_of(cell, jnp.float32) == ("lstm", 128, "float32")
    assert gpu_fit.key_of(rj.get_cell("mgu", 8), jnp.float32) is None
    # where a resident kernel fits, it comes first for both auto and method='pallas'
    small = rj.LSTM(64)
    assert gpu_fit.kernel_for(small, jnp.float32) == gpu_fit.pallas_kernel_for(
        small, jnp.float32)
    assert gpu_fit.kernel_for(small, jnp.float32).resident
    assert gpu_speed_table.CHOICES == {}  # no GPU has timed the kernel configurations yet


def test_method_pallas_streams_u_in_tiles_where_no_gate_block_fits():
    """H = 256 in float32: one gate block alone (262,144 bytes) passes sm_90's shared memory;
    the Elman, LSTM and GRU kernels stream U in tiles (``auto`` does not take them untimed),
    and so does the GRU at H = 512 and in float64 at H = 128; at H = 512 the LSTM's still
    spill and none runs. Elman tanh at H = 512 fits in 128-unit tiles (its forward summed from
    zero: ``_Layout.product``)."""
    for cell, dtype in ((rj.Elman(256), jnp.float32), (rj.LSTM(256), jnp.float32),
                        (rj.GRU(256), jnp.float32), (rj.GRU(512), jnp.float32),
                        (rj.GRU(128), jnp.float64), (rj.Elman(512), jnp.float32)):
        tiled = gpu_fit.pallas_kernel_for(cell, dtype)
        assert tiled is not None and not tiled.resident and tiled.tile < cell.hidden_size
        assert gpu_fit.kernel_for(cell, dtype) is None  # auto: not timed yet
    assert gpu_fit.pallas_kernel_for(rj.Elman(512), jnp.float32).tile == 128
    assert gpu_fit.pallas_kernel_for(rj.LSTM(512), jnp.float32) is None


def test_auto_follows_the_measured_choice_where_its_kernel_still_fits():
    """A key a GPU timed: its fastest configuration, or no kernel where none beat the scans;
    a choice the fit table no longer admits, and an untimed key: resident where it fits."""
    lstm, elman = rj.LSTM(128), rj.Elman(64)
    key, small = gpu_fit.key_of(lstm, jnp.float32), gpu_fit.key_of(elman, jnp.float32)
    streamed = gpu_fit.pallas_kernel_for(lstm, jnp.float32, resident=False)
    prefetch = gpu_fit.pallas_kernel_for(elman, jnp.float32, prefetch=True)
    assert prefetch.prefetch and prefetch.resident
    choices = {key: {"kernel": dataclasses.asdict(streamed)},
               small: {"kernel": dataclasses.asdict(prefetch)}}
    assert gpu_fit.kernel_for(lstm, jnp.float32, choices=choices) == streamed
    assert gpu_fit.kernel_for(elman, jnp.float32, choices=choices) == prefetch
    assert gpu_fit.kernel_for(elman, jnp.float32, choices={small: {"kernel": None}}) is None
    # a resident LSTM H=128 kernel does not fit: the stale choice is dropped, none is left
    stale = {key: {"kernel": dataclasses.asdict(Kernel())}}
    assert gpu_fit.kernel_for(lstm, jnp.float32, choices=stale) is None
    untimed = gpu_fit.kernel_for(elman, jnp.float32, choices={key: {"kernel": None}})
    assert untimed == gpu_fit.pallas_kernel_for(elman, jnp.float32, resident=True)
    assert not untimed.prefetch
