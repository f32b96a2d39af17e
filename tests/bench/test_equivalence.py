"""Every method against the scan path: agreement, a detected mismatch, a recorded error."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import numpy as np  # noqa: E402

from rnn_jax.bench import equivalence  # noqa: E402


def test_fused_matches_scan_and_a_perturbed_reference_does_not():
    check = equivalence.Check("lstm", "fused", "highest", "reverse", B=3, T=4, H=4)
    ref = equivalence.values(check, "scan", "highest")
    ok = equivalence.run(check, ref)
    assert ok["status"] == "ok" and ok["max_rel_err"] < 1e-5
    assert set(ok["errors"]) == {"hs", "carry", "d_params", "d_xs", "d_carry"}
    bad_ref = {**ref, "d_params": {**ref["d_params"], "U": 1.01 * ref["d_params"]["U"]}}
    bad = equivalence.run(check, bad_ref)
    assert bad["status"] == "mismatch" and bad["errors"]["d_params"] > bad["tolerance"]
    assert bad["errors"]["hs"] < 1e-5


def test_lengths_include_empty_and_full_sequences():
    cell, params, xs, carry, r, s, lengths = equivalence._inputs(
        equivalence.Check("gru", "auto", B=5, T=6, H=3))
    assert list(np.asarray(lengths[:3])) == [6, 0, 1] and lengths.shape == (5,)


def test_a_method_that_raises_is_recorded():
    out = equivalence.run(equivalence.Check("elman", "cudnn", B=2, T=3, H=4))
    assert out["status"] == "error" and "ValueError: method='cudnn'" in out["error"]


def test_bidirectional_checks_both_directions_params_and_carries():
    """Pallas's one-launch bidirectional path against two scans; each direction's params and
    initial carry are its own, and a perturbed backward-direction gradient is caught."""
    check = equivalence.Check("gru", "pallas", "highest", "bidirectional", B=5, T=4, H=4)
    ref = equivalence.values(check, "scan", "highest")
    assert set(ref["d_params"]) == {"fwd", "bwd"} and len(ref["carry"]) == 2
    assert not np.allclose(ref["d_params"]["fwd"]["U"], ref["d_params"]["bwd"]["U"])
    ok = equivalence.run(check, ref)
    assert ok["status"] == "ok" and ok["max_rel_err"] < 1e-5
    bwd = {**ref["d_params"]["bwd"], "U": 1.01 * ref["d_params"]["bwd"]["U"]}
    bad = equivalence.run(check, {**ref, "d_params": {**ref["d_params"], "bwd": bwd}})
    assert bad["status"] == "mismatch"
