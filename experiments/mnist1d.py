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
vmapped copy of the model.
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from experiments import harness, training
from rnn_jax import plotting
from rnn_jax.cells import GRU, LSTM, Elman, initializers, lead, torch_like
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
    """The authors' recipe by default (6000 Adam steps of batch 100, lr 1e-2, H = 6)."""

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
        harness.check_models(self.models, MODELS)
        harness.check_positive(self, ("hidden_size", "num_seeds", "batch_size"))
        self.optimizer_config()  # validates the learning rate
        training.check_schedule(self.num_steps, self.log_every, self.checkpoint_every)

    def optimizer_config(self) -> OptimizerConfig:
        return OptimizerConfig("adam", self.learning_rate, clip="none")


SMOKE = dict(models=("logistic", "bigru"), hidden_size=2, num_seeds=2, num_steps=10,
             log_every=5, checkpoint_every=5)


def make_model(name: str, hidden_size: int, seq_len: int, num_classes: int):
    """Model ``name`` of the ladder (see the module docstring), PyTorch-initialised cells."""
    if name == "logistic":
        return Logistic(seq_len, num_classes)
    cell = {"tanh": Elman, "lstm": LSTM, "gru": GRU, "bigru": GRU}[name]
    return SequenceModel(torch_like(cell, hidden_size), num_classes, readout="flatten",
                         seq_len=seq_len, bidirectional=name == "bigru")


def run(cfg: Config) -> dict:
    """Trains every model; returns the final test accuracy per model and the curves."""
    task = mnist1d_task()
    test = task.split("test")
    keys = training.seed_keys(cfg.seed, cfg.num_seeds)
    out = {"test_accuracy": {}, "test_accuracy_per_seed": {}, "best_test_accuracy": {},
           "curves": {}}
    for name in cfg.models:
        model = make_model(name, cfg.hidden_size, task.seq_len, task.num_classes)

        def probe(params, model=model):
            return {"test_accuracy": training.evaluate(model, task, params, [test])["accuracy"]}

        ckpt = None if cfg.checkpoint_dir is None else os.path.join(cfg.checkpoint_dir, name)
        _, hist = training.train_seeds(
            keys, model, task, cfg.optimizer_config(), num_steps=cfg.num_steps,
            batch_size=cfg.batch_size, log_every=cfg.log_every, checkpoint_dir=ckpt,
            checkpoint_every=cfg.checkpoint_every, probe=probe)
        final = hist["test_accuracy"][-1]
        out["test_accuracy_per_seed"][name] = final
        out["test_accuracy"][name] = float(np.mean(final))
        out["best_test_accuracy"][name] = float(np.mean(np.max(hist["test_accuracy"], axis=0)))
        out["curves"][name] = {"step": hist["step"], "loss": training.per_seed(hist, "loss"),
                               "test_accuracy": training.per_seed(hist, "test_accuracy")}
    out["chance_accuracy"] = 1.0 / task.num_classes
    out["published"] = dict(PUBLISHED)
    return out


def figures(metrics: dict, cfg: Config, out_dir) -> list:
    """accuracy_curves.png: test accuracy and training loss against steps, per model."""
    fig, (ax_acc, ax_loss) = plotting.figure(ncols=2, width=5.0, height=3.8)
    with plotting.style():
        for i, name in enumerate(cfg.models):
            curves = metrics["curves"][name]
            for s in range(len(curves["loss"])):
                label = name if s == 0 else None
                ax_acc.plot(curves["step"], curves["test_accuracy"][s], color=f"C{i}", lw=1,
                            label=label)
                ax_loss.plot(curves["step"], curves["loss"][s], color=f"C{i}", lw=1, label=label)
        for name, acc in PUBLISHED.items():
            if name in cfg.models:
                ax_acc.axhline(acc, color=f"C{cfg.models.index(name)}", ls=":", lw=1)
        ax_acc.set(xlabel="step", ylabel="test accuracy", title="MNIST-1D (dotted: published)")
        ax_loss.set(xlabel="step", ylabel="training cross-entropy", yscale="log",
                    title=f"Adam lr {cfg.learning_rate}, batch {cfg.batch_size}")
        ax_loss.legend(loc="lower left")
    return [plotting.save(fig, out_dir / "accuracy_curves.png")]


def report(metrics: dict, cfg: Config) -> str:
    """Final test accuracy per model next to the published numbers."""
    lines = [f"Test accuracy on the 1000 MNIST-1D test sequences after {cfg.num_steps} Adam "
             f"steps (mean over {cfg.num_seeds} seeds; best-during-training in brackets, an "
             "optimistic number); hidden size "
             f"{cfg.hidden_size}.", "", "| model | ours | per seed | published |",
             "|---|---|---|---|"]
    pub = {"logistic": "32 %", "bigru": "91 % (paper), 89 % (notebook)"}
    for name in cfg.models:
        seeds = ", ".join(f"{a:.3f}" for a in metrics["test_accuracy_per_seed"][name])
        lines.append(f"| {name} | {metrics['test_accuracy'][name]:.3f} "
                     f"({metrics['best_test_accuracy'][name]:.3f}) | {seeds} | "
                     f"{pub.get(name, '-')} |")
    lines += ["", "The published GRU is the authors' bidirectional GRU (hidden 6 per direction, "
              "flattened outputs)."]
    return "\n".join(lines)
