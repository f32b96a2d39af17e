"""Property-based misuse of the training-level entry points (issue 15).

Hypothesis draws bad arguments for SequenceModel (construction and apply), the train step,
fit, checkpoint restore, array_task and the experiments CLI; each must raise a ValueError or
TypeError whose message names the argument — never an XLA/MLIR error, a KeyError, or a silent
result."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import contextlib  # noqa: E402
import io  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import rnn_jax as rj  # noqa: E402
from experiments import __main__ as cli  # noqa: E402
from rnn_jax import tasks  # noqa: E402
from rnn_jax.training import checkpoint, loop, train  # noqa: E402

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
KEY = jax.random.key(0)
TASK = tasks.Adding(seq_len=4)
MODEL = rj.SequenceModel(rj.Elman(3), 1, readout="last")
OPT = train.OptimizerConfig("adam", 1e-2)
PARAMS = MODEL.init(KEY, TASK.input_size)
STATE = train.TrainState(jnp.zeros((), jnp.int32), PARAMS,
                         train.make_optimizer(OPT).init(PARAMS), jnp.zeros((), jnp.int32))
BATCH = TASK.sample(KEY, 2)


def refused(fn, name):
    """``fn()`` raises ValueError/TypeError naming ``name``; returns the message."""
    with pytest.raises((ValueError, TypeError)) as info:
        fn()
    message = str(info.value)
    assert name in message, f"{name!r} not named in: {message}"
    for foreign in ("XLA", "MLIR", "dot_general", "Traceback"):
        assert foreign not in message
    return message


NOT_BOOL = st.sampled_from(["yes", 1, 0, None, 1.0])
NOT_POS_INT = st.sampled_from([0, -1, 1.5, "3", None, True])
MODEL_FIELDS = {
    "output_size": NOT_POS_INT.filter(lambda v: v is not None),
    "num_layers": st.sampled_from([0, -2, 1.5, "2", True]),
    "bidirectional": NOT_BOOL, "remat": st.sampled_from(["yes", 0, -1, 1.5, "all"]),
    "merge": st.sampled_from(["max", "", None, 1]),
    "readout": st.sampled_from(["first", "ALL", None, 0]),
    "method": st.sampled_from(["loop", None, 3]),
    "vocab_size": st.sampled_from([0, -1, 2.5, "8", True]),
    "input_projection": st.sampled_from([0, -1, 2.5, "8"]),
    "seq_len": st.sampled_from([0, -3, 2.0, "5"]),
    "dropout_rate": st.sampled_from([1.0, 1.5, -0.1, float("nan"), "0.1", None, True]),
    "unroll": st.sampled_from([0, -1, 1.5, "2"]),
    "cell": st.sampled_from(["gru", None, 3, (rj.Elman(2), "lstm")]),
}


@SETTINGS
@given(st.data())
def test_sequence_model_construction(data):
    name = data.draw(st.sampled_from(sorted(MODEL_FIELDS)))
    value = data.draw(MODEL_FIELDS[name])
    kw = {"cell": rj.GRU(4), "output_size": 2, name: value}
    refused(lambda: rj.SequenceModel(**kw), "cell" if name == "cell" else name)


APPLY_MISUSE = [
    ("params", lambda: MODEL.apply({"layers": PARAMS["layers"]}, BATCH["xs"])),
    ("params", lambda: MODEL.apply([], BATCH["xs"])),
    ("params['readout']['V']", lambda: MODEL.apply(
        dict(PARAMS, readout={"V": jnp.zeros((4, 1)), "c": jnp.zeros(1)}), BATCH["xs"])),
    ("params['readout']", lambda: MODEL.apply(dict(PARAMS, readout={"V": 1}), BATCH["xs"])),
    ("params['layers']", lambda: MODEL.apply(dict(PARAMS, layers=[]), BATCH["xs"])),
    ("xs", lambda: MODEL.apply(PARAMS, "abc")),
    ("xs", lambda: MODEL.apply(PARAMS, jnp.zeros(4))),
    ("xs", lambda: MODEL.apply(PARAMS, jnp.zeros((2, 4, 2), jnp.int32))),
    ("deterministic", lambda: MODEL.apply(PARAMS, BATCH["xs"], deterministic="no")),
    ("lengths", lambda: MODEL.apply(PARAMS, BATCH["xs"], lengths=jnp.array([9, 1]))),
    ("mask", lambda: MODEL.apply(PARAMS, BATCH["xs"], mask=jnp.ones((2, 3), bool))),
]


@SETTINGS
@given(st.sampled_from(range(len(APPLY_MISUSE))))
def test_sequence_model_apply(i):
    name, fn = APPLY_MISUSE[i]
    refused(fn, name)


STEP = train.make_train_step(MODEL, TASK, OPT)
DIGITS_LIKE = tasks.TemporalOrder(seq_len=12)
STEP_MISUSE = [
    ("model", lambda: train.make_train_step("gru", TASK, OPT)),
    ("task", lambda: train.make_train_step(MODEL, "adding", OPT)),
    ("opt_cfg", lambda: train.make_train_step(MODEL, TASK, {"name": "adam"})),
    ("sampled", lambda: train.make_train_step(MODEL, TASK, OPT, sampled="no")),
    ("state", lambda: STEP(PARAMS, BATCH)),
    ("batch", lambda: STEP(STATE, {"xs": BATCH["xs"]})),
    ("batch", lambda: STEP(STATE, [BATCH["xs"], BATCH["ys"]])),
    ("batch['xs']", lambda: STEP(STATE, dict(BATCH, xs=jnp.zeros((2, 4, 5))))),
    ("batch['xs']", lambda: STEP(STATE, dict(BATCH, xs=[[0.0]]))),
    ("batch['mask']", lambda: STEP(STATE, dict(BATCH, mask=jnp.ones((2, 5), bool)))),
    ("batch['mask']", lambda: STEP(STATE, dict(BATCH, mask=jnp.ones((2, 4))))),
    ("batch['mask']", lambda: STEP(STATE, dict(BATCH, mask=jnp.arange(4)[None] < jnp.array(
        [[4], [2]])))),  # padding handed to a fixed-length task
    ("num_steps", lambda: train.train(KEY, MODEL, TASK, OPT, num_steps=0, batch_size=2)),
    ("num_steps", lambda: train.train(KEY, MODEL, TASK, OPT, num_steps=-1, batch_size=2)),
    ("num_steps", lambda: train.train(KEY, MODEL, TASK, OPT, num_steps=2.0, batch_size=2)),
    ("batch_size", lambda: train.train(KEY, MODEL, TASK, OPT, num_steps=1, batch_size=0)),
    ("dropout", lambda: train.train(KEY, MODEL, TASK, OPT, num_steps=1, batch_size=2,
                                    dropout=1)),
    ("state", lambda: train.train(KEY, MODEL, TASK, OPT, num_steps=1, batch_size=2,
                                  state=PARAMS)),
]


@SETTINGS
@given(st.sampled_from(range(len(STEP_MISUSE))))
def test_train_step_and_train(i):
    name, fn = STEP_MISUSE[i]
    refused(fn, name)


OPT_FIELDS = {
    "name": st.sampled_from(["adagrad", "", None, 1]),
    "learning_rate": st.sampled_from([0.0, -1.0, float("nan"), float("inf"), "1e-3", True]),
    "momentum": st.sampled_from([-0.1, 1.5, "0.9", None]),
    "nesterov": NOT_BOOL,
    "schedule": st.sampled_from(["step", None]),
    "warmup_steps": st.sampled_from([-1, 1.5, "3", None]),
    "decay_steps": st.sampled_from([0, -5, 2.5, None]),
    "end_factor": st.sampled_from([-0.5, float("nan"), "0"]),
    "clip": st.sampled_from(["norm", None]),
    "clip_threshold": st.sampled_from([0.0, -1.0, float("inf"), "1"]),
    "weight_decay": st.sampled_from([-1e-4, float("nan"), "0"]),
}
LOOP_FIELDS = {
    "num_steps": st.sampled_from([0, -1, 2.5, "10", True]),
    "batch_size": st.sampled_from([0, -4, 2.0, "8"]),
    "eval_every": st.sampled_from([-1, 1.5]),
    "eval_batch_size": st.sampled_from([0, 1.5]),
    "log_every": st.sampled_from([0, -1, "1"]),
    "checkpoint_every": st.sampled_from([-1, 0.5]),
    "keep": st.sampled_from([0, -1, 1.5]),
    "checkpoint_dir": st.sampled_from([3, b"dir", ["d"]]),
    "log_dir": st.sampled_from([3, b"dir"]),
    "progress": NOT_BOOL, "dropout": NOT_BOOL,
    "on_nonfinite": st.sampled_from(["ignore", None]),
    "eval_split": st.sampled_from([3, ["test"]]),
}


@SETTINGS
@given(st.data())
def test_fit_configs(data):
    which = data.draw(st.sampled_from(["opt", "loop", "call"]))
    if which == "opt":
        name = data.draw(st.sampled_from(sorted(OPT_FIELDS)))
        value = data.draw(OPT_FIELDS[name])
        refused(lambda: train.OptimizerConfig(**{name: value}), name)
    elif which == "loop":
        name = data.draw(st.sampled_from(sorted(LOOP_FIELDS)))
        value = data.draw(LOOP_FIELDS[name])
        refused(lambda: loop.LoopConfig(**{"num_steps": 2, "batch_size": 2, name: value}), name)
    else:
        cfg = loop.LoopConfig(num_steps=1, batch_size=2, progress=False)
        name, fn = data.draw(st.sampled_from([
            ("key", lambda: loop.fit(0, MODEL, TASK, OPT, cfg)),
            ("loop_cfg", lambda: loop.fit(KEY, MODEL, TASK, OPT, {"num_steps": 1})),
            ("opt_cfg", lambda: loop.fit(KEY, MODEL, TASK, None, cfg)),
            ("model", lambda: loop.fit(KEY, None, TASK, OPT, cfg)),
            ("task", lambda: loop.fit(KEY, MODEL, object(), OPT, cfg)),
        ]))
        refused(fn, name)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    checkpoint.save(root, 3, {"w": np.zeros((2, 2), np.float32)})
    return root


@SETTINGS
@given(st.data())
def test_checkpoint_restore(saved, data):
    like = {"w": np.zeros((2, 2), np.float32)}
    name, fn = data.draw(st.sampled_from([
        ("directory", lambda: checkpoint.restore(3, like)),
        ("directory", lambda: checkpoint.restore(b"/tmp", like)),
        ("step", lambda: checkpoint.restore(saved, like, step=-1)),
        ("step", lambda: checkpoint.restore(saved, like, step=1.5)),
        ("step", lambda: checkpoint.restore(saved, like, step="3")),
        ("like", lambda: checkpoint.restore(saved, {"w": np.zeros((3, 2), np.float32)})),
        ("like", lambda: checkpoint.restore(saved, {"v": np.zeros((2, 2), np.float32)})),
        ("like", lambda: checkpoint.restore(saved, {"w": np.zeros((2, 2), np.int32)})),
        ("leaf", lambda: checkpoint.restore(saved, {"w": "abc"})),
    ]))
    refused(fn, name)


XS = np.zeros((6, 5, 2), np.float32)
YS = np.arange(6) % 2
ARRAY_ARGS = {
    "xs": st.sampled_from(["abc", np.zeros((6, 5)), np.zeros((6, 5, 2), complex),
                           np.zeros((0, 5, 2)), [[["a"]]]]),
    "ys": st.sampled_from([np.zeros(6), np.zeros((6, 5), int), np.full(6, -1), "y"]),
    "lengths": st.sampled_from([np.zeros(6, int), np.full(6, 6), np.ones(5, int),
                                np.ones(6), "3"]),
    "mask": st.sampled_from([np.zeros((6, 5), bool), np.ones((6, 5)), np.ones((6, 4), bool)]),
    "kind": st.sampled_from(["ranking", None, 1]),
    "readout": st.sampled_from(["first", None]),
    "num_classes": st.sampled_from([0, -1, 1.5, "2", 1]),
    "vocab_size": st.sampled_from([0, 4]),
    "validation": st.sampled_from([0.0, 1.0, 1.5, -0.2, "0.2", 0.01, {"xs": XS}]),
    "test": st.sampled_from([1.0, {"xs": XS, "ys": YS, "len": 1}]),
    "name": st.sampled_from(["", None, 3]),
}


@SETTINGS
@given(st.data())
def test_array_task(data):
    name = data.draw(st.sampled_from(sorted(ARRAY_ARGS)))
    value = data.draw(ARRAY_ARGS[name])
    kw = {"xs": XS, "ys": YS, name: value}
    if name in ("validation", "test"):
        kw["key"] = KEY
    named = {"mask": "mask", "num_classes": "num_classes"}.get(name, name)
    if name == "num_classes" and value == 1:
        named = "ys"  # labels 0 and 1 do not fit one class: the labels are named
    refused(lambda: tasks.array_task(**kw), named)


CLI_MISUSE = {
    "num_steps": ["-1", "0", "abc", "1.5"],
    "checkpoint_every": ["-1", "x"],
    "log_every": ["0", "-2", "z"],
    "batch_size": ["0", "-3", "b"],
    "seed": ["abc", "1.5"],
    "no_such_field": ["1"],
}


@SETTINGS
@given(st.sampled_from(["adding", "copy", "temporal_order", "char_lm", "mnist1d",
                        "clipping_sweep"]), st.sampled_from(sorted(CLI_MISUSE)), st.data())
def test_experiments_cli(tmp_path, name, field, data):
    value = data.draw(st.sampled_from(CLI_MISUSE[field]))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli.main(["run", name, "--smoke", "--out", str(tmp_path / "out"),
                       f"--{field}", value])
    assert rc == 2, err.getvalue()
    assert field in err.getvalue() and err.getvalue().startswith("error: ")
    assert not (tmp_path / "out").exists()  # refused before anything was written
