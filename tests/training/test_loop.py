"""Tests for rnn_jax.training.loop.fit: agreement with train.train, exact resume (after a shorter
run, a
Ctrl-C and a SIGKILL), refusal of foreign checkpoint/log directories without touching them, the
JSON-lines and TensorBoard logs, and non-finite steps."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax import tasks  # noqa: E402
from rnn_jax.training import checkpoint, loop, train  # noqa: E402

TASK = tasks.Adding(seq_len=5)
MODEL = rj.SequenceModel(rj.Elman(6), TASK.output_size, readout=TASK.readout)
OPT = train.OptimizerConfig("adam", 1e-2)
KEY = jax.random.key(7)


def eval_fn(params):
    return {"c": params["readout"]["c"][0], "v_norm": jnp.linalg.norm(params["readout"]["V"])}


def cfg(**kw):
    base = dict(num_steps=8, batch_size=4, log_every=2, eval_every=2, checkpoint_every=2,
                progress=False)
    return loop.LoopConfig(**{**base, **kw})


def child(ckpt_dir):
    """Run in a subprocess: the reference run, slowed down so that it can be killed mid-way."""
    def slow_eval(params):
        time.sleep(1.0)
        return eval_fn(params)

    loop.fit(KEY, MODEL, TASK, OPT, cfg(checkpoint_dir=ckpt_dir), eval_fn=slow_eval)


def leaves_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def tree_hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(pathlib.Path(root).rglob("*")) if p.is_file()}


def read_events(log_dir):
    """{tag: {step: value}} from tensorboardX event files, read as TFRecords (no tensorboard)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted(pathlib.Path(log_dir).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4  # length, its crc, the record, its crc
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, with checkpoints in its own directory."""
    root = tmp_path_factory.mktemp("reference")
    state, history = loop.fit(KEY, MODEL, TASK, OPT, cfg(checkpoint_dir=root / "ckpt"),
                              eval_fn=eval_fn)
    return root / "ckpt", state, history


def test_fit_equals_train(reference):
    _, state, history = reference
    ref, metrics = jax.jit(lambda k: train.train(k, MODEL, TASK, OPT, num_steps=8,
                                                 batch_size=4))(KEY)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert [r["step"] for r in history["train"]] == [2, 4, 6, 8]
    losses = np.asarray(metrics["loss"], np.float64).reshape(4, 2).mean(axis=1)
    np.testing.assert_allclose([r["loss"] for r in history["train"]], losses, rtol=1e-6)
    assert [r["step"] for r in history["eval"]] == [2, 4, 6, 8]
    np.testing.assert_allclose(history["eval"][-1]["c"], float(state.params["readout"]["c"][0]))
    assert checkpoint.all_steps(reference[0]) == [2, 4, 6, 8]


def test_extending_a_run_equals_the_longer_run_and_logs_agree(reference, tmp_path):
    _, state, history = reference
    ckpt, logs = tmp_path / "ckpt", tmp_path / "logs"
    _, short = loop.fit(KEY, MODEL, TASK, OPT, cfg(num_steps=5, checkpoint_dir=ckpt,
                                                   log_dir=logs), eval_fn=eval_fn)
    assert checkpoint.all_steps(ckpt) == [2, 4, 5] and len(short["train"]) == 2
    resumed, got = loop.fit(KEY, MODEL, TASK, OPT, cfg(checkpoint_dir=ckpt, log_dir=logs),
                            eval_fn=eval_fn)
    leaves_equal(resumed, state)
    assert got == history
    lines = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in rec.items() if k != "kind"} for rec in lines
            if rec["kind"] == "train"] == history["train"]
    assert [rec for rec in lines if rec["kind"] == "eval"] == [
        {"kind": "eval", **rec} for rec in history["eval"]]
    # TensorBoard: every record is there (float32 values), in event files of both runs.
    events = read_events(logs)
    assert len(list(logs.glob("events.out.tfevents.*"))) == 2
    assert sorted(events["train/loss"]) == [2, 4, 6, 8]
    np.testing.assert_allclose([events["train/loss"][r["step"]] for r in history["train"]],
                               [r["loss"] for r in history["train"]], rtol=1e-6)
    np.testing.assert_allclose(events["eval/c"][8], history["eval"][-1]["c"], rtol=1e-6)


def test_ctrl_c_keeps_the_last_checkpoint_and_resume_is_exact(reference, tmp_path):
    _, state, history = reference
    calls = []

    def interrupting_eval(params):
        calls.append(1)
        if len(calls) == 3:  # during step 6, after its update, before its checkpoint
            raise KeyboardInterrupt
        return eval_fn(params)

    ckpt, logs = tmp_path / "ckpt", tmp_path / "logs"
    with pytest.raises(KeyboardInterrupt):
        loop.fit(KEY, MODEL, TASK, OPT, cfg(checkpoint_dir=ckpt, log_dir=logs),
                 eval_fn=interrupting_eval)
    assert checkpoint.all_steps(ckpt) == [2, 4] and not checkpoint.invalid_steps(ckpt)
    # A step directory left unsealed by a crash is never read, and is moved aside, not lost.
    (ckpt / "6").mkdir()
    (ckpt / "6" / "partial").write_text("half-written")
    with pytest.warns(UserWarning, match="moving the unfinished checkpoint"):
        resumed, got = loop.fit(KEY, MODEL, TASK, OPT, cfg(checkpoint_dir=ckpt, log_dir=logs),
                                eval_fn=eval_fn)
    leaves_equal(resumed, state)
    assert got == history
    assert (ckpt / "6.invalid-0" / "partial").read_text() == "half-written"
    assert checkpoint.all_steps(ckpt) == [2, 4, 6, 8]
    lines = (logs / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(history["train"]) + len(history["eval"])  # run 1's step 6 dropped


def test_sigkill_after_first_checkpoint_then_resume_is_bitwise_exact(reference, tmp_path):
    _, state, history = reference
    ckpt = tmp_path / "ckpt"
    code = (f"import sys; sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r}); "
            "import test_loop; test_loop.child(sys.argv[1])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(ckpt)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while checkpoint.latest_step(ckpt) is None:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = checkpoint.latest_step(ckpt)
    assert killed_at is not None and killed_at < 8
    resumed, got = loop.fit(KEY, MODEL, TASK, OPT, cfg(checkpoint_dir=ckpt), eval_fn=eval_fn)
    leaves_equal(resumed, state)
    assert got == history
    assert checkpoint.all_steps(ckpt)[-1] == 8


def test_foreign_directories_raise_and_stay_untouched(reference, tmp_path):
    ckpt = reference[0]
    before = tree_hashes(ckpt)
    other_model = rj.SequenceModel(rj.Elman(5), TASK.output_size, readout=TASK.readout)
    with pytest.raises(ValueError, match=r"stored shape \(6, 6\).*expected shape \(5, 5\)"):
        loop.fit(KEY, other_model, TASK, OPT, cfg(checkpoint_dir=ckpt))
    with pytest.raises(ValueError, match=r"different run.*key: stored"):
        loop.fit(jax.random.key(8), MODEL, TASK, OPT, cfg(checkpoint_dir=ckpt))
    with pytest.raises(ValueError, match=r"optimizer\['learning_rate'\]: stored 0.01 vs given 0.1"):
        loop.fit(KEY, MODEL, TASK, dataclasses.replace(OPT, learning_rate=0.1),
                 cfg(checkpoint_dir=ckpt))
    with pytest.raises(ValueError, match="step 8, beyond num_steps=4"):
        loop.fit(KEY, MODEL, TASK, OPT, cfg(num_steps=4, checkpoint_dir=ckpt))
    assert tree_hashes(ckpt) == before
    # A log_dir of another run is refused too, before anything is written anywhere.
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 0.5}\n')
    with pytest.raises(ValueError, match="unknown run"):
        loop.fit(KEY, MODEL, TASK, OPT, cfg(checkpoint_dir=tmp_path / "new", log_dir=logs))
    assert not (tmp_path / "new").exists()
    assert (logs / "metrics.jsonl").read_text().count("\n") == 1


def test_bad_input_raises_before_anything_is_written(tmp_path):
    dirs = dict(checkpoint_dir=tmp_path / "ckpt", log_dir=tmp_path / "logs")
    token_model = rj.SequenceModel(rj.Elman(4), 2, vocab_size=2)
    with pytest.raises(ValueError, match="token ids"):
        loop.fit(KEY, token_model, TASK, OPT, cfg(**dirs))
    with pytest.raises(ValueError, match="eval_fn or eval_batch"):
        loop.fit(KEY, MODEL, TASK, OPT, cfg(**dirs), eval_fn=eval_fn, eval_batch={})
    assert not any(tmp_path.iterdir())
    for kw, match in [({"num_steps": -1}, "num_steps must be >= 1, got -1"),
                      ({"num_steps": 0}, "num_steps must be >= 1, got 0"),
                      ({"progress": "yes"}, "progress must be a bool"),
                      ({"batch_size": 0}, "batch_size must be >= 1"),
                      ({"log_every": 0}, "log_every"), ({"keep": 0}, "keep"),
                      ({"on_nonfinite": "ignore"}, "'ignore'"),
                      ({"batch_size": 2.0}, "must be an int, got float")]:
        with pytest.raises((ValueError, TypeError), match=match):
            cfg(**kw)


@dataclasses.dataclass(frozen=True)
class NaNAdding(tasks.Adding):
    """The adding problem with every input replaced by NaN."""

    def sample(self, key, batch_size):
        batch = super().sample(key, batch_size)
        return dict(batch, xs=batch["xs"] * jnp.nan)


def test_nonfinite_steps_skip_or_raise():
    task = NaNAdding(seq_len=5)
    params = MODEL.init(train.run_keys(KEY).init, task.input_size)
    state, history = loop.fit(KEY, MODEL, task, OPT, cfg(num_steps=2, eval_every=0))
    assert int(state.skipped) == 2 and int(state.step) == 2
    leaves_equal(state.params, params)
    assert history["train"][0]["loss"] is None and history["train"][0]["nonfinite"] == 2
    with pytest.raises(FloatingPointError, match="step 0 .*not updated"):
        loop.fit(KEY, MODEL, task, OPT, cfg(num_steps=2, eval_every=0, on_nonfinite="raise"))


def test_evaluation_on_a_split_in_chunks_and_on_a_fixed_batch():
    task = tasks.char_lm_task("abcd efgh " * 30, seq_len=4)  # validation: 3 windows of 4
    model = rj.SequenceModel(rj.Elman(4), task.output_size, vocab_size=task.input_size)
    base = dict(num_steps=2, batch_size=2, eval_every=2, progress=False)
    state, history = loop.fit(KEY, model, task, OPT, loop.LoopConfig(
        **base, eval_split="validation", eval_batch_size=2))  # chunks of 2 and 1 rows
    split = task.split("validation")
    assert split["xs"].shape == (3, 4)
    want = task.metrics(model.apply(state.params, split["xs"]), split)
    assert sorted(history["eval"][0]) == ["accuracy", "bits_per_char", "loss", "step"]
    for name, value in want.items():
        np.testing.assert_allclose(history["eval"][0][name], float(value), rtol=1e-6)
    # Without a split: one fixed batch drawn from fold_in(key, 3), the same at every evaluation.
    _, history = loop.fit(KEY, model, task, OPT, loop.LoopConfig(**base, eval_batch_size=3))
    batch = task.sample(jax.random.fold_in(KEY, 3), 3)
    want = task.metrics(model.apply(state.params, batch["xs"]), batch)
    np.testing.assert_allclose(history["eval"][0]["loss"], float(want["loss"]), rtol=1e-6)
    with pytest.raises(ValueError, match="'test2'"):
        loop.fit(KEY, model, task, OPT, loop.LoopConfig(**base, eval_split="test2"))
