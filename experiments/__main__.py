"""Command line: ``python -m experiments {list, run NAME, demo}``."""

from __future__ import annotations

import argparse
import sys

from experiments import harness


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
    run = sub.add_parser("run", help="run one experiment")
    run.add_argument("name")
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
