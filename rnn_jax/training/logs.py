"""A run's logs on disk: ``run.json`` (its identity), ``metrics.jsonl`` and TensorBoard events.

``fit`` (``rnn_jax.training.loop``) writes one JSON line per record, ``{"kind", "step", ...}``,
and the same scalars as TensorBoard tags ``<kind>/<name>``. On resume the checkpoint's history
is authoritative: ``metrics.jsonl`` is rewritten from it and TensorBoard drops events past it
(``purge_step``). ``check_identity`` refuses a directory written by a different run.
"""

from __future__ import annotations

import json
import os
import pathlib
import time


def differences(stored: dict, expected: dict, prefix: str = "") -> list[str]:
    """``"<field>: stored <a> vs given <b>"`` for every field of ``expected`` that ``stored``
    does not match, descending into dicts both hold (``data['train']['xs']: ...``)."""
    diff = []
    for k in expected if not prefix else dict.fromkeys([*stored, *expected]):
        s, e, name = stored.get(k), expected.get(k), f"{prefix}[{k!r}]" if prefix else k
        if isinstance(s, dict) and isinstance(e, dict):
            diff += differences(s, e, name)
        elif s != e:
            diff.append(f"{name}: stored {s!r} vs given {e!r}")
    return diff


def check_identity(stored: dict, expected: dict, where: str) -> None:
    """Raises ValueError listing every field where ``stored`` differs from ``expected``."""
    diff = differences(stored, expected)
    if diff:
        raise ValueError(f"{where} was written by a different run; differences: " + "; ".join(diff)
                         + ". Use another directory, or the original settings to resume.")


class Logs:
    """metrics.jsonl + TensorBoard events in ``log_dir``; nothing at all when it is None."""

    def __init__(self, log_dir, identity: dict, history: dict, start: int, writer_ok: bool):
        self.jsonl = self.tb = None
        if log_dir is None or not writer_ok:
            return
        root = pathlib.Path(log_dir)
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / "run.json.tmp"
        tmp.write_text(json.dumps(identity, indent=1))
        os.replace(tmp, root / "run.json")
        # The checkpoint's history is authoritative: lines past it were written by a killed run
        # whose later steps are about to be recomputed exactly.
        lines = [json.dumps({"kind": kind, **rec}) + "\n"
                 for kind in ("train", "eval") for rec in history[kind]]
        tmp = root / "metrics.jsonl.tmp"
        tmp.write_text("".join(sorted(lines, key=lambda s: json.loads(s)["step"])))
        os.replace(tmp, root / "metrics.jsonl")
        self.jsonl = open(root / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        from tensorboardX import SummaryWriter  # imported here: only runs with a log_dir need it

        # tensorboardX names files by the second and opens them with "wb": a unique suffix
        # keeps a quick restart from overwriting the previous run's events.
        self.tb = SummaryWriter(str(root), purge_step=start if start else None,
                                filename_suffix=f".{os.getpid()}.{time.time_ns()}")

    def write(self, kind: str, rec: dict) -> None:
        if self.jsonl is None:
            return
        self.jsonl.write(json.dumps({"kind": kind, **rec}) + "\n")
        self.jsonl.flush()
        for name, value in rec.items():
            if name != "step" and isinstance(value, int | float):
                self.tb.add_scalar(f"{kind}/{name}", value, rec["step"])

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
            self.tb.close()


def check_log_dir(log_dir, identity: dict, resuming_dir: bool) -> None:
    if log_dir is None:
        return
    root = pathlib.Path(log_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"log_dir {root} exists and is not a directory")
    old = root / "metrics.jsonl"
    if (root / "run.json").exists():
        check_identity(json.loads((root / "run.json").read_text()), identity, f"log_dir {root}")
    elif old.exists() and old.stat().st_size:
        raise ValueError(f"log_dir {root} holds metrics.jsonl of an unknown run; expected an "
                         "empty log_dir or the log_dir of this run")
    if (root / "run.json").exists() and not resuming_dir:
        raise ValueError(f"log_dir {root} holds the logs of this run but no checkpoint_dir was "
                         "given to resume from; pass its checkpoint_dir or a fresh log_dir")
