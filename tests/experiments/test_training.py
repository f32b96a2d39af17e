"""Seed-vmapped chunked training helpers: chunk summaries, chunk boundaries, seed keys."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import json  # noqa: E402
import shutil  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rnn_jax as rj  # noqa: E402
from experiments import char_lm, harness, training  # noqa: E402
from rnn_jax import tasks  # noqa: E402
from rnn_jax.training import checkpoint, train  # noqa: E402


def _metrics(loss, norm, finite):
    return {"loss": jnp.asarray(loss, jnp.float32), "grad_norm": jnp.asarray(norm, jnp.float32),
            "clipped": jnp.asarray([n > 1.0 for n in norm]), "finite": jnp.asarray(finite)}


def test_summary_averages_finite_steps_only():
    s = training._summary(_metrics([1.0, np.nan, 3.0], [0.5, np.inf, 2.5], [True, False, True]))
    assert float(s["loss"]) == pytest.approx(2.0)
    assert float(s["grad_norm"]) == pytest.approx(1.5)
    assert float(s["grad_norm_max"]) == pytest.approx(2.5)
    assert float(s["nonfinite"]) == 1.0
    assert float(s["clipped"]) == pytest.approx(2 / 3)  # the inf step counts as clipped
    assert set(s) == set(training.RECORDED)


def test_summary_of_a_chunk_with_no_finite_step_is_nan_not_zero():
    s = training._summary(_metrics([np.nan] * 2, [np.inf] * 2, [False, False]))
    for name in ("loss", "grad_norm", "grad_norm_max"):
        assert np.isnan(float(s[name])), name
    assert float(s["nonfinite"]) == 2.0
    # ... and the history keeps it as None (strict JSON in checkpoint metadata)
    assert training._host({"loss": s["loss"][None]}) == {"loss": [None]}


@pytest.mark.parametrize("start, num_steps, log_every, expected", [
    (0, 10, 3, [3, 6, 9, 10]), (0, 9, 3, [3, 6, 9]), (4, 10, 3, [6, 9, 10]),
    (6, 10, 3, [9, 10]), (10, 10, 3, []), (0, 2, 5, [2])])
def test_chunk_boundaries_do_not_depend_on_the_start(start, num_steps, log_every, expected):
    assert training.boundaries(start, num_steps, log_every) == expected


@pytest.mark.parametrize("start, expected", [
    (0, [3, 4, 6, 8, 9, 10]), (4, [6, 8, 9, 10]), (8, [9, 10])])
def test_checkpoint_every_adds_chunk_ends_of_its_own(start, expected):
    assert training.boundaries(start, 10, 3, 4) == expected
    training.check_schedule(60, 3, 20)  # no multiple of log_every needed


def test_a_window_split_by_a_checkpoint_summarises_as_one_chunk():
    full = _metrics([1.0, np.nan, 3.0, 2.0], [0.5, np.inf, 2.5, 0.25], [True, False, True, True])
    parts = [{k: v[:1] for k, v in full.items()}, {k: v[1:] for k, v in full.items()}]
    saved = training.pending_to_json(training.extend(None, parts[0]))
    pending = training.extend(training.pending_from_json(json.loads(json.dumps(saved))),
                              parts[1])
    whole, split = training._summary(full), training._summary(pending)
    for name in training.RECORDED:
        np.testing.assert_array_equal(split[name], whole[name])


def test_seed_keys_are_distinct_and_checked():
    keys = training.seed_keys(0, 3)
    data = np.asarray(jax.random.key_data(keys))
    assert len({tuple(row) for row in data}) == 3
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="num_seeds"):
            training.seed_keys(0, bad)


def _drop_after(root, step):
    for step_dir in root.iterdir():
        if step_dir.name.isdigit() and int(step_dir.name) > step:
            shutil.rmtree(step_dir)


def test_train_seeds_resumes_exactly_from_inside_a_logging_window(tmp_path):
    task = tasks.Adding(seq_len=5)
    model = rj.SequenceModel(rj.Elman(4), 1, readout="last")
    opt = train.OptimizerConfig("adam", 1e-2)
    keys = training.seed_keys(0, 2)
    kw = dict(num_steps=10, batch_size=4, log_every=3, checkpoint_every=4,
              checkpoint_dir=tmp_path, keep=None)
    full_state, full = training.train_seeds(keys, model, task, opt, **kw)
    assert full["step"] == [3, 6, 9, 10]
    assert checkpoint.all_steps(tmp_path) == [4, 8, 10]
    pending = checkpoint.read_metadata(tmp_path, step=4)["pending"]
    assert np.shape(pending["loss"]["values"]) == (2,)  # step 4: one step into [3, 6), 2 seeds
    _drop_after(tmp_path, 4)
    state, history = training.train_seeds(keys, model, task, opt, **kw)
    assert history == full
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(full_state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_cli_takes_any_checkpoint_every():
    # Issue 15: `run char_lm --smoke --num_steps 60 --checkpoint_every 20` (log_every=3) was
    # refused as "not a multiple of log_every".
    cfg = harness.make_config(char_lm, {"num_steps": "60", "checkpoint_every": "20"}, smoke=True)
    assert (cfg.log_every, cfg.checkpoint_every) == (3, 20)
    assert training.boundaries(0, 60, 3, 20)[:8] == [3, 6, 9, 12, 15, 18, 20, 21]


def test_train_seeds_refuses_a_checkpoint_of_other_data(tmp_path):
    rng = np.random.default_rng(0)
    xs, lengths = rng.normal(size=(12, 5, 2)).astype(np.float32), rng.integers(1, 6, 12)
    ys = (xs[:, 0, 0] > 0).astype(np.int32)
    task = tasks.array_task(xs, ys, lengths=lengths)
    model = rj.SequenceModel(rj.GRU(3), task.output_size, readout="last")
    opt, keys = train.OptimizerConfig("adam", 1e-2), training.seed_keys(0, 2)
    kw = dict(batch_size=4, log_every=2, checkpoint_every=2)
    training.train_seeds(keys, model, task, opt, num_steps=2, checkpoint_dir=tmp_path, **kw)
    changed = xs.copy()
    changed[0, 0, 0] += 1.0
    with pytest.raises(ValueError, match=r"holds a different run \(differs in "
                                         r"data\['train'\]\['xs'\]: stored 'float32\[12, 5, 2\]"):
        training.train_seeds(keys, model, tasks.array_task(changed, ys, lengths=lengths), opt,
                             num_steps=4, checkpoint_dir=tmp_path, **kw)
    same = tasks.array_task(xs.copy(), ys, lengths=lengths)
    _, history = training.train_seeds(keys, model, same, opt, num_steps=4,
                                      checkpoint_dir=tmp_path, **kw)
    assert history["step"] == [2, 4]
