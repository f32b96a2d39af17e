"""Benchmarking recurrent layers: problems, equivalence checks, interleaved timing, records.

One benchmark point is a ``Problem``: a cell (``elman``, ``lstm``, ``gru``), a mode (``forward``:
outputs only; ``train``: the loss ``L = mean(h_t^2)`` and its gradient with respect to every
weight, i.e. forward + BPTT) and sizes B, T, H with I = H. Every implementation (builders in
``rnn_jax.bench.peers``) gets the same weights and inputs, is first checked to compute the same
function as the reference (``rj.rnn(..., method="scan")`` at highest matmul precision), and is
then timed with the others interleaved call by call, so that load on a shared machine hits all
of them alike:

    ms     = median over repeats of the wall time of one synchronised call (device work done;
             a sample of a fast call averages several calls, so that it lasts >= 10 ms)
    tok_s  = B * T / (ms / 1000)

Compilation is timed separately (``compile_s``); warm-up calls precede the timed ones.

An implementation that raises (while it is built, checked or timed) is recorded under
``failed`` with its error, and the others go on. Each record names the path that ran
(``path``), the matmul precision asked for (``precision``) and what the products then use on
this device (``matmul``: ``float32`` or ``tf32``).

One topic, a little over 300 lines: a point is built, checked, timed and recorded here.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import rnn_jax as rj
from rnn_jax.bench import op_profile

CELLS = ("elman", "lstm", "gru")
MODES = ("forward", "train")
RECORD_KEYS = ("impl", "cell", "mode", "B", "T", "H", "ms", "tok_s", "compile_s", "peak_bytes",
               "device", "precision", "matmul", "path")
SUITES = {  # (B, T, H), I = H
    "quick": ((16, 32, 32),),
    "cpu": ((32, 128, 128), (32, 256, 256), (8, 1024, 64)),
    "gpu": ((64, 256, 128), (64, 512, 512), (64, 512, 1024), (256, 512, 1024), (16, 2048, 256)),
}
# Relative error allowed against the reference, max|got - ref| / max|ref|: float32 products,
# and TF32 ones (``"tf32"``, or JAX's ``"default"`` precision on a GPU).
FLOAT32_TOLERANCE = 2e-3
TF32_TOLERANCE = 5e-2


@dataclasses.dataclass(frozen=True)
class Problem:
    """One benchmark point; I = H."""

    cell: str
    mode: str
    B: int
    T: int
    H: int
    seed: int = 0

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell={self.cell!r} is not benchmarked; expected one of {CELLS}")
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not a mode; expected one of {MODES}")
        for name in ("B", "T", "H"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

    @property
    def rj_cell(self):
        """The rnn_jax cell, initialised as PyTorch initialises its layers (U(+-1/sqrt(H)))."""
        return rj.torch_like(rj.cells.CELLS[self.cell], self.H)


def problem_data(problem: Problem) -> dict:
    """Shared weights (rnn_jax layout) and inputs, as NumPy float32 arrays.

    Shapes: ``params`` as the cell's ``init``; ``xs: [B, T, H]``.
    """
    k_params, k_xs = jax.random.split(jax.random.key(problem.seed))
    params = problem.rj_cell.init(k_params, problem.H)
    xs = jax.random.normal(k_xs, (problem.B, problem.T, problem.H), jnp.float32)
    return {"params": jax.tree.map(np.asarray, params), "xs": np.asarray(xs)}


def reference(problem: Problem, data: dict) -> dict:
    """What every implementation must compute: ``{"hs"}`` or ``{"loss", "W", "U", "b", ...}``."""
    cell = problem.rj_cell

    def forward(params, xs):
        return rj.rnn(cell, params, xs, method="scan")[0]

    with jax.default_matmul_precision("highest"):
        if problem.mode == "forward":
            return {"hs": np.asarray(jax.jit(forward)(data["params"], data["xs"]))}
        loss, grads = jax.jit(jax.value_and_grad(
            lambda p, xs: jnp.mean(forward(p, xs) ** 2)))(data["params"], data["xs"])
    return {"loss": np.asarray(loss), **jax.tree.map(np.asarray, grads)}


def relative_error(got: dict, want: dict) -> float:
    """max over arrays of max|got - want| / max|want| (inf for a missing or misshaped array)."""
    worst = 0.0
    for name, ref in want.items():
        value = got.get(name)
        if value is None or np.shape(value) != np.shape(ref):
            return float("inf")
        value, ref = np.asarray(value, np.float64), np.asarray(ref, np.float64)
        scale = max(float(np.max(np.abs(ref))), 1e-30)
        err = float(np.max(np.abs(value - ref))) / scale
        worst = max(worst, err if np.isfinite(err) else float("inf"))
    return worst


def matmul(precision: str, backend: str) -> str:
    """What float32 products use: ``"tf32"`` (asked for, or JAX's "default" on a GPU, which
    XLA and cuDNN run as TF32 on Ampere and later) or ``"float32"``."""
    if precision == "tf32" or (precision == "default" and backend == "gpu"):
        return "tf32"
    return "float32"


def tolerance(precision: str, backend: str) -> float:
    """The equivalence tolerance for an implementation's matmul precision on ``backend``."""
    if precision == "tf32" or (precision == "default" and backend != "cpu"):
        return TF32_TOLERANCE
    return FLOAT32_TOLERANCE


def error_text(err: BaseException, limit: int = 300) -> str:
    """``Type: message``, its first line cut to ``limit`` characters (for records)."""
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first[:limit]}"


class Built(NamedTuple):
    """An implementation ready to run one problem (made by a builder in ``bench_impls``).

    ``step()`` runs one forward or train step on stored inputs and returns its outputs,
    ``sync(out)`` waits for the device, ``result(out)`` converts to the reference's layout;
    ``executable`` is ``(compiled, args)`` for a JAX implementation (``rnn_jax.bench.op_profile``
    can then break its step down by XLA operation), else None; ``kernel``: the
    ``pallas_launch.Kernel`` fields of the Pallas launch the step runs, or None.
    """

    step: Any
    sync: Any
    result: Any
    compile_s: float | None
    peak_bytes: int | None
    device: str
    precision: str
    path: str
    executable: Any = None
    kernel: dict | None = None


class Skip(Exception):  # noqa: N818 - a reason, not an error
    """Raised by a builder that cannot run here (no GPU, package missing, cell unsupported)."""


def time_interleaved(built: dict, *, warmup: int, repeats: int, seed: int = 0,
                     min_sample_s: float = 0.0, failed: dict | None = None
                     ) -> tuple[dict, dict]:
    """Wall times (s per call) of ``repeats`` samples per implementation, interleaved.

    Each round takes one sample of every implementation, in a fresh random order, so that slow
    phases of a shared machine fall on all of them alike. A sample is ``k`` synchronised calls
    (``k`` chosen after the ``warmup`` calls so that a sample lasts ``min_sample_s``; 1 for
    calls that long already), divided by ``k``. Returns ``(times, calls_per_sample)``. An
    implementation that raises is dropped from both; with ``failed`` (a dict) its error is
    stored there under its name, else the error propagates.
    """
    calls = {}

    def drop(name, err):
        if failed is None:
            raise err
        failed[name] = err
        calls.pop(name, None)

    for name, b in built.items():
        try:
            start = time.perf_counter()
            for _ in range(max(warmup, 1)):
                b.sync(b.step())
            per_call = (time.perf_counter() - start) / max(warmup, 1)
        except Exception as err:  # noqa: BLE001 - recorded, the others go on
            drop(name, err)
            continue
        calls[name] = max(1, min(1000, int(np.ceil(min_sample_s / max(per_call, 1e-9)))))
    times = {name: [] for name in calls}
    order = np.random.default_rng(seed)
    for _ in range(repeats):
        for name in order.permutation(list(times)):
            if name not in calls:
                continue
            b, k = built[name], calls[name]
            try:
                start = time.perf_counter()
                for _ in range(k):
                    b.sync(b.step())
            except Exception as err:  # noqa: BLE001
                drop(name, err)
                continue
            times[name].append((time.perf_counter() - start) / k)
    return {name: t for name, t in times.items() if name in calls}, calls


def record(name: str, problem: Problem, b: Built, seconds: list, max_err: float,
           calls_per_sample: int = 1) -> dict:
    """One results record (``RECORD_KEYS`` plus spread, error and path)."""
    ms = 1e3 * np.asarray(seconds)
    median = float(np.median(ms))
    q25, q75 = (float(q) for q in np.percentile(ms, [25, 75]))
    return {
        "impl": name, "cell": problem.cell, "mode": problem.mode,
        "B": problem.B, "T": problem.T, "H": problem.H,
        "ms": median, "tok_s": problem.B * problem.T / (median / 1e3),
        "compile_s": b.compile_s, "peak_bytes": b.peak_bytes,
        "device": b.device, "precision": b.precision,
        "matmul": matmul(b.precision, jax.default_backend()),
        "ms_min": float(ms.min()), "ms_q25": q25, "ms_q75": q75, "repeats": len(seconds),
        "calls_per_sample": calls_per_sample,
        "max_rel_err": max_err, "path": b.path, "kernel": b.kernel,
    }


def run_point(problem: Problem, builders: dict, *, warmup: int = 3, repeats: int = 20,
              seed: int = 0, min_sample_s: float = 0.01, profile: tuple = (),
              deadline: float | None = None) -> dict:
    """Builds, checks and times every implementation on one problem.

    ``builders`` maps names to ``builder(problem, data) -> Built`` (raising ``Skip``).
    Returns ``{"records", "skipped", "rejected", "failed", "profiles"}`` (lists): an
    implementation whose outputs differ from the reference beyond ``tolerance`` is rejected,
    never timed; one that raises is listed in ``failed`` with its error (and stage: build,
    check, time or profile) while the others go on; each name in ``profile`` that was timed and
    is a JAX implementation gets, after the timing, an ``rnn_jax.bench.op_profile.profile`` of
    its step (its 12 slowest operations and the totals). Past ``deadline`` (a
    ``time.monotonic()`` value) no further implementation is built: each is skipped as such.
    """
    where = {"cell": problem.cell, "mode": problem.mode, "B": problem.B, "T": problem.T,
             "H": problem.H}
    out = {"records": [], "skipped": [], "rejected": [], "failed": [], "profiles": []}

    def fail(name, stage, err):
        out["failed"].append({"impl": name, **where, "stage": stage, "error": error_text(err)})

    if deadline is not None and time.monotonic() > deadline:
        out["skipped"] = [{"impl": name, **where, "reason": "skipped: time budget spent"}
                          for name in builders]
        return out
    try:
        data = problem_data(problem)
        want = reference(problem, data)
    except Exception as err:  # noqa: BLE001 - nothing can be checked without the reference
        for name in builders:
            fail(name, "reference", err)
        return out
    backend = jax.default_backend()
    built, errors = {}, {}
    for name, builder in builders.items():
        if deadline is not None and time.monotonic() > deadline:
            out["skipped"].append({"impl": name, **where, "reason": "skipped: time budget spent"})
            continue
        stage = "build"
        try:
            b = builder(problem, data)
            stage = "check"
            result = b.step()
            b.sync(result)
            err = relative_error(b.result(result), want)
        except Skip as why:
            out["skipped"].append({"impl": name, **where, "reason": f"skipped: {why}"})
            continue
        except Exception as e:  # noqa: BLE001 - recorded, the others go on
            fail(name, stage, e)
            continue
        limit = tolerance(b.precision, backend)
        if not err <= limit:
            out["rejected"].append({"impl": name, **where, "max_rel_err": err,
                                    "tolerance": limit, "path": b.path,
                                    "reason": "outputs differ from the reference"})
            continue
        built[name], errors[name] = b, err
    failed = {}
    times, calls = time_interleaved(built, warmup=warmup, repeats=repeats, seed=seed,
                                    min_sample_s=min_sample_s, failed=failed)
    for name, err in failed.items():
        fail(name, "time", err)
    out["records"] = [record(name, problem, built[name], times[name], errors[name],
                             calls[name]) for name in built if name in times]
    for name in profile:
        if name in times and built[name].executable is not None:
            compiled, args = built[name].executable
            try:
                out["profiles"].append({"impl": name, **where, "path": built[name].path,
                                        **op_profile.profile(compiled, *args, top=12)})
            except Exception as err:  # noqa: BLE001
                fail(name, "profile", err)
    return out


def parse_size(text: str) -> tuple[int, int, int]:
    """``"BxTxH"`` -> (B, T, H)."""
    parts = str(text).lower().split("x")
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(f"a size must be 'BxTxH' with positive ints, got {text!r}")
    return sizes


def cpu_threads() -> int:
    """The cores this process may run on (what XLA's CPU client uses)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
