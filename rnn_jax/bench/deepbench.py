"""Baidu's DeepBench RNN training set: the recurrence alone, beside its published V100 times.

DeepBench (``code/kernels/rnn_problems.h``; 53 training problems: ReLU RNN H 1760-2560, LSTM
H 256-4096, GRU H 512-2816, T up to 1500) times one unidirectional float32 layer with cuDNN's
``CUDNN_SKIP_INPUT``: the input, of the hidden size, enters every gate directly, so only the
recurrence is timed, forward, backward to the inputs and backward to the weights. The sizes and
the V100 times it published are in ``data/deepbench_rnn_train_v100.csv``.

The same work here: ``u_t = [x_t, ..., x_t]`` (x_t repeated per gate, computed before the timed
call) is fed straight to ``cell.recur`` under ``lax.scan`` (the runner without its hoisted
projection), and the train step differentiates ``mean(h^2)`` for ``u`` (backward to inputs)
and the recurrent weights (backward to weights). PyTorch has no skip-input mode: its cuDNN
layer gets ``W_ih`` = gate-stacked identities, the same function with an input product
besides (one [B*T, H] x [H, G*H] GEMM more than DeepBench times). FLOP counts, the same
formula for every implementation and for the V100 figure:

    forward  2 B T H (G H)          (h_{t-1} U, every step)
    train    3 x forward            (+ dh U^T to the inputs, + h^T dz to the weights)
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import rnn_jax as rj
from rnn_jax.bench import harness

DATA = Path(__file__).parent / "data" / "deepbench_rnn_train_v100.csv"
CELLS = {"elman_relu": ("elman", {"activation": "relu"}), "lstm": ("lstm", {}),
         "gru": ("gru", {})}
IMPLS = ("rnn_jax:recurrence", "torch")


@dataclasses.dataclass(frozen=True)
class Row:
    """One DeepBench problem and its V100 cuDNN times (ms)."""

    cell: str
    hidden: int
    batch: int
    timesteps: int
    v100_fwd_ms: float
    v100_total_ms: float
    application: str

    @property
    def gates(self) -> int:
        return rj.cells.CELLS[CELLS[self.cell][0]].num_gates

    def flops(self, mode: str) -> float:
        """Recurrence FLOPs of one call (module docstring)."""
        fwd = 2.0 * self.batch * self.timesteps * self.hidden * self.gates * self.hidden
        return fwd if mode == "forward" else 3.0 * fwd

    def fits_cpu(self) -> bool:
        """The rows a 2-core CPU runs in minutes: the H = 256 LSTM, the H = 512 GRU."""
        return (self.cell, self.hidden) in (("lstm", 256), ("gru", 512))


def rows(path: Path = DATA) -> list[Row]:
    with open(path, newline="") as f:
        return [Row(r["cell"], int(r["hidden"]), int(r["batch"]), int(r["timesteps"]),
                    float(r["v100_fwd_ms"]), float(r["v100_total_ms"]), r["application"])
                for r in csv.DictReader(f)]


def _cell(row: Row):
    name, kwargs = CELLS[row.cell]
    return rj.torch_like(rj.cells.CELLS[name], row.hidden, **kwargs)


def problem_data(row: Row, seed: int = 0) -> dict:
    """Weights (rnn_jax layout, I = H) and inputs ``x: [B, T, H]`` as NumPy float32."""
    k_p, k_x = jax.random.split(jax.random.key(seed))
    params = _cell(row).init(k_p, row.hidden)
    x = jax.random.normal(k_x, (row.batch, row.timesteps, row.hidden), jnp.float32)
    return {"params": jax.tree.map(np.asarray, params), "x": np.asarray(x)}


def recurrence(row: Row, mode: str, data: dict, precision: str = "default") -> harness.Built:
    """rnn_jax: ``lax.scan`` over ``cell.recur`` on ``u`` (no input product), compiled."""
    cell = _cell(row)
    params = jax.device_put({k: v for k, v in data["params"].items() if k != "W"})
    us = jnp.tile(jnp.moveaxis(jnp.asarray(data["x"]), 1, 0), (1, 1, row.gates))  # [T, B, GH]

    def forward(p, u):
        def body(c, u_t):
            return cell.recur(p, c, u_t + p["b"][None])

        return jax.lax.scan(body, cell.initial_carry((row.batch,)), u)[1]

    def train(p, u):
        return jax.value_and_grad(lambda p, u: jnp.mean(forward(p, u) ** 2), (0, 1))(p, u)

    start = time.perf_counter()
    with jax.default_matmul_precision(None if precision == "default" else precision):
        compiled = jax.jit(forward if mode == "forward" else train).lower(params, us).compile()
    compile_s = time.perf_counter() - start

    def result(out):
        if mode == "forward":
            return {"hs": np.moveaxis(np.asarray(out), 0, 1)}
        loss, (grads, _) = out
        return {"loss": np.asarray(loss), "U": np.asarray(grads["U"])}

    return harness.Built(lambda: compiled(params, us), jax.block_until_ready, result,
                         compile_s, None, str(jax.devices()[0].device_kind), precision,
                         "scan over recur (skip-input)")


def torch_layer(row: Row, mode: str, data: dict) -> harness.Built:
    """PyTorch (cuDNN on a GPU, TF32 off) with ``W_ih`` = identities: DeepBench's function."""
    if importlib.util.find_spec("torch") is None:
        raise harness.Skip("torch is not installed")
    import torch as th

    cuda = th.cuda.is_available() and jax.default_backend() == "gpu"
    dev = th.device("cuda" if cuda else "cpu")
    if cuda:
        th.backends.cuda.matmul.allow_tf32 = th.backends.cudnn.allow_tf32 = False
    else:
        th.set_num_threads(harness.cpu_threads())
    name, kwargs = CELLS[row.cell]
    cls = {"elman": th.nn.RNN, "lstm": th.nn.LSTM, "gru": th.nn.GRU}[name]
    extra = {"nonlinearity": "relu"} if kwargs.get("activation") == "relu" else {}
    mod = cls(row.hidden, row.hidden, batch_first=True, **extra).to(dev)
    p, h = data["params"], row.hidden
    bias_hh = np.zeros_like(p["b"])
    if name == "gru":
        bias_hh[2 * h:] = p["b_hn"]
    eye = np.tile(np.eye(h, dtype=np.float32), (row.gates, 1))  # [G*H, H]
    with th.no_grad():
        for key, value in (("weight_ih_l0", eye), ("weight_hh_l0", p["U"].T),
                           ("bias_ih_l0", p["b"]), ("bias_hh_l0", bias_hh)):
            getattr(mod, key).copy_(th.tensor(np.ascontiguousarray(value)))
    x = th.tensor(data["x"]).to(dev)

    def step():
        if mode == "forward":
            with th.inference_mode():
                return mod(x)[0]
        mod.zero_grad(set_to_none=True)
        loss = mod(x)[0].pow(2).mean()
        loss.backward()
        return loss.detach()

    def sync(out):
        if cuda:
            th.cuda.synchronize()

    def result(out):
        if mode == "forward":
            return {"hs": out.cpu().numpy()}
        return {"loss": out.cpu().numpy(), "U": mod.weight_hh_l0.grad.cpu().numpy().T}

    path = "cuDNN, with an identity input product" if cuda else (
        f"ATen/oneDNN CPU, {th.get_num_threads()} threads, with an identity input product")
    return harness.Built(step, sync, result, None, None,
                         th.cuda.get_device_name() if cuda else "cpu", "float32", path)


BUILDERS = {"rnn_jax:recurrence": recurrence, "torch": torch_layer}


def run_row(row: Row, mode: str, impls=IMPLS, *, warmup: int = 1, repeats: int = 5,
            deadline: float | None = None) -> dict:
    """Checks every implementation against the recurrence at "highest" precision, then times
    them interleaved; ``{"records", "skipped", "rejected", "failed"}`` as ``run_point``."""
    where = {"cell": row.cell, "mode": mode, "B": row.batch, "T": row.timesteps,
             "H": row.hidden}
    out = {"records": [], "skipped": [], "rejected": [], "failed": []}
    if deadline is not None and time.monotonic() > deadline:
        out["skipped"] = [{"impl": n, **where, "reason": "skipped: time budget spent"}
                          for n in impls]
        return out
    data = problem_data(row)
    try:
        b = recurrence(row, mode, data, "highest")
        want = b.result(b.step())
    except Exception as err:  # noqa: BLE001 - no check without the reference
        out["failed"] = [{"impl": n, **where, "stage": "reference",
                          "error": harness.error_text(err)} for n in impls]
        return out
    built, errs = {}, {}
    for name in impls:
        try:
            b = BUILDERS[name](row, mode, data)
            result = b.step()
            b.sync(result)
            err = harness.relative_error(b.result(result), want)
        except harness.Skip as why:
            out["skipped"].append({"impl": name, **where, "reason": f"skipped: {why}"})
            continue
        except Exception as e:  # noqa: BLE001
            out["failed"].append({"impl": name, **where, "stage": "build",
                                  "error": harness.error_text(e)})
            continue
        limit = harness.tolerance(b.precision, jax.default_backend())
        if not err <= limit:
            out["rejected"].append({"impl": name, **where, "max_rel_err": err,
                                    "tolerance": limit, "reason": "outputs differ"})
            continue
        built[name], errs[name] = b, err
    failed = {}
    times, calls = harness.time_interleaved(built, warmup=warmup, repeats=repeats,
                                            min_sample_s=0.005, failed=failed)
    out["failed"] += [{"impl": n, **where, "stage": "time", "error": harness.error_text(e)}
                      for n, e in failed.items()]
    v100 = row.v100_fwd_ms if mode == "forward" else row.v100_total_ms
    for name in times:
        ms = 1e3 * float(np.median(times[name]))
        out["records"].append({
            "impl": name, **where, "ms": ms, "ms_min": 1e3 * float(np.min(times[name])),
            "repeats": len(times[name]), "tflops": row.flops(mode) / (ms * 1e9),
            "v100_ms": v100, "v100_tflops": row.flops(mode) / (v100 * 1e9),
            "compile_s": built[name].compile_s, "device": built[name].device,
            "precision": built[name].precision,
            "matmul": harness.matmul(built[name].precision, jax.default_backend()),
            "path": built[name].path, "max_rel_err": errs[name],
            "application": row.application})
    return out


def run_suite(rows_, modes=harness.MODES, impls=IMPLS, *, warmup: int = 1,
              repeats: int = 5, budget_s: float | None = None) -> dict:
    """Every row and mode; lists as ``run_row`` plus the rows run.

    ``budget_s``: seconds for the suite; the rows then run cheapest first (by FLOPs), so a
    budget covers as many as it can, and those it does not reach are recorded as skipped.
    """
    out = {"records": [], "skipped": [], "rejected": [], "failed": []}
    deadline = None
    if budget_s is not None:
        deadline = time.monotonic() + budget_s
        rows_ = sorted(rows_, key=lambda r: r.flops("train"))
    for row in rows_:
        for mode in modes:
            point = run_row(row, mode, impls, warmup=warmup, repeats=repeats,
                            deadline=deadline)
            for key in out:
                out[key] += point[key]
    out["rows"] = [dataclasses.asdict(r) for r in rows_]
    return out


def report_lines(metrics: dict) -> list[str]:
    """A table per mode: ms and TFLOP/s of each implementation beside the V100's."""
    lines = ["DeepBench's RNN training set: the recurrence alone (skip-input), float32; "
             "TFLOP/s = 2 B T H (G H) per forward, 3x that per train step (forward, backward "
             "to inputs and to weights), the same formula for every column. PyTorch computes "
             "an identity input product besides (it has no skip-input mode).", ""]
    records = metrics["records"]
    impls = sorted({r["impl"] for r in records})
    for mode in harness.MODES:
        rows_ = [r for r in records if r["mode"] == mode]
        if not rows_:
            continue
        lines += [f"### {mode} ({'V100: forward' if mode == 'forward' else 'V100: total'})", "",
                  "| cell | H | B | T | " + " | ".join(f"{i} ms | {i} TFLOP/s" for i in impls)
                  + " | V100 cuDNN ms | V100 TFLOP/s |", "|---" * (6 + 2 * len(impls)) + "|"]
        points = {}
        for r in rows_:
            points.setdefault((r["cell"], r["H"], r["B"], r["T"]), {})[r["impl"]] = r
        for (cell, h, b, t), by in points.items():
            any_r = next(iter(by.values()))
            cols = [f"{by[i]['ms']:.3g} | {by[i]['tflops']:.3g}" if i in by else "— | —"
                    for i in impls]
            lines.append(f"| {cell} | {h} | {b} | {t} | " + " | ".join(cols)
                         + f" | {any_r['v100_ms']:.3g} | {any_r['v100_tflops']:.3g} |")
        lines.append("")
    for title, key in (("Failed", "failed"), ("Rejected", "rejected"), ("Skipped", "skipped")):
        if metrics.get(key):
            lines += [f"{title}:"] + [
                f"- {e['impl']} {e['cell']} {e['mode']} {e['B']}x{e['T']}x{e['H']}: "
                + (e.get("reason") or f"{e.get('stage')}: {e.get('error')}")
                for e in metrics[key]] + [""]
    return lines
