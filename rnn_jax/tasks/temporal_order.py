"""The temporal-order task (Hochreiter & Schmidhuber 1997), a frozen dataclass sampled from keys."""

import math
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .. import losses
from .protocol import check_int, check_outputs, validate_batch_size, validate_key


@dataclass(frozen=True)
class TemporalOrder:
    """The temporal order problem: classify the order of 2 (or 3) relevant symbols in noise.

    Hochreiter & Schmidhuber 1997, "Long Short-Term Memory", Sec. 5.6 (tasks 6a, 6b), in the
    fixed-window form of Pascanu, Mikolov & Bengio 2013's released generator. Six symbols, one-hot
    encoded: 0 = X and 1 = Y (relevant), 2..5 = distractors (a, b, c, d). Every step holds a
    distractor drawn uniformly from {2..5}, except the relevant steps p_i, which hold
    v_i ~ U{0, 1} (X or Y). With T = ``seq_len`` and w = ⌊T/10⌋ (Pascanu's int(0.1·T)), p_i is
    uniform in [s_i, s_i + w) with

        num_bits=2: s = (⌊T/10⌋, ⌊5T/10⌋)                i.e. [0.1T, 0.2T), [0.5T, 0.6T)
        num_bits=3: s = (⌊T/10⌋, ⌊3T/10⌋, ⌊6T/10⌋)       i.e. [0.1T, 0.2T), [0.3T, 0.4T),
                                                              [0.6T, 0.7T)

    (Hochreiter & Schmidhuber, T in 100..110: t1 in [10, 20], t2 in [50, 60] for 6a, and windows
    [10, 20], [33, 43], [66, 76] for 6b.) The class is c = sum_i v_i 2^i, so 2 bits give 4 classes
    (XX=0, YX=1, XY=2, YY=3: v_0 is the earlier symbol) and 3 bits give 8. Needs T >= 10.

    Classes are uniform, so the chance-level loss is the cross-entropy of the uniform predictor,
    ``baseline = ln 2^num_bits`` (ln 4 ≈ 1.386, ln 8 ≈ 2.079). The paper's success criterion is
    the fraction of misclassified sequences, the metric ``"error"``.

    Shapes:
        sample(key, B): xs [B, T, 6] float32 one-hot, ys [B] int32, mask [B, T] bool
        loss / metrics: outputs [B, 2^num_bits] float logits (readout at the last step)
    """

    seq_len: int = 100
    num_bits: int = 2

    input_size: ClassVar[int] = 6
    readout: ClassVar[str] = "last"
    kind: ClassVar[str] = "classification"
    token_inputs: ClassVar[bool] = False
    fixed_length: ClassVar[bool] = True  # every mask is all True

    def __post_init__(self):
        if isinstance(self.num_bits, bool) or self.num_bits not in (2, 3):
            raise ValueError(f"num_bits: expected 2 or 3, got {self.num_bits!r}")
        check_int("seq_len", self.seq_len, 10)

    @property
    def output_size(self) -> int:
        """2^num_bits order classes."""
        return 2**self.num_bits

    @property
    def windows(self) -> tuple[tuple[int, int], ...]:
        """The half-open windows [start, stop) of the relevant symbols, earliest bit first."""
        t = self.seq_len
        w = t // 10
        if self.num_bits == 2:
            starts = (t // 10, (5 * t) // 10)
        else:
            starts = (t // 10, (3 * t) // 10, (6 * t) // 10)
        return tuple((s, s + w) for s in starts)

    @property
    def baseline(self) -> float:
        """Cross-entropy of the uniform predictor, ln 2^num_bits nats."""
        return self.num_bits * math.log(2.0)

    def sample(self, key, batch_size):
        """Draw a batch: ``{"xs": [B, T, 6] f32, "ys": [B] i32, "mask": [B, T] bool}``."""
        key = validate_key(key)
        b, t = validate_batch_size(batch_size), self.seq_len
        k = self.num_bits
        # One randint call with per-column bounds [lo, hi): t distractors in {2..5}, k bits in
        # {0, 1}, then k positions, one per window.
        windows = self.windows
        lo = np.array([2] * t + [0] * k + [start for start, _ in windows], np.int32)
        hi = np.array([6] * t + [2] * k + [stop for _, stop in windows], np.int32)
        draws = jax.random.randint(key, (b, t + 2 * k), lo[None, :], hi[None, :], jnp.int32)
        tokens, bits, positions = draws[:, :t], draws[:, t : t + k], draws[:, t + k :]
        steps = jnp.arange(t, dtype=jnp.int32)[None, :]
        for i in range(k):
            tokens = jnp.where(steps == positions[:, i : i + 1], bits[:, i : i + 1], tokens)
        weights = 2 ** jnp.arange(self.num_bits, dtype=jnp.int32)
        labels = jnp.sum(bits * weights[None, :], axis=1)
        return {
            "xs": jax.nn.one_hot(tokens, self.input_size, dtype=jnp.float32),
            "ys": labels,
            "mask": jnp.ones((b, t), bool),
        }

    def loss(self, outputs, batch):
        """Cross-entropy of the order class. Shapes: outputs [B, 2^num_bits] -> []."""
        check_outputs(outputs, batch["ys"].shape + (self.output_size,))
        return losses.softmax_cross_entropy(outputs, batch["ys"])

    def metrics(self, outputs, batch):
        """``loss``, ``accuracy`` and ``error`` (fraction misclassified) of the order class.

        Shapes: outputs [B, 2^num_bits] -> dict of [] floats.
        """
        check_outputs(outputs, batch["ys"].shape + (self.output_size,))
        return losses.classification_metrics(outputs, batch["ys"])
