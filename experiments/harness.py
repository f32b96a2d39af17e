"""The experiment harness: discovery, config flags, and the files every run writes.

An experiment is a module of this package that defines

    Config             a frozen dataclass; its defaults are the full run
    run(cfg) -> dict   the metrics (JSON-serialisable; curves as lists)
    SMOKE              optional dict of Config overrides for ``--smoke`` (seconds, same code)
    figures(metrics, cfg, out_dir) -> list[Path]   optional, PNG figures
    report(metrics, cfg) -> str                    optional, markdown beside the paper's numbers

``run_experiment`` writes ``OUT/NAME/results.json`` (``{"name", "config", "metrics", "env"}``),
the figures and ``OUT/NAME/report.md``. Config values are validated before anything is
written, and every file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import importlib.metadata
import json
import math
import os
import pkgutil
import platform
import shlex
import subprocess
import sys
import time
import types
import typing
from pathlib import Path

import numpy as np

NOT_EXPERIMENTS = {"harness", "__main__", "demo", "training", "seed_stats"}  # helpers


def experiment_names() -> list[str]:
    """Every module of the package that defines ``Config`` and ``run``."""
    pkg_dir = Path(__file__).parent
    names = []
    for info in pkgutil.iter_modules([str(pkg_dir)]):
        if info.name in NOT_EXPERIMENTS or info.name.startswith("_"):
            continue
        names.append(info.name)
    return sorted(names)


def load(name: str) -> types.ModuleType:
    """Imports experiment ``name``; unknown names raise a ValueError listing the known ones."""
    names = experiment_names()
    if name not in names:
        raise ValueError(f"experiment {name!r} does not exist; expected one of {names}")
    module = importlib.import_module(f"experiments.{name}")
    if not (hasattr(module, "Config") and hasattr(module, "run")):
        raise ValueError(f"experiments.{name} defines no Config and run(cfg)")
    return module


# -- checks shared by the experiments' Config.__post_init__ -----------------------------------
def check_models(models, allowed) -> None:
    """``models`` must be a non-empty tuple of distinct names from ``allowed``."""
    unknown = [m for m in models if m not in allowed]
    if not models or unknown or len(set(models)) != len(models):
        raise ValueError(f"models must be distinct names from {tuple(allowed)}, got {models!r}")


def with_registry(own) -> tuple[str, ...]:
    """An experiment's own model names, then every other cell ``rj.get_cell`` knows.

    So every experiment's ``--models`` takes any registered cell (built by ``get_cell`` with
    the cell's own default initialisation) besides the experiment's named variants.
    """
    from rnn_jax.cells import CELLS

    return tuple(own) + tuple(n for n in CELLS if n not in own)


def check_positive(cfg, names) -> None:
    """Each field of ``cfg`` named in ``names`` must be >= 1."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")


def check_eval_batches(eval_examples: int, eval_batch_size: int) -> None:
    """Evaluation runs on whole batches: ``eval_examples`` a positive multiple of the size."""
    if eval_examples < 1 or eval_examples % eval_batch_size:
        raise ValueError(f"eval_examples={eval_examples} must be a positive multiple "
                         f"of eval_batch_size={eval_batch_size}")


def remat_option(text: str):
    """The runner's ``remat`` from a config string: "false" (store every step), "segments" or
    "true" (checkpointed segments of about √T steps), or a segment length such as "400"."""
    from rnn_jax.loops.segments import check_remat

    low = str(text).strip().lower()
    value = {"false": False, "true": True, "segments": "segments"}.get(low, low)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    try:
        check_remat(value)
    except ValueError:
        raise ValueError(f"remat must be 'false', 'segments', 'true' or a segment length "
                         f">= 1, got {text!r}") from None
    return value


# -- config values from the command line ------------------------------------------------------
def _parse_value(name: str, text: str, tp):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse_value(name, text, inner[0])
    if origin is tuple:
        elem = args[0] if args else str
        parts = [p for p in text.split(",") if p.strip()]
        return tuple(_parse_value(name, p.strip(), elem) for p in parts)
    try:
        if tp is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        return str(text)
    except ValueError:
        raise ValueError(
            f"--{name} expects a value of type {getattr(tp, '__name__', tp)}, got {text!r}"
        ) from None


def make_config(module, overrides: dict | None = None, *, smoke: bool = False):
    """The module's Config with SMOKE (if ``smoke``) and then ``overrides`` applied.

    ``overrides`` maps field names to values or to command-line strings (parsed by type).
    """
    cfg_cls = module.Config
    hints = typing.get_type_hints(cfg_cls)
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    values = dict(getattr(module, "SMOKE", {})) if smoke else {}
    for key, value in (overrides or {}).items():
        key = key.replace("-", "_")
        if key not in fields:
            raise ValueError(
                f"{module.__name__.split('.')[-1]} has no config field {key!r}; "
                f"expected one of {sorted(fields)}"
            )
        values[key] = _parse_value(key, value, hints[key]) if isinstance(value, str) else value
    return cfg_cls(**values)


def command_line(name: str, cfg, base, *, smoke: bool = False) -> str:
    """The command that reruns ``cfg``: a flag for every field that differs from ``base`` (the
    config of ``python -m experiments run NAME [--smoke]`` alone)."""
    words = ["python -m experiments run", name] + (["--smoke"] if smoke else [])
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value != getattr(base, f.name):
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            words.append(f"--{f.name} {shlex.quote(text)}")
    return " ".join(words)


# -- what every results.json records -----------------------------------------------------------
def environment() -> dict:
    """Versions, device and matmul precision: enough to know where a number came from."""
    import jax

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d.device_kind) for d in jax.devices()],
        "device_count": jax.device_count(),
        "matmul_precision": str(jax.config.jax_default_matmul_precision or "default"),
        "x64": bool(jax.config.jax_enable_x64),
        "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
    }
    for pkg in ("jaxlib", "optax", "flax", "numpy", "orbax-checkpoint", "torch"):
        try:  # the installed version, without paying for importing the package
            env[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent, timeout=10)
        if commit.returncode == 0:
            env["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def to_jsonable(x):
    """Arrays, NumPy scalars, tuples and non-finite floats to plain JSON values."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_jsonable(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, str):
        return to_jsonable(np.asarray(x).tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # "nan" / "inf": JSON has no literal for them
    if isinstance(x, bool | int | float | str) or x is None:
        return x
    return str(x)


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary file beside ``path``, then renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_experiment(name: str, overrides: dict | None = None, *, smoke: bool = False,
                   out: str | Path = "results", echo: bool = True) -> dict:
    """Runs one experiment and writes results.json, its figures and report.md under OUT/NAME."""
    module = load(name)
    cfg = make_config(module, overrides, smoke=smoke)  # bad flags fail here, before any write
    out_dir = Path(out) / name
    start = time.perf_counter()
    metrics = module.run(cfg)
    seconds = time.perf_counter() - start
    result = {
        "name": name,
        "command": command_line(name, cfg, make_config(module, smoke=smoke), smoke=smoke),
        "config": to_jsonable(dataclasses.asdict(cfg)),
        "metrics": to_jsonable(metrics),
        "env": {**environment(), "smoke": smoke, "wall_seconds": round(seconds, 2)},
    }
    write_atomic(out_dir / "results.json", json.dumps(result, indent=2) + "\n")
    figures = []
    if hasattr(module, "figures"):
        figures = [Path(p) for p in module.figures(metrics, cfg, out_dir)]
    lines = [f"# {name}", "", f"Run in {seconds:.1f} s on {result['env']['backend']} "
             f"({', '.join(sorted(set(result['env']['devices'])))}), jax {result['env']['jax']}"
             f"{' — smoke run' if smoke else ''}.", "",
             f"Reproduce: `{result['command']}`", ""]
    if hasattr(module, "report"):
        lines.append(module.report(metrics, cfg))
    else:
        lines += ["```json", json.dumps(result["metrics"], indent=2)[:4000], "```"]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in figures]
    write_atomic(out_dir / "report.md", "\n".join(lines) + "\n")
    if echo:
        print(f"{name}: wrote {out_dir / 'results.json'} ({seconds:.1f} s)", file=sys.stderr)
    return result
