"""The implementations the benchmark compares, each a builder ``(problem, data) -> Built``.

    rnn_jax                 ``rj.rnn`` with no options (``method="auto"``, unroll 1)
    rnn_jax:<variant>       other options, ``<method>[-u<unroll>][-highest]``, e.g. ``scan-u8``;
                            method in auto, scan, fused, pallas, cudnn, deer, quasi_deer;
                            ``pallas-resident`` / ``pallas-streamed``: the kernel with U kept
                            on chip / streamed a gate block (or, where no block fits, a tile)
                            at a time (``Kernel.resident``, ``Kernel.tile``);
                            ``pallas-prefetch``: U resident, each step's inputs read a step
                            ahead (``Kernel.prefetch``)
    flax_linen              ``nn.RNN`` over SimpleCell / OptimizedLSTMCell / GRUCell
    torch                   ``nn.RNN/LSTM/GRU`` in float32 (cuDNN on a GPU with TF32 off)
    torch:tf32              the same with TF32 allowed (GPU only)
    jax_experimental_rnn    ``jax.experimental.rnn.lstm`` (cuDNN; GPU and LSTM only)

All take the reference's weights (``rnn_jax`` layout, converted) and inputs and return outputs
in the reference's layout, so ``rnn_jax.bench.harness.run_point`` can check them before timing.
An rnn_jax record's ``path`` is read from the compiled program where a kernel shows there (a
Triton or Mosaic GPU custom call: Pallas; cuDNN's RNN call: cuDNN), else it is the runner's
choice for the method (``fused`` or ``scan``; Pallas off a GPU runs in interpret mode); where
Pallas runs, its ``kernel`` is the launch configuration (``pallas_launch.Kernel``'s fields),
which ``rnn_jax.bench.gpu_speed`` turns into ``auto``'s measured choice.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

import rnn_jax as rj
from rnn_jax.bench.harness import Built, Skip, cpu_threads
from rnn_jax.loops import cudnn, fused, gpu_fit, pallas
from rnn_jax.loops.pallas_launch import Kernel

METHODS = ("auto", "scan", "fused", "pallas", "cudnn", "deer", "quasi_deer")
_VARIANT = re.compile(r"^(?P<method>" + "|".join(METHODS) + r")"
                      r"(?P<u>-resident|-streamed|-prefetch)?(-u(?P<unroll>\d+))?(?P<hi>-highest)?$")
# custom-call targets in a compiled program that name the kernel that ran
KERNEL_CALLS = (("dnn_rnn", "cudnn"), ("triton", "pallas (Triton)"),
                ("mosaic_gpu", "pallas (Mosaic GPU)"))


def _device():
    return str(jax.devices()[0].device_kind)


def _jax_built(problem, data, forward, precision):
    """Compiles a JAX forward ``f(params, xs) -> hs`` or its train step, ahead of time."""
    params = jax.device_put(data["params"])
    xs = jax.device_put(data["xs"])
    if problem.mode == "train":
        fn = jax.value_and_grad(lambda p, x: jnp.mean(forward(p, x) ** 2))
    else:
        fn = forward
    start = time.perf_counter()
    with jax.default_matmul_precision(None if precision == "default" else precision):
        compiled = jax.jit(fn).lower(params, xs).compile()
    compile_s = time.perf_counter() - start
    peak = None
    mem = compiled.memory_analysis()
    if mem is not None:
        peak = int(getattr(mem, "peak_memory_in_bytes", 0) or 0) or int(
            mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes)
    return compiled, params, xs, compile_s, peak


def _jax_result(mode, to_rj=lambda g: g):
    def result(out):
        if mode == "forward":
            return {"hs": np.asarray(out)}
        loss, grads = out
        return {"loss": np.asarray(loss), **jax.tree.map(np.asarray, to_rj(grads))}
    return result


def ran_path(method: str, cell, params, compiled_text: str) -> str:
    """The time loop a compiled ``rj.rnn`` program runs (see the module docstring)."""
    calls = set(re.findall(r'custom_call_target="([^"]+)"', compiled_text))
    for key, name in KERNEL_CALLS:
        if any(key in c for c in calls):
            return name
    path = fused.select(method, cell, params)
    if path == "pallas" and jax.default_backend() != "gpu":
        return "pallas (interpret)"
    return path


def rnn_jax(variant: str = ""):
    """Builder for ``rj.rnn``; ``variant`` as ``<method>[-u<unroll>][-highest]`` or ``""``."""
    match = _VARIANT.match(variant or "auto")
    if match is None:
        raise ValueError(f"rnn_jax variant {variant!r} is not <method>[-u<unroll>][-highest] "
                         f"with method in {METHODS}")
    method, unroll = match["method"], int(match["unroll"] or 1)
    precision = "highest" if match["hi"] else "default"
    if match["u"] and method != "pallas":
        raise ValueError(f"rnn_jax variant {variant!r}: -resident/-streamed/-prefetch apply to "
                         "pallas only")
    kind = match["u"] and match["u"][1:]  # None: the runner's own choice

    def build(problem, data):
        cell = problem.rj_cell
        if method == "cudnn":
            if problem.cell != "lstm":
                raise Skip("cuDNN through jax.experimental.rnn has only the LSTM")
            if not cudnn.available():
                raise Skip("needs GPU (jax's CUDA plugin, cuDNN)")

        def forward(p, x):
            return rj.rnn(cell, p, x, method=method, unroll=unroll)[0]

        kernel = None if kind is None else _pallas_kernel(cell, kind)
        if kernel is not None:
            forward = _pallas_forward(cell, kernel)

        compiled, params, xs, compile_s, peak = _jax_built(problem, data, forward, precision)
        path = ran_path(method, cell, data["params"], compiled.as_text())
        if path.startswith("pallas"):  # which kernel: the runner's own choice unless fixed
            kernel = kernel or gpu_fit.launch_kernel(method, cell, jnp.float32)
            path += _kernel_label(kernel)
        else:
            kernel = None
        return Built(lambda: compiled(params, xs), jax.block_until_ready,
                     _jax_result(problem.mode), compile_s, peak, _device(), precision,
                     f"{path}, unroll {unroll}", (compiled, (params, xs)),
                     None if kernel is None else dataclasses.asdict(kernel))

    return build


def _pallas_kernel(cell, kind):
    """The first fitting configuration of that kind ("resident", "streamed", "prefetch") in
    ``gpu_fit``'s table (on a GPU: none fits -> Skip; off a GPU, in interpret mode, any
    configuration runs)."""
    resident, prefetch = kind != "streamed", kind == "prefetch"
    kernel = gpu_fit.pallas_kernel_for(cell, jnp.float32, resident=resident, prefetch=prefetch)
    if kernel is None:
        if jax.default_backend() == "gpu":
            raise Skip(f"no {kind} kernel fits {type(cell).__name__} H={cell.hidden_size} "
                       "(rnn_jax.loops.gpu_fit)")
        kernel = Kernel(resident=resident, prefetch=prefetch)
    return kernel


def _kernel_label(kernel) -> str:
    if kernel is None:
        return ""
    prefetch = ", prefetch" if kernel.prefetch else ""
    tile = f" in {kernel.tile}-unit tiles" if kernel.tile else ""
    return (f", {'resident' if kernel.resident else 'streamed'} U{tile}{prefetch}, "
            f"{kernel.num_warps} warps")


def _pallas_forward(cell, kernel):
    """``rj.rnn(method="pallas")`` on this kernel configuration."""
    def forward(p, x):
        carry = cell.initial_carry(x.shape[:-2], x.dtype)
        hs = pallas.run(cell, p, jnp.moveaxis(x, -2, 0), carry, None, kernel=kernel)[0]
        return jnp.moveaxis(hs, 0, -2)

    return forward


# -- flax.linen -------------------------------------------------------------------------------
def _flax_params(name, p):
    """rnn_jax weights -> the flax cell's parameter tree (and back with ``_rj_from_flax``)."""
    if name == "elman":
        return {"i": {"kernel": p["W"], "bias": p["b"]}, "h": {"kernel": p["U"]}}
    if name == "lstm":
        w, u, b = (np.split(p[k], 4, axis=-1) for k in ("W", "U", "b"))
        tree = {f"i{g}": {"kernel": w[k]} for k, g in enumerate("ifgo")}
        tree.update({f"h{g}": {"kernel": u[k], "bias": b[k]} for k, g in enumerate("ifgo")})
        return tree
    w, u, b = (np.split(p[k], 3, axis=-1) for k in ("W", "U", "b"))
    tree = {f"i{g}": {"kernel": w[k], "bias": b[k]} for k, g in enumerate("rzn")}
    tree.update({f"h{g}": {"kernel": u[k]} for k, g in enumerate("rzn")})
    tree["hn"]["bias"] = p["b_hn"]
    return tree


def _rj_from_flax(name, t):
    if name == "elman":
        return {"W": t["i"]["kernel"], "U": t["h"]["kernel"], "b": t["i"]["bias"]}
    gates = "ifgo" if name == "lstm" else "rzn"
    out = {"W": jnp.concatenate([t[f"i{g}"]["kernel"] for g in gates], axis=-1),
           "U": jnp.concatenate([t[f"h{g}"]["kernel"] for g in gates], axis=-1)}
    if name == "lstm":
        out["b"] = jnp.concatenate([t[f"h{g}"]["bias"] for g in gates])
    else:
        out["b"] = jnp.concatenate([t[f"i{g}"]["bias"] for g in gates])
        out["b_hn"] = t["hn"]["bias"]
    return out


def flax_linen(problem, data):
    """``flax.linen.RNN`` with SimpleCell / OptimizedLSTMCell / GRUCell (unroll 1)."""
    import flax.linen as nn

    cls = {"elman": nn.SimpleCell, "lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}[problem.cell]
    model = nn.RNN(cls(features=problem.H))
    tree = _flax_params(problem.cell, data["params"])
    flax_data = {"params": {"cell": tree}, "xs": data["xs"]}

    def forward(p, x):
        return model.apply({"params": p}, x)

    compiled, params, xs, compile_s, peak = _jax_built(problem, flax_data, forward, "default")
    to_rj = lambda g: _rj_from_flax(problem.cell, g["cell"])  # noqa: E731
    return Built(lambda: compiled(params, xs), jax.block_until_ready,
                 _jax_result(problem.mode, to_rj), compile_s, peak, _device(), "default",
                 f"nn.RNN({cls.__name__}), lax.scan", (compiled, (params, xs)))


# -- PyTorch ----------------------------------------------------------------------------------
def torch(tf32: bool = False):
    """Builder for ``torch.nn.RNN/LSTM/GRU`` (oneDNN / ATen on a CPU, cuDNN on a GPU)."""

    def build(problem, data):
        if importlib.util.find_spec("torch") is None:
            raise Skip("torch is not installed")
        import torch as th

        cuda = th.cuda.is_available() and jax.default_backend() == "gpu"
        if tf32 and not cuda:
            raise Skip("TF32 needs a CUDA GPU")
        dev = th.device("cuda" if cuda else "cpu")
        if cuda:
            th.backends.cuda.matmul.allow_tf32 = tf32
            th.backends.cudnn.allow_tf32 = tf32
        else:
            th.set_num_threads(cpu_threads())
        cls = {"elman": th.nn.RNN, "lstm": th.nn.LSTM, "gru": th.nn.GRU}[problem.cell]
        mod = cls(problem.H, problem.H, batch_first=True).to(dev)
        p = data["params"]
        bias_hh = np.zeros_like(p["b"])
        if problem.cell == "gru":
            bias_hh[2 * problem.H:] = p["b_hn"]
        with th.no_grad():
            for name, value in (("weight_ih_l0", p["W"].T), ("weight_hh_l0", p["U"].T),
                                ("bias_ih_l0", p["b"]), ("bias_hh_l0", bias_hh)):
                getattr(mod, name).copy_(th.tensor(np.asarray(value)))
        xs = th.tensor(np.asarray(data["xs"])).to(dev)

        def step():
            if problem.mode == "forward":
                with th.inference_mode():
                    return mod(xs)[0]
            mod.zero_grad(set_to_none=True)
            loss = mod(xs)[0].pow(2).mean()
            loss.backward()
            return loss.detach()

        def sync(out):
            if cuda:
                th.cuda.synchronize()

        def result(out):
            if problem.mode == "forward":
                return {"hs": out.cpu().numpy()}
            grad = {n: getattr(mod, n).grad.cpu().numpy()
                    for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")}
            got = {"loss": out.cpu().numpy(), "W": grad["weight_ih_l0"].T,
                   "U": grad["weight_hh_l0"].T, "b": grad["bias_ih_l0"]}
            if problem.cell == "gru":
                got["b_hn"] = grad["bias_hh_l0"][2 * problem.H:]
            return got

        peak = None
        if cuda:
            th.cuda.reset_peak_memory_stats()
            sync(step())
            peak = int(th.cuda.max_memory_allocated())
        if cuda:
            path = "cuDNN"
        else:
            path = f"ATen CPU, {th.get_num_threads()} threads"
            if problem.cell == "lstm" and th.backends.mkldnn.is_available():
                path = f"oneDNN (mkldnn) LSTM, {th.get_num_threads()} threads"
        name = th.cuda.get_device_name() if cuda else "cpu"
        return Built(step, sync, result, None, peak, name, "tf32" if tf32 else "float32", path)

    return build


# -- jax.experimental.rnn (cuDNN LSTM) --------------------------------------------------------
def jax_experimental_rnn(problem, data):
    """``jax.experimental.rnn.lstm``: cuDNN's LSTM through JAX (GPU only, LSTM only)."""
    if jax.default_backend() != "gpu":
        raise Skip("needs GPU")
    if problem.cell != "lstm":
        raise Skip("jax.experimental.rnn has only an LSTM")
    from jax.experimental import rnn as jrnn

    p, h = data["params"], problem.H
    # cuDNN's canonical layout, one layer, one direction: W_ih [4H, I], W_hh [4H, H], b_ih, b_hh.
    flat = np.concatenate([p["W"].T.ravel(), p["U"].T.ravel(), p["b"], np.zeros_like(p["b"])])
    zeros = jnp.zeros((1, problem.B, h), jnp.float32)
    lengths = jnp.full((problem.B,), problem.T, jnp.int32)

    def forward(weights, x):
        return jrnn.lstm(x, zeros, zeros, weights, lengths, input_size=h, hidden_size=h,
                         num_layers=1, dropout=0.0, bidirectional=False)[0]

    def to_rj(g):
        w_ih, w_hh, b_ih, _ = jrnn.unpack_lstm_weights(g, h, h, 1, False)
        return {"W": w_ih[0].T, "U": w_hh[0].T, "b": b_ih[0]}

    compiled, weights, xs, compile_s, peak = _jax_built(
        problem, {"params": jnp.asarray(flat, jnp.float32), "xs": data["xs"]}, forward,
        "default")
    return Built(lambda: compiled(weights, xs), jax.block_until_ready,
                 _jax_result(problem.mode, to_rj), compile_s, peak, _device(), "default",
                 "cuDNN via jax.experimental.rnn", (compiled, (weights, xs)))


def builder(name: str):
    """The builder for an implementation name (see the module docstring)."""
    if name == "rnn_jax" or name.startswith("rnn_jax:"):
        return rnn_jax(name.partition(":")[2])
    fixed = {"flax_linen": flax_linen, "torch": torch(), "torch:tf32": torch(tf32=True),
             "jax_experimental_rnn": jax_experimental_rnn}
    if name not in fixed:
        raise ValueError(f"implementation {name!r} is unknown; expected rnn_jax, "
                         f"rnn_jax:<method>[-u<unroll>][-highest] or one of {sorted(fixed)}")
    return fixed[name]


def get_builders(names) -> dict:
    """``{name: builder}`` for a list of names, failing on the first unknown one."""
    return {name: builder(name) for name in names}
