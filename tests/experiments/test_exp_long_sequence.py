"""The long_sequence experiment: the smoke run writes its files with the promised metrics."""

import json

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import pytest  # noqa: E402

from experiments import harness, long_sequence  # noqa: E402


def test_smoke_run_writes_results_figure_and_report(tmp_path):
    result = harness.run_experiment("long_sequence", smoke=True, out=tmp_path, echo=False)
    out = tmp_path / "long_sequence"
    saved = json.loads((out / "results.json").read_text())
    assert saved["metrics"]["records"] == result["metrics"]["records"]
    assert (out / "memory_vs_T.png").stat().st_size > 0
    assert "| T | k |" in (out / "report.md").read_text()

    metrics, cfg = result["metrics"], harness.make_config(long_sequence, smoke=True)
    records = metrics["records"]
    assert len(records) == len(cfg.lengths) * len(long_sequence.VARIANTS)
    by = {(r["variant"], r["T"]): r for r in records}
    for rec in records:
        assert rec["loss_mib"] > 0 and rec["bptt_mib"] > 0
        timed = rec["T"] <= {"default": cfg.default_time_max, "per_step": cfg.per_step_time_max,
                             "segments": max(cfg.lengths)}[rec["variant"]]
        assert (rec["step_s"] is not None and rec["step_s"] > 0) == timed
    # even at T = 256 the segmented BPTT keeps less than the default
    longest = max(cfg.lengths)
    assert by[("segments", longest)]["bptt_mib"] < by[("default", longest)]["bptt_mib"]
    assert metrics["slope"]["default/bptt_mib"] > 0.8  # linear in T
    assert len(metrics["k_sweep"]) == len(cfg.k_sweep)


def test_slope_and_bad_config():
    assert long_sequence.slope([10, 100, 1000], [3, 30, 300]) == pytest.approx(1.0)
    assert long_sequence.slope([100, 10_000], [1, 10]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="lengths"):
        harness.make_config(long_sequence, {"lengths": "0,10"})
    with pytest.raises(ValueError, match="repeats"):
        harness.make_config(long_sequence, {"repeats": "0"})


def test_experiments_take_remat_as_a_config_field():
    from experiments import adding, copy

    assert harness.remat_option("segments") == "segments"
    assert harness.remat_option("True") is True and harness.remat_option("false") is False
    assert harness.remat_option("400") == 400
    for module in (adding, copy):
        assert harness.make_config(module, {"remat": "segments"}).remat == "segments"
        with pytest.raises(ValueError, match="remat"):
            harness.make_config(module, {"remat": "0"})
        with pytest.raises(ValueError, match="remat"):
            harness.make_config(module, {"remat": "sqrt"})
