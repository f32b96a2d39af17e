"""auto's measured kernel choice: gpu_check records -> the speed table -> gpu_fit.kernel_for."""

import dataclasses
import importlib.util
import json

import jax.numpy as jnp
import pytest

import rnn_jax as rj
from rnn_jax.bench import gpu_speed
from rnn_jax.loops import gpu_fit
from rnn_jax.loops.pallas_launch import Kernel

RESIDENT = dataclasses.asdict(Kernel())
PREFETCH = dataclasses.asdict(Kernel(prefetch=True))
STREAMED = dataclasses.asdict(Kernel(resident=False))


def _record(cell, size, ms, path, kernel=None, precision="default", mode="train"):
    b, t, h = (int(n) for n in size.split("x"))
    return {"impl": "x", "cell": cell, "mode": mode, "B": b, "T": t, "H": h, "ms": ms,
            "precision": precision, "path": path, "kernel": kernel}


def _kernel(config, ms, cell="lstm", size="16x1024x64", **kw):
    return _record(cell, size, ms, "pallas (Triton), resident U, 4 warps, unroll 1", config, **kw)


def _results(records, backend="gpu"):
    return {"metrics": {"records": records},
            "env": {"backend": backend, "devices": ["NVIDIA H200"], "jax": "0.11.2"}}


def test_the_fastest_configuration_wins_by_its_worst_ratio_over_the_sizes():
    records = [
        _record("lstm", "16x1024x64", 20.0, "fused, unroll 1"),
        _record("lstm", "16x1024x64", 30.0, "scan, unroll 1"),
        _record("lstm", "64x256x64", 10.0, "fused, unroll 1"),
        # prefetch is faster at the first size, slower than fused at the second
        _kernel(PREFETCH, 5.0), _kernel(PREFETCH, 11.0, size="64x256x64"),
        # resident wins at neither size by much, but at both (two records: their mean)
        _kernel(RESIDENT, 7.0), _kernel(RESIDENT, 9.0), _kernel(RESIDENT, 9.0, size="64x256x64"),
        # streamed was timed at one size only: not a candidate
        _kernel(STREAMED, 1.0),
        # these do not count: highest precision, unroll 2, a forward-only record
        _kernel(STREAMED, 0.5, size="64x256x64", precision="highest"),
        _record("lstm", "64x256x64", 0.1, "fused, unroll 2"),
        _kernel(STREAMED, 0.5, size="64x256x64", mode="forward"),
    ]
    (key, entry), = gpu_speed.choose(_results(records)).items()
    assert key == ("lstm", 64, "float32")
    assert entry["kernel"] == RESIDENT
    assert entry["ratio"] == pytest.approx(0.9)
    assert entry["timed"]["16x1024x64"]["pallas resident 4w"] == pytest.approx(8.0)
    assert entry["timed"]["16x1024x64"]["fused"] == 20.0
    assert entry["device"] == "NVIDIA H200"


def test_a_tiled_configuration_is_its_own_candidate():
    """Streamed in tiles and streamed whole are different configurations, timed and named
    apart (H = 256 in float32: only the tiled one fits)."""
    tiled = dataclasses.asdict(Kernel(resident=False, tile=128, num_warps=8))
    records = [_record("elman", "64x512x256", 10.0, "fused, unroll 1"),
               _kernel(tiled, 6.0, cell="elman", size="64x512x256"),
               _kernel(STREAMED, 8.0, cell="elman", size="64x512x256")]
    (key, entry), = gpu_speed.choose(_results(records)).items()
    assert key == ("elman_tanh", 256, "float32")
    assert entry["kernel"] == tiled and entry["ratio"] == pytest.approx(0.6)
    assert entry["timed"]["64x512x256"] == {"fused": 10.0, "pallas streamed tile 128 8w": 6.0,
                                            "pallas streamed 4w": 8.0}
    cell = rj.Elman(256)
    assert gpu_fit.kernel_for(cell, jnp.float32, choices={key: entry}) == Kernel(**tiled)


def test_no_kernel_where_none_beat_the_scans_and_padded_h_shares_a_key():
    records = [_record("gru", "64x256x100", 4.0, "scan, unroll 1"),
               _kernel(RESIDENT, 4.4, cell="gru", size="64x256x100"),
               # a key with only kernels timed: nothing to compare with, no entry
               _kernel(RESIDENT, 1.0, cell="elman", size="64x256x128")]
    choices = gpu_speed.choose(_results(records))
    assert list(choices) == [("gru", 128, "float32")]
    assert choices[("gru", 128, "float32")]["kernel"] is None
    assert choices[("gru", 128, "float32")]["ratio"] == pytest.approx(1.1)
    cell = rj.GRU(100)
    assert gpu_fit.kernel_for(cell, jnp.float32, choices=choices) is None
    assert gpu_fit.kernel_for(cell, jnp.float32, choices={}) is not None  # untimed: resident


def test_cpu_results_are_refused():
    records = [_record("lstm", "4x6x8", 1.0, "scan, unroll 1"), _kernel(RESIDENT, 0.5)]
    with pytest.raises(ValueError, match="results must come from a GPU run.*got backend 'cpu'"):
        gpu_speed.choose(_results(records, backend="cpu"))


def test_the_written_table_imports_and_keeps_untimed_keys(tmp_path, monkeypatch):
    records = [_record("elman", "64x256x128", 3.8, "fused, unroll 1"),
               _kernel(PREFETCH, 1.2, cell="elman", size="64x256x128")]
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_results(records)))
    earlier = {("gru", 64, "float32"): {"kernel": None, "ratio": 1.2}}
    monkeypatch.setattr(gpu_speed.gpu_speed_table, "CHOICES", earlier)
    out = tmp_path / "table.py"
    gpu_speed.main(["--results", str(results), "--write", str(out)])
    spec = importlib.util.spec_from_file_location("table", out)
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    assert table.CHOICES[("gru", 64, "float32")] == earlier[("gru", 64, "float32")]
    written = table.CHOICES[("elman_tanh", 128, "float32")]
    assert written["kernel"] == PREFETCH and written["source"] == str(results)
    cell = rj.Elman(128)
    assert gpu_fit.kernel_for(cell, jnp.float32, choices=table.CHOICES) == Kernel(**PREFETCH)
