"""Tests for rnn_jax.tasks.arrays: a task of your own padded variable-length sequences.

Masks equal running each sequence alone (every loss kind and readout), padding values never
matter, `fit` learns and resumes exactly from a checkpoint, splits are carved as documented,
and every bad argument is refused at construction naming it."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rnn_jax as rj  # noqa: E402
from rnn_jax import tasks  # noqa: E402
from rnn_jax.training import loop, train  # noqa: E402

KEY = jax.random.key(0)
N, T, I = 24, 9, 3


def data(seed=0, *, n=N):
    """Sequences of 1..T real steps; the class is the sign of feature 0 at the last real step."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, n)
    xs = rng.normal(size=(n, T, I)).astype(np.float32)
    last = xs[np.arange(n), lengths - 1]
    return xs, lengths, last


def pad_with(xs, lengths, value):
    real = np.arange(T)[None, :, None] < lengths[:, None, None]
    return np.where(real, xs, np.float32(value))


def make(kind, readout, seed=0, **kw):
    xs, lengths, last = data(seed)
    if kind == "classification":
        ys = (last[:, 0] > 0).astype(np.int32)
        if readout == "all":
            ys = (xs[..., 0] > 0).astype(np.int32)
    else:
        ys = last[:, :2] if readout == "last" else xs[..., :2] * 2.0
    return tasks.array_task(xs, ys, lengths=lengths, kind=kind, readout=readout, **kw), lengths


CASES = [("classification", "last"), ("classification", "all"), ("regression", "last"),
         ("regression", "all")]


@pytest.mark.parametrize("kind, readout", CASES)
def test_a_padded_batch_equals_each_sequence_run_alone(kind, readout):
    task, lengths = make(kind, readout)
    model = rj.SequenceModel(rj.GRU(5), task.output_size, readout=readout)
    params = model.init(KEY, task.input_size)
    batch = {k: v[:4] for k, v in task.split("train").items()}
    out = train.model_outputs(model, task, params, batch)
    per_entry = []
    for n in range(4):
        alone = model.apply(params, batch["xs"][n:n + 1, :lengths[n]])[0]
        got = out[n] if readout == "last" else out[n, :lengths[n]]
        np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-6)
        cut = {k: v[n:n + 1, :lengths[n]] for k, v in batch.items() if v.ndim > 1}
        one = {"ys": batch["ys"][n:n + 1], **cut}
        per_entry.append((float(task.loss(alone[None], one)), lengths[n]))
    # The batch loss is the mean over real entries: per sequence ("last") or per step ("all").
    weights = np.array([1 if readout == "last" else ln for _, ln in per_entry], float)
    values = np.array([loss for loss, _ in per_entry])
    want = np.sum(values * weights) / weights.sum()
    np.testing.assert_allclose(task.loss(out, batch), want, rtol=1e-5)


def test_left_and_interior_padding_through_a_mask():
    xs, _, _ = data()
    rng = np.random.default_rng(1)
    mask = rng.random((N, T)) < 0.6
    mask[:, 2] = True  # every row has a real step
    ys = (xs[..., 0].sum(1) > 0).astype(np.int32)
    task = tasks.array_task(xs, ys, mask=mask)
    model = rj.SequenceModel(rj.LSTM(4), 2, readout="last")
    params = model.init(KEY, I)
    batch = task.split("train")
    out = train.model_outputs(model, task, params, batch)
    for n in range(4):
        alone = model.apply(params, batch["xs"][n:n + 1][:, mask[n]])[0]
        np.testing.assert_allclose(out[n], alone, rtol=1e-5, atol=1e-6)


def test_padding_values_never_matter():
    xs, lengths, last = data()
    ys = (last[:, 0] > 0).astype(np.int32)
    clean = tasks.array_task(pad_with(xs, lengths, 0.0), ys, lengths=lengths)
    for garbage in (np.nan, np.inf, 1e30):  # stored as zeros: the task holds no garbage
        task = tasks.array_task(pad_with(xs, lengths, garbage), ys, lengths=lengths)
        np.testing.assert_array_equal(task.split("train")["xs"], clean.split("train")["xs"])
    # A batch handed to the train step with large finite garbage in its padding (NaN there is
    # the runner's business, issue 15) gives the loss and gradients of zeros there.
    model = rj.SequenceModel(rj.Elman(6), 2, readout="last")
    opt = train.OptimizerConfig("sgd", 0.1, clip="none")
    params = model.init(KEY, I)
    state = train.TrainState(np.int32(0), params, train.make_optimizer(opt).init(params),
                             np.int32(0))
    step = jax.jit(train.make_train_step(model, clean, opt))
    batch = clean.split("train")
    dirty = dict(batch, xs=pad_with(np.asarray(batch["xs"]), lengths, 1e4))
    (s0, m0), (s1, m1) = step(state, batch), step(state, dirty)
    np.testing.assert_allclose(m1["loss"], m0["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s0.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_fit_learns_variable_length_data_and_resumes_exactly(tmp_path):
    xs, lengths, last = data(n=96)
    ys = (last[:, 0] > 0).astype(np.int32)
    task = tasks.array_task(xs, ys, lengths=lengths, validation=0.25, key=KEY)
    model = rj.SequenceModel(rj.GRU(8), task.output_size, readout="last")
    opt = train.OptimizerConfig("adam", 3e-2)
    base = dict(batch_size=16, log_every=5, eval_every=10, eval_split="validation",
                checkpoint_every=7, progress=False)
    full_state, full = loop.fit(KEY, model, task, opt, loop.LoopConfig(
        num_steps=40, checkpoint_dir=tmp_path / "full", **base))
    losses = [r["loss"] for r in full["train"]]
    assert losses[-1] < 0.7 * losses[0], losses
    # Resume: 17 steps (a checkpoint inside the logging window 15..20), then on to 40.
    loop.fit(KEY, model, task, opt, loop.LoopConfig(num_steps=17, checkpoint_dir=tmp_path / "r",
                                                    **base))
    state, history = loop.fit(KEY, model, task, opt, loop.LoopConfig(
        num_steps=40, checkpoint_dir=tmp_path / "r", **base))
    assert history == full
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(full_state.params),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_splits_by_fraction_and_by_arrays():
    xs, lengths, last = data(n=50)
    ys = (last[:, 0] > 0).astype(np.int32)
    task = tasks.array_task(xs, ys, lengths=lengths, validation=0.2, test=0.1, key=KEY)
    assert task.split_names == ("train", "validation", "test")
    assert [task.num_examples(s) for s in task.split_names] == [35, 10, 5]
    rows = np.concatenate([task.source_index[s] for s in task.split_names])
    assert sorted(rows.tolist()) == list(range(50))
    test = task.split("test")
    np.testing.assert_array_equal(test["xs"][0], pad_with(xs, lengths, 0)[task.source_index
                                                                          ["test"][0]])
    other, lengths2, last2 = data(seed=3, n=7)
    task = tasks.array_task(xs, ys, lengths=lengths, test={
        "xs": other, "ys": (last2[:, 0] > 0).astype(np.int32), "lengths": lengths2})
    assert task.split_names == ("train", "test") and task.num_examples("test") == 7
    np.testing.assert_array_equal(task.split("test")["mask"].sum(1), lengths2)


def test_tokens_regression_baseline_and_protocol():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 7, (N, T))
    lengths = rng.integers(1, T + 1, N)
    task = tasks.array_task(tokens, tokens, lengths=lengths, readout="all", vocab_size=7)
    assert task.token_inputs and task.input_size == 7 and task.output_size == 7
    assert task.baseline == pytest.approx(np.log(7)) and not task.fixed_length
    model = rj.SequenceModel(rj.GRU(4), 7, vocab_size=7)
    batch = jax.jit(task.sample, static_argnums=1)(KEY, 5)
    assert batch["xs"].shape == (5, T) and batch["mask"].shape == (5, T)
    batches = jax.vmap(task.sample, in_axes=(0, None))(jax.random.split(KEY, 3), 5)
    np.testing.assert_array_equal(batches["xs"][0], task.sample(jax.random.split(KEY, 3)[0],
                                                                5)["xs"])
    metrics = train.make_eval_step(model, task)(model.init(KEY), batch)
    assert set(metrics) == {"loss", "accuracy", "error"}
    reg, _ = make("regression", "last")
    ys = np.asarray(reg.split("train")["ys"], np.float64)
    assert reg.baseline == pytest.approx(float(np.mean(ys.var(axis=0))), rel=1e-6)
    assert tasks.get_task("arrays", xs=tokens, ys=tokens[:, 0], lengths=lengths).output_size == 7


def _bad(**kw):
    xs, lengths, last = data()
    base = dict(xs=xs, ys=(last[:, 0] > 0).astype(np.int32), lengths=lengths)
    return tasks.array_task(**{**base, **kw})


@pytest.mark.parametrize("kw, error, match", [
    (dict(xs=np.zeros((N, T))), ValueError, r"xs: expected floats \[N, T, I\]"),
    (dict(xs="abc"), TypeError, "xs: expected a numeric array"),
    (dict(ys=np.zeros(N)), TypeError, "ys: expected int class ids"),
    (dict(ys=np.zeros((N, T), np.int32)), ValueError, r"ys: expected shape \[24\]"),
    (dict(ys=np.full(N, -1)), ValueError, r"ys: expected class ids in \[0, "),
    (dict(lengths=np.full(N, T + 1)), ValueError, r"lengths: expected values in \[1, 9\]"),
    (dict(lengths=np.zeros(N, int)), ValueError, "lengths: expected values in"),
    (dict(lengths=np.ones(N - 1, int)), ValueError, r"lengths: expected ints of shape \(24,\)"),
    (dict(mask=np.ones((N, T), bool)), ValueError, "lengths / mask: pass one of them"),
    (dict(lengths=None, mask=np.zeros((N, T), bool)), ValueError, "mask: every sequence needs"),
    (dict(lengths=None, mask=np.ones((N, T))), ValueError, "mask: expected bool"),
    (dict(kind="ranking"), ValueError, "kind: expected one of"),
    (dict(readout="first"), ValueError, "readout: expected one of"),
    (dict(validation=0.3), ValueError, "key: fractional splits"),
    (dict(validation=1.5, key=KEY), ValueError, r"validation: expected None, a fraction in"),
    (dict(test=0.01, key=KEY), ValueError, "test: the fraction 0.01 of 24 sequences gives no"),
    (dict(validation=0.5, test=0.5, key=KEY), ValueError, "leave no training sequence"),
    (dict(test={"xs": np.zeros((2, T, I))}), ValueError, "test: expected keys 'xs', 'ys'"),
    (dict(test={"xs": np.zeros((2, T, 4)), "ys": np.zeros(2, int)}), ValueError,
     r"test\['xs'\]: expected per-sequence shape \[9, 3\]"),
    (dict(validation={"xs": np.zeros((2, T, I)), "ys": np.zeros(2, int),
                      "lengths": [0, 3]}), ValueError, r"validation\['lengths'\]: expected"),
    (dict(num_classes=0), ValueError, "num_classes: expected a positive int"),
    (dict(num_classes=1), ValueError, r"ys: expected class ids in \[0, 1\)"),
    (dict(vocab_size=3), ValueError, "vocab_size: only for int token inputs"),
    (dict(kind="regression"), ValueError, r"ys: expected shape \[24, O\]"),
    (dict(xs=np.full((N, T, I), np.nan, np.float32)), ValueError, "xs: expected finite"),
    (dict(key="seed"), ValueError, "key"),
    (dict(name=""), ValueError, "name: expected a non-empty str"),
])
def test_bad_arguments_are_refused_naming_them(kw, error, match):
    if kw.get("key") == "seed":
        kw = dict(kw, validation=0.2)
        error = TypeError
    with pytest.raises(error, match=match):
        _bad(**kw)


def test_outputs_of_the_wrong_shape_are_refused():
    task, _ = make("classification", "all")
    batch = task.sample(KEY, 2)
    with pytest.raises(ValueError, match=r"outputs: expected shape \(2, 9, 2\)"):
        task.loss(np.zeros((2, 2), np.float32), batch)
    with pytest.raises(ValueError, match="name: expected one of"):
        task.split("dev")


def _tree_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_checkpoints_are_tied_to_the_data_not_only_its_shape(tmp_path):
    xs, lengths, last = data()
    ys = (last[:, 0] > 0).astype(np.int32)
    task = tasks.array_task(xs, ys, lengths=lengths)
    model = rj.SequenceModel(rj.GRU(4), task.output_size, readout="last")
    opt = train.OptimizerConfig("adam", 1e-2)
    base = dict(batch_size=4, log_every=2, checkpoint_every=2, progress=False)
    full_state, full = loop.fit(KEY, model, task, opt, loop.LoopConfig(num_steps=6, **base))
    ckpt = tmp_path / "ckpt"
    loop.fit(KEY, model, task, opt, loop.LoopConfig(num_steps=4, checkpoint_dir=ckpt, **base))
    # The same data in a task built afresh (another object) resumes, bitwise exact.
    same = tasks.array_task(xs.copy(), ys.copy(), lengths=lengths.copy())
    assert same.fingerprint == task.fingerprint
    before = _tree_bytes(ckpt)
    # One value changed (shape, dtype and everything else equal): refused, naming the array,
    # before anything in the checkpoint directory is written or removed.
    changed = xs.copy()
    changed[3, 0, 1] += 1.0
    other = tasks.array_task(changed, ys, lengths=lengths)
    digest = r"'float32\[24, 9, 3\] [0-9a-f]{16}'"
    with pytest.raises(ValueError, match=rf"different run; differences: data\['train'\]\['xs'\]: "
                                         rf"stored {digest} vs given {digest}\. Use another"):
        loop.fit(KEY, model, other, opt, loop.LoopConfig(num_steps=6, checkpoint_dir=ckpt,
                                                         **base))
    assert _tree_bytes(ckpt) == before
    state, history = loop.fit(KEY, model, same, opt, loop.LoopConfig(
        num_steps=6, checkpoint_dir=ckpt, **base))
    assert history == full
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(full_state.params),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_fingerprint_sees_every_array_and_only_array_tasks_carry_one():
    xs, lengths, last = data()
    ys = (last[:, 0] > 0).astype(np.int32)
    task = tasks.array_task(xs, ys, lengths=lengths, validation=0.25, key=KEY)
    fp = task.fingerprint
    assert set(fp) == {"train", "validation"} and set(fp["train"]) == {"xs", "ys", "mask"}
    assert fp["validation"]["mask"].startswith("bool[6, 9] ")
    row = task.source_index["validation"][0]
    other = lengths.copy()
    other[row] = lengths[row] % T + 1  # another length in [1, T]: a validation mask changes
    moved = tasks.array_task(xs, ys, lengths=other, validation=0.25, key=KEY).fingerprint
    assert moved["train"] == fp["train"] and moved["validation"]["mask"] != fp["validation"]["mask"]
    flipped = tasks.array_task(xs, 1 - ys, lengths=lengths, validation=0.25, key=KEY).fingerprint
    assert flipped["train"]["ys"] != fp["train"]["ys"] and flipped["train"]["xs"] == fp["train"][
        "xs"]
    # Other tasks keep the identity their existing checkpoints were written with.
    cfg = loop.LoopConfig(num_steps=1, batch_size=2, progress=False)
    opt = train.OptimizerConfig("adam", 1e-2)
    model = rj.SequenceModel(rj.GRU(4), 1)
    ident = loop.run_identity(KEY, model, tasks.Adding(seq_len=5), opt, cfg)
    assert set(ident) == {"key", "model", "task", "seq_len", "optimizer", "batch_size", "dropout"}
    assert loop.run_identity(KEY, model, task, opt, cfg)["data"] == fp
