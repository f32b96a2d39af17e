"""Where a compiled step spends its time: XLA's own trace, summed per HLO operation.

A wall-clock benchmark says how long a step takes; this says why. ``profile`` runs a compiled
executable under ``jax.profiler``, keeps the trace events whose names are operations of that
executable (its optimised HLO), and sums them per operation:

    ms(op)    = sum of the op's event durations / calls      (time per step)
    count(op) = number of the op's events / calls            (T for an op inside a time loop)
    kind(op)  = "matmul"  a dot or convolution, or a fusion that contains one
                "loop"    a while loop: its time includes every op it ran, so loops are listed
                          but left out of the totals
                "control" conditional / call (likewise left out of the totals)
                "other"   everything else: elementwise fusions, copies, slices, ...

so a time loop shows up as a ``while`` of ``count`` 1 and its body's ops with ``count`` T.
Several threads may run ops at once, so the totals can exceed the step's wall time.

Events are read from the device planes of the trace when it has any (an accelerator), else from
the host threads that run XLA's CPU thunks. Checked on XLA's CPU backend only.
"""

from __future__ import annotations

import glob
import os
import re
import tempfile

import jax

KINDS = ("matmul", "other", "loop", "control")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = .*?\s([a-z][\w\-]*)\(")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition|branch_computations)=\{?%([\w.\-]+)")
_TARGET = re.compile(r'custom_call_target="([^"]*)"')


def hlo_kinds(hlo_text: str) -> dict:
    """``{instruction name: kind}`` for every instruction of an optimised HLO module's text
    (``compiled.as_text()``); kinds as in the module docstring."""
    opcodes, calls, instructions = {}, {}, []
    computation = None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)  # unindented: instructions are indented
        if header:
            computation = header.group(1)
            opcodes.setdefault(computation, set())
            calls.setdefault(computation, set())
            continue
        inst = _INSTRUCTION.match(line)
        if inst is None or computation is None:
            continue
        name, opcode = inst.groups()
        called = _CALLS.findall(line)
        target = _TARGET.search(line)
        opcodes[computation].add(opcode)
        calls[computation].update(called)
        instructions.append((name, opcode, called, target.group(1) if target else ""))

    def has_product(comp, seen=()):
        if comp in seen or comp not in opcodes:
            return False
        return bool(opcodes[comp] & {"dot", "convolution"}) or any(
            has_product(c, (*seen, comp)) for c in calls[comp])

    kinds = {}
    for name, opcode, called, target in instructions:
        if opcode == "while":
            kinds[name] = "loop"
        elif opcode in ("conditional", "call"):
            kinds[name] = "control"
        elif (opcode in ("dot", "convolution")
              or (opcode == "fusion" and any(has_product(c) for c in called))
              or (opcode == "custom-call" and re.search(r"matmul|gemm|conv", target, re.I))):
            kinds[name] = "matmul"
        else:
            kinds[name] = "other"
    return kinds


def _events(trace_dir: str, names) -> list:
    """(name, duration_ns) of the trace's events that are operations in ``names``."""
    from jax.profiler import ProfileData

    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                   key=os.path.getmtime)
    if not files:
        raise RuntimeError(f"jax.profiler wrote no trace under {trace_dir}")
    planes = list(ProfileData.from_file(files[-1]).planes)
    device = [p for p in planes if p.name.startswith("/device:")
              and any(ev.name in names for line in p.lines for ev in line.events)]
    out = []
    for plane in device or planes:
        for line in plane.lines:
            if line.name == "python":  # the Python tracer's own events
                continue
            out += [(ev.name, ev.duration_ns) for ev in line.events if ev.name in names]
    return out


def profile(compiled, *args, calls: int = 5, warmup: int = 2, top: int | None = None) -> dict:
    """Runs ``compiled(*args)`` ``calls`` times under the profiler and sums its ops' events.

    ``compiled``: an ahead-of-time compiled executable (``jax.jit(f).lower(...).compile()``).
    Returns ``{"calls", "ops": [{"name", "kind", "ms", "count"}, ...] (slowest first; the
    ``top`` slowest when given), "totals": {"matmul", "other"} (ms per call, loops and
    control ops excluded, every op counted even beyond ``top``), "loops_ms", "by_count":
    [{"count", "ops", "ms", "matmul_ms"}, ...]}``: ``by_count`` groups the non-loop ops by how
    often a call runs them, e.g. the ``ops`` distinct operations a time loop runs once per step.
    """
    for name, value, low in (("calls", calls, 1), ("warmup", warmup, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if top is not None and (not isinstance(top, int) or top < 1):
        raise ValueError(f"top must be a positive int or None, got {top!r}")
    if not hasattr(compiled, "as_text"):
        raise TypeError("compiled must be a compiled executable (jax.jit(f).lower(...)"
                        f".compile()), got {type(compiled).__name__}")
    kinds = hlo_kinds(compiled.as_text())
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory(prefix="rnn_jax_profile_") as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(calls):
                jax.block_until_ready(compiled(*args))
        events = _events(trace_dir, kinds)
    ns, count = {}, {}
    for name, duration in events:
        ns[name] = ns.get(name, 0) + duration
        count[name] = count.get(name, 0) + 1
    ops = sorted(({"name": n, "kind": kinds[n], "ms": ns[n] / 1e6 / calls,
                   "count": count[n] / calls} for n in ns), key=lambda r: -r["ms"])
    totals = {k: sum(r["ms"] for r in ops if r["kind"] == k) for k in ("matmul", "other")}
    loops = sum(r["ms"] for r in ops if r["kind"] == "loop")
    groups = {}
    for r in ops:
        if r["kind"] in ("matmul", "other"):
            g = groups.setdefault(r["count"], {"count": r["count"], "ops": 0, "ms": 0.0,
                                               "matmul_ms": 0.0})
            g["ops"] += 1
            g["ms"] += r["ms"]
            g["matmul_ms"] += r["ms"] if r["kind"] == "matmul" else 0.0
    return {"calls": calls, "ops": ops[:top] if top else ops, "totals": totals,
            "loops_ms": loops, "by_count": sorted(groups.values(), key=lambda g: -g["ms"])}
