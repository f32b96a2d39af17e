"""Truncated backpropagation through time over long token streams, the carry passed across windows.

TBPTT(k1, k2) (Sutskever 2013, PhD thesis "Training Recurrent Neural Networks"; the
truncated algorithm of Williams & Peng 1990, BPTT(h; h') with h = k2, h' = k1 in Williams &
Zipser's notation) walks a stream of L steps and, every k1 steps, updates the parameters with
the gradient of the losses of the last k1 steps, backpropagated through the last k2 >= k1
steps. Update n uses window n, the stream's steps [n k1, n k1 + k2)::

    c_n          = carry at step n k1           (stop_gradient: the truncation)
    c_{n+1}, y_A = RNN(theta; c_n,     x[n k1 : n k1 + k1])          first k1 steps
    _,       y_B = RNN(theta; c_{n+1}, x[n k1 + k1 : n k1 + k2])     the k2 - k1 overlap steps
    L_n          = mean over the last k1 steps of loss(concat(y_A, y_B), targets)
    theta       <- theta + optimizer(clip(dL_n/dtheta))

so every target from step k2 - k1 on enters exactly one loss (the first k2 - k1 targets of the
stream only condition the carry), the loss at step t is backpropagated to the window start
(between k2 - k1 + 1 and k2 steps), and the k2 - k1 overlap steps are run again by the next
update, from the stored carry c_{n+1}, with the updated parameters. c_{n+1} is computed with the
parameters before update n, as in every on-line TBPTT. k1 == k2 is the common case:
consecutive non-overlapping windows (``rnn_jax.tasks.windows``). Windows count
``(L - 1 - k2) // k1 + 1`` (targets are the inputs shifted by one step).

A step whose loss or gradient is not finite leaves the parameters and optimizer state unchanged
(counted in ``TrainState.skipped``, as in ``rnn_jax.training.train``) and resets the carry to zeros.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from rnn_jax import losses
from rnn_jax.training import checkpoint, logs, loop, train


def _check_k(k1, k2) -> tuple[int, int]:
    k2 = k1 if k2 is None else k2
    for name, k in (("k1", k1), ("k2", k2)):
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"{name} must be an int >= 1, got {k!r}")
    if k2 < k1:
        raise ValueError(f"k2 (steps backpropagated) must be >= k1 (steps between updates), "
                         f"got k1={k1}, k2={k2}")
    return int(k1), int(k2)


def window_count(length: int, k1: int, k2: int | None = None) -> int:
    """How many TBPTT windows a stream of ``length`` steps gives: (L - 1 - k2) // k1 + 1, >= 0."""
    k1, k2 = _check_k(k1, k2)
    return max(0, (length - 1 - k2) // k1 + 1)


def window_at(stream, n, k1: int, k2: int | None = None) -> dict:
    """Window ``n`` of a token stream (jit-able, ``n`` may be traced).

    ``xs = S[:, n k1 : n k1 + k2]``, ``ys = S[:, n k1 + 1 : n k1 + k2 + 1]``.
    Shapes: stream [B, L] int -> {"xs", "ys": [B, k2]}.
    """
    k1, k2 = _check_k(k1, k2)
    b = stream.shape[0]
    start = jnp.asarray(n, jnp.int32) * k1
    chunk = jax.lax.dynamic_slice(stream, (jnp.zeros((), jnp.int32), start), (b, k2 + 1))
    return {"xs": chunk[:, :-1], "ys": chunk[:, 1:]}


def _default_loss(logits, ys):
    return losses.softmax_cross_entropy(logits, ys)


def tbptt_loss(model, params, carries, window, *, k1: int, key=None, loss_fn=None):
    """The loss of one TBPTT window and the carry that starts the next one.

    ``window = {"xs": [B, k2, ...], "ys": [B, k2, ...]}`` (token ids or features); the carry
    is cut from the graph on the way in and on the way out, so no gradient crosses a window
    boundary. ``loss_fn(logits, ys)`` defaults to the mean softmax cross-entropy.
    Returns ``(loss, next_carries)``.
    """
    loss_fn = _default_loss if loss_fn is None else loss_fn
    xs, ys = window["xs"], window["ys"]
    k2 = xs.shape[1]
    if not 1 <= k1 <= k2:
        raise ValueError(f"k1 must lie in [1, window length k2={k2}], got {k1}")
    carries = jax.lax.stop_gradient(carries)
    keys = (None, None) if key is None else tuple(jax.random.split(key))
    mode = {"deterministic": key is None}
    logits, mid = model.apply(params, xs[:, :k1], carries=carries, return_carries=True,
                              key=keys[0], **mode)
    if k2 > k1:
        tail, _ = model.apply(params, xs[:, k1:], carries=mid, return_carries=True,
                              key=keys[1], **mode)
        logits = jnp.concatenate([logits, tail], axis=1)[:, k2 - k1:]
    return loss_fn(logits, ys[:, k2 - k1:]), jax.lax.stop_gradient(mid)


def make_tbptt_update(model, opt_cfg: train.OptimizerConfig, *, k1: int, k2: int | None = None,
                      loss_fn=None, optimizer=None):
    """The pure update ``(state, carries, window, key=None) -> (state, carries, metrics)``.

    metrics as in ``train.make_train_step``: ``loss``, ``grad_norm`` (before clipping),
    ``clipped``, ``param_norm``, ``update_norm``, ``finite``.
    """
    k1, k2 = _check_k(k1, k2)
    optimizer = train.make_optimizer(opt_cfg) if optimizer is None else optimizer

    def update(state: train.TrainState, carries, window, key=None):
        if window["xs"].shape[1] != k2:
            raise ValueError(f"window['xs'] must hold k2={k2} steps, got shape "
                             f"{tuple(window['xs'].shape)}")
        (loss, nxt), grads = jax.value_and_grad(
            lambda p: tbptt_loss(model, p, carries, window, k1=k1, key=key, loss_fn=loss_fn),
            has_aux=True)(state.params)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = optimizer.update(grads, state.opt_state, state.params)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new_state = train.TrainState(
            state.step + 1,
            jax.tree.map(keep, optax.apply_updates(state.params, updates), state.params),
            jax.tree.map(keep, new_opt, state.opt_state),
            state.skipped + (~finite).astype(jnp.int32))
        nxt = jax.tree.map(lambda c: jnp.where(finite, c, jnp.zeros_like(c)), nxt)
        metrics = {"loss": loss, "grad_norm": grad_norm,
                   "clipped": train._clipped(opt_cfg, grads, grad_norm),
                   "param_norm": optax.tree.norm(new_state.params),
                   "update_norm": jnp.where(finite, optax.tree.norm(updates), 0.0),
                   "finite": finite}
        return new_state, nxt, metrics

    return update


def stream_loss(model, params, stream, window: int, *, loss_fn=None):
    """Mean loss over a whole stream read in non-overlapping windows, the carry passed on.

    Every target of the first ``(L - 1) // window * window`` steps counts once (evaluation:
    no truncation of the forward pass). Shapes: stream [B, L] int -> [] float.
    """
    count = window_count(stream.shape[1], window)
    if count < 1:
        raise ValueError(f"stream of {stream.shape[1]} steps is shorter than window + 1 = "
                         f"{window + 1}")
    loss_fn = _default_loss if loss_fn is None else loss_fn

    def body(carries, n):
        w = window_at(stream, n, window)
        loss, carries = tbptt_loss(model, params, carries, w, k1=window, loss_fn=loss_fn)
        return carries, loss

    _, per_window = jax.lax.scan(body, model.initial_carries((stream.shape[0],)),
                                 jnp.arange(count))
    return jnp.mean(per_window)


@functools.partial(jax.jit, static_argnames=("model", "opt_cfg", "k1", "k2", "dropout"))
def _driver_step(state, carries, stream, n, drop_key, u, *, model, opt_cfg, k1, k2, dropout):
    update = make_tbptt_update(model, opt_cfg, k1=k1, k2=k2)
    key = jax.random.fold_in(drop_key, u) if dropout else None
    return update(state, carries, window_at(stream, n, k1, k2), key)


_stream_eval = jax.jit(stream_loss, static_argnums=(0, 3))


def fit_tbptt(key, model, task, opt_cfg: train.OptimizerConfig, *, batch_size: int, k1: int,
              k2: int | None = None, epochs: int = 1, max_updates: int | None = None,
              split: str = "train", eval_split: str | None = None, log_every: int = 1,
              dropout: bool = False, progress: bool = True, checkpoint_dir=None,
              checkpoint_every: int = 0, keep: int | None = None):
    """Trains a token model with TBPTT over ``task.streams(split, batch_size)``.

    Update u (counted over all epochs) uses window ``u mod N`` of epoch ``u // N`` (N windows
    per epoch; each epoch starts from zero carries) and, when ``dropout``, the dropout key
    ``fold_in(run_keys(key).dropout, u)``. Parameters come from ``train.init_state(key, ...)``.
    At the end of each epoch, with ``eval_split``, the split is scored by :func:`stream_loss`
    (window k1). With ``checkpoint_dir``, ``{"state", "carries"}`` is saved every
    ``checkpoint_every`` updates and after the last one, with the history as metadata, and a
    later call resumes from the newest valid checkpoint (checked first against the model's
    shapes and the run: key, model, task, optimizer, batch size, k1, k2, split), ending exactly
    where an uninterrupted run ends.

    Returns ``(state, history)``: ``{"train": [{"update", "epoch", "loss", "grad_norm"}, ...]
    (at multiples of log_every), "eval": [{"epoch", "loss", "bits_per_char"}, ...]}``.
    """
    k1, k2 = _check_k(k1, k2)
    stream = task.streams(split, batch_size)
    count = window_count(stream.shape[1], k1, k2)
    if count < 1:
        raise ValueError(f"split {split!r} gives streams of {stream.shape[1]} steps at "
                         f"batch_size={batch_size}; expected at least k2 + 1 = {k2 + 1}")
    for name, value in (("epochs", epochs), ("log_every", log_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    eval_stream = None if eval_split is None else task.streams(eval_split, batch_size)
    optimizer = train.make_optimizer(opt_cfg)
    zeros = model.initial_carries((batch_size,))
    like = {"state": jax.eval_shape(lambda k: train.init_state(k, model, task, optimizer), key),
            "carries": jax.eval_shape(lambda: zeros)}
    total = epochs * count if max_updates is None else min(max_updates, epochs * count)
    identity = json.loads(json.dumps({
        "key": loop.key_data(key), "model": repr(model), "task": type(task).__name__,
        "optimizer": dataclasses.asdict(opt_cfg), "batch_size": batch_size, "k1": k1, "k2": k2,
        "split": split, "dropout": dropout}))
    u0, history = 0, {"train": [], "eval": []}
    found = None if checkpoint_dir is None else checkpoint.check_compatible(checkpoint_dir, like)
    if found is not None:
        meta = checkpoint.read_metadata(checkpoint_dir, step=found)
        logs.check_identity(meta.get("run", {}), identity,
                            f"checkpoint directory {checkpoint_dir}")
        if found > total:
            raise ValueError(f"checkpoint directory {checkpoint_dir} is at update {found}, beyond "
                             f"the {total} updates asked for")
        restored = checkpoint.restore(checkpoint_dir, like, step=found)[0]
        u0, history = found, meta["history"]
        state, carries = restored["state"], restored["carries"]
    else:
        state, carries = train.init_state(key, model, task, optimizer), zeros
    static = dict(model=model, opt_cfg=opt_cfg, k1=k1, k2=k2, dropout=dropout)
    drop_key = train.run_keys(key).dropout
    with tqdm(total=total, initial=u0, disable=not progress, desc="tbptt",
              dynamic_ncols=True) as bar:
        for u in range(u0, total):
            epoch, n = divmod(u, count)
            if n == 0:
                carries = zeros
            state, carries, m = _driver_step(state, carries, stream, n, drop_key, u, **static)
            if (u + 1) % log_every == 0:
                m = jax.device_get(m)
                history["train"].append({"update": u + 1, "epoch": epoch,
                                         "loss": float(m["loss"]),
                                         "grad_norm": float(m["grad_norm"])})
                bar.set_postfix(loss=float(m["loss"]), refresh=False)
            if eval_stream is not None and n == count - 1:
                loss = float(_stream_eval(model, state.params, eval_stream, k1))
                history["eval"].append({"epoch": epoch, "loss": loss,
                                        "bits_per_char": loss / math.log(2.0)})
            if checkpoint_dir is not None and (
                    u + 1 == total or (checkpoint_every and (u + 1) % checkpoint_every == 0)):
                loop.save_step(checkpoint_dir, u + 1, {"state": state, "carries": carries},
                           {"run": identity, "history": history}, keep)
            bar.update(1)
    return state, history
