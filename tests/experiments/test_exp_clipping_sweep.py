"""The clipping sweep: smoke results, exact resume, and the traced threshold's optimizer."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments import clipping_sweep as cs  # noqa: E402
from experiments import harness, training  # noqa: E402
from rnn_jax.tasks import Adding  # noqa: E402
from rnn_jax.training import checkpoint, train  # noqa: E402

pytest.importorskip("matplotlib")


def _result(tmp_path, name, overrides):
    harness.run_experiment("clipping_sweep", overrides, smoke=True, out=tmp_path / name,
                           echo=False)
    return json.loads((tmp_path / name / "clipping_sweep" / "results.json").read_text())


def test_smoke_writes_one_result_per_multiple_and_resumes_exactly(tmp_path):
    ckpt = tmp_path / "ckpt"
    # checkpoint_every=6 with log_every=5: the checkpoint at 6 falls inside a logging window
    flags = {"checkpoint_dir": str(ckpt), "checkpoint_every": 6}
    first = _result(tmp_path, "a", flags)
    m, cfg = first["metrics"], first["config"]
    keys = ["0.1", "0.5", "1", "5", "10", "inf"]
    for name in ("final_loss", "clip_fraction", "diverged", "threshold"):
        assert list(m[name]) == keys
    median = m["median_grad_norm"]
    assert median > 0 and median == m["calibration"]["median"]
    for k in keys[:-1]:
        assert m["threshold"][k] == pytest.approx(float(k) * median, rel=1e-6)
    assert m["threshold"]["inf"] == "inf"
    assert m["clip_fraction"]["inf"] == 0.0  # tau = inf never clips
    assert m["clip_fraction"]["0.1"] >= m["clip_fraction"]["10"]
    for k in keys:
        per_seed = m["final_loss_per_seed"][k]
        assert len(per_seed) == cfg["num_seeds"]
        for name in ("final_loss", "clip_fraction"):
            values = np.asarray(m[f"{name}_per_seed"][k], float)
            assert values.shape == (cfg["num_seeds"],)
            finite = values[np.isfinite(values)]
            q1, med, q3 = np.percentile(finite, [25, 50, 75])
            assert m[f"{name}_spread"][k] == pytest.approx(
                {"median": med, "q1": q1, "q3": q3, "n": finite.size})
            assert m[name][k] == pytest.approx(med)
        bound = cfg["divergence_factor"] / 6
        assert m["diverged"][k] == any(
            s > 0 or not math.isfinite(v) or v > bound
            for s, v in zip(m["skipped_steps"][k], per_seed, strict=True))
    assert m["divergence_bound"] == pytest.approx(cfg["divergence_factor"] / 6)
    out = tmp_path / "a" / "clipping_sweep"
    for png in ("clipping_sweep.png", "loss_curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "median ||g||" in report and "test MSE median [Q1, Q3]" in report
    inf = m["final_loss_spread"]["inf"]
    assert f"| {inf['n']}/{cfg['num_seeds']} | {inf['median']:.4g} [{inf['q1']:.4g}, " in report

    # interrupt after the checkpoint at 6, run again from the same directory: same numbers
    assert checkpoint.all_steps(ckpt) == [6, 10]
    shutil.rmtree(ckpt / "10")
    second = _result(tmp_path, "b", flags)
    assert second["metrics"] == first["metrics"]


def test_traced_threshold_matches_the_optimizer_factory():
    # One vmapped program over taus equals train.train with a static threshold (clip "none" for
    # tau = inf). Smoke shapes, so the sweep's compiled chunk is reused from the test above.
    cfg = harness.make_config(cs, {}, smoke=True)
    task, model = Adding(seq_len=cfg.seq_len), cs.make_model(cfg)
    keys = training.seed_keys(cfg.seed, cfg.num_seeds)
    tau, n = 0.05, cfg.log_every
    taus = jnp.asarray([tau, jnp.inf] + [1.0] * (len(cfg.multiples) - 2))
    state = cs._stacked_init(keys, model, task, cfg)
    got, m = cs._chunk(keys, taus, state, model, task, cfg.learning_rate, cfg.batch_size, n)
    summary, norms = cs.window_summary(m), m["grad_norm"]
    for row, clip in ((0, "global_norm"), (1, "none")):
        opt = train.OptimizerConfig("sgd", cfg.learning_rate, clip=clip, clip_threshold=tau)
        want, metrics = jax.jit(lambda k, opt=opt: train.train(
            k, model, task, opt, num_steps=n, batch_size=cfg.batch_size))(keys[0])
        for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params), strict=True):
            np.testing.assert_allclose(a[row, 0], b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(norms[row, 0], metrics["grad_norm"], rtol=1e-5)
        np.testing.assert_allclose(summary["clipped"][row, 0],
                                   np.mean(np.asarray(metrics["clipped"])))
    assert float(summary["clipped"][1, 0]) == 0.0


def test_bad_configs_are_refused_before_running():
    module = harness.load("clipping_sweep")
    with pytest.raises(ValueError, match="multiples"):
        harness.make_config(module, {"multiples": "0.1,0,inf"})
    with pytest.raises(ValueError, match="checkpoint_every must be an int >= 0, got -1"):
        harness.make_config(module, {"checkpoint_every": -1})
    harness.make_config(module, {"log_every": 7, "checkpoint_every": 10})  # independent
