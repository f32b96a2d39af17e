"""Tests for rnn_jax.training.checkpoint: exact round trips, step selection, pruning, refusal to
overwrite,
skipping corrupt steps, and template validation that leaves the directory untouched."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import functools  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402

from rnn_jax.training import checkpoint as ck  # noqa: E402


@functools.partial(jax.jit, static_argnums=1)
def _arrays(seed, hidden):
    # One compilation per hidden size (not one per eager op) keeps the tests fast.
    k_w, k_u, k_next = jax.random.split(jax.random.key(seed), 3)
    params = {"W": jax.random.normal(k_w, (3, hidden)),
              "U": jax.random.normal(k_u, (hidden, hidden)),
              "b": jnp.full((hidden,), 0.1, jnp.float32) * seed}
    opt = optax.adam(1e-2)
    grads = jax.tree.map(lambda p: p + 1.0, params)
    _, opt_state = opt.update(grads, opt.init(params), params)  # non-zero mu, nu and count
    keys = jax.random.split(jax.random.key(seed + 100, impl="rbg"), 2)
    return params, opt_state, k_next, keys, jnp.arange(4, dtype=jnp.uint8).astype(jnp.bfloat16)


def make_state(hidden=4, seed=0, step=7):
    """A training-state-like pytree: params, adam state, typed keys, scalars of every kind."""
    params, opt_state, key, keys, bf16 = _arrays(seed, hidden)
    return {
        "params": params,
        "opt_state": opt_state,
        "key": key,
        "keys": keys,
        "step": step,
        "lr": 0.5,
        "done": False,
        "weak": jnp.asarray(1.5),
        "extras": (np.arange(3, dtype=np.int16), np.float32(0.25), np.zeros((0, 2), np.float32),
                   bf16),
    }


def is_key(x):
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def assert_identical(got, want):
    got_leaves, got_def = jax.tree_util.tree_flatten(got)
    want_leaves, want_def = jax.tree_util.tree_flatten(want)
    assert got_def == want_def
    for g, w in zip(got_leaves, want_leaves, strict=True):
        assert type(g) is type(w)
        if is_key(w):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(jax.random.key_data(g), jax.random.key_data(w))
        elif isinstance(w, bool | int | float):
            assert g == w
        else:
            assert g.dtype == w.dtype and g.shape == w.shape
            assert getattr(g, "weak_type", None) == getattr(w, "weak_type", None)
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def snapshot(root):
    """Every path under root with a hash of its content (files) or a directory marker."""
    return {p.relative_to(root).as_posix():
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
            for p in sorted(root.rglob("*"))}


def test_round_trip_is_exact(tmp_path):
    state = make_state()
    path = ck.save(tmp_path, 7, state, metadata={"model": "elman", "hidden": 4})
    assert path == tmp_path / "7" and (path / ck.SEAL).is_file()
    assert ck.all_steps(tmp_path) == [7] and ck.invalid_steps(tmp_path) == {}
    restored, step, meta = ck.restore(tmp_path, make_state(seed=1, step=0))
    assert step == 7
    assert meta == {"model": "elman", "hidden": 4}
    assert ck.read_metadata(tmp_path) == meta
    assert_identical(restored, state)
    # The restored typed key draws the same numbers as the original.
    np.testing.assert_array_equal(jax.random.normal(restored["key"], (5,)),
                                  jax.random.normal(state["key"], (5,)))


def test_abstract_template_from_eval_shape(tmp_path):
    state = {"params": make_state()["params"], "key": jax.random.key(3)}
    ck.save(tmp_path, 1, state)
    restored, _, meta = ck.restore(tmp_path, jax.eval_shape(lambda: state))
    assert meta == {}
    assert_identical(restored, state)


def test_latest_step_picks_the_highest(tmp_path):
    for step in (3, 10, 5):
        ck.save(tmp_path, step, make_state(seed=step, step=step))
    assert ck.latest_step(tmp_path) == 10
    assert ck.all_steps(tmp_path) == [3, 5, 10]
    restored, step, _ = ck.restore(tmp_path, make_state())
    assert step == 10
    assert_identical(restored, make_state(seed=10, step=10))
    restored, step, _ = ck.restore(tmp_path, make_state(), step=3)
    assert step == 3
    assert_identical(restored, make_state(seed=3, step=3))


def test_keep_prunes_old_valid_steps_only(tmp_path):
    (tmp_path / "0").mkdir()  # an invalid step directory: never counted or deleted
    for step in range(1, 6):
        ck.save(tmp_path, step, make_state(seed=step), keep=2)
    assert ck.all_steps(tmp_path) == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "4", "5"]
    assert list(ck.invalid_steps(tmp_path)) == [0]
    # A step below existing ones prunes only below itself, never the newer steps.
    ck.save(tmp_path, 2, make_state(seed=2), keep=1)
    assert ck.all_steps(tmp_path) == [2, 4, 5]


def test_saving_an_existing_step_raises_and_keeps_the_old_data(tmp_path):
    original = make_state(seed=1)
    ck.save(tmp_path, 1, original, metadata={"run": "a"})
    before = snapshot(tmp_path)
    with pytest.raises(FileExistsError, match="never overwritten"):
        ck.save(tmp_path, 1, make_state(seed=2), metadata={"run": "b"})
    assert snapshot(tmp_path) == before
    restored, _, meta = ck.restore(tmp_path, original)
    assert_identical(restored, original)
    assert meta == {"run": "a"}


def test_existing_invalid_step_directory_is_not_overwritten(tmp_path):
    (tmp_path / "4").mkdir()
    (tmp_path / "4" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="no rnn_jax.json seal"):
        ck.save(tmp_path, 4, make_state())
    assert (tmp_path / "4" / "notes.txt").read_text() == "keep me"


def _first_data_file(step_dir):
    return next(p for p in sorted((step_dir / "state").rglob("*")) if p.is_file()
                and "/d/" in p.as_posix())


def _truncate_data(step_dir):
    path = _first_data_file(step_dir)
    path.write_bytes(path.read_bytes()[:-7])


def _delete_data(step_dir):
    _first_data_file(step_dir).unlink()


def _truncate_seal(step_dir):
    seal = step_dir / ck.SEAL
    seal.write_text(seal.read_text()[:40])


def _edit_seal(step_dir):
    seal = step_dir / ck.SEAL
    record = json.loads(seal.read_text())
    record["leaves"][0]["shape"] = [99]
    seal.write_text(json.dumps(record))


def _remove_seal(step_dir):
    (step_dir / ck.SEAL).unlink()


def _flip_byte(step_dir):
    path = step_dir / "_CHECKPOINT_METADATA"
    data = bytearray(path.read_bytes())
    data[5] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [_truncate_data, _delete_data, _truncate_seal, _edit_seal,
                                     _remove_seal, _flip_byte])
def test_corrupt_newest_step_is_skipped(tmp_path, corrupt):
    ck.save(tmp_path, 1, make_state(seed=1))
    ck.save(tmp_path, 2, make_state(seed=2))
    corrupt(tmp_path / "2")
    (tmp_path / "3").mkdir()  # an empty step directory is not a checkpoint either
    assert ck.latest_step(tmp_path) == 1
    assert ck.all_steps(tmp_path) == [1]
    assert sorted(ck.invalid_steps(tmp_path)) == [2, 3]
    restored, step, _ = ck.restore(tmp_path, make_state())
    assert step == 1
    assert_identical(restored, make_state(seed=1))
    assert ck.check_compatible(tmp_path, make_state()) == 1
    with pytest.raises(ValueError, match=r"step=2\) is not valid"):
        ck.restore(tmp_path, make_state(), step=2)


def test_orbax_temporary_directory_is_skipped(tmp_path):
    ck.save(tmp_path, 1, make_state(seed=1))
    ck.save(tmp_path, 2, make_state(seed=2))
    shutil.move(tmp_path / "2", tmp_path / "2.orbax-checkpoint-tmp")
    assert ck.latest_step(tmp_path) == 1
    assert ck.invalid_steps(tmp_path) == {}
    assert ck.restore(tmp_path, make_state())[1] == 1


def test_crash_before_the_seal_leaves_no_valid_step(tmp_path, monkeypatch):
    ck.save(tmp_path, 1, make_state(seed=1))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash after orbax finished, before the seal")

    monkeypatch.setattr(ck.seal, "write", crash)
    with pytest.raises(KeyboardInterrupt):
        ck.save(tmp_path, 2, make_state(seed=2))
    assert (tmp_path / "2").is_dir()
    assert ck.latest_step(tmp_path) == 1
    assert "unfinished save" in ck.invalid_steps(tmp_path)[2]


def test_crash_inside_orbax_write_is_recoverable(tmp_path, monkeypatch):
    from orbax.checkpoint import PyTreeCheckpointHandler

    ck.save(tmp_path, 1, make_state(seed=1))

    async def crash(self, *args, **kwargs):
        raise OSError("simulated disk failure mid-write")

    with monkeypatch.context() as patch:
        patch.setattr(PyTreeCheckpointHandler, "async_save", crash)
        with pytest.raises(OSError, match="mid-write"):
            ck.save(tmp_path, 2, make_state(seed=2))
    assert not (tmp_path / "2").exists()
    assert [p.name for p in tmp_path.glob("2.orbax-checkpoint-tmp*")]  # orbax's half-written dir
    assert ck.latest_step(tmp_path) == 1
    assert ck.invalid_steps(tmp_path) == {}
    # Saving the step again works: orbax replaces its own unfinished temporary directory.
    ck.save(tmp_path, 2, make_state(seed=2))
    assert ck.latest_step(tmp_path) == 2
    assert_identical(ck.restore(tmp_path, make_state())[0], make_state(seed=2))


def test_mismatched_template_raises_and_changes_nothing(tmp_path):
    ck.save(tmp_path, 5, make_state(hidden=4))
    before = snapshot(tmp_path)
    params, opt_state, *_ = jax.eval_shape(_arrays, 0, 8)  # a wider model, abstractly
    bigger = {**make_state(), "params": params, "opt_state": opt_state}
    for call in (lambda: ck.restore(tmp_path, bigger),
                 lambda: ck.check_compatible(tmp_path, bigger)):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert str(tmp_path / "5") in message
        assert "['opt_state'][0].mu['U']" in message  # first differing leaf in flatten order
        assert "stored shape (4, 4) dtype float32" in message
        assert "expected shape (8, 8) dtype float32" in message
    assert snapshot(tmp_path) == before


def test_mismatched_dtype_kind_and_structure_are_named(tmp_path):
    state = make_state()
    ck.save(tmp_path, 1, state)
    before = snapshot(tmp_path)
    cases = [
        ({**state, "weak": jnp.asarray(1.5, jnp.bfloat16)}, r"\['weak'\].*dtype float32.*bfloat16"),
        ({**state, "step": jnp.int32(7)}, r"\['step'\].*dtype python int.*dtype int32"),
        ({**state, "key": jax.random.key_data(state["key"])}, r"\['key'\].*key<fry>.*uint32"),
        ({**state, "zz_new": jnp.zeros(2)}, r"structures differ.*\['zz_new'\]"),
        ({k: v for k, v in state.items() if k != "lr"}, r"structures differ.*\['lr'\]"),
    ]
    for like, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            ck.check_compatible(tmp_path, like)
        with pytest.raises(ValueError, match=pattern):
            ck.restore(tmp_path, like)
    assert snapshot(tmp_path) == before


def test_missing_steps_and_directories(tmp_path):
    missing = tmp_path / "nope"
    assert ck.latest_step(missing) is None
    assert ck.all_steps(missing) == []
    assert ck.check_compatible(missing, make_state()) is None
    with pytest.raises(FileNotFoundError, match="no valid checkpoint"):
        ck.restore(missing, make_state())
    assert not missing.exists()  # reading never creates the directory
    ck.save(tmp_path / "run", 1, make_state())
    with pytest.raises(FileNotFoundError, match=r"step=5.*valid steps there: \[1\]"):
        ck.restore(tmp_path / "run", make_state(), step=5)
    with pytest.raises(FileNotFoundError, match="step=5"):
        ck.check_compatible(tmp_path / "run", make_state(), step=5)


def test_bad_arguments_raise_before_anything_is_written(tmp_path):
    root = tmp_path / "ckpt"
    state = make_state()
    bad_calls = [
        (TypeError, "step must be an int", lambda: ck.save(root, 1.0, state)),
        (TypeError, "step must be an int", lambda: ck.save(root, True, state)),
        (ValueError, "step must be >= 0", lambda: ck.save(root, -1, state)),
        (ValueError, "keep must be None or >= 1", lambda: ck.save(root, 1, state, keep=0)),
        (TypeError, "metadata must be a dict", lambda: ck.save(root, 1, state, metadata=[1])),
        (TypeError, "JSON-serialisable",
         lambda: ck.save(root, 1, state, metadata={"x": np.float32(1)})),
        (TypeError, r"leaf \['name'\] is a str", lambda: ck.save(root, 1, {"name": "elman"})),
        (TypeError, r"leaf \['a'\] is an abstract",
         lambda: ck.save(root, 1, {"a": jax.ShapeDtypeStruct((2,), jnp.float32)})),
        (TypeError, "dtype <U2", lambda: ck.save(root, 1, {"a": np.array(["ab"])})),
        (ValueError, "does not fit in int64", lambda: ck.save(root, 1, {"a": 2**70})),
        (TypeError, "directory must be a str", lambda: ck.save(3, 1, state)),
    ]
    for error, pattern, call in bad_calls:
        with pytest.raises(error, match=pattern):
            call()
    assert not root.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        ck.save(tmp_path / "file", 1, state)
    assert (tmp_path / "file").read_text() == "x"
