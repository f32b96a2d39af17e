"""The remedies experiment's smoke run: every model on copy and adding, seeds, spread, horizon."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments import harness, remedies  # noqa: E402

pytest.importorskip("matplotlib")


def test_smoke_run_reports_seeds_spread_ranking_and_horizons(tmp_path):
    result = harness.run_experiment("remedies", smoke=True, out=tmp_path, echo=False)
    cfg = harness.make_config(remedies, smoke=True)
    m = result["metrics"]
    assert list(m["problems"]) == ["copy_T6", "adding_T8"]
    for problem, r in m["problems"].items():
        assert sorted(m["ranking"][problem]) == sorted(cfg.models)
        for name in cfg.models:
            v = r["models"][name]
            losses = v["test_loss_per_seed"]
            assert len(losses) == cfg.num_seeds and all(np.isfinite(losses))
            q = v["test_loss"]
            assert q["q1"] <= q["median"] <= q["q3"]
            assert q["median"] == pytest.approx(float(np.median(losses)))
            assert v["normalized"] == pytest.approx(q["median"] / r["baseline"])
            for h in v["horizon_init_per_seed"] + v["horizon_trained_per_seed"]:
                assert 0 <= h <= r["seq_len"]
            assert np.asarray(v["curve"]["loss"]).shape == (cfg.num_seeds, 2)
        ranked = [r["models"][n]["test_loss"]["median"] for n in m["ranking"][problem]]
        assert ranked == sorted(ranked)
    out = tmp_path / "remedies"
    assert json.loads((out / "results.json").read_text())["name"] == "remedies"
    assert (out / "curves.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "| rank | model |" in report and "copy, T = 6" in report


def test_horizon_is_full_for_identity_and_short_for_a_contracting_cell():
    """The horizon measures what it claims: no decay over T for U = I with a linear cell, and
    a short horizon for a strongly contracting tanh cell."""
    from rnn_jax.cells import Elman
    from rnn_jax.model import SequenceModel

    xs = jax.random.normal(jax.random.key(1), (4, 30, 2))
    for cell, expect_full in ((Elman(8, activation="identity", recurrent_init="identity"), True),
                              (Elman(8, recurrent_gain=0.1), False)):
        model = SequenceModel(cell, 1, readout="last")
        params = model.init(jax.random.key(0), 2)
        h = int(remedies.horizon(model, params, xs, 1e-3))
        assert (h == 30) if expect_full else (h < 10), (cell, h)


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="models"):
        remedies.Config(models=("no_such_model",))
    with pytest.raises(ValueError, match="copy_lens and adding_lens"):
        remedies.Config(copy_lens=(), adding_lens=())
    with pytest.raises(ValueError, match="horizon_eps"):
        remedies.Config(horizon_eps=0.0)
    with pytest.raises(ValueError, match="adding_lens"):
        remedies.Config(adding_lens=(200, 200))
