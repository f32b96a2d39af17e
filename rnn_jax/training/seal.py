"""The seal of a checkpoint step: what makes a step directory *valid*.

After orbax has finished writing ``<step>/``, every file in it is flushed to disk and its size
and SHA-256 recorded in ``rnn_jax.json``, written last and atomically (tmp + rename + directory
fsync), with a hash of the record itself. A step is valid when its seal is intact and every file
it lists is present with its recorded size and hash; a crash at any point of a save leaves an
orbax temporary directory or an unsealed step, and neither is valid (``checkpoint`` reads only
valid steps).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re

SEAL = "rnn_jax.json"
FORMAT = "rnn_jax.checkpoint"
VERSION = 1
_STEP_NAME = re.compile(r"0|[1-9][0-9]*")


def digest(path: pathlib.Path, *, sync: bool = False) -> dict:
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
        if sync:
            os.fsync(f.fileno())
    return {"size": size, "sha256": sha.hexdigest()}


def fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def self_hash(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "seal_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write(step_dir: pathlib.Path, record: dict) -> None:
    """Flushes every file of a finished orbax step to disk, then writes the seal atomically."""
    files, dirs = {}, [step_dir]
    for path in sorted(step_dir.rglob("*")):
        if path.is_dir():
            dirs.append(path)
        elif path.is_file():
            files[path.relative_to(step_dir).as_posix()] = digest(path, sync=True)
    for d in dirs:
        fsync_dir(d)
    record = {**record, "files": files}
    record["seal_sha256"] = self_hash(record)
    tmp = step_dir / f"{SEAL}.tmp"
    with open(tmp, "x", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, step_dir / SEAL)
    fsync_dir(step_dir)
    fsync_dir(step_dir.parent)


def check(step_dir: pathlib.Path, step: int) -> tuple[dict | None, str | None]:
    """(seal record, None) for a valid step directory, else (None, the reason it is not)."""
    try:
        record = json.loads((step_dir / SEAL).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"no {SEAL} seal (an unfinished save)"
    except (OSError, ValueError) as err:
        return None, f"unreadable {SEAL} seal ({err})"
    if not (isinstance(record, dict) and record.get("seal_sha256") == self_hash(record)
            and record.get("format") == FORMAT and record.get("version") == VERSION
            and record.get("step") == step):
        return None, f"{SEAL} seal is damaged or not for step {step}"
    for rel, want in record["files"].items():
        try:
            got = digest(step_dir / rel)
        except OSError:
            return None, f"file {rel} is missing or unreadable"
        if got != want:
            return None, f"file {rel} differs from its recorded size/hash (truncated or changed)"
    return record, None


def step_dirs(root: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    """Directories named like a step, newest first (orbax temporaries never match)."""
    if not root.is_dir():
        return []
    found = [(int(p.name), p) for p in root.iterdir()
             if _STEP_NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(found, reverse=True)
