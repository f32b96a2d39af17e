"""Parallel-in-time evaluation: sequential scan vs DEER vs quasi-DEER over T and H.

An unbatched tanh Elman RNN (the published case: H = 32, I = 4, up to T = 65 536) is run three
ways: ``rj.rnn`` (one ``lax.scan``), ``deer.deer_rnn`` (Newton + full-Jacobian associative scan;
Lim et al., ICLR 2024) and ``deer.deer_rnn(quasi=True)`` (diagonal Jacobians; Gonzalez et al.,
NeurIPS 2024). Each is jitted and warmed up; the compile time is recorded separately and the
run time is the median of ``repeats`` calls with ``block_until_ready``. For DEER we also record
the Newton iterations, convergence and the largest difference from the sequential outputs.

The default sweep stops at T = 65 536 (a few minutes on 2 CPU cores); ``--gpu_sweep true``
extends it to T = 2^20 and H = 128 for an accelerator.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import rnn_jax as rj
from experiments import harness
from rnn_jax.loops import deer

METHODS = ("sequential", "deer", "quasi_deer")
# The published case as quoted in the issue: unbatched tanh RNN, H = 32, I = 4, T = 65 536, T4 GPU.
PUBLISHED = {"device": "NVIDIA T4", "T": 65536, "H": 32,
             "ms": {"sequential": 435.0, "deer": 84.0, "quasi_deer": 39.0}}


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    input_size: int = 4
    hidden_size: int = 32  # H of the T sweep
    lengths: tuple[int, ...] = (256, 1024, 4096, 16384, 65536)  # sequence lengths T of the T sweep
    hidden_sizes: tuple[int, ...] = (8, 16, 64)  # H sweep, at T = h_sweep_length
    h_sweep_length: int = 4096  # T of the H sweep
    # evaluation methods to time: sequential, deer, quasi_deer
    methods: tuple[str, ...] = METHODS
    repeats: int = 5  # timed calls per point (median reported)
    max_iter: int = 200  # Newton iterations allowed to DEER / quasi-DEER
    gpu_sweep: bool = False  # T up to 2^20, H up to 128 (for an accelerator)
    # U = gain x (orthogonal init): below 1 the recurrence contracts (rate <= gain), so Newton
    # converges in few iterations; 1 is the default init, marginally stable
    recurrent_gain: float = 1.0

    def __post_init__(self):
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {self.methods}")
        harness.check_positive(
            self, ("input_size", "hidden_size", "h_sweep_length", "repeats", "max_iter"))
        if not self.lengths or min(self.lengths) < 1 or min(self.hidden_sizes, default=1) < 1:
            raise ValueError(f"lengths and hidden_sizes must be positive, got {self.lengths}, "
                             f"{self.hidden_sizes}")
        if not (isinstance(self.recurrent_gain, (int, float)) and 0 < self.recurrent_gain <= 4):
            raise ValueError(f"recurrent_gain must be a number in (0, 4], got "
                             f"{self.recurrent_gain!r}")

    def sweeps(self):
        """(lengths, hidden_sizes, h_sweep_length) after ``gpu_sweep``."""
        if self.gpu_sweep:
            return (tuple(4**k for k in range(4, 11)), (8, 16, 64, 128), 65536)
        return self.lengths, self.hidden_sizes, self.h_sweep_length


SMOKE = {"lengths": (16,), "hidden_size": 4, "hidden_sizes": (8,), "h_sweep_length": 16,
         "repeats": 1}


def _runner(method, cell, max_iter):
    if method == "sequential":
        return jax.jit(lambda p, xs: rj.rnn(cell, p, xs)[0])
    quasi = method == "quasi_deer"

    def fn(p, xs):
        hs, _, info = deer.deer_rnn(cell, p, xs, quasi=quasi, max_iter=max_iter,
                                    return_info=True)
        return hs, info

    return jax.jit(fn)


def _time(fn, args, repeats):
    """(compile ms, median run ms, output): AOT compile, one warm-up call, then repeats."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_ms = 1e3 * (time.perf_counter() - start)
    out = jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(1e3 * (time.perf_counter() - start))
    return compile_ms, statistics.median(times), out


def _measure(cfg, num_steps, hidden, key):
    """Records of every method for one (T, H); the sequential outputs are the reference.

    The weights depend on H only and the inputs on T only, so a sweep changes one thing.
    """
    cell = rj.Elman(hidden)
    k_p, k_x = jax.random.split(key)
    params = cell.init(jax.random.fold_in(k_p, hidden), cfg.input_size)
    params = {**params, "U": cfg.recurrent_gain * params["U"]}
    xs = jax.random.normal(jax.random.fold_in(k_x, num_steps), (num_steps, cfg.input_size))
    ref = None if "sequential" in cfg.methods else rj.rnn(cell, params, xs)[0]
    records = []
    for method in sorted(cfg.methods, key=METHODS.index):  # sequential first: the reference
        compile_ms, ms, out = _time(_runner(method, cell, cfg.max_iter), (params, xs),
                                    cfg.repeats)
        ref = out if method == "sequential" else ref
        rec = {"method": method, "T": num_steps, "H": hidden, "ms": ms,
               "compile_ms": compile_ms, "iterations": 0, "converged": True,
               "fell_back": False, "max_abs_err": 0.0}
        if method != "sequential":
            hs, info = out
            rec.update(iterations=int(info["iterations"]), converged=bool(info["converged"]),
                       fell_back=bool(info["fell_back"]),
                       max_abs_err=float(jnp.max(jnp.abs(hs - ref))))
        records.append(rec)
    return records


def run(cfg: Config) -> dict:
    lengths, hidden_sizes, h_len = cfg.sweeps()
    key = jax.random.key(cfg.seed)
    load_before = os.getloadavg()[0]  # the machine may be shared: timings are only as good
    records = []
    points = [(t, cfg.hidden_size) for t in lengths]
    points += [(h_len, h) for h in hidden_sizes if (h_len, h) not in points]
    for num_steps, hidden in points:
        records += _measure(cfg, num_steps, hidden, key)
    seq = {(r["T"], r["H"]): r["ms"] for r in records if r["method"] == "sequential"}
    speedup = {m: {} for m in cfg.methods if m != "sequential"}
    speedup_by_h = {m: {} for m in speedup}
    for r in records:
        if r["method"] == "sequential" or (r["T"], r["H"]) not in seq:
            continue
        ratio = seq[(r["T"], r["H"])] / r["ms"]
        if r["H"] == cfg.hidden_size:
            speedup[r["method"]][r["T"]] = ratio
        if r["T"] == h_len:
            speedup_by_h[r["method"]][r["H"]] = ratio
    return {"records": records, "speedup": speedup, "speedup_by_H": speedup_by_h,
            "device": f"{jax.default_backend()} ({jax.devices()[0].device_kind}, "
                      f"{os.cpu_count()} host cores)",
            "published": PUBLISHED, "load_average": [load_before, os.getloadavg()[0]]}


def figures(metrics, cfg, out_dir) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, _, h_len = cfg.sweeps()
    recs = metrics["records"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    pub = metrics["published"]
    for method in cfg.methods:
        color = f"C{METHODS.index(method)}"
        t_rows = sorted((r for r in recs if r["method"] == method
                         and r["H"] == cfg.hidden_size), key=lambda r: r["T"])
        axes[0].loglog([r["T"] for r in t_rows], [r["ms"] for r in t_rows], "o-", color=color,
                       label=method)
        if cfg.hidden_size == pub["H"]:
            axes[0].plot([pub["T"]], [pub["ms"][method]], "x", ms=9, color=color,
                         label=f"{method}, published ({pub['device']})")
        if method != "sequential":
            axes[1].semilogx([r["T"] for r in t_rows], [r["iterations"] for r in t_rows], "o-",
                             color=color, label=method)
        h_rows = sorted((r for r in recs if r["method"] == method and r["T"] == h_len),
                        key=lambda r: r["H"])
        axes[2].loglog([r["H"] for r in h_rows], [r["ms"] for r in h_rows], "o-", color=color,
                       label=method)
    axes[0].set(xlabel="T", ylabel="ms (median)", title=f"time vs T (H = {cfg.hidden_size}), "
                f"{metrics['device']}")
    axes[1].set(xlabel="T", ylabel="Newton iterations", title="iterations to converge")
    axes[2].set(xlabel="H", ylabel="ms (median)", title=f"time vs H (T = {h_len})")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "time_vs_T.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def report(metrics, cfg) -> str:
    pub, load = metrics["published"], metrics["load_average"]
    on_gpu = metrics["device"].lower().startswith("gpu")
    where = ("" if on_gpu else " It needs a GPU and was not measured here: on a CPU the "
             "sequential scan is cheap per step.")
    lines = [f"Measured on **{metrics['device']}**. Target: >= 10x over sequential on a GPU at "
             f"T >= 65 536.{where} The parallel methods pay O(T H^3) (DEER) or O(T H) times "
             "many iterations (quasi-DEER) of extra work, so they win only when they converge "
             "in few iterations (column 'iterations').", "",
             f"Host 1-minute load average at start / end: {load[0]:.1f} / {load[1]:.1f} "
             f"({os.cpu_count()} cores); on a shared machine the timings are noisy. Weights: "
             f"the default `rj.Elman` init (orthogonal U, Glorot W, zero b), U scaled by "
             f"{cfg.recurrent_gain:g}, the same for every "
             "T at a given H; inputs N(0, 1). Iterations count the final, confirming one.", "",
             "| method | T | H | ms (median) | compile ms | iterations | converged | "
             "max abs err | speed-up vs sequential |", "|---|---|---|---|---|---|---|---|---|"]
    seq = {(r["T"], r["H"]): r["ms"] for r in metrics["records"] if r["method"] == "sequential"}
    for r in metrics["records"]:
        speed = seq[(r["T"], r["H"])] / r["ms"] if (r["T"], r["H"]) in seq else float("nan")
        conv = "yes" if r["converged"] else ("no (fell back)" if r["fell_back"] else "no")
        lines.append(f"| {r['method']} | {r['T']} | {r['H']} | {r['ms']:.2f} | "
                     f"{r['compile_ms']:.0f} | {r['iterations']} | {conv} | "
                     f"{r['max_abs_err']:.1e} | {speed:.2f}x |")
    lines += ["", f"Published ({pub['device']}, T = {pub['T']}, H = {pub['H']}, as quoted in the "
              "issue) beside ours:", "", "| method | published ms | published speed-up | "
              "our ms | our speed-up |", "|---|---|---|---|---|"]
    ours = {r["method"]: r["ms"] for r in metrics["records"]
            if r["T"] == pub["T"] and r["H"] == pub["H"]}
    for method, ms in pub["ms"].items():
        mine = ours.get(method)
        our_ms = f"{mine:.1f}" if mine else "not run"
        our_speed = (f"{ours['sequential'] / mine:.2f}x" if mine and "sequential" in ours
                     else "-")
        lines.append(f"| {method} | {ms:.0f} | {pub['ms']['sequential'] / ms:.1f}x | "
                     f"{our_ms} | {our_speed} |")
    return "\n".join(lines)
