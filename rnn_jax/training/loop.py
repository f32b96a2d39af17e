"""A Python training loop for long runs: progress bar, logs, evaluation, checkpoints, resume.

``fit`` takes the steps of ``train.train`` (step s trains on ``sample_batch(task, key, s, B)``
with dropout key ``fold_in(run_keys(key).dropout, s)``), one jitted call each, and records:

- at multiples of ``log_every``, a train record: the mean over the window's finite steps of
  ``loss``, ``grad_norm`` (before clipping) and ``update_norm``; ``grad_norm_max``; ``clipped``
  (fraction of the window's steps); ``nonfinite`` (skipped steps in the window); after the last
  step ``param_norm``, ``skipped`` (run total) and ``lr`` (of the last applied update);
- at multiples of ``eval_every``, an eval record of ``task.metrics`` (or of ``eval_fn``).

Non-finite values are recorded as None. Records fall on multiples only (make num_steps a
multiple to log the last step): checkpoints keep the unfinished window, so a run extended to more
steps equals one that was longer from the start. Records go to the returned ``history =
{"train": [...], "eval": [...]}``, to ``log_dir/metrics.jsonl`` (``{"kind", "step", ...}`` per
line) and to TensorBoard event files in ``log_dir`` (tags ``train/<name>``, ``eval/<name>``).

Checkpoints: ``checkpoint_dir/<s>`` (``rnn_jax.training.checkpoint``) every
``checkpoint_every`` steps and after the last one, holding the ``TrainState`` and, as
metadata, the run's identity and the
history so far. Given a directory with a valid checkpoint, ``fit`` resumes from the newest one,
and ends bitwise where an uninterrupted run on the same machine ends, with the same history.
Before anything is written the checkpoint is checked against the model's state (shapes, dtypes)
and the run (key, model, task, optimizer, batch size, dropout); a difference raises ValueError
and leaves the directory untouched. On resume ``metrics.jsonl`` is rewritten from the restored
history (lines past the checkpoint came from a killed run and are recomputed exactly), and
TensorBoard is told to drop events past it (``purge_step``).

Ctrl-C (KeyboardInterrupt) stops after the current step without checkpointing it (the newest
valid checkpoint stays the last one written), closes the logs and is re-raised: run ``fit`` again
to resume. A SIGKILL leaves at worst an unsealed step directory, which is never read and, when
the resumed run reaches that step, is moved aside to ``<s>.invalid-<k>`` (never deleted).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import warnings

import jax
import numpy as np
from tqdm.auto import tqdm

from rnn_jax.tasks.protocol import validate_key
from rnn_jax.training import checkpoint, logs, parallel, train

NONFINITE = ("skip", "raise")
_MEANS = ("loss", "grad_norm", "update_norm")
EVAL_KEY_INDEX = 3  # run_keys(key) uses fold_in(key, 0..2); the fixed eval batch uses the next


def _int(name, value, minimum, *, optional=False):
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"LoopConfig.{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"LoopConfig.{name} must be >= {minimum}, got {value}")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How ``fit`` runs: length, batch, logging, evaluation, checkpoints.

    Fields: num_steps (total, including steps restored from a checkpoint); batch_size;
    eval_every (0 = never); eval_split (evaluate on ``task.split(name)``, in chunks of
    ``eval_batch_size`` rows) or else a fixed batch of ``eval_batch_size`` (default batch_size)
    drawn once from ``fold_in(key, 3)``; log_every; checkpoint_dir (None = no checkpoints);
    checkpoint_every (0 = only after the last step); keep (newest valid checkpoints kept, None =
    all); log_dir (None = no files); progress (tqdm bar); on_nonfinite ("skip": the step leaves
    the state unchanged and is counted; "raise": FloatingPointError); dropout (train mode).
    """

    num_steps: int
    batch_size: int
    eval_every: int = 0
    eval_batch_size: int | None = None
    eval_split: str | None = None
    log_every: int = 1
    checkpoint_dir: str | os.PathLike | None = None
    checkpoint_every: int = 0
    keep: int | None = None
    log_dir: str | os.PathLike | None = None
    progress: bool = True
    on_nonfinite: str = "skip"
    dropout: bool = False

    def __post_init__(self):
        for name, minimum in (("num_steps", 1), ("batch_size", 1), ("eval_every", 0),
                              ("log_every", 1), ("checkpoint_every", 0)):
            _int(name, getattr(self, name), minimum)
        _int("eval_batch_size", self.eval_batch_size, 1, optional=True)
        _int("keep", self.keep, 1, optional=True)
        for name in ("checkpoint_dir", "log_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str | os.PathLike):
                raise TypeError(f"LoopConfig.{name} must be a path or None, got {value!r}")
        if self.eval_split is not None and not isinstance(self.eval_split, str):
            raise TypeError(f"LoopConfig.eval_split must be a str or None, got {self.eval_split!r}")
        for name in ("progress", "dropout"):
            value = getattr(self, name)
            if not isinstance(value, bool | np.bool_):
                raise TypeError(f"LoopConfig.{name} must be a bool, got {type(value).__name__} "
                                f"{value!r}")
        if not isinstance(self.on_nonfinite, str) or self.on_nonfinite not in NONFINITE:
            raise ValueError(f"LoopConfig.on_nonfinite={self.on_nonfinite!r} is unknown; "
                             f"expected one of {NONFINITE}")


def _num(value):
    value = float(np.asarray(value))
    return value if math.isfinite(value) else None


def key_data(key) -> list:
    """A key's raw uint32 words as a JSON list (typed or raw keys)."""
    typed = jax.dtypes.issubdtype(getattr(key, "dtype", np.uint32), jax.dtypes.prng_key)
    return np.asarray(jax.random.key_data(key) if typed else key).tolist()


def run_identity(key, model, task, opt_cfg, cfg: LoopConfig) -> dict:
    """What a checkpoint must share with a run to be resumed by it (JSON-ready)."""
    ident = {"key": key_data(key), "model": repr(model), "task": type(task).__name__,
             "seq_len": getattr(task, "seq_len", None), "optimizer": dataclasses.asdict(opt_cfg),
             "batch_size": cfg.batch_size, "dropout": cfg.dropout}
    data = getattr(task, "fingerprint", None)
    if data is not None:  # a task made of arrays: its data, not only its shape (ArrayTask)
        ident["data"] = data
    return json.loads(json.dumps(ident))


def _accumulate(pending: dict, m: dict) -> dict:
    ok = bool(m["finite"])
    sums = {k: pending["sums"].get(k, 0.0) + (float(m[k]) if ok else 0.0) for k in _MEANS}
    return {"n": pending["n"] + 1, "finite": pending["finite"] + int(ok), "sums": sums,
            "clipped": pending["clipped"] + int(bool(m["clipped"])),
            "grad_norm_max": max(pending["grad_norm_max"] or 0.0, float(m["grad_norm"]))
            if ok else pending["grad_norm_max"]}


def _empty():
    return {"n": 0, "finite": 0, "sums": {}, "clipped": 0, "grad_norm_max": None}


def _train_record(step: int, pending: dict, m: dict, state, schedule) -> dict:
    n_ok = pending["finite"]
    rec = {"step": step}
    rec.update({k: (_num(pending["sums"][k] / n_ok) if n_ok else None) for k in _MEANS})
    applied = int(state.step) - int(state.skipped)
    rec.update(clipped=pending["clipped"] / pending["n"], nonfinite=pending["n"] - n_ok,
               grad_norm_max=pending["grad_norm_max"], param_norm=_num(m["param_norm"]),
               skipped=int(state.skipped), lr=_num(schedule(max(applied - 1, 0))))
    return rec


@functools.partial(jax.jit, static_argnames=("model", "task"))
def _eval_step(params, batch, *, model, task):
    return train.make_eval_step(model, task)(params, batch)


def _make_eval(model, task, cfg: LoopConfig, key, eval_fn, eval_batch, like_params, mesh):
    if eval_fn is not None:
        return eval_fn
    # On a mesh the parameters are replicated; so are the evaluation batches (each device
    # scores the whole batch: simple, and evaluation is rare).
    place = (lambda b: b) if mesh is None else (lambda b: parallel.replicate(b, mesh))
    try:
        hash((model, task))
        step = functools.partial(_eval_step, model=model, task=task)
    except TypeError:
        step = jax.jit(train.make_eval_step(model, task))
    size = cfg.eval_batch_size or cfg.batch_size
    if eval_batch is None and cfg.eval_split is None:
        eval_batch = task.sample(jax.random.fold_in(key, EVAL_KEY_INDEX), size)
    if eval_batch is not None:
        train.check_batch(model, task, eval_batch)
        jax.eval_shape(step, like_params, eval_batch)
        eval_batch = place(eval_batch)
        return lambda params: step(params, eval_batch)
    if not hasattr(task, "split"):
        raise TypeError(f"LoopConfig.eval_split={cfg.eval_split!r}, but task "
                        f"{type(task).__name__} has no split()")
    data = task.split(cfg.eval_split)
    rows = int(data["xs"].shape[0])
    chunks = [jax.tree.map(lambda x, i=i: x[i:i + size], data) for i in range(0, rows, size)]
    jax.eval_shape(step, like_params, chunks[0])
    chunks = [place(c) for c in chunks]

    def evaluate(params):  # mean over chunks weighted by rows (exact for per-row means)
        parts = [(jax.device_get(step(params, c)), c["xs"].shape[0]) for c in chunks]
        return {k: sum(float(p[k]) * n for p, n in parts) / rows for k in parts[0][0]}

    return evaluate


def save_step(root, step: int, state, metadata: dict, keep) -> None:
    """``checkpoint.save`` that tolerates a step left half-written by a killed run.

    A valid ``root/<step>`` is kept as it is; an invalid one is moved aside (never deleted).
    """
    path = pathlib.Path(root) / str(step)
    if path.exists():
        if step in checkpoint.all_steps(root):
            return
        k = 0
        while path.with_name(f"{step}.invalid-{k}").exists():
            k += 1
        warnings.warn(f"moving the unfinished checkpoint {path} aside to {step}.invalid-{k}",
                      stacklevel=3)
        path.rename(path.with_name(f"{step}.invalid-{k}"))
    checkpoint.save(root, step, parallel.host_local(state), metadata=metadata, keep=keep)


def fit(key, model, task, opt_cfg: train.OptimizerConfig, loop_cfg: LoopConfig, *,
        eval_fn=None, eval_batch=None, mesh=None):
    """Trains for ``loop_cfg.num_steps`` steps with logs, evaluation and checkpoints.

    ``eval_fn(params) -> dict`` or a fixed ``eval_batch`` overrides the config's evaluation
    data. ``mesh`` (``parallel.data_mesh()``) trains data-parallel over its devices.
    Returns ``(state, history)``: the final ``train.TrainState`` and
    ``{"train": [records], "eval": [records]}`` (see the module docstring).
    Raises FloatingPointError with ``on_nonfinite="raise"`` after a non-finite step (that step
    left the parameters unchanged); re-raises KeyboardInterrupt after closing the logs.
    """
    cfg = loop_cfg
    key = validate_key(key)
    if not isinstance(cfg, LoopConfig):
        raise TypeError(f"loop_cfg must be a LoopConfig, got {type(cfg).__name__}")
    if not isinstance(opt_cfg, train.OptimizerConfig):
        raise TypeError(f"opt_cfg must be a train.OptimizerConfig, got {type(opt_cfg).__name__}")
    train.check_training_args(model, task, opt_cfg)
    if eval_fn is not None and eval_batch is not None:
        raise ValueError("pass eval_fn or eval_batch, not both")
    if mesh is not None:
        parallel.check_batch_size(cfg.batch_size, mesh)
    optimizer = train.make_optimizer(opt_cfg)
    like = jax.eval_shape(lambda k: train.init_state(k, model, task, optimizer), key)
    train.check_batch(model, task, jax.eval_shape(
        lambda k: train.sample_batch(task, k, 0, cfg.batch_size), key))
    step_fn = parallel.make_sampled_step(model, task, opt_cfg, batch_size=cfg.batch_size,
                                         dropout=cfg.dropout, mesh=mesh)
    jax.eval_shape(step_fn, like, key)  # shape errors surface here, before any file is touched
    evaluate = (_make_eval(model, task, cfg, key, eval_fn, eval_batch, like.params, mesh)
                if cfg.eval_every else None)
    identity = run_identity(key, model, task, opt_cfg, cfg)
    start, history, pending = 0, {"train": [], "eval": []}, _empty()
    ckpt = cfg.checkpoint_dir
    found = None if ckpt is None else checkpoint.check_compatible(ckpt, like)
    if found is not None:
        start, meta = found, checkpoint.read_metadata(ckpt, step=found)
        logs.check_identity(meta.get("run", {}), identity, f"checkpoint directory {ckpt}")
        if start > cfg.num_steps:
            raise ValueError(f"checkpoint directory {ckpt} is at step {start}, beyond "
                             f"num_steps={cfg.num_steps}; expected num_steps >= {start}")
        history, pending = meta["history"], meta["pending"]
    logs.check_log_dir(cfg.log_dir, identity, ckpt is not None)
    # -- nothing was written above this line --
    if start:
        state = checkpoint.restore(ckpt, like, step=start)[0]
    else:
        state = train.init_state(key, model, task, optimizer)
    if mesh is not None:
        state, key = parallel.replicate(state, mesh), parallel.replicate(key, mesh)
    lead = jax.process_index() == 0
    writer = logs.Logs(cfg.log_dir, identity, history, start, lead)
    schedule = train.learning_rate_schedule(opt_cfg)
    bar = tqdm(total=cfg.num_steps, initial=start, disable=not cfg.progress, desc="fit",
               dynamic_ncols=True)
    last = None
    try:
        for s in range(start, cfg.num_steps):
            state, m = step_fn(state, key)
            m, n = jax.device_get(m), s + 1
            if not m["finite"] and cfg.on_nonfinite == "raise":
                raise FloatingPointError(
                    f"step {s} (0-based) had a non-finite loss {float(m['loss'])} or gradient "
                    f"norm {float(m['grad_norm'])}; the parameters were not updated")
            pending = _accumulate(pending, m)
            if n % cfg.log_every == 0:
                rec = _train_record(n, pending, m, state, schedule)
                history["train"].append(rec)
                writer.write("train", rec)
                pending = _empty()
                bar.set_postfix(loss=rec["loss"], gnorm=rec["grad_norm"], refresh=False)
            if evaluate is not None and n % cfg.eval_every == 0:
                rec = {"step": n, **{k: _num(v) for k, v in
                                     jax.device_get(evaluate(state.params)).items()}}
                history["eval"].append(rec)
                writer.write("eval", rec)
            if ckpt is not None and lead and (
                    n == cfg.num_steps or (cfg.checkpoint_every and n % cfg.checkpoint_every == 0)):
                meta = {"run": identity, "history": history, "pending": pending}
                save_step(ckpt, n, state, meta, cfg.keep)
                last = n
            bar.update(1)
    except KeyboardInterrupt:
        bar.write(f"fit: interrupted after step {int(state.step)}; newest checkpoint: "
                  f"{last if last is not None else (start or 'none')} (run fit again to resume)")
        raise
    finally:
        bar.close()
        writer.close()
    return state, history
