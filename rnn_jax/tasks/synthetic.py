"""Synthetic long-range-dependency tasks, each a frozen dataclass sampled from a key.

The task protocol (shared with ``datasets.py`` and ``text.py``): attributes ``input_size``,
``output_size``, ``readout`` ("last" or "all"), ``kind`` ("regression" or "classification"),
``token_inputs``, ``seq_len``; ``sample(key, batch_size) -> {"xs", "ys", "mask"}`` is a pure JAX
function of the key (jit- and vmap-able; ``batch_size`` is static); ``loss(outputs, batch)``,
``metrics(outputs, batch)`` and the analytic chance-level loss ``baseline``.

Tasks: the adding problem (three published variants), copy memory, temporal order.
"""

import math
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .. import losses

__all__ = [
    "Adding",
    "CopyMemory",
    "TemporalOrder",
    "validate_key",
    "validate_batch_size",
]


def validate_key(key):
    """Check that ``key`` is a single JAX PRNG key and return it.

    Accepts a typed key (``jax.random.key``, shape ``()``) or a raw ``uint32[2]`` key
    (``jax.random.PRNGKey``); raises ``TypeError`` otherwise. Works on tracers (jit, vmap).

    Shapes:
        key: [] typed key, or [2] uint32
    """
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise TypeError(f"key: expected a single key of shape (), got shape {key.shape}")
        return key
    if dtype is not None and dtype == jnp.uint32 and tuple(key.shape) == (2,):
        return key
    shape = getattr(key, "shape", None)
    raise TypeError(
        "key: expected a JAX PRNG key (jax.random.key(seed)), "
        f"got {type(key).__name__} with dtype {dtype} and shape {shape}"
    )


def validate_batch_size(batch_size):
    """Check that ``batch_size`` is a positive Python/NumPy int and return it as ``int``.

    It fixes array shapes, so it must be static under ``jit`` (``static_argnums``).

    Shapes:
        batch_size: scalar int >= 1
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(
            f"batch_size: expected a static positive int, got {type(batch_size).__name__} "
            f"({batch_size!r}); under jit pass it with static_argnums"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size}")
    return int(batch_size)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")


def _check_outputs(outputs, expected_shape, arg="outputs"):
    shape = tuple(jnp.shape(outputs))
    if shape != tuple(expected_shape):
        raise ValueError(f"{arg}: expected shape {tuple(expected_shape)}, got {shape}")


def _uniform_int(u, lo, hi):
    """Map u ~ U[0, 1) to an integer uniform on [lo, hi): lo + ⌊u · (hi - lo)⌋.

    With float32 u (a multiple of 2^-23 or finer) each integer's probability is off by at most
    (hi - lo) · 2^-23 relative — far below any sampling error here. Needs hi > lo.
    """
    span = hi - lo
    offset = jnp.floor(u * span).astype(jnp.int32)
    return lo + jnp.minimum(offset, span - 1)


_ADDING_VARIANTS = ("sum", "mean", "hochreiter")


@dataclass(frozen=True)
class Adding:
    """The adding problem: output a function of two marked values of a long random sequence.

    Each step has two channels, ``x_t = (v_t, m_t)``: channel 0 a random value, channel 1 a
    marker. Exactly two positions p1 != p2 carry marker 1; the target, read at the last real
    step, depends on their values a = v_{p1}, b = v_{p2}. Steps are indexed from 0; ⌊·⌋ is floor.

    ``variant="sum"`` (Le, Jaitly & Hinton 2015, "A Simple Way to Initialize Recurrent Networks
    of Rectified Linear Units"): v_t ~ U[0, 1], m_t in {0, 1}; p1 uniform in [0, ⌊L/2⌋),
    p2 uniform in [⌊L/2⌋, L) (one marker in each half); target y = a + b.
    Baseline: the constant prediction 1 = E[y] has MSE Var(a + b) = 2 · 1/12 = 1/6 ≈ 0.1667
    (Le et al. quote 0.1767 for this predictor).

    ``variant="mean"`` (Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent
    neural networks", following their released generator): v_t ~ U[0, 1]; p1 uniform in
    [0, ⌊L/10⌋), p2 uniform in [⌊L/10⌋, ⌊L/10⌋ + ⌊4L/10⌋); target y = (a + b)/2.
    Baseline: the constant 1/2 = E[y] has MSE Var(y) = (1/12 + 1/12)/4 = 1/24 ≈ 0.04167.
    Needs L >= 10.

    ``variant="hochreiter"`` (Hochreiter & Schmidhuber 1997, "Long Short-Term Memory", Sec. 5.4,
    experiment 4): v_t ~ U[-1, 1]; m_t is 1 at the two marked steps, -1 at the first step (0) and
    at the last real step L-1 unless marked, 0 elsewhere. With T_min the minimal length and
    n = ⌊T_min/2⌋ - 1: p1 uniform in [0, 10); p2 uniform among the n - 1 still unmarked
    positions of [0, n). If step 0 is marked its value is set to 0 (the paper's rule for a marked
    first pair). Target y = 1/2 + (X1 + X2)/4 with X1 = v_{p1}, X2 = v_{p2}. Needs T_min >= 24
    (so that [0, 10) lies inside [0, n)).
    Baseline, derived: the constant 1/2 = E[y] has MSE Var(y) = (E[X1²] + E[X2²])/16, as X1, X2
    have mean 0 and are independent given the positions. A value is U[-1, 1] (second moment 1/3)
    unless it sits at step 0, where it is 0: P(p1 = 0) = q1 = 1/10 and
    P(p2 = 0) = q2 = (9/10)/(n - 1). Hence
    ``baseline = ((1 - q1) + (1 - q2))/48 = (2 - q1 - q2)/48``; for T_min = 100 (n = 49) this
    is 0.0391927 (1/24 = 0.0417 without the step-0 rule). The paper calls a sequence solved when
    |error| < 0.04 — reported as the metric ``"success"`` for every variant.

    All of a sequence's randomness comes from one ``jax.random.uniform`` block; integer draws
    (length, positions) are ⌊u · span⌋ of a uniform u, uniform up to a relative 2^-23 · span.

    Lengths: with ``min_len=None`` every sequence has L = T = ``seq_len`` real steps. With
    ``min_len`` set, each sequence draws its length L uniformly from [min_len, seq_len] and is
    right-padded with zeros to ``seq_len`` (``mask`` marks the real steps; the model must read
    out at the last real step). Hochreiter & Schmidhuber used L in [T, T + T/10]:
    ``Adding(seq_len=110, variant="hochreiter", min_len=100)``. For "sum" and "mean" the marker
    windows scale with each sequence's own L; for "hochreiter" they depend on T_min
    (``min_len``, or ``seq_len`` when it is None), as in the paper.

    Shapes:
        sample(key, B): xs [B, T, 2] float32, ys [B, 1] float32, mask [B, T] bool
        loss / metrics: outputs [B, 1] float (the readout at each sequence's last real step)
    """

    seq_len: int = 100
    variant: str = "sum"
    min_len: int | None = None

    input_size: ClassVar[int] = 2
    output_size: ClassVar[int] = 1
    readout: ClassVar[str] = "last"
    kind: ClassVar[str] = "regression"
    token_inputs: ClassVar[bool] = False
    success_tolerance: ClassVar[float] = 0.04

    def __post_init__(self):
        if self.variant not in _ADDING_VARIANTS:
            raise ValueError(f"variant: expected one of {_ADDING_VARIANTS}, got {self.variant!r}")
        _check_int("seq_len", self.seq_len, 2)
        if self.min_len is not None:
            _check_int("min_len", self.min_len, 2)
            if self.min_len > self.seq_len:
                raise ValueError(
                    f"min_len: expected at most seq_len={self.seq_len}, got {self.min_len}"
                )
        shortest = self.seq_len if self.min_len is None else self.min_len
        needed = {"sum": 2, "mean": 10, "hochreiter": 24}[self.variant]
        if shortest < needed:
            arg = "seq_len" if self.min_len is None else "min_len"
            raise ValueError(
                f"{arg}: variant {self.variant!r} needs sequences of at least {needed} steps, "
                f"got {shortest}"
            )

    @property
    def fixed_length(self) -> bool:
        """True when every sequence has all ``seq_len`` steps (the mask is all True)."""
        return self.min_len is None or self.min_len == self.seq_len

    @property
    def _t_min(self):
        return self.seq_len if self.min_len is None else self.min_len

    @property
    def baseline(self) -> float:
        """MSE of the best constant predictor, E[y] (derivations in the class docstring)."""
        if self.variant == "sum":
            return 1.0 / 6.0
        if self.variant == "mean":
            return 1.0 / 24.0
        n = self._t_min // 2 - 1
        q1, q2 = 0.1, 0.9 / (n - 1)
        return (2.0 - q1 - q2) / 48.0

    @property
    def baseline_prediction(self) -> float:
        """The constant prediction E[y] whose MSE is ``baseline``."""
        return {"sum": 1.0, "mean": 0.5, "hochreiter": 0.5}[self.variant]

    def sample(self, key, batch_size):
        """Draw a batch: ``{"xs": [B, T, 2] f32, "ys": [B, 1] f32, "mask": [B, T] bool}``."""
        key = validate_key(key)
        b, t = validate_batch_size(batch_size), self.seq_len
        # A single uniform draw feeds everything (one random kernel keeps compilation fast):
        # columns 0..T-1 are the values, T the length, T+1 and T+2 the two marker positions.
        u = jax.random.uniform(key, (b, t + 3), jnp.float32)
        if self.min_len is None:
            lengths = jnp.full((b,), t, jnp.int32)
        else:
            lengths = _uniform_int(u[:, t], self.min_len, t + 1)
        steps = jnp.arange(t, dtype=jnp.int32)[None, :]
        mask = steps < lengths[:, None]

        if self.variant == "sum":
            half = lengths // 2
            p1 = _uniform_int(u[:, t + 1], 0, half)
            p2 = _uniform_int(u[:, t + 2], half, lengths)
            values = u[:, :t]
        elif self.variant == "mean":
            tenth = lengths // 10
            p1 = _uniform_int(u[:, t + 1], 0, tenth)
            p2 = _uniform_int(u[:, t + 2], tenth, tenth + (4 * lengths) // 10)
            values = u[:, :t]
        else:
            n = self._t_min // 2 - 1
            p1 = _uniform_int(u[:, t + 1], 0, 10)
            r = _uniform_int(u[:, t + 2], 0, n - 1)
            p2 = r + (r >= p1).astype(jnp.int32)  # skip p1: uniform over the other n-1 slots
            values = 2.0 * u[:, :t] - 1.0

        marked = (steps == p1[:, None]) | (steps == p2[:, None])
        markers = marked.astype(jnp.float32)
        if self.variant == "hochreiter":
            ends = (steps == 0) | (steps == lengths[:, None] - 1)
            markers = jnp.where(ends & ~marked, -1.0, markers)
            values = jnp.where(marked & (steps == 0), 0.0, values)
        values = jnp.where(mask, values, 0.0)
        markers = jnp.where(mask, markers, 0.0)

        pair_sum = jnp.sum(jnp.where(marked, values, 0.0), axis=1)
        if self.variant == "sum":
            ys = pair_sum
        elif self.variant == "mean":
            ys = pair_sum / 2.0
        else:
            ys = 0.5 + pair_sum / 4.0
        xs = jnp.stack([values, markers], axis=-1)
        return {"xs": xs, "ys": ys[:, None], "mask": mask}

    def loss(self, outputs, batch):
        """Mean squared error of the last-step prediction. Shapes: outputs [B, 1] -> []."""
        _check_outputs(outputs, batch["ys"].shape)
        return losses.mse(outputs, batch["ys"])

    def metrics(self, outputs, batch):
        """``loss`` (MSE), ``normalized_loss`` (MSE / baseline) and ``success``.

        ``success`` is the fraction of sequences with |prediction - target| < 0.04, Hochreiter &
        Schmidhuber's criterion. Shapes: outputs [B, 1] -> dict of [] floats.
        """
        loss = self.loss(outputs, batch)
        err = jnp.abs(jnp.asarray(outputs, jnp.float32) - batch["ys"])[..., 0]
        return {
            "loss": loss,
            "normalized_loss": loss / self.baseline,
            "success": jnp.mean((err < self.success_tolerance).astype(jnp.float32)),
        }


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
        _check_int("delay", self.delay, 1)
        _check_int("num_symbols", self.num_symbols, 1)
        _check_int("copy_len", self.copy_len, 1)

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
        _check_outputs(outputs, batch["ys"].shape + (self.output_size,))
        return losses.softmax_cross_entropy(outputs, batch["ys"], batch["mask"])

    def metrics(self, outputs, batch):
        """``loss``, ``normalized_loss`` (loss / baseline), ``accuracy`` over all steps and
        ``copy_accuracy`` over the last C steps (the symbols to recall).

        Shapes: outputs [B, T, K+2] -> dict of [] floats.
        """
        _check_outputs(outputs, batch["ys"].shape + (self.output_size,))
        out = losses.classification_metrics(outputs, batch["ys"], batch["mask"])
        c = self.copy_len
        out["copy_accuracy"] = losses.accuracy(outputs[..., -c:, :], batch["ys"][..., -c:])
        out["normalized_loss"] = out["loss"] / self.baseline
        return out


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
        _check_int("seq_len", self.seq_len, 10)

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
        _check_outputs(outputs, batch["ys"].shape + (self.output_size,))
        return losses.softmax_cross_entropy(outputs, batch["ys"])

    def metrics(self, outputs, batch):
        """``loss``, ``accuracy`` and ``error`` (fraction misclassified) of the order class.

        Shapes: outputs [B, 2^num_bits] -> dict of [] floats.
        """
        _check_outputs(outputs, batch["ys"].shape + (self.output_size,))
        return losses.classification_metrics(outputs, batch["ys"])
