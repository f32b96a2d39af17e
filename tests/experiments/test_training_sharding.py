"""Seeds split over devices (experiments.training): same results as one device, resume included.

The sharded runs happen in a subprocess with 8 host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``); the reference runs here, on this
process's devices, and the two are compared leaf by leaf.
"""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments import training  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
KW = dict(batch_size=4, log_every=5, checkpoint_every=5)  # one chunk length: one compile
SEEDS = (4, 3)  # 4 seeds: split over 4 of the 8 devices; 3 seeds: over 3

# Shared by both processes, so the runs are the same by construction.
SETUP = """
import numpy as np
import jax
import rnn_jax as rj
from experiments import training
from rnn_jax import tasks
from rnn_jax.training import train
task = tasks.Adding(seq_len=5)
model = rj.SequenceModel(rj.Elman(4), 1, readout="last")
opt = train.OptimizerConfig("adam", 1e-2)
batches = training.fresh_batches(task, training.eval_key(0), 8, 4)

def leaves(state, history, metrics):
    flat = {f"state{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state))}
    flat |= {f"hist_{k}": np.asarray(v, float) for k, v in history.items()}
    return flat | {f"eval_{k}": np.asarray(v) for k, v in metrics.items()}
"""

CHILD = SETUP + """
import json, shutil, sys
out, kw = sys.argv[1], json.loads(sys.argv[2])
spans = {}
for s in json.loads(sys.argv[3]):
    keys = training.seed_keys(0, s)
    ckpt = f"{out}/ckpt{s}"
    whole, whole_history = training.train_seeds(keys, model, task, opt, num_steps=10,
                                                checkpoint_dir=ckpt, keep=None, **kw)
    shutil.rmtree(f"{ckpt}/10")  # back to step 5: resume from the restored (unsharded) state
    state, history = training.train_seeds(keys, model, task, opt, num_steps=10,
                                          checkpoint_dir=ckpt, **kw)
    metrics = training.evaluate(model, task, state.params, batches)
    np.savez(f"{out}/resumed{s}.npz", **leaves(state, history, metrics))
    np.savez(f"{out}/whole{s}.npz", **leaves(whole, whole_history, {}))
    spans[s] = sorted({len(x.sharding.device_set) for x in jax.tree.leaves(state)})
print(json.dumps({"devices": len(jax.devices()), "spans": spans}))
"""


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), str(out),
                           json.dumps(KW), json.dumps(SEEDS)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("num_seeds", SEEDS)
def test_seeds_split_over_devices_train_like_one_device(sharded, num_seeds):
    out, info = sharded
    assert info["devices"] == 8
    # 4 seeds on 8 devices: 4 devices; 3 seeds: 3 (the largest count that divides S)
    assert info["spans"][str(num_seeds)] == [num_seeds]
    scope = {}
    exec(SETUP, scope)  # the same task, model, optimizer and evaluation batches, here
    keys = training.seed_keys(0, num_seeds)
    state, history = training.train_seeds(keys, scope["model"], scope["task"], scope["opt"],
                                          num_steps=10, **KW)
    metrics = training.evaluate(scope["model"], scope["task"], state.params, scope["batches"])
    ref = scope["leaves"](state, history, metrics)
    for name in ("resumed", "whole"):
        got = np.load(out / f"{name}{num_seeds}.npz")
        expected = {k: v for k, v in ref.items() if k in got.files}
        assert set(expected) == set(got.files) and len(got.files) > 3
        for k, v in expected.items():
            # the same program per device; only float summation order may differ
            np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6, err_msg=f"{name} {k}")


def test_the_seed_axis_takes_the_largest_device_count_that_divides_it():
    for num_seeds, expected in ((16, 8), (12, 6), (7, 7), (11, 1), (9, 3), (1, 1), (3, 3)):
        assert training.seed_device_count(num_seeds, 8) == expected, num_seeds
    assert training.seed_device_count(4, 1) == 1
    assert training.seed_mesh(4, jax.devices()[:1]) is None  # one device: nothing changes
