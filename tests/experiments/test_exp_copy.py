"""The copy-memory experiment's smoke run (per-seed values and their spread), and its module
name next to the stdlib's copy."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments import harness, seed_stats  # noqa: E402

pytest.importorskip("matplotlib")


def test_smoke_writes_test_ce_per_model(tmp_path):
    harness.run_experiment("copy", smoke=True, out=tmp_path, echo=False)
    out = tmp_path / "copy"
    result = json.loads((out / "results.json").read_text())
    m, cfg = result["metrics"], result["config"]
    c, k = cfg["copy_len"], cfg["num_symbols"]
    assert m["baseline"] == pytest.approx(c * math.log(k) / (cfg["delay"] + 2 * c))
    assert set(m["test_ce"]) == set(cfg["models"])
    report = (out / "report.md").read_text()
    for name in cfg["models"]:
        ce, acc = m["test_ce_per_seed"][name], m["test_copy_accuracy_per_seed"][name]
        assert len(ce) == len(acc) == cfg["num_seeds"]
        assert all(0 <= a <= 1 for a in acc)
        for summary, values in ((m["test_ce"][name], ce), (m["test_copy_accuracy"][name], acc)):
            q1, med, q3 = np.percentile(values, [25, 50, 75])
            assert summary == pytest.approx({"median": med, "q1": q1, "q3": q3,
                                             "n": cfg["num_seeds"]})
        assert seed_stats.format_spread(m["test_ce"][name]) in report
    assert "median [Q1, Q3]" in report and "LSTM at this delay" in report
    assert (out / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_experiment_module_does_not_shadow_stdlib_copy():
    module = harness.load("copy")
    assert module.__name__ == "experiments.copy"
    assert copy.deepcopy({"a": [1]}) == {"a": [1]} and Path(copy.__file__).parent.name != (
        "experiments")
    root = Path(__file__).resolve().parents[2]
    code = ("import sys, copy, experiments.__main__; "
            "assert not any(p.endswith('experiments') for p in sys.path); print(copy.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         check=True)
    assert "experiments" not in out.stdout
