"""rnn_jax against other libraries' cells, with copied weights.

flax.linen (installed with rnn_jax): SimpleCell, LSTMCell / OptimizedLSTMCell and GRUCell, weights
copied both ways, one step and a whole sequence (``nn.RNN``).

PyTorch: nn.RNN / nn.LSTM / nn.GRU (batch_first, 1-2 layers, uni- and bidirectional, packed
variable-length batches). Torch's parameters map into rnn_jax's layout as

    W = weight_ih.T    U = weight_hh.T    b = bias_ih + bias_hh

since torch computes x W_ih^T + b_ih + h W_hh^T + b_hh for every Elman/LSTM gate and for the GRU's
r and z gates. The GRU's candidate is n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn)): b_hn sits
inside the reset product, so it cannot be merged into b; rnn_jax keeps it as ``b_hn`` and the n
slice of b is b_in alone. Gradients map the same way back: dW = dweight_ih.T, dU = dweight_hh.T,
db = dbias_ih (which equals dbias_hh on every merged slice), d b_hn = dbias_hh[n slice].

The torch comparison runs live when torch is importable, and always against the stored golden
numbers in ``golden_reference.json`` (regenerate with ``python tests/make_golden.py``).
"""

import functools
import importlib.util
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj

jax.config.update("jax_numpy_rank_promotion", "raise")

HERE = Path(__file__).parent
GOLDEN = HERE / "golden_reference.json"
TOL = dict(rtol=1e-5, atol=1e-5)
I, H, B, T = 3, 4, 2, 5


@functools.cache
def _golden():
    return json.loads(GOLDEN.read_text())


def _make_golden_module():
    spec = importlib.util.spec_from_file_location("make_golden", HERE / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _key(seed):
    return jax.random.key(seed)


def _inputs(seed, shape):
    return jax.random.normal(_key(seed), shape)


# ------------------------------------------------------------------------------------------
# flax.linen
# ------------------------------------------------------------------------------------------
# Parameter layouts in flax 0.12.8 (flax/linen/recurrent.py), every Dense kernel [in, H]:
#   SimpleCell: i {kernel, bias}, h {kernel}: one bias, h' = act(x K_i + b_i + h K_h).
#   LSTMCell / OptimizedLSTMCell: ii, if, ig, io {kernel}; hi, hf, hg, ho {kernel, bias};
#     carry (c, h) where rnn_jax has (h, c); same gate equations and order i, f, g, o.
#   GRUCell: ir, iz, in {kernel, bias}; hr, hz {kernel}; hn {kernel, bias}:
#     n = tanh(x K_in + b_in + r * (h K_hn + b_hn)), h' = (1 - z) n + z h. This is exactly
#     PyTorch's (and rnn_jax's) formula, b_hn inside the reset product; no rewriting needed.
LSTM_GATES, GRU_GATES = "ifgo", "rzn"


def flax_to_rj(kind, fp):
    """flax.linen cell params -> rnn_jax params."""
    fp = fp["params"]
    if kind == "elman":
        return {"W": fp["i"]["kernel"], "U": fp["h"]["kernel"], "b": fp["i"]["bias"]}
    gates = LSTM_GATES if kind == "lstm" else GRU_GATES

    def cat(prefix, leaf):
        return jnp.concatenate([fp[prefix + g][leaf] for g in gates], -1)

    if kind == "lstm":
        return {"W": cat("i", "kernel"), "U": cat("h", "kernel"), "b": cat("h", "bias")}
    return {"W": cat("i", "kernel"), "U": cat("h", "kernel"), "b": cat("i", "bias"),
            "b_hn": fp["hn"]["bias"]}


def rj_to_flax(kind, p):
    """rnn_jax params -> flax.linen cell params."""
    if kind == "elman":
        return {"params": {"i": {"kernel": p["W"], "bias": p["b"]}, "h": {"kernel": p["U"]}}}
    if kind == "lstm":
        ws, us, bs = (jnp.split(p[k], 4, -1) for k in ("W", "U", "b"))
        out = {}
        for g, w, u, b in zip(LSTM_GATES, ws, us, bs, strict=True):
            out["i" + g] = {"kernel": w}
            out["h" + g] = {"kernel": u, "bias": b}
        return {"params": out}
    ws, us, bs = (jnp.split(p[k], 3, -1) for k in ("W", "U", "b"))
    out = {}
    for g, w, u, b in zip(GRU_GATES, ws, us, bs, strict=True):
        out["i" + g] = {"kernel": w, "bias": b}
        out["h" + g] = {"kernel": u}
    out["hn"]["bias"] = p["b_hn"]
    return {"params": out}


FLAX_CELLS = {
    "elman": (lambda: nn.SimpleCell(H), lambda: rj.Elman(H)),
    "lstm": (lambda: nn.LSTMCell(H), lambda: rj.LSTM(H)),
    "lstm_optimized": (lambda: nn.OptimizedLSTMCell(H), lambda: rj.LSTM(H)),
    "gru": (lambda: nn.GRUCell(H), lambda: rj.GRU(H)),
}


def _kind(name):
    return name.split("_")[0]


def _to_flax_carry(kind, carry):
    return (carry[1], carry[0]) if kind == "lstm" else carry


def _random_carry(cell, seed, batch_shape):
    leaves, tree = jax.tree.flatten(cell.initial_carry(batch_shape))
    keys = jax.random.split(_key(seed), len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves,
                                                                                    strict=True)])


def _flax_params_with_bias(kind, fcell, seed):
    """flax init with nonzero biases (flax initialises them to zero, which would test nothing)."""
    fp = fcell.init(_key(seed), fcell.initialize_carry(_key(0), (B, I)), jnp.zeros((B, I)))
    leaves, tree = jax.tree.flatten_with_path(fp)
    keys = jax.random.split(_key(seed + 1), len(leaves))
    new = [0.3 * jax.random.normal(k, x.shape) if path[-1].key == "bias" else x
           for k, (path, x) in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(jax.tree.structure(fp), new)


@pytest.mark.parametrize("name", sorted(FLAX_CELLS))
def test_flax_cell_step_both_ways(name):
    kind = _kind(name)
    make_flax, make_rj = FLAX_CELLS[name]
    fcell, cell = make_flax(), make_rj()
    x = _inputs(1, (B, I))
    carry = _random_carry(cell, 2, (B,))

    fp = _flax_params_with_bias(kind, fcell, 3)
    p = flax_to_rj(kind, fp)
    assert jax.tree.map(jnp.shape, p) == jax.tree.map(jnp.shape, cell.init(_key(0), I))
    f_carry, f_h = fcell.apply(fp, _to_flax_carry(kind, carry), x)
    r_carry, r_h = cell.step(p, carry, x)
    np.testing.assert_allclose(r_h, f_h, **TOL)
    for a, b in zip(jax.tree.leaves(_to_flax_carry(kind, r_carry)), jax.tree.leaves(f_carry),
                    strict=True):
        np.testing.assert_allclose(a, b, **TOL)

    p = cell.init(_key(4), I)
    p = jax.tree.map(lambda v: v + 0.1, p)  # nonzero biases in every slot
    f_carry, f_h = fcell.apply(rj_to_flax(kind, p), _to_flax_carry(kind, carry), x)
    r_carry, r_h = cell.step(p, carry, x)
    np.testing.assert_allclose(r_h, f_h, **TOL)
    # the mapping is a bijection: there and back again is the identity
    back = flax_to_rj(kind, rj_to_flax(kind, p))
    jax.tree.map(np.testing.assert_array_equal, back, p)


@pytest.mark.parametrize("name", sorted(FLAX_CELLS))
def test_flax_rnn_sequence(name):
    """nn.RNN (and reversed, keep_order) vs rj.rnn, with a nonzero initial carry and lengths."""
    kind = _kind(name)
    make_flax, make_rj = FLAX_CELLS[name]
    fcell, cell = make_flax(), make_rj()
    xs = _inputs(5, (B, T, I))
    carry = _random_carry(cell, 6, (B,))
    p = jax.tree.map(lambda v: v + 0.1, cell.init(_key(7), I))
    fp = {"params": {"cell": rj_to_flax(kind, p)["params"]}}
    lengths = jnp.array([T, 3])
    # flax leaves unspecified values on padded steps; rnn_jax zeroes them
    real = (jnp.arange(T)[None, :] < lengths[:, None])[..., None]
    for reverse in (False, True):
        f_rnn = nn.RNN(fcell, return_carry=True, reverse=reverse, keep_order=True)
        f_carry, f_hs = f_rnn.apply(fp, xs, initial_carry=_to_flax_carry(kind, carry),
                                    seq_lengths=lengths)
        r_hs, r_carry = rj.rnn(cell, p, xs, carry, lengths=lengths, reverse=reverse)
        np.testing.assert_allclose(jnp.where(real, r_hs, 0.0), jnp.where(real, f_hs, 0.0),
                                   **TOL)
        np.testing.assert_array_equal(jnp.where(real, 0.0, r_hs), jnp.zeros_like(r_hs))
        for a, b in zip(jax.tree.leaves(_to_flax_carry(kind, r_carry)),
                        jax.tree.leaves(f_carry), strict=True):
            np.testing.assert_allclose(a, b, **TOL)


# ------------------------------------------------------------------------------------------
# PyTorch
# ------------------------------------------------------------------------------------------
RJ_CELLS = {"elman": rj.Elman, "lstm": rj.LSTM, "gru": rj.GRU}


def _arr(v):
    return jnp.asarray(np.asarray(v, dtype=np.float32))


def _suffixes(case):
    dirs = ("", "_reverse") if case["bidirectional"] else ("",)
    return [[f"_l{layer}{d}" for d in dirs] for layer in range(case["num_layers"])]


def torch_to_rj(cell, tp, suffix):
    """One torch layer/direction (weight_ih, weight_hh, bias_ih, bias_hh) -> rnn_jax params."""
    w_ih, w_hh, b_ih, b_hh = (_arr(tp[n + suffix])
                              for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    p = {"W": w_ih.T, "U": w_hh.T, "b": b_ih + b_hh}
    if cell == "gru":
        p["b"] = jnp.concatenate([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:]])
        p["b_hn"] = b_hh[2 * H:]
    return p


def _layers(case, tree_of):
    """Per layer: one entry (unidirectional) or a {"fwd", "bwd"} / (fwd, bwd) pair."""
    out = []
    for sufs in _suffixes(case):
        entries = [tree_of(s) for s in sufs]
        out.append(entries[0] if len(entries) == 1 else entries)
    return out


def _initial_carries(case):
    h0 = _arr(case["h0"])
    c0 = _arr(case["c0"]) if case["cell"] == "lstm" else None
    d = 2 if case["bidirectional"] else 1

    def one(layer, direction):
        k = layer * d + direction
        return (h0[k], c0[k]) if c0 is not None else h0[k]

    return [tuple(one(layer, j) for j in range(d)) if d == 2 else one(layer, 0)
            for layer in range(case["num_layers"])]


def _final_states(case, finals):
    """rnn_jax's per-layer final carries -> torch's h_n (and c_n): [L * D, B, H]."""
    flat = []
    for f in finals:
        flat.extend(f if case["bidirectional"] else [f])
    if case["cell"] == "lstm":
        return jnp.stack([c[0] for c in flat]), jnp.stack([c[1] for c in flat])
    return jnp.stack(flat), None


def run_rj(case, layer_params, xs, method="auto"):
    """The case's torch configuration in rnn_jax: rnn, bidirectional or stack."""
    cell = RJ_CELLS[case["cell"]](H, **({"activation": case["activation"]}
                                         if case["cell"] == "elman" else {}))
    carries = _initial_carries(case)
    lengths = None if case["lengths"] is None else jnp.asarray(case["lengths"])
    if case["num_layers"] == 1 and not case["bidirectional"]:
        hs, final = rj.rnn(cell, layer_params[0], xs, carries[0], lengths=lengths, method=method)
        finals = [final]
    elif case["num_layers"] == 1:
        pf, pb = layer_params[0]
        hs, final = rj.bidirectional(cell, cell, {"fwd": pf, "bwd": pb}, xs, carries[0],
                                     lengths=lengths, method=method)
        finals = [final]
    else:
        assert method == "auto"
        params = [{"fwd": p[0], "bwd": p[1]} if case["bidirectional"] else p
                  for p in layer_params]
        hs, finals = rj.stack(cell, params, xs, carries, num_layers=case["num_layers"],
                              bidirectional=case["bidirectional"], lengths=lengths)
    return hs, _final_states(case, finals)


def rj_loss(case, layer_params, xs, method="auto"):
    """Torch's scalar loss, in rnn_jax; the outputs and final states come along as aux."""
    hs, (h_n, c_n) = run_rj(case, layer_params, xs, method)
    loss = jnp.sum(hs * _arr(case["r_out"])) + jnp.sum(h_n * _arr(case["r_h"]))
    if c_n is not None:
        loss = loss + jnp.sum(c_n * _arr(case["r_c"]))
    return loss, (hs, h_n, c_n)


def check_against_torch(case, method="auto"):
    """Outputs, final states and weight gradients of rnn_jax equal torch's for one case."""
    cell = case["cell"]
    tp = case["params"]
    layer_params = _layers(case, lambda s: torch_to_rj(cell, tp, s))
    xs = _arr(case["x"])

    # one compiled forward+backward per case: eager scans would dominate the test time
    loss_fn = jax.jit(jax.value_and_grad(lambda lp, x: rj_loss(case, lp, x, method), has_aux=True))
    (_, (hs, h_n, c_n)), grads = loss_fn(layer_params, xs)
    np.testing.assert_allclose(hs, _arr(case["out"]), **TOL)
    np.testing.assert_allclose(h_n, _arr(case["h_n"]), **TOL)
    if cell == "lstm":
        np.testing.assert_allclose(c_n, _arr(case["c_n"]), **TOL)

    tg = case["grads"]
    for layer_grads, sufs in zip(grads, _suffixes(case), strict=True):
        for g, s in zip(layer_grads if case["bidirectional"] else [layer_grads], sufs,
                        strict=True):
            where = f"{cell} layer{s}"
            g_ih, g_hh = _arr(tg["bias_ih" + s]), _arr(tg["bias_hh" + s])
            np.testing.assert_allclose(g["W"], _arr(tg["weight_ih" + s]).T, **TOL, err_msg=where)
            np.testing.assert_allclose(g["U"], _arr(tg["weight_hh" + s]).T, **TOL, err_msg=where)
            np.testing.assert_allclose(g["b"], g_ih, **TOL, err_msg=where)
            merged = slice(0, 2 * H) if cell == "gru" else slice(None)
            np.testing.assert_allclose(g_ih[merged], g_hh[merged], **TOL, err_msg=where)
            if cell == "gru":
                np.testing.assert_allclose(g["b_hn"], g_hh[2 * H:], **TOL, err_msg=where)


GOLDEN_NAMES = sorted(_golden()["cases"])


def test_golden_file_is_small_and_records_torch():
    doc = _golden()
    assert GOLDEN.stat().st_size < 200_000
    assert doc["torch_version"].startswith("2.13.0")
    assert doc["sizes"] == {"batch": B, "steps": T, "input_size": I, "hidden_size": H}
    kinds = {(c["cell"], c["num_layers"], c["bidirectional"]) for c in doc["cases"].values()}
    assert {(c, n, b) for c in RJ_CELLS for n in (1, 2) for b in (False, True)} <= kinds


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_torch_golden(name):
    check_against_torch(_golden()["cases"][name])


@pytest.mark.parametrize("name", ["elman_bi", "lstm_bi", "gru_bi"])
def test_torch_golden_scan_method(name):
    """The plain-scan time loop too (``method="auto"`` above takes rnn_jax.loops.fused's custom JVP
    where it applies): packed, bidirectional, so masks and reverse are both covered."""
    check_against_torch(_golden()["cases"][name], method="scan")


def test_torch_live_regenerates_golden():
    """The stored numbers are what make_golden.py produces with the recorded torch (to float32
    round-off: the inputs exactly, outputs and gradients to a few ulps)."""
    torch = pytest.importorskip("torch")
    if torch.__version__ != _golden()["torch_version"]:
        pytest.skip(f"golden file made with torch {_golden()['torch_version']}, "
                    f"have {torch.__version__}")
    make_golden = _make_golden_module()
    for name, stored in _golden()["cases"].items():
        case = make_golden.make_case(name)
        # Inputs come from torch's seeded generator: the same draws on every CPU.
        for k in ("x", "h0"):
            np.testing.assert_array_equal(case[k], np.asarray(stored[k], np.float32),
                                          err_msg=f"{name}: {k}")
        # Outputs and gradients come from oneDNN kernels whose float32 rounding depends on the
        # CPU and its threading: equal to a few ulps, never bit for bit.
        for k in ("out", "h_n"):
            np.testing.assert_allclose(case[k], np.asarray(stored[k], np.float32),
                                       rtol=1e-5, atol=1e-6, err_msg=f"{name}: {k}")
        for k, v in case["grads"].items():
            np.testing.assert_allclose(v, np.asarray(stored["grads"][k], np.float32),
                                       rtol=1e-4, atol=1e-5, err_msg=f"{name}: grad {k}")


def test_torch_live_fresh_seed():
    """A live torch GRU (the least direct mapping) on a fresh seed: 2 bidirectional layers and
    a packed batch. Every stored case is also rerun live by the test above."""
    pytest.importorskip("torch")
    make_golden = _make_golden_module()
    case = make_golden.torch_case("gru", 2, True, (5, 2), "tanh", seed=1000)
    check_against_torch(case)
