"""The architecture, checked: packages by layer, imports that go one way, no import cycle.

DESIGN.md's layout lists the layers from top to bottom; a module may import its own layer and
the layers below it, never one above. Every import counts, the lazy ones inside functions too,
and the modules of ``rnn_jax`` must not form a cycle. The imports are read with ``ast`` from the
source, so the test sees what the code says, not what happens to be imported at run time.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rnn_jax"

# Top to bottom, as in DESIGN.md. ``rnn_jax`` itself (the public API, rj.*) re-exports the core,
# so it stands just above the model: the core may not import it, everything above may.
LAYERS = ("plotting", "bench", "interop", "training", "diagnostics", "tasks", "rnn_jax",
          "model", "stack", "losses", "rnn", "loops", "cells")
CORE = ("model", "stack", "losses", "rnn", "loops", "cells")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(importer: str, path: Path, node, modules) -> list[str]:
    """The rnn_jax modules an import statement reaches (a from-import of a submodule reaches it)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "rnn_jax"]
    if node.level:  # relative: from .x import y / from .. import z
        base = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "rnn_jax":
        return []
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in modules else target)
    return out


def _edges():
    modules = _modules()
    edges = []
    for name, path in sorted(modules.items()):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _resolve(name, path, node, modules):
                    edges.append((name, target, f"{path.relative_to(ROOT)}:{node.lineno}"))
    return edges


def _layer(module: str) -> str:
    parts = module.split(".")
    return "rnn_jax" if len(parts) == 1 else parts[1]


def test_every_module_belongs_to_a_layer():
    unknown = sorted(m for m in _modules() if _layer(m) not in LAYERS)
    assert unknown == [], f"modules outside DESIGN.md's layers: {unknown}"


def _upward(edges) -> list[str]:
    rank = {layer: i for i, layer in enumerate(LAYERS)}  # 0 = top
    offending = []
    for src, dst, where in edges:
        a, b = _layer(src), _layer(dst)
        if a != b and rank[b] < rank[a]:
            offending.append(f"{where}: {src} ({a}) imports {dst} ({b}), a layer above it")
    return offending


def test_imports_go_down_the_layers():
    offending = _upward(_edges())
    assert offending == [], "\n".join(offending)


def test_the_core_imports_no_framework_and_no_experiment():
    offending = []
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""])
            for n in names:
                top = n.split(".")[0]
                if top == "experiments" or (_layer(name) in CORE and top in (
                        "torch", "keras", "tensorflow", "matplotlib", "tensorboardX", "orbax")):
                    offending.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {n}")
    assert offending == [], "\n".join(offending)


def _cycle(edges):
    graph = {}
    for src, dst, _ in edges:
        if src != dst:
            graph.setdefault(src, set()).add(dst)
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_lazy_imports_included():
    cycle = _cycle(_edges())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_what_they_are_for():
    """The rules fail on known-bad graphs (a check that cannot fail checks nothing)."""
    up = [("rnn_jax.loops.deer", "rnn_jax.rnn", "deer.py:42"),
          ("rnn_jax.cells.base", "rnn_jax", "base.py:1")]
    assert _upward(up) == [
        "deer.py:42: rnn_jax.loops.deer (loops) imports rnn_jax.rnn (rnn), a layer above it",
        "base.py:1: rnn_jax.cells.base (cells) imports rnn_jax (rnn_jax), a layer above it"]
    assert _upward([("rnn_jax.rnn", "rnn_jax.loops.scan", "ok")]) == []
    cyc = [("rnn_jax.a", "rnn_jax.b", "x"), ("rnn_jax.b", "rnn_jax.c", "y"),
           ("rnn_jax.c", "rnn_jax.a", "z")]
    assert _cycle(cyc) == ["rnn_jax.a", "rnn_jax.b", "rnn_jax.c", "rnn_jax.a"]
    assert _cycle(cyc[:2]) is None
