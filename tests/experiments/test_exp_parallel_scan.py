"""The parallel_scan experiment: the smoke run writes its files with the promised metrics."""

import json

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import pytest  # noqa: E402

from experiments import harness, parallel_scan  # noqa: E402


def test_smoke_run_writes_results_figure_and_report(tmp_path):
    result = harness.run_experiment("parallel_scan", smoke=True, out=tmp_path, echo=False)
    out = tmp_path / "parallel_scan"
    saved = json.loads((out / "results.json").read_text())
    assert saved["metrics"]["records"] == result["metrics"]["records"]
    assert (out / "time_vs_T.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "T4" in report and "cpu" in report.lower()

    metrics, cfg = result["metrics"], harness.make_config(parallel_scan, smoke=True)
    records = metrics["records"]
    points = {(t, cfg.hidden_size) for t in cfg.lengths}
    points |= {(cfg.h_sweep_length, h) for h in cfg.hidden_sizes}
    assert len(records) == len(points) * len(cfg.methods)
    for rec in records:
        assert set(rec) >= {"method", "T", "H", "ms", "iterations", "converged", "max_abs_err"}
        assert rec["ms"] > 0 and rec["converged"]
        assert rec["max_abs_err"] <= 1e-5
        assert (rec["iterations"] >= 1) == (rec["method"] != "sequential")
    assert set(metrics["speedup"]) == {"deer", "quasi_deer"}
    for per_t in metrics["speedup"].values():
        assert sorted(int(t) for t in per_t) == sorted(cfg.lengths)


def test_bad_config_raises_before_running():
    with pytest.raises(ValueError, match="methods"):
        harness.make_config(parallel_scan, {"methods": "sequential,newton"})
    with pytest.raises(ValueError, match="repeats"):
        harness.make_config(parallel_scan, {"repeats": "0"})


@pytest.mark.parametrize("gain", [0, -1, 5, "x"])
def test_recurrent_gain_is_checked(gain):
    with pytest.raises(ValueError, match="recurrent_gain"):
        harness.make_config(parallel_scan, {"recurrent_gain": gain})
