"""The copy-memory task of Arjovsky, Shah & Bengio (2016): a frozen dataclass sampled from a key."""

import math
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp

from .. import losses
from .protocol import check_int, check_outputs, validate_batch_size, validate_key


@dataclass(frozen=True)
class CopyMemory:
    """The copy-memory problem: reproduce a short symbol string after a long blank delay.

    Arjovsky, Shah & Bengio 2016, "Unitary Evolution Recurrent Neural Networks", Sec. 4.1. With
    K = ``num_symbols``, C = ``copy_len`` and D = ``delay``, the token alphabet is 0 (blank),
    1..K (symbols) and K+1 (delimiter). Input tokens, total length T = D + 2C::

        s_1 .. s_C,  0 x (D - 1),  K+1,  0 x C          s_i ~ U{1..K} independently

    Target tokens: 0 for the first D + C steps, then s_1 .. s_C in the last C steps. Inputs are
    one-hot floats over the K + 2 tokens; the model predicts one of K + 2 classes at every step
    (readout "all"; class K+1 never occurs as a target). The paper's setting is K = 8, C = 10.

    Baseline (the paper's memoryless strategy): predict blank with certainty for the first D + C
    steps (cross-entropy 0) and the uniform distribution over the K symbols for the last C steps
    (ln K each); averaged over the T steps::

        baseline = C ln K / (D + 2C)          (10 ln 8 / (D + 20) for the paper's setting)

    Shapes:
        sample(key, B): xs [B, T, K+2] float32 one-hot, ys [B, T] int32, mask [B, T] bool
        loss / metrics: outputs [B, T, K+2] float logits
    """

    delay: int = 100
    num_symbols: int = 8
    copy_len: int = 10

    readout: ClassVar[str] = "all"
    kind: ClassVar[str] = "classification"
    token_inputs: ClassVar[bool] = False
    fixed_length: ClassVar[bool] = True  # every mask is all True
    blank: ClassVar[int] = 0

    def __post_init__(self):
        check_int("delay", self.delay, 1)
        check_int("num_symbols", self.num_symbols, 1)
        check_int("copy_len", self.copy_len, 1)

    @property
    def seq_len(self) -> int:
        """T = delay + 2 · copy_len."""
        return self.delay + 2 * self.copy_len

    @property
    def input_size(self) -> int:
        """K + 2 one-hot token features (blank, K symbols, delimiter)."""
        return self.num_symbols + 2

    @property
    def output_size(self) -> int:
        """K + 2 classes, the same alphabet as the inputs."""
        return self.num_symbols + 2

    @property
    def delimiter(self) -> int:
        """The token K + 1 that tells the model to start writing."""
        return self.num_symbols + 1

    @property
    def baseline(self) -> float:
        """Cross-entropy of the memoryless strategy, C ln K / (D + 2C) nats per step."""
        return self.copy_len * math.log(self.num_symbols) / self.seq_len

    def sample(self, key, batch_size):
        """Draw a batch: ``{"xs": [B, T, K+2] f32, "ys": [B, T] i32, "mask": [B, T] bool}``."""
        key = validate_key(key)
        b, c, d = validate_batch_size(batch_size), self.copy_len, self.delay
        symbols = jax.random.randint(key, (b, c), 1, self.num_symbols + 1, dtype=jnp.int32)
        tokens = jnp.concatenate(
            [
                symbols,
                jnp.zeros((b, d - 1), jnp.int32),
                jnp.full((b, 1), self.delimiter, jnp.int32),
                jnp.zeros((b, c), jnp.int32),
            ],
            axis=1,
        )
        targets = jnp.concatenate([jnp.zeros((b, d + c), jnp.int32), symbols], axis=1)
        return {
            "xs": jax.nn.one_hot(tokens, self.input_size, dtype=jnp.float32),
            "ys": targets,
            "mask": jnp.ones((b, self.seq_len), bool),
        }

    def loss(self, outputs, batch):
        """Cross-entropy averaged over all T steps. Shapes: outputs [B, T, K+2] -> []."""
        check_outputs(outputs, batch["ys"].shape + (self.output_size,))
        return losses.softmax_cross_entropy(outputs, batch["ys"], batch["mask"])

    def metrics(self, outputs, batch):
        """``loss``, ``normalized_loss`` (loss / baseline), ``accuracy`` over all steps and
        ``copy_accuracy`` over the last C steps (the symbols to recall).

        Shapes: outputs [B, T, K+2] -> dict of [] floats.
        """
        check_outputs(outputs, batch["ys"].shape + (self.output_size,))
        out = losses.classification_metrics(outputs, batch["ys"], batch["mask"])
        c = self.copy_len
        out["copy_accuracy"] = losses.accuracy(outputs[..., -c:, :], batch["ys"][..., -c:])
        out["normalized_loss"] = out["loss"] / self.baseline
        return out
