"""The ``clipping_sweep`` experiment's figures and markdown report (its run is in ``__init__``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from experiments import seed_stats
from experiments.clipping_sweep import metric_key

if TYPE_CHECKING:
    from experiments.clipping_sweep import Config


def _xpos(multiples) -> np.ndarray:
    """x positions on a log axis; inf (no clipping) is drawn one decade past the largest."""
    finite = [m for m in multiples if math.isfinite(m)]
    top = max(finite) if finite else 1.0
    return np.asarray([m if math.isfinite(m) else 10.0 * top for m in multiples], float)


def figures(metrics: dict, cfg: Config, out_dir) -> list:
    """clipping_sweep.png: test MSE and clipped fraction vs the multiple (log x), per seed, with
    the median and interquartile range over seeds; loss_curves.png: training MSE against steps,
    median over seeds with the interquartile band, one line per multiple."""
    from rnn_jax import plotting

    keys = [metric_key(m) for m in cfg.multiples]
    x = _xpos(cfg.multiples)
    ticks = [("∞\n(none)" if k == "inf" else k) for k in keys]
    fig, (ax_loss, ax_clip) = plotting.figure(1, 2, width=4.4, height=3.6)
    with plotting.style():
        per_seed = np.asarray([metrics["final_loss_per_seed"][k] for k in keys], float)
        div = np.asarray([metrics["diverged_per_seed"][k] for k in keys], bool)
        median = np.asarray([metrics["final_loss"][k] for k in keys], float)
        finite = per_seed[np.isfinite(per_seed)]
        # non-finite losses are drawn on a line above every finite one
        top = 3.0 * max(finite.max() if finite.size else 1.0, metrics["divergence_bound"])
        for s in range(per_seed.shape[1]):
            y = per_seed[:, s]
            ok, bad = ~div[:, s], div[:, s] & np.isfinite(y)
            ax_loss.scatter(x[ok], y[ok], s=16, color="C0", alpha=0.6,
                            label="seed (trained)" if s == 0 else None, zorder=3)
            ax_loss.scatter(x[bad], y[bad], s=30, marker="x", color="C3",
                            label="seed (diverged)" if s == 0 else None, zorder=3)
        nonfinite = ~np.isfinite(per_seed)
        if nonfinite.any():
            rows, _ = np.nonzero(nonfinite)
            ax_loss.scatter(x[rows], np.full(rows.size, top), s=40, marker="^", color="C3",
                            label="seed (non-finite loss)", zorder=3)
        ok = np.isfinite(median)
        q1, q3 = (np.asarray([metrics["final_loss_spread"][k][q] for k in keys], float)
                  for q in ("q1", "q3"))
        ax_loss.fill_between(x[ok], q1[ok], q3[ok], color="C0", alpha=0.2, label="IQR over seeds")
        ax_loss.plot(x[ok], median[ok], color="C0", marker="o", label="median over seeds")
        ax_loss.scatter(x[~ok], np.full((~ok).sum(), top), s=60, marker="o",
                        facecolors="none", edgecolors="C0", zorder=4)
        ax_loss.axhline(metrics["baseline"], color="k", ls=":", lw=1, label="baseline 1/6")
        ax_loss.axhline(metrics["divergence_bound"], color="C3", ls="--", lw=0.8,
                        label=f"divergence bound {cfg.divergence_factor:g} × 1/6")
        ax_loss.set(xscale="log", yscale="log", xlabel=r"threshold $\tau$ / median $\|g\|$",
                    ylabel="test MSE", title=f"adding (sum), T = {cfg.seq_len}, tanh, SGD "
                    f"lr {cfg.learning_rate:g}")
        frac = np.asarray([metrics["clip_fraction_per_seed"][k] for k in keys])  # [M, S]
        for s in range(frac.shape[1]):
            ax_clip.scatter(x, frac[:, s], s=16, color="C1", alpha=0.6,
                            label="seed" if s == 0 else None, zorder=3)
        q1, q3 = (np.asarray([metrics["clip_fraction_spread"][k][q] for k in keys], float)
                  for q in ("q1", "q3"))
        ax_clip.fill_between(x, q1, q3, color="C1", alpha=0.2, label="IQR over seeds")
        ax_clip.plot(x, [metrics["clip_fraction"][k] for k in keys], color="C1", marker="o",
                     label="median over seeds")
        ax_clip.set(xscale="log", xlabel=r"threshold $\tau$ / median $\|g\|$", ylim=(-0.03, 1.03),
                    ylabel="fraction of steps clipped",
                    title=f"median unclipped $\\|g\\|$ = {metrics['median_grad_norm']:.3g}")
        for ax in (ax_loss, ax_clip):
            ax.set_xticks(x, ticks)
            ax.set_xticks([], minor=True)
            ax.legend()
        paths = [plotting.save(fig, out_dir / "clipping_sweep.png")]

    fig, ax = plotting.figure(1, 1, width=5.4, height=3.8)
    with plotting.style():
        steps = metrics["curves_step"]
        curves, bands = {}, []
        for k in keys:
            loss = np.asarray(metrics["curves"][k]["loss"], float)  # [S, records]
            # a chunk without a finite step counts as +inf, so diverged seeds raise the quartiles
            q1, med, q3 = np.percentile(np.where(np.isfinite(loss), loss, np.inf), [25, 50, 75],
                                        axis=0)
            curves["no clipping" if k == "inf" else f"τ = {k} × median"] = med
            bands.append((q1, np.where(np.isfinite(q3), q3, np.nan)))  # +inf: no band drawn
        plotting.lines(ax, steps, curves, logy=True, xlabel="step",
                       ylabel="training MSE (chunk mean, median, IQR band)", cmap="viridis",
                       title="training curves (a diverged seed counts as +∞)")
        for line, (q1, q3) in zip(ax.get_lines(), bands, strict=False):
            ax.fill_between(steps, q1, q3, color=line.get_color(), alpha=0.15)
        ax.axhline(metrics["baseline"], color="k", ls=":", lw=1)
        paths.append(plotting.save(fig, out_dir / "loss_curves.png"))
    return paths


def report(metrics: dict, cfg: Config) -> str:
    """The sweep table beside Pascanu et al.'s recommendation."""
    c = metrics["calibration"]
    lines = [
        f"Adding problem (sum), T = {cfg.seq_len}; tanh RNN, H = {cfg.hidden_size}, Gaussian U "
        f"at spectral radius {cfg.spectral_radius:g}; plain SGD, learning rate "
        f"{cfg.learning_rate:g}, batch {cfg.batch_size}, {cfg.num_steps} steps; "
        f"{cfg.num_seeds} seeds per threshold, all runs in one vmapped program.",
        "",
        f"Calibration: {cfg.calib_steps} unclipped steps per seed (the first steps of the "
        f"no-clipping run): median ||g|| = **{c['median']:.4g}**, mean {c['mean']:.4g}, max "
        f"{c['max']:.4g}, {c['num_nonfinite']} non-finite (a seed whose unclipped run blows "
        "up early drags the mean, not the median).",
        "",
        f"Divergence: a non-finite step, or test MSE above {cfg.divergence_factor:g} × 1/6 = "
        f"{metrics['divergence_bound']:.4g}. Test MSE on {cfg.eval_examples} fresh sequences "
        "and the fraction of steps clipped: median [Q1, Q3] over the seeds whose value is "
        "finite (their number in the 'seeds' column, out of all seeds).",
        "",
        "| τ / median | τ | seeds | test MSE median [Q1, Q3] | per seed | clipped median "
        "[Q1, Q3] | diverged seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in cfg.multiples:
        k = metric_key(m)
        seeds = ", ".join(f"{v:.3g}" for v in metrics["final_loss_per_seed"][k])
        ndiv = sum(metrics["diverged_per_seed"][k])
        tau = "none" if k == "inf" else f"{metrics['threshold'][k]:.3g}"
        loss, frac = metrics["final_loss_spread"][k], metrics["clip_fraction_spread"][k]
        lines.append(f"| {'∞' if k == 'inf' else k} | {tau} | {loss['n']}/{cfg.num_seeds} | "
                     f"{seed_stats.format_spread(loss)} | {seeds} | "
                     f"{seed_stats.format_spread(frac, '.3f')} | {ndiv}/{cfg.num_seeds} |")
    lines += ["", "Pascanu, Mikolov & Bengio (2013), Sec. 3.2: set τ from the average norm of "
              "unclipped updates; in their experiments training was not very sensitive to τ "
              "and worked even for rather small thresholds (they give no table of τ). "
              f"Baseline: predicting 1 gives MSE 1/6 = {metrics['baseline']:.4f}."]
    return "\n".join(lines)
