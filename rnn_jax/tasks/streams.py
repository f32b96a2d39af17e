"""Parallel token streams for truncated BPTT over a long text.

:func:`streams` cuts the token sequence into B contiguous parallel streams and :func:`windows`
walks them window by window, so a carry can be passed from one window to the next (besides the
random training windows of ``CharLM.sample``).
"""

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from .protocol import validate_batch_size

__all__ = ["streams", "windows"]


def streams(tokens, batch_size):
    """Cut a 1-D token sequence into ``batch_size`` contiguous parallel streams.

    Stream b is ``tokens[b·L : (b+1)·L]`` with L = ⌊N / batch_size⌋; the last N - B·L tokens are
    dropped. Reading the streams column by column walks B separate stretches of text in parallel,
    the layout of truncated BPTT for language models (Mikolov et al. 2010, "Recurrent neural
    network based language model"; Zaremba, Sutskever & Vinyals 2014).

    Shapes:
        tokens: [N] int
        returns: [batch_size, L] int32
    """
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens: expected a 1-D token array [N], got shape {tokens.shape}")
    b = validate_batch_size(batch_size)
    length = tokens.shape[0] // b
    if length < 2:
        raise ValueError(
            f"batch_size: {b} streams of {tokens.shape[0]} tokens leave {length} per stream; "
            "expected at least 2 (an input and its next-token target)"
        )
    return tokens[: b * length].reshape(b, length).astype(jnp.int32)


def windows(stream_array, window: int) -> Iterator[tuple[jax.Array, jax.Array]]:
    """Yield consecutive ``(xs, ys)`` windows of parallel streams, ys = xs shifted by one.

    Window k covers columns [kW, (k+1)W)::

        xs = S[:, kW : kW + W],   ys = S[:, kW + 1 : kW + W + 1]

    for k = 0 .. ⌊(L - 1)/W⌋ - 1, so window k+1 continues exactly where window k stopped and the
    final carry of one window is the right initial carry of the next (truncated BPTT, Williams &
    Peng 1990). Trailing columns that do not fill a window are skipped.

    Shapes:
        stream_array: [B, L] int
        yields: xs [B, W], ys [B, W] (same array type and dtype as ``stream_array``)
    """
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window: expected an int >= 1, got {window!r}")
    if getattr(stream_array, "ndim", None) != 2:
        shape = getattr(stream_array, "shape", None)
        raise ValueError(f"stream_array: expected [B, L] streams, got shape {shape}")
    count = (stream_array.shape[1] - 1) // window
    for k in range(count):
        start = k * window
        yield (
            stream_array[:, start : start + window],
            stream_array[:, start + 1 : start + window + 1],
        )
