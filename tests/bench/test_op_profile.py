"""The op profile: HLO kinds from a module's text, and the per-op sums of a real trace."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import re  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

from rnn_jax.bench import op_profile  # noqa: E402

# A hand-written optimised module: a fusion that calls a computation with a dot, one that calls
# a computation that calls one with a dot, an elementwise fusion, a while loop, a custom call.
HLO = """
HloModule m

%inner (p0: f32[2,2], p1: f32[2,2]) -> f32[2,2] {
  %p0 = f32[2,2]{1,0} parameter(0)
  %p1 = f32[2,2]{1,0} parameter(1)
  ROOT %d = f32[2,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%outer (q0: f32[2,2], q1: f32[2,2]) -> f32[2,2] {
  %q0 = f32[2,2]{1,0} parameter(0)
  %q1 = f32[2,2]{1,0} parameter(1)
  ROOT %nested = f32[2,2]{1,0} fusion(%q0, %q1), kind=kOutput, calls=%inner
}

%adds (a0: f32[2,2]) -> f32[2,2] {
  %a0 = f32[2,2]{1,0} parameter(0)
  ROOT %t = f32[2,2]{1,0} tanh(%a0)
}

%body (s: (s32[], f32[2,2])) -> (s32[], f32[2,2]) {
  %s = (s32[], f32[2,2]{1,0}) parameter(0)
  %h = f32[2,2]{1,0} get-tuple-element(%s), index=1
  %i = s32[] get-tuple-element(%s), index=0
  %step_dot = f32[2,2]{1,0} fusion(%h, %h), kind=kCustom, calls=%inner
  ROOT %r = (s32[], f32[2,2]{1,0}) tuple(%i, %step_dot)
}

%cond (c: (s32[], f32[2,2])) -> pred[] {
  %c = (s32[], f32[2,2]{1,0}) parameter(0)
  ROOT %k = pred[] constant(true)
}

ENTRY %main (x: f32[2,2]) -> f32[2,2] {
  %x = f32[2,2]{1,0} parameter(0)
  %two_deep = f32[2,2]{1,0} fusion(%x, %x), kind=kCustom, calls=%outer
  %tanh_fusion = f32[2,2]{1,0} fusion(%two_deep), kind=kLoop, calls=%adds
  %mm = f32[2,2]{1,0} custom-call(%x, %x), custom_call_target="__onednn$matmul"
  %z = s32[] constant(0)
  %init = (s32[], f32[2,2]{1,0}) tuple(%z, %tanh_fusion)
  %loop = (s32[], f32[2,2]{1,0}) while(%init), condition=%cond, body=%body
  ROOT %out = f32[2,2]{1,0} get-tuple-element(%loop), index=1
}
"""


def test_hlo_kinds_of_a_written_module():
    kinds = op_profile.hlo_kinds(HLO)
    assert kinds["two_deep"] == "matmul"  # a dot two calls down
    assert kinds["step_dot"] == "matmul" and kinds["nested"] == "matmul" and kinds["d"] == "matmul"
    assert kinds["tanh_fusion"] == "other" and kinds["t"] == "other"
    assert kinds["mm"] == "matmul"
    assert kinds["loop"] == "loop"
    assert kinds["init"] == "other" and kinds["x"] == "other"
    assert set(kinds.values()) <= set(op_profile.KINDS)


def _scan_step(num_steps=6):
    def loss(u, xs):
        def body(h, x):
            h = jnp.tanh(x + h @ u)
            return h, h
        return jnp.sum(jax.lax.scan(body, jnp.zeros((4, 8)), xs)[1] ** 2)

    u, xs = 0.3 * jnp.eye(8), jnp.ones((num_steps, 4, 8))
    return jax.jit(jax.grad(loss)).lower(u, xs).compile(), (u, xs)


def test_hlo_kinds_of_a_compiled_scan():
    compiled, _ = _scan_step()
    kinds = op_profile.hlo_kinds(compiled.as_text())
    text = compiled.as_text()
    for name in (n for n, k in kinds.items() if k == "loop"):
        assert re.search(rf"%{re.escape(name)} = [^\n]* while\(", text)
    assert sum(k == "loop" for k in kinds.values()) == 2  # the forward scan and its transpose
    assert any(k == "matmul" for k in kinds.values())


def test_profile_counts_the_loop_once_and_its_body_once_per_step():
    num_steps = 6
    compiled, args = _scan_step(num_steps)
    got = op_profile.profile(compiled, *args, calls=3, warmup=1)
    assert got["calls"] == 3
    ops = {o["name"]: o for o in got["ops"]}
    loops = [o for o in got["ops"] if o["kind"] == "loop"]
    assert len(loops) == 2 and all(o["count"] == 1 for o in loops)
    per_step = [o for o in got["ops"] if o["count"] == num_steps]
    assert {o["kind"] for o in per_step} >= {"matmul"}  # h @ u runs once per step
    assert all(o["ms"] >= 0 for o in got["ops"]) and all(o["name"] in ops for o in per_step)
    # The body runs sequentially inside its loop: the loops' time covers the ops they ran.
    assert sum(o["ms"] for o in per_step) <= got["loops_ms"] * 1.01
    for kind in ("matmul", "other"):
        assert got["totals"][kind] == pytest.approx(
            sum(o["ms"] for o in got["ops"] if o["kind"] == kind))
    (group,) = [g for g in got["by_count"] if g["count"] == num_steps]
    assert group["ops"] == len(per_step)
    assert group["ms"] == pytest.approx(sum(o["ms"] for o in per_step))
    assert 0 < group["matmul_ms"] <= group["ms"]


def test_profile_keeps_the_slowest_ops_and_rejects_bad_arguments():
    compiled, args = _scan_step()
    top = op_profile.profile(compiled, *args, calls=1, warmup=0, top=2)
    assert len(top["ops"]) == 2 and top["ops"][0]["ms"] >= top["ops"][1]["ms"]
    for kwargs, message in (({"calls": 0}, "calls must be an int >= 1, got 0"),
                            ({"warmup": -1}, "warmup must be an int >= 0"),
                            ({"top": 0}, "top must be a positive int or None")):
        with pytest.raises(ValueError, match=message):
            op_profile.profile(compiled, *args, **kwargs)
    with pytest.raises(TypeError, match="compiled must be a compiled executable"):
        op_profile.profile(lambda u, xs: u, *args)
