"""Benchmark helpers: problems, equivalence checks, interleaved timing, implementation builders."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import importlib.util  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax.bench import harness, peers  # noqa: E402

HAS_TORCH = importlib.util.find_spec("torch") is not None


def fake(counter, name, value=1.0):
    """A Built that counts its calls and returns a constant result."""

    def step():
        counter[name] = counter.get(name, 0) + 1
        return value

    return harness.Built(step, lambda out: None, lambda out: {"hs": np.full((2, 3, 4), out)},
                       None, None, "cpu", "float32", "fake")


def test_problem_and_size_validation():
    with pytest.raises(ValueError, match="cell='rnn' is not benchmarked"):
        harness.Problem("rnn", "train", 2, 3, 4)
    with pytest.raises(ValueError, match="mode='backward' is not a mode"):
        harness.Problem("lstm", "backward", 2, 3, 4)
    with pytest.raises(ValueError, match="T must be a positive int, got 0"):
        harness.Problem("lstm", "train", 2, 0, 4)
    assert harness.parse_size("32x128x64") == (32, 128, 64)
    for bad in ("32x128", "axbxc", "0x1x1"):
        with pytest.raises(ValueError, match="BxTxH"):
            harness.parse_size(bad)


def test_suites_hold_the_issue_sizes():
    assert harness.SUITES["cpu"] == ((32, 128, 128), (32, 256, 256), (8, 1024, 64))
    assert harness.SUITES["gpu"] == ((64, 256, 128), (64, 512, 512), (64, 512, 1024),
                                   (256, 512, 1024), (16, 2048, 256))


def test_relative_error_and_tolerances():
    want = {"hs": np.array([1.0, -2.0]), "U": np.array([[4.0]])}
    assert harness.relative_error({k: v.copy() for k, v in want.items()}, want) == 0.0
    got = {"hs": np.array([1.0, -2.5]), "U": np.array([[4.0]])}
    assert harness.relative_error(got, want) == pytest.approx(0.25)
    assert harness.relative_error({"hs": want["hs"]}, want) == float("inf")  # U missing
    assert harness.relative_error({**want, "U": np.ones((2, 1))}, want) == float("inf")
    assert harness.relative_error({**want, "U": np.array([[np.nan]])}, want) == float("inf")
    assert harness.tolerance("float32", "gpu") == harness.tolerance("default", "cpu")
    assert harness.tolerance("tf32", "gpu") == harness.tolerance("default", "gpu") > 1e-2


def test_interleaved_timing_calls_every_implementation_alike():
    counter = {}
    built = {name: fake(counter, name) for name in ("a", "b", "c")}
    times, calls = harness.time_interleaved(built, warmup=2, repeats=5)
    assert counter == {"a": 7, "b": 7, "c": 7} and calls == {"a": 1, "b": 1, "c": 1}
    assert all(len(t) == 5 and min(t) >= 0 for t in times.values())
    counter.clear()
    times, calls = harness.time_interleaved(built, warmup=2, repeats=5, min_sample_s=1e-3)
    assert all(counter[n] == 2 + 5 * calls[n] and calls[n] > 1 for n in built)


def test_run_point_rejects_a_wrong_implementation_before_timing():
    problem = harness.Problem("elman", "forward", 2, 3, 4)
    counter = {}

    def wrong(problem, data):  # the right shape, the wrong numbers
        return fake(counter, "wrong")

    def skipping(problem, data):
        raise harness.Skip("not here")

    out = harness.run_point(problem, {"rnn_jax": peers.builder("rnn_jax"), "wrong": wrong,
                                    "away": skipping}, warmup=1, repeats=3)
    assert [r["impl"] for r in out["records"]] == ["rnn_jax"]
    assert out["rejected"][0]["impl"] == "wrong" and out["rejected"][0]["max_rel_err"] > 0.1
    assert counter == {"wrong": 1}  # called once for the check, never timed
    assert out["skipped"] == [{"impl": "away", "cell": "elman", "mode": "forward", "B": 2,
                               "T": 3, "H": 4, "reason": "skipped: not here"}]
    record = out["records"][0]
    assert set(harness.RECORD_KEYS) <= set(record)
    assert record["tok_s"] == pytest.approx(2 * 3 / (record["ms"] / 1e3))
    assert record["ms_min"] <= record["ms"] and record["repeats"] == 3
    assert record["max_rel_err"] == 0.0 and record["path"] == "fused, unroll 1"


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
def test_every_implementation_computes_the_reference_train_step(cell):
    """Weight layouts converted right: losses and all gradients agree (nothing rejected)."""
    names = ["rnn_jax", "rnn_jax:scan-u2", "flax_linen"] + (["torch"] if HAS_TORCH else [])
    out = harness.run_point(harness.Problem(cell, "train", 3, 5, 4, seed=1),
                          peers.get_builders(names), warmup=0, repeats=1)
    assert out["rejected"] == []
    assert sorted(r["impl"] for r in out["records"]) == sorted(names)
    assert all(r["max_rel_err"] < 1e-5 for r in out["records"])


def test_forward_outputs_agree():
    names = ["rnn_jax", "flax_linen"] + (["torch"] if HAS_TORCH else [])
    out = harness.run_point(harness.Problem("gru", "forward", 2, 4, 3), peers.get_builders(names),
                          warmup=0, repeats=1)
    assert out["rejected"] == [] and len(out["records"]) == len(names)


def test_builder_names():
    assert peers.builder("rnn_jax:scan-u8-highest") is not None
    assert peers.builder("rnn_jax:fused") is not None
    for bad in ("rnn_jax:fast", "rnn_jax:scan-u", "cudnn"):
        with pytest.raises(ValueError, match="unknown|variant"):
            peers.builder(bad)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the CPU skips")
def test_gpu_only_implementations_are_skipped_on_a_cpu():
    problem = harness.Problem("lstm", "train", 2, 3, 4)
    data = harness.problem_data(problem)
    with pytest.raises(harness.Skip, match="needs GPU"):
        peers.jax_experimental_rnn(problem, data)
    if HAS_TORCH:
        with pytest.raises(harness.Skip, match="TF32 needs a CUDA GPU"):
            peers.builder("torch:tf32")(problem, data)


def test_a_failing_implementation_is_recorded_and_the_others_go_on():
    """Errors at build, at the check and during timing each land in ``failed``; the working
    implementation is still timed."""
    problem = harness.Problem("elman", "forward", 2, 3, 4)
    good = peers.builder("rnn_jax:scan")

    def broken_build(problem, data):
        raise RuntimeError("no kernel for this\nsecond line")

    def broken_step(problem, data):
        b = good(problem, data)
        return b._replace(step=lambda: 1 / 0)

    def broken_later(problem, data):
        b, calls = good(problem, data), []

        def step():
            calls.append(1)
            if len(calls) > 2:
                raise MemoryError("out of memory")
            return b.step()

        return b._replace(step=step)

    out = harness.run_point(problem, {"build": broken_build, "check": broken_step,
                                      "time": broken_later, "scan": good},
                            warmup=1, repeats=3)
    assert [r["impl"] for r in out["records"]] == ["scan"]
    failed = {f["impl"]: f for f in out["failed"]}
    assert failed["build"]["stage"] == "build"
    assert failed["build"]["error"] == "RuntimeError: no kernel for this"
    assert failed["check"]["stage"] == "check" and "ZeroDivisionError" in failed["check"]["error"]
    assert failed["time"]["stage"] == "time" and "MemoryError" in failed["time"]["error"]
    assert failed["time"]["H"] == 4 and failed["time"]["cell"] == "elman"


def test_the_path_named_is_the_one_in_the_compiled_program():
    cell = rj.LSTM(4)
    params = cell.init(jax.random.key(0), 4)
    kernel = 'custom-call(f32[2]{0} %p), custom_call_target="__gpu$xla.gpu.triton"'
    assert peers.ran_path("auto", cell, params, kernel) == "pallas (Triton)"
    assert peers.ran_path("auto", cell, params, 'custom_call_target="cudnn_rnn_ffi"') == "cudnn"
    assert peers.ran_path("auto", cell, params, "") == "fused"
    assert peers.ran_path("auto", rj.LSTM(4, compute_dtype=jnp.bfloat16), params, "") == "scan"
    assert peers.ran_path("quasi_deer", cell, params, "") == "quasi_deer"


def test_kernel_kind_variants_name_pallas_only():
    peers.get_builders(["rnn_jax:pallas-streamed-highest", "rnn_jax:pallas-resident-u2",
                        "rnn_jax:pallas-prefetch"])
    with pytest.raises(ValueError, match="apply to pallas only"):
        peers.get_builders(["rnn_jax:scan-streamed"])


def test_every_method_has_a_name_and_records_its_path_and_precision():
    names = [f"rnn_jax:{m}" for m in ("pallas", "deer", "quasi_deer-highest", "cudnn",
                                        "pallas-resident", "pallas-streamed", "pallas-prefetch")]
    out = harness.run_point(harness.Problem("lstm", "train", 2, 3, 4), peers.get_builders(names),
                            warmup=0, repeats=1)
    assert out["failed"] == [] and out["rejected"] == []
    paths = {r["impl"]: r["path"] for r in out["records"]}
    assert paths["rnn_jax:deer"] == "deer, unroll 1"
    assert paths["rnn_jax:quasi_deer-highest"] == "quasi_deer, unroll 1"
    if jax.default_backend() == "cpu":
        # the kernel named: the table's first fit for H = 4 (padded to 16), or the fixed kind
        assert paths["rnn_jax:pallas"] == "pallas (interpret), resident U, 4 warps, unroll 1"
        assert paths["rnn_jax:pallas-streamed"] == (
            "pallas (interpret), streamed U, 4 warps, unroll 1")
        assert paths["rnn_jax:pallas-prefetch"] == (
            "pallas (interpret), resident U, prefetch, 4 warps, unroll 1")
        kernels = {r["impl"]: r["kernel"] for r in out["records"]}
        assert kernels["rnn_jax:pallas-prefetch"]["prefetch"] is True
        assert kernels["rnn_jax:pallas-streamed"]["resident"] is False
        assert kernels["rnn_jax:deer"] is None  # no Pallas launch
        assert out["skipped"][0]["impl"] == "rnn_jax:cudnn"
    for r in out["records"]:
        assert r["precision"] == ("highest" if r["impl"].endswith("-highest") else "default")
        assert r["matmul"] == harness.matmul(r["precision"], jax.default_backend())
    assert harness.matmul("default", "gpu") == "tf32" == harness.matmul("tf32", "gpu")
    assert harness.matmul("highest", "gpu") == "float32" == harness.matmul("default", "cpu")
