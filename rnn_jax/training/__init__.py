"""Training: the optimizer factory and train step (``train``), long runs with logs and resume
(``loop.fit``, with its ``logs``), truncated BPTT (``tbptt``), sealed orbax checkpoints
(``checkpoint``, with its integrity ``seal``), data parallelism over devices (``parallel``) and
sampling text from a trained model (``generate``).
"""
