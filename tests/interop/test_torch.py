"""rnn_jax.interop.torch against live PyTorch: weights, outputs, final states and gradients.

Each case builds a torch module with its default initialisation, converts it with
``from_torch`` and runs ``rj.stack`` on the same batch (packed with unsorted lengths where the
case says so), from the same initial state (``states_from_torch``). The final states go back
with ``states_to_torch``; rnn_jax's gradients go back to torch's names with ``to_torch``
(a linear map, so it maps gradients too).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj

torch = pytest.importorskip("torch")
from rnn_jax.interop import torch as rj_torch  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

I, H, B, T = 3, 4, 3, 6
LENGTHS = (4, 6, 1)  # unsorted, one full, one of length 1
MODULES = {"rnn_tanh": (torch.nn.RNN, {"nonlinearity": "tanh"}),
           "rnn_relu": (torch.nn.RNN, {"nonlinearity": "relu"}),
           "lstm": (torch.nn.LSTM, {}), "gru": (torch.nn.GRU, {})}
# name -> (num_layers, bidirectional, packed lengths or None, batch_first, bias)
CONFIGS = {"deep_bi_packed": (2, True, LENGTHS, True, True),
           "deep_time_major": (2, False, None, False, True),
           "bi_packed": (1, True, LENGTHS, True, True),
           "bi_packed_no_bias": (1, True, LENGTHS, True, False)}
TOL32 = dict(rtol=2e-5, atol=2e-6)
TOL64 = dict(rtol=1e-11, atol=1e-12)


def _module(kind, num_layers, bidirectional, batch_first, bias, seed, dtype=torch.float32):
    cls, kw = MODULES[kind]
    torch.manual_seed(seed)
    m = cls(I, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
            bias=bias, **kw)
    if bias:  # torch's default biases are small and random; make the GRU's b_hn matter more
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name.startswith("bias"):
                    p.add_(0.3 * torch.randn_like(p))
    return m.to(dtype)


def _torch_run(m, x, state, lengths):
    """Outputs (zero on padded steps) and final state of ``m``; x in the module's layout."""
    if lengths is None:
        return m(x, state)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths),
                                                     batch_first=m.batch_first,
                                                     enforce_sorted=False)
    out, final = m(packed, state)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=m.batch_first,
                                                    total_length=T)
    return out, final


def _case(kind, config, seed, dtype=torch.float32):
    num_layers, bi, lengths, batch_first, bias = CONFIGS[config]
    m = _module(kind, num_layers, bi, batch_first, bias, seed, dtype)
    d = 2 if bi else 1
    g = torch.Generator().manual_seed(seed + 1)
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(shape, generator=g, dtype=dtype)
    h0 = torch.randn(num_layers * d, B, H, generator=g, dtype=dtype)
    state = (h0, torch.randn(num_layers * d, B, H, generator=g, dtype=dtype)) \
        if kind == "lstm" else h0
    r_out = torch.randn((*shape[:2], d * H), generator=g, dtype=dtype)
    r_state = [torch.randn(num_layers * d, B, H, generator=g, dtype=dtype) for _ in range(2)]
    return m, x, state, r_out, r_state, lengths


def _loss_torch(m, x, state, r_out, r_state, lengths):
    out, final = _torch_run(m, x, state, lengths)
    finals = final if isinstance(final, tuple) else (final,)
    loss = (out * r_out).sum() + sum((f * r).sum() for f, r in zip(finals, r_state, strict=False))
    names = [n for n, _ in m.named_parameters()]
    grads = torch.autograd.grad(loss, list(m.parameters()))
    return out, final, dict(zip(names, grads, strict=True))


def _np(t):
    return t.detach().numpy()


def _check(kind, config, seed, dtype, tol):
    m, x, state, r_out, r_state, lengths = _case(kind, config, seed, dtype)
    cells, params = rj_torch.from_torch(m)
    want_dtype = np.float64 if dtype == torch.float64 else np.float32
    assert all(p.dtype == want_dtype for p in jax.tree.leaves(params))
    assert params_layout(params) == params_layout(
        rj.init_stack(jax.random.key(0), cells, I, bidirectional=m.bidirectional))
    out_t, final_t, grads_t = _loss_torch(m, x, state, r_out, r_state, lengths)

    carries0 = rj_torch.states_from_torch(state, bidirectional=m.bidirectional)
    xs, r_o = jnp.asarray(_np(x)), jnp.asarray(_np(r_out))
    r_s = [jnp.asarray(_np(r)) for r in r_state]
    lens = None if lengths is None else jnp.asarray(lengths)

    def loss(p):
        hs, carries = rj.stack(cells, p, xs, carries0, lengths=lens,
                               bidirectional=m.bidirectional, time_major=not m.batch_first)
        flat = jax.tree.leaves(carries)  # per layer and direction: h (and c)
        per = 2 if kind == "lstm" else 1
        finals = [jnp.stack(flat[i::per]) for i in range(per)]
        return jnp.sum(hs * r_o) + sum(jnp.sum(f * r) for f, r in zip(finals, r_s,
                                                                      strict=False)), (hs, carries)

    (_, (hs, carries)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    diffs = {"outputs": np.abs(hs - _np(out_t)).max()}
    np.testing.assert_allclose(hs, _np(out_t), **tol)
    final = rj_torch.states_to_torch(carries, bidirectional=m.bidirectional)
    pairs = zip(final, final_t, strict=True) if kind == "lstm" else [(final, final_t)]
    for name, (a, b) in zip(("h_n", "c_n"), pairs, strict=False):
        assert a.dtype == dtype
        np.testing.assert_allclose(_np(a), _np(b), **tol, err_msg=name)
        diffs[name] = np.abs(_np(a) - _np(b)).max()

    g = rj_torch.to_torch(cells, grads, bidirectional=m.bidirectional)  # db is never zero
    for name, gt in grads_t.items():
        got = _np(g[name])
        if name.startswith("bias_hh"):  # torch trains both copies of a merged bias
            got = _np(g[name.replace("bias_hh", "bias_ih")]).copy()
            if kind == "gru":
                got[2 * H:] = _np(g[name])[2 * H:]
        np.testing.assert_allclose(got, _np(gt), **tol, err_msg=f"grad {name}")
        diffs["grads"] = max(diffs.get("grads", 0.0), np.abs(got - _np(gt)).max())
    return diffs


def params_layout(params):
    return jax.tree.map(jnp.shape, params)


# relu differs from tanh in one name only: one configuration of it is enough
FLOAT32_CASES = [(k, c) for k in ("rnn_tanh", "lstm", "gru")
                 for c in ("deep_bi_packed", "deep_time_major", "bi_packed_no_bias")]
FLOAT32_CASES += [("rnn_relu", "deep_bi_packed")]


@pytest.mark.parametrize(("kind", "config"), FLOAT32_CASES)
def test_from_torch_matches_torch_float32(kind, config):
    _check(kind, config, seed=sorted(MODULES).index(kind), dtype=torch.float32, tol=TOL32)


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_from_torch_matches_torch_float64(kind):
    with jax.enable_x64(True):
        _check(kind, "bi_packed", seed=10, dtype=torch.float64, tol=TOL64)


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_round_trips(kind):
    """to_torch(from_torch(m)) loads strictly and gives m's outputs; from(to(p)) == p exactly."""
    m, x, state, *_, lengths = _case(kind, "deep_bi_packed", seed=20)
    cells, params = rj_torch.from_torch(m)
    sd = rj_torch.to_torch(cells, params, bidirectional=True)
    assert list(sd) == list(m.state_dict())
    fresh = _module(kind, 2, True, True, True, seed=99)
    fresh.load_state_dict(sd, strict=True)
    for name, t in m.state_dict().items():  # the weights themselves are copied exactly
        if name.startswith("weight"):
            np.testing.assert_array_equal(_np(sd[name]), _np(t))
    with torch.no_grad():
        a, b = _torch_run(m, x, state, lengths)[0], _torch_run(fresh, x, state, lengths)[0]
    np.testing.assert_allclose(_np(a), _np(b), **TOL32)

    cells2, params2 = rj_torch.from_torch(fresh)
    assert cells2 == cells
    jax.tree.map(np.testing.assert_array_equal, params2, params)

    carries = rj_torch.states_from_torch(state, bidirectional=True)
    back = rj_torch.states_to_torch(carries, bidirectional=True)
    for u, v in zip(jax.tree.leaves(back), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(_np(u), _np(v))


def test_init_stack_params_go_to_torch():
    """Fresh rnn_jax params (nonzero b_hn) drive a torch GRU to rnn_jax's outputs, float64."""
    with jax.enable_x64(True):
        cells = [rj.GRU(H, param_dtype=jnp.float64, bias_init="torch")] * 2
        params = rj.init_stack(jax.random.key(1), cells, I)
        m = torch.nn.GRU(I, H, num_layers=2, batch_first=True).double()
        m.load_state_dict(rj_torch.to_torch(cells, params), strict=True)
        xs = jax.random.normal(jax.random.key(2), (B, T, I), jnp.float64)
        hs, carries = rj.stack(cells, params, xs)
        out, h_n = m(torch.from_numpy(np.array(xs)))
        np.testing.assert_allclose(hs, _np(out), **TOL64)
        np.testing.assert_allclose(_np(rj_torch.states_to_torch(carries)), _np(h_n), **TOL64)


def test_unrepresentable_and_bad_input_raise():
    with pytest.raises(ValueError, match="proj_size"):
        rj_torch.from_torch(torch.nn.LSTM(I, H, proj_size=2))
    with pytest.raises(TypeError, match="module"):
        rj_torch.from_torch(torch.nn.Linear(I, H))
    with pytest.raises(ValueError, match="x64"):
        rj_torch.from_torch(torch.nn.GRU(I, H).double())
    cell = rj.Elman(H, activation="identity")
    with pytest.raises(ValueError, match="no torch counterpart"):
        rj_torch.to_torch([cell], rj.init_stack(jax.random.key(0), [cell], I))
    mixed = [rj.LSTM(H), rj.GRU(H)]
    with pytest.raises(ValueError, match="one cell type"):
        rj_torch.to_torch(mixed, rj.init_stack(jax.random.key(0), mixed, I))
    bi = [rj.GRU(H)] * 2
    summed = rj.init_stack(jax.random.key(0), bi, I, bidirectional=True, merge="sum")
    with pytest.raises(ValueError, match="concat"):
        rj_torch.to_torch(bi, summed, bidirectional=True)
    params = rj.init_stack(jax.random.key(0), [rj.GRU(H, bias_init="torch")], I)
    with pytest.raises(ValueError, match="bias=False"):
        rj_torch.to_torch([rj.GRU(H)], params, bias=False)
    with pytest.raises(ValueError, match="'fwd' and 'bwd'"):
        rj_torch.to_torch([rj.GRU(H)], params, bidirectional=True)
    with pytest.raises(ValueError, match="D=2"):
        rj_torch.states_from_torch(torch.zeros(3, B, H), bidirectional=True)
