"""The vanishing-gradient experiment's smoke run: results, theory checks, figures, report."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import json  # noqa: E402
import math  # noqa: E402

import pytest  # noqa: E402

from experiments import harness  # noqa: E402

pytest.importorskip("matplotlib")


def test_smoke_run_writes_results_and_reproduces_the_theory(tmp_path):
    harness.run_experiment("vanishing", smoke=True, out=tmp_path, echo=False)
    out = tmp_path / "vanishing"
    result = json.loads((out / "results.json").read_text())
    m = result["metrics"]
    assert {"bound_holds", "slopes", "slope_monotone"} <= set(m)
    assert m["bound_holds"] is True and m["slope_monotone"] is True
    gains = result["config"]["gains"]
    assert set(m["slopes"]) == {f"{g:g}" for g in gains}
    for g in gains:  # linear: slope = log g; tanh: at most that
        key = f"{g:g}"
        assert m["slopes_linear"][key] == pytest.approx(math.log(g), abs=1e-4)
        assert m["slopes"][key] <= math.log(g) + 1e-4
        assert len(m["curves"]["tanh"][key]) == result["config"]["seq_len"]
    for name in ("grad_norm_vs_lag.png", "jacobian_and_slopes.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "log g" in report and "grad_norm_vs_lag.png" in report


def test_config_rejects_bad_values():
    module = harness.load("vanishing")
    with pytest.raises(ValueError, match="gains"):
        harness.make_config(module, {"gains": "0.5,-1"})
    with pytest.raises(ValueError, match="jacobian_batch"):
        harness.make_config(module, {"batch_size": 2, "jacobian_batch": 4})
