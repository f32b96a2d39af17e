"""Cells that discretise an ODE with well-behaved gradients: AntisymmetricRNN, coRNN and the
Lipschitz RNN.

Each is one Euler-type step of a continuous-time system whose linearisation neither blows up nor
decays fast: an antisymmetric recurrent matrix (purely imaginary eigenvalues), coupled damped
oscillators, or a matrix with a controlled symmetric part.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from rnn_jax.cells import initializers as inits
from rnn_jax.cells.base import InputCell, check_key, check_size


def _positive(name, value):
    if not (isinstance(value, int | float) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _nonnegative(name, value):
    if not (isinstance(value, int | float) and not isinstance(value, bool) and value >= 0):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def _gaussian(key, h, std):
    return std * jax.random.normal(key, (h, h), jnp.float32)


@dataclasses.dataclass(frozen=True)
class AntisymmetricRNN(InputCell):
    """AntisymmetricRNN (Chang, Chen, Haber, Chi, ICLR 2019): forward Euler on h' = tanh(A h + ...).

        A = M - M^T - gamma I                    (M - M^T has purely imaginary eigenvalues)
        h_t = h_{t-1} + eps * tanh(h_{t-1} A + x_t W_h + b_h)
        gated:  z_t = sigma(h_{t-1} A + x_t W_z + b_z)
                h_t = h_{t-1} + eps * z_t * tanh(h_{t-1} A + x_t W_h + b_h)

    The diffusion gamma > 0 moves the eigenvalues of A to real part -gamma, which the paper needs
    for the forward Euler step to be stable. Params: ``{"W": [I, G*H], "b": [G*H], "M": [H, H]}``,
    gate order h, z (G = 2 when ``gated``); M ~ N(0, init_std^2 / H). Carry ``h: [*batch, H]``.
    """

    eps: float = 0.01
    gamma: float = 0.01
    gated: bool = False
    init_std: float = 1.0
    input_init: str = "glorot_uniform"

    def __post_init__(self):
        super().__post_init__()
        _positive("eps", self.eps)
        _nonnegative("gamma", self.gamma)
        _positive("init_std", self.init_std)
        inits.get_initializer(self.input_init, argument="input_init")

    @property
    def num_gates(self):
        return 2 if self.gated else 1

    def init(self, key, input_size: int) -> dict:
        check_key(key)
        input_size = check_size("input_size", input_size)
        k_w, k_m = jax.random.split(key)
        params = self._input_params(k_w, input_size, self.input_init, self.num_gates)
        params["M"] = _gaussian(k_m, self.hidden_size, self.init_std / math.sqrt(self.hidden_size))
        return self._cast(params)

    def prepare(self, params):
        """Adds ``"A": M - M^T - gamma I`` (a no-op when A is already there)."""
        if "A" in params:
            return params
        m = params["M"]
        return {**params, "A": m - m.T - self.gamma * jnp.eye(m.shape[0], dtype=m.dtype)}

    def recurrent_matrices(self, params):
        """A, ``[1, H, H]`` (shared by the update and the gate)."""
        return self.prepare(params)["A"][None]

    def recur(self, params, carry, u):
        ha = self._mm(carry, self.prepare(params)["A"])
        if self.gated:
            u_h, u_z = jnp.split(u, 2, axis=-1)
            step = jax.nn.sigmoid(ha + u_z) * jnp.tanh(ha + u_h)
        else:
            step = jnp.tanh(ha + u)
        h = carry + self.eps * step
        return h, h


@dataclasses.dataclass(frozen=True)
class CoRNN(InputCell):
    """Coupled oscillatory RNN (Rusch & Mishra, ICLR 2021): y'' = tanh(W y + Wz y' + V u + b)
    - gamma y - epsilon y', discretised IMEX.

        z_t = z_{t-1} + dt (tanh(y_{t-1} W_y + z_{t-1} W_z + x_t V + b) - gamma y_{t-1}
                            - epsilon z_{t-1})
        y_t = y_{t-1} + dt z_t

    (the authors' code). ``implicit_damping=True`` takes the damping at the new time,
    ``- epsilon z_t``, i.e. z_t = (z_{t-1} + dt (tanh(...) - gamma y_{t-1})) / (1 + dt epsilon).
    The hidden states stay bounded on any finite horizon (the paper's Prop. 3.1). The energy
    argument behind it, redone for these two schemes (|tanh| <= 1 per unit), gives for
    E = gamma |y|^2 + |z|^2: E_n <= E_0 + n H dt / (epsilon - gamma dt) with explicit damping
    (dt epsilon <= 1, gamma dt < epsilon), E_n <= E_0 + n H dt / (2 epsilon - gamma dt) with
    implicit damping (gamma dt < 2 epsilon); ``energy_bound`` returns it.

    Params: ``{"W": [I, H] (the paper's V), "b": [H], "W_y": [H, H], "W_z": [H, H]}``, every
    weight and bias ~ U(+-1/sqrt(I + 2H)) as the authors' single nn.Linear(I + 2H, H).
    Carry ``(y, z)``; the hidden state (output, probes) is y. Defaults are the authors'
    sequential-MNIST values; their adding problem uses dt=0.06, gamma=66, epsilon=15.
    """

    dt: float = 0.042
    gamma: float = 2.7
    epsilon: float = 4.7
    implicit_damping: bool = False

    def __post_init__(self):
        super().__post_init__()
        for name in ("dt", "gamma", "epsilon"):
            _positive(name, getattr(self, name))

    def energy_bound(self, num_steps, energy0=0.0):
        """The bound on gamma |y_n|^2 + |z_n|^2 after n steps (see the class docstring), or inf
        where its step-size condition fails."""
        if self.implicit_damping:
            rate = 2.0 * self.epsilon - self.gamma * self.dt
            ok = rate > 0
        else:
            rate = self.epsilon - self.gamma * self.dt
            ok = rate > 0 and self.dt * self.epsilon <= 1.0
        return energy0 + num_steps * self.hidden_size * self.dt / rate if ok else math.inf

    def init(self, key, input_size: int) -> dict:
        check_key(key)
        input_size = check_size("input_size", input_size)
        k_w, k_b, k_y, k_z = jax.random.split(key, 4)
        h = self.hidden_size
        a = 1.0 / math.sqrt(int(input_size) + 2 * h)
        params = self._input_params(k_w, input_size, "zeros")
        uni = lambda k, shape: jax.random.uniform(k, shape, jnp.float32, -a, a)  # noqa: E731
        params.update(W=uni(k_w, params["W"].shape), b=uni(k_b, (h,)), W_y=uni(k_y, (h, h)),
                      W_z=uni(k_z, (h, h)))
        return self._cast(params)

    def initial_carry(self, batch_shape=(), dtype=jnp.float32):
        """``(y, z)``, zeros ``[*batch_shape, H]`` each."""
        z = jnp.zeros((*tuple(batch_shape), self.hidden_size), dtype)
        return (z, z)

    def hidden(self, carry):
        return carry[0]

    def with_hidden(self, carry, h):
        return (h, carry[1])

    def recurrent_matrices(self, params):
        """W_y and W_z, ``[2, H, H]`` (the matrices that multiply y_{t-1} and z_{t-1})."""
        return jnp.stack([params["W_y"], params["W_z"]])

    def recur(self, params, carry, u):
        y, z = carry
        force = jnp.tanh(u + self._mm(y, params["W_y"]) + self._mm(z, params["W_z"]))
        if self.implicit_damping:
            z = (z + self.dt * (force - self.gamma * y)) / (1.0 + self.dt * self.epsilon)
        else:
            z = z + self.dt * (force - self.gamma * y - self.epsilon * z)
        y = y + self.dt * z
        return (y, z), y


@dataclasses.dataclass(frozen=True)
class LipschitzRNN(InputCell):
    """Lipschitz RNN (Erichson, Azencot, Queiruga, Hodgkinson, Mahoney, ICLR 2021), Euler step.

        A_beta = (1 - beta)(M_A + M_A^T) + beta (M_A - M_A^T) - gamma I     (W_beta from M_W)
        h_t = h_{t-1} + eps * (h_{t-1} A_beta + tanh(h_{t-1} W_beta + x_t W + b))

    beta trades the symmetric part (1 - beta)(M + M^T) - gamma I, which sets the growth rate,
    against the antisymmetric part; beta = 1 gives eigenvalues with real part exactly -gamma.
    Params: ``{"W": [I, H], "b": [H], "M_A": [H, H], "M_W": [H, H]}``, M ~ N(0, (init_std/H)^2)
    and W ~ Glorot normal, b = 0, as the authors' code; defaults from their MNIST command.
    Carry ``h: [*batch, H]``.
    """

    beta: float = 0.65
    gamma: float = 0.001
    eps: float = 0.01
    init_std: float = 32.0
    input_init: str = "glorot_normal"

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.beta, int | float) and 0.0 <= self.beta <= 1.0):
            raise ValueError(f"beta must lie in [0, 1], got {self.beta!r}")
        _nonnegative("gamma", self.gamma)
        _positive("eps", self.eps)
        _positive("init_std", self.init_std)
        inits.get_initializer(self.input_init, argument="input_init")

    def init(self, key, input_size: int) -> dict:
        check_key(key)
        input_size = check_size("input_size", input_size)
        k_w, k_a, k_c = jax.random.split(key, 3)
        h = self.hidden_size
        params = self._input_params(k_w, input_size, self.input_init)
        params["M_A"] = _gaussian(k_a, h, self.init_std / h)
        params["M_W"] = _gaussian(k_c, h, self.init_std / h)
        return self._cast(params)

    def _combine(self, m):
        eye = jnp.eye(m.shape[0], dtype=m.dtype)
        return (1.0 - self.beta) * (m + m.T) + self.beta * (m - m.T) - self.gamma * eye

    def prepare(self, params):
        """Adds ``"A_beta"`` and ``"W_beta"`` (a no-op when they are already there)."""
        if "A_beta" in params:
            return params
        return {**params, "A_beta": self._combine(params["M_A"]),
                "W_beta": self._combine(params["M_W"])}

    def recurrent_matrices(self, params):
        """A_beta and W_beta, ``[2, H, H]``."""
        p = self.prepare(params)
        return jnp.stack([p["A_beta"], p["W_beta"]])

    def recur(self, params, carry, u):
        p = self.prepare(params)
        drift = self._mm(carry, p["A_beta"]) + jnp.tanh(self._mm(carry, p["W_beta"]) + u)
        h = carry + self.eps * drift
        return h, h
