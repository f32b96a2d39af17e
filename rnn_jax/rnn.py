"""The runner: the project's only ``lax.scan`` over time.

``rnn`` unrolls any cell over a sequence; ``bidirectional`` runs two cells in opposite
directions. The input projection ``x_t W + b`` of all steps is computed in one matrix product
before the loop (hoisted), so the scan body only does the recurrent update.

Masking rule (one rule for left, right and interior padding): on a step whose mask is False
the carry is left unchanged and the output is zero. Hence the final carry is the carry after
the last real step, or the initial carry when there is none, and a padded batch gives, on its
real steps, exactly what each sequence gives alone. ``reverse=True`` visits the positions from
last to first under the same rule, so it reads each sequence's real steps in reverse, while
``hs[..., t, :]`` stays the output for input position t.

Probes (for gradient diagnostics): ``probes[..., t, :]`` is added to the hidden state right after
step t, before it is emitted and carried on. Because the map is the identity at zero probes,
``jax.grad`` of a loss with respect to zero probes is the total derivative dL/dh_t through all
later steps (BPTT's adjoint; Pascanu, Mikolov, Bengio 2013 use its norms to show vanishing).
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import fused, pallas_rnn

MERGES = ("concat", "sum", "mean")
METHODS = ("auto", "scan", "fused", "pallas", "deer", "quasi_deer")
# Largest hidden size for which the fused Pallas kernels keep U on chip (issue: H <= 256).
PALLAS_MAX_HIDDEN = 256


# -- validation (before anything is traced) ----------------------------------------------
def _shape_of(x):
    return tuple(np.shape(x))


def _check_xs(cell, params, xs, time_major):
    if not hasattr(xs, "shape") or not hasattr(xs, "dtype"):
        raise TypeError(f"xs must be an array, got {type(xs).__name__}")
    if xs.ndim < 2:
        layout = "[T, *batch, I]" if time_major else "[*batch, T, I]"
        raise ValueError(f"xs must have rank >= 2 ({layout}), got shape {_shape_of(xs)}")
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"xs must be floating point, got dtype {xs.dtype}")
    w = params.get("W") if isinstance(params, dict) else None
    if w is not None and xs.shape[-1] != w.shape[0]:
        raise ValueError(
            f"xs has {xs.shape[-1]} input features (shape {_shape_of(xs)}), but the cell's "
            f"params expect input_size={w.shape[0]} (W has shape {_shape_of(w)})"
        )


def _is_concrete(x):
    try:
        np.asarray(x)
        return True
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return False


def _mask_from(lengths, mask, batch_shape, num_steps):
    """[*batch, T] bool of real steps, or None when every step is real."""
    if lengths is not None and mask is not None:
        raise ValueError("pass either lengths or mask, not both")
    if lengths is not None:
        if _shape_of(lengths) != batch_shape:
            raise ValueError(
                f"lengths must have the batch shape {batch_shape}, got shape {_shape_of(lengths)}"
            )
        if not jnp.issubdtype(jnp.asarray(lengths).dtype, jnp.integer):
            raise TypeError(f"lengths must be integers, got dtype {jnp.asarray(lengths).dtype}")
        if _is_concrete(lengths):
            arr = np.asarray(lengths)
            if arr.size and (arr.min() < 0 or arr.max() > num_steps):
                raise ValueError(
                    f"lengths must lie in [0, T={num_steps}], got min {arr.min()} max {arr.max()}"
                )
        steps = jnp.arange(num_steps).reshape((1,) * len(batch_shape) + (num_steps,))
        return steps < jnp.asarray(lengths)[..., None]
    if mask is not None:
        if _shape_of(mask) != (*batch_shape, num_steps):
            raise ValueError(
                f"mask must have shape [*batch, T] = {(*batch_shape, num_steps)}, "
                f"got {_shape_of(mask)}"
            )
        if jnp.asarray(mask).dtype != jnp.bool_:
            raise TypeError(f"mask must be bool, got dtype {jnp.asarray(mask).dtype}")
        return jnp.asarray(mask)
    return None


def _check_carry(cell, carry, batch_shape, dtype):
    expected = jax.eval_shape(lambda: cell.initial_carry(batch_shape, dtype))
    got = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), carry)
    e_struct, g_struct = jax.tree.structure(expected), jax.tree.structure(got)
    shapes_e = [x.shape for x in jax.tree.leaves(expected)]
    shapes_g = [x.shape for x in jax.tree.leaves(got)]
    if e_struct != g_struct or shapes_e != shapes_g:
        raise ValueError(
            f"carry does not match the cell's carry for batch shape {batch_shape}: expected "
            f"shapes {shapes_e} ({e_struct}), got {shapes_g} ({g_struct})"
        )


def _check_unroll(unroll):
    if isinstance(unroll, bool):
        return unroll
    try:
        n = operator.index(unroll)
    except TypeError:
        raise TypeError(f"unroll must be a positive int, got {unroll!r}") from None
    if n < 1:
        raise ValueError(f"unroll must be a positive int, got {n}")
    return n


def _select(method, cell, params, *, probes, return_carries, remat) -> str:
    """The time loop for ``method``: "pallas", "fused" or "scan" (see ``rnn``'s docstring).

    "auto" takes the fused Pallas kernels on a GPU when they support the cell and options and
    H <= PALLAS_MAX_HIDDEN, else the fused-JVP scan where it applies, else the plain scan.
    """
    if method == "pallas":
        if not pallas_rnn.supported(cell, probes=probes) or remat:
            raise ValueError(f"method='pallas' does not support {type(cell).__name__} with "
                             "these options (probes, remat, compute_dtype); use 'auto' or 'scan'")
        return "pallas"
    if (method == "auto" and jax.default_backend() == "gpu" and not remat
            and pallas_rnn.supported(cell, probes=probes)
            and cell.hidden_size <= PALLAS_MAX_HIDDEN):
        return "pallas"
    return fused.select(method, cell, params, probes=probes, return_carries=return_carries,
                        remat=remat)


# -- the runner ------------------------------------------------------------------------------
def rnn(cell, params, xs, carry=None, *, lengths=None, mask=None, reverse=False,
        time_major=False, unroll=1, probes=None, return_carries=False, remat=False,
        method="auto"):
    """Runs ``cell`` over the time axis of ``xs`` (BPTT when differentiated).

        u_t = x_t W + b                        (all t at once, before the loop)
        carry_t, h_t = cell.recur(carry_{t-1}, u_t) if mask_t else (carry_{t-1}, 0)
        h_t <- h_t + probe_t                   (if probes; also in carry_t)

    Args:
      cell: a cell value (``rj.Elman``, ``rj.LSTM``, ``rj.GRU``, ...).
      params: the cell's parameters.
      xs: inputs, ``[*batch, T, I]`` (``[T, *batch, I]`` if ``time_major``).
      carry: initial carry, default ``cell.initial_carry(batch)`` (zeros).
      lengths: ``[*batch]`` ints, steps ``t < length`` are real. Exclusive with ``mask``.
      mask: ``[*batch, T]`` bools, True marks a real step.
      reverse: visit positions from last to first; outputs stay aligned with input positions.
      time_major: layout of ``xs``, ``hs``, ``probes`` and ``carries``.
      unroll: scan unroll factor (speed only, never results).
      probes: ``[*batch, T, H]`` additive perturbation of the hidden state (see module doc),
        used in the carry's dtype (its gradient comes back in the probes' own dtype).
      return_carries: also return the carry after every step.
      remat: recompute each step in the backward pass instead of storing its intermediates
        (``jax.checkpoint``): the same results with less memory on long sequences.
      method: the time loop (the same results either way): ``"scan"`` differentiates a plain
        ``lax.scan``; ``"fused"`` (``rnn_jax.fused``) has a hand-written JVP whose BPTT
        computes the weight gradients as single products outside the loop (Elman, LSTM, GRU;
        masks, reverse; not probes, return_carries, remat); ``"auto"`` takes ``"fused"``
        where it applies, else ``"scan"`` — and on a GPU first ``"pallas"``; ``"pallas"``
        runs the whole time loop in one fused kernel per direction (``rnn_jax.pallas_rnn``;
        Elman, LSTM, GRU; Pallas interpret mode off the GPU); ``"deer"`` / ``"quasi_deer"``
        evaluate the recurrence in parallel over time by Newton iterations
        (``rnn_jax.deer``; not probes, return_carries, remat).

    Returns:
      ``(hs, carry)`` or ``(hs, carry, carries)``: ``hs: [*batch, T, H]``, ``carry`` the final
      carry, ``carries`` every step's carry (leaves ``[*batch, T, ...]``).
    """
    _check_xs(cell, params, xs, time_major)
    unroll = _check_unroll(unroll)
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not supported; expected one of {METHODS}")
    if method in ("deer", "quasi_deer"):
        from rnn_jax import deer  # deer imports this module's validators

        if probes is not None or return_carries or remat:
            raise ValueError(f"method={method!r} does not support probes, return_carries or "
                             "remat; use method='scan'")
        return deer.deer_rnn(cell, params, xs, carry, lengths=lengths, mask=mask,
                             reverse=reverse, time_major=time_major,
                             quasi=method == "quasi_deer")
    path = _select(method, cell, params, probes=probes, return_carries=return_carries,
                   remat=remat)
    xs_tm = xs if time_major else jnp.moveaxis(xs, -2, 0)  # [T, *batch, I]
    num_steps, batch_shape = xs_tm.shape[0], tuple(xs_tm.shape[1:-1])
    m = _mask_from(lengths, mask, batch_shape, num_steps)
    # float32 at least (bf16 compute accumulates in float32), float64 for float64 inputs or
    # params: the scan carry must keep the dtype the cell's update produces.
    carry_dtype = jnp.result_type(jnp.float32, xs.dtype, *jax.tree.leaves(params))
    if carry is None:
        carry = cell.initial_carry(batch_shape, carry_dtype)
    else:
        _check_carry(cell, carry, batch_shape, carry_dtype)
        carry = jax.tree.map(lambda c: jnp.asarray(c, carry_dtype), carry)
    if probes is not None:
        want = ((num_steps, *batch_shape) if time_major else (*batch_shape, num_steps))
        want = (*want, cell.hidden_size)
        if _shape_of(probes) != want:
            raise ValueError(f"probes must have shape {want}, got {_shape_of(probes)}")
        probes = probes if time_major else jnp.moveaxis(probes, -2, 0)
        # in the carry's dtype, so the scan carry keeps its type (x64 makes plain zeros float64)
        probes = jnp.asarray(probes).astype(carry_dtype)

    m_tm = None if m is None else jnp.moveaxis(m, -1, 0)  # [T, *batch]
    if path == "pallas":
        hs, final, carries = pallas_rnn.run(cell, params, xs_tm, carry, m_tm, reverse=reverse)
        if not time_major:
            hs = jnp.moveaxis(hs, 0, -2)
            carries = jax.tree.map(lambda c: jnp.moveaxis(c, 0, len(batch_shape)), carries)
        return (hs, final, carries) if return_carries else (hs, final)
    if path == "fused":  # projects the inputs itself, gate by gate
        hs, final = fused.recurrence(cell, params, carry, xs_tm, mask=m_tm, reverse=reverse,
                                     unroll=unroll)
        return (hs if time_major else jnp.moveaxis(hs, 0, -2)), final
    us = cell.project(params, xs_tm)  # hoisted: [T, *batch, G*H] in one product

    def body(c, inp):
        u, m_t, p_t = inp
        new_c, h = cell.recur(params, c, u)
        if p_t is not None:
            h = h + p_t
            new_c = cell.with_hidden(new_c, h)
        if m_t is not None:
            keep = m_t[..., None]
            new_c = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new_c, c)
            h = jnp.where(keep, h, jnp.zeros_like(h))
        return new_c, ((h, new_c) if return_carries else h)

    if remat:
        body = jax.checkpoint(body)
    final, out = jax.lax.scan(body, carry, (us, m_tm, probes), reverse=reverse, unroll=unroll)
    hs, carries = out if return_carries else (out, None)
    if not time_major:
        hs = jnp.moveaxis(hs, 0, -2)
        if carries is not None:
            carries = jax.tree.map(lambda c: jnp.moveaxis(c, 0, len(batch_shape)), carries)
    return (hs, final, carries) if return_carries else (hs, final)


def merge_directions(h_fwd, h_bwd, merge):
    """Combines forward and backward outputs: concat on features, sum, or mean."""
    if merge == "concat":
        return jnp.concatenate([h_fwd, h_bwd], axis=-1)
    if merge == "sum":
        return h_fwd + h_bwd
    if merge == "mean":
        return 0.5 * (h_fwd + h_bwd)
    raise ValueError(f"merge={merge!r} is not supported; expected one of {MERGES}")


def bidirectional(fwd_cell, bwd_cell, params, xs, carry=None, *, lengths=None, mask=None,
                  merge="concat", time_major=False, unroll=1, return_carries=False,
                  remat=False, method="auto"):
    """Bidirectional RNN (Schuster & Paliwal 1997): a forward and a reverse pass, merged.

        hf_t = forward cell over x_1..x_t,   hb_t = backward cell over x_T..x_t (real steps only)
        h_t  = [hf_t ; hb_t]  |  hf_t + hb_t  |  (hf_t + hb_t) / 2

    Args:
      params: ``{"fwd": fwd_params, "bwd": bwd_params}``.
      carry: optional ``(carry_fwd, carry_bwd)``.
      Everything else as in :func:`rnn`.

    Returns:
      ``(hs, (carry_fwd, carry_bwd))`` (plus ``(carries_fwd, carries_bwd)`` with
      ``return_carries``); ``hs: [*batch, T, 2H]`` for concat, ``[*batch, T, H]`` otherwise.
    """
    if merge not in MERGES:
        raise ValueError(f"merge={merge!r} is not supported; expected one of {MERGES}")
    if not isinstance(params, dict) or set(params) != {"fwd", "bwd"}:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"params must be a dict with keys 'fwd' and 'bwd', got {got}")
    c_f, c_b = (None, None) if carry is None else carry
    kw = dict(lengths=lengths, mask=mask, time_major=time_major, unroll=unroll,
              return_carries=return_carries, remat=remat, method=method)
    out_f = rnn(fwd_cell, params["fwd"], xs, c_f, **kw)
    out_b = rnn(bwd_cell, params["bwd"], xs, c_b, reverse=True, **kw)
    hs = merge_directions(out_f[0], out_b[0], merge)
    if return_carries:
        return hs, (out_f[1], out_b[1]), (out_f[2], out_b[2])
    return hs, (out_f[1], out_b[1])
