"""Recurrent regularisers as cell wrappers: variational dropout and zoneout, from explicit keys.

A wrapper is a cell value around another cell. Its carry is ``{"cell": <the inner carry>, ...}``
plus what the randomness needs, so the runner (masks, reverse, probes, every carry, remat,
bidirectional) runs it unchanged: a masked step leaves the whole carry, noise state included,
unchanged, and probes go to the inner hidden state through ``with_hidden``.

    carry = wrapper.initial_carry_keyed(key, batch_shape)   # training: one draw per sequence
    carry = wrapper.initial_carry(batch_shape)              # evaluation: deterministic
    hs, _ = rj.rnn(wrapper, params, xs, carry)              # params are the inner cell's

``SequenceModel.apply(..., key=k, deterministic=False)`` draws these carries itself.
Deterministic means: variational dropout off (exactly the inner cell), zoneout replaced by its
expectation (the paper's test-time rule). With rate 0 both are exactly the inner cell.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from rnn_jax.cells.elman import Elman
from rnn_jax.cells.indrnn import IndRNN
from rnn_jax.cells.lstm import LSTM
from rnn_jax.cells.orthogonal import ExpRNN

# cells whose h_{t-1} enters the step only through recurrent products: dropping it there is
# Gal & Ghahramani's recurrent dropout (LSTM subclasses included: h only meets U)
_DROP_H_EXACT = (Elman, LSTM, IndRNN, ExpRNN)


def _check_rate(name, value):
    if not (isinstance(value, int | float) and not isinstance(value, bool)
            and 0.0 <= value < 1.0):
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")


@dataclasses.dataclass(frozen=True)
class _Wrapper:
    """What both wrappers share: the inner cell's parameters, input part and hidden state."""

    cell: Any

    stochastic = True  # its carry holds noise: the Jacobian diagnostics ask for the inner cell

    @property
    def hidden_size(self):
        return self.cell.hidden_size

    @property
    def num_gates(self):
        return self.cell.num_gates

    @property
    def compute_dtype(self):
        return getattr(self.cell, "compute_dtype", None)

    def init(self, key, input_size: int):
        """The inner cell's parameters."""
        return self.cell.init(key, input_size)

    def project(self, params, x):
        return self.cell.project(params, x)

    def prepare(self, params):
        prepare = getattr(self.cell, "prepare", None)
        return params if prepare is None else prepare(params)

    @property
    def recurrent_matrices(self):
        """The inner cell's (an AttributeError, as for the inner cell, when it has none)."""
        return self.cell.recurrent_matrices

    def hidden(self, carry):
        return self.cell.hidden(carry["cell"])

    def with_hidden(self, carry, h):
        return {**carry, "cell": self.cell.with_hidden(carry["cell"], h)}

    def step(self, params, carry, x):
        return self.recur(params, carry, self.project(params, x))


@dataclasses.dataclass(frozen=True)
class VariationalDropout(_Wrapper):
    """Recurrent dropout with one mask per sequence (Gal & Ghahramani 2016).

        m ~ Bernoulli(1 - rate)^H / (1 - rate),  drawn once per sequence, the same at every step
        carry_t = cell.recur(carry_{t-1} with h_{t-1} -> m * h_{t-1}, u_t)

    The mask multiplies h_{t-1} where the inner cell reads it, which for the cells allowed here
    (Elman/IRNN, the LSTMs, IndRNN, expRNN) is only inside the recurrent products: the "tied"
    variational LSTM of the paper. Cells whose h_{t-1} also carries the memory (GRU, MGU, the
    ODE cells, minGRU) are refused: dropping that state is not the paper's method (use
    :class:`Zoneout`). Input dropout with one mask per sequence is dropout on ``xs`` with the
    mask broadcast over T (:func:`sequence_dropout`). E[m] = 1. Carry ``{"cell", "mask": [*batch,
    H]}``; deterministic: m = 1.
    """

    rate: float = 0.0

    def __post_init__(self):
        _check_rate("rate", self.rate)
        if not isinstance(self.cell, _DROP_H_EXACT):
            raise ValueError(
                f"VariationalDropout drops h_(t-1) where the cell reads it, which is Gal & "
                f"Ghahramani's recurrent dropout only for {[c.__name__ for c in _DROP_H_EXACT]}"
                f"; got {type(self.cell).__name__}, whose h_(t-1) also carries its memory "
                "(use Zoneout)")

    def initial_carry(self, batch_shape=(), dtype=jnp.float32):
        """The inner zeros carry and the mask of ones (no dropout)."""
        mask = jnp.ones((*tuple(batch_shape), self.hidden_size), dtype)
        return {"cell": self.cell.initial_carry(batch_shape, dtype), "mask": mask}

    def rekey(self, key, carry):
        """``carry`` with fresh masks, one per sequence, drawn from ``key``."""
        mask = carry["mask"]
        keep = jax.random.bernoulli(key, 1.0 - self.rate, mask.shape)
        return {**carry, "mask": jnp.where(keep, 1.0 / (1.0 - self.rate), 0.0).astype(mask.dtype)}

    def initial_carry_keyed(self, key, batch_shape=(), dtype=jnp.float32):
        """Zeros and one random mask per sequence."""
        return self.rekey(key, self.initial_carry(batch_shape, dtype))

    def recur(self, params, carry, u):
        inner = carry["cell"]
        if self.rate > 0.0:
            inner = self.cell.with_hidden(inner, self.cell.hidden(inner) * carry["mask"])
        new, h = self.cell.recur(params, inner, u)
        return {**carry, "cell": new}, h


def _key_to_floats(keys):
    """Typed keys [*b] -> their uint32 words as 16-bit halves, float32 [*b, 2 words] (exact)."""
    data = jax.random.key_data(keys)
    return jnp.concatenate([data >> 16, data & 0xFFFF], axis=-1).astype(jnp.float32)


def _floats_to_key(f):
    words = jnp.round(jax.lax.stop_gradient(f)).astype(jnp.uint32)
    n = words.shape[-1] // 2
    return jax.random.wrap_key_data((words[..., :n] << 16) | words[..., n:])


@dataclasses.dataclass(frozen=True)
class Zoneout(_Wrapper):
    """Zoneout (Krueger et al., ICLR 2017): each unit keeps its previous value at random.

        carry~_t = cell.recur(carry_{t-1}, u_t)
        d_t ~ Bernoulli(rate)  per unit, per step, per sequence (fresh at every real step)
        h_t = d_t * h_{t-1} + (1 - d_t) * h~_t            (rate_h; the emitted output)
        c_t = d^c_t * c_{t-1} + (1 - d^c_t) * c~_t        (rate_c: every other carry leaf,
                                                           e.g. the LSTM's c, coRNN's z)

    Deterministic (no key drawn), d_t is replaced by its expectation rate: h_t = rate h_{t-1}
    + (1 - rate) h~_t, the paper's test-time rule. The noise comes from a key per sequence that
    the carry holds (as exact float32 16-bit halves, since the runner keeps carries floating)
    and splits at every real step, so masked steps draw nothing and a padded batch equals each
    sequence alone. Carry ``{"cell", "key": [*batch, 2 W], "random": [*batch, 1]}``.
    """

    rate_h: float = 0.0
    rate_c: float = 0.0

    def __post_init__(self):
        _check_rate("rate_h", self.rate_h)
        _check_rate("rate_c", self.rate_c)
        leaves = jax.tree.leaves(jax.eval_shape(lambda: self.cell.initial_carry(())))
        if self.rate_c > 0.0 and len(leaves) < 2:
            raise ValueError(f"rate_c={self.rate_c} needs a carry with state besides h; "
                             f"{type(self.cell).__name__}'s carry is h alone (use rate_h)")

    def initial_carry(self, batch_shape=(), dtype=jnp.float32):
        """The inner zeros carry, no key (deterministic: the expectation)."""
        words = jax.random.key_data(jax.random.key(0)).shape[-1]
        batch_shape = tuple(batch_shape)
        return {"cell": self.cell.initial_carry(batch_shape, dtype),
                "key": jnp.zeros((*batch_shape, 2 * words), dtype),
                "random": jnp.zeros((*batch_shape, 1), dtype)}

    def rekey(self, key, carry):
        """``carry`` with a fresh key per sequence, split from ``key``: random from now on."""
        batch_shape = carry["random"].shape[:-1]
        keys = jax.random.split(key, math.prod(batch_shape)).reshape(batch_shape)
        dtype = carry["key"].dtype
        return {**carry, "key": _key_to_floats(keys).astype(dtype),
                "random": jnp.ones_like(carry["random"])}

    def initial_carry_keyed(self, key, batch_shape=(), dtype=jnp.float32):
        """Zeros and one key per sequence."""
        return self.rekey(key, self.initial_carry(batch_shape, dtype))

    def _draws(self, key_floats, shapes):
        """Next keys and one U(0, 1) array per shape, per sequence."""
        batch_shape = key_floats.shape[:-1]
        keys = _floats_to_key(key_floats).reshape(-1)

        def one(k):
            ks = jax.random.split(k, 1 + len(shapes))
            return ks[0], [jax.random.uniform(kk, s) for kk, s in zip(ks[1:], shapes,
                                                                       strict=True)]

        nxt, us = jax.vmap(one)(keys)
        us = [x.reshape(batch_shape + x.shape[1:]) for x in us]
        return _key_to_floats(nxt.reshape(batch_shape)), us

    def recur(self, params, carry, u):
        old = carry["cell"]
        new, _ = self.cell.recur(params, old, u)
        nb = carry["random"].ndim - 1
        leaves, tree = jax.tree.flatten(new)
        h_new = self.cell.hidden(new)
        shapes = [x.shape[nb:] for x in leaves] + [h_new.shape[nb:]]
        next_key, draws = self._draws(carry["key"], shapes)
        random = carry["random"] > 0.5

        def mix(rate, draw, o, n):
            r = random.reshape(random.shape[:nb] + (1,) * (n.ndim - nb))
            d = jnp.where(r, (draw < rate).astype(n.dtype), jnp.asarray(rate, n.dtype))
            return d * o + (1.0 - d) * n

        if self.rate_c > 0.0:
            olds = jax.tree.leaves(old)
            new = tree.unflatten([mix(self.rate_c, d, o, n)
                                  for d, o, n in zip(draws[:-1], olds, leaves, strict=True)])
        h = h_new
        if self.rate_h > 0.0:
            h = mix(self.rate_h, draws[-1], self.cell.hidden(old), h_new)
        new = self.cell.with_hidden(new, h)
        key = jnp.where(random, next_key.astype(carry["key"].dtype), carry["key"])
        return {**carry, "cell": new, "key": key}, h


def sequence_dropout(key, xs, rate: float):
    """Dropout on ``xs: [*batch, T, F]`` with one mask per sequence, the same at every step
    (Gal & Ghahramani's input dropout): xs * m[..., None, :], m ~ Bernoulli(1 - rate) / (1 -
    rate)."""
    _check_rate("rate", rate)
    if rate == 0.0:
        return xs
    keep = jax.random.bernoulli(key, 1.0 - rate, (*xs.shape[:-2], 1, xs.shape[-1]))
    return jnp.where(keep, xs / (1.0 - rate), jnp.zeros_like(xs))
