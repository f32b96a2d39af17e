"""Which fused-loop kernel fits a GPU: the measured fit table and the choice ``auto`` makes.

A kernel fits when its Triton code, compiled for the target (sm_90, an H100/H200), needs at
most the shared memory one program may have (232,448 bytes on sm_90) and does not spill
registers. The numbers are not estimated: ``rnn_jax.bench.gpu_compile`` lowers every kernel
for "cuda" on any machine (an abstract GPU stands in for a real one), compiles its Triton IR
with the ``triton`` package (ptxas for sm_90), and writes ``gpu_fit_table.py`` from what the
compiler reports. A cell takes a kernel only where its table entry fits: the key is (cell,
padded H, U's storage dtype); anything else falls back to the scan paths.

Kinds of kernel measured per key (``pallas_launch.Kernel``): U resident on chip for the whole
loop; U streamed one gate block per product (from L2, every step), which needs a fraction of
the shared memory and so fits where the resident one cannot (LSTM H = 128 in float32: 278,528
bytes resident, as the H200 reported, against 73,728 streamed); and, where no gate block fits,
U streamed in [tile, tile] tiles by loops over the state's column blocks
(``Kernel.tile``: Elman and GRU at H = 256 in float32, where one gate block alone is
262,144 bytes).

``method="auto"`` takes, for a key a GPU has timed (``gpu_speed_table``, written by
``rnn_jax.bench.gpu_speed`` from a ``make gpu-check`` run), the configuration measured fastest
there if it beat the fused and plain scans at every timed size, and no kernel if none did; for
a key not yet timed, a *resident* kernel wherever one fits: on the H200 resident kernels
measured 1.9-5.5x faster than the fused scan wherever they were timed
(``benchmarks/h200/gpu_check``). ``method="pallas"`` runs the first kernel that fits, resident
before streamed, untiled before tiled. Configurations that read each step's inputs a step
ahead (``Kernel.prefetch``) are measured for fit too, and run where a GPU timed them fastest,
or where asked for.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnn_jax.cells import GRU, LSTM, Elman
from rnn_jax.loops import gpu_fit_table, gpu_speed_table
from rnn_jax.loops.pallas_launch import Kernel, padded_hidden

SHARED_MEMORY_LIMIT = 232_448  # bytes of shared memory one block may use on sm_90 (227 KiB)


def targets_gpu() -> bool:
    """Whether the program being traced is for a GPU: the abstract device of the current
    abstract mesh (``jax.sharding.use_abstract_mesh``) when one is named, else the backend.

    Read at trace time on purpose: a ``jax.lax.platform_dependent`` choice would keep the
    kernel branch in every program, and its ``custom_vjp`` would then break ``jax.jvp``,
    ``jax.jacfwd`` and ``jax.hessian`` of the default path on every platform.
    """
    device = jax.sharding.get_abstract_mesh().abstract_device
    if device is not None:
        return device.platform in ("cuda", "rocm", "gpu")
    return jax.default_backend() == "gpu"


def cell_key(cell) -> str | None:
    """The table's name for a cell's kernels ("elman_tanh", "lstm", "gru"), or None."""
    if type(cell) is Elman:
        return f"elman_{cell.activation}"
    return {LSTM: "lstm", GRU: "gru"}.get(type(cell))


def storage_dtype(cell, dtype) -> str:
    """U's dtype inside the kernels: bf16 under a bf16 ``compute_dtype``, else the state's."""
    cd = getattr(cell, "compute_dtype", None)
    if cd is not None and jnp.dtype(cd) == jnp.bfloat16 and jnp.dtype(dtype) != jnp.float64:
        return "bfloat16"
    return jnp.dtype(dtype).name


def fits(record) -> bool:
    """Whether a measured record (one per kernel) compiled within the GPU's limits."""
    return (record.get("error") is None and record["shared"] <= SHARED_MEMORY_LIMIT
            and record["spills"] == 0)


def entry(cell, dtype):
    """The table's entry for (cell, padded H, storage dtype), or None when not measured."""
    key = key_of(cell, dtype)
    return None if key is None else gpu_fit_table.TABLE.get(key)


def option_fits(option) -> bool:
    """Whether a measured configuration compiled and every one of its kernels fits."""
    return bool(option["kernels"]) and all(fits(r) for r in option["kernels"].values())


def kernel_for_options(options, resident=None, prefetch=False) -> Kernel | None:
    """The first measured configuration whose every kernel (forward, backward) fits.

    ``resident``: only resident (True) or streamed (False) configurations; None: either.
    ``prefetch``: only those that read each step's inputs a step ahead (True) or not (False).
    """
    for option in options or ():
        kernel = option.get("kernel")
        if (kernel is None or (resident is not None and kernel.get("resident", True) != resident)
                or kernel.get("prefetch", False) != prefetch):
            continue
        if option_fits(option):
            return Kernel(**kernel)
    return None


def key_of(cell, dtype):
    """The table's key (cell, padded H, storage dtype), or None for a cell without kernels."""
    name = cell_key(cell)
    return None if name is None else (name, padded_hidden(cell.hidden_size),
                                      storage_dtype(cell, dtype))


def kernel_for(cell, dtype, batch=None, choices=None) -> Kernel | None:
    """The kernel configuration ``auto`` runs for this cell and state dtype, or None.

    ``choices``: the measured choice per key (default ``gpu_speed_table.CHOICES``). Where the
    key has one whose kernel still fits, it (or None, where no kernel beat the scans); else
    a resident kernel where one fits. Configurations are measured in order of preference
    (fewer warps first); ``batch`` is accepted for a future choice of rows per program.
    """
    del batch
    options = entry(cell, dtype)
    choice = (gpu_speed_table.CHOICES if choices is None else choices).get(key_of(cell, dtype))
    if choice is not None:
        if choice["kernel"] is None:
            return None
        kernel = Kernel(**choice["kernel"])
        if _fits_now(options, kernel):
            return kernel
    return kernel_for_options(options, resident=True)


def _fits_now(options, kernel) -> bool:
    """Whether the fit table measured this very configuration and it fits."""
    return any(Kernel(**o["kernel"]) == kernel and option_fits(o)
               for o in options or () if o.get("kernel") is not None)


def pallas_kernel_for(cell, dtype, resident=None, prefetch=False) -> Kernel | None:
    """The kernel ``method="pallas"`` runs: the first that fits (resident before streamed), or
    only resident / only streamed ones, reading inputs a step ahead or not; None where none
    fits."""
    return kernel_for_options(entry(cell, dtype), resident=resident, prefetch=prefetch)


def launch_kernel(method, cell, dtype) -> Kernel | None:
    """The kernel a Pallas run of ``method`` launches: ``auto``'s choice (``kernel_for``), else
    ``method="pallas"``'s (``pallas_kernel_for``); None lets ``pallas.run`` fall back."""
    return (kernel_for if method == "auto" else pallas_kernel_for)(cell, dtype)
