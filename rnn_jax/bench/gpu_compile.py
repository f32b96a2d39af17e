"""The GPU path, compiled on any machine: lowering for "cuda" and Triton's resource use for sm_90.

No GPU is needed. ``abstract_gpu`` names one (``jax.sharding.AbstractDevice``): traced and
lowered under it, ``jax.jit(f).trace(...).lower(lowering_platforms=("cuda",))`` gives the
program a GPU of that kind runs, fused-loop kernels included (Pallas-Triton asks the device
kind for the compute capability). ``triton_kernels`` takes the Triton IR of every kernel out of
the lowered program and ``compile_kernel`` compiles it with the ``triton`` package (its own
ptxas) for the target, reporting the shared memory, registers and spill bytes per program.

``python -m rnn_jax.bench.gpu_compile --write rnn_jax/loops/gpu_fit_table.py [--jobs 2]``
measures every kernel configuration (cell, padded H, U's dtype; U resident, resident with
inputs read a step ahead, streamed, or streamed in tiles; warps) and writes the fit table that
``method="auto"`` reads (``rnn_jax.loops.gpu_fit``). Needs ``triton`` (``pip install -e
.[gpu-check]``); took 41 minutes on two cores with one job (jax 0.11.2, triton 3.6).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import os
import re
import subprocess
import tempfile

import jax
import jax.numpy as jnp

from rnn_jax.cells import GRU, LSTM, Elman
from rnn_jax.loops import gpu_fit, gpu_fit_table, pallas
from rnn_jax.loops.pallas_launch import Kernel

TABLE_JAX_VERSION = gpu_fit_table.JAX_VERSION  # the jax whose Triton IR the table measured
DEVICE_KIND = "NVIDIA H200"  # sm_90, 132 SMs: the GPU the project benchmarks on
ARCH = 90
CELLS = {"elman_tanh": lambda h: Elman(h), "elman_relu": lambda h: Elman(h, activation="relu"),
         "elman_identity": lambda h: Elman(h, activation="identity"),
         "lstm": lambda h: LSTM(h), "gru": lambda h: GRU(h)}
HIDDEN = (16, 32, 64, 128, 256, 512)
# the configurations tried per kind of kernel, most preferred first, until one fits: U resident,
# U resident with each step's inputs read a step ahead, U streamed a gate block at a time, and
# U streamed in [tile, tile] tiles, widest first (measured only where no untiled streamed
# kernel fits, for tiles narrower than the padded H, at 8 warps: at 4 the float32 H = 256 ones
# spilled); 8 warps halve the registers per thread (LSTM H=128: 255 with spills at 4 warps,
# ~170 at 8) at the cost of more threads
KINDS = ((Kernel(num_warps=4), Kernel(num_warps=8)),
         (Kernel(num_warps=4, prefetch=True), Kernel(num_warps=8, prefetch=True)),
         (Kernel(num_warps=4, resident=False), Kernel(num_warps=8, resident=False)),
         tuple(Kernel(num_warps=8, resident=False, tile=t) for t in (128, 64, 32)))


@contextlib.contextmanager
def abstract_gpu(device_kind=DEVICE_KIND, num_cores=132):
    """Traces and lowers as for a GPU of this kind (``jax.sharding.use_abstract_mesh``)."""
    device = jax.sharding.AbstractDevice(device_kind=device_kind, num_cores=num_cores,
                                         platform="cuda")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (),
                                                                 abstract_device=device)):
        yield


def lower_for_cuda(fn, *args):
    """``fn`` jitted, traced under an abstract GPU and lowered for "cuda"."""
    with abstract_gpu():
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))


def triton_kernels(lowered):
    """[{name, ir (Triton IR text), num_warps, num_stages, grid}] of a lowered program."""
    from jax._src.lib.mlir import ir
    from jax._src.lib.triton import dialect as tt_dialect

    found = []

    def walk(op):
        for region in op.regions:
            for block in region.blocks:
                for inner in block.operations:
                    if (inner.name == "stablehlo.custom_call"
                            and "triton" in str(inner.attributes["call_target_name"])):
                        found.append(ir.DictAttr(inner.attributes["mhlo.backend_config"]))
                    walk(inner)

    walk(lowered.compiler_ir("stablehlo").operation)
    kernels = []
    for config in found:
        ctx = ir.Context()
        tt_dialect.register_dialect(ctx)
        with ctx:  # jaxlib's bytecode -> text, which the triton package parses
            module = ir.Module.parse(ir.StringAttr(config["ir"]).value_bytes)
            text = module.operation.get_asm(enable_debug_info=False)
        ints = {k: ir.IntegerAttr(config[k]).value
                for k in ("num_warps", "num_stages", "grid_x", "grid_y", "grid_z")}
        kernels.append(dict(name=ir.StringAttr(config["name"]).value, ir=text,
                            num_warps=ints["num_warps"], num_stages=ints["num_stages"],
                            grid=(ints["grid_x"], ints["grid_y"], ints["grid_z"])))
    return kernels


def compile_kernel(kernel, arch=ARCH):
    """Compiles one kernel's Triton IR for ``sm_<arch>``: shared memory, registers, spills."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, f"{kernel['name']}.ttir")
        with open(src, "w") as f:
            f.write(kernel["ir"])
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options=dict(num_warps=kernel["num_warps"],
                                               num_stages=kernel["num_stages"]))
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        target = re.search(r"^\.target (\S+)", compiled.asm["ptx"], re.M).group(1)
        info = subprocess.run([knobs.nvidia.ptxas.path, f"-arch={target}", "-v", "-o",
                               os.path.join(tmp, "k.cubin"), ptx],
                              capture_output=True, text=True, check=True).stderr
    static = re.search(r"(\d+) bytes smem", info)
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", info)]
    return dict(shared=compiled.metadata.shared + (int(static.group(1)) if static else 0),
                registers=int(re.search(r"Used (\d+) registers", info).group(1)),
                spills=sum(spills), input_precision=input_precisions(kernel))


def input_precisions(kernel):
    """The ``inputPrecision`` of the kernel's ``tt.dot`` products (tf32, ieee, ...).

    Triton's printer leaves out its default, ieee.
    """
    dots = re.findall(r"tt\.dot [^\n]*", kernel["ir"])
    return sorted({(re.findall(r"inputPrecision = (\w+)", d) or ["ieee"])[0] for d in dots})


def kernel_program(cell, dtype, kernel, batch=32, steps=8, input_size=8):
    """The forward and backward kernels of one cell, one direction and both directions in one
    launch (``pallas.run_bidirectional``: kernels named ``*_bidirectional``), as a lowerable
    gradient."""
    params = jax.eval_shape(lambda: cell.init(jax.random.key(0), input_size))
    params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, dtype), params)
    xs = jax.ShapeDtypeStruct((steps, batch, input_size), dtype)

    def loss(p, x):
        carry = cell.initial_carry((batch,), dtype)
        hs, _, _ = pallas.run(cell, p, x, carry, None, kernel=kernel)
        both = pallas.run_bidirectional((cell, cell), (p, p), x, (carry, carry), None,
                                        kernel=kernel)
        return jnp.sum(hs) + sum(jnp.sum(out[0]) for out in both)

    return jax.grad(loss), params, xs


def measure(key, hidden, storage):
    """Each candidate configuration's compiled resource use, up to the first of each kind that
    fits (``KINDS``)."""
    cell = CELLS[key](hidden)
    if storage == "bfloat16":
        cell = dataclasses.replace(cell, compute_dtype=jnp.bfloat16)
    dtype = jnp.float64 if storage == "float64" else jnp.float32
    padded, size = pallas.padded_hidden(hidden), jnp.dtype(storage).itemsize
    options = []
    for candidates in KINDS:
        if candidates[0].tile is not None:
            if gpu_fit.kernel_for_options(options, resident=False) is not None:
                continue  # an untiled streamed kernel fits: tiles are not needed
            candidates = tuple(c for c in candidates if c.tile < padded)
            if not candidates:
                continue
        # a resident kernel holds all of U in shared memory, a streamed one a gate block U_k
        # (or one tile) at a time (measured: those bytes plus at most a few tens of KB), so one
        # whose U (U_k, tile) alone passes the limit is not compiled (ptxas takes many minutes
        # on them)
        first = candidates[0]
        side = padded if first.tile is None else first.tile
        on_chip = side * side * size * (cell.num_gates if first.resident else 1)
        if on_chip > gpu_fit.SHARED_MEMORY_LIMIT:
            what = ("U" if first.resident else "one gate block of U" if first.tile is None
                    else "one tile of U")
            options.append({"kernel": dataclasses.asdict(first), "kernels": {},
                            "skipped": f"{what} alone needs {on_chip} bytes"})
            continue
        with jax.enable_x64(storage == "float64"):
            options += _measure(cell, dtype, candidates)
    return options


def _measure(cell, dtype, candidates):
    options = []
    for cand in candidates:
        record = {"kernel": dataclasses.asdict(cand), "kernels": {}}
        try:
            fn, *args = kernel_program(cell, dtype, cand)
            for k in triton_kernels(lower_for_cuda(fn, *args)):
                record["kernels"][k["name"]] = {**compile_kernel(k), "error": None}
        except Exception as e:  # noqa: BLE001 - a failure to lower or compile is a measurement
            record["kernels"]["error"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        options.append(record)
        if record["kernels"] and all(gpu_fit.fits(r) for r in record["kernels"].values()):
            break
    return options


def _measure_key(key):
    return key, measure(*key)


def write_table(path, storages=("float32", "bfloat16", "float64"), jobs=1):
    """Measures every (cell, H, storage) and writes the table module to ``path``.

    ``jobs``: worker processes measuring keys at once (ptxas runs on one core each); the
    table is the same, in the same order, for any number.
    """
    keys = [(key, hidden, storage) for key in CELLS for hidden in HIDDEN for storage in storages]
    rows = {}
    with contextlib.ExitStack() as stack:
        if jobs > 1:
            pool = stack.enter_context(
                multiprocessing.get_context("spawn").Pool(jobs, maxtasksperchild=8))
            measured = pool.imap(_measure_key, keys)
        else:
            measured = map(_measure_key, keys)
        for key, options in measured:
            rows[key] = options
            print(*key, "->", [o["kernel"] for o in options if gpu_fit.option_fits(o)],
                  flush=True)
    import triton

    header = (f'"""Generated by `python -m rnn_jax.bench.gpu_compile --write {path}`: do not '
              f'edit.\n\nKeys (cell, padded H, storage dtype); per key the configurations tried '
              f'in order, each\nwith the shared memory (bytes), registers and spill bytes '
              f'of its kernels for {DEVICE_KIND}\n(sm_{ARCH}). See rnn_jax.loops.gpu_fit.\n"""\n'
              f'# ruff: noqa: E501\n\nJAX_VERSION = {jax.__version__!r}\n'
              f'TRITON_VERSION = {triton.__version__!r}\n')
    with open(path, "w") as f:
        f.write(header + "TABLE = {\n")
        for k, v in rows.items():
            f.write(f"    {k!r}: {v!r},\n")
        f.write("}\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", required=True, help="the table module to write")
    parser.add_argument("--jobs", type=int, default=1,
                        help="worker processes (one core each; default 1)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    write_table(args.write, jobs=args.jobs)


if __name__ == "__main__":
    main()
