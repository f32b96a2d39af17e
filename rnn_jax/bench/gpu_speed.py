"""``auto``'s kernel choice from measured speed: a ``make gpu-check`` run -> ``gpu_speed_table``.

The fit table (``rnn_jax.loops.gpu_fit_table``) says which kernel configurations compile within
a GPU's limits; this says which of them a GPU timed fastest, and whether any beat the scans.
From the train-step records of a gpu_check run on a GPU (its ``results.json``), per key
(cell, padded H, storage dtype) of ``rnn_jax.loops.gpu_fit``:

- alternatives: the XLA loops ``auto`` would otherwise run (records whose path is the fused or
  the plain scan, unroll 1), the faster of the two per size;
- candidates: each Pallas launch configuration (a record's ``kernel``) timed at every size of
  the key, at default precision, unroll 1 (where two records time one configuration, as
  ``rnn_jax`` and ``rnn_jax:pallas-resident`` may, their mean);
- the choice: the candidate with the smallest worst ratio over the sizes (kernel ms / best
  alternative ms), if that ratio is below 1 — where ``auto`` picks a kernel it must never be
  slower than the scan paths — else no kernel (None: ``auto`` runs the scans there).

The speed of one (B, T) stands for every batch and length of that key; keys a run did not
time keep their earlier entry. Records from a CPU (interpret-mode kernels) are refused: their
times say nothing about a GPU.

    python -m rnn_jax.bench.gpu_speed --results benchmarks/h200/gpu_check/results.json \\
        --write rnn_jax/loops/gpu_speed_table.py
"""

from __future__ import annotations

import argparse
import json

import jax.numpy as jnp
import numpy as np

from rnn_jax.bench import harness
from rnn_jax.loops import gpu_fit, gpu_speed_table

ALTERNATIVES = ("fused", "scan")  # the XLA loops auto runs where it takes no kernel


def _key(record):
    problem = harness.Problem(record["cell"], record["mode"], record["B"], record["T"],
                              record["H"])
    return gpu_fit.key_of(problem.rj_cell, jnp.float32)


def _loop(record):
    """("kernel", config) / ("xla", "fused" | "scan") / None for a record that does not count."""
    path = record.get("path", "")
    if (record.get("mode") != "train" or record.get("precision") != "default"
            or not path.endswith(", unroll 1")):
        return None
    if path.startswith("pallas (Triton)") and record.get("kernel"):
        return "kernel", tuple(sorted(record["kernel"].items()))
    loop = path.split(",")[0]
    return ("xla", loop) if loop in ALTERNATIVES else None


def choose(results: dict) -> dict:
    """``{key: entry}`` for every key the run timed with a kernel and an alternative.

    ``results``: a gpu_check ``results.json`` (``{"metrics": {"records": ...}, "env": ...}``);
    raises ValueError where it did not run on a GPU.
    """
    env = results.get("env", {})
    if env.get("backend") != "gpu":
        raise ValueError(f"results must come from a GPU run (env.backend 'gpu'), got backend "
                         f"{env.get('backend')!r}: interpret-mode times say nothing about a GPU")
    timed = {}  # key -> size -> loop -> [ms]
    for record in results["metrics"]["records"]:
        loop, key = _loop(record), _key(record)
        if loop is None or key is None:
            continue
        size = f"{record['B']}x{record['T']}x{record['H']}"
        timed.setdefault(key, {}).setdefault(size, {}).setdefault(loop, []).append(
            record["ms"])
    device = (env.get("devices") or [None])[0]
    return {key: entry for key, sizes in timed.items()
            if (entry := _entry(sizes, device, env.get("jax"))) is not None}


def _entry(sizes, device, jax_version):
    sizes = {s: loops for s, loops in sizes.items()
             if any(k == "xla" for k, _ in loops) and any(k == "kernel" for k, _ in loops)}
    if not sizes:
        return None
    best = {s: min(float(np.mean(v)) for (k, _), v in loops.items() if k == "xla")
            for s, loops in sizes.items()}
    configs = set.intersection(*({c for k, c in loops if k == "kernel"}
                                 for loops in sizes.values()))
    worst = {c: max(float(np.mean(sizes[s][("kernel", c)])) / best[s] for s in sizes)
             for c in configs}
    fastest = min(worst, key=worst.get) if worst else None
    wins = fastest is not None and worst[fastest] < 1.0
    return {"kernel": dict(fastest) if wins else None,
            "ratio": None if fastest is None else round(worst[fastest], 3),
            "timed": {s: {_name(k, c): round(float(np.mean(v)), 4) for (k, c), v in loops.items()}
                      for s, loops in sorted(sizes.items())},
            "device": device, "jax": jax_version}


def _name(kind, config):
    if kind == "xla":
        return config
    c = dict(config)
    tile = f" tile {c['tile']}" if c.get("tile") else ""
    return (f"pallas {'resident' if c['resident'] else 'streamed'}"
            f"{' prefetch' if c.get('prefetch') else ''}{tile} {c['num_warps']}w")


def write_table(path, choices, source):
    """Writes the table module: ``choices`` over the entries of the current table."""
    merged = {**gpu_speed_table.CHOICES,
              **{k: {**v, "source": source} for k, v in choices.items()}}
    with open(path, "w") as f:
        f.write('"""Generated by `python -m rnn_jax.bench.gpu_speed`: do not edit.\n\n'
                'The fused-loop kernel ``method="auto"`` runs per (cell, padded H, storage '
                'dtype), as a GPU\ntimed it (``rnn_jax.loops.gpu_fit.kernel_for``): kernel '
                'None where no kernel beat the\nscans; ratio: its ms over the best scan\'s, '
                'the worst over the timed sizes (rnn_jax.bench.gpu_speed).\n"""\n'
                "# ruff: noqa: E501\n\nCHOICES = {\n")
        for key in sorted(merged):
            f.write(f"    {key!r}: {merged[key]!r},\n")
        f.write("}\n")
    return merged


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="a gpu_check results.json")
    parser.add_argument("--write", required=True, help="the table module to write")
    args = parser.parse_args(argv)
    with open(args.results) as f:
        choices = choose(json.load(f))
    for key, entry in sorted(write_table(args.write, choices, args.results).items()):
        print(key, "->", entry["kernel"], "ratio", entry["ratio"])


if __name__ == "__main__":
    main()
