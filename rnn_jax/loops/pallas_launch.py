"""How a fused-loop kernel is launched: its configuration, its precision, and the platform.

``Kernel`` is the static configuration (rows per program, Triton warps and pipeline stages)
that ``rnn_jax.loops.gpu_fit`` chooses from compiled resource use.

Precision follows the caller, as XLA's own products do: ``jax_default_matmul_precision`` (or an
explicit ``precision``) in float32 — ``"tf32"`` (one TF32 pass) for the default, ``"high"``,
``"tensorfloat32"`` and ``"bfloat16"``; ``"ieee"`` (full float32 products) for ``"highest"`` and
``"float32"``. A bf16 ``compute_dtype`` stores U in bf16 and rounds the state to bf16 in the
products (``"bf16"``, float32 accumulation), as the cell's own ``_mm`` does; float64 is
``"float64"``. On the CPU the kernels run in Pallas' interpret mode, where every product is
exact in the state dtype, whatever the label.

Backend: Pallas' Triton backend, named explicitly (jax 0.10 sends a bare ``pallas_call`` to
Mosaic GPU, where these kernels do not lower). The compiled-or-interpreted choice is made when
the program is *lowered* (``jax.lax.platform_dependent``), so a program traced on a CPU and
lowered for ``"cuda"`` holds exactly the Triton kernels a GPU runs.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

MIN_BLOCK = 16  # the smallest matrix-product tile Triton's tl.dot accepts
_TF32 = ("tf32", jax.lax.Precision.DEFAULT)
PRECISIONS = {  # jax_default_matmul_precision -> (label, the kernels' product precision)
    None: _TF32, "default": _TF32, "bfloat16": _TF32, "fastest": _TF32,
    "high": _TF32, "tensorfloat32": _TF32, "bfloat16_3x": _TF32,
    "highest": ("ieee", jax.lax.Precision.HIGHEST),
    "float32": ("ieee", jax.lax.Precision.HIGHEST),
}


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A kernel's static launch configuration.

    Attributes:
      block_b: batch rows per program (a power of two, at least 16: Triton's dot tile).
      num_warps: Triton warps per program.
      num_stages: Triton software-pipelining stages of the time loop.
      resident: U loaded once and kept on chip for all T steps (True), or streamed: each
        tile of U loaded where a step uses it, every step, so that only one tile at a time
        needs shared memory (``rnn_jax.loops.pallas_kernels._Layout.weights``).
      prefetch: each step's inputs (the hoisted projection u_t, the mask, the stored states)
        read one step ahead, at the top of the previous step, so their load latency overlaps
        its products (``rnn_jax.loops.pallas_kernels._time_loop``); costs their registers.
      tile: for a streamed kernel, hidden units per tile (a power of two, at least 16), or
        None for all of the padded H: the state is held in column blocks of ``tile`` units
        and U read in [tile, tile] tiles, in loops over the blocks, so the kernel needs one
        tile's shared memory and one tile's load addresses in registers, not one [H, H] gate
        block's (``rnn_jax.loops.pallas_kernels``). A tile wider than the padded H is the
        whole of it. Resident kernels hold U whole (None).
    """

    block_b: int = MIN_BLOCK
    num_warps: int = 4
    num_stages: int = 1
    resident: bool = True
    prefetch: bool = False
    tile: int | None = None

    def __post_init__(self):
        b = self.block_b
        if not isinstance(b, int) or b < MIN_BLOCK or b & (b - 1):
            raise ValueError(f"block_b must be a power of two >= {MIN_BLOCK}, got {b!r}")
        for name in ("num_warps", "num_stages"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("resident", "prefetch"):
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise TypeError(f"{name} must be a bool (True or False), got {v!r}")
        t = self.tile
        if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t < MIN_BLOCK
                              or t & (t - 1)):
            raise ValueError(f"tile must be None or a power of two >= {MIN_BLOCK}, got {t!r}")
        if t is not None and self.resident:
            raise ValueError(f"tile={t} needs a streamed kernel (resident=False): a resident "
                             "kernel holds U whole")


def padded_hidden(hidden: int) -> int:
    """The power of two (>= 16) the kernels run H at (Triton's tiles are powers of two)."""
    return max(MIN_BLOCK, 1 << (hidden - 1).bit_length())


def precision_of(state_dtype, compute_dtype=None, precision=None):
    """``(label, lax.Precision)`` of the kernels' products (see the module docstring).

    ``precision``: a ``jax.default_matmul_precision`` name; None reads the config.
    """
    if jnp.dtype(state_dtype) == jnp.float64:
        return "float64", jax.lax.Precision.HIGHEST
    if compute_dtype is not None and jnp.dtype(compute_dtype) == jnp.bfloat16:
        return "bf16", jax.lax.Precision.DEFAULT
    name = jax.config.jax_default_matmul_precision if precision is None else precision
    key = name.lower() if isinstance(name, str) else name
    if key not in PRECISIONS:
        raise ValueError(f"precision={name!r} is not supported; expected one of "
                         f"{sorted(k for k in PRECISIONS if k)} or None")
    return PRECISIONS[key]


def _spec(kind, shape, block_b, directions=1, per_direction=1):
    """BlockSpec by role: per-time-step rows, per-row state, mask, or a direction's matrix.

    "all" is ``directions`` matrices stacked on the first axis (``[D * X0, ...]``); program i
    runs direction ``i // per_direction`` and reads that one (with one direction: the whole).
    """
    if kind == "seq":  # [T, B, X]
        return pl.BlockSpec((shape[0], block_b, shape[2]), lambda i: (0, i, 0))
    if kind == "row":  # [B, X]
        return pl.BlockSpec((block_b, shape[1]), lambda i: (i, 0))
    if kind == "msk":  # [T, B]
        return pl.BlockSpec((shape[0], block_b), lambda i: (0, i))
    if directions == 1:  # every program reads the whole array
        return pl.BlockSpec(tuple(shape), lambda i: (0,) * len(shape))
    rest = (0,) * (len(shape) - 1)
    return pl.BlockSpec((shape[0] // directions, *shape[1:]),
                        lambda i: (i // per_direction, *rest))


def call(kernel, name, cfg: Kernel, ins, outs, dtype, directions=1, **static):
    """pallas_call over batch blocks; ``ins``/``outs`` are (kind, array-or-shape) pairs.

    ``directions``: the rows are that many equal groups (the directions of a bidirectional
    layer), each with its own block of every "all" input. Compiled for Triton on "cuda" and
    "rocm", interpreted on every other platform, decided at lowering time.
    """
    batch = next(x.shape[1] for kind, x in ins if kind == "seq")
    programs = batch // cfg.block_b
    spec = functools.partial(_spec, block_b=cfg.block_b, directions=directions,
                             per_direction=programs // directions)
    body = functools.partial(kernel, resident=cfg.resident, prefetch=cfg.prefetch,
                             tile=cfg.tile, **static)

    def launch(interpret, *args):
        params = None if interpret else plgpu.CompilerParams(
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return pl.pallas_call(
            body,
            grid=(programs,),
            in_specs=[spec(kind, x.shape) for kind, x in ins],
            out_specs=[spec(kind, shape) for kind, shape in outs],
            out_shape=[jax.ShapeDtypeStruct(shape, dtype) for _, shape in outs],
            interpret=interpret,
            compiler_params=params,
            name=name if directions == 1 else f"{name}_bidirectional",
        )(*args)

    compiled, interpreted = (functools.partial(launch, flag) for flag in (False, True))
    # A kernel launch has no derivative of its own (pallas.py differentiates the kernels once,
    # by custom_vjp): differentiating through one, i.e. grad of grad, raises this clear error.
    run = jax.custom_jvp(lambda *xs: jax.lax.platform_dependent(
        *xs, cuda=compiled, rocm=compiled, default=interpreted))
    run.defjvp(_no_second_derivative)
    return run(*[x for _, x in ins])


def _no_second_derivative(primals, tangents):
    raise TypeError(
        "method='pallas' supports first-order reverse mode only (jax.grad, jax.vjp, "
        "jax.value_and_grad): its kernels are a jax.custom_vjp, and neither the forward nor the "
        "backward kernel can be differentiated again, so grad of grad, Hessian-vector products, "
        "jax.hessian, jax.jvp and jax.jacfwd are unavailable; use method='fused' or 'scan'")
