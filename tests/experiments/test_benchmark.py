"""The benchmark experiment's smoke run: the record schema, skips, the report, the rejection."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments import harness  # noqa: E402
from rnn_jax.bench import harness as bench  # noqa: E402
from rnn_jax.bench import peers  # noqa: E402

pytest.importorskip("matplotlib")


def test_smoke_run_writes_records_with_the_schema(tmp_path):
    harness.run_experiment("benchmark", smoke=True, out=tmp_path, echo=False)
    out = tmp_path / "benchmark"
    result = json.loads((out / "results.json").read_text())
    m, cfg = result["metrics"], result["config"]
    assert m["records"], "nothing was timed"
    for r in m["records"]:
        assert set(bench.RECORD_KEYS) <= set(r)
        assert r["impl"] == "rnn_jax" or r["impl"].split(":")[0] in (
            "rnn_jax", "flax_linen", "torch", "jax_experimental_rnn")
        assert r["mode"] in ("forward", "train") and r["cell"] in cfg["cells"]
        assert (r["B"], r["T"], r["H"]) == (4, 6, 8)
        assert r["ms"] > 0 and r["tok_s"] == pytest.approx(r["B"] * r["T"] * 1e3 / r["ms"])
        assert r["max_rel_err"] <= bench.FLOAT32_TOLERANCE
        if r["impl"].startswith(("rnn_jax", "flax")):
            assert r["compile_s"] > 0 and r["peak_bytes"] > 0
    modes = {r["mode"] for r in m["records"] if r["impl"] == "rnn_jax"}
    assert modes == {"forward", "train"}
    assert m["rejected"] == [] and m["failed"] == []
    if jax.default_backend() == "cpu":
        assert {"impl": "jax_experimental_rnn", "reason": "skipped: needs GPU"}.items() <= \
            m["skipped"][0].items()
    assert m["default_path"] == ["lstm: fused, unroll 1"]
    report = (out / "report.md").read_text()
    assert "| 4, 6, 8 |" in report and "Path `rnn_jax` (no options) ran" in report
    assert "rnn_jax default (float32)" in report or "rnn_jax default (tf32)" in report
    assert (out / "tokens_per_s.png").read_bytes()[:4] == b"\x89PNG"


def test_profile_breaks_the_default_step_down_by_operation(tmp_path):
    harness.run_experiment("benchmark", {"profile": True, "impls": ("rnn_jax", "torch"),
                                         "modes": ("train",)},
                           smoke=True, out=tmp_path, echo=False)
    out = tmp_path / "benchmark"
    m = json.loads((out / "results.json").read_text())["metrics"]
    (p,) = m["profiles"]  # the default path only, not torch
    assert (p["impl"], p["cell"], p["mode"], p["B"], p["T"], p["H"]) == (
        "rnn_jax", "lstm", "train", 4, 6, 8)
    assert p["path"] == "fused, unroll 1" and 0 < len(p["ops"]) <= 12
    assert [o["count"] for o in p["ops"] if o["kind"] == "loop"] == [1, 1]  # forward, BPTT
    per_step = [g for g in p["by_count"] if g["count"] == 6]
    assert per_step and per_step[0]["matmul_ms"] > 0  # h U and its transpose, every step
    report = (out / "report.md").read_text()
    assert "### Where rnn_jax's step goes" in report
    assert "distinct ops run once per time step" in report


def test_the_equivalence_check_rejects_a_wrong_implementation():
    """An implementation with the right shapes and wrong numbers (a scaled recurrent matrix)
    is rejected with its error and never timed."""
    good = peers.builder("rnn_jax:scan")

    def wrong(problem, data):
        params = dict(data["params"], U=1.5 * np.asarray(data["params"]["U"]))
        return good(problem, {**data, "params": params})

    out = bench.run_point(bench.Problem("lstm", "train", 3, 5, 4),
                          {"rnn_jax": peers.builder("rnn_jax"), "wrong": wrong},
                          warmup=0, repeats=2)
    assert [r["impl"] for r in out["records"]] == ["rnn_jax"]
    (rejected,) = out["rejected"]
    assert rejected["impl"] == "wrong" and rejected["max_rel_err"] > rejected["tolerance"]
    assert rejected["reason"] == "outputs differ from the reference"


def test_bad_config_fails_before_anything_runs():
    module = harness.load("benchmark")
    for bad, message in (({"suite": "tpu"}, "suite='tpu' is unknown"),
                         ({"cells": ("lstm", "rnn")}, "cells must be a non-empty subset"),
                         ({"impls": ("rnn_jax", "cudnn")}, "implementation 'cudnn' is unknown"),
                         ({"sizes": ("8x8",)}, "BxTxH"),
                         ({"profile": "maybe"}, "--profile expects a value of type bool"),
                         ({"profile": 1}, "profile must be true or false, got 1")):
        with pytest.raises(ValueError, match=message):
            harness.make_config(module, bad)
    cfg = harness.make_config(module, {"suite": "cpu", "cells": "lstm,gru", "impls": "torch"})
    assert cfg.cells == ("lstm", "gru") and cfg.impls == ("torch",)
