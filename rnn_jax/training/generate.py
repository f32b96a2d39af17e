"""Sampling text (token ids) from a trained token model, one step at a time.

The prompt p_1..p_P is read in one pass, which gives the carries and the logits z_P of the next
token; then for i = 1..n (Graves 2013, "Generating Sequences With Recurrent Neural Networks";
Karpathy, Johnson & Fei-Fei 2015 for temperature on characters)::

    y_i ~ Categorical(softmax(z_{i-1} / tau))     tau > 0   (jax.random.categorical)
    y_i = argmax z_{i-1}                          tau = 0   (greedy, handled explicitly)
    z_i, carries = model(y_i; carries)

inside one ``lax.scan``, with key ``split(key, n)[i]`` for step i. Lower tau sharpens the
distribution towards the greedy choice; tau = 1 samples the model's own distribution.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


def _check(model, prompt_ids, length, temperature):
    if not getattr(model, "token_inputs", False) or getattr(model, "readout", None) != "all":
        raise ValueError("model must be a token model (vocab_size set) with readout='all', got "
                         f"{model!r}")
    if getattr(model, "bidirectional", False):
        raise ValueError("model is bidirectional: it cannot generate left to right")
    prompt = np.asarray(prompt_ids)
    if prompt.ndim not in (1, 2) or prompt.shape[-1] < 1:
        raise ValueError(f"prompt_ids must be token ids [P] or [B, P] with P >= 1, got shape "
                         f"{prompt.shape}")
    if not np.issubdtype(prompt.dtype, np.integer):
        raise TypeError(f"prompt_ids must be integer token ids, got dtype {prompt.dtype}")
    if prompt.min() < 0 or prompt.max() >= model.vocab_size:
        raise ValueError(f"prompt_ids must lie in [0, {model.vocab_size}), got range "
                         f"[{prompt.min()}, {prompt.max()}]")
    if isinstance(length, bool) or not isinstance(length, int | np.integer) or length < 0:
        raise ValueError(f"length must be an int >= 0, got {length!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float | np.floating) \
            or not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite float >= 0, got {temperature!r}")
    return prompt.astype(np.int32)


@functools.partial(jax.jit, static_argnames=("model", "length", "temperature"))
def _generate(key, params, prompt, *, model, length, temperature):
    logits, carries = model.apply(params, prompt, return_carries=True)

    def body(state, k):
        last, carries = state
        if temperature == 0.0:
            token = jnp.argmax(last, axis=-1).astype(jnp.int32)
        else:
            token = jax.random.categorical(k, last / temperature, axis=-1).astype(jnp.int32)
        logits, carries = model.apply(params, token[:, None], carries=carries,
                                      return_carries=True)
        return (logits[:, -1], carries), token

    _, tokens = jax.lax.scan(body, (logits[:, -1], carries), jax.random.split(key, length))
    return tokens.T


def generate(key, model, params, prompt_ids, length: int, *, temperature: float = 1.0):
    """``length`` token ids continuing ``prompt_ids`` (the prompt itself is not repeated).

    ``temperature=0`` picks the most likely token at every step (no randomness; ``key`` unused).
    Shapes: prompt_ids [P] -> [length] int32;  [B, P] -> [B, length] int32.
    """
    prompt = _check(model, prompt_ids, length, temperature)
    batched = prompt.ndim == 2
    out = _generate(key, params, jnp.asarray(prompt if batched else prompt[None]), model=model,
                    length=int(length), temperature=float(temperature))
    return out if batched else out[0]


def generate_text(key, model, params, task, prompt: str, length: int, *,
                  temperature: float = 1.0) -> str:
    """Characters continuing ``prompt``, through the task's ``encode``/``decode`` (e.g. CharLM)."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    ids = task.encode(prompt)
    return task.decode(generate(key, model, params, ids, length, temperature=temperature))
