"""Benchmark: forward and train-step speed of rnn_jax against flax.linen, PyTorch and cuDNN.

Sweeps sizes (B, T, H with I = H) x cell (elman, lstm, gru) x mode (forward; train = the loss
mean(h^2) and its gradient for every weight, i.e. BPTT) x implementation, all on the same
weights and inputs. Each implementation is checked against the reference before it is timed
(``rnn_jax.bench.harness.run_point``); implementations are interleaved call by call and the
median of ``repeats`` synchronised calls is reported, compile time separately.

    python -m experiments run benchmark --suite quick|cpu|gpu [--cells lstm,gru] [--impls ...]
        [--profile true]      (also: where rnn_jax's step spends its time, op by op)
    python -m experiments run benchmark --suite deepbench [--cells lstm] [--modes train]
        [--budget_s 240]
        (Baidu's DeepBench RNN training set, the recurrence alone, beside its V100 times:
        ``rnn_jax.bench.deepbench``; off a GPU only its H = 256 LSTM and H = 512 GRU rows;
        with a budget, cheapest rows first and the rest recorded as skipped)

Implementation names: ``rnn_jax`` (``rj.rnn`` with no options), ``rnn_jax:<method>[-u<unroll>]
[-highest]`` (method: auto, scan, fused, pallas, cudnn, deer, quasi_deer), ``flax_linen``,
``torch``, ``torch:tf32``, ``jax_experimental_rnn``. An implementation that fails is listed
with its error under ``failed`` and the suite goes on.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import numpy as np

from rnn_jax.bench import deepbench, harness, peers

SUITE_IMPLS = {
    "quick": ("rnn_jax", "rnn_jax:scan", "flax_linen", "torch", "jax_experimental_rnn"),
    "cpu": ("rnn_jax", "rnn_jax:scan", "rnn_jax:scan-u8", "rnn_jax:fused-u4", "flax_linen",
            "torch", "jax_experimental_rnn"),
    "gpu": ("rnn_jax", "rnn_jax:scan", "rnn_jax:scan-u8", "rnn_jax:fused-u8",
            "rnn_jax:auto-highest", "rnn_jax:cudnn", "flax_linen", "torch", "torch:tf32",
            "jax_experimental_rnn"),
}
# The issue's measurements of one train step (ms): {suite: {(B, T, H): {cell: {impl: ms}}}}.
# gpu: an H100 ("scan" = the best plain lax.scan: projection hoisted, unroll 8); cpu: 2 cores.
ISSUE_MS = {
    "gpu": {
        (64, 256, 128): {"elman": {"cudnn": 1.0, "scan": 2.3, "flax": 6.5},
                         "lstm": {"cudnn": 1.7, "flax": 12.1}},
        (64, 512, 512): {"elman": {"cudnn": 17.5, "scan": 6.9, "flax": 16.6},
                         "lstm": {"cudnn": 20.9, "flax": 37.9}},
        (64, 512, 1024): {"elman": {"cudnn": 19.0, "scan": 11.9, "flax": 22.6},
                          "lstm": {"cudnn": 28.3, "flax": 74.6}},
        (256, 512, 1024): {"elman": {"cudnn": 26.4, "scan": 23.6, "flax": 36.6},
                           "lstm": {"cudnn": 52.8, "flax": 104.7}},
        (16, 2048, 256): {"elman": {"cudnn": 8.7, "scan": 18.0, "flax": 52.5},
                          "lstm": {"cudnn": 59.4, "flax": 94.1}},
    },
    "cpu": {
        (32, 128, 128): {"elman": {"torch": 13.1, "scan": 10.2, "flax": 11.6},
                         "lstm": {"torch": 21.5, "scan": 56.3, "flax": 42.9}},
        (32, 256, 256): {"elman": {"torch": 59.0, "scan": 78.5, "flax": 96.5},
                         "lstm": {"torch": 190.5, "scan": 296.6, "flax": 249.9}},
        (8, 1024, 64): {"elman": {"torch": 50.5, "scan": 11.7, "flax": 14.9},
                        "lstm": {"torch": 19.7, "scan": 58.9, "flax": 54.9}},
    },
}


@dataclasses.dataclass(frozen=True)
class Config:
    """A suite; ``impls`` and ``sizes`` ("BxTxH") empty mean the suite's own lists."""

    suite: str = "quick"  # named set of sizes and implementations: quick, cpu or gpu
    cells: tuple[str, ...] = harness.CELLS  # cells to time: elman, lstm, gru
    impls: tuple[str, ...] = ()  # implementations to time (empty: the suite's)
    modes: tuple[str, ...] = harness.MODES  # forward (outputs only) and/or train (forward + BPTT)
    sizes: tuple[str, ...] = ()  # problem sizes as BxTxH (empty: the suite's)
    repeats: int = 20  # timed calls per implementation (the median is reported)
    warmup: int = 3  # untimed calls before timing (compilation, caches)
    seed: int = 0
    # also break rnn_jax's step down by XLA operation (rnn_jax.bench.op_profile)
    profile: bool = False
    # deepbench only: seconds for the suite, rows cheapest first, the rest skipped (0: no limit)
    budget_s: float = 0.0

    def __post_init__(self):
        if self.suite not in (*harness.SUITES, "deepbench"):
            raise ValueError(f"suite={self.suite!r} is unknown; expected one of "
                             f"{sorted(harness.SUITES) + ['deepbench']}")
        for name, allowed in (("cells", harness.CELLS), ("modes", harness.MODES)):
            value = getattr(self, name)
            if not value or not set(value) <= set(allowed):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {value}")
        if self.suite == "deepbench":
            if not set(self.impls) <= set(deepbench.IMPLS):
                raise ValueError(f"impls for deepbench must be a subset of {deepbench.IMPLS}, "
                                 f"got {self.impls}")
        else:
            peers.get_builders(self.impls)  # unknown names fail here, before any run
        for size in self.sizes:
            harness.parse_size(size)
        if not isinstance(self.profile, bool):
            raise ValueError(f"profile must be true or false, got {self.profile!r}")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {self.repeats}, "
                             f"{self.warmup}")
        if not self.budget_s >= 0 or self.budget_s == float("inf"):
            raise ValueError(f"budget_s must be a finite number >= 0 (0: no limit), got "
                             f"{self.budget_s}")
        if self.budget_s and self.suite != "deepbench":
            raise ValueError(f"budget_s applies to suite 'deepbench' only, got suite "
                             f"{self.suite!r}")


SMOKE = {"sizes": ("4x6x8",), "cells": ("lstm",), "repeats": 2, "warmup": 1}


def sizes_of(cfg: Config) -> list[tuple[int, int, int]]:
    if cfg.sizes:
        return [harness.parse_size(s) for s in cfg.sizes]
    return list(harness.SUITES[cfg.suite])


def speedups(records: list) -> list[dict]:
    """Per point, other / rnn_jax for flax_linen and torch (> 1: rnn_jax is faster).

    ``vs_<impl>`` divides the medians, ``vs_<impl>_min`` the fastest samples (less sensitive to
    load on a shared machine).
    """
    points = {}
    for r in records:
        points.setdefault((r["cell"], r["mode"], r["B"], r["T"], r["H"]), {})[r["impl"]] = r
    rows = []
    for (cell, mode, b, t, h), by_impl in points.items():
        if "rnn_jax" not in by_impl:
            continue
        ours = by_impl["rnn_jax"]["ms"]
        row = {"cell": cell, "mode": mode, "B": b, "T": t, "H": h, "rnn_jax_ms": ours,
               "fastest": min(by_impl, key=lambda k: by_impl[k]["ms"])}
        for other in ("flax_linen", "torch"):
            if other in by_impl:
                row[f"vs_{other}"] = by_impl[other]["ms"] / ours
                row[f"vs_{other}_min"] = by_impl[other]["ms_min"] / by_impl["rnn_jax"]["ms_min"]
        rows.append(row)
    return rows


def deepbench_rows(cfg: Config) -> list:
    """DeepBench's rows for ``cfg.cells`` (elman = its ReLU RNN); off a GPU, those that fit."""
    names = {"elman": "elman_relu", "lstm": "lstm", "gru": "gru"}
    import jax

    gpu = jax.default_backend() == "gpu"
    return [r for r in deepbench.rows() if r.cell in {names[c] for c in cfg.cells}
            and (gpu or r.fits_cpu())]


def run(cfg: Config) -> dict:
    if cfg.suite == "deepbench":
        load_start = os.getloadavg()
        out = deepbench.run_suite(deepbench_rows(cfg), cfg.modes,
                                  cfg.impls or deepbench.IMPLS, warmup=cfg.warmup,
                                  repeats=cfg.repeats, budget_s=cfg.budget_s or None)
        return {**out, "suite": "deepbench", "threads": harness.cpu_threads(),
                "load_average": {"start": list(load_start), "end": list(os.getloadavg())}}
    impls = cfg.impls or SUITE_IMPLS[cfg.suite]
    builders = peers.get_builders(impls)
    load_start = os.getloadavg()
    records, skipped, rejected, failed, profiles = [], [], [], [], []
    for b, t, h in sizes_of(cfg):
        for cell in cfg.cells:
            for mode in cfg.modes:
                problem = harness.Problem(cell, mode, b, t, h, seed=cfg.seed)
                out = harness.run_point(problem, builders, warmup=cfg.warmup,
                                      repeats=cfg.repeats, seed=cfg.seed,
                                      profile=("rnn_jax",) if cfg.profile else ())
                records += out["records"]
                skipped += out["skipped"]
                rejected += out["rejected"]
                failed += out["failed"]
                profiles += out["profiles"]
    spread = [(r["ms_q75"] - r["ms_q25"]) / r["ms"] for r in records]
    metrics = {
        "records": records, "skipped": skipped, "rejected": rejected, "failed": failed,
        "profiles": profiles,
        "speedups": speedups(records), "suite": cfg.suite, "impls": list(impls),
        "sizes": [list(s) for s in sizes_of(cfg)], "threads": harness.cpu_threads(),
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "median_relative_iqr": float(np.median(spread)) if spread else None,
        "default_path": sorted({f"{r['cell']}: {r['path']}" for r in records
                                if r["impl"] == "rnn_jax"}),
    }
    if "torch" in " ".join(impls) and importlib.util.find_spec("torch") is not None:
        import torch

        metrics["torch_threads"] = torch.get_num_threads()
    return metrics


def _fmt_ms(x):
    return "—" if x is None else (f"{x:.3g}" if x < 10 else f"{x:.1f}")


def report(metrics: dict, cfg: Config) -> str:
    if metrics["suite"] == "deepbench":
        load = metrics["load_average"]
        return "\n".join([f"{metrics['threads']} CPU threads for XLA; load average (1 min) "
                          f"{load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the "
                          f"end; median of {cfg.repeats} interleaved samples.", ""]
                         + deepbench.report_lines(metrics))
    records = metrics["records"]
    impls = [i for i in metrics["impls"] if any(r["impl"] == i for r in records)]
    device = sorted({r["device"] for r in records if r["impl"].startswith("rnn_jax")})
    lines = [
        f"Suite `{metrics['suite']}` on {', '.join(device) or '?'}; {metrics['threads']} CPU "
        f"threads for XLA" + (f", torch.get_num_threads() = {metrics['torch_threads']}"
                              if "torch_threads" in metrics else "") + ".",
        f"Median of {cfg.repeats} interleaved samples after {cfg.warmup} warm-up calls; float32 "
        f"(JAX's 'default' matmul precision may use TF32 on recent GPUs); train step = mean(h^2) "
        f"and its gradient w.r.t. all weights (BPTT).",
        f"Load average (1 min) {metrics['load_average']['start'][0]:.1f} at the start, "
        f"{metrics['load_average']['end'][0]:.1f} at the end; median interquartile range of "
        f"the repeats: {100 * (metrics['median_relative_iqr'] or 0):.0f}% of the median.",
        "", "Path `rnn_jax` (no options) ran: " + "; ".join(metrics["default_path"]) + ".",
        "Matmul precision per implementation: " + "; ".join(sorted(
            {f"{r['impl']} {r['precision']} ({r['matmul']})" for r in records})) + ".", ""]
    for cell in cfg.cells:
        for mode in cfg.modes:
            rows = [r for r in records if r["cell"] == cell and r["mode"] == mode]
            if not rows:
                continue
            lines += [f"### {cell}, {mode} (median ms; speedup = other / rnn_jax, of medians "
                      "and of fastest samples)", "",
                      "| B, T, H | " + " | ".join(impls)
                      + " | vs flax | vs torch | vs flax (min) | vs torch (min) |",
                      "|---" * (len(impls) + 5) + "|"]
            for s in metrics["speedups"]:
                if s["cell"] != cell or s["mode"] != mode:
                    continue
                size = (s["B"], s["T"], s["H"])
                by = {r["impl"]: r["ms"] for r in rows if (r["B"], r["T"], r["H"]) == size}
                cells = [_fmt_ms(by.get(i)) for i in impls]
                ratio = [f"{s[k]:.2f}x" if k in s else "—" for k in (
                    "vs_flax_linen", "vs_torch", "vs_flax_linen_min", "vs_torch_min")]
                lines.append(f"| {size[0]}, {size[1]}, {size[2]} | " + " | ".join(cells)
                             + " | " + " | ".join(ratio) + " |")
            lines.append("")
    reference = ISSUE_MS.get(metrics["suite"], {})
    ours = {(r["cell"], r["B"], r["T"], r["H"]): r["ms"] for r in records
            if r["impl"] == "rnn_jax" and r["mode"] == "train"}
    rows = [(size, cell, ms) for size, by_cell in reference.items()
            for cell, ms in by_cell.items() if (cell, *size) in ours]
    if rows:
        lines += ["### Train step beside the issue's measurements (ms, other machines' runs)", "",
                  "| B, T, H | cell | rnn_jax here | issue: " + " | issue: ".join(
                      sorted({k for _, _, ms in rows for k in ms})) + " |"]
        keys = sorted({k for _, _, ms in rows for k in ms})
        lines.append("|---" * (len(keys) + 3) + "|")
        for size, cell, ms in rows:
            lines.append(f"| {size[0]}, {size[1]}, {size[2]} | {cell} | "
                         f"{_fmt_ms(ours[(cell, *size)])} | "
                         + " | ".join(_fmt_ms(ms.get(k)) for k in keys) + " |")
        lines.append("")
    lines += profile_section(metrics.get("profiles", []), records)
    behind = [s for s in metrics["speedups"]
              if min(s.get("vs_flax_linen", 9), s.get("vs_torch", 9)) < 1.0]
    lines.append("rnn_jax is at least as fast as flax.linen and PyTorch on every point."
                 if not behind else "rnn_jax is slower than flax.linen or PyTorch on: " + "; ".join(
                     f"{s['cell']} {s['mode']} ({s['B']}, {s['T']}, {s['H']})" for s in behind)
                 + ".")
    for title, key in (("Skipped", "skipped"), ("Rejected (outputs differ)", "rejected"),
                       ("Failed (the error; the suite went on)", "failed")):
        groups = {}
        for e in metrics.get(key, []):
            what = e.get("reason") or f"{e['stage']}: {e['error']}"
            what += f" (max rel. error {e['max_rel_err']:.2g})" if "max_rel_err" in e else ""
            groups.setdefault((e["impl"], what), set()).add(
                f"{e['cell']} {e['mode']} ({e['B']}, {e['T']}, {e['H']})")
        if groups:
            lines += ["", f"{title}:"] + [f"- {impl}: {what} — {', '.join(sorted(points))}"
                                          for (impl, what), points in sorted(groups.items())]
    return "\n".join(lines)


def _fmt_us(x):
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def profile_section(profiles: list, records: list) -> list:
    """Report lines for ``run_point``'s op profiles (none: no lines)."""
    if not profiles:
        return []
    wall = {(r["impl"], r["cell"], r["mode"], r["B"], r["T"], r["H"]): r["ms"] for r in records}
    lines = ["### Where rnn_jax's step goes (XLA op trace, ms per step)", "",
             "Summed per operation over one step; `runs` = executions per step (T for an op "
             "inside a time loop). A loop's time includes the ops it ran, so loops are left out "
             "of the totals; ops on concurrent threads add up beyond the wall time, and the "
             "profiler's own cost lengthens every op (most visible with many small ones).", ""]
    for p in profiles:
        t = p["totals"]
        key = (p["impl"], p["cell"], p["mode"], p["B"], p["T"], p["H"])
        per_step = next((g for g in p["by_count"] if g["count"] == p["T"]), None)
        lines += [f"**{p['cell']} {p['mode']} ({p['B']}, {p['T']}, {p['H']})**, path "
                  f"{p['path']}, {_fmt_ms(wall.get(key))} ms timed: matrix products "
                  f"{t['matmul']:.3g} ms, other ops {t['other']:.3g} ms; time loops "
                  f"{p['loops_ms']:.3g} ms in all"
                  + (f"; {per_step['ops']} distinct ops run once per time step, "
                     f"{per_step['ms']:.3g} ms ({per_step['matmul_ms']:.3g} ms of it in products)"
                     if per_step else "") + ".", "",
                  "| op | kind | ms | runs | µs per run |", "|---|---|---|---|---|"]
        lines += [f"| {o['name']} | {o['kind']} | {o['ms']:.3g} | {o['count']:g} | "
                  f"{_fmt_us(1e3 * o['ms'] / max(o['count'], 1e-9))} |" for o in p["ops"]]
        lines.append("")
    return lines


def figures(metrics: dict, cfg: Config, out_dir):
    if metrics["suite"] == "deepbench":
        return []
    from rnn_jax import plotting

    records = metrics["records"]
    impls = [i for i in metrics["impls"] if any(r["impl"] == i for r in records)]
    sizes = [tuple(s) for s in metrics["sizes"]]
    fig, axes = plotting.figure(len(cfg.cells), len(cfg.modes), width=max(4.0, 1.6 * len(sizes)),
                                height=3.2)
    axes = np.asarray(axes).reshape(len(cfg.cells), len(cfg.modes))
    width = 0.8 / max(len(impls), 1)
    with plotting.style():
        for (i, cell), (j, mode) in ((a, b) for a in enumerate(cfg.cells)
                                     for b in enumerate(cfg.modes)):
            ax = axes[i, j]
            for k, impl in enumerate(impls):
                by = {(r["B"], r["T"], r["H"]): r["tok_s"] for r in records
                      if r["impl"] == impl and r["cell"] == cell and r["mode"] == mode}
                ax.bar(np.arange(len(sizes)) + (k - (len(impls) - 1) / 2) * width,
                       [by.get(s, 0.0) for s in sizes], width, label=impl)
            ax.set_xticks(np.arange(len(sizes)), [f"{b},{t},{h}" for b, t, h in sizes],
                          fontsize=8)
            ax.set_yscale("log")
            ax.set_title(f"{cell}, {mode}")
            ax.set_xlabel("B, T, H")
            ax.set_ylabel("tokens / s")
        axes[0, -1].legend(fontsize=7)
    return [plotting.save(fig, out_dir / "tokens_per_s.png")]
