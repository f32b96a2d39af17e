"""Figures for the experiments (matplotlib, Agg canvas): curves, surfaces, trajectories.

Imported by experiments only, never by the core library, so that ``import rnn_jax`` does not
need matplotlib. Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas: no
pyplot, no global figure registry, nothing to close, safe in threads and without a display.
Every helper draws on an Axes it is given and returns it; :func:`save` writes a PNG atomically.

    fig, axes = figure(ncols=2)
    with style():
        lines(axes[0], lags, {"g = 0.9": curve}, logy=True, xlabel="lag", ylabel="norm")
    save(fig, out_dir / "curves.png")
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

# read-only: applied with matplotlib.rc_context, never written into the global rcParams
STYLE = MappingProxyType({
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.6,
    "savefig.bbox": "tight",
})


def style():
    """A context manager applying :data:`STYLE` (build and save figures inside it)."""
    return matplotlib.rc_context(dict(STYLE))


def figure(nrows: int = 1, ncols: int = 1, *, width: float = 4.2, height: float = 3.4,
           sharey: bool = False):
    """A Figure with an Agg canvas and an ``[nrows, ncols]`` grid of Axes (squeezed).

    ``width``/``height`` are per panel, in inches.
    """
    for name, v in (("nrows", nrows), ("ncols", ncols)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    with style():
        fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, sharey=sharey, squeeze=False)
    return fig, (axes[0, 0] if axes.size == 1 else axes.squeeze())


def save(fig, path, *, dpi: int = 150) -> Path:
    """Writes ``fig`` as a PNG to ``path`` (a temporary file, then a rename); returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    with style():
        fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
    return path


def _label_axes(ax, xlabel, ylabel, title):
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)


def lines(ax, x, ys: Mapping[str, object], *, logy: bool = False, xlabel: str = "",
          ylabel: str = "", title: str = "", cmap: str | None = "viridis", styles=None,
          legend_title: str | None = None):
    """One line per entry of ``ys`` (label -> y values over ``x``), coloured in order by ``cmap``.

    ``styles`` optionally maps a label to extra ``ax.plot`` keywords (e.g. a dashed bound).
    Non-positive values are dropped on a log axis (underflowed norms), not drawn as -inf.

    Shapes: x [N], every y [N].
    """
    if not ys:
        raise ValueError("ys must hold at least one curve")
    x = np.asarray(x, float)
    colors = ([None] * len(ys) if cmap is None
              else matplotlib.colormaps[cmap](np.linspace(0.0, 0.9, len(ys))))
    for (label, y), color in zip(ys.items(), colors, strict=True):
        y = np.asarray(y, float)
        if y.shape != x.shape:
            raise ValueError(f"curve {label!r} has shape {y.shape}, expected {x.shape} like x")
        if logy:
            y = np.where(y > 0, y, np.nan)
        kw = {"color": color, **dict((styles or {}).get(label, {}))}
        ax.plot(x, y, label=label, **kw)
    if logy:
        ax.set_yscale("log")
    _label_axes(ax, xlabel, ylabel, title)
    ax.legend(title=legend_title)
    return ax


def surface(ax, x, y, z, *, log: bool = False, xlabel: str = "", ylabel: str = "",
            title: str = "", colorbar: str = "", cmap: str = "viridis", levels: int = 30):
    """A filled map of ``z`` over the grid (x, y), with a colour bar; log-coloured if ``log``.

    Shapes: x [Nx], y [Ny], z [Ny, Nx] (rows follow y, as ``meshgrid(x, y)`` gives).
    """
    x, y, z = np.asarray(x, float), np.asarray(y, float), np.asarray(z, float)
    if z.shape != (y.size, x.size):
        raise ValueError(f"z must have shape (len(y), len(x)) = {(y.size, x.size)}, got {z.shape}")
    if log:
        positive = z[z > 0]
        lo = positive.min() if positive.size else 1e-12
        z = np.clip(z, lo, None)
        mesh = ax.pcolormesh(x, y, z, cmap=cmap, shading="auto",
                             norm=LogNorm(vmin=lo, vmax=z.max()), rasterized=True)
    else:
        mesh = ax.contourf(x, y, z, levels=levels, cmap=cmap)
    cbar = ax.figure.colorbar(mesh, ax=ax)
    if colorbar:
        cbar.set_label(colorbar)
    _label_axes(ax, xlabel, ylabel, title)
    return ax


def trajectory(ax, points, *, label: str, color: str = "white", linestyle: str = "-",
               marker: str = "o"):
    """A path through parameter space, with its start (square) and end (star) marked.

    Shapes: points [N, 2] (x, y per step).
    """
    p = np.asarray(points, float)
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] < 1:
        raise ValueError(f"points must have shape [N >= 1, 2], got {p.shape}")
    ax.plot(p[:, 0], p[:, 1], linestyle=linestyle, marker=marker, markersize=2.5, color=color,
            label=label, linewidth=1.2)
    ax.plot(p[0, 0], p[0, 1], marker="s", markersize=7, color=color, markeredgecolor="black",
            linestyle="none")
    ax.plot(p[-1, 0], p[-1, 1], marker="*", markersize=11, color=color, markeredgecolor="black",
            linestyle="none")
    return ax


def branches(ax, x, y, stable, *, label: str = "fixed points", color: str = "black"):
    """A curve of fixed points, solid where ``stable`` and dashed where not (bifurcation plots).

    Shapes: x [N], y [N], stable [N] bool; consecutive points of one kind form one segment.
    """
    x, y, stable = np.asarray(x, float), np.asarray(y, float), np.asarray(stable, bool)
    if not (x.shape == y.shape == stable.shape) or x.ndim != 1:
        raise ValueError(f"x, y, stable must be 1-D of one shape, got {x.shape}, {y.shape}, "
                         f"{stable.shape}")
    cuts = np.flatnonzero(np.diff(stable.astype(int))) + 1
    first = {True: True, False: True}
    for seg in np.split(np.arange(x.size), cuts):
        if seg.size == 0:
            continue
        kind = bool(stable[seg[0]])
        # extend by one point so the solid and dashed pieces meet
        seg = np.append(seg, seg[-1] + 1) if seg[-1] + 1 < x.size else seg
        name = f"{label} ({'stable' if kind else 'unstable'})" if first[kind] else None
        first[kind] = False
        ax.plot(x[seg], y[seg], color=color, linestyle="-" if kind else "--",
                linewidth=2.0 if kind else 1.2, label=name)
    return ax
