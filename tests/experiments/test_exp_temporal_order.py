"""The temporal-order experiment: smoke results, rho(U) logging, exact resume from checkpoints."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments import harness, seed_stats, training  # noqa: E402

pytest.importorskip("matplotlib")


def _metrics(tmp_path, name, overrides):
    harness.run_experiment("temporal_order", overrides, smoke=True, out=tmp_path / name,
                           echo=False)
    return json.loads((tmp_path / name / "temporal_order" / "results.json").read_text())


def test_smoke_writes_results_and_resumes_exactly(tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    first = _metrics(tmp_path, "a", {"checkpoint_dir": str(ckpt)})
    m, cfg = first["metrics"], first["config"]
    (t,) = cfg["seq_lens"]
    for mode in ("clip", "noclip"):
        rate = m["success_rate"][mode][str(t)]
        errors = m["test_error"][mode][str(t)]
        assert len(errors) == cfg["num_seeds"]
        assert rate == np.mean(np.asarray(errors) < cfg["success_error"])
        q1, med, q3 = np.percentile(errors, [25, 50, 75])
        assert m["test_error_spread"][mode][str(t)] == pytest.approx(
            {"median": med, "q1": q1, "q3": q3, "n": cfg["num_seeds"]})
        curves = m["curves"][mode][str(t)]
        assert curves["step"] == list(range(cfg["log_every"], cfg["num_steps"] + 1,
                                            cfg["log_every"]))
        rho = np.asarray(curves["spectral_radius"])
        assert rho.shape == (cfg["num_seeds"], len(curves["step"]))
        assert np.all(np.isfinite(rho) & (rho > 0))
        # per chunk, the largest pre-clipping norm bounds the mean
        assert np.all(np.asarray(curves["grad_norm_max"]) >= np.asarray(curves["grad_norm"]))
    assert m["chance_loss"] == pytest.approx(math.log(4))
    out = tmp_path / "a" / "temporal_order"
    assert (out / "success_rate.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / f"dynamics_T{t}.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "no clip" in report and "median [Q1, Q3]" in report
    assert f"T = {t}: with clipping" in report  # the verdict
    assert seed_stats.format_spread(m["test_error_spread"]["clip"][str(t)], ".3f") in report

    # interrupt: drop every checkpoint after the first, then run again from the same directory
    first_ckpt = cfg["checkpoint_every"]
    for run_dir in ckpt.iterdir():
        for step_dir in run_dir.iterdir():
            if step_dir.name.isdigit() and int(step_dir.name) > first_ckpt:
                shutil.rmtree(step_dir)
    chunks = []
    real_chunk = training._chunk

    def counting_chunk(keys, state, model, task, opt_cfg, batch_size, num_steps, *rest):
        chunks.append(num_steps)
        return real_chunk(keys, state, model, task, opt_cfg, batch_size, num_steps, *rest)

    monkeypatch.setattr(training, "_chunk", counting_chunk)
    second = _metrics(tmp_path, "b", {"checkpoint_dir": str(ckpt)})
    # only the steps after the kept checkpoint were trained again, for both modes
    assert sum(chunks) == 2 * (cfg["num_steps"] - first_ckpt)
    assert second["metrics"] == first["metrics"]
    steps = sorted(int(p.name) for p in (ckpt / f"T{t}_clip").iterdir() if p.name.isdigit())
    assert steps == [first_ckpt, cfg["num_steps"]]


def test_checkpoint_of_another_run_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    _metrics(tmp_path, "a", {"checkpoint_dir": str(ckpt), "num_steps": 5})
    with pytest.raises(ValueError, match="different run"):
        _metrics(tmp_path, "b", {"checkpoint_dir": str(ckpt), "num_steps": 5,
                                 "learning_rate": 0.05})


def test_schedule_is_checked_before_anything_runs():
    with pytest.raises(ValueError, match="checkpoint_every must be an int >= 0, got -1"):
        training.check_schedule(100, 30, -1)
    training.check_schedule(100, 30, 50)  # checkpoint_every is independent of log_every
    with pytest.raises(ValueError, match="seq_lens"):
        harness.make_config(harness.load("temporal_order"), {"seq_lens": "5"})
