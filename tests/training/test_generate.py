"""Tests for rnn_jax.training.generate: greedy decoding against a step-by-step oracle that re-reads
the
whole text each step, sampling frequencies against softmax(z / tau), reproducibility by key, and
a tiny trained character model writing valid text."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax import tasks  # noqa: E402
from rnn_jax.training import generate, train  # noqa: E402

V = 7
MODEL = rj.SequenceModel(rj.LSTM(8), V, vocab_size=V, num_layers=2)
PARAMS = jax.jit(MODEL.init)(jax.random.key(0))
PROMPT = np.array([1, 4, 2], np.int32)


def test_greedy_equals_argmax_of_the_model_rerun_on_the_whole_prefix():
    prompts = np.stack([PROMPT, PROMPT[::-1]])
    out = np.asarray(generate.generate(jax.random.key(5), MODEL, PARAMS, prompts, 6,
                                       temperature=0.0))
    assert out.dtype == np.int32 and out.shape == (2, 6)
    # Oracle without carries: the model reads prompt + generated text from the zero state in
    # one pass; being causal, its logits at position t are those of the prefix ending at t.
    logits = jax.jit(MODEL.apply)(PARAMS, jnp.concatenate([prompts, out], axis=1))
    p = len(PROMPT)
    np.testing.assert_array_equal(out, np.argmax(logits[:, p - 1:-1], axis=-1))


def test_sampling_is_reproducible_by_key_and_follows_softmax_over_temperature():
    draw = jax.jit(jax.vmap(lambda k: generate.generate(k, MODEL, PARAMS, PROMPT, 3,
                                                        temperature=2.0)))
    keys = jax.random.split(jax.random.key(1), 4000)
    tokens = np.asarray(draw(keys))
    assert tokens.shape == (4000, 3)
    np.testing.assert_array_equal(tokens, np.asarray(draw(keys)))  # same keys, same text
    # The first token is a draw from softmax(z_P / tau): compare frequencies (4 sigma).
    logits = MODEL.apply(PARAMS, jnp.asarray(PROMPT)[None])[0, -1]
    p = np.asarray(jax.nn.softmax(logits / 2.0))
    freq = np.bincount(tokens[:, 0], minlength=V) / len(tokens)
    np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(p * (1 - p) / len(tokens)).max())
    # Later tokens depend on earlier ones through the carries: many distinct continuations.
    assert len({tuple(t) for t in tokens}) > 50


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"\[0, 7\), got range \[1, 9\]"):
        generate.generate(jax.random.key(0), MODEL, PARAMS, [1, 9], 3)
    with pytest.raises(ValueError, match="P >= 1"):
        generate.generate(jax.random.key(0), MODEL, PARAMS, np.zeros((0,), np.int32), 3)
    with pytest.raises(ValueError, match="temperature must be a finite float >= 0, got -1"):
        generate.generate(jax.random.key(0), MODEL, PARAMS, PROMPT, 3, temperature=-1.0)
    with pytest.raises(ValueError, match="token model"):
        generate.generate(jax.random.key(0), rj.SequenceModel(rj.Elman(3), 2), PARAMS, PROMPT, 3)


def test_a_tiny_trained_char_model_writes_valid_characters():
    task = tasks.char_lm_task("abcabcabd " * 60, seq_len=12)
    model = rj.SequenceModel(rj.GRU(16), task.output_size, vocab_size=task.input_size)
    opt = train.OptimizerConfig("adam", 5e-2)
    state, m = jax.jit(lambda k: train.train(k, model, task, opt, num_steps=60,
                                             batch_size=16))(jax.random.key(0))
    assert float(m["loss"][-5:].mean()) < 0.5 * float(m["loss"][:5].mean())
    text = generate.generate_text(jax.random.key(1), model, state.params, task, "ab", 30,
                                  temperature=0.0)
    assert len(text) == 30 and set(text) <= set(task.vocab)
    assert "ab" + text in "abcabcabd " * 10  # the periodic pattern it was trained on
