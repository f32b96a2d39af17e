"""The adding experiment's smoke run: one test MSE per model and length, the 1/6 baseline."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments import harness  # noqa: E402

pytest.importorskip("matplotlib")


def test_smoke_writes_test_mse_per_model(tmp_path):
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
            assert m["test_mse"][name][str(t)] == pytest.approx(np.mean(per_seed))
            assert np.all(np.isfinite(per_seed)) and np.all(np.asarray(per_seed) > 0)
    assert (out / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "1/6" in (out / "report.md").read_text()


def test_unknown_model_is_refused_before_running():
    with pytest.raises(ValueError, match="models"):
        harness.make_config(harness.load("adding"), {"models": "irnn,transformer"})
