"""GPU check: every time loop against the scan path, then train-step times against cuDNN.

The first contact with a GPU machine, in one command (``make gpu-check``, under 8 minutes on
an H200) that writes ``results.json`` and ``report.md``:

1. Equivalence (``rnn_jax.bench.equivalence``): for Elman, LSTM and GRU, every method of
   ``rj.rnn`` (auto, fused, pallas, cudnn, deer, quasi_deer) against ``method="scan"`` at
   "highest" precision: outputs, final carries and the gradients for params, inputs and the
   initial carry; at "highest" precision plain, with ragged lengths, reversed and
   bidirectional (each direction its own params; Pallas runs both in one launch); at "default"
   precision (TF32 on the GPU) plain. Then ``method="pallas"`` at the wide sizes, H = 256 and
   512, where its kernels stream U in tiles (loops over the state's column blocks, which the
   8x32x64 checks never run), with ragged lengths and bidirectional, at "highest" precision;
   a cell with no kernel that fits there is recorded as skipped.
2. Timing (``rnn_jax.bench.harness``): the train step (forward + BPTT of mean(h^2)) at
   64x256x128, 16x1024x64 and 64x512x512 (B x T x H, I = H) for our methods against PyTorch
   cuDNN (TF32 off and on), flax.linen and jax.experimental.rnn.

Each phase has a time budget (compiles included): once spent, what remains is recorded as
skipped, so the run ends in time whatever fails; an implementation that raises is recorded
with its error and the others go on.

    python -m experiments run gpu_check [--out DIR] [--budget_s 400] [--smoke]
"""

from __future__ import annotations

import dataclasses
import time

import jax.numpy as jnp

from rnn_jax.bench import equivalence, harness, peers
from rnn_jax.loops import cudnn, gpu_fit

# in order of priority: past a point's share of the budget, the later ones are skipped.
# rnn_jax (auto) runs its choice; the three kernel kinds are timed each (where one fits), so
# that rnn_jax.bench.gpu_speed can set auto's choice from the records (method='pallas' would
# repeat one of them)
TIMED = ("rnn_jax", "torch", "torch:tf32", "rnn_jax:fused", "rnn_jax:pallas-resident",
         "rnn_jax:pallas-prefetch", "rnn_jax:pallas-streamed", "rnn_jax:scan", "rnn_jax:cudnn",
         "jax_experimental_rnn", "flax_linen", "rnn_jax:quasi_deer", "rnn_jax:auto-highest",
         "rnn_jax:deer")
# DEER's dense Jacobians hold B*T*S*S floats (S: the state size, 2H for the LSTM): above this
# many it is skipped, not attempted. quasi-DEER too: its forward solve is diagonal, but its exact
# derivative (rnn_jax.loops.deer) uses the full Jacobians (found on the H200: 48 GiB requested
# at 64x512x512)
DEER_MAX_JACOBIAN = 2 ** 30  # 4 GiB of float32: 64x256x128 ran (18.9 ms), 64x512x512 did not


@dataclasses.dataclass(frozen=True)
class Config:
    """The check; ``budget_s`` caps the whole run, ``equivalence_share`` its first phase."""

    cells: tuple[str, ...] = harness.CELLS  # cells to check and time: elman, lstm, gru
    methods: tuple[str, ...] = equivalence.METHODS  # rj.rnn methods checked against method='scan'
    check_size: str = "8x32x64"  # BxTxH of the equivalence checks
    # settings checked at 'highest' precision (plain, ragged lengths, reversed, bidirectional)
    options: tuple[str, ...] = equivalence.OPTIONS
    # settings also checked at 'default' precision (TF32 on a GPU)
    default_precision_options: tuple[str, ...] = ("plain",)
    # BxTxH where method='pallas' runs its kernels in tiles (Elman, LSTM, GRU at H = 256; Elman,
    # GRU at 512), checked at highest precision before the bidirectional checks at check_size
    wide_sizes: tuple[str, ...] = ("16x16x256", "16x16x512")
    # settings of the method='pallas' checks at wide_sizes
    wide_options: tuple[str, ...] = ("lengths", "bidirectional")
    # BxTxH of the timed train steps
    sizes: tuple[str, ...] = ("64x256x128", "16x1024x64", "64x512x512")
    impls: tuple[str, ...] = TIMED  # implementations to time, in order of priority
    repeats: int = 5  # timed calls per implementation and size (the median is reported)
    warmup: int = 1  # untimed calls before timing
    budget_s: float = 400.0  # seconds for the whole check; what does not fit is recorded as skipped
    equivalence_share: float = 0.4  # fraction of budget_s the equivalence phase may use

    def __post_init__(self):
        for name, value, allowed in (("cells", self.cells, harness.CELLS),
                                     ("methods", self.methods, equivalence.METHODS),
                                     ("options", self.options, equivalence.OPTIONS),
                                     ("default_precision_options",
                                      self.default_precision_options, equivalence.OPTIONS),
                                     ("wide_options", self.wide_options, equivalence.OPTIONS)):
            if not set(value) <= set(allowed):
                raise ValueError(f"{name} must be a subset of {allowed}, got {value}")
        peers.get_builders(self.impls)
        for size in (self.check_size, *self.sizes, *self.wide_sizes):
            harness.parse_size(size)
        if not self.budget_s > 0 or not 0 < self.equivalence_share < 1:
            raise ValueError(f"budget_s must be > 0 and equivalence_share in (0, 1), got "
                             f"{self.budget_s}, {self.equivalence_share}")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {self.repeats}, "
                             f"{self.warmup}")


SMOKE = {"cells": ("lstm",), "check_size": "2x5x8", "options": ("reverse",),
         "default_precision_options": (), "sizes": ("4x6x8",), "wide_sizes": (),
         "impls": ("rnn_jax", "rnn_jax:scan", "rnn_jax:cudnn", "torch", "flax_linen",
                   "jax_experimental_rnn"), "repeats": 2, "budget_s": 600.0}


def checks(cfg: Config) -> list:
    b, t, h = harness.parse_size(cfg.check_size)
    runs = [("highest", o) for o in cfg.options if o != "bidirectional"]
    runs += [("default", o) for o in cfg.default_precision_options]
    # settings outermost: if the budget runs out, every cell and method had the first ones
    checks = [equivalence.Check(cell, method, precision, option, b, t, h)
              for precision, option in runs for cell in cfg.cells for method in cfg.methods]
    if "pallas" in cfg.methods:
        checks += [equivalence.Check(cell, "pallas", "highest", option, *harness.parse_size(size))
                   for size in cfg.wide_sizes for option in cfg.wide_options
                   for cell in cfg.cells]
    # the bidirectional checks at check_size last: past the budget, the one-direction ones at
    # both precisions (and the wide ones) have run
    return checks + [equivalence.Check(cell, method, "highest", "bidirectional", b, t, h)
                     for o in cfg.options if o == "bidirectional"
                     for cell in cfg.cells for method in cfg.methods]


def _pallas_kernel(check):
    """The kernel configuration ``method="pallas"`` runs for the check's cell, or None."""
    cell = harness.Problem(check.cell, "train", check.B, check.T, check.H).rj_cell
    return gpu_fit.pallas_kernel_for(cell, jnp.float32)


def equivalence_phase(cfg: Config, deadline: float) -> list:
    """Every check in order until ``deadline``; the scan reference is shared per setting."""
    records, references = [], {}
    for check in checks(cfg):
        if time.monotonic() > deadline:
            records.append({**dataclasses.asdict(check), "status": "skipped",
                            "error": "time budget spent"})
            continue
        if check.method == "cudnn" and check.cell != "lstm":
            continue  # cuDNN through jax.experimental.rnn has only the LSTM
        if check.method == "cudnn" and not cudnn.available():
            records.append({**dataclasses.asdict(check), "status": "skipped",
                            "error": "needs GPU (jax's CUDA plugin)"})
            continue
        kernel = _pallas_kernel(check) if check.method == "pallas" else None
        if check.method == "pallas" and kernel is None:
            records.append({**dataclasses.asdict(check), "status": "skipped",
                            "error": f"no Pallas kernel fits {check.cell} at H = {check.H}"})
            continue
        key = (check.cell, check.option, check.B, check.T, check.H)
        if key not in references:
            try:
                references[key] = equivalence.values(check, "scan", "highest")
            except Exception as err:  # noqa: BLE001
                references[key] = err
        ref = references[key]
        if isinstance(ref, Exception):
            records.append({**dataclasses.asdict(check), "status": "error",
                            "error": "reference: " + harness.error_text(ref)})
            continue
        record = equivalence.run(check, ref)
        if kernel is not None:
            record["kernel"] = dataclasses.asdict(kernel)
        records.append(record)
    return records


def timing_phase(cfg: Config, deadline: float) -> dict:
    """Every size and cell; point k of n may start new builds until its share of the time
    left, ``start + (k + 1) / n * (deadline - start)`` (time a point leaves over passes on)."""
    out = {"records": [], "skipped": [], "rejected": [], "failed": []}
    points = [(harness.parse_size(size), cell) for size in cfg.sizes for cell in cfg.cells]
    start = time.monotonic()
    for k, ((b, t, h), cell) in enumerate(points):
        state = 2 * h if cell == "lstm" else h
        names = [n for n in cfg.impls
                 if "deer" not in n or b * t * state * state <= DEER_MAX_JACOBIAN]
        share = start + (k + 1) / len(points) * (deadline - start)
        point = harness.run_point(harness.Problem(cell, "train", b, t, h),
                                  peers.get_builders(names), warmup=cfg.warmup,
                                  repeats=cfg.repeats, min_sample_s=0.005, deadline=share)
        for name in sorted(set(cfg.impls) - set(names)):
            point["skipped"].append({"impl": name, "cell": cell, "mode": "train", "B": b,
                                     "T": t, "H": h, "reason": "skipped: dense Jacobians "
                                     f"B*T*S*S > {DEER_MAX_JACOBIAN}"})
        for key in out:
            out[key] += point[key]
    return out


def run(cfg: Config) -> dict:
    start = time.monotonic()
    deadline = start + cfg.budget_s
    equiv = equivalence_phase(cfg, start + cfg.equivalence_share * cfg.budget_s)
    t_equiv = time.monotonic() - start
    timing = timing_phase(cfg, deadline)
    status = {}
    for r in equiv:
        status[r["status"]] = status.get(r["status"], 0) + 1
    return {"equivalence": equiv, "equivalence_status": status, **timing,
            "phase_s": {"equivalence": t_equiv, "timing": time.monotonic() - start - t_equiv},
            "budget_s": cfg.budget_s}


def _cell(r):
    if r["status"] == "ok":
        return f"{r['max_rel_err']:.1e}"
    if r["status"] == "mismatch":
        return f"**{r['max_rel_err']:.1e} ✗**"
    return r["status"]


def report(metrics: dict, cfg: Config) -> str:
    b, t, h = harness.parse_size(cfg.check_size)
    equiv = [r for r in metrics["equivalence"] if (r["B"], r["T"], r["H"]) == (b, t, h)]
    wide = [r for r in metrics["equivalence"] if (r["B"], r["T"], r["H"]) != (b, t, h)]
    lines = [f"Budget {cfg.budget_s:.0f} s: equivalence {metrics['phase_s']['equivalence']:.0f} s,"
             f" timing {metrics['phase_s']['timing']:.0f} s. Checks: "
             + ", ".join(f"{v} {k}" for k, v in sorted(metrics["equivalence_status"].items()))
             + ".", "", "### Every method against the scan path",
             "", f"Max relative error over outputs, final carry and gradients (size "
             f"{cfg.check_size}); ✗ = above tolerance ({harness.FLOAT32_TOLERANCE:g} highest, "
             f"{harness.TF32_TOLERANCE:g} default on a GPU).", ""]
    columns = sorted({(r["precision"], r["option"]) for r in equiv}, key=lambda c: (
        c[0] != "highest", equivalence.OPTIONS.index(c[1])))
    lines += ["| cell | method | " + " | ".join(f"{p}, {o}" for p, o in columns) + " |",
              "|---" * (len(columns) + 2) + "|"]
    by = {(r["cell"], r["method"], r["precision"], r["option"]): r for r in equiv}
    for cell in cfg.cells:
        for method in cfg.methods:
            row = [by.get((cell, method, p, o)) for p, o in columns]
            if any(row):
                lines.append(f"| {cell} | {method} | "
                             + " | ".join(_cell(r) if r else "—" for r in row) + " |")
    if wide:
        lines += ["", "`method=\"pallas\"` where its kernels stream U in tiles (highest precision; "
                  "tile: the kernel's column block):", "",
                  "| cell | BxTxH | tile | " + " | ".join(cfg.wide_options) + " |",
                  "|---" * (len(cfg.wide_options) + 3) + "|"]
        for size in cfg.wide_sizes:
            sb, st, sh = harness.parse_size(size)
            for cell in cfg.cells:
                row = {r["option"]: r for r in wide
                       if (r["cell"], r["B"], r["T"], r["H"]) == (cell, sb, st, sh)}
                if row:
                    tile = next((r["kernel"]["tile"] for r in row.values() if "kernel" in r),
                                "—")
                    lines.append(f"| {cell} | {size} | {tile} | " + " | ".join(
                        _cell(row[o]) if o in row else "—" for o in cfg.wide_options) + " |")
    errors = [r for r in metrics["equivalence"] if r["status"] == "error"]
    if errors:
        lines += ["", "Errors:"] + [f"- {r['cell']} {r['method']} {r['precision']} "
                                    f"{r['option']} {r['B']}x{r['T']}x{r['H']}: {r['error']}"
                                    for r in errors]
    lines += ["", "### Train step (forward + BPTT), median ms", ""]
    records = metrics["records"]
    for size in cfg.sizes:
        b, t, h = harness.parse_size(size)
        for cell in cfg.cells:
            rows = [r for r in records if (r["cell"], r["B"], r["T"], r["H"]) == (cell, b, t, h)]
            if not rows:
                continue
            torch_ms = {r["impl"]: r["ms"] for r in rows if r["impl"].startswith("torch")}
            lines += [f"**{cell} {b}x{t}x{h}**", "",
                      "| impl | path | precision | ms | compile s | torch / this | "
                      "torch:tf32 / this |", "|---|---|---|---|---|---|---|"]
            for r in sorted(rows, key=lambda r: r["ms"]):
                ratios = [f"{torch_ms[k] / r['ms']:.2f}" if k in torch_ms else "—"
                          for k in ("torch", "torch:tf32")]
                compile_s = "—" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
                lines.append(f"| {r['impl']} | {r['path']} | {r['precision']} ({r['matmul']}) "
                             f"| {r['ms']:.3g} | {compile_s} | " + " | ".join(ratios) + " |")
            lines.append("")
    for title, key in (("Failed", "failed"), ("Rejected", "rejected"), ("Skipped", "skipped")):
        if metrics[key]:
            lines += [f"{title}:"] + [
                f"- {e['impl']} {e['cell']} {e['B']}x{e['T']}x{e['H']}: "
                + (e.get("reason") or f"{e.get('stage')}: {e.get('error')}")
                + (f" (max rel. error {e['max_rel_err']:.2g})" if "max_rel_err" in e else "")
                for e in metrics[key]] + [""]
    return "\n".join(lines)
