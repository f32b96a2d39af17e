"""The runner: validate, pick a time loop (``rnn_jax.loops``), run it.

``rnn`` unrolls any cell over a sequence; ``bidirectional`` runs two cells in opposite
directions. Every argument is checked here, before anything is traced; the loops then assume
valid input. The plain loop (``loops.scan``) computes the input projection ``x_t W + b`` of all
steps in one matrix product before the loop (hoisted), so its body only does the recurrent
update; the other loops give the same results faster where they apply.

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

import functools

import jax
import jax.numpy as jnp

from rnn_jax.cells.validation import (
    check_bool,
    check_carry,
    check_cell,
    check_params,
    check_unroll,
    check_xs,
    mask_from,
    shape_of,
    zero_padding,
)
from rnn_jax.loops import cudnn, deer, fused, gpu_fit, pallas, scan, segments
from rnn_jax.loops.pallas_launch import precision_of

MERGES = ("concat", "sum", "mean")
METHODS = ("auto", "scan", "fused", "pallas", "deer", "quasi_deer", "cudnn")


def _select(method, cell, params, *, probes, return_carries, remat, dtype=jnp.float32) -> str:
    """The time loop for ``method``: "pallas", "fused" or "scan" (see ``rnn``'s docstring).

    "auto" takes the fused Pallas kernels when the program is traced for a GPU, they support
    the cell and options, and the measured fit table (``rnn_jax.loops.gpu_fit``) says their
    compiled code fits the GPU for this cell, H and state ``dtype``; else the fused-JVP scan
    where it applies, else the plain scan.
    """
    if method == "pallas":
        if not pallas.supported(cell, probes=probes) or remat:
            raise ValueError(f"method='pallas' does not support {type(cell).__name__} with "
                             "these options (probes, remat, compute_dtype); use 'auto' or 'scan'")
        if gpu_fit.targets_gpu() and gpu_fit.pallas_kernel_for(cell, dtype) is None:
            raise ValueError(
                f"method='pallas': no kernel for {type(cell).__name__}(hidden_size="
                f"{cell.hidden_size}) with a {jnp.dtype(dtype).name} state fits "
                "the GPU (neither U resident nor U streamed a gate block at a time fits its "
                "shared memory without spills: rnn_jax.loops.gpu_fit); use 'auto' or 'fused'")
        return "pallas"
    if (method == "auto" and not remat and gpu_fit.targets_gpu()
            and pallas.supported(cell, probes=probes)
            and gpu_fit.kernel_for(cell, dtype) is not None):
        return "pallas"
    # with remat the chosen loop runs inside checkpointed segments (rnn_jax.loops.segments)
    return fused.select(method, cell, params, probes=probes, return_carries=return_carries)


def path_of(cell, params, xs, *, method="auto", probes=None, return_carries=False,
            remat=False) -> dict:
    """The time loop ``rnn`` runs for these arguments, and its products' precision.

    For benchmark records: ``{"path": "pallas" | "fused" | "scan" | "deer" | "quasi_deer",
    "precision": ...}``, where a kernel's precision is ``pallas_launch.precision_of``'s label
    (tf32, ieee, bf16, float64) and XLA's paths report ``"xla:<jax_default_matmul_precision>"``.
    Traced for the current target, as ``rnn`` itself (``gpu_fit.targets_gpu``).
    """
    dtype = jnp.result_type(jnp.float32, xs.dtype, *jax.tree.leaves(params))
    path = method if method in ("deer", "quasi_deer", "cudnn") else _select(
        method, cell, params, probes=probes, return_carries=return_carries, remat=remat,
        dtype=dtype)
    if path == "pallas":
        return {"path": path, "precision": precision_of(dtype, cell.compute_dtype)[0]}
    return {"path": path,
            "precision": f"xla:{jax.config.jax_default_matmul_precision or 'default'}"}


def _time_major_inputs(cell, params, xs, carry, lengths, mask, time_major):
    """``(xs_tm, carry, mask_tm)``: inputs time-major with padding zeroed, the carry checked
    (or zeros) in the state dtype, the mask ``[T, *batch]`` (None: every step real)."""
    xs_tm = xs if time_major else jnp.moveaxis(xs, -2, 0)  # [T, *batch, I]
    num_steps, batch_shape = xs_tm.shape[0], tuple(xs_tm.shape[1:-1])
    m = mask_from(lengths, mask, batch_shape, num_steps)
    m_tm = None if m is None else jnp.moveaxis(m, -1, 0)  # [T, *batch]
    xs_tm = zero_padding(xs_tm, m_tm)  # inert padding: see rnn_jax.cells.validation
    # float32 at least (bf16 compute accumulates in float32), float64 for float64 inputs or
    # params: the scan carry must keep the dtype the cell's update produces.
    carry_dtype = jnp.result_type(jnp.float32, xs.dtype, *jax.tree.leaves(params))
    return xs_tm, _initial_carry(cell, carry, batch_shape, carry_dtype), m_tm


def _initial_carry(cell, carry, batch_shape, dtype):
    """The given carry, checked and cast to ``dtype``, or the cell's zeros."""
    if carry is None:
        return cell.initial_carry(batch_shape, dtype)
    check_carry(cell, carry, batch_shape, dtype)
    return jax.tree.map(lambda c: jnp.asarray(c, dtype), carry)


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
        Outside [0, T] they raise ValueError when concrete; under jit they act clamped into
        [0, T] on every method, and raise only through ``jax.experimental.checkify`` (see
        ``rnn_jax.cells.validation``).
      mask: ``[*batch, T]`` bools, True marks a real step. Inputs (and probes) of masked steps
        are replaced by zeros first: whatever sits there (NaN, inf) reaches neither outputs,
        carries nor gradients.
      reverse: visit positions from last to first; outputs stay aligned with input positions.
      time_major: layout of ``xs``, ``hs``, ``probes`` and ``carries``.
      unroll: scan unroll factor (speed only, never results).
      probes: ``[*batch, T, H]`` additive perturbation of the hidden state (see module doc),
        used in the carry's dtype (its gradient comes back in the probes' own dtype).
      return_carries: also return the carry after every step.
      remat: trade time for memory in BPTT (``rnn_jax.loops.segments``; the same results):
        ``False`` (default) stores every step's residuals, memory O(T); ``"segments"`` (or
        ``True``) keeps only the carry at the start of each segment of k ~ sqrt(T) steps
        and recomputes one segment at a time (its input projection included) in the
        backward pass: memory O(T/k + k) = O(sqrt(T)) carries and steps besides the inputs
        and outputs, for about one extra forward pass (measured on CPU: see
        ``benchmarks/cpu-2core/long_sequence``); an int sets the segment length k.
      method: the time loop (the same results either way): ``"scan"`` differentiates a plain
        ``lax.scan``; ``"fused"`` (``rnn_jax.loops.fused``) has a hand-written JVP whose BPTT
        computes the weight gradients as single products outside the loop (Elman, LSTM, GRU;
        masks, reverse, remat; not probes, return_carries); ``"auto"`` takes ``"fused"``
        where it applies, else ``"scan"`` — and on a GPU first ``"pallas"``; ``"pallas"``
        runs the whole time loop in one fused kernel per direction (``rnn_jax.loops.pallas``;
        Elman, LSTM, GRU; Pallas interpret mode off the GPU); ``"deer"`` / ``"quasi_deer"``
        evaluate the recurrence in parallel over time by Newton iterations
        (``rnn_jax.loops.deer``; not probes, return_carries, remat); ``"cudnn"`` runs cuDNN's
        LSTM through ``jax.experimental.rnn`` (``rnn_jax.loops.cudnn``: rj.LSTM, float32,
        lengths not mask, a GPU with jax's CUDA plugin; never chosen by ``"auto"``, unmeasured).
        Derivatives: ``"scan"``, ``"fused"``, ``"deer"`` and ``"quasi_deer"`` support every
        mode and order (``jax.grad``, ``jvp``, ``jacfwd``, ``hessian``); ``"pallas"`` and
        ``"cudnn"`` are a ``jax.custom_vjp`` around backward kernels, first-order reverse mode
        only (``jax.grad``, ``vjp``): ``jvp``/``jacfwd`` raise TypeError, and so does grad of
        grad or ``hessian`` on pallas (cudnn: jax's NotImplementedError). ``"auto"`` takes
        ``"pallas"`` on a GPU: pass ``"fused"`` or ``"scan"`` for forward mode.

    Returns:
      ``(hs, carry)`` or ``(hs, carry, carries)``: ``hs: [*batch, T, H]``, ``carry`` the final
      carry, ``carries`` every step's carry (leaves ``[*batch, T, ...]``).
    """
    reverse, time_major = check_bool("reverse", reverse), check_bool("time_major", time_major)
    return_carries = check_bool("return_carries", return_carries)
    check_cell(cell)
    check_xs(cell, params, xs, time_major)
    check_params(cell, params, xs.shape[-1])
    unroll = check_unroll(unroll)
    remat = segments.check_remat(remat)  # None, "segments" or a segment length
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not supported; expected one of {METHODS}")
    if method in ("deer", "quasi_deer"):
        if probes is not None or return_carries or remat:
            raise ValueError(f"method={method!r} does not support probes, return_carries or "
                             "remat; use method='scan'")
        return deer.deer_rnn(cell, params, xs, carry, lengths=lengths, mask=mask,
                             reverse=reverse, time_major=time_major,
                             quasi=method == "quasi_deer")
    if method == "cudnn":
        _check_cudnn(cell, params, xs, carry, mask=mask, probes=probes,
                     return_carries=return_carries, remat=remat)
    path = _select(method, cell, params, probes=probes, return_carries=return_carries,
                   remat=remat, dtype=jnp.result_type(jnp.float32, xs.dtype,
                                                      *jax.tree.leaves(params)))
    xs_tm, carry, m_tm = _time_major_inputs(cell, params, xs, carry, lengths, mask, time_major)
    num_steps, batch_shape = xs_tm.shape[0], tuple(xs_tm.shape[1:-1])
    carry_dtype = jnp.result_type(*jax.tree.leaves(carry))
    if probes is not None:
        want = ((num_steps, *batch_shape) if time_major else (*batch_shape, num_steps))
        want = (*want, cell.hidden_size)
        if shape_of(probes) != want:
            raise ValueError(f"probes must have shape {want}, got {shape_of(probes)}")
        probes = probes if time_major else jnp.moveaxis(probes, -2, 0)
        # in the carry's dtype, so the scan carry keeps its type (x64 makes plain zeros float64)
        probes = zero_padding(jnp.asarray(probes).astype(carry_dtype), m_tm)

    if path == "cudnn":  # takes lengths (validated above by mask_from), not a mask
        hs, final = cudnn.run(params, xs_tm, carry, lengths, reverse=reverse)
        return (hs if time_major else jnp.moveaxis(hs, 0, -2)), final
    if path == "pallas":
        hs, final, carries = pallas.run(cell, params, xs_tm, carry, m_tm, reverse=reverse,
                                        kernel=gpu_fit.launch_kernel(method, cell, carry_dtype))
        if not time_major:
            hs = jnp.moveaxis(hs, 0, -2)
            carries = jax.tree.map(lambda c: jnp.moveaxis(c, 0, len(batch_shape)), carries)
        return (hs, final, carries) if return_carries else (hs, final)
    if path == "fused" and remat is None:  # projects the inputs itself, gate by gate
        hs, final = fused.recurrence(cell, params, carry, xs_tm, mask=m_tm, reverse=reverse,
                                     unroll=unroll)
        return (hs if time_major else jnp.moveaxis(hs, 0, -2)), final
    loop = scan.recurrence if remat is None else functools.partial(
        segments.recurrence, path, remat=remat)
    hs, final, carries = loop(cell, params, carry, xs_tm, mask=m_tm, probes=probes,
                              reverse=reverse, unroll=unroll, return_carries=return_carries)
    if not time_major:
        hs = jnp.moveaxis(hs, 0, -2)
        if carries is not None:
            carries = jax.tree.map(lambda c: jnp.moveaxis(c, 0, len(batch_shape)), carries)
    return (hs, final, carries) if return_carries else (hs, final)


def _check_cudnn(cell, params, xs, carry, **options):
    """method="cudnn" runs this request, or a ValueError says why not (before any tracing)."""
    reasons = cudnn.unsupported(cell, params, xs, carry, **options)
    if reasons:
        raise ValueError(f"method='cudnn' does not support {', '.join(reasons)}; "
                         "use 'auto' or 'scan'")
    if not cudnn.available():
        raise ValueError("method='cudnn' needs a GPU with jax's CUDA plugin (jax[cuda]), "
                         f"which this process lacks (backend {jax.default_backend()!r}); "
                         "use 'auto' or 'scan'")


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

    Where both directions run on the Pallas kernels (``method="pallas"``, or ``"auto"`` on a
    GPU) with the same kernel (cell type, H, activation, compute dtype), one launch per pass
    runs them both (``rnn_jax.loops.pallas.run_bidirectional``); ``method="cudnn"`` makes one
    bidirectional cuDNN call. The results are the same either way.
    """
    if merge not in MERGES:
        raise ValueError(f"merge={merge!r} is not supported; expected one of {MERGES}")
    time_major = check_bool("time_major", time_major)
    return_carries = check_bool("return_carries", return_carries)
    if not isinstance(params, dict) or set(params) != {"fwd", "bwd"}:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"params must be a dict with keys 'fwd' and 'bwd', got {got}")
    c_f, c_b = (None, None) if carry is None else carry
    if (method == "cudnn" and not return_carries
            and getattr(fwd_cell, "hidden_size", 0) == getattr(bwd_cell, "hidden_size", 1)):
        return _cudnn_bidirectional(fwd_cell, bwd_cell, params, xs, (c_f, c_b), lengths=lengths,
                                    mask=mask, merge=merge, time_major=time_major, remat=remat)
    if _one_launch(fwd_cell, bwd_cell, params, xs, method, return_carries, remat, time_major):
        return _pallas_bidirectional(fwd_cell, bwd_cell, params, xs, (c_f, c_b),
                                     lengths=lengths, mask=mask, merge=merge, method=method,
                                     time_major=time_major, return_carries=return_carries)
    kw = dict(lengths=lengths, mask=mask, time_major=time_major, unroll=unroll,
              return_carries=return_carries, remat=remat, method=method)
    out_f = rnn(fwd_cell, params["fwd"], xs, c_f, **kw)
    out_b = rnn(bwd_cell, params["bwd"], xs, c_b, reverse=True, **kw)
    hs = merge_directions(out_f[0], out_b[0], merge)
    if return_carries:
        return hs, (out_f[1], out_b[1]), (out_f[2], out_b[2])
    return hs, (out_f[1], out_b[1])


def _one_launch(fwd_cell, bwd_cell, params, xs, method, return_carries, remat,
                time_major) -> bool:
    """Whether both directions run on the Pallas kernels with the same kernel, so that one
    launch per pass runs them both (``pallas.run_bidirectional``); checks both directions'
    arguments first when they might."""
    if method not in ("auto", "pallas") or remat:
        return False
    if method == "auto" and not gpu_fit.targets_gpu():  # auto runs no kernel: checked by rnn
        return False
    if not all(pallas.supported(c) for c in (fwd_cell, bwd_cell)):
        return False
    for cell, p in ((fwd_cell, params["fwd"]), (bwd_cell, params["bwd"])):
        check_cell(cell)
        check_xs(cell, p, xs, time_major)
        check_params(cell, p, xs.shape[-1])
    dtype = jnp.result_type(jnp.float32, xs.dtype, *jax.tree.leaves(params))
    same = (gpu_fit.key_of(fwd_cell, dtype) == gpu_fit.key_of(bwd_cell, dtype)
            and fwd_cell.hidden_size == bwd_cell.hidden_size)
    return same and _select(method, fwd_cell, params["fwd"], probes=None,
                            return_carries=return_carries, remat=False,
                            dtype=dtype) == "pallas"


def _pallas_bidirectional(fwd_cell, bwd_cell, params, xs, carries, *, lengths, mask, merge,
                          method, time_major, return_carries):
    """Both directions in one Pallas launch per pass, with ``rnn``'s semantics (arguments
    checked by ``_one_launch``)."""
    # one state dtype for both directions (that of all the params), as the kernels share it
    xs_tm, c_f, m_tm = _time_major_inputs(fwd_cell, params, xs, carries[0], lengths, mask,
                                          time_major)
    lead = xs_tm.ndim - 2  # batch axes
    dtype = jnp.result_type(*jax.tree.leaves(c_f))
    c_b = _initial_carry(bwd_cell, carries[1], xs_tm.shape[1:-1], dtype)
    outs = pallas.run_bidirectional((fwd_cell, bwd_cell), (params["fwd"], params["bwd"]),
                                    xs_tm, (c_f, c_b), m_tm,
                                    kernel=gpu_fit.launch_kernel(method, fwd_cell, dtype))
    if not time_major:
        outs = [(jnp.moveaxis(hs, 0, -2), final,
                 jax.tree.map(lambda c: jnp.moveaxis(c, 0, lead), every))
                for hs, final, every in outs]
    (hs_f, fin_f, all_f), (hs_b, fin_b, all_b) = outs
    hs = merge_directions(hs_f, hs_b, merge)
    if return_carries:
        return hs, (fin_f, fin_b), (all_f, all_b)
    return hs, (fin_f, fin_b)


def _cudnn_bidirectional(fwd_cell, bwd_cell, params, xs, carries, *, lengths, mask, merge,
                         time_major, remat):
    """Both directions in one cuDNN call (``rnn_jax.loops.cudnn.run_bidirectional``)."""
    for cell, p, c in zip((fwd_cell, bwd_cell), (params["fwd"], params["bwd"]), carries,
                          strict=True):
        check_xs(cell, p, xs, time_major)
        _check_cudnn(cell, p, xs, c, mask=mask, remat=remat)
    xs_tm = xs if time_major else jnp.moveaxis(xs, -2, 0)
    batch_shape = tuple(xs_tm.shape[1:-1])
    mask_from(lengths, None, batch_shape, xs_tm.shape[0])  # validates lengths
    full = []
    for cell, c in zip((fwd_cell, bwd_cell), carries, strict=True):
        if c is None:
            c = cell.initial_carry(batch_shape, jnp.float32)
        else:
            check_carry(cell, c, batch_shape, jnp.float32)
        full.append(c)
    (hs_f, c_f), (hs_b, c_b) = cudnn.run_bidirectional(params, xs_tm, full, lengths)
    if not time_major:
        hs_f, hs_b = jnp.moveaxis(hs_f, 0, -2), jnp.moveaxis(hs_b, 0, -2)
    return merge_directions(hs_f, hs_b, merge), (c_f, c_b)
