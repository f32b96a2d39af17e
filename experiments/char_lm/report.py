"""The ``char_lm`` experiment's figures and markdown report (its run is in ``__init__``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from experiments.char_lm import Config


def figures(metrics: dict, cfg: Config, out_dir) -> list:
    """bpc_curves.png: training (chunk mean) and validation bits per character against updates,
    with the unigram and uniform baselines; and the median pre-clip gradient norm per chunk."""
    from rnn_jax import plotting

    ln2 = math.log(2.0)
    fig, (ax, ax_g) = plotting.figure(1, 2, width=4.6, height=3.6)
    with plotting.style():
        for i, name in enumerate(cfg.models):
            h = metrics["curves"][name]
            tr = np.asarray([np.nan if v is None else v for v in h["train_loss"]], float) / ln2
            va = np.asarray([np.nan if v is None else v for v in h["val_loss"]], float) / ln2
            ax.plot(h["step"], tr, color=f"C{i}", label=f"{name} train")
            ax.plot(h["step"], va, color=f"C{i}", ls="--", marker="o", ms=2.5,
                    label=f"{name} validation")
            for key, style, label in (("grad_norm", "-", f"{name} median"),
                                      ("grad_norm_max", ":", f"{name} max")):
                gn = np.asarray([np.nan if v is None else v for v in h[key]], float)
                ax_g.plot(h["step"], gn, color=f"C{i}", ls=style, label=label)
        ax.axhline(metrics["unigram_bpc"], color="k", ls=":", lw=1,
                   label=f"unigram {metrics['unigram_bpc']:.2f}")
        ax.axhline(metrics["uniform_bpc"], color="grey", ls="-.", lw=1,
                   label=f"uniform {metrics['uniform_bpc']:.2f}")
        ax.set(xlabel="TBPTT update", ylabel="bits per character",
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
        f"{cfg.num_steps} updates ({metrics['train_chars_read']:,} characters read).",
        "",
        "| model | parameters | test bits/char | last train bits/char | steps clipped |",
        "|---|---|---|---|---|",
    ]
    for name in cfg.models:
        tr = metrics["final_train_bpc"][name]
        lines.append(f"| {name} | {metrics['num_params'][name]:,} | "
                     f"{metrics['test_bpc'][name]:.3f} | "
                     f"{'n/a' if tr is None else f'{tr:.3f}'} | "
                     f"{metrics['clip_fraction'][name]:.2%} |")
    lines += [
        f"| unigram baseline | {metrics['vocab_size'] - 1} | {metrics['unigram_bpc']:.3f} | | |",
        f"| uniform, log2 V | 0 | {metrics['uniform_bpc']:.3f} | | |",
        "",
        "Karpathy, Johnson & Fei-Fei (2015) train larger, deeper models for much longer and "
        "report other corpora (War and Peace, the Linux kernel source), so there is no "
        "published number for this setting: the table compares with the two baselines only.",
        "",
        f"Sample from the best model ({metrics['best_model']}), temperature "
        f"{cfg.temperature:g}, {cfg.sample_length} characters after the prompt:",
        "",
        "```",
        metrics["sample"].strip("\n"),
        "```",
    ]
    return "\n".join(lines)
