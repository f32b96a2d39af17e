"""Seed-vmapped chunked training helpers: chunk summaries, chunk boundaries, seed keys."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments import training  # noqa: E402


def _metrics(loss, norm, finite):
    return {"loss": jnp.asarray(loss, jnp.float32), "grad_norm": jnp.asarray(norm, jnp.float32),
            "clipped": jnp.asarray([n > 1.0 for n in norm]), "finite": jnp.asarray(finite)}


def test_summary_averages_finite_steps_only():
    s = training._summary(_metrics([1.0, np.nan, 3.0], [0.5, np.inf, 2.5], [True, False, True]))
    assert float(s["loss"]) == pytest.approx(2.0)
    assert float(s["grad_norm"]) == pytest.approx(1.5)
    assert float(s["grad_norm_max"]) == pytest.approx(2.5)
    assert float(s["nonfinite"]) == 1.0
    assert float(s["clipped"]) == pytest.approx(2 / 3)  # the inf step counts as clipped
    assert set(s) == set(training.RECORDED)


def test_summary_of_a_chunk_with_no_finite_step_is_nan_not_zero():
    s = jax.jit(training._summary)(_metrics([np.nan] * 2, [np.inf] * 2, [False, False]))
    for name in ("loss", "grad_norm", "grad_norm_max"):
        assert np.isnan(float(s[name])), name
    assert float(s["nonfinite"]) == 2.0
    # ... and the history keeps it as None (strict JSON in checkpoint metadata)
    assert training._host({"loss": s["loss"][None]}) == {"loss": [None]}


@pytest.mark.parametrize("start, num_steps, log_every, expected", [
    (0, 10, 3, [3, 6, 9, 10]), (0, 9, 3, [3, 6, 9]), (4, 10, 3, [6, 9, 10]),
    (6, 10, 3, [9, 10]), (10, 10, 3, []), (0, 2, 5, [2])])
def test_chunk_boundaries_do_not_depend_on_the_start(start, num_steps, log_every, expected):
    assert training.boundaries(start, num_steps, log_every) == expected


def test_seed_keys_are_distinct_and_checked():
    keys = training.seed_keys(0, 3)
    data = np.asarray(jax.random.key_data(keys))
    assert len({tuple(row) for row in data}) == 3
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="num_seeds"):
            training.seed_keys(0, bad)
