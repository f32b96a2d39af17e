"""Command line: ``python -m experiments {list, run NAME, demo}``."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
import tokenize
import typing

from experiments import harness

# -- what a config field means (``run NAME --help``) ---------------------------------------------
# Fields that several experiments share; a field's own comment in its Config takes precedence.
COMMON_FIELDS = {
    "seed": "the run's root key, jax.random.key(seed); every stream is split or folded from it",
    "num_steps": "optimizer updates per training run",
    "checkpoint_dir": "resume from / save checkpoints here (None: no checkpoints)",
    "checkpoint_every": "save a checkpoint every this many steps (any positive int)",
    "log_every": "steps per logged point of the learning curves",
    "batch_size": "training sequences per update",
    "hidden_size": "H, hidden units per recurrent layer",
    "models": "comma-separated model names to train (see the module doc)",
    "num_seeds": "independent seeds per configuration (run together with jax.vmap)",
    "learning_rate": "the optimizer's learning rate",
    "clip_threshold": "global-norm clipping threshold (Pascanu et al. 2013)",
    "optimizer": "optax optimizer: sgd, momentum, adam or rmsprop",
    "eval_examples": "held-out examples in the final evaluation",
    "eval_batch_size": "examples per evaluation batch",
    "input_size": "I, input features per step",
    "spectral_radius": "initial spectral radius of the recurrent matrix U",
}


def _field_comments(cls) -> dict:
    """{field: comment} from the class source: a trailing ``# ...`` or the comment lines above."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments = {}
    for tok in tokenize.generate_tokens(iter(source.splitlines(keepends=True)).__next__):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = (tok.start[1], tok.string.lstrip("#").strip())
    lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        row = node.lineno
        if row in comments and comments[row][0] > len(lines[row - 1].split("#")[0].rstrip()):
            out[node.target.id] = comments[row][1]
            continue
        above = []
        while row - 1 in comments and not lines[row - 2].split("#")[0].strip():
            row -= 1
            above.insert(0, comments[row][1])
        if above:
            out[node.target.id] = " ".join(above)
    return out


def describe_config(module) -> list[dict]:
    """Every config field of an experiment: name, type, default and a one-line description."""
    cfg_cls = module.Config
    hints = typing.get_type_hints(cfg_cls)
    comments = _field_comments(cfg_cls)
    rows = []
    for f in dataclasses.fields(cfg_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append({"name": f.name, "type": typing_name(hints[f.name]), "default": default,
                     "description": comments.get(f.name) or COMMON_FIELDS.get(f.name, "")})
    return rows


def typing_name(tp) -> str:
    """``int``, ``tuple[str, ...]``, ``str | None``: a type as a user types it."""
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def help_text(name: str) -> str:
    """What ``python -m experiments run NAME --help`` prints."""
    module = harness.load(name)
    doc = (module.__doc__ or "").strip()
    rows = describe_config(module)
    width = max(len(r["name"]) for r in rows) + 2
    lines = [f"usage: python -m experiments run {name} [--smoke] [--out DIR] [--FIELD VALUE ...]",
             "", doc.splitlines()[0] if doc else "", "",
             "options:",
             "  --smoke".ljust(width + 4) + "a tiny run of the same code path (seconds)",
             "  --out DIR".ljust(width + 4) + "output folder (default: results/)", "",
             "config fields (--FIELD VALUE; tuples comma-separated):"]
    for r in rows:
        default = ",".join(map(str, r["default"])) if isinstance(r["default"], tuple) \
            else repr(r["default"])
        lines.append(f"  --{r['name']:<{width}}{r['type']}, default {default}")
        lines.append(f"  {'':<{width + 2}}{r['description']}")
    return "\n".join(lines)


def _overrides(extra: list[str]) -> dict:
    """``--field value`` / ``--field=value`` pairs after the known options."""
    out, i = {}, 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--"):
            raise ValueError(f"expected --field value, got {tok!r}")
        if "=" in tok:
            key, value = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(extra):
                raise ValueError(f"{tok} needs a value")
            key, value = tok[2:], extra[i + 1]
            i += 2
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="name every experiment")
    run = sub.add_parser("run", help="run one experiment", add_help=False)
    run.add_argument("name")
    run.add_argument("-h", "--help", action="store_true",
                     help="list the experiment's config fields with types and defaults")
    run.add_argument("--smoke", action="store_true", help="a tiny run of the same code path")
    run.add_argument("--out", default="results", help="output folder (default: results/)")
    demo = sub.add_parser("demo", help="the headline report (a few minutes on a CPU)")
    demo.add_argument("--out", default="results")
    demo.add_argument("--smoke", action="store_true")
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command == "list":
            for name in harness.experiment_names():
                module = harness.load(name)
                summary = (module.__doc__ or "").strip().splitlines()
                print(f"{name:16s} {summary[0] if summary else ''}")
            return 0
        if args.command == "run" and args.help:
            print(help_text(args.name))
            return 0
        if args.command == "run":
            harness.run_experiment(args.name, _overrides(extra), smoke=args.smoke, out=args.out)
            return 0
        if extra:
            raise ValueError(f"unexpected arguments {extra}")
        from experiments import demo as demo_module

        demo_module.main(out=args.out, smoke=args.smoke)
        return 0
    except (ValueError, TypeError) as err:  # bad flags or config values, before any run
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
