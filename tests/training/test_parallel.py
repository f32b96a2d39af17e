"""Tests for rnn_jax.training.parallel: on 8 simulated CPU devices (a subprocess, since the device
count
is fixed when JAX starts), data-parallel training equals single-device training to float
tolerance, the batch really is split and the gradient all-reduced, and uneven batches raise."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax import tasks  # noqa: E402
from rnn_jax.training import loop, parallel, train  # noqa: E402

TASK = tasks.Adding(seq_len=6, min_len=3)  # ragged lengths: the masked global mean must hold
MODEL = rj.SequenceModel(rj.Elman(6), TASK.output_size, readout=TASK.readout)
OPT = train.OptimizerConfig("adam", 3e-2, clip_threshold=0.5)
KEY = jax.random.key(11)
STEPS, BATCH = 6, 16


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def child():
    """Runs in a subprocess with 8 CPU devices; prints one JSON line of results."""
    mesh = parallel.data_mesh()
    out = {"devices": len(jax.devices()), "shards": parallel.num_shards(mesh)}
    ref, ref_m = jax.jit(lambda k: train.train(k, MODEL, TASK, OPT, num_steps=STEPS,
                                               batch_size=BATCH))(KEY)
    par, par_m = parallel.parallel_train(KEY, MODEL, TASK, OPT, num_steps=STEPS,
                                         batch_size=BATCH, mesh=mesh)
    out["scan_params"], out["scan_loss"] = max_diff(par, ref), max_diff(par_m, ref_m)
    fit_state, history = loop.fit(KEY, MODEL, TASK, OPT, loop.LoopConfig(
        num_steps=STEPS, batch_size=BATCH, eval_every=STEPS, progress=False), mesh=mesh)
    eval_batch = TASK.sample(jax.random.fold_in(KEY, 3), BATCH)  # fit's fixed evaluation batch
    want = jax.jit(train.make_eval_step(MODEL, TASK))(ref.params, eval_batch)
    out["fit_eval"] = abs(history["eval"][0]["loss"] - float(want["loss"]))
    out["fit_params"] = max_diff(fit_state, ref)
    out["fit_loss"] = max(abs(r["loss"] - float(ref_m["loss"][i]))
                          for i, r in enumerate(history["train"]))
    out["replicated"] = fit_state.params["readout"]["V"].sharding.is_fully_replicated
    # One explicit step on a sharded batch, and what XLA made of it.
    state0 = train.init_state(KEY, MODEL, TASK, train.make_optimizer(OPT))
    batch = train.sample_batch(TASK, KEY, 0, BATCH)
    sharded = parallel.shard_batch(batch, mesh)
    out["local_rows"] = [s.data.shape[0] for s in sharded["xs"].addressable_shards]
    step = parallel.make_parallel_train_step(MODEL, TASK, OPT, mesh)
    got, got_m = step(parallel.replicate(state0, mesh), sharded)
    want, want_m = jax.jit(train.make_train_step(MODEL, TASK, OPT))(state0, batch)
    out["step_params"], out["step_metrics"] = max_diff(got, want), max_diff(got_m, want_m)
    hlo = step.lower(parallel.replicate(state0, mesh), sharded).compile().as_text()
    out["all_reduce"] = "all-reduce" in hlo
    errors = []
    small = train.sample_batch(TASK, KEY, 0, 12)
    for fn in (lambda: parallel.check_batch_size(12, mesh),
               lambda: step(state0, small),
               lambda: loop.fit(KEY, MODEL, TASK, OPT, loop.LoopConfig(
                   num_steps=1, batch_size=12, progress=False), mesh=mesh),
               lambda: parallel.shard_batch(small, mesh)):
        try:
            fn()
            errors.append(None)
        except ValueError as err:
            errors.append(str(err))
    out["errors"] = errors
    print(json.dumps(out))


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    code = (f"import sys; sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r}); "
            "import test_parallel; test_parallel.child()")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_data_parallel_training_equals_single_device_training(results):
    assert results["devices"] == 8 and results["shards"] == 8
    for name in ("scan_params", "scan_loss", "fit_params", "fit_loss", "fit_eval",
                 "step_params", "step_metrics"):
        assert results[name] < 1e-5, (name, results[name])
    assert results["replicated"]


def test_the_batch_is_split_and_the_gradient_all_reduced(results):
    assert results["local_rows"] == [BATCH // 8] * 8
    assert results["all_reduce"]


def test_uneven_batches_raise(results):
    for message in results["errors"]:
        assert message is not None and "12" in message and "8 devices" in message


def test_single_device_mesh_and_bad_mesh_in_process():
    mesh = parallel.data_mesh(jax.devices()[:1])
    assert parallel.num_shards(mesh) == 1
    parallel.check_batch_size(3, mesh)
    with pytest.raises(TypeError, match="Mesh"):
        parallel.check_batch_size(4, "not a mesh")
    with pytest.raises(ValueError, match="at least one device"):
        parallel.data_mesh([])
