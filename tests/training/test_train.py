"""Tests for rnn_jax.training.train: learning, the clipping invariants, skipped non-finite steps,
pure runs
under vmap, schedules, and clear errors for bad configurations and batches."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax import tasks  # noqa: E402
from rnn_jax.training import train  # noqa: E402

TASK = tasks.Adding(seq_len=6)
MODEL = rj.SequenceModel(rj.Elman(8), TASK.output_size, readout=TASK.readout)
KEY = jax.random.key(0)
ADAM = train.OptimizerConfig("adam", learning_rate=1e-2)
# One compiled run, shared by the tests below (a run is a pure function of its key).
RUN = jax.jit(lambda k: train.train(k, MODEL, TASK, ADAM, num_steps=120, batch_size=16))


def loss_of(params, batch):
    return TASK.loss(train.model_outputs(MODEL, TASK, params, batch), batch)


@pytest.fixture(scope="module")
def batch():
    return jax.jit(train.sample_batch, static_argnums=(0, 3))(TASK, KEY, 0, 16)


@pytest.fixture(scope="module")
def params():
    return jax.jit(MODEL.init, static_argnums=1)(train.run_keys(KEY).init, TASK.input_size)


def fresh_state(opt_cfg, params):
    optimizer = train.make_optimizer(opt_cfg)
    return train.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params),
                            jnp.zeros((), jnp.int32))


LR, TAU = 0.1, 1e-3
SGD = train.OptimizerConfig("sgd", LR, clip_threshold=TAU)
SGD_STEP = jax.jit(train.make_train_step(MODEL, TASK, SGD))  # shared by two tests


def test_loss_decreases_on_a_tiny_task():
    _, m = RUN(KEY)
    loss = np.asarray(m["loss"])
    assert loss.shape == (120,) and np.all(np.isfinite(loss))
    assert loss[-20:].mean() < 0.5 * loss[:20].mean()
    assert loss[-20:].mean() < TASK.baseline


def test_global_norm_clipping_invariant(params, batch):
    new, m = SGD_STEP(fresh_state(SGD, params), batch)
    grads = jax.grad(loss_of)(params, batch)
    g_norm = float(optax.tree.norm(grads))
    assert g_norm > TAU and bool(m["clipped"])
    np.testing.assert_allclose(float(m["grad_norm"]), g_norm, rtol=1e-5)  # pre-clip norm logged
    # sgd: the update is -lr * g_clip, so ||g_clip|| = update_norm / lr <= tau (here == tau) ...
    assert float(m["update_norm"]) / LR <= TAU * (1 + 1e-6)
    np.testing.assert_allclose(float(m["update_norm"]), LR * TAU, rtol=1e-6)
    # ... and g_clip = g * tau / ||g||, the same direction (up to float32 cancellation in the
    # parameter difference: |theta| ~ 1, |delta| ~ 1e-5).
    delta = jax.tree.map(jnp.subtract, new.params, params)
    for d, g in zip(jax.tree.leaves(delta), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(d, -LR * TAU / g_norm * g, rtol=1e-3, atol=1e-7)


def test_elementwise_clipping(params, batch):
    lr, tau = 0.5, 1e-2
    cfg = train.OptimizerConfig("sgd", lr, clip="value", clip_threshold=tau)
    new, m = jax.jit(train.make_train_step(MODEL, TASK, cfg))(fresh_state(cfg, params), batch)
    grads = jax.grad(loss_of)(params, batch)
    assert bool(m["clipped"]) and max(float(jnp.max(jnp.abs(g))) for g in
                                      jax.tree.leaves(grads)) > tau
    want = jax.tree.map(lambda p, g: p - lr * jnp.clip(g, -tau, tau), params, grads)
    for got, exp in zip(jax.tree.leaves(new.params), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, exp, rtol=1e-6, atol=1e-7)


def test_nan_batch_leaves_parameters_unchanged_and_counts_a_skip(params, batch):
    bad = dict(batch, xs=batch["xs"].at[0, 0, 0].set(jnp.nan))
    state = fresh_state(SGD, params)
    new, m = SGD_STEP(state, bad)
    assert not bool(m["finite"]) and int(new.skipped) == 1 and int(new.step) == 1
    for got, old in zip(jax.tree.leaves((new.params, new.opt_state)),
                        jax.tree.leaves((state.params, state.opt_state)), strict=True):
        np.testing.assert_array_equal(got, old)
    assert float(m["update_norm"]) == 0.0


def test_vmap_over_seeds_equals_separate_runs():
    keys = jax.random.split(jax.random.key(3), 3)
    states, metrics = jax.vmap(RUN)(keys)
    for i in range(3):
        state, m = RUN(keys[i])
        np.testing.assert_allclose(metrics["loss"][i], m["loss"], rtol=1e-5, atol=1e-6)
        for got, want in zip(jax.tree.leaves(states), jax.tree.leaves(state), strict=True):
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(metrics["loss"][0], metrics["loss"][1])  # the seeds differ


@pytest.mark.parametrize("schedule", ["linear", "cosine", "warmup_cosine", "exponential"])
def test_schedules_change_the_learning_rate_over_steps(schedule):
    cfg = train.OptimizerConfig("sgd", 0.5, schedule=schedule, warmup_steps=2, decay_steps=6,
                                end_factor=0.1, clip="none")
    optimizer, sched = train.make_optimizer(cfg), train.learning_rate_schedule(cfg)
    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.ones(3)}
    opt_state, rates = optimizer.init(params), []
    for _ in range(8):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        rates.append(-float(updates["w"][0]))  # sgd: update = -lr_t * g with g = 1
    np.testing.assert_allclose(rates, [float(sched(t)) for t in range(8)], rtol=1e-6)
    assert len({round(r, 6) for r in rates}) > 2
    np.testing.assert_allclose(rates[-1], 0.05, rtol=1e-4)  # lr * end_factor after decay_steps
    if schedule == "warmup_cosine":
        assert rates[0] == 0.0 and rates[2] == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"name": "adagrad"}, ValueError, r"OptimizerConfig.name: expected one of .*'adagrad'"),
    ({"name": None}, ValueError, "OptimizerConfig.name"),
    ({"clip": "norm"}, ValueError, "'norm'"),
    ({"schedule": "step"}, ValueError, "'step'"),
    ({"learning_rate": 0.0}, ValueError, "learning_rate: expected a finite number > 0.0, got 0.0"),
    ({"learning_rate": -1e-3}, ValueError, "got -0.001"),
    ({"learning_rate": float("nan")}, ValueError, "learning_rate"),
    ({"learning_rate": "1e-3"}, TypeError, "learning_rate: expected a float, got str"),
    ({"learning_rate": True}, TypeError, "learning_rate: expected a float, got bool"),
    ({"clip_threshold": 0.0}, ValueError, "clip_threshold"),
    ({"momentum": 1.5}, ValueError, r"momentum: expected a finite number in \[0.0, 1.0\]"),
    ({"nesterov": "no"}, TypeError, "nesterov: expected a bool, got str"),
    ({"warmup_steps": 1.0}, TypeError, "warmup_steps: expected an int, got float"),
    ({"decay_steps": 0}, ValueError, "decay_steps: expected an int >= 1, got 0"),
    ({"end_factor": -1.0}, ValueError, "end_factor"),
    ({"weight_decay": float("inf")}, ValueError, "weight_decay"),
])
def test_bad_optimizer_configs_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        train.OptimizerConfig(**kwargs)


@pytest.mark.parametrize("num_steps", [-1, 0])
def test_a_run_of_fewer_than_one_step_is_refused(num_steps):
    with pytest.raises(ValueError, match=f"num_steps: expected an int >= 1, got {num_steps}"):
        train.train(KEY, MODEL, TASK, ADAM, num_steps=num_steps, batch_size=4)
    with pytest.raises(TypeError, match="batch_size: expected an int, got float"):
        train.train(KEY, MODEL, TASK, ADAM, num_steps=2, batch_size=4.0)


def test_mismatched_batches_raise(batch):
    with pytest.raises(ValueError, match=r"\[B, T, 2\].*\(16, 6, 3\)"):
        train.check_batch(MODEL, TASK, dict(batch, xs=jnp.zeros((16, 6, 3))))
    with pytest.raises(ValueError, match="mask"):
        train.check_batch(MODEL, TASK, dict(batch, mask=jnp.ones((16, 5), bool)))
    with pytest.raises(ValueError, match="'xs', 'ys'"):
        train.check_batch(MODEL, TASK, {"xs": batch["xs"]})
    token_model = rj.SequenceModel(rj.Elman(4), 3, vocab_size=3)
    with pytest.raises(ValueError, match="token ids"):
        train.check_batch(token_model, TASK, batch)


def _digits_batch():
    task = tasks.get_task("digits")
    batch = task.split("test")
    batch = {k: v[:6] for k, v in batch.items()}
    lengths = jnp.array([64, 10, 33, 1, 50, 64])
    mask = jnp.arange(64)[None, :] < lengths[:, None]
    return task, batch, mask


def test_a_mask_is_never_silently_dropped_for_a_fixed_length_task():
    task, batch, mask = _digits_batch()
    model = rj.SequenceModel(rj.GRU(8), 10, readout="last")
    params = model.init(KEY, task.input_size)
    masked = dict(batch, mask=mask)
    # Eager: a concrete mask with padding is refused, naming the mask and the way out.
    for call in (lambda: train.model_outputs(model, task, params, masked),
                 lambda: train.check_batch(model, task, masked),
                 lambda: train.make_eval_step(model, task)(params, masked),
                 lambda: train.make_train_step(model, task, ADAM)(
                     fresh_state(ADAM, params), masked)):
        with pytest.raises(ValueError, match=r"batch\['mask'\].*fixed-length.*array_task"):
            call()
    # An all-True mask is the data's own: same outputs as no mask.
    np.testing.assert_array_equal(train.model_outputs(model, task, params, batch),
                                  model.apply(params, batch["xs"]))
    # Under jit the mask cannot be inspected: it is honoured (readout at the last real step).
    got = jax.jit(lambda p, b: train.model_outputs(model, task, p, b))(params, masked)
    np.testing.assert_allclose(got, model.apply(params, batch["xs"], mask=mask), atol=1e-6)
    assert not np.allclose(got, model.apply(params, batch["xs"]), atol=1e-3)


def test_masks_are_honoured_in_loss_and_grads_of_a_variable_length_task():
    task = tasks.Adding(seq_len=12, min_len=4)
    assert not task.fixed_length
    batch = task.sample(KEY, 5)
    assert not bool(batch["mask"].all())
    params = MODEL.init(KEY, task.input_size)
    state = fresh_state(ADAM, params)
    garbage = dict(batch, xs=jnp.where(batch["mask"][..., None], batch["xs"], 1e4))
    step = jax.jit(train.make_train_step(MODEL, task, ADAM))
    (_, m_clean), (_, m_garbage) = step(state, batch), step(state, garbage)
    np.testing.assert_allclose(m_garbage["loss"], m_clean["loss"], rtol=1e-6)
    np.testing.assert_allclose(m_garbage["grad_norm"], m_clean["grad_norm"], rtol=1e-5)
    want = task.loss(MODEL.apply(params, batch["xs"], mask=batch["mask"]), batch)
    np.testing.assert_allclose(m_clean["loss"], want, rtol=1e-6)
