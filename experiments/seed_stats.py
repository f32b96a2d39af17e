"""Statistics over seeds: every training experiment reports its seeds as median [Q1, Q3].

One run trains S seeds (``experiments.training.train_seeds``); its history stores each recorded
metric as ``[records][S]``. These functions turn per-seed values into what reports print and
figures draw: ``spread`` (median, quartiles, the number of finite seeds), ``curve_spread``
(the line and interquartile band of per-seed curves), ``trend`` and ``reading`` (whether a
curve was still falling, in plain words).
"""

from __future__ import annotations

import warnings

import numpy as np


def per_seed(history: dict, name: str) -> list[list[float]]:
    """A recorded curve as ``[S][records]`` (the history stores ``[records][S]``)."""
    return np.asarray(history[name], dtype=float).T.tolist()


def spread(values) -> dict:
    """Median and interquartile range of per-seed values: ``{"median", "q1", "q3", "n"}``.

    NaN seeds (a diverged run) are left out of the quartiles and counted in ``n`` only as
    missing: ``n`` is the number of finite seeds. Every training experiment reports seeds this
    way (median [Q1, Q3]), never one run or a mean.
    """
    v = np.asarray(values, dtype=float).ravel()
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return {"median": float("nan"), "q1": float("nan"), "q3": float("nan"), "n": 0}
    q1, med, q3 = np.percentile(finite, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "n": int(finite.size)}


def curve_spread(curves) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(Q1, median, Q3)`` over seeds, record by record, of per-seed curves ``[S][records]``
    (None or NaN entries, a diverged seed's, left out; NaN where no seed is finite): the line
    and interquartile band a figure draws."""
    ys = np.asarray([[np.nan if v is None else v for v in row] for row in curves], float)
    ys = np.where(np.isfinite(ys), ys, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a record where every seed diverged
        q1, med, q3 = np.nanpercentile(ys, [25, 50, 75], axis=0)
    return q1, med, q3


def format_spread(s: dict, fmt: str = ".4g") -> str:
    """``median [Q1, Q3]`` as text (``nan`` when no seed finished)."""
    return f"{s['median']:{fmt}} [{s['q1']:{fmt}}, {s['q3']:{fmt}}]"


def trend(per_seed_curve) -> float:
    """Whether a curve was still falling at the end: the median over seeds, averaged over its
    last tenth of records, divided by its average over the tenth that ends at three quarters
    (< 1: still falling; ~1: flat). Shapes: per_seed_curve [S][records] -> float."""
    med = np.nanmedian(np.asarray(per_seed_curve, dtype=float), axis=0)
    k, q = max(len(med) // 10, 1), max(3 * len(med) // 4, 1)
    return float(np.nanmean(med[-k:]) / np.nanmean(med[max(q - k, 0):q]))


def reading(ratio: float, trend_value: float) -> str:
    """A plain-words reading of a final loss over its baseline and the curve's ``trend``: learnt
    (ratio < 0.5), still falling (trend < 0.95), or flat at or near the baseline."""
    if not np.isfinite(ratio):
        return "diverged (no finite seed)"
    if ratio < 0.5:
        return f"learnt ({ratio:.2g} x baseline)"
    if trend_value < 0.95:
        return f"{ratio:.2g} x baseline and still falling (trend {trend_value:.2f}): undecided"
    return f"{ratio:.2g} x baseline and flat (trend {trend_value:.2f}): on the plateau"
