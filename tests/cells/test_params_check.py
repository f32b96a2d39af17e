"""Params are checked against the cell before anything is traced: every entry point (rnn, deer,
scan_parallel, bidirectional, stack) names ``params``, the leaf, the shape received and the one
expected, and the cell (type and H); extra keys are errors; traced leaves work too."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax.cells.registry import CELLS  # noqa: E402
from rnn_jax.cells.validation import check_params  # noqa: E402
from rnn_jax.loops import deer  # noqa: E402

I = 3
XS = jnp.ones((2, 5, I))


def init(cell, input_size=I):
    return cell.init(jax.random.key(0), input_size)


# the misuses of issue 15 (found item 3) and what they now get
MISMATCHES = [
    ("lstm params in a gru", rj.GRU(8), init(rj.LSTM(8)), ValueError,
     r"params do not match GRU\(hidden_size=8\) with input_size=3: missing params\['b_hn'\]; "
     r"unexpected none; expected params\['U'\]: \(8, 24\)"),
    ("gru params in an lstm", rj.LSTM(8), init(rj.GRU(8)), ValueError,
     r"params do not match LSTM\(hidden_size=8\).*missing none; unexpected params\['b_hn'\]"),
    ("H=8 params in an H=4 cell", rj.Elman(4), init(rj.Elman(8)), ValueError,
     r"params\['U'\] has shape \(8, 8\), but Elman\(hidden_size=4\) with input_size=3 "
     r"expects \(4, 4\)"),
    ("missing U", rj.Elman(4), {k: v for k, v in init(rj.Elman(4)).items() if k != "U"},
     ValueError, r"params do not match Elman\(hidden_size=4\).*missing params\['U'\];"),
    ("extra key", rj.Elman(4), {**init(rj.Elman(4)), "V": jnp.ones((4, 2))}, ValueError,
     r"missing none; unexpected params\['V'\]"),
    ("lstm params in an lstm of another H", rj.LSTM(4), init(rj.LSTM(8)), ValueError,
     r"params\['U'\] has shape \(8, 32\), but LSTM\(hidden_size=4\) .*expects \(4, 16\)"),
    ("integer leaf", rj.Elman(4), {**init(rj.Elman(4)), "b": jnp.zeros(4, jnp.int32)},
     TypeError, r"params\['b'\] has dtype int32 \(integer\), but Elman\(hidden_size=4\).*"
     r"expects floating"),
    ("not a dict", rj.Elman(4), [jnp.ones((3, 4))], ValueError, r"params do not match Elman"),
    ("None", rj.GRU(4), None, ValueError, r"params do not match GRU\(hidden_size=4\)"),
    ("minGRU params in an LRU", rj.LRU(4), init(rj.MinGRU(4)), ValueError,
     r"params do not match LRU\(hidden_size=4\).*missing"),
    ("LRU of another H", rj.LRU(4), init(rj.LRU(6)), ValueError,
     r"params\['W'\] has shape \(3, 6\), but LRU\(hidden_size=4\)"),
]
IDS = [m[0] for m in MISMATCHES]


@pytest.mark.parametrize("what, cell, params, error, message", MISMATCHES, ids=IDS)
def test_runner_names_the_leaf_the_shapes_and_the_cell(what, cell, params, error, message):
    with pytest.raises(error, match=message):
        rj.rnn(cell, params, XS)


@pytest.mark.parametrize("what, cell, params, error, message", MISMATCHES, ids=IDS)
def test_deer_checks_the_same_way(what, cell, params, error, message):
    with pytest.raises(error, match=message):
        deer.deer_rnn(cell, params, XS)


@pytest.mark.parametrize("what, cell, params, error, message",
                         [m for m in MISMATCHES if isinstance(m[1], rj.LRU | rj.MinGRU)])
def test_scan_parallel_checks_the_same_way(what, cell, params, error, message):
    with pytest.raises(error, match=message):
        cell.scan_parallel(params, XS)


def test_stack_names_the_layer_before_running_any():
    cells = (rj.GRU(4), rj.LSTM(5))
    params = rj.init_stack(jax.random.key(0), cells, I)
    bad = [params[0], init(rj.LSTM(5), 3)]  # layer 1 reads 4 features, not 3
    with pytest.raises(ValueError, match=r"params\[1\]\['W'\] has shape \(3, 20\), but "
                                         r"LSTM\(hidden_size=5\) with input_size=4 expects "
                                         r"\(4, 20\)"):
        rj.stack(cells, bad, XS)
    bi = rj.init_stack(jax.random.key(0), cells, I, bidirectional=True)
    bi[1]["bwd"] = {k: v for k, v in bi[1]["bwd"].items() if k != "b"}
    with pytest.raises(ValueError, match=r"params\[1\]\['bwd'\] do not match LSTM\(hidden_size=5"
                                         r"\) with input_size=8: missing "
                                         r"params\[1\]\['bwd'\]\['b'\]"):
        rj.stack(cells, bi, XS, bidirectional=True)
    with pytest.raises(ValueError, match=r"params\[0\] must be a dict with keys 'fwd' and 'bwd'"):
        rj.stack(cells, params, XS, bidirectional=True)
    with pytest.raises(ValueError, match=r"xs has 3 input features"):
        rj.stack(cells, rj.init_stack(jax.random.key(0), cells, 2), XS)


def test_bidirectional_names_the_direction_cell():
    cell = rj.GRU(4)
    params = {"fwd": init(cell), "bwd": init(rj.GRU(5))}
    with pytest.raises(ValueError, match=r"params\['U'\] has shape \(5, 15\), but "
                                         r"GRU\(hidden_size=4\)"):
        rj.bidirectional(cell, cell, params, XS)


def test_matching_params_pass_under_jit_grad_and_vmap():
    cell = rj.LSTM(4)
    params = init(cell)
    want = rj.rnn(cell, params, XS)[0]
    got = jax.jit(lambda p: rj.rnn(cell, p, XS)[0])(params)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    jax.grad(lambda p: jnp.sum(rj.rnn(cell, p, XS)[0]))(params)
    stacked = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), params)  # vmap over params
    out = jax.vmap(lambda p: rj.rnn(cell, p, XS)[0])(stacked)
    assert out.shape == (2, 2, 5, 4)
    # float64 params for a float32 cell pass (the kind matches)
    with jax.enable_x64(True):
        rj.rnn(cell, jax.tree.map(lambda p: p.astype(jnp.float64), params), XS)


def test_mismatch_is_caught_with_traced_leaves():
    cell = rj.GRU(4)
    with pytest.raises(ValueError, match=r"params\['U'\] has shape \(8, 24\)"):
        jax.jit(lambda p: rj.rnn(cell, p, XS)[0])(init(rj.GRU(8)))
    with pytest.raises(ValueError, match=r"params\['U'\] has shape \(8, 24\)"):
        jax.vmap(lambda p: rj.rnn(cell, p, XS)[0])(
            jax.tree.map(lambda p: jnp.stack([p, p]), init(rj.GRU(8))))


def test_check_params_accepts_every_registered_cell_s_own_init():
    for name in CELLS:  # the registry: cells other work adds are checked too
        cell = rj.get_cell(name, 4)
        check_params(cell, init(cell), I)  # raises on a mismatch
        with pytest.raises(ValueError, match=rf"{type(cell).__name__}\(hidden_size=4\)"):
            check_params(cell, init(cell, I + 1), I)


def test_a_cell_class_or_name_is_not_a_cell():
    with pytest.raises(TypeError, match=r"cell must be a cell value such as rj.Elman\(8\).*got "
                                        r"type"):
        rj.rnn(rj.Elman, init(rj.Elman(4)), XS)
    with pytest.raises(TypeError, match=r"cell must be a cell value.*got str 'elman'"):
        rj.rnn("elman", init(rj.Elman(4)), XS)
