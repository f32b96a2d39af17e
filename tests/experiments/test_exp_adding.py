"""The adding experiment's smoke run: test MSE per seed and its spread per model and length."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments import harness, seed_stats  # noqa: E402

pytest.importorskip("matplotlib")


def test_smoke_writes_test_mse_spread_per_model(tmp_path):
    harness.run_experiment("adding", smoke=True, out=tmp_path, echo=False)
    out = tmp_path / "adding"
    result = json.loads((out / "results.json").read_text())
    m, cfg = result["metrics"], result["config"]
    assert m["baseline"] == pytest.approx(1 / 6)
    assert set(m["test_mse"]) == set(cfg["models"])
    for name in cfg["models"]:
        for t in cfg["seq_lens"]:
            per_seed = m["test_mse_per_seed"][name][str(t)]
            assert len(per_seed) == cfg["num_seeds"]
            q1, med, q3 = np.percentile(per_seed, [25, 50, 75])
            assert m["test_mse"][name][str(t)] == pytest.approx(
                {"median": med, "q1": q1, "q3": q3, "n": cfg["num_seeds"]})
            assert np.all(np.isfinite(per_seed)) and np.all(np.asarray(per_seed) > 0)
    assert (out / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "1/6" in report and "median [Q1, Q3]" in report
    assert all(f"T = {t}: " in report for t in cfg["seq_lens"])  # the verdict per length
    # the table shows each model's spread as the shared formatter writes it
    for name in cfg["models"]:
        for t in cfg["seq_lens"]:
            assert seed_stats.format_spread(m["test_mse"][name][str(t)]) in report


def test_trend_is_below_one_for_a_falling_curve_and_one_for_a_flat_one():
    falling = [np.linspace(1.0, 0.1, 40).tolist()] * 3
    assert seed_stats.trend(falling) < 0.5
    assert seed_stats.trend([[0.2] * 40, [0.3] * 40, [0.25] * 40]) == pytest.approx(1.0)
    assert seed_stats.reading(0.1, 1.0).startswith("learnt")
    assert "still falling" in seed_stats.reading(0.9, 0.5)
    assert "plateau" in seed_stats.reading(1.0, 1.0)
    assert "diverged" in seed_stats.reading(float("nan"), 1.0)


def test_unknown_model_is_refused_before_running():
    with pytest.raises(ValueError, match="models"):
        harness.make_config(harness.load("adding"), {"models": "irnn,transformer"})
