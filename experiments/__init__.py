"""Experiments: one module per experiment, each a frozen ``Config`` and ``run(cfg) -> dict``.

    python -m experiments list
    python -m experiments run NAME [--smoke] [--out DIR] [--field value ...]
    python -m experiments demo [--out DIR]

See ``experiments.harness`` for what a run writes.
"""
