"""The time loops behind ``rj.rnn(method=...)``; each gives the same results, at its own speed.

- ``scan``: ``lax.scan`` over ``cell.recur``, differentiated by JAX (every cell and option).
- ``fused`` (with ``fused_rules``, one rule per cell): a hand-written JVP whose BPTT computes the
  weight gradients as single products outside the loop; the CPU default.
- ``pallas`` (with ``pallas_kernels``): the whole time loop in one kernel per direction (GPU).
- ``deer``: DEER and quasi-DEER, parallel in time by Newton iterations.
- ``segments``: ``remat``; the fused or plain loop in checkpointed segments of ~√T steps,
  BPTT in O(√T) memory for about one extra forward pass.

The loops never import the runner (``rnn_jax.rnn``), which validates the arguments and picks one.
"""
