"""Long sequences: BPTT memory and step time against T, default vs segment checkpointing.

An LSTM (H = 128, B = 8, I = 32; the loss mean(hs^2) of issue 14) is differentiated three ways:

    default    remat=False: the fused path stores every step's residuals, memory O(T)
    segments   remat="segments" (Chen et al. 2016): a carry per segment of k ~ √T steps, one
               segment's residuals at a time, memory O(√T), about one extra forward pass
    per_step   the old remat=True: a plain scan whose step is jax.checkpoint-ed (memory O(T))

Memory is the compiled program's ``temp_size_in_bytes`` (``memory_analysis()``; arguments
and results excluded) and needs no run, so it is measured at every T, the default's too:

    loss    jax.grad of mean(hs^2) for the params, batch-major xs (the issue's table). It
            holds the outputs hs [T, B, H] and their cotangents, O(T) for any method.
    bptt    the BPTT alone, excluding inputs and outputs: the VJP of hs with the outputs'
            cotangent given as an argument, time-major (no layout copies).

The step time (median of ``repeats`` calls of the compiled gradient of the loss after one
warm-up; from ``long_from`` steps on ``long_repeats`` calls and no warm-up) is measured for
the default up to ``default_time_max`` (it needs ~4.8 GiB at T = 1e5), the segments at every
T and the per-step form up to ``per_step_time_max``. A slope is fitted to log memory against
log T. Full run: about 10-15 minutes on 2 shared CPU cores.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import rnn_jax as rj
from experiments import harness
from rnn_jax import plotting
from rnn_jax.loops import segments

VARIANTS = ("default", "segments", "per_step")
MIB = 2.0**20


@dataclasses.dataclass(frozen=True)
class Config:
    """Full run by default (10-15 min on 2 CPU cores); ``--smoke`` in seconds."""

    seed: int = 0
    hidden_size: int = 128
    batch_size: int = 8
    input_size: int = 32
    # sequence lengths T of the sweep
    lengths: tuple[int, ...] = (1000, 3000, 10_000, 30_000, 100_000, 300_000, 1_000_000)
    default_time_max: int = 100_000  # the default path is timed up to this T (memory)
    per_step_time_max: int = 10_000  # the old per-step remat is measured up to this T
    repeats: int = 3  # timed calls per point below long_from (median reported)
    long_from: int = 30_000  # from this T on: long_repeats timed calls, no warm-up
    long_repeats: int = 1  # timed calls per point from long_from on
    k_sweep_length: int = 100_000  # compiled memory against the segment length k at this T
    # segment lengths k of the memory sweep
    k_sweep: tuple[int, ...] = (25, 100, 400, 1000, 4000, 20_000)

    def __post_init__(self):
        harness.check_positive(self, ("hidden_size", "batch_size", "input_size", "repeats",
                                      "long_repeats", "k_sweep_length"))
        if not self.lengths or min(self.lengths) < 1 or min(self.k_sweep, default=1) < 1:
            raise ValueError(f"lengths and k_sweep must be positive, got {self.lengths}, "
                             f"{self.k_sweep}")


SMOKE = dict(hidden_size=8, batch_size=2, input_size=3, lengths=(16, 256), default_time_max=256,
             per_step_time_max=16, repeats=1, long_from=256, k_sweep_length=256, k_sweep=(4,))


def _per_step(cell, params, xs):
    """The old ``remat=True``: a plain scan over a jax.checkpoint-ed step, projection hoisted."""
    us = cell.project(params, jnp.moveaxis(xs, -2, 0))
    step = jax.checkpoint(lambda c, u: cell.recur(params, c, u))  # (carry, h) per step
    carry = cell.initial_carry(xs.shape[:-2], xs.dtype)
    return jnp.moveaxis(jax.lax.scan(step, carry, us)[1], 0, -2)


def _hs(variant, cell, remat=None):
    """hs of ``variant`` as a function of (params, xs), and whether xs is time-major."""
    if variant == "per_step":
        return lambda p, xs, time_major=False: (
            _per_step(cell, p, xs) if not time_major else
            jnp.moveaxis(_per_step(cell, p, jnp.moveaxis(xs, 0, -2)), -2, 0))
    value = False if variant == "default" else (remat or "segments")
    return lambda p, xs, time_major=False: rj.rnn(cell, p, xs, time_major=time_major,
                                                  remat=value)[0]


def _grad_of_loss(hs_fn):
    return jax.jit(jax.grad(lambda p, xs: jnp.mean(hs_fn(p, xs) ** 2)))


def _bptt(hs_fn):
    return jax.jit(lambda p, xs, dhs: jax.vjp(lambda q: hs_fn(q, xs, True), p)[1](dhs))


def _temp_mib(compiled) -> float:
    return compiled.memory_analysis().temp_size_in_bytes / MIB


def _measure(cfg, cell, params, num_steps, variant, *, remat=None, timed=False, key=None):
    """Compiled temp memory of both programs and, if ``timed``, the loss gradient's step time.

    The timed program is the one whose memory is reported (compiled once, for concrete xs).
    """
    b, i, h = cfg.batch_size, cfg.input_size, cfg.hidden_size
    hs_fn = _hs(variant, cell, remat)
    xs = (jax.random.normal(jax.random.fold_in(key, num_steps), (b, num_steps, i)) if timed
          else jax.ShapeDtypeStruct((b, num_steps, i), jnp.float32))
    compiled = _grad_of_loss(hs_fn).lower(params, xs).compile()
    bptt = _bptt(hs_fn).lower(params, jax.ShapeDtypeStruct((num_steps, b, i), jnp.float32),
                              jax.ShapeDtypeStruct((num_steps, b, h), jnp.float32)).compile()
    rec = {"loss_mib": _temp_mib(compiled), "bptt_mib": _temp_mib(bptt), "step_s": None,
           "timed_calls": 0}
    if timed:
        long = num_steps >= cfg.long_from
        if not long:
            jax.block_until_ready(compiled(params, xs))
        times = []
        for _ in range(cfg.long_repeats if long else cfg.repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(params, xs))
            times.append(time.perf_counter() - start)
        rec.update(step_s=statistics.median(times), timed_calls=len(times))
    return rec


def slope(ts, values) -> float:
    """Least-squares slope of log(value) against log(T)."""
    return float(np.polyfit(np.log(np.asarray(ts, float)), np.log(np.asarray(values, float)), 1)[0])


def run(cfg: Config) -> dict:
    key = jax.random.key(cfg.seed)
    cell = rj.LSTM(cfg.hidden_size)
    params = cell.init(jax.random.fold_in(key, 0), cfg.input_size)
    load_before = os.getloadavg()[0]
    timed_up_to = {"default": cfg.default_time_max, "segments": max(cfg.lengths),
                   "per_step": cfg.per_step_time_max}
    records = []
    for num_steps in sorted(cfg.lengths):
        for variant in VARIANTS:
            k = segments.segment_length("segments", num_steps) if variant == "segments" else None
            rec = {"variant": variant, "T": num_steps, "k": k,
                   **_measure(cfg, cell, params, num_steps, variant, key=key,
                              timed=num_steps <= timed_up_to[variant])}
            records.append(rec)
            print(f"long_sequence: {rec}", flush=True)
    k_sweep = [{"k": k, **_measure(cfg, cell, params, cfg.k_sweep_length, "segments", remat=k)}
               for k in cfg.k_sweep if k <= cfg.k_sweep_length]
    return {"records": records, "k_sweep": k_sweep, **summary(records),
            "hs_mib": {t: t * cfg.batch_size * cfg.hidden_size * 4 / MIB for t in cfg.lengths},
            "device": f"{jax.default_backend()} ({jax.devices()[0].device_kind}, "
                      f"{os.cpu_count()} host cores)",
            "load_average": [load_before, os.getloadavg()[0]]}


def summary(records) -> dict:
    """Fitted slopes, the growth from the smallest to the largest T, and the issue's targets."""
    by = {(r["variant"], r["T"]): r for r in records}
    ts = sorted({r["T"] for r in records})
    out = {"slope": {}, "growth": {}}
    for variant in VARIANTS:
        for metric in ("loss_mib", "bptt_mib"):
            vals = [by[(variant, t)][metric] for t in ts]
            out["slope"][f"{variant}/{metric}"] = slope(ts, vals) if len(ts) > 1 else None
    targets = {}
    if {10_000, 1_000_000} <= set(ts):
        for metric in ("loss_mib", "bptt_mib"):
            g = by[("segments", 1_000_000)][metric] / by[("segments", 10_000)][metric]
            out["growth"][f"segments/{metric} 1e4->1e6"] = g
            targets[f"memory 1e4->1e6 <= 15x ({metric})"] = g <= 15
    if 100_000 in ts:
        seg, dflt = by[("segments", 100_000)], by[("default", 100_000)]
        for metric in ("loss_mib", "bptt_mib"):
            out[f"memory_ratio_1e5/{metric}"] = dflt[metric] / seg[metric]
            targets[f"memory at 1e5 <= default/20 ({metric})"] = seg[metric] <= dflt[metric] / 20
        if seg["step_s"] and dflt["step_s"]:
            out["time_ratio_1e5"] = seg["step_s"] / dflt["step_s"]
            targets["step time at 1e5 <= 1.5x default"] = out["time_ratio_1e5"] <= 1.5
    out["targets"] = targets
    return out


def figures(metrics, cfg, out_dir) -> list[Path]:
    """memory_vs_T.png: both memory metrics and the step time against T (log-log), and the
    memory against the segment length k at one T."""
    recs = metrics["records"]
    fig, axes = plotting.figure(ncols=4, width=4.4, height=3.6)
    with plotting.style():
        for i, variant in enumerate(VARIANTS):
            rows = sorted((r for r in recs if r["variant"] == variant), key=lambda r: r["T"])
            ts = [r["T"] for r in rows]
            for ax, metric in zip(axes[:2], ("loss_mib", "bptt_mib"), strict=True):
                s = metrics["slope"][f"{variant}/{metric}"]
                ax.loglog(ts, [r[metric] for r in rows], "o-", color=f"C{i}",
                          label=f"{variant} (slope {s:.2f})" if s is not None else variant)
            timed = [r for r in rows if r["step_s"]]
            axes[2].loglog([r["T"] for r in timed], [r["step_s"] for r in timed], "o-",
                           color=f"C{i}", label=variant)
        hs = sorted(metrics["hs_mib"].items(), key=lambda kv: float(kv[0]))
        axes[0].loglog([float(t) for t, _ in hs], [v for _, v in hs], "k:", label="hs itself")
        axes[0].set(xlabel="T", ylabel="temp MiB", title="grad of mean(hs^2)")
        axes[1].set(xlabel="T", ylabel="temp MiB", title="BPTT alone (inputs/outputs excl.)")
        axes[2].set(xlabel="T", ylabel="s per gradient", title="step time")
        sweep = metrics["k_sweep"]
        axes[3].loglog([r["k"] for r in sweep], [r["bptt_mib"] for r in sweep], "o-",
                       color="C1", label="BPTT alone")
        axes[3].loglog([r["k"] for r in sweep], [r["loss_mib"] for r in sweep], "s--",
                       color="C1", label="grad of loss")
        axes[3].set(xlabel="segment length k", ylabel="temp MiB",
                    title=f"segments at T = {cfg.k_sweep_length}")
        for ax in axes:
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    return [plotting.save(fig, Path(out_dir) / "memory_vs_T.png")]


def _fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def report(metrics, cfg) -> str:
    by = {(r["variant"], r["T"]): r for r in metrics["records"]}
    ts = sorted({r["T"] for r in metrics["records"]})
    load = metrics["load_average"]
    lines = [f"LSTM H = {cfg.hidden_size}, B = {cfg.batch_size}, I = {cfg.input_size}, loss "
             f"mean(hs^2), on **{metrics['device']}**; host load average {load[0]:.1f} / "
             f"{load[1]:.1f} at start / end (a shared machine: times are noisy). Memory is "
             "the compiled `temp_size_in_bytes` (no run needed); *loss* = grad of the loss "
             "(holds hs and its cotangent, O(T) whatever the method); *bptt* = the BPTT alone "
             "with the outputs' cotangent given (inputs and outputs excluded). Times: median "
             f"of {cfg.repeats} calls after a warm-up, {cfg.long_repeats} call(s) without one "
             f"from T = {cfg.long_from}; '-' = not run (memory).", "",
             "| T | k | default loss MiB | segments loss MiB | default bptt MiB | "
             "segments bptt MiB | per_step bptt MiB | default s | segments s | per_step s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t in ts:
        d, s, p = (by[(v, t)] for v in VARIANTS)
        lines.append(f"| {t} | {s['k']} | {d['loss_mib']:.4g} | {s['loss_mib']:.4g} | "
                     f"{d['bptt_mib']:.4g} | {s['bptt_mib']:.4g} | {p['bptt_mib']:.4g} | "
                     f"{_fmt(d['step_s'], '.3f')} | {_fmt(s['step_s'], '.3f')} | "
                     f"{_fmt(p['step_s'], '.3f')} |")
    lines += ["", "Fitted slopes of log memory against log T: " + ", ".join(
        f"{k} {_fmt(v, '.2f')}" for k, v in metrics["slope"].items()) + "."]
    lines += ["", f"Segment length sweep at T = {cfg.k_sweep_length} (memory O(T/k + k)):", "",
              "| k | loss MiB | bptt MiB |", "|---|---|---|"]
    lines += [f"| {r['k']} | {r['loss_mib']:.4g} | {r['bptt_mib']:.4g} |"
              for r in metrics["k_sweep"]]
    lines += ["", "Targets of issue 14:", ""]
    lines += [f"- {name}: **{'met' if ok else 'not met'}**"
              for name, ok in metrics["targets"].items()] or [
        "- not evaluated: they need T = 10^4, 10^5 and 10^6 among the lengths"]
    extra = {k: v for k, v in metrics.items() if k.startswith(("memory_ratio", "time_ratio"))}
    lines += [f"- {k} = {v:.2f}" for k, v in extra.items()]
    lines += [f"- {k} = {v:.2f}x" for k, v in metrics["growth"].items()]
    return "\n".join(lines + _notes(metrics, cfg))


def _notes(metrics, cfg) -> list[str]:
    """What the numbers say, computed from them, and the command that reproduces the run."""
    by = {(r["variant"], r["T"]): r for r in metrics["records"]}
    top = max(r["T"] for r in metrics["records"])
    hs = top * cfg.batch_size * cfg.hidden_size * 4 / MIB
    seg = by[("segments", top)]
    best = min(metrics["k_sweep"], key=lambda r: r["bptt_mib"], default=None)
    lines = ["", "Notes:", "",
             f"- With a loss on all T outputs the gradient must hold hs [T, B, H] ({hs:.4g} "
             f"MiB at T = {top}) and its cotangent, O(T) whatever the checkpointing: the "
             f"segmented *loss* memory at T = {top} is {seg['loss_mib'] / hs:.2f}x hs itself "
             "(hs, its cotangent and the batch-major/time-major copies). What segments save is "
             "the BPTT's own memory (*bptt*), which is what grows like √T.",
             "- The old per-step `remat=True` (a checkpoint around each step of the plain scan) "
             "used more memory and more time than the default at every T measured, so `True` "
             "now means segments.",
             "- Each segment runs the fused JVP loop; the recomputation is one extra forward "
             "pass, while the default path writes and reads its O(T) residuals through "
             "memory and the segmented one a segment's worth at a time."]
    if "time_ratio_1e5" in metrics:
        lines[-1] += (f" At T = 10^5 the segmented step took {metrics['time_ratio_1e5']:.2f}x "
                      "the default's (one call each).")
    default_k = by.get(("segments", cfg.k_sweep_length))
    if best is not None and default_k is not None:
        lines.append(f"- The memory-optimal k at T = {cfg.k_sweep_length} in the sweep is "
                     f"{best['k']} ({best['bptt_mib']:.4g} MiB) against the default "
                     f"k = {default_k['k']} ({default_k['bptt_mib']:.4g} MiB, "
                     f"{default_k['bptt_mib'] / best['bptt_mib']:.2f}x): a carry (2 B H floats "
                     "for an LSTM) is smaller than one step's residuals, so the optimum "
                     "sqrt(T carry / residual) lies below √T.")
    lines += ["- Not implemented: the memory-budget policy of Gruslys et al. 2016 (dynamic "
              "programming over how many carries to keep, recomputing some steps more than "
              "once); one level of segments already brings the BPTT memory to tens of MiB at "
              "T = 10^6 here.",
              "", "Reproduce: `python -m experiments run long_sequence --out "
              "benchmarks/cpu-2core` (about 15 minutes on 2 shared CPU cores: T = 10^6 is "
              "timed once, without a warm-up; the default path is timed up to "
              f"T = {cfg.default_time_max}, where it needs ~4.8 GiB)."]
    return lines
