"""The GPU path, checked on the CPU: what ``method="auto"`` runs on an H200 lowers for "cuda",
and, with ``triton`` installed, every Triton kernel in it compiles for sm_90 within the GPU's
shared memory, without spills, using exactly the resources the committed fit table records.

Run in both environments by ``make test``: the main one (the project's jax) and ``.venv-gpu``
(the GPU machine's jax and triton, which compiles the kernels).
"""

import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import pytest

import rnn_jax as rj
from rnn_jax.bench import gpu_compile
from rnn_jax.loops import gpu_fit
from rnn_jax.rnn import path_of

jax.config.update("jax_numpy_rank_promotion", "raise")

try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

CELLS = {"elman_tanh": rj.Elman, "elman_relu": lambda h: rj.Elman(h, activation="relu"),
         "lstm": rj.LSTM, "gru": rj.GRU}
HIDDEN = (32, 64, 100, 128, 256, 512)
DTYPES = ("float32", "bfloat16", "float64")
BATCH, STEPS, FEATURES = 32, 8, 8  # the shapes the table was measured at (same Triton IR)
_compiled = {}  # Triton IR digest -> resources: kernels shared by several configurations


def _cell(name, hidden, dtype):
    cell = CELLS[name](hidden)
    if dtype == "bfloat16":
        cell = dataclasses.replace(cell, compute_dtype=jnp.bfloat16)
    return cell


def _program(cell, state_dtype, method="auto"):
    """Gradient of uni- (unmasked) and bidirectional (masked, so reverse too) runs."""
    def loss(params, xs, lengths):
        hs, _ = rj.rnn(cell, params["fwd"], xs, method=method)
        hb, _ = rj.bidirectional(cell, cell, params, xs, lengths=lengths, method=method)
        return jnp.sum(hs) + jnp.sum(hb)

    p = jax.eval_shape(lambda: cell.init(jax.random.key(0), FEATURES))
    p = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, state_dtype), p)
    xs = jax.ShapeDtypeStruct((BATCH, STEPS, FEATURES), state_dtype)
    lengths = jax.ShapeDtypeStruct((BATCH,), jnp.int32)
    return jax.grad(loss), {"fwd": p, "bwd": p}, xs, lengths


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CELLS))
def test_auto_lowers_for_cuda_and_its_kernels_fit_sm90(name, dtype):
    state_dtype = jnp.float64 if dtype == "float64" else jnp.float32
    with jax.enable_x64(dtype == "float64"):
        for hidden in HIDDEN:
            cell = _cell(name, hidden, dtype)
            lowered = gpu_compile.lower_for_cuda(*_program(cell, state_dtype))
            kernels = gpu_compile.triton_kernels(lowered)
            chosen = gpu_fit.kernel_for(cell, state_dtype)
            # auto takes a kernel exactly where the table says it fits: a forward and a
            # backward kernel for the unidirectional run, and for the bidirectional one, whose
            # two directions share each launch (rnn_jax.loops.pallas.run_bidirectional)
            assert len(kernels) == (4 if chosen else 0), (hidden, len(kernels), chosen)
            if kernels:
                _check_compiled(name, hidden, dtype, cell, state_dtype, chosen, kernels)


def _check_compiled(name, hidden, dtype, cell, state_dtype, chosen, kernels):
    """Each kernel compiles for sm_90 within the limits, with the table's own numbers."""
    if not HAVE_TRITON:
        return
    table = {k: v for opt in gpu_fit.entry(cell, state_dtype)
             if opt["kernel"] == dataclasses.asdict(chosen)
             for k, v in opt["kernels"].items()}
    for kernel in kernels:
        digest = hashlib.sha256(kernel["ir"].encode()).hexdigest()
        if digest not in _compiled:
            _compiled[digest] = gpu_compile.compile_kernel(kernel)
        got = _compiled[digest]
        print(name, hidden, dtype, chosen, kernel["name"], got)
        assert got["shared"] <= gpu_fit.SHARED_MEMORY_LIMIT
        assert got["spills"] == 0
        if jax.__version__ == gpu_compile.TABLE_JAX_VERSION:  # the table's own build
            want = table[kernel["name"]]
            assert (got["shared"], got["registers"], got["spills"]) == (
                want["shared"], want["registers"], want["spills"]), kernel["name"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CELLS))
def test_method_pallas_streams_u_where_only_that_fits_and_refuses_where_nothing_does(name,
                                                                                      dtype):
    """Where auto has no resident kernel, method='pallas' lowers the streamed kernel the table
    says fits (and it compiles within sm_90's limits), or raises a ValueError naming the cell
    before anything is lowered."""
    state_dtype = jnp.float64 if dtype == "float64" else jnp.float32
    with jax.enable_x64(dtype == "float64"):
        for hidden in HIDDEN:
            cell = _cell(name, hidden, dtype)
            if gpu_fit.kernel_for(cell, state_dtype) is not None:
                continue  # auto's kernels: the test above
            chosen = gpu_fit.pallas_kernel_for(cell, state_dtype)
            program = _program(cell, state_dtype, method="pallas")
            if chosen is None:
                want = (rf"no kernel for {type(cell).__name__}\(hidden_size={hidden}\) "
                        rf"with a {jnp.dtype(state_dtype).name} state fits")
                with pytest.raises(ValueError, match=want):
                    gpu_compile.lower_for_cuda(*program)
                continue
            assert not chosen.resident
            kernels = gpu_compile.triton_kernels(gpu_compile.lower_for_cuda(*program))
            assert len(kernels) == 4, (hidden, len(kernels))
            _check_compiled(name, hidden, dtype, cell, state_dtype, chosen, kernels)


@pytest.mark.parametrize("setting, label, ir", [(None, "tf32", "tf32"),
                                                 ("highest", "ieee", "ieee"),
                                                 ("float32", "ieee", "ieee"),
                                                 ("tensorfloat32", "tf32", "tf32")])
def test_kernels_follow_the_callers_matmul_precision(setting, label, ir):
    cell = rj.LSTM(32)
    with jax.default_matmul_precision(setting):
        fn, params, xs, lengths = _program(cell, jnp.float32)
        kernels = gpu_compile.triton_kernels(gpu_compile.lower_for_cuda(fn, params, xs, lengths))
        with gpu_compile.abstract_gpu():
            described = path_of(cell, params["fwd"], xs)
    assert described == {"path": "pallas", "precision": label}
    precisions = {p for k in kernels for p in gpu_compile.input_precisions(k)}
    assert precisions == {ir}


def test_on_the_cpu_auto_stays_off_the_kernels():
    cell, params = rj.GRU(32), rj.GRU(32).init(jax.random.key(0), 3)
    xs = jnp.zeros((2, 4, 3))
    assert path_of(cell, params, xs)["path"] == "fused"
    assert path_of(cell, params, xs, method="pallas")["path"] == "pallas"
