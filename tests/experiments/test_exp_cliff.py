"""The one-unit cliff experiment's smoke run: results, the wall, clipping, figures, report."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments import harness, seed_stats  # noqa: E402

pytest.importorskip("matplotlib")


def test_smoke_run_writes_results_and_shows_the_cliff(tmp_path):
    harness.run_experiment("cliff", smoke=True, out=tmp_path, echo=False)
    out = tmp_path / "cliff"
    result = json.loads((out / "results.json").read_text())
    m, cfg = result["metrics"], result["config"]
    assert {"max_over_median_grad", "unclipped_jump", "clipped_jump"} <= set(m)
    assert m["max_over_median_grad"] > 10  # the wall stands out even on a coarse grid
    assert m["clipped_jump"] <= cfg["learning_rate"] * cfg["clip_threshold"] * (1 + 1e-5)
    assert m["unclipped_jump"] > 5 * m["clipped_jump"]
    assert m["wall_theta"][1] == pytest.approx(m["wall_b_theory"], abs=0.01)
    bif = m["bifurcation"]
    lo, hi = sorted(bif["saddle_node_b"])
    assert lo == pytest.approx(-2.6556, abs=1e-3) and hi == pytest.approx(-2.3444, abs=1e-3)
    # outside [lo, hi] every x_0 reaches the same attractor
    b, x_final = np.asarray(bif["b"]), np.asarray(bif["x_final"])
    outside = (b < lo - 0.05) | (b > hi + 0.05)
    assert np.ptp(x_final[outside], axis=1).max() < 1e-3
    for name in ("cliff_surface.png", "bifurcation.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    starts = m["starts"]
    assert np.shape(starts["theta0"]) == (cfg["num_starts"], 2)
    w0 = np.asarray(starts["theta0"])
    # every start sits on the wall b = x_0 - w sigma(x_0) (to the line's resolution)
    wall = cfg["x0"] - w0[:, 0] / (1 + np.exp(-cfg["x0"]))
    assert np.abs(w0[:, 1] - wall).max() < 0.01
    for name in ("unclipped", "clipped"):
        for key in ("first_jump", "final_loss"):
            values = starts[name][key]["per_start"]
            assert len(values) == cfg["num_starts"]
            q1, med, q3 = np.percentile(values, [25, 50, 75])
            assert starts[name][key]["spread"] == pytest.approx(
                {"median": med, "q1": q1, "q3": q3, "n": cfg["num_starts"]})
    clipped = np.asarray(starts["clipped"]["first_jump"]["per_start"])
    assert clipped.max() <= cfg["learning_rate"] * cfg["clip_threshold"] * (1 + 1e-5)
    # the paper's point holds from every wall start, not only the one at w = wall_w
    assert min(starts["unclipped"]["first_jump"]["per_start"]) > 5 * clipped.max()
    report = (out / "report.md").read_text()
    assert "clipped" in report
    s = starts["clipped"]["first_jump"]["spread"]
    assert f"| clipped | {cfg['num_starts']} | {seed_stats.format_spread(s)} |" in report


def test_model_is_the_papers_recurrence():
    cliff = harness.load("cliff")
    cfg = cliff.Config(seq_len=3)
    w, b, x = 2.0, -0.5, 0.5
    for _ in range(3):
        x = w / (1 + np.exp(-x)) + b
    got = cliff.loss(jax.numpy.array([w, b]), cfg)
    assert float(got) == pytest.approx((1 / (1 + np.exp(-x)) - 0.7) ** 2, rel=1e-5)
