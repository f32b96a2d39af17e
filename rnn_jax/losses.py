"""Masked losses and metrics for sequence models, written in plain ``jax.numpy``.

Every function here reduces with :func:`masked_mean`: a mean over the *real* entries only, where
``mask`` is True. Padded entries may hold anything (garbage, NaN, label -1); they never reach the
result or its gradient. A batch with no real entry gives 0, never NaN. All functions check shapes
and dtypes only (static information), so they are safe under ``jit``, ``vmap`` and ``grad``.

Notation: B batch, T time, O outputs (classes); any number of leading batch axes is allowed.
"""

import math

import jax
import jax.numpy as jnp

__all__ = [
    "masked_mean",
    "softmax_cross_entropy",
    "mse",
    "accuracy",
    "bits_per_char",
    "classification_metrics",
]


def _float_dtype(dtype):
    # Reductions run in at least float32, so bf16 model outputs do not lose the loss's precision.
    return jnp.promote_types(dtype, jnp.float32)


def _check_mask(mask, shape, arg="mask"):
    """Return ``mask`` as a bool array broadcast to ``shape``; it must match a leading prefix."""
    mask = jnp.asarray(mask)
    if mask.ndim > len(shape) or tuple(shape[: mask.ndim]) != tuple(mask.shape):
        raise ValueError(
            f"{arg}: expected a shape equal to a leading prefix of {tuple(shape)}, "
            f"got shape {tuple(mask.shape)}"
        )
    if not (
        jnp.issubdtype(mask.dtype, jnp.bool_)
        or jnp.issubdtype(mask.dtype, jnp.integer)
        or jnp.issubdtype(mask.dtype, jnp.floating)
    ):
        raise TypeError(f"{arg}: expected a bool (or 0/1 numeric) array, got dtype {mask.dtype}")
    mask = mask.astype(bool)
    trailing = (1,) * (len(shape) - mask.ndim)
    return jnp.broadcast_to(mask.reshape(mask.shape + trailing), tuple(shape))


def masked_mean(values, mask=None):
    """Mean of ``values`` over the entries where ``mask`` is True; 0 when there are none.

    Definition::

        masked_mean(v, m) = sum_i m_i * v_i / max(1, sum_i m_i)

    Masked-out entries are replaced by 0 with ``jnp.where`` before summing, so a NaN or inf in
    padding neither reaches the value nor its gradient. ``mask=None`` is the plain mean.

    Shapes:
        values: [*S] (any shape, any float dtype; integers and bools are promoted to float32)
        mask: [*S[:k]] bool for some k <= len(S) — e.g. [B, T] for values [B, T, O]; each mask
            entry then covers all trailing entries of ``values``.
        returns: [] float (at least float32)
    """
    values = jnp.asarray(values)
    values = values.astype(_float_dtype(values.dtype))
    if mask is None:
        if values.size == 0:
            return jnp.zeros((), values.dtype)
        return jnp.mean(values)
    mask = _check_mask(mask, values.shape)
    total = jnp.sum(jnp.where(mask, values, jnp.zeros((), values.dtype)))
    count = jnp.sum(mask, dtype=jnp.int32)
    return total / jnp.maximum(count, 1).astype(values.dtype)


def _check_logits_labels(logits, labels):
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits: expected a float array, got dtype {logits.dtype}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels: expected integer class ids, got dtype {labels.dtype}")
    if logits.ndim < 1 or tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"labels: expected shape logits.shape[:-1] = {tuple(logits.shape[:-1])} "
            f"(logits shape {tuple(logits.shape)}), got {tuple(labels.shape)}"
        )
    return logits, labels


def softmax_cross_entropy(logits, labels, mask=None):
    """Mean softmax cross-entropy (nats) with integer labels, over real entries only.

    For each entry n with logits z_n and label y_n::

        ce_n = logsumexp(z_n) - z_n[y_n] = -log softmax(z_n)[y_n]
        loss = masked_mean(ce, mask)

    Labels must lie in [0, O) on real entries; on padded entries they may be anything (e.g. -1).
    Works for one prediction per sequence (logits [B, O], labels [B]) and one per step
    (logits [B, T, O], labels [B, T], mask [B, T]). The standard training loss for classification
    and language models (e.g. Graves 2013, "Generating Sequences With Recurrent Neural Networks").

    Shapes:
        logits: [*S, O] float
        labels: [*S] int
        mask: [*S] (or a leading prefix of S) bool, optional
        returns: [] float
    """
    logits, labels = _check_logits_labels(logits, labels)
    logits = logits.astype(_float_dtype(logits.dtype))
    num_classes = logits.shape[-1]
    if mask is not None:
        # Zeroing padded logits first keeps NaN/inf padding out of the softmax's backward pass.
        mask = _check_mask(mask, labels.shape)
        logits = jnp.where(mask[..., None], logits, jnp.zeros((), logits.dtype))
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    # Clipping keeps padding labels such as -1 inside the gather; those entries are masked anyway.
    safe = jnp.clip(labels, 0, num_classes - 1)
    picked = jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    return masked_mean(-picked, mask)


def mse(preds, targets, mask=None):
    """Mean squared error over real entries (all output features of every real step).

    Definition, with m the mask broadcast over trailing feature axes::

        mse = sum_n m_n (p_n - y_n)^2 / max(1, sum_n m_n)

    For a per-step regression ([B, T, O] with mask [B, T]) this is the mean over real steps and
    output features. The loss of the adding problem (Hochreiter & Schmidhuber 1997, "Long
    Short-Term Memory"; Le, Jaitly & Hinton 2015).

    Shapes:
        preds: [*S] float
        targets: [*S] float (same shape as preds)
        mask: a leading prefix of S, bool, optional
        returns: [] float
    """
    preds = jnp.asarray(preds)
    targets = jnp.asarray(targets)
    if tuple(preds.shape) != tuple(targets.shape):
        raise ValueError(
            f"targets: expected the shape of preds {tuple(preds.shape)}, got {tuple(targets.shape)}"
        )
    if not jnp.issubdtype(preds.dtype, jnp.floating):
        raise TypeError(f"preds: expected a float array, got dtype {preds.dtype}")
    dtype = _float_dtype(jnp.result_type(preds.dtype, targets.dtype))
    diff = preds.astype(dtype) - targets.astype(dtype)
    if mask is not None:
        # Zero padded differences before squaring so NaN padding gets a zero (not NaN) gradient.
        mask = _check_mask(mask, diff.shape)
        diff = jnp.where(mask, diff, jnp.zeros((), dtype))
    return masked_mean(jnp.square(diff), mask)


def accuracy(logits, labels, mask=None):
    """Fraction of real entries whose arg-max class equals the label.

    Definition::

        accuracy = masked_mean([argmax_o z_n[o] == y_n], mask)

    Ties go to the lowest class index (``jnp.argmax``). The error rate reported for the temporal
    order problem (Hochreiter & Schmidhuber 1997) is ``1 - accuracy``.

    Shapes:
        logits: [*S, O] float
        labels: [*S] int
        mask: [*S] (or a leading prefix of S) bool, optional
        returns: [] float32
    """
    logits, labels = _check_logits_labels(logits, labels)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return masked_mean(correct, mask)


def bits_per_char(ce_nats):
    """Convert a cross-entropy in nats per character to bits per character.

    Definition::

        bpc = ce_nats / ln 2

    The metric of character-level language modelling (e.g. Graves 2013, "Generating Sequences
    With Recurrent Neural Networks"; Karpathy, Johnson & Fei-Fei 2015).

    Shapes:
        ce_nats: [*S] float (any shape; usually a scalar)
        returns: [*S] float
    """
    ce_nats = jnp.asarray(ce_nats)
    ce_nats = ce_nats.astype(_float_dtype(ce_nats.dtype))
    return ce_nats / math.log(2.0)


def classification_metrics(logits, labels, mask=None):
    """Cross-entropy, accuracy and error rate of a classifier, as a dict of scalars.

    Definition::

        {"loss": softmax_cross_entropy(z, y, m), "accuracy": a, "error": 1 - a}

    with ``a = accuracy(z, y, m)``. ``error`` is the success criterion of the temporal order
    problem (Hochreiter & Schmidhuber 1997, "Long Short-Term Memory", Sec. 5.6).

    Shapes:
        logits: [*S, O] float
        labels: [*S] int
        mask: [*S] (or a leading prefix of S) bool, optional
        returns: dict of [] floats
    """
    acc = accuracy(logits, labels, mask)
    return {
        "loss": softmax_cross_entropy(logits, labels, mask),
        "accuracy": acc,
        "error": 1.0 - acc,
    }
