"""The headline report: five short experiments on a CPU, then ``OUT/REPORT.md`` linking them.

    python -m experiments demo [--out DIR] [--smoke]

Runs, through ``harness.run_experiment`` (each writes ``OUT/NAME/results.json``, its figures
and ``report.md``):

    vanishing        gradient norms vs lag at initialisation, one line per gain (full run)
    cliff            the one-unit loss surface, its wall and clipped/unclipped descent (full)
    clipping_sweep   clipping thresholds 0.1-10 x the median norm and none (shortened)
    mnist1d          the published GRU of the MNIST-1D ladder (the authors' model is
                     bidirectional: ``bigru``), shortened
    char_lm          a small GRU character model of Shakespeare, with a sample (shortened)

and writes ``OUT/REPORT.md``: a table of each experiment's headline numbers beside the papers',
links to every ``NAME/report.md``, the figures embedded (relative paths), the wall time of each
run and in total, and the environment. ``--smoke`` runs every experiment's smoke configuration
instead (seconds each; the report is written the same way).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

from experiments import harness

# (name, overrides for the demo, overrides on top of the experiment's SMOKE for --smoke)
PLAN = (
    ("vanishing", {}, {}),
    ("cliff", {}, {}),
    ("clipping_sweep", {"num_steps": 3000, "num_seeds": 4, "eval_examples": 2000}, {}),
    ("mnist1d", {"models": ("bigru",), "num_seeds": 1, "num_steps": 3000},
     {"models": ("bigru",)}),
    ("char_lm", {"models": ("gru",), "num_steps": 800, "sample_length": 300},
     {"models": ("gru",)}),
)


def _fmt(x, spec: str = ".3g") -> str:
    try:
        return format(float(x), spec)
    except (TypeError, ValueError):
        return str(x)


def _vanishing(m: dict) -> tuple[str, str]:
    gains = list(m["slopes"])
    ours = "log-slope of ‖dL_T/dh_t‖ per step, tanh (linear): " + ", ".join(
        f"g={g}: {_fmt(m['slopes'][g], '+.3f')} ({_fmt(m['slopes_linear'][g], '+.3f')})"
        for g in gains)
    paper = "linear = log g exactly; tanh ≤ log g (Pascanu et al. 2013): " + ", ".join(
        f"{_fmt(m['slope_theory_linear'][g], '+.3f')}" for g in gains)
    return ours, paper


def _cliff(m: dict) -> tuple[str, str]:
    ours = (f"max/median ‖∇E‖ = {_fmt(m['max_over_median_grad'])}; first step from the wall: "
            f"unclipped |Δθ| = {_fmt(m['unclipped_jump'])}, clipped {_fmt(m['clipped_jump'])}")
    paper = ("a wall of huge gradients; an unclipped step jumps far, a clipped one stays local "
             "(Pascanu et al. 2013, §3; qualitative)")
    return ours, paper


def _clipping_sweep(m: dict) -> tuple[str, str]:
    loss = ", ".join(f"{k}: {_fmt(v)}" for k, v in m["final_loss"].items())
    div = [k for k, v in m["diverged"].items() if v]
    ours = (f"test MSE by τ/median ‖g‖ ({loss}); diverged: {', '.join(div) or 'none'}; "
            f"median ‖g‖ = {_fmt(m['median_grad_norm'])}")
    paper = "training not very sensitive to τ, works for small τ (Pascanu et al. 2013, §3.2)"
    return ours, paper


def _mnist1d(m: dict) -> tuple[str, str]:
    ours = ", ".join(f"{k}: {_fmt(v, '.1%')}" for k, v in m["test_accuracy"].items())
    pub = m.get("published", {})
    paper = ", ".join(f"{k}: {_fmt(v, '.0%')}" for k, v in pub.items())
    return f"test accuracy {ours}", f"Greydanus & Kobak (2024): {paper}"


def _char_lm(m: dict) -> tuple[str, str]:
    ours = ", ".join(f"{k}: {_fmt(v, '.3f')}" for k, v in m["test_bpc"].items())
    paper = (f"baselines: unigram {_fmt(m['unigram_bpc'], '.2f')} bits, uniform "
             f"log2 V = {_fmt(m['uniform_bpc'], '.2f')} bits")
    return f"test bits/char {ours}", paper


HEADLINES = {"vanishing": _vanishing, "cliff": _cliff, "clipping_sweep": _clipping_sweep,
             "mnist1d": _mnist1d, "char_lm": _char_lm}


def headline(name: str, metrics: dict) -> tuple[str, str]:
    """(our numbers, the paper's) for the summary table; a note if the metrics lack a key."""
    try:
        return HEADLINES[name](metrics)
    except (KeyError, TypeError, ValueError) as err:
        return f"(no headline: metrics lack {err})", ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(out: Path, runs: list[dict], *, smoke: bool, total_seconds: float,
                 load: tuple[float, float] | None = None) -> Path:
    """Writes ``out/REPORT.md`` from the runs' results (``harness.run_experiment`` returns)."""
    env = harness.environment()
    lines = ["# rnn_jax — headline report", "",
             f"Generated {env['time_utc']} by `python -m experiments demo"
             f"{' --smoke' if smoke else ''}` in **{total_seconds:.0f} s** of wall time. "
             + ("Smoke configurations: the numbers below test the code paths, they are not "
                "results." if smoke else "Configurations are shortened for a CPU (see each "
                "section's config line); the full runs are `python -m experiments run NAME`."),
             "",
             "| experiment | ours | paper | wall time |", "|---|---|---|---|"]
    for r in runs:
        ours, paper = headline(r["name"], r["metrics"])
        lines.append(f"| [{r['name']}]({r['name']}/report.md) | {_cell(ours)} | {_cell(paper)} "
                     f"| {r['env']['wall_seconds']:.0f} s |")
    for r in runs:
        name = r["name"]
        lines += ["", f"## {name}", "",
                  f"[full report]({name}/report.md) · [results.json]({name}/results.json) · "
                  f"config: `{json.dumps(_changed(r))}`", ""]
        if name == "char_lm" and "sample" in r["metrics"]:
            lines += [f"Sample ({r['metrics'].get('best_model', '')}, temperature "
                      f"{r['config'].get('temperature')}):", "", "```",
                      str(r["metrics"]["sample"]).strip("\n"), "```", ""]
        for png in sorted((out / name).glob("*.png")):
            lines.append(f"![{name}: {png.stem}]({name}/{png.name})")
    keys = ("python", "platform", "jax", "jaxlib", "optax", "backend", "devices", "cpu_count",
            "git_commit")
    lines += ["", "## Environment", ""] + [f"- {k}: {env[k]}" for k in keys if k in env]
    if load is not None:
        lines.append(f"- load average (1 min) at start / end: {load[0]:.1f} / {load[1]:.1f} "
                     "(other processes share the CPU: wall times scale with it)")
    path = out / "REPORT.md"
    harness.write_atomic(path, "\n".join(lines) + "\n")
    return path


def _changed(result: dict) -> dict:
    """The config fields the demo or the smoke run set (vs the experiment's defaults)."""
    import dataclasses

    defaults = harness.to_jsonable(dataclasses.asdict(harness.load(result["name"]).Config()))
    return {k: v for k, v in result["config"].items() if defaults.get(k) != v}


def _loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


def main(out="results", smoke: bool = False, only=None) -> Path:
    """Runs the plan (``only``: a subset of its names) and writes ``out/REPORT.md``."""
    names = [p[0] for p in PLAN]
    if only is not None and (isinstance(only, str) or not set(only) <= set(names)):
        raise ValueError(f"only must be a subset of {names}, got {only!r}")
    out = Path(out)
    plan = [p for p in PLAN if only is None or p[0] in only]
    start, load0 = time.perf_counter(), _loadavg()
    runs = []
    for i, (name, demo_overrides, smoke_overrides) in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {name} ...", file=sys.stderr, flush=True)
        runs.append(harness.run_experiment(name, smoke_overrides if smoke else demo_overrides,
                                           smoke=smoke, out=out, echo=False))
        print(f"[{i}/{len(plan)}] {name} done in {runs[-1]['env']['wall_seconds']:.0f} s "
              f"({time.perf_counter() - start:.0f} s so far)", file=sys.stderr, flush=True)
    total = time.perf_counter() - start
    path = write_report(out, runs, smoke=smoke, total_seconds=total,
                        load=(load0, _loadavg()))
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"{stamp} wrote {path} ({total:.0f} s)", file=sys.stderr)
    return path
