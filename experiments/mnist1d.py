"""The MNIST-1D ladder: logistic regression, tanh RNN, LSTM, GRU, bidirectional GRU.

Greydanus & Kobak (2024), "Scaling Down Deep Learning with MNIST-1D": 4000 training and 1000 test
sequences of 40 steps x 1 feature, 10 classes. The authors' recurrent baseline reads *all* hidden
states at once, ``logits = [h_1; ...; h_40] V + c`` (readout "flatten"), with hidden size 6, and
every model is trained with Adam (learning rate 1e-2, batch 100, 6000 steps, no clipping) from
PyTorch's default initialisation. Models:

    logistic   logits = vec(x) V + c                 (multinomial logistic regression)
    tanh       tanh RNN, H = 6, flattened readout
    lstm       LSTM, H = 6, flattened readout (PyTorch init: forget-gate bias not raised)
    gru        GRU, H = 6, flattened readout
    bigru      bidirectional GRU, H = 6 per direction, flattened readout (the authors' model)

Test accuracy on the 1000 test sequences is logged every ``log_every`` steps and reported at
the end. Training batches are drawn with replacement (the authors shuffle epochs), one seed per
vmapped copy of the model; every number is reported as the median and interquartile range over
seeds (``experiments.seed_stats.spread``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from experiments import harness, seed_stats, training
from rnn_jax import plotting
from rnn_jax.cells import GRU, LSTM, Elman, get_cell, initializers, lead, torch_like
from rnn_jax.model import SequenceModel
from rnn_jax.tasks import mnist1d_task
from rnn_jax.training.train import OptimizerConfig

MODELS = ("logistic", "tanh", "lstm", "gru", "bigru")
PUBLISHED = {"logistic": 0.32, "bigru": 0.91}  # the paper's table (their notebook: GRU 0.89)


@dataclasses.dataclass(frozen=True)
class Logistic:
    """Multinomial logistic regression on the flattened sequence, as a model value.

        logits = [x_1; ...; x_T] V + c            V: [T*I, O]   c: [O]

    Same ``init``/``apply`` protocol as ``SequenceModel``; the mask is ignored (fixed length).
    Shapes: xs [*batch, T, I] -> logits [*batch, O].
    """

    seq_len: int
    output_size: int
    token_inputs: ClassVar[bool] = False

    def init(self, key, input_size: int) -> dict:
        shape = (self.seq_len * input_size, self.output_size)
        return {"V": initializers.glorot_uniform(key, shape), "c": jnp.zeros((self.output_size,))}

    def apply(self, params, xs, *, lengths=None, mask=None, key=None, deterministic=True):
        del lengths, mask, key, deterministic
        if xs.ndim < 2 or xs.shape[-2] != self.seq_len:
            raise ValueError(f"xs must have shape [*batch, {self.seq_len}, I], got {xs.shape}")
        flat = xs.reshape(*xs.shape[:-2], xs.shape[-2] * xs.shape[-1])
        logits = flat @ params["V"]
        return logits + lead(params["c"], logits.ndim)


@dataclasses.dataclass(frozen=True)
class Config:
    """The authors' recipe by default (6000 Adam steps of batch 100, lr 1e-2, H = 6), 3 seeds
    per model, all seeds of a model in one vmapped program."""

    models: tuple[str, ...] = MODELS
    hidden_size: int = 6
    num_seeds: int = 3
    batch_size: int = 100
    learning_rate: float = 1e-2
    num_steps: int = 6000
    log_every: int = 250
    seed: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1000

    def __post_init__(self):
        harness.check_models(self.models, harness.with_registry(MODELS))
        harness.check_positive(self, ("hidden_size", "num_seeds", "batch_size"))
        self.optimizer_config()  # validates the learning rate
        training.check_schedule(self.num_steps, self.log_every, self.checkpoint_every)

    def optimizer_config(self) -> OptimizerConfig:
        return OptimizerConfig("adam", self.learning_rate, clip="none")


SMOKE = dict(models=("logistic", "bigru"), hidden_size=2, num_seeds=2, num_steps=10,
             log_every=5, checkpoint_every=5)


def make_model(name: str, hidden_size: int, seq_len: int, num_classes: int):
    """Model ``name`` of the ladder (see the module docstring), PyTorch-initialised cells; any
    other registered cell (``rj.get_cell``) with its own default initialisation."""
    if name == "logistic":
        return Logistic(seq_len, num_classes)
    own = {"tanh": Elman, "lstm": LSTM, "gru": GRU, "bigru": GRU}
    cell = torch_like(own[name], hidden_size) if name in own else get_cell(name, hidden_size)
    return SequenceModel(cell, num_classes, readout="flatten", seq_len=seq_len,
                         bidirectional=name == "bigru")


def run(cfg: Config) -> dict:
    """Trains every model; returns the final test accuracy per model and the curves."""
    task = mnist1d_task()
    test = task.split("test")
    keys = training.seed_keys(cfg.seed, cfg.num_seeds)
    # test_accuracy[name]: the median over seeds (a number); *_spread: median, Q1, Q3, n
    out = {"test_accuracy": {}, "test_accuracy_spread": {}, "test_accuracy_per_seed": {},
           "best_test_accuracy": {}, "best_test_accuracy_spread": {},
           "best_test_accuracy_per_seed": {}, "curves": {}}
    for name in cfg.models:
        model = make_model(name, cfg.hidden_size, task.seq_len, task.num_classes)

        def probe(params, model=model):
            return {"test_accuracy": training.evaluate(model, task, params, [test])["accuracy"]}

        ckpt = None if cfg.checkpoint_dir is None else os.path.join(cfg.checkpoint_dir, name)
        _, hist = training.train_seeds(
            keys, model, task, cfg.optimizer_config(), num_steps=cfg.num_steps,
            batch_size=cfg.batch_size, log_every=cfg.log_every, checkpoint_dir=ckpt,
            checkpoint_every=cfg.checkpoint_every, probe=probe)
        final = hist["test_accuracy"][-1]  # [S]
        best = np.max(np.asarray(hist["test_accuracy"], float), axis=0).tolist()  # [S]
        for key, values in (("test_accuracy", final), ("best_test_accuracy", best)):
            out[f"{key}_per_seed"][name] = values
            out[f"{key}_spread"][name] = seed_stats.spread(values)
            out[key][name] = out[f"{key}_spread"][name]["median"]
        out["curves"][name] = {"step": hist["step"], "loss": seed_stats.per_seed(hist, "loss"),
                               "test_accuracy": seed_stats.per_seed(hist, "test_accuracy")}
    out["chance_accuracy"] = 1.0 / task.num_classes
    out["published"] = dict(PUBLISHED)
    return out


def figures(metrics: dict, cfg: Config, out_dir) -> list:
    """accuracy_curves.png: test accuracy and training loss against steps, per model: the
    median over seeds with the interquartile band."""
    fig, (ax_acc, ax_loss) = plotting.figure(ncols=2, width=5.0, height=3.8)
    with plotting.style():
        for i, name in enumerate(cfg.models):
            curves = metrics["curves"][name]
            for ax, key in ((ax_acc, "test_accuracy"), (ax_loss, "loss")):
                q1, med, q3 = seed_stats.curve_spread(curves[key])
                ax.plot(curves["step"], med, color=f"C{i}", lw=1.2, label=name)
                ax.fill_between(curves["step"], q1, q3, color=f"C{i}", alpha=0.2)
        for name, acc in PUBLISHED.items():
            if name in cfg.models:
                ax_acc.axhline(acc, color=f"C{cfg.models.index(name)}", ls=":", lw=1)
        ax_acc.set(xlabel="step", ylabel="test accuracy (median, IQR band)",
                   title="MNIST-1D (dotted: published)")
        ax_loss.set(xlabel="step", ylabel="training cross-entropy", yscale="log",
                    title=f"Adam lr {cfg.learning_rate}, batch {cfg.batch_size}")
        ax_loss.legend(loc="lower left")
    return [plotting.save(fig, out_dir / "accuracy_curves.png")]


def report(metrics: dict, cfg: Config) -> str:
    """Final test accuracy per model next to the published numbers."""
    lines = [f"Test accuracy on the 1000 MNIST-1D test sequences after {cfg.num_steps} Adam "
             f"steps, median [Q1, Q3] over seeds; best during training beside it (an optimistic "
             f"number: it picks the step on the test set); hidden size {cfg.hidden_size}.", "",
             "| model | seeds | test accuracy | best during training | per seed | published |",
             "|---|---|---|---|---|---|"]
    pub = {"logistic": "32 %", "bigru": "91 % (paper), 89 % (notebook)"}
    for name in cfg.models:
        seeds = ", ".join(f"{a:.3f}" for a in metrics["test_accuracy_per_seed"][name])
        final, best = (metrics[k][name] for k in ("test_accuracy_spread",
                                                  "best_test_accuracy_spread"))
        lines.append(f"| {name} | {final['n']} | {seed_stats.format_spread(final, '.3f')} | "
                     f"{seed_stats.format_spread(best, '.3f')} | {seeds} | "
                     f"{pub.get(name, '-')} |")
    lines += ["", "The published GRU is the authors' bidirectional GRU (hidden 6 per direction, "
              "flattened outputs)."]
    return "\n".join(lines)
