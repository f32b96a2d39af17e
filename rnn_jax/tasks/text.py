"""Character-level language modelling on any text: vocabulary, encoding, the ``CharLM`` task.

Character-level modelling follows Sutskever, Martens & Hinton 2011, Graves 2013 and Karpathy,
Johnson & Fei-Fei 2015 ("Visualizing and Understanding Recurrent Networks"). The Shakespeare
corpus is read in ``shakespeare.py``; truncated-BPTT streams of a token sequence are in
``streams.py``.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .. import losses
from .protocol import validate_batch_size, validate_key
from .streams import streams as cut_streams

__all__ = ["CharLM", "char_lm_task", "char_vocab"]

_SPLIT_NAMES = ("train", "validation", "test")


def _code_points(text):
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


def char_vocab(text: str) -> str:
    """The sorted set of distinct characters of ``text``, as a string (index = token id).

    Shapes:
        returns: str of length V
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    counts = np.bincount(_code_points(text))
    return "".join(chr(c) for c in np.flatnonzero(counts))


def _token_dtype(vocab_size):
    # Stored tokens are gathered inside jit as constants: the narrowest dtype keeps them small.
    return np.uint8 if vocab_size <= 256 else np.int32


@dataclass(frozen=True, eq=False)
class CharLM:
    """Character-level language modelling: predict each next character of a text.

    With the text split into train / validation / test token streams c_0 .. c_{N-1}
    (ids into ``vocab``), a training example is a random window of T + 1 characters of the train
    stream, s ~ U{0 .. N_train - T - 1}::

        xs = c_s .. c_{s+T-1},   ys = c_{s+1} .. c_{s+T}

    Tokens are ints fed to an embedding (``token_inputs``; ``input_size`` = V = vocabulary
    size), with a prediction at every step (readout "all"). Loss: softmax cross-entropy in nats
    per character; metric ``bits_per_char`` = loss / ln 2. Baselines: the uniform predictor,
    ``baseline = ln V``; the stronger unigram (character frequency) model,
    ``unigram_entropy`` = -Σ_c p_c ln p_c over train frequencies, in nats (on the default
    Shakespeare split ≈ 3.258 nats = 4.70 bits per character, against ln 88 ≈ 4.477 nats =
    6.46 bits for the uniform predictor over its 88 characters).
    Compared by identity (``eq=False``), hence hashable.

    Fields: ``vocab`` (the characters; token id = index), ``tokens`` (split name -> 1-D token
    stream, stored as uint8 when V <= 256 to keep jit constants small; read them as int32 with
    ``split_tokens``), ``seq_len`` (T) and ``unigram_entropy`` (nats). Build it with
    :func:`char_lm_task` or :func:`shakespeare_task`.

    Shapes:
        sample(key, B): xs [B, T] int32, ys [B, T] int32, mask [B, T] bool (all True)
        split(name): xs, ys [N_windows, T] int32 (consecutive non-overlapping windows)
        loss / metrics: outputs [B, T, V] float logits
    """

    vocab: str
    tokens: Mapping[str, np.ndarray]
    seq_len: int
    unigram_entropy: float

    readout: ClassVar[str] = "all"
    kind: ClassVar[str] = "classification"
    token_inputs: ClassVar[bool] = True
    fixed_length: ClassVar[bool] = True  # every mask is all True: the runner may skip it

    def __post_init__(self):
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, (int, np.integer)):
            raise TypeError(f"seq_len: expected an int, got {type(self.seq_len).__name__}")
        if self.seq_len < 1:
            raise ValueError(f"seq_len: expected an int >= 1, got {self.seq_len}")
        if "train" not in self.tokens:
            raise ValueError(f"tokens: expected a 'train' split, got {sorted(self.tokens)}")
        n_train = len(self.tokens["train"])
        if n_train < self.seq_len + 1:
            raise ValueError(
                f"seq_len: the train split has {n_train} characters, fewer than "
                f"seq_len + 1 = {self.seq_len + 1}"
            )
        dtype = _token_dtype(len(self.vocab))
        stored = {k: jnp.asarray(np.asarray(v, dtype)) for k, v in self.tokens.items()}
        object.__setattr__(self, "tokens", MappingProxyType(stored))

    @property
    def input_size(self) -> int:
        """V, the vocabulary size (token ids are embedded)."""
        return len(self.vocab)

    @property
    def output_size(self) -> int:
        """V, one logit per character."""
        return len(self.vocab)

    @property
    def baseline(self) -> float:
        """Cross-entropy of the uniform predictor, ln V nats per character."""
        return math.log(len(self.vocab))

    @property
    def split_names(self) -> tuple[str, ...]:
        """The splits present, in the order train, validation, test."""
        return tuple(name for name in _SPLIT_NAMES if name in self.tokens)

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text``; ValueError if it has characters outside the vocabulary.

        Shapes: returns [len(text)] int32.
        """
        return _encode(text, self.vocab)

    def decode(self, ids) -> str:
        """The string of token ids ``ids`` (any shape, read in row-major order)."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.vocab)):
            raise ValueError(
                f"ids: expected token ids in [0, {len(self.vocab)}), got range "
                f"[{ids.min()}, {ids.max()}]"
            )
        return "".join(np.asarray(list(self.vocab))[ids.astype(np.int64)]) if ids.size else ""

    def split_tokens(self, name: str) -> jax.Array:
        """The whole token stream of split ``name``. Shapes: returns [N] int32."""
        if name not in self.tokens:
            raise ValueError(f"name: expected one of {self.split_names}, got {name!r}")
        return self.tokens[name].astype(jnp.int32)

    def split(self, name: str) -> dict:
        """Split ``name`` as consecutive non-overlapping windows, a batch dict of the sample form.

        Window k: xs = c[kT : kT + T], ys = c[kT + 1 : kT + T + 1], k < ⌊(N - 1)/T⌋.
        Shapes: xs, ys [N_windows, T] int32, mask [N_windows, T] bool.
        """
        tokens = self.split_tokens(name)
        t = self.seq_len
        count = (tokens.shape[0] - 1) // t
        xs = tokens[: count * t].reshape(count, t)
        ys = tokens[1 : count * t + 1].reshape(count, t)
        return {"xs": xs, "ys": ys, "mask": jnp.ones((count, t), bool)}

    def streams(self, name: str, batch_size: int) -> jax.Array:
        """Split ``name`` cut into ``batch_size`` contiguous streams (see :func:`streams`).

        Shapes: returns [batch_size, ⌊N / batch_size⌋] int32.
        """
        return cut_streams(self.split_tokens(name), batch_size)

    def sample(self, key, batch_size):
        """Draw B random train windows: ``{"xs", "ys": [B, T] int32, "mask": [B, T] bool}``."""
        key = validate_key(key)
        b, t = validate_batch_size(batch_size), self.seq_len
        train = self.tokens["train"]
        starts = jax.random.randint(key, (b,), 0, train.shape[0] - t, dtype=jnp.int32)
        idx = starts[:, None] + jnp.arange(t + 1, dtype=jnp.int32)[None, :]
        chunk = jnp.take(train, idx, axis=0).astype(jnp.int32)
        return {"xs": chunk[:, :-1], "ys": chunk[:, 1:], "mask": jnp.ones((b, t), bool)}

    def loss(self, outputs, batch):
        """Cross-entropy in nats per real character. Shapes: outputs [B, T, V] -> []."""
        _check_logits(outputs, batch, len(self.vocab))
        return losses.softmax_cross_entropy(outputs, batch["ys"], batch["mask"])

    def metrics(self, outputs, batch):
        """``loss`` (nats/char), ``bits_per_char`` and next-character ``accuracy``.

        Shapes: outputs [B, T, V] -> dict of [] floats.
        """
        _check_logits(outputs, batch, len(self.vocab))
        loss = losses.softmax_cross_entropy(outputs, batch["ys"], batch["mask"])
        return {
            "loss": loss,
            "bits_per_char": losses.bits_per_char(loss),
            "accuracy": losses.accuracy(outputs, batch["ys"], batch["mask"]),
        }


def _check_logits(outputs, batch, vocab_size):
    expected = tuple(batch["ys"].shape) + (vocab_size,)
    if tuple(jnp.shape(outputs)) != expected:
        raise ValueError(f"outputs: expected shape {expected}, got {tuple(jnp.shape(outputs))}")


def _encode(text, vocab):
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    points = _code_points(text)
    vocab_points = _code_points(vocab)
    size = int(max(points.max(initial=0), vocab_points.max(initial=0))) + 1
    table = np.full(size, -1, np.int32)
    table[vocab_points] = np.arange(len(vocab), dtype=np.int32)
    ids = table[points]
    if ids.size and ids.min() < 0:
        unknown = sorted({chr(c) for c in points[ids < 0]})
        raise ValueError(f"text: characters {unknown[:10]!r} are not in the vocabulary")
    return ids


def _unigram_entropy(ids, vocab_size):
    counts = np.bincount(np.asarray(ids), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def char_lm_task(text: str, seq_len: int = 100, *, fractions=(0.9, 0.05, 0.05)) -> CharLM:
    """Build a :class:`CharLM` task from any text: vocabulary, encoding and contiguous splits.

    The vocabulary is the sorted set of characters of the whole text (so every split encodes).
    The encoded stream is cut, in order, into train / validation / test parts of
    ⌊N·f_train⌋, ⌊N·f_val⌋ and the remaining characters (``fractions`` must sum to 1; a zero
    fraction drops that split, train excepted). Contiguous splits keep each text passage in one
    split (random windows would leak overlapping text into evaluation).

    Shapes:
        text: str of N characters;  returns a CharLM with tokens[split]: [N_split]
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"text: expected a non-empty str, got {type(text).__name__}")
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"fractions: expected three non-negative (train, validation, test) fractions "
            f"summing to 1, got {fractions}"
        )
    vocab = char_vocab(text)
    ids = _encode(text, vocab)
    n = len(ids)
    n_train = int(n * fractions[0])
    n_val = int(n * fractions[1])
    cuts = {
        "train": ids[:n_train],
        "validation": ids[n_train : n_train + n_val],
        "test": ids[n_train + n_val :],
    }
    parts = {"train": cuts["train"]}
    for name, fraction in zip(("validation", "test"), fractions[1:], strict=True):
        if fraction > 0:
            parts[name] = cuts[name]
    entropy = _unigram_entropy(cuts["train"], len(vocab))
    return CharLM(vocab, parts, seq_len, entropy)


