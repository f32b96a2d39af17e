"""The ``char_lm`` experiment's figures and markdown report (its run is in ``__init__``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from experiments import seed_stats

if TYPE_CHECKING:
    from experiments.char_lm import Config


def figures(metrics: dict, cfg: Config, out_dir) -> list:
    """bpc_curves.png: training (chunk mean) and validation bits per character against updates,
    with the unigram and uniform baselines; and the median and largest pre-clip gradient norm
    per chunk. Every curve: the median over seeds with the interquartile band."""
    from rnn_jax import plotting

    ln2 = math.log(2.0)
    fig, (ax, ax_g) = plotting.figure(1, 2, width=4.6, height=3.6)
    with plotting.style():
        for i, name in enumerate(cfg.models):
            h = metrics["curves"][name]
            for axis, key, scale, kw in (
                    (ax, "train_loss", ln2, {"label": f"{name} train"}),
                    (ax, "val_loss", ln2, {"ls": "--", "marker": "o", "ms": 2.5,
                                           "label": f"{name} validation"}),
                    (ax_g, "grad_norm", 1.0, {"label": f"{name} median"}),
                    (ax_g, "grad_norm_max", 1.0, {"ls": ":", "label": f"{name} max"})):
                q1, med, q3 = seed_stats.curve_spread(seed_stats.per_seed(
                    {key: [[np.nan if v is None else v for v in r] for r in h[key]]}, key))
                axis.plot(h["step"], med / scale, color=f"C{i}", **kw)
                axis.fill_between(h["step"], q1 / scale, q3 / scale, color=f"C{i}", alpha=0.15)
        ax.axhline(metrics["unigram_bpc"], color="k", ls=":", lw=1,
                   label=f"unigram {metrics['unigram_bpc']:.2f}")
        ax.axhline(metrics["uniform_bpc"], color="grey", ls="-.", lw=1,
                   label=f"uniform {metrics['uniform_bpc']:.2f}")
        ax.set(xlabel="TBPTT update", ylabel="bits per character (median, IQR band)",
               title=f"Shakespeare ({cfg.edition}), H = {cfg.hidden_size}")
        ax.legend(ncols=2, fontsize=7, loc="center right")
        ax_g.axhline(cfg.clip_threshold, color="k", ls="-.", lw=1,
                     label=f"clip threshold {cfg.clip_threshold:g}")
        ax_g.set(yscale="log", xlabel="TBPTT update", ylabel="pre-clip ‖g‖ per chunk",
                 title="global gradient norm (median, max)")
        ax_g.legend(fontsize=7)
    return [plotting.save(fig, out_dir / "bpc_curves.png")]


def report(metrics: dict, cfg: Config) -> str:
    """Test bits per character per model beside the baselines, and the sample."""
    chars = metrics["chars"]
    lines = [
        f"Shakespeare, {cfg.edition} edition(s): {chars['train']:,} train / "
        f"{chars.get('validation', 0):,} validation / {chars.get('test', 0):,} test characters, "
        f"V = {metrics['vocab_size']}. One recurrent layer, H = {cfg.hidden_size}, embedding "
        f"{cfg.embed_size}; truncated BPTT over {cfg.batch_size} streams, windows of "
        f"{cfg.window} characters, carries passed between windows with stop_gradient; Adam "
        f"{cfg.learning_rate:g}, global-norm clipping at {cfg.clip_threshold:g}; "
        f"{cfg.num_steps} updates ({metrics['train_chars_read']:,} characters read). "
        f"{cfg.num_seeds} seeds per model (initialisations; same data order): median [Q1, Q3] "
        "over the seeds that stayed finite (their number in 'seeds').",
        "",
        "| model | parameters | seeds | test bits/char | last train bits/char | updates clipped |",
        "|---|---|---|---|---|---|",
    ]
    for name in cfg.models:
        test, tr, clip = (metrics[f"{k}_spread"][name] for k in ("test_bpc", "final_train_bpc",
                                                                  "clip_fraction"))
        lines.append(f"| {name} | {metrics['num_params'][name]:,} | {test['n']} | "
                     f"{seed_stats.format_spread(test, '.3f')} | "
                     f"{seed_stats.format_spread(tr, '.3f')} | "
                     f"{seed_stats.format_spread(clip, '.2%')} |")
    lines += [
        f"| unigram baseline | {metrics['vocab_size'] - 1} | | {metrics['unigram_bpc']:.3f} | | |",
        f"| uniform, log2 V | 0 | | {metrics['uniform_bpc']:.3f} | | |",
        "",
        "Karpathy, Johnson & Fei-Fei (2015) train larger, deeper models for much longer and "
        "report other corpora (War and Peace, the Linux kernel source), so there is no "
        "published number for this setting: the table compares with the two baselines only.",
        "",
        f"Sample from seed 0 of the best model ({metrics['best_model']}), temperature "
        f"{cfg.temperature:g}, {cfg.sample_length} characters after the prompt:",
        "",
        "```",
        metrics["sample"].strip("\n"),
        "```",
    ]
    return "\n".join(lines)
