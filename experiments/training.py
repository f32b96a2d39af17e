"""Seed-vmapped training in jitted chunks, with checkpoints and exact resume (for experiments).

One *run* trains S models of one architecture, one per key, in a single compiled program:

    state_s <- train.train(key_s, model, task, opt, num_steps=n, state=state_s)   s = 1..S

called chunk by chunk. Chunks end at every multiple of ``log_every``, at every multiple of
``checkpoint_every`` and at ``num_steps``. At each multiple of ``log_every`` (and at
``num_steps``) a record is appended to the history: statistics over the per-step metrics of the
steps since the previous record, per seed, plus whatever ``probe(params)`` measures on the
parameters (e.g. the spectral radius of U). Every ``checkpoint_every`` steps (any positive int:
no other field constrains it) and after the last step, the stacked ``TrainState`` is saved with
``rnn_jax.training.checkpoint``, with the history so far and the per-step metrics of the
unfinished logging window (``pending``) in its metadata.

Resume: given a ``checkpoint_dir`` holding checkpoints of the same run (same keys, model, task,
optimizer, batch size, ``log_every``), the newest one is restored with its pending window and
training continues. The batch of step t is drawn from ``fold_in(data_key, t)`` inside
``train.train`` and chunk boundaries do not depend on where a run started, so a resumed run makes
the same compiled calls on the same values as an uninterrupted one and ends bitwise where it
ends, with the same history (records are computed on the host from the per-step values).

Devices: with several devices, the seed axis is split over a 1-D mesh named ``"seeds"``
(:func:`seed_mesh`): keys and every state leaf are placed with
``NamedSharding(mesh, PartitionSpec("seeds"))`` and each chunk runs as a ``shard_map`` of the
same vmapped program, S / n seeds per device, with no communication between devices. n is the
largest device count that divides S (S = 12 on 8 devices: 6 devices; S = 11: one), so a
multi-GPU user runs the same command and gets the same results (up to float summation order);
with one device nothing changes.

Shapes: keys [S]; every state leaf [S, ...]; history[name] is a list of records, each [S].
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rnn_jax.training import checkpoint, logs, train

SEED_AXIS = "seeds"  # the mesh axis the seed dimension is split over
RECORDED = ("loss", "grad_norm", "grad_norm_max", "clipped", "nonfinite")
EVAL_STREAM = 0x7EA1  # fold_in(key(seed), EVAL_STREAM): evaluation data, apart from training


def seed_keys(seed: int, num_seeds: int):
    """One key per seed: ``split(key(seed), num_seeds)``. Shapes: -> [num_seeds] keys."""
    if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
        raise ValueError(f"num_seeds must be a positive int, got {num_seeds!r}")
    return jax.random.split(jax.random.key(seed), num_seeds)


def seed_device_count(num_seeds: int, num_devices: int) -> int:
    """The largest number of devices, at most ``num_devices``, that divides ``num_seeds``."""
    return max(d for d in range(1, num_devices + 1) if num_seeds % d == 0)


def seed_mesh(num_seeds: int, devices=None) -> Mesh | None:
    """A 1-D mesh ``("seeds",)`` over the first :func:`seed_device_count` of ``devices``
    (default ``jax.devices()``), or None when that is one device (nothing to split)."""
    devices = jax.devices() if devices is None else list(devices)
    n = seed_device_count(num_seeds, len(devices))
    return None if n == 1 else Mesh(np.asarray(devices[:n]), (SEED_AXIS,))


def shard_seeds(tree, mesh: Mesh | None):
    """Every leaf ``[S, ...]`` of ``tree`` split along its first axis over ``mesh`` (None: as
    is). Values are unchanged; only where they live."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(SEED_AXIS)))


def replicate(tree, mesh: Mesh | None):
    """``tree`` copied to every device of ``mesh`` (None: as is): data shared by all seeds."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def eval_key(seed: int):
    """The key of an experiment's fresh evaluation data (shared by all its runs and seeds)."""
    return jax.random.fold_in(jax.random.key(seed), EVAL_STREAM)


def check_schedule(num_steps: int, log_every: int, checkpoint_every: int) -> None:
    """Raises ValueError for step counts that cannot define a run's chunks (each on its own:
    ``checkpoint_every`` need not relate to ``log_every``)."""
    for name, value, low in (("num_steps", num_steps, 1), ("log_every", log_every, 1),
                             ("checkpoint_every", checkpoint_every, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def check_rates(cfg, names) -> None:
    """Each field of ``cfg`` named in ``names`` (learning rates, clip thresholds) must be a
    finite number > 0; the error names the field the user set, not the optimizer's own."""
    for name in names:
        value = getattr(cfg, name)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")


def _summary(metrics: dict) -> dict:
    """Statistics of per-step metrics ``[..., n]`` over their last axis, finite steps only
    (NaN where a window has none). Host NumPy, so a record never depends on the chunking."""
    ok = np.asarray(metrics["finite"], bool)
    count = ok.sum(-1)
    loss, norm = (np.asarray(metrics[k], np.float32) for k in ("loss", "grad_norm"))

    def mean(x):  # NaN, not 0, when every step of the window was skipped as non-finite
        total = np.where(ok, x, 0.0).sum(-1, dtype=np.float64)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    return {
        "loss": mean(loss),
        "grad_norm": mean(norm),
        "grad_norm_max": np.where(count > 0, np.where(ok, norm, 0.0).max(-1), np.nan),
        "clipped": np.asarray(metrics["clipped"], np.float64).mean(-1),
        "nonfinite": (~ok).sum(-1).astype(np.float64),
    }


def extend(pending: dict | None, metrics: dict) -> dict:
    """The per-step metrics of the logging window so far, ``[..., n]``, with a chunk's appended."""
    metrics = {k: np.asarray(jax.device_get(v)) for k, v in metrics.items()}
    if not pending:
        return metrics
    return {k: np.concatenate([pending[k], metrics[k]], axis=-1) for k in metrics}


def pending_to_json(pending: dict | None) -> dict:
    """A pending window as strict JSON (non-finite floats as None), for checkpoint metadata."""
    out = {}
    for k, v in (pending or {}).items():
        arr = np.asarray(v)
        if arr.dtype == np.bool_:
            out[k] = {"dtype": "bool", "values": arr.tolist()}
        else:
            vals = np.where(np.isfinite(arr), arr, np.nan).astype(np.float64)
            out[k] = {"dtype": arr.dtype.name, "shape": list(arr.shape),
                      "values": [None if np.isnan(x) else float(x) for x in vals.ravel()]}
    return out


def pending_from_json(data: dict | None) -> dict:
    """The inverse of :func:`pending_to_json` (non-finite values come back as NaN)."""
    out = {}
    for k, v in (data or {}).items():
        if v["dtype"] == "bool":
            out[k] = np.asarray(v["values"], bool)
        else:
            vals = [np.nan if x is None else x for x in v["values"]]
            out[k] = np.asarray(vals, np.float64).astype(v["dtype"]).reshape(v["shape"])
    return out


def is_record_step(step: int, num_steps: int, every: int) -> bool:
    """True at multiples of ``every`` (0: never) and at ``num_steps``."""
    return step == num_steps or bool(every and step % every == 0)


def _task_id(task) -> str:
    # Data sets compare by identity and hold arrays: their name stands for them.
    if type(task).__eq__ is object.__eq__:
        return f"{type(task).__name__}({getattr(task, 'name', '')})"
    return repr(task)


def _identity(keys, model, task, opt_cfg, batch_size, log_every) -> dict:
    ident = {
        "keys": np.asarray(jax.random.key_data(keys)).tolist(), "model": repr(model),
        "task": _task_id(task),
        "optimizer": dataclasses.asdict(opt_cfg), "batch_size": batch_size,
        "log_every": log_every}
    data = getattr(task, "fingerprint", None)
    if data is not None:  # a task made of arrays: its data, not only its name (ArrayTask)
        ident["data"] = data
    return json.loads(json.dumps(ident))


def init_states(keys, model, task, opt_cfg):
    """Step 0 of every seed: ``train.init_state`` per key. Shapes: keys [S] -> leaves [S, ...]."""
    # Eager on purpose: compiling the initialisers' random draws as one program costs seconds,
    # while eager primitives are compiled once per shape and shared by every run.
    optimizer = train.make_optimizer(opt_cfg)
    return jax.vmap(lambda k: train.init_state(k, model, task, optimizer))(keys)


def _per_device(fn, mesh: Mesh | None, in_specs):
    """``fn`` (vmapped over seeds) run on each device's block of seeds (None: as is)."""
    if mesh is None:
        return fn
    # check_vma off: the per-seed code (scans started from constants) was not written with
    # shard_map's varying-axis types in mind, and it needs none: no value crosses devices.
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=PartitionSpec(SEED_AXIS),
                         check_vma=False)


# Module-level jitted functions with the model, task and optimizer as static arguments: jax's
# compilation cache then serves every run of the same setting in a process (seeds, resumes).
@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7))
def _chunk(keys, state, model, task, opt_cfg, batch_size, num_steps, mesh=None):
    def one(key, st):
        st, metrics = train.train(key, model, task, opt_cfg, num_steps=num_steps,
                                  batch_size=batch_size, state=st)
        return st, {k: metrics[k] for k in ("loss", "grad_norm", "clipped", "finite")}

    seeds = PartitionSpec(SEED_AXIS)
    return _per_device(jax.vmap(one), mesh, (seeds, seeds))(keys, state)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _eval(params, batch, model, task, mesh=None):
    fn = jax.vmap(train.make_eval_step(model, task), in_axes=(0, None))
    return _per_device(fn, mesh, (PartitionSpec(SEED_AXIS), PartitionSpec()))(params, batch)


def boundaries(start: int, num_steps: int, log_every: int, checkpoint_every: int = 0
               ) -> list[int]:
    """The ends of the chunks after step ``start``: multiples of ``log_every`` and of
    ``checkpoint_every`` (0: none), and num_steps; they do not depend on ``start``."""
    ends = set(range((start // log_every + 1) * log_every, num_steps, log_every))
    if checkpoint_every:
        ends |= set(range((start // checkpoint_every + 1) * checkpoint_every, num_steps,
                          checkpoint_every))
    return [*sorted(ends), num_steps] if start < num_steps else []


def resume(checkpoint_dir, like, identity: dict, num_steps: int, *, with_pending=False):
    """``(step, state, history)`` of the newest checkpoint of this run, or ``(0, None, None)``.

    ``like`` is the saved tree's template and ``identity`` the run's JSON identity, stored as
    ``metadata["run"]`` beside ``metadata["history"]``. A checkpoint of a different run, or
    one beyond ``num_steps``, raises ValueError (nothing is written or removed).
    ``with_pending=True`` appends the unfinished logging window (:func:`pending_from_json`).
    """
    found = None if checkpoint_dir is None else checkpoint.check_compatible(checkpoint_dir, like)
    if found is None:
        return (0, None, None, {}) if with_pending else (0, None, None)
    meta = checkpoint.read_metadata(checkpoint_dir, step=found)
    if meta.get("run") != identity:
        stored = meta.get("run") or {}
        diff = logs.differences(stored, identity) or [
            f"{k}: stored {stored[k]!r}, not given" for k in stored if k not in identity]
        raise ValueError(f"checkpoint_dir {os.fspath(checkpoint_dir)} holds a different run "
                         f"(differs in {'; '.join(diff)}); use another directory")
    if found > num_steps:
        raise ValueError(f"checkpoint_dir {os.fspath(checkpoint_dir)} is at step {found}, "
                         f"beyond num_steps={num_steps}")
    state = checkpoint.restore(checkpoint_dir, like, step=found)[0]
    if with_pending:
        return found, state, meta["history"], pending_from_json(meta.get("pending"))
    return found, state, meta["history"]


def _finite_or_none(x: float):
    return x if np.isfinite(x) else None  # checkpoint metadata is strict JSON


def _host(tree) -> dict:
    return {k: [_finite_or_none(float(v)) for v in np.asarray(jax.device_get(x)).ravel()]
            for k, x in tree.items()}


def train_seeds(keys, model, task, opt_cfg: train.OptimizerConfig, *, num_steps: int,
                batch_size: int, log_every: int, checkpoint_dir=None, checkpoint_every: int = 0,
                probe=None, keep: int | None = 2):
    """Trains one model per key (vmapped) in chunks; checkpoints and resumes (module docstring).

    ``probe(params) -> dict of [S] arrays`` runs on the host after every chunk (stacked params).
    Returns ``(state, history)``: the final stacked ``TrainState`` and ``history`` with
    ``"step"`` (the step of each record) and one list of ``[S]`` values per recorded name
    (``RECORDED`` and the probe's names). With several devices the seeds are split over them
    (module docstring): the returned state is sharded the same way, with the same values.
    """
    check_schedule(num_steps, log_every, checkpoint_every)
    mesh = seed_mesh(keys.shape[0])
    like = jax.eval_shape(lambda k: init_states(k, model, task, opt_cfg), keys)
    identity = _identity(keys, model, task, opt_cfg, batch_size, log_every)
    start, state, history, pending = resume(checkpoint_dir, like, identity, num_steps,
                                            with_pending=True)
    if state is None:
        state, history = init_states(keys, model, task, opt_cfg), {"step": []}
    # a restored state comes back on one device: placed like a fresh one
    keys, state = shard_seeds((keys, state), mesh)
    step = start
    for end in boundaries(start, num_steps, log_every, checkpoint_every):
        state, metrics = _chunk(keys, state, model, task, opt_cfg, batch_size, end - step, mesh)
        step, pending = end, extend(pending, metrics)
        if is_record_step(step, num_steps, log_every):
            record = {**_summary(pending), **(probe(state.params) if probe is not None else {})}
            history["step"].append(step)
            for name, value in _host(record).items():
                history.setdefault(name, []).append(value)
            pending = {}
        if checkpoint_dir is not None and is_record_step(step, num_steps, checkpoint_every):
            checkpoint.save(checkpoint_dir, step, state, keep=keep, metadata={
                "run": identity, "history": history, "pending": pending_to_json(pending)})
    return state, history


def evaluate(model, task, params, batches):
    """``task.metrics`` of every seed's model, averaged over equal-sized ``batches``.

    Seeds are split over the devices like :func:`train_seeds` (the batches copied to each).
    Shapes: params leaves [S, ...]; each batch unstacked (``xs`` [B, T, ...]) -> dict of [S].
    """
    mesh = seed_mesh(jax.tree.leaves(params)[0].shape[0])
    params = shard_seeds(params, mesh)
    totals = None
    for batch in batches:
        out = _eval(params, replicate(batch, mesh), model, task, mesh)
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    return {k: np.asarray(v) / len(batches) for k, v in totals.items()}


def fresh_batches(task, key, num_examples: int, batch_size: int) -> list[dict]:
    """``num_examples`` fresh sequences from ``key`` in equal batches (a multiple of the size)."""
    if num_examples % batch_size:
        raise ValueError(f"num_examples={num_examples} must be a multiple of the evaluation "
                         f"batch size {batch_size}")
    return [_sample(jax.random.fold_in(key, i), task, batch_size)
            for i in range(num_examples // batch_size)]


@functools.partial(jax.jit, static_argnums=(1, 2))
def _sample(key, task, batch_size):
    return task.sample(key, batch_size)
