"""The adding problem, three published variants: a frozen dataclass sampled from a key."""

from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp

from .. import losses
from .protocol import check_int, check_outputs, uniform_int, validate_batch_size, validate_key

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
        check_int("seq_len", self.seq_len, 2)
        if self.min_len is not None:
            check_int("min_len", self.min_len, 2)
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
            lengths = uniform_int(u[:, t], self.min_len, t + 1)
        steps = jnp.arange(t, dtype=jnp.int32)[None, :]
        mask = steps < lengths[:, None]

        if self.variant == "sum":
            half = lengths // 2
            p1 = uniform_int(u[:, t + 1], 0, half)
            p2 = uniform_int(u[:, t + 2], half, lengths)
            values = u[:, :t]
        elif self.variant == "mean":
            tenth = lengths // 10
            p1 = uniform_int(u[:, t + 1], 0, tenth)
            p2 = uniform_int(u[:, t + 2], tenth, tenth + (4 * lengths) // 10)
            values = u[:, :t]
        else:
            n = self._t_min // 2 - 1
            p1 = uniform_int(u[:, t + 1], 0, 10)
            r = uniform_int(u[:, t + 2], 0, n - 1)
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
        check_outputs(outputs, batch["ys"].shape)
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
