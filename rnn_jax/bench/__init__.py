"""Benchmarks: the harness (``harness``: build, check against the reference, time interleaved),
the implementations it times (``peers``: rnn_jax's paths, flax, PyTorch, jax.experimental.rnn),
and a compiled step's time per XLA operation (``op_profile``).
"""
