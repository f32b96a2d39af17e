"""Save and restore training state with orbax: atomic, sealed, checked against a template.

A checkpoint directory holds one subdirectory per step, in orbax's layout::

    directory/
      <step>/                       written by orbax.checkpoint.CheckpointManager (tmp + rename)
        state/                      the array leaves, an orbax PyTree item {"leaf_000000": ...}
        meta/                       the tree signature and the caller's metadata (orbax JSON item)
        _CHECKPOINT_METADATA        orbax's step metadata
        rnn_jax.json                the seal, written last and atomically: signature, metadata,
                                    and the size and SHA-256 of every other file in <step>/
      <step>.orbax-checkpoint-tmp/  a save in progress, or one that crashed: never read

A step is *valid* when its seal is intact and every file it lists is present with its recorded
size and hash. Only valid steps are listed, restored or pruned. A crash at any point of a save
leaves either an orbax temporary directory or an unsealed step directory, and neither is valid.

The signature records, for every leaf in ``jax.tree_util.tree_flatten_with_path`` order, its
path (``keystr``), shape and dtype. Leaves may be jax or numpy arrays, numpy scalars, python
``bool``/``int``/``float``/``complex``, or typed PRNG key arrays (``jax.random.key``), which are
stored as their ``key_data`` and rebuilt with ``wrap_key_data``. Restoring follows the template
``like``: each leaf comes back as the template leaf's kind (jax array on the template's sharding,
numpy array or scalar, python scalar, typed key).

The seal itself (hashing, atomic write, validity) is ``seal.py``; what stays here, save and
restore with their template checks, is one topic and a little over 300 lines.

Scope: one writing process per directory, local file systems; arrays are gathered to the host.
Nothing here deletes or rewrites a file it did not just write, except ``keep`` pruning older valid
steps (through orbax) and orbax replacing the leftover temporary directory of a step saved again.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from rnn_jax.training import seal

SEAL = seal.SEAL

_PYTHON_SCALARS = {bool: np.bool_, int: np.int64, float: np.float64, complex: np.complex128}


def _options(*, create: bool) -> ocp.CheckpointManagerOptions:
    # Synchronous: `save` returns only once the step is final, and a failed write raises before
    # anything else happens (orbax's async finalizer would log the error and carry on). No root
    # metadata and no orbax-side pruning: the only files written are the step's own.
    # Under jax.distributed only the calling process touches the directory: orbax would
    # otherwise wait at a barrier for processes that never save (rnn_jax.training.loop writes from
    # process 0 alone), and it refuses create=True with a restricted process set.
    multi = {}
    if jax.process_count() > 1:
        me = jax.process_index()
        multi = dict(multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}))
    return ocp.CheckpointManagerOptions(
        create=create and not multi, enable_async_checkpointing=False, save_root_metadata=False,
        lightweight_initialize=True, **multi)


def _as_dir(directory, fn: str) -> pathlib.Path:
    if isinstance(directory, bytes) or not isinstance(directory, str | os.PathLike):
        raise TypeError(f"{fn}: directory must be a str or os.PathLike path, got "
                        f"{type(directory).__name__} {directory!r}")
    path = pathlib.Path(os.fspath(directory)).absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{fn}: directory {path} exists and is not a directory")
    return path


def _as_step(step, fn: str, name: str = "step") -> int:
    if isinstance(step, bool) or not isinstance(step, int | np.integer):
        raise TypeError(f"{fn}: {name} must be an int, got {type(step).__name__} {step!r}")
    if step < 0:
        raise ValueError(f"{fn}: {name} must be >= 0, got {step}")
    return int(step)


def _spec(path: str, leaf, fn: str, *, abstract_ok: bool) -> dict:
    """{"path", "shape", "dtype"} of one leaf (plus "impl" for a concrete typed key array)."""
    if type(leaf) in _PYTHON_SCALARS:
        return {"path": path, "shape": [], "dtype": f"python {type(leaf).__name__}"}
    if isinstance(leaf, jax.ShapeDtypeStruct) and not abstract_ok:
        raise TypeError(f"{fn}: leaf {path} is an abstract jax.ShapeDtypeStruct; "
                        "expected a concrete array to save")
    if not isinstance(leaf, jax.Array | np.ndarray | np.generic | jax.ShapeDtypeStruct):
        raise TypeError(f"{fn}: leaf {path} is a {type(leaf).__name__}; expected a jax or numpy "
                        "array, a numpy scalar, a python bool/int/float/complex or a typed key")
    spec = {"path": path, "shape": [int(d) for d in leaf.shape], "dtype": str(leaf.dtype)}
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        if isinstance(leaf, jax.Array):
            spec["impl"] = str(jax.random.key_impl(leaf))
    elif not (jnp.issubdtype(leaf.dtype, jnp.number) or jnp.issubdtype(leaf.dtype, jnp.bool_)):
        raise TypeError(f"{fn}: leaf {path} has dtype {leaf.dtype}; expected a numeric, bool "
                        "or PRNG key dtype")
    return spec


def _specs(tree, fn: str, *, abstract_ok: bool) -> tuple[list, list[dict], object]:
    pairs, treedef = jax.tree_util.tree_flatten_with_path(tree)
    leaves = [leaf for _, leaf in pairs]
    specs = [_spec(jax.tree_util.keystr(p), leaf, fn, abstract_ok=abstract_ok)
             for p, leaf in pairs]
    return leaves, specs, treedef


def _to_host(leaf, spec: dict) -> np.ndarray:
    if type(leaf) in _PYTHON_SCALARS:
        try:
            return np.asarray(leaf, dtype=_PYTHON_SCALARS[type(leaf)])
        except OverflowError:
            raise ValueError(f"save: leaf {spec['path']} = {leaf} does not fit in int64") from None
    if "impl" in spec:
        leaf = jax.random.key_data(leaf)
    return np.asarray(jax.device_get(leaf))


def _select(root: pathlib.Path, step: int | None, fn: str) -> tuple[int, dict] | None:
    """(step, seal record) of `step`, or of the newest valid step; None when there is none."""
    if step is None:
        for s, path in seal.step_dirs(root):
            record, _ = seal.check(path, s)
            if record is not None:
                return s, record
        return None
    path = root / str(step)
    if not path.is_dir():
        raise FileNotFoundError(f"{fn}: no checkpoint for step={step} in {root}; valid steps "
                                f"there: {all_steps(root)}")
    record, problem = seal.check(path, step)
    if record is None:
        raise ValueError(f"{fn}: checkpoint {path} (step={step}) is not valid: {problem}; "
                         f"valid steps there: {all_steps(root)}")
    return step, record


def _compare(root: pathlib.Path, step: int, stored: list[dict], expected: list[dict]) -> None:
    where = f"checkpoint {root / str(step)} (step {step}) does not match the template `like`"
    for i in range(max(len(stored), len(expected))):
        s = stored[i] if i < len(stored) else None
        e = expected[i] if i < len(expected) else None
        if s is None or e is None or s["path"] != e["path"]:
            raise ValueError(
                f"{where}: the tree structures differ at leaf #{i}: stored "
                f"{s['path'] if s else '(no more leaves)'} vs expected "
                f"{e['path'] if e else '(no more leaves)'}")
        if (s["shape"], s["dtype"]) != (e["shape"], e["dtype"]):
            raise ValueError(
                f"{where}: first differing leaf {s['path']}: stored shape {tuple(s['shape'])} "
                f"dtype {s['dtype']} vs expected shape {tuple(e['shape'])} dtype {e['dtype']}")


def all_steps(directory) -> list[int]:
    """The valid steps under ``directory``, ascending ([] when it does not exist)."""
    root = _as_dir(directory, "all_steps")
    return sorted(s for s, path in seal.step_dirs(root) if seal.check(path, s)[0] is not None)


def invalid_steps(directory) -> dict[int, str]:
    """Step directories under ``directory`` that are not valid checkpoints, with the reason why.

    Orbax temporary directories (saves in progress or crashed) are not step directories and are
    not listed. Nothing is modified; moving an invalid directory away is left to a person.
    """
    root = _as_dir(directory, "invalid_steps")
    return {s: problem for s, path in sorted(seal.step_dirs(root))
            if (problem := seal.check(path, s)[1]) is not None}


def latest_step(directory) -> int | None:
    """The newest valid step under ``directory``; None when there is none or no such directory.

    Half-written, temporary and corrupt step directories (missing or truncated files, damaged
    seal) are skipped in favour of the next older valid step.
    """
    found = _select(_as_dir(directory, "latest_step"), None, "latest_step")
    return None if found is None else found[0]


def read_metadata(directory, *, step: int | None = None) -> dict:
    """The ``metadata`` dict saved with ``step`` (default: the newest valid step), as JSON reads it.

    Raises FileNotFoundError when there is no such (or no valid) checkpoint.
    """
    root = _as_dir(directory, "read_metadata")
    step = None if step is None else _as_step(step, "read_metadata")
    found = _select(root, step, "read_metadata")
    if found is None:
        raise FileNotFoundError(f"read_metadata: no valid checkpoint in {root}")
    return found[1]["metadata"]


def save(directory, step: int, state, *, metadata: dict | None = None,
         keep: int | None = None) -> pathlib.Path:
    """Writes the pytree ``state`` as checkpoint ``step`` under ``directory``; returns its path.

    Guarantees: every argument is checked before anything is written (TypeError/ValueError);
    an existing ``directory/<step>`` (valid or not) is never overwritten (FileExistsError); when
    this returns, the step is complete, flushed to disk and valid; a crash before that leaves no
    valid step. ``metadata`` (a JSON-serialisable dict, e.g. the model config) is stored with the
    tree's signature. With ``keep=k``, afterwards only the ``k - 1`` newest valid steps below
    ``step`` are kept besides ``step`` itself; invalid directories and higher steps are left alone.

    Shapes: every leaf is stored with its own shape; a typed key array of shape S as its
    ``key_data`` (uint32, S + the implementation's words, e.g. S + (2,) for threefry).
    """
    root = _as_dir(directory, "save")
    step = _as_step(step, "save")
    if keep is not None:
        keep = _as_step(keep, "save", "keep")
        if keep < 1:
            raise ValueError(f"save: keep must be None or >= 1, got {keep}")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise TypeError(f"save: metadata must be a dict or None, got {type(metadata).__name__}")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"save: metadata must be JSON-serialisable: {err}") from None
    leaves, specs, _ = _specs(state, "save", abstract_ok=False)
    data = {}
    for i, (leaf, spec) in enumerate(zip(leaves, specs, strict=True)):
        host = _to_host(leaf, spec)
        spec.update(stored_shape=list(host.shape), stored_dtype=host.dtype.name, item=None)
        if host.size:  # orbax refuses zero-size arrays; their shape alone rebuilds them
            spec["item"] = f"leaf_{i:06d}"
            data[spec["item"]] = host
    step_dir = root / str(step)
    if os.path.lexists(step_dir):
        _, problem = seal.check(step_dir, step) if step_dir.is_dir() else (None, "not a directory")
        raise FileExistsError(
            f"save: {step_dir} already exists ({problem or 'a valid checkpoint'}); "
            "checkpoints are never overwritten: pick another step or move it away")
    record = {"format": seal.FORMAT, "version": seal.VERSION, "step": step, "metadata": metadata,
              "leaves": specs}
    items = {"meta": ocp.args.JsonSave({"leaves": specs, "metadata": metadata})}
    if data:
        items["state"] = ocp.args.PyTreeSave(data)
    root.mkdir(parents=True, exist_ok=True)
    with ocp.CheckpointManager(root, options=_options(create=True)) as mngr:
        if not mngr.save(step, args=ocp.args.Composite(**items), force=True):
            raise RuntimeError(f"save: orbax declined to save step {step} in {root}")
        seal.write(step_dir, record)
        if keep is not None:
            older = [s for s, path in seal.step_dirs(root)
                     if s < step and seal.check(path, s)[0] is not None]
            for s in older[keep - 1:]:
                mngr.delete(s)
    return step_dir


def check_compatible(directory, like, *, step: int | None = None) -> int | None:
    """Checks that ``step`` (default: the newest valid step) could be restored into ``like``.

    Returns the step checked, or None when ``step`` is None and there is no valid checkpoint
    (nothing to conflict with). Raises ValueError naming the directory, the first differing leaf
    path and the stored vs expected shape/dtype; FileNotFoundError for a missing ``step``.
    Reads only; nothing on disk changes.
    """
    root = _as_dir(directory, "check_compatible")
    step = None if step is None else _as_step(step, "check_compatible")
    _, expected, _ = _specs(like, "check_compatible", abstract_ok=True)
    found = _select(root, step, "check_compatible")
    if found is None:
        return None
    _compare(root, found[0], found[1]["leaves"], expected)
    return found[0]


def _rebuild(like_leaf, spec: dict, host: np.ndarray):
    if type(like_leaf) in _PYTHON_SCALARS:
        return type(like_leaf)(host[()])
    if isinstance(like_leaf, np.generic):
        return host[()]
    if isinstance(like_leaf, np.ndarray):
        return host
    if jax.dtypes.issubdtype(like_leaf.dtype, jax.dtypes.prng_key):
        value = jax.random.wrap_key_data(host, impl=spec["impl"])
    else:
        value = jnp.asarray(host)
        if like_leaf.weak_type and host.ndim == 0:  # via a python scalar, to stay weakly typed
            weak = jnp.asarray(host.item())
            value = weak if weak.dtype == value.dtype else value
    sharding = getattr(like_leaf, "sharding", None)
    return value if sharding is None else jax.device_put(value, sharding)


def restore(directory, like, *, step: int | None = None):
    """Restores ``step`` (default: the newest valid step) into the structure of ``like``.

    Returns ``(state, step, metadata)``. ``like`` is a template pytree (concrete arrays, or
    ``jax.ShapeDtypeStruct``s, e.g. from ``jax.eval_shape``) with the same structure, leaf paths,
    shapes and dtypes as the saved tree; every leaf comes back as the template leaf's kind, typed
    keys as typed keys. Raises ValueError naming the directory, the first differing leaf path and
    the stored vs expected shape/dtype when they differ (before reading any array), ValueError for
    a requested step that is corrupt, FileNotFoundError for a missing step or an empty directory.
    Reads only; nothing on disk changes.

    Shapes: each restored leaf has its template leaf's shape and dtype.
    """
    root = _as_dir(directory, "restore")
    step = None if step is None else _as_step(step, "restore")
    like_leaves, expected, treedef = _specs(like, "restore", abstract_ok=True)
    found = _select(root, step, "restore")
    if found is None:
        raise FileNotFoundError(f"restore: no valid checkpoint in {root} "
                                f"(invalid step directories: {invalid_steps(root)})")
    step, record = found
    _compare(root, step, record["leaves"], expected)
    specs = record["leaves"]
    wanted = {s["item"]: ocp.RestoreArgs(restore_type=np.ndarray) for s in specs if s["item"]}
    data = {}
    if wanted:
        args = ocp.args.Composite(state=ocp.args.PyTreeRestore(restore_args=wanted))
        with ocp.CheckpointManager(root, options=_options(create=False)) as mngr:
            data = mngr.restore(step, args=args)["state"]
    out = []
    for like_leaf, spec in zip(like_leaves, specs, strict=True):
        host = (np.asarray(data[spec["item"]]) if spec["item"]
                else np.zeros(spec["stored_shape"], jnp.dtype(spec["stored_dtype"])))
        if list(host.shape) != spec["stored_shape"] or host.dtype.name != spec["stored_dtype"]:
            raise ValueError(f"restore: checkpoint {root / str(step)} leaf {spec['path']} read "
                             f"back as {host.dtype.name}{list(host.shape)}, sealed as "
                             f"{spec['stored_dtype']}{spec['stored_shape']}")
        out.append(_rebuild(like_leaf, spec, host))
    return jax.tree_util.tree_unflatten(treedef, out), step, record["metadata"]
