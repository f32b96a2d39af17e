"""The MNIST-1D ladder's smoke run, the logistic-regression model, and the package name."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments import harness  # noqa: E402

pytest.importorskip("matplotlib")
pytest.importorskip("mnist1d")


def test_smoke_writes_test_accuracy_per_model(tmp_path):
    harness.run_experiment("mnist1d", smoke=True, out=tmp_path, echo=False)
    out = tmp_path / "mnist1d"
    result = json.loads((out / "results.json").read_text())
    m, cfg = result["metrics"], result["config"]
    assert set(m["test_accuracy"]) == set(cfg["models"])
    for name in cfg["models"]:
        per_seed = m["test_accuracy_per_seed"][name]
        assert len(per_seed) == cfg["num_seeds"]
        # accuracies over 1000 test sequences are multiples of 1/1000
        assert np.allclose(np.asarray(per_seed) * 1000, np.round(np.asarray(per_seed) * 1000))
        for key in ("test_accuracy", "best_test_accuracy"):
            values = m[f"{key}_per_seed"][name]
            q1, med, q3 = np.percentile(values, [25, 50, 75])
            assert m[f"{key}_spread"][name] == pytest.approx(
                {"median": med, "q1": q1, "q3": q3, "n": cfg["num_seeds"]})
            assert m[key][name] == pytest.approx(med)
        best = np.max(m["curves"][name]["test_accuracy"], axis=1)  # [S] over records
        assert m["best_test_accuracy_per_seed"][name] == pytest.approx(best.tolist())
    assert (out / "accuracy_curves.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "91 %" in report and "median [Q1, Q3]" in report
    spread = m["test_accuracy_spread"][cfg["models"][0]]
    assert f"| {cfg['num_seeds']} | {spread['median']:.3f} [{spread['q1']:.3f}, " in report


def test_logistic_is_a_linear_map_of_the_flattened_sequence():
    exp = harness.load("mnist1d")
    model = exp.Logistic(seq_len=5, output_size=3)
    params = model.init(jax.random.key(0), 2)
    xs = jax.random.normal(jax.random.key(1), (4, 5, 2))
    want = np.asarray(xs).reshape(4, 10) @ np.asarray(params["V"]) + np.asarray(params["c"])
    np.testing.assert_allclose(model.apply(params, xs), want, rtol=1e-5, atol=1e-6)


def test_experiment_module_is_not_the_mnist1d_package():
    import mnist1d

    exp = harness.load("mnist1d")
    assert exp.__name__ == "experiments.mnist1d"
    assert mnist1d.__file__ != exp.__file__ and hasattr(mnist1d, "data")
