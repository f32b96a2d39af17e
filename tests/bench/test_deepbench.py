"""DeepBench's RNN training set: its rows, the skip-input recurrence, FLOPs, the runner."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import importlib.util  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rnn_jax as rj  # noqa: E402
from experiments import harness as exp_harness  # noqa: E402
from rnn_jax.bench import deepbench  # noqa: E402

HAS_TORCH = importlib.util.find_spec("torch") is not None


def tiny(cell, h=6, b=2, t=4):
    return deepbench.Row(cell, h, b, t, 1.0, 3.0, "test")


def test_the_53_rows_and_those_a_cpu_runs():
    rows = deepbench.rows()
    assert len(rows) == 53
    counts = {c: sum(r.cell == c for r in rows) for c in ("elman_relu", "lstm", "gru")}
    assert counts == {"elman_relu": 12, "lstm": 22, "gru": 19}
    assert min(r.hidden for r in rows if r.cell == "lstm") == 256
    assert max(r.timesteps for r in rows) == 1500
    fits = [(r.cell, r.hidden, r.batch, r.timesteps) for r in rows if r.fits_cpu()]
    assert fits == [("lstm", 256, 16, 150), ("lstm", 256, 32, 150), ("lstm", 256, 64, 150),
                    ("gru", 512, 32, 1)]
    first = rows[0]
    assert (first.v100_fwd_ms, first.v100_total_ms) == (4.201, 7.67)


def test_flops_count_the_recurrent_products():
    row = deepbench.Row("lstm", 256, 16, 150, 4.542, 9.836, "x")
    assert row.gates == 4 and row.flops("forward") == 2 * 16 * 150 * 256 * 1024
    assert row.flops("train") == 3 * row.flops("forward")
    assert tiny("gru").gates == 3 and tiny("elman_relu").gates == 1


@pytest.mark.parametrize("cell", ["elman_relu", "gru"])
def test_skip_input_is_the_runner_with_identity_input_weights(cell):
    """Feeding u = [x, ..., x] to the recurrence computes rj.rnn with W = stacked identities,
    the function DeepBench times (its input enters every gate directly)."""
    row = tiny(cell)
    data = deepbench.problem_data(row)
    got = deepbench.recurrence(row, "forward", data, "highest")
    hs = got.result(got.step())["hs"]
    params = {**data["params"], "W": np.tile(np.eye(row.hidden, dtype=np.float32),
                                             (1, row.gates))}
    with jax.default_matmul_precision("highest"):
        want = rj.rnn(deepbench._cell(row), params, data["x"], method="scan")[0]
    np.testing.assert_allclose(hs, np.asarray(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["forward", "train"])
def test_run_row_checks_and_times_every_implementation(mode):
    out = deepbench.run_row(tiny("lstm"), mode, warmup=0, repeats=2)
    assert out["rejected"] == [] and out["failed"] == []
    impls = {r["impl"]: r for r in out["records"]}
    assert set(impls) == ({"rnn_jax:recurrence", "torch"} if HAS_TORCH
                          else {"rnn_jax:recurrence"})
    for r in impls.values():
        assert r["tflops"] == pytest.approx(tiny("lstm").flops(mode) / (r["ms"] * 1e9))
        assert r["v100_ms"] == (1.0 if mode == "forward" else 3.0)
        assert r["max_rel_err"] < 1e-4


def test_benchmark_suite_deepbench_config():
    module = exp_harness.load("benchmark")
    cfg = exp_harness.make_config(module, {"suite": "deepbench", "cells": "lstm,gru"})
    rows = module.deepbench_rows(cfg)
    if jax.default_backend() == "cpu":
        assert [(r.cell, r.hidden) for r in rows] == [("lstm", 256)] * 3 + [("gru", 512)]
    with pytest.raises(ValueError, match="impls for deepbench"):
        exp_harness.make_config(module, {"suite": "deepbench", "impls": "flax_linen"})
    report = module.report({"suite": "deepbench", "threads": 2, "records": [],
                            "load_average": {"start": [1.0], "end": [2.0]},
                            "skipped": [], "failed": [], "rejected": []}, cfg)
    assert "skip-input" in report


def test_a_budget_runs_the_cheapest_rows_first_and_skips_the_rest():
    rows = [tiny("lstm", b=4), tiny("gru", b=2)]
    spent = deepbench.run_suite(rows, ("forward",), ("rnn_jax:recurrence",), repeats=1,
                                budget_s=0.0)
    assert spent["records"] == [] and len(spent["skipped"]) == 2
    assert {s["reason"] for s in spent["skipped"]} == {"skipped: time budget spent"}
    assert [r["cell"] for r in spent["rows"]] == ["gru", "lstm"]  # fewer FLOPs first
    done = deepbench.run_suite(rows, ("forward",), ("rnn_jax:recurrence",), repeats=1,
                               budget_s=600.0)
    assert len(done["records"]) == 2 and done["skipped"] == []


def test_budget_is_checked_and_only_for_deepbench():
    module = exp_harness.load("benchmark")
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="budget_s must be a finite number"):
            exp_harness.make_config(module, {"suite": "deepbench", "budget_s": bad})
    with pytest.raises(ValueError, match="applies to suite 'deepbench' only"):
        exp_harness.make_config(module, {"suite": "quick", "budget_s": 10.0})
