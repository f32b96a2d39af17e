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
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

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
        if self.name not in OPTIMIZERS:
            raise ValueError(
                f"optimizer name={self.name!r} is unknown; expected one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is unknown; expected one of {SCHEDULES}")
        if self.clip not in CLIPS:
            raise ValueError(f"clip={self.clip!r} is unknown; expected one of {CLIPS}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.clip != "none" and not self.clip_threshold > 0:
            raise ValueError(f"clip_threshold must be > 0, got {self.clip_threshold}")
        if self.warmup_steps < 0 or self.decay_steps < 1:
            raise ValueError(
                f"warmup_steps must be >= 0 and decay_steps >= 1, got {self.warmup_steps}, "
                f"{self.decay_steps}"
            )
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


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
    """Raises a ValueError when a batch does not fit the model and task (before tracing)."""
    if not isinstance(batch, dict) or "xs" not in batch or "ys" not in batch:
        got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"batch must be a dict with 'xs', 'ys' (and 'mask'), got {got}")
    xs = batch["xs"]
    if model.token_inputs:
        if xs.ndim != 2:
            raise ValueError(f"batch['xs'] must be token ids [B, T] for this model, got {xs.shape}")
    elif xs.ndim != 3 or xs.shape[-1] != task.input_size:
        raise ValueError(
            f"batch['xs'] must have shape [B, T, {task.input_size}] for task "
            f"{type(task).__name__}, got {tuple(xs.shape)}"
        )
    mask = batch.get("mask")
    if mask is not None and tuple(mask.shape) != tuple(xs.shape[:2]):
        raise ValueError(f"batch['mask'] must have shape {tuple(xs.shape[:2])}, got {mask.shape}")


def model_outputs(model, task, params, batch, *, key=None, deterministic=True):
    """The model's outputs on a batch; the mask is passed unless the task is fixed-length."""
    mask = None if getattr(task, "fixed_length", False) else batch.get("mask")
    return model.apply(params, batch["xs"], mask=mask, key=key, deterministic=deterministic)


def _clipped(cfg: OptimizerConfig, grads, grad_norm):
    if cfg.clip == "global_norm":
        return grad_norm > cfg.clip_threshold
    if cfg.clip == "value":
        leaves = [jnp.max(jnp.abs(g)) for g in jax.tree.leaves(grads)]
        return jnp.max(jnp.stack(leaves)) > cfg.clip_threshold
    return jnp.zeros((), bool)


def make_train_step(model, task, opt_cfg: OptimizerConfig, optimizer=None):
    """Builds the pure train step ``(state, batch, key=None) -> (state, metrics)``.

    metrics: ``loss``, ``grad_norm`` (global norm before clipping), ``clipped`` (bool),
    ``param_norm``, ``update_norm``, ``finite`` (bool; False means the update was skipped).
    ``key`` drives dropout (training mode when given).
    """
    optimizer = make_optimizer(opt_cfg) if optimizer is None else optimizer

    def loss_fn(params, batch, key):
        outputs = model_outputs(model, task, params, batch, key=key, deterministic=key is None)
        return task.loss(outputs, batch)

    def train_step(state: TrainState, batch, key=None):
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
    """``(params, batch) -> task.metrics(outputs, batch)`` in inference mode."""

    def eval_step(params, batch):
        return task.metrics(model_outputs(model, task, params, batch), batch)

    return eval_step


def train(key, model, task, opt_cfg: OptimizerConfig, *, num_steps: int, batch_size: int,
          dropout: bool = False, state: TrainState | None = None):
    """A whole training run as one pure function of ``key`` (a ``lax.scan`` over steps).

    ``jax.vmap(lambda k: train(k, ...))(keys)`` trains one model per seed in one compile.
    Given ``state`` (e.g. restored at step s), continues for ``num_steps`` more steps.

    Returns ``(state, metrics)`` with every metric stacked over steps: ``[num_steps]``.
    """
    optimizer = make_optimizer(opt_cfg)
    step_fn = make_train_step(model, task, opt_cfg, optimizer)
    keys = run_keys(key)
    if state is None:
        state = init_state(key, model, task, optimizer)

    def body(s, _):
        batch = task.sample(jax.random.fold_in(keys.data, s.step), batch_size)
        drop_key = jax.random.fold_in(keys.dropout, s.step) if dropout else None
        return step_fn(s, batch, drop_key)

    return jax.lax.scan(body, state, None, length=num_steps)
