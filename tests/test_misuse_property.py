"""Misuse, drawn at random: bad arguments to rnn, bidirectional, stack, every registered cell's
constructor and init get a ValueError/TypeError raised by rnn_jax's own checks whose message
names the argument — never an XLA/MLIR error, a KeyError, or a silent result.

Each draw picks an entry point, one argument and a bad value for it (wrong type, shape, dtype,
range, or params of another cell); everything else is valid. The checks run before anything is
traced, so nothing here compiles and the whole file takes seconds.
"""

import os
import traceback

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax.cells.registry import CELLS  # noqa: E402
from rnn_jax.rnn import MERGES, METHODS  # noqa: E402

B, T, I, H = 2, 5, 3, 4
PACKAGE = os.path.dirname(rj.__file__)
KEY = jax.random.key(0)
XS = jnp.ones((B, T, I))
NOT_BOOL = st.one_of(st.text(max_size=3), st.integers(), st.none(), st.floats(),
                     st.just([True]))
NOT_INT = st.one_of(st.text(max_size=3), st.floats(allow_nan=True), st.none(), st.booleans(),
                    st.just([1]))
NOT_POSITIVE = st.integers(-5, 0)


def cell_of(name, hidden=H):
    return CELLS[name](hidden)


def params_of(name, hidden=H, input_size=I):
    return cell_of(name, hidden).init(KEY, input_size)


def assert_named_error(fn, *names):
    """``fn()`` raises ValueError/TypeError from rnn_jax's code naming one of ``names``."""
    try:
        result = fn()
    except (ValueError, TypeError) as e:
        origin = traceback.extract_tb(e.__traceback__)[-1].filename
        assert origin.startswith(PACKAGE), f"raised outside rnn_jax ({origin}): {e}"
        assert any(n in str(e) for n in names), f"message does not name {names}: {e}"
        return str(e)
    except Exception as e:  # noqa: BLE001 -- the point: any other kind is a failure
        pytest.fail(f"{type(e).__name__} instead of ValueError/TypeError naming {names}: {e}")
    pytest.fail(f"accepted silently, naming none of {names}: {jax.tree.map(np.shape, result)}")


# -- strategies: (thunk, names the message must mention) -------------------------------------
cell_names = st.sampled_from(sorted(CELLS))


@st.composite
def bad_rnn_call(draw):
    name = draw(cell_names)
    cell, params = cell_of(name), params_of(name)
    kw = {}
    what = draw(st.sampled_from(["xs", "params", "carry", "lengths", "mask", "bool", "unroll",
                                 "method", "probes", "cell"]))
    xs = XS
    if what == "xs":
        xs = draw(st.sampled_from([
            [[1.0, 2.0, 3.0]], None, 3, jnp.ones(3), jnp.ones((B, T, I), jnp.int32),
            jnp.ones((B, T, I + draw(st.integers(1, 3)))), jnp.ones((B, T, I), bool)]))
    elif what == "params":
        other = draw(cell_names)
        hidden = draw(st.sampled_from([2, 4, 6]))
        leaf = "U" if "U" in params else "b"
        dropped = draw(st.sampled_from(sorted(params)))
        shape = params[leaf].shape
        if other == name and hidden == H:
            hidden = 6
        params = draw(st.sampled_from([
            params_of(other, hidden, I),
            {k: v for k, v in params.items() if k != dropped},
            {**params, draw(st.text(min_size=1, max_size=3)).upper() + "_x": jnp.ones(2)},
            {**params, leaf: jnp.ones(draw(st.sampled_from(
                [(*shape[:-1], shape[-1] + 1), (*shape, 2), (shape[-1] + 1,)])))},
            jax.tree.map(lambda p: p.astype(jnp.int32), params),
            None, [params], "params",
        ]))
        return (lambda: rj.rnn(cell, params, xs)), ("params",)
    elif what == "carry":
        kw["carry"] = draw(st.sampled_from([
            jnp.zeros((B + 1, H)), jnp.zeros((H,)), (jnp.zeros((B, H)),) * 3, "zeros"]))
        if name == "lstm" and isinstance(kw["carry"], tuple):
            kw["carry"] = (jnp.zeros((B, H)),)
    elif what == "lengths":
        kw["lengths"] = draw(st.sampled_from([
            jnp.array([T + draw(st.integers(1, 9)), 1]), jnp.array([-draw(st.integers(1, 9)), 1]),
            jnp.array([1.0, 2.0]), jnp.array([1, 2, 3]), jnp.array(2)]))
    elif what == "mask":
        kw["mask"] = draw(st.sampled_from([
            jnp.ones((B, T + 1), bool), jnp.ones((B, T), jnp.int32), jnp.ones((T,), bool)]))
    elif what == "bool":
        arg = draw(st.sampled_from(["reverse", "time_major", "return_carries"]))
        kw[arg] = draw(NOT_BOOL)
        return (lambda: rj.rnn(cell, params, xs, **kw)), (arg,)
    elif what == "unroll":
        kw["unroll"] = draw(st.one_of(NOT_POSITIVE, st.text(max_size=2), st.floats()))
    elif what == "method":
        kw["method"] = draw(st.text(max_size=6).filter(lambda m: m not in METHODS))
    elif what == "probes":
        kw["probes"] = jnp.zeros((B, T, H + draw(st.integers(1, 3))))
    elif what == "cell":
        bad_cell = draw(st.sampled_from([name, CELLS[name], None, 3]))
        return (lambda: rj.rnn(bad_cell, params, xs)), ("cell",)
    return (lambda: rj.rnn(cell, params, xs, **kw)), (what,)


@st.composite
def bad_bidirectional_call(draw):
    cell = rj.GRU(H)
    params = {"fwd": cell.init(KEY, I), "bwd": cell.init(KEY, I)}
    what = draw(st.sampled_from(["merge", "params", "time_major", "return_carries", "leaf"]))
    kw = {}
    if what == "merge":
        kw["merge"] = draw(st.text(max_size=5).filter(lambda m: m not in MERGES))
    elif what == "params":
        params = draw(st.sampled_from([{"fwd": params["fwd"]}, [params["fwd"]] * 2,
                                       {"f": params["fwd"], "b": params["bwd"]}]))
    elif what == "leaf":
        params = {**params, "bwd": rj.LSTM(H).init(KEY, I)}
        what = "params"
    else:
        kw[what] = draw(NOT_BOOL)
    return (lambda: rj.bidirectional(cell, cell, params, XS, **kw)), (what,)


@st.composite
def bad_stack_call(draw):
    cells = (rj.GRU(H), rj.Elman(3))
    params = rj.init_stack(KEY, cells, I)
    what = draw(st.sampled_from(["num_layers", "dropout_rate", "params", "bidirectional",
                                 "deterministic", "reverse", "merge", "layer"]))
    kw = {}
    if what == "num_layers":
        return (lambda: rj.stack(rj.GRU(H), [params[0]], XS,
                                 num_layers=draw(st.one_of(NOT_POSITIVE, st.just("2"))))), (what,)
    if what == "dropout_rate":
        kw["dropout_rate"] = draw(st.one_of(st.floats(1.0, 10.0), st.floats(-10.0, -0.01)))
    elif what == "params":
        params = draw(st.sampled_from([params[:1], params * 2, params[0], None]))
    elif what == "merge":
        kw["merge"] = draw(st.text(max_size=5).filter(lambda m: m not in MERGES))
    elif what == "layer":
        params = [params[0], rj.Elman(3).init(KEY, I)]  # layer 1 reads H features, not I
        what = "params[1]"
    else:
        kw[what] = draw(NOT_BOOL)
    return (lambda: rj.stack(cells, params, XS, **kw)), (what,)


@st.composite
def bad_cell(draw):
    name = draw(cell_names)
    cls = CELLS[name]
    what = draw(st.sampled_from(["hidden_size", "input_size", "key", "field"]))
    if what == "hidden_size":
        value = draw(st.one_of(NOT_INT, NOT_POSITIVE))
        return (lambda: cls(value)), (what,)
    if what == "input_size":
        value = draw(st.one_of(NOT_INT, NOT_POSITIVE))
        return (lambda: cls(H).init(KEY, value)), (what,)
    if what == "key":
        key = draw(st.sampled_from([0, None, "key", jnp.zeros(3), jnp.zeros((2, 2), jnp.uint32),
                                    jax.random.split(KEY, 2)]))
        return (lambda: cls(H).init(key, I)), (what,)
    fields = {f for f in cls.__dataclass_fields__ if f != "hidden_size"}
    field = draw(st.sampled_from(sorted(fields)))
    value = draw(st.sampled_from(["bogus", [1], -1e9 if field.startswith("r_") else object()]))
    return (lambda: cls(H, **{field: value}).init(KEY, I)), (field,)


@settings(max_examples=150, deadline=None)
@given(case=st.one_of(bad_rnn_call(), bad_bidirectional_call(), bad_stack_call(), bad_cell()))
def test_misuse_gets_a_named_value_or_type_error(case):
    fn, names = case
    assert_named_error(fn, *names)


def test_the_reported_misuses_and_their_messages():
    cell, params = rj.GRU(8), rj.GRU(8).init(KEY, I)
    message = assert_named_error(lambda: rj.rnn(cell, params, XS, reverse="yes"), "reverse")
    assert message == "reverse must be a bool (True or False), got str 'yes'"
    message = assert_named_error(lambda: rj.rnn(cell, rj.LSTM(8).init(KEY, I), XS), "params")
    assert message.startswith("params do not match GRU(hidden_size=8) with input_size=3: "
                              "missing params['b_hn']; unexpected none; expected params['U']: "
                              "(8, 24)")
    message = assert_named_error(lambda: rj.Elman(True), "hidden_size")
    assert message == "hidden_size must be an int, got bool True"
