"""A task made from your own arrays: padded variable-length sequences, targets and splits.

:func:`array_task` checks padded inputs ``xs``, targets ``ys`` and which steps are real
(``lengths`` or ``mask``), carves train/validation/test splits, and returns an
:class:`ArrayTask` that follows the task protocol (``protocol.py``), so the train step, ``fit``,
evaluation and checkpoints take it like any other task. Three losses:

    kind="classification", readout="last":  CE(z_b, y_b),    z_b = logits after b's last real step
    kind="classification", readout="all":   mean over real (b, t) of CE(z_bt, y_bt)
    kind="regression", readout="last"|"all": mean over real entries of (z - y)^2

Padding is inert by construction: padded steps of ``xs`` (and of per-step ``ys``) are stored as
zeros, whatever they held (NaN, inf, garbage), and every loss and metric is masked.
"""

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import jax
import jax.numpy as jnp
import numpy as np

from .. import losses
from .array_checks import (
    KINDS,
    READOUTS,
    arg_name,
    carve,
    check_range,
    check_set,
    choice,
    positive_int,
)
from .protocol import fingerprint, sample_rows

__all__ = ["ArrayTask", "array_task"]

_SPLIT_NAMES = ("train", "validation", "test")


@dataclass(frozen=True, eq=False)
class ArrayTask:
    """Sequences held in memory as padded arrays; build it with :func:`array_task`.

    Each split is ``{"xs", "ys", "mask"}``; ``mask[n, t]`` is True on real steps. Training
    batches are drawn uniformly with replacement from the train split (pure in the key)::

        idx_b ~ U{0 .. N_train - 1},   batch = {k: split["train"][k][idx]}

    ``baseline`` is the loss of the best input-blind predictor: ln(num_classes) for
    classification (uniform), the variance of the train targets (mean over real entries and
    output features) for regression. Compared by identity (``eq=False``), hence hashable and a
    valid static argument of ``jit``. Never fixed-length: masks always reach the runner.
    ``fingerprint`` digests the data (``protocol.fingerprint``); checkpoint identities include
    it, so a run never resumes on other data of the same shape.

    Shapes:
        xs [N, T, I] float or [N, T] int tokens; mask [N, T] bool
        ys: classification [N] ("last") or [N, T] ("all") int;
            regression [N, O] ("last") or [N, T, O] ("all") float
        loss / metrics: outputs [B, O] ("last") or [B, T, O] ("all")
    """

    splits: Mapping[str, Mapping[str, jax.Array]]
    kind: str
    readout: str
    output_size: int
    input_size: int
    baseline: float
    name: str = "arrays"
    source_index: Mapping[str, np.ndarray] = field(default_factory=dict)

    fixed_length = False  # a class constant, like the other tasks' ClassVar

    def __post_init__(self):
        if "train" not in self.splits or not set(self.splits) <= set(_SPLIT_NAMES):
            raise ValueError(f"splits: expected 'train' and optionally 'validation', 'test', "
                             f"got {sorted(self.splits)}")
        object.__setattr__(self, "splits", MappingProxyType(
            {k: MappingProxyType(dict(v)) for k, v in self.splits.items()}))
        object.__setattr__(self, "source_index", MappingProxyType(dict(self.source_index)))

    @functools.cached_property
    def fingerprint(self) -> dict:
        """``{split: {"xs", "ys", "mask": "<dtype>[<shape>] <sha256 prefix>"}}``, computed once."""
        return fingerprint(self.splits)

    @property
    def token_inputs(self) -> bool:
        """True when ``xs`` holds integer token ids (then ``input_size`` is the vocabulary)."""
        return self.splits["train"]["xs"].ndim == 2

    @property
    def seq_len(self) -> int:
        """T, the padded length of every sequence."""
        return int(self.splits["train"]["xs"].shape[1])

    @property
    def split_names(self) -> tuple[str, ...]:
        """The splits present, in the order train, validation, test."""
        return tuple(n for n in _SPLIT_NAMES if n in self.splits)

    def num_examples(self, name: str) -> int:
        """N, the number of sequences in split ``name``."""
        return int(self.split(name)["xs"].shape[0])

    def split(self, name: str) -> dict:
        """The whole split ``name`` as a batch dict ``{"xs", "ys", "mask"}``."""
        if not isinstance(name, str) or name not in self.splits:
            raise ValueError(f"name: expected one of {self.split_names}, got {name!r}")
        return dict(self.splits[name])

    def sample(self, key, batch_size):
        """Draw B training sequences uniformly with replacement (pure in ``key``, jit-able)."""
        return sample_rows(key, batch_size, self.splits["train"])

    def _check_outputs(self, outputs, batch):
        lead = tuple(batch["mask"].shape[: 1 if self.readout == "last" else 2])
        expected = lead + (self.output_size,)
        if tuple(jnp.shape(outputs)) != expected:
            raise ValueError(f"outputs: expected shape {expected} (readout={self.readout!r}), "
                             f"got {tuple(jnp.shape(outputs))}")

    def _mask(self, batch):
        return batch["mask"] if self.readout == "all" else None

    def loss(self, outputs, batch):
        """Cross-entropy or MSE over real entries (module docstring). -> [] float."""
        self._check_outputs(outputs, batch)
        if self.kind == "classification":
            return losses.softmax_cross_entropy(outputs, batch["ys"], self._mask(batch))
        return losses.mse(outputs, batch["ys"], self._mask(batch))

    def metrics(self, outputs, batch):
        """Classification: ``loss``, ``accuracy``, ``error``; regression: ``loss``, ``rmse``."""
        self._check_outputs(outputs, batch)
        if self.kind == "classification":
            return losses.classification_metrics(outputs, batch["ys"], self._mask(batch))
        loss = losses.mse(outputs, batch["ys"], self._mask(batch))
        return {"loss": loss, "rmse": jnp.sqrt(loss)}


def array_task(xs, ys, *, lengths=None, mask=None, kind="classification", readout="last",
               num_classes=None, vocab_size=None, validation=None, test=None, key=None,
               name="arrays") -> ArrayTask:
    """Builds an :class:`ArrayTask` from padded arrays, checking every argument first.

    Args:
      xs: ``[N, T, I]`` floats or ``[N, T]`` int token ids, padded to T.
      ys: targets; classification ``[N]`` ("last") or ``[N, T]`` ("all") ints, regression
        ``[N, O]`` or ``[N, T, O]`` floats.
      lengths / mask: ``[N]`` ints in [1, T] (real steps first) or ``[N, T]`` bools (any real
        steps, at least one per row); neither: every step is real.
      kind: "classification" | "regression";  readout: "last" | "all" (the model's readout).
      num_classes: classes (default: 1 + the largest label of any split).
      vocab_size: tokens (default: 1 + the largest token id of any split).
      validation / test: None, a fraction of ``xs`` (rows shuffled by ``key``), or a dict
        ``{"xs", "ys", "lengths" or "mask"}`` of its own sequences.
      key: a PRNG key, needed by fractional splits only.
      name: names the task in logs and checkpoint identities.

    Raises ValueError/TypeError naming the argument before any array reaches JAX.

    Shapes: see :class:`ArrayTask`.
    """
    choice("kind", kind, KINDS)
    choice("readout", readout, READOUTS)
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty str, got {name!r}")
    num_classes = positive_int("num_classes", num_classes)
    vocab_size = positive_int("vocab_size", vocab_size)
    if num_classes is not None and kind != "classification":
        raise ValueError(f"num_classes: only for kind='classification', got kind={kind!r}")
    sets = {"": check_set("", xs, ys, lengths, mask, kind, readout)}
    for split, given in (("validation", validation), ("test", test)):
        if isinstance(given, Mapping):
            extra = set(given) - {"xs", "ys", "lengths", "mask"}
            if extra or not {"xs", "ys"} <= set(given):
                raise ValueError(f"{split}: expected keys 'xs', 'ys' and 'lengths' or 'mask', "
                                 f"got {sorted(given)}")
            sets[split] = check_set(split, given["xs"], given["ys"], given.get("lengths"),
                                     given.get("mask"), kind, readout)
    rows = carve(sets[""][0].shape[0], validation, test, key)
    first = sets[""][0]
    for split, (x, _, _) in sets.items():
        if split and (x.ndim != first.ndim or x.shape[1:] != first.shape[1:]
                      or x.dtype.kind != first.dtype.kind):
            raise ValueError(f"{split}['xs']: expected per-sequence shape {list(first.shape[1:])} "
                             f"and dtype kind of xs, got {x.dtype}{list(x.shape[1:])}")
    tokens = np.issubdtype(first.dtype, np.integer)
    all_x = [x for x, _, _ in sets.values()]
    if tokens:
        vocab_size = vocab_size or int(max(x.max() for x in all_x)) + 1
        for split, x in zip(sets, all_x, strict=True):
            check_range(arg_name(split, "xs"), x, vocab_size, "token ids")
    elif vocab_size is not None:
        raise ValueError("vocab_size: only for int token inputs; xs holds floats")
    if kind == "classification":
        all_y = [y[m] if readout == "all" else y for _, y, m in sets.values()]
        num_classes = num_classes or max(int(y.max()) + 1 for y in all_y)
        for split, y in zip(sets, all_y, strict=True):
            check_range(arg_name(split, "ys"), y, num_classes, "class ids")
        if num_classes < 2:
            raise ValueError(f"num_classes: expected >= 2 classes, got {num_classes}")
    splits, index = {}, {}
    for split, idx in rows.items():
        x, y, m = (a[idx] for a in sets[""])
        splits[split], index[split] = (x, y, m), idx
    for split in ("validation", "test"):
        if split in sets:
            splits[split], index[split] = sets[split], np.arange(sets[split][0].shape[0])
    train_x, train_y, train_m = splits["train"]
    if kind == "classification":
        out, base = num_classes, math.log(num_classes)
    else:
        out = int(train_y.shape[-1])
        real = train_y if readout == "last" else train_y[train_m]
        base = float(np.mean(np.var(real.astype(np.float64), axis=0)))
    return ArrayTask(
        splits={s: {"xs": jnp.asarray(x), "ys": jnp.asarray(y), "mask": jnp.asarray(m)}
                for s, (x, y, m) in splits.items()},
        kind=kind, readout=readout, output_size=out,
        input_size=vocab_size if tokens else int(train_x.shape[-1]), baseline=base, name=name,
        source_index=index)
