"""Gradient behaviour: dL/dh_t per step and its decay, the recurrent spectrum, the Pascanu bound,
clipping statistics (``gradients``); Jacobian products, their singular values and Lyapunov
exponents (``jacobians``). Every function is exported here: ``from rnn_jax import diagnostics``.
"""

from rnn_jax.diagnostics.gradients import (
    clipping_stats,
    grad_norms,
    gradient_horizon,
    hidden_grads,
    last_step_grad_norms,
    log_slope,
    pascanu_bound,
    recurrent_sigma_max,
    recurrent_spectral_radius,
    safe_norm,
)
from rnn_jax.diagnostics.jacobians import (
    jacobian_product,
    lyapunov_exponents,
    top_log_singular_values,
    top_singular_values,
)

__all__ = [
    "clipping_stats",
    "grad_norms",
    "gradient_horizon",
    "hidden_grads",
    "jacobian_product",
    "last_step_grad_norms",
    "log_slope",
    "lyapunov_exponents",
    "pascanu_bound",
    "recurrent_sigma_max",
    "recurrent_spectral_radius",
    "safe_norm",
    "top_log_singular_values",
    "top_singular_values",
]
