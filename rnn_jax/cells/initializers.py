"""Weight initialisers for recurrent networks, chosen by name on a cell.

Every initialiser has the signature ``init(key, shape, dtype, *, fan_hidden) -> array``.
``fan_hidden`` is the cell's hidden size H; only ``"torch"`` uses it. Gated cells call an
initialiser once per gate block (an ``[I, H]`` or ``[H, H]`` slice), so "orthogonal" means
each gate's recurrent block is orthogonal.

Names:

    "orthogonal"      Q from the QR decomposition of a Gaussian matrix, sign-corrected so
                      Q is Haar-distributed (Saxe, McClelland, Ganguli 2014).
    "glorot_uniform"  U(-a, a), a = sqrt(6 / (fan_in + fan_out))  (Glorot & Bengio 2010).
    "identity"        the identity matrix (IRNN, Le, Jaitly, Hinton 2015); non-square
                      shapes get ones on the main diagonal.
    "small_normal"    N(0, 0.001^2), the IRNN paper's input weights.
    "normal"          N(0, 1/fan_in)  (LeCun normal).
    "he_normal"       N(0, 2/fan_in)  (He et al. 2015; expRNN's input weights).
    "glorot_normal"   N(0, 2 / (fan_in + fan_out))  (Glorot & Bengio 2010).
    "torch"           U(-1/sqrt(H), 1/sqrt(H)), PyTorch's nn.RNN/LSTM/GRU default.
    "zeros"           zeros (biases).

A matrix can afterwards be rescaled to an exact spectral radius or largest singular
value with :func:`scale_spectral_radius` / :func:`scale_singular_value`, the knob of the
vanishing/exploding-gradient experiments (Pascanu, Mikolov, Bengio 2013).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def orthogonal(key, shape, dtype=jnp.float32, *, fan_hidden=None):
    """Haar-random (semi-)orthogonal matrix: QR of a Gaussian, columns' signs fixed by diag(R).

    Shapes: shape = (n, m); Q^T Q = I when n >= m, Q Q^T = I otherwise.
    """
    del fan_hidden
    n, m = shape
    a = jax.random.normal(key, (max(n, m), min(n, m)), jnp.float32)
    q, r = jnp.linalg.qr(a)
    q = q * jnp.sign(jnp.diagonal(r))[None, :]
    q = q if n >= m else q.T
    return q.astype(dtype)


def glorot_uniform(key, shape, dtype=jnp.float32, *, fan_hidden=None):
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    del fan_hidden
    fan_in, fan_out = shape[0], shape[-1]
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, jnp.float32, -a, a).astype(dtype)


def identity(key, shape, dtype=jnp.float32, *, fan_hidden=None):
    """The identity (ones on the main diagonal): IRNN's recurrent matrix (Le et al. 2015)."""
    del key, fan_hidden
    return jnp.eye(shape[0], shape[-1], dtype=dtype)


def small_normal(key, shape, dtype=jnp.float32, *, fan_hidden=None):
    """N(0, 0.001^2): the IRNN paper's input-to-hidden initialisation."""
    del fan_hidden
    return (1e-3 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def normal(key, shape, dtype=jnp.float32, *, fan_hidden=None):
    """N(0, 1/fan_in) (LeCun normal); for shape (fan_in, ...)."""
    del fan_hidden
    return (jax.random.normal(key, shape, jnp.float32) / math.sqrt(shape[0])).astype(dtype)


def he_normal(key, shape, dtype=jnp.float32, *, fan_hidden=None):
    """N(0, 2/fan_in) (He et al. 2015, for ReLU-like units); for shape (fan_in, ...)."""
    del fan_hidden
    return (jax.random.normal(key, shape, jnp.float32) * math.sqrt(2.0 / shape[0])).astype(dtype)


def glorot_normal(key, shape, dtype=jnp.float32, *, fan_hidden=None):
    """N(0, 2 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    del fan_hidden
    std = math.sqrt(2.0 / (shape[0] + shape[-1]))
    return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def torch_uniform(key, shape, dtype=jnp.float32, *, fan_hidden):
    """U(-k, k), k = 1/sqrt(H): PyTorch's default for every RNN weight and bias."""
    k = 1.0 / math.sqrt(fan_hidden)
    return jax.random.uniform(key, shape, jnp.float32, -k, k).astype(dtype)


def zeros(key, shape, dtype=jnp.float32, *, fan_hidden=None):
    """All zeros."""
    del key, fan_hidden
    return jnp.zeros(shape, dtype)


INITIALIZERS: dict[str, Initializer] = {
    "orthogonal": orthogonal,
    "glorot_uniform": glorot_uniform,
    "identity": identity,
    "small_normal": small_normal,
    "normal": normal,
    "he_normal": he_normal,
    "glorot_normal": glorot_normal,
    "torch": torch_uniform,
    "zeros": zeros,
}


def get_initializer(name: str, *, argument: str = "init") -> Initializer:
    """Looks an initialiser up by name; unknown names raise a ValueError listing the choices."""
    if not isinstance(name, str) or name not in INITIALIZERS:
        raise ValueError(
            f"{argument}={name!r} is not a known initialiser; expected one of "
            f"{sorted(INITIALIZERS)}"
        )
    return INITIALIZERS[name]


def spectral_radius(matrix: jax.Array) -> jax.Array:
    """rho(U) = max |lambda_i(U)| for a square matrix (eigenvalues computed in float32 on host)."""
    return jnp.max(jnp.abs(jnp.linalg.eigvals(matrix.astype(jnp.float32))))


def largest_singular_value(matrix: jax.Array) -> jax.Array:
    """sigma_max(U), the operator 2-norm."""
    return jnp.linalg.norm(matrix.astype(jnp.float32), ord=2)


def scale_spectral_radius(matrix: jax.Array, radius: float) -> jax.Array:
    """U * radius / rho(U): the same eigenvectors with spectral radius exactly ``radius``."""
    return (matrix * (radius / spectral_radius(matrix))).astype(matrix.dtype)


def scale_singular_value(matrix: jax.Array, sigma: float) -> jax.Array:
    """U * sigma / sigma_max(U): largest singular value exactly ``sigma``."""
    return (matrix * (sigma / largest_singular_value(matrix))).astype(matrix.dtype)
