"""Tests for rnn_jax.training.tbptt: one window with k1 = k2 = T is full BPTT, carries really pass
from
window to window, gradients really stop at window boundaries, k1 < k2 overlap semantics, and the
driver over token streams."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax import losses, tasks  # noqa: E402
from rnn_jax.training import tbptt, train  # noqa: E402

TEXT = "to be, or not to be, that is the question: whether 'tis nobler in the mind. " * 8
TASK = tasks.char_lm_task(TEXT, seq_len=6)
V = TASK.input_size
TOKEN_MODEL = rj.SequenceModel(rj.GRU(8), V, vocab_size=V)
FLOAT_MODEL = rj.SequenceModel(rj.Elman(5), 2)
KEY = jax.random.key(0)
OPT = train.OptimizerConfig("sgd", 0.5, clip_threshold=0.5)


@pytest.fixture(scope="module")
def state():
    return jax.jit(lambda k: train.init_state(k, TOKEN_MODEL, TASK, train.make_optimizer(OPT)))(KEY)


def mse(logits, ys):
    return losses.mse(logits, ys)


def test_windows_match_the_text_helper_and_count():
    stream = TASK.streams("train", 3)
    expected = list(tasks.windows(stream, 6))
    assert tbptt.window_count(stream.shape[1], 6) == len(expected)
    for n, (xs, ys) in enumerate(expected):
        w = jax.jit(tbptt.window_at, static_argnums=(2,))(stream, n, 6)
        np.testing.assert_array_equal(w["xs"], xs)
        np.testing.assert_array_equal(w["ys"], ys)
    # k1 < k2: window n covers [n k1, n k1 + k2); the last one must fit with its targets.
    assert tbptt.window_count(20, 3, 5) == 5  # starts 0, 3, 6, 9, 12; 12 + 5 + 1 <= 20
    w = tbptt.window_at(jnp.arange(20)[None], 2, 3, 5)
    np.testing.assert_array_equal(w["xs"][0], [6, 7, 8, 9, 10])
    np.testing.assert_array_equal(w["ys"][0], [7, 8, 9, 10, 11])
    with pytest.raises(ValueError, match="k2 .* must be >= k1"):
        tbptt.window_count(20, 5, 3)


def test_one_window_with_k1_equal_k2_is_full_bptt(state):
    opt = OPT
    stream = TASK.streams("train", 4)
    window = tbptt.window_at(stream, 3, 6)
    carries = TOKEN_MODEL.initial_carries((4,))
    update = jax.jit(tbptt.make_tbptt_update(TOKEN_MODEL, opt, k1=6, k2=6))
    got, nxt, m = update(state, carries, window)
    batch = {**window, "mask": jnp.ones((4, 6), bool)}
    want, m_ref = jax.jit(train.make_train_step(TOKEN_MODEL, TASK, opt))(state, batch)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for name in ("loss", "grad_norm", "update_norm", "clipped"):
        np.testing.assert_allclose(m[name], m_ref[name], rtol=1e-5)
    # The carry handed on is the carry after the window, under the old parameters.
    _, finals = TOKEN_MODEL.apply(state.params, window["xs"], return_carries=True)
    for a, b in zip(jax.tree.leaves(nxt), jax.tree.leaves(finals), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def float_data():
    k_p, k_x, k_y = jax.random.split(jax.random.key(1), 3)
    params = jax.jit(FLOAT_MODEL.init, static_argnums=1)(k_p, 3)
    xs = jax.random.normal(k_x, (2, 12, 3))
    ys = jax.random.normal(k_y, (2, 12, 2))
    return params, xs, ys


def two_windows(params, xs, ys, k1, k2):
    """Loss of window 1 as a function of both windows' inputs (window 0 hands on its carry)."""

    @jax.jit
    def f(x0, x1):
        w0 = {"xs": x0, "ys": ys[:, :k2]}
        _, carry = tbptt.tbptt_loss(FLOAT_MODEL, params, FLOAT_MODEL.initial_carries((2,)), w0,
                                    k1=k1, loss_fn=mse)
        w1 = {"xs": x1, "ys": ys[:, k1:k1 + k2]}
        return tbptt.tbptt_loss(FLOAT_MODEL, params, carry, w1, k1=k1, loss_fn=mse)[0]

    x0, x1 = xs[:, :k2], xs[:, k1:k1 + k2]
    return f(x0, x1), jax.jit(jax.grad(f, argnums=(0, 1)))(x0, x1)


def test_carries_pass_across_windows_and_gradients_stop_at_the_boundary(float_data):
    params, xs, ys = float_data
    loss, (g0, g1) = two_windows(params, xs, ys, 4, 4)
    # Window 1's loss equals the loss of steps 4..7 of one unbroken pass over steps 0..7.
    full = FLOAT_MODEL.apply(params, xs[:, :8])
    np.testing.assert_allclose(loss, mse(full[:, 4:8], ys[:, 4:8]), rtol=1e-6)
    fresh = mse(FLOAT_MODEL.apply(params, xs[:, 4:8]), ys[:, 4:8])
    assert abs(float(loss) - float(fresh)) > 1e-4  # the carry did matter
    assert np.all(np.asarray(g0) == 0.0)  # nothing flows back into the previous window
    assert np.all(np.abs(np.asarray(g1)) > 0.0)
    # Without the truncation the previous window's inputs do get a gradient (sanity check).
    g_full = jax.grad(lambda x: mse(FLOAT_MODEL.apply(params, x)[:, 4:8], ys[:, 4:8]))(xs[:, :8])
    assert float(jnp.abs(g_full[:, :4]).max()) > 0.0


def test_overlapping_windows_backpropagate_k2_steps_and_score_the_last_k1(float_data):
    params, xs, ys = float_data
    k1, k2 = 3, 5
    loss, (g0, g1) = two_windows(params, xs, ys, k1, k2)
    # Window 1 covers steps 3..7 from the carry after steps 0..2; it scores steps 5..7 only.
    full = FLOAT_MODEL.apply(params, xs[:, :8])
    np.testing.assert_allclose(loss, mse(full[:, 5:8], ys[:, 5:8]), rtol=1e-6)
    assert np.all(np.asarray(g0) == 0.0)
    g1 = np.asarray(g1)
    assert np.all(np.abs(g1[:, : k2 - k1]).max(axis=-1) > 0.0)  # the re-run overlap steps
    assert np.all(np.abs(g1[:, k2 - k1:]).max(axis=-1) > 0.0)


def test_update_with_overlap_hands_on_the_carry_after_k1_steps(state):
    opt = OPT
    window = tbptt.window_at(TASK.streams("train", 2), 1, 2, 5)
    update = jax.jit(tbptt.make_tbptt_update(TOKEN_MODEL, opt, k1=2, k2=5))
    _, nxt, m = update(state, TOKEN_MODEL.initial_carries((2,)), window)
    _, mid = TOKEN_MODEL.apply(state.params, window["xs"][:, :2], return_carries=True)
    for a, b in zip(jax.tree.leaves(nxt), jax.tree.leaves(mid), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    logits = TOKEN_MODEL.apply(state.params, window["xs"])
    np.testing.assert_allclose(
        m["loss"], losses.softmax_cross_entropy(logits[:, 3:], window["ys"][:, 3:]), rtol=1e-5)
    with pytest.raises(ValueError, match="k2=5 steps"):
        update(state, TOKEN_MODEL.initial_carries((2,)), tbptt.window_at(window["xs"], 0, 2, 2))


def test_fit_tbptt_learns_and_resumes_exactly(tmp_path):
    opt = train.OptimizerConfig("adam", 3e-2)
    kw = dict(batch_size=4, k1=6, k2=8, epochs=2, eval_split="validation", progress=False)
    state, history = tbptt.fit_tbptt(KEY, TOKEN_MODEL, TASK, opt, **kw)
    per_epoch = tbptt.window_count(TASK.streams("train", 4).shape[1], 6, 8)
    assert int(state.step) == 2 * per_epoch == len(history["train"])
    first, last = history["train"][0]["loss"], history["train"][-1]["loss"]
    assert last < 0.6 * first
    assert len(history["eval"]) == 2 and history["eval"][-1]["loss"] < TASK.baseline
    # Stopped mid-epoch at update 7 (checkpoints 4 and 7), then resumed: the same run.
    ckpt = tmp_path / "ckpt"
    tbptt.fit_tbptt(KEY, TOKEN_MODEL, TASK, opt, **kw, max_updates=7, checkpoint_dir=ckpt,
                    checkpoint_every=4)
    resumed, got = tbptt.fit_tbptt(KEY, TOKEN_MODEL, TASK, opt, **kw, checkpoint_dir=ckpt,
                                   checkpoint_every=4)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert got == history
    with pytest.raises(ValueError, match="k2: stored 8 vs given 9"):
        tbptt.fit_tbptt(KEY, TOKEN_MODEL, TASK, opt, **{**kw, "k2": 9}, checkpoint_dir=ckpt)
