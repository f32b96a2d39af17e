"""Training by backpropagation through time: optimizer factory, pure train step, pure runs.

BPTT is ``jax.grad`` of the loss of the unrolled sequence. The update (Pascanu, Mikolov,
Bengio 2013 for clipping) is

    g      = dL/dtheta                                   (through all T steps)
    g_clip = g * min(1, tau / ||g||)                    clip="global_norm"
           = clip(g, -tau, tau) elementwise              clip="value"
    theta <- theta + optimizer(g_clip)                   sgd | momentum | adam | rmsprop

A step whose loss or gradient is not finite leaves parameters and optimizer state unchanged and
is counted in ``TrainState.skipped``. The batch of step s is drawn from ``fold_in(data_key, s)``
inside JAX, so a run is a pure function of its key: seeds can be ``jax.vmap``ed, and a run
resumed from a checkpoint at step s continues exactly as if it had never stopped.

One topic, a little over 300 lines: the optimizer factory, the step and the run share
OptimizerConfig and the argument checks that every training entry point makes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnn_jax.cells.validation import is_concrete

OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "exponential", "linear")
CLIPS = ("global_norm", "value", "none")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """What ``make_optimizer`` builds.

    Fields:
      name: "sgd" | "momentum" | "adam" | "rmsprop".
      learning_rate: peak learning rate (> 0).
      momentum: momentum coefficient ("momentum"; also rmsprop's momentum if > 0 there).
      nesterov: Nesterov momentum ("momentum").
      schedule: "constant" | "cosine" | "warmup_cosine" | "exponential" | "linear" — optax
        schedules of the step count, never Python-side changes to the optimizer state.
      warmup_steps, decay_steps, end_factor: schedule shape; the final rate is
        ``learning_rate * end_factor`` after ``decay_steps``.
      clip: "global_norm" (default for RNNs) | "value" | "none".
      clip_threshold: tau above (> 0).
      weight_decay: decoupled weight decay (AdamW for adam, added to the gradient otherwise).
    """

    name: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int = 10_000
    end_factor: float = 0.0
    clip: str = "global_norm"
    clip_threshold: float = 1.0
    weight_decay: float = 0.0

    def __post_init__(self):
        for name, choices in (("name", OPTIMIZERS), ("schedule", SCHEDULES), ("clip", CLIPS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                raise ValueError(f"OptimizerConfig.{name}: expected one of {choices}, got "
                                 f"{value!r}")
        _check_number("learning_rate", self.learning_rate, low=0.0, low_open=True)
        _check_number("momentum", self.momentum, low=0.0, high=1.0)
        _check_bool("OptimizerConfig.nesterov", self.nesterov)
        _check_int("OptimizerConfig.warmup_steps", self.warmup_steps, 0)
        _check_int("OptimizerConfig.decay_steps", self.decay_steps, 1)
        _check_number("end_factor", self.end_factor, low=0.0)
        _check_number("clip_threshold", self.clip_threshold, low=0.0,
                      low_open=self.clip != "none")
        _check_number("weight_decay", self.weight_decay, low=0.0)


def _check_bool(name, value):
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")


def _check_int(name, value, minimum):
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")


def _check_number(name, value, *, low, high=None, low_open=False):
    """A finite real OptimizerConfig field in [low, high] ((low, ...] when ``low_open``)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise TypeError(f"OptimizerConfig.{name}: expected a float, got {type(value).__name__} "
                        f"{value!r}")
    bad = (not math.isfinite(value) or value < low or (low_open and value == low)
           or (high is not None and value > high))
    if bad:
        lo = f"> {low}" if low_open else f">= {low}"
        rng = lo if high is None else f"in [{low}, {high}]"
        raise ValueError(f"OptimizerConfig.{name}: expected a finite number {rng}, got {value}")


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """The learning rate as a function of the update count (an optax schedule)."""
    lr, end = cfg.learning_rate, cfg.learning_rate * cfg.end_factor
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, cfg.decay_steps, alpha=cfg.end_factor)
    if cfg.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, max(cfg.warmup_steps, 1), max(cfg.decay_steps, cfg.warmup_steps + 1), end)
    if cfg.schedule == "exponential":
        return optax.exponential_decay(lr, cfg.decay_steps, max(cfg.end_factor, 1e-12),
                                       end_value=end)
    return optax.linear_schedule(lr, end, cfg.decay_steps)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """clip -> (weight decay) -> base optimizer, as one optax transformation."""
    lr = learning_rate_schedule(cfg)
    parts = []
    if cfg.clip == "global_norm":
        parts.append(optax.clip_by_global_norm(cfg.clip_threshold))
    elif cfg.clip == "value":
        parts.append(optax.clip(cfg.clip_threshold))
    if cfg.name == "adam":
        parts.append(optax.adamw(lr, weight_decay=cfg.weight_decay) if cfg.weight_decay
                     else optax.adam(lr))
        return optax.chain(*parts)
    if cfg.weight_decay:
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
    if cfg.name == "sgd":
        parts.append(optax.sgd(lr))
    elif cfg.name == "momentum":
        parts.append(optax.sgd(lr, momentum=cfg.momentum, nesterov=cfg.nesterov))
    else:
        parts.append(optax.rmsprop(lr, momentum=cfg.momentum or None))
    return optax.chain(*parts)


class TrainState(NamedTuple):
    """Everything a run carries from step to step (a pytree; checkpointed as a whole).

    step: int32 count of steps taken (the next batch is drawn from ``fold_in(data_key, step)``).
    params, opt_state: model parameters and optimizer state.
    skipped: int32 count of steps skipped because the loss or gradient was not finite.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    skipped: jax.Array


class RunKeys(NamedTuple):
    """The named splits of a run's key: parameters, data (per step) and dropout (per step)."""

    init: jax.Array
    data: jax.Array
    dropout: jax.Array


def run_keys(key) -> RunKeys:
    """Splits a run's key into its named parts."""
    k_init, k_data, k_drop = jax.random.split(key, 3)
    return RunKeys(k_init, k_data, k_drop)


def init_state(key, model, task, optimizer: optax.GradientTransformation) -> TrainState:
    """Step 0: parameters from ``run_keys(key).init`` and a fresh optimizer state."""
    params = model.init(run_keys(key).init, task.input_size)
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params),
                      jnp.zeros((), jnp.int32))


def sample_batch(task, key, step, batch_size: int) -> dict:
    """The batch of step ``step``: ``task.sample(fold_in(run_keys(key).data, step), B)``."""
    return task.sample(jax.random.fold_in(run_keys(key).data, step), batch_size)


def check_batch(model, task, batch) -> None:
    """Raises ValueError/TypeError when a batch does not fit the model and task (shapes only).

    Works on tracers. A fixed-length task (``task.fixed_length``) refuses a concrete mask with a
    False step: its data have every step real, so such a mask means variable-length data that
    belong in :func:`rnn_jax.tasks.array_task`.
    """
    if not isinstance(batch, dict) or "xs" not in batch or "ys" not in batch:
        got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"batch: expected a dict with 'xs', 'ys' (and 'mask'), got {got}")
    xs = batch["xs"]
    if not hasattr(xs, "shape") or not hasattr(xs, "dtype"):
        raise TypeError(f"batch['xs']: expected an array, got {type(xs).__name__}")
    if model.token_inputs:
        if xs.ndim != 2:
            raise ValueError(f"batch['xs'] must be token ids [B, T] for this model, got {xs.shape}")
    elif xs.ndim != 3 or xs.shape[-1] != task.input_size:
        raise ValueError(
            f"batch['xs'] must have shape [B, T, {task.input_size}] for task "
            f"{type(task).__name__}, got {tuple(xs.shape)}"
        )
    mask = batch.get("mask")
    if mask is None:
        return
    if not hasattr(mask, "shape") or not hasattr(mask, "dtype"):
        raise TypeError(f"batch['mask']: expected a bool array, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(xs.shape[:2]):
        raise ValueError(f"batch['mask'] must have shape {tuple(xs.shape[:2])}, got {mask.shape}")
    if mask.dtype != jnp.bool_:
        raise TypeError(f"batch['mask']: expected dtype bool, got {mask.dtype}")
    _fixed_length_mask(task, mask)


def _fixed_length_mask(task, mask):
    """``mask`` for the runner: None when it is known all True (a fixed-length task's)."""
    if mask is None or not getattr(task, "fixed_length", False):
        return mask
    if not is_concrete(mask):
        return mask  # under jit it cannot be inspected: honour it (exact, only slower)
    real = np.asarray(mask)
    if not real.all():
        raise ValueError(
            f"batch['mask']: task {type(task).__name__} is fixed-length (every step real), but "
            f"the mask marks {int(real.size - real.sum())} of {real.size} steps as padding; "
            "train on variable-length data with rnn_jax.tasks.array_task")
    return None


def model_outputs(model, task, params, batch, *, key=None, deterministic=True, sampled=False):
    """The model's outputs on a batch, honouring its mask (readout "last" at the last real step).

    ``sampled=True`` says the batch came from ``task.sample``: a fixed-length task's own mask is
    all True by its contract, so it is left out of the runner (the faster path; same values).
    Otherwise the mask is passed, except a concrete all-True mask of a fixed-length task; a
    concrete one with False steps for such a task raises (see :func:`check_batch`).
    """
    mask = batch.get("mask")
    if sampled and getattr(task, "fixed_length", False):
        mask = None
    else:
        mask = _fixed_length_mask(task, mask)
    return model.apply(params, batch["xs"], mask=mask, key=key, deterministic=deterministic)


def _clipped(cfg: OptimizerConfig, grads, grad_norm):
    if cfg.clip == "global_norm":
        return grad_norm > cfg.clip_threshold
    if cfg.clip == "value":
        leaves = [jnp.max(jnp.abs(g)) for g in jax.tree.leaves(grads)]
        return jnp.max(jnp.stack(leaves)) > cfg.clip_threshold
    return jnp.zeros((), bool)


def make_train_step(model, task, opt_cfg: OptimizerConfig, optimizer=None, *, sampled=False):
    """Builds the pure train step ``(state, batch, key=None) -> (state, metrics)``.

    metrics: ``loss``, ``grad_norm`` (global norm before clipping), ``clipped`` (bool),
    ``param_norm``, ``update_norm``, ``finite`` (bool; False means the update was skipped).
    ``key`` drives dropout (training mode when given). The batch's mask is honoured in the
    outputs and the loss; ``sampled=True`` when every batch comes from ``task.sample`` (see
    :func:`model_outputs`).
    """
    check_training_args(model, task, opt_cfg)
    _check_bool("sampled", sampled)
    optimizer = make_optimizer(opt_cfg) if optimizer is None else optimizer

    def loss_fn(params, batch, key):
        outputs = model_outputs(model, task, params, batch, key=key, deterministic=key is None,
                                sampled=sampled)
        return task.loss(outputs, batch)

    def train_step(state: TrainState, batch, key=None):
        if not isinstance(state, TrainState):
            raise TypeError(f"state: expected a train.TrainState, got {type(state).__name__}")
        check_batch(model, task, batch)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, key)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new_state = TrainState(
            step=state.step + 1,
            params=jax.tree.map(keep, new_params, state.params),
            opt_state=jax.tree.map(keep, new_opt, state.opt_state),
            skipped=state.skipped + (~finite).astype(jnp.int32),
        )
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "clipped": _clipped(opt_cfg, grads, grad_norm),
            "param_norm": optax.tree.norm(new_state.params),
            "update_norm": jnp.where(finite, optax.tree.norm(updates), 0.0),
            "finite": finite,
        }
        return new_state, metrics

    return train_step


def make_eval_step(model, task):
    """``(params, batch) -> task.metrics(outputs, batch)`` in inference mode (mask honoured)."""
    check_training_args(model, task)

    def eval_step(params, batch):
        check_batch(model, task, batch)
        return task.metrics(model_outputs(model, task, params, batch), batch)

    return eval_step


def check_training_args(model, task, opt_cfg=None) -> None:
    """TypeError unless ``model`` has ``init``/``apply``, ``task`` follows the task protocol
    (``sample``, ``loss``, ``metrics``, ``input_size``) and ``opt_cfg`` is an OptimizerConfig."""
    if not (callable(getattr(model, "init", None)) and callable(getattr(model, "apply", None))
            and hasattr(model, "token_inputs")):
        raise TypeError(f"model: expected a SequenceModel (init, apply, token_inputs), got "
                        f"{type(model).__name__}")
    missing = [a for a in ("sample", "loss", "metrics", "input_size") if not hasattr(task, a)]
    if missing:
        raise TypeError(f"task: expected a task (rnn_jax.tasks protocol), got "
                        f"{type(task).__name__} without {missing}")
    if opt_cfg is not None and not isinstance(opt_cfg, OptimizerConfig):
        raise TypeError(f"opt_cfg: expected a train.OptimizerConfig, got "
                        f"{type(opt_cfg).__name__}")


def train(key, model, task, opt_cfg: OptimizerConfig, *, num_steps: int, batch_size: int,
          dropout: bool = False, state: TrainState | None = None):
    """A whole training run as one pure function of ``key`` (a ``lax.scan`` over steps).

    ``jax.vmap(lambda k: train(k, ...))(keys)`` trains one model per seed in one compile.
    Given ``state`` (e.g. restored at step s), continues for ``num_steps`` more steps.

    Returns ``(state, metrics)`` with every metric stacked over steps: ``[num_steps]``.
    """
    _check_int("num_steps", num_steps, 1)
    _check_int("batch_size", batch_size, 1)
    _check_bool("dropout", dropout)
    if state is not None and not isinstance(state, TrainState):
        raise TypeError(f"state: expected a train.TrainState or None, got {type(state).__name__}")
    optimizer = make_optimizer(opt_cfg)
    step_fn = make_train_step(model, task, opt_cfg, optimizer, sampled=True)
    keys = run_keys(key)
    if state is None:
        state = init_state(key, model, task, optimizer)

    def body(s, _):
        batch = task.sample(jax.random.fold_in(keys.data, s.step), batch_size)
        drop_key = jax.random.fold_in(keys.dropout, s.step) if dropout else None
        return step_fn(s, batch, drop_key)

    return jax.lax.scan(body, state, None, length=num_steps)
