"""Copy memory at delay T = 100: tanh RNN vs orthogonal RNN vs identity RNN vs LSTM vs GRU.

Arjovsky, Shah & Bengio (2016), "Unitary Evolution Recurrent Neural Networks", Sec. 4.1: ten
symbols from an alphabet of 8, a blank delay of T steps, a delimiter, then the model must
write the ten symbols back; the loss is the cross-entropy over all T + 20 steps. The memoryless
strategy (blanks, then uniform guesses) scores ``baseline = 10 ln 8 / (T + 20)``. Models:

    tanh        tanh RNN, PyTorch's default U(+-1/sqrt(H)) initialisation (the plain RNN)
    orthogonal  tanh RNN with an orthogonal recurrent matrix (Saxe et al. 2014; Henaff et al.
                2016 on why orthogonality suits copying)
    identity    ReLU RNN with U = I (the IRNN of Le et al. 2015)
    lstm        LSTM, orthogonal U blocks, forget-gate bias 1
    lstm_chrono LSTM with the chrono initialisation (Tallec & Ollivier 2018) for time scales up
                to the sequence length T + 2 * copy_len (b_f = log U(1, T_max - 1), b_i = -b_f)
    gru         GRU, orthogonal U blocks

The paper trains with RMSProp (learning rate 1e-3, decay 0.9, batch 20) for many thousand
iterations; to see learning within a CPU budget of a few thousand steps this experiment uses Adam
(learning rate 3e-3, batch 64) with global-norm clipping at 1 by default (``--optimizer rmsprop
--learning_rate 1e-3 --batch_size 20`` gives the paper's optimizer). All models have the same
hidden size (the paper matched parameter counts instead). The test cross-entropy is measured on
``eval_examples`` fresh sequences and reported over seeds as median [Q1, Q3]
(``seed_stats.spread``), with the per-seed values kept in results.json.
"""

from __future__ import annotations

import dataclasses
import os

from experiments import harness, seed_stats, training
from rnn_jax import plotting
from rnn_jax.cells import GRU, LSTM, Elman, get_cell, irnn, torch_like
from rnn_jax.model import SequenceModel
from rnn_jax.tasks import CopyMemory
from rnn_jax.training.train import OptimizerConfig

MODELS = ("tanh", "orthogonal", "identity", "lstm", "lstm_chrono", "gru")


@dataclasses.dataclass(frozen=True)
class Config:
    """Full run by default; ``--delay 200 --num_steps ...`` for the paper's longer delays."""

    delay: int = 100  # blank steps between the symbols and the recall marker (T_0)
    num_symbols: int = 8  # distinct symbols to copy
    copy_len: int = 10  # symbols per sequence to remember
    models: tuple[str, ...] = MODELS
    hidden_size: int = 64
    num_seeds: int = 3
    batch_size: int = 64
    optimizer: str = "adam"
    learning_rate: float = 3e-3
    clip_threshold: float = 1.0
    num_steps: int = 4000
    log_every: int = 50
    eval_examples: int = 2000
    eval_batch_size: int = 500
    seed: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 500
    remat: str = "false"  # "segments": BPTT in O(sqrt(T)) memory (long sequences)

    def __post_init__(self):
        harness.check_models(self.models, harness.with_registry(MODELS))
        self.task()  # validates delay, num_symbols, copy_len
        harness.check_positive(self, ("hidden_size", "num_seeds", "batch_size", "eval_batch_size"))
        self.optimizer_config()  # validates optimizer, learning rate, clip threshold
        harness.check_eval_batches(self.eval_examples, self.eval_batch_size)
        harness.remat_option(self.remat)
        training.check_schedule(self.num_steps, self.log_every, self.checkpoint_every)

    def task(self) -> CopyMemory:
        return CopyMemory(delay=self.delay, num_symbols=self.num_symbols, copy_len=self.copy_len)

    def optimizer_config(self) -> OptimizerConfig:
        """The optimizer by name; momentum 0 (so "rmsprop" is the paper's plain RMSProp)."""
        return OptimizerConfig(self.optimizer, self.learning_rate, momentum=0.0,
                               clip="global_norm", clip_threshold=self.clip_threshold)


SMOKE = dict(delay=5, copy_len=3, models=("tanh", "lstm", "lstm_chrono"), hidden_size=8,
             num_seeds=3, batch_size=8, num_steps=10, log_every=5, checkpoint_every=5,
             eval_examples=64, eval_batch_size=64)


def make_cell(name: str, hidden_size: int, seq_len: int = 120):
    """The recurrent cell of model ``name`` (see the module docstring)."""
    if name == "lstm_chrono":
        return LSTM(hidden_size, chrono_max=float(seq_len))
    if name == "tanh":
        return torch_like(Elman, hidden_size)
    if name == "orthogonal":
        return Elman(hidden_size, recurrent_init="orthogonal")
    if name == "identity":
        return irnn(hidden_size)
    if name in ("lstm", "gru"):
        return {"lstm": LSTM, "gru": GRU}[name](hidden_size)
    return get_cell(name, hidden_size)  # any other registered cell, its own default init


def run(cfg: Config) -> dict:
    """Trains every model; returns the test cross-entropy per model and the training curves."""
    keys = training.seed_keys(cfg.seed, cfg.num_seeds)
    task = cfg.task()
    batches = training.fresh_batches(task, training.eval_key(cfg.seed), cfg.eval_examples,
                                     cfg.eval_batch_size)
    out = {"test_ce": {}, "test_ce_per_seed": {}, "test_copy_accuracy": {},
           "test_copy_accuracy_per_seed": {}, "curves": {}}
    for name in cfg.models:
        cell = make_cell(name, cfg.hidden_size, task.seq_len)
        model = SequenceModel(cell, task.output_size, readout="all",
                              remat=harness.remat_option(cfg.remat))
        ckpt = None if cfg.checkpoint_dir is None else os.path.join(cfg.checkpoint_dir, name)
        state, hist = training.train_seeds(
            keys, model, task, cfg.optimizer_config(), num_steps=cfg.num_steps,
            batch_size=cfg.batch_size, log_every=cfg.log_every, checkpoint_dir=ckpt,
            checkpoint_every=cfg.checkpoint_every)
        ev = training.evaluate(model, task, state.params, batches)
        out["test_ce_per_seed"][name] = ev["loss"].tolist()
        out["test_ce"][name] = seed_stats.spread(ev["loss"])
        out["test_copy_accuracy_per_seed"][name] = ev["copy_accuracy"].tolist()
        out["test_copy_accuracy"][name] = seed_stats.spread(ev["copy_accuracy"])
        out["curves"][name] = {"step": hist["step"], "loss": seed_stats.per_seed(hist, "loss"),
                               "grad_norm": seed_stats.per_seed(hist, "grad_norm"),
                               "clipped": seed_stats.per_seed(hist, "clipped")}
    out["baseline"] = task.baseline
    return out


def figures(metrics: dict, cfg: Config, out_dir) -> list:
    """loss_curves.png: training cross-entropy per model against steps (median over seeds with
    the interquartile band), baseline dotted."""
    fig, ax = plotting.figure(width=6.0, height=4.0)
    with plotting.style():
        for i, name in enumerate(cfg.models):
            curves = metrics["curves"][name]
            q1, med, q3 = seed_stats.curve_spread(curves["loss"])
            ax.plot(curves["step"], med, color=f"C{i}", lw=1.2, label=name)
            ax.fill_between(curves["step"], q1, q3, color=f"C{i}", alpha=0.2)
        ax.axhline(metrics["baseline"], color="k", ls=":", lw=1.2, label="memoryless baseline")
        ax.set(yscale="log", xlabel="step", ylabel="training cross-entropy (median, IQR band)",
               title=f"copy memory, delay T = {cfg.delay}, H = {cfg.hidden_size}")
        ax.legend()
    return [plotting.save(fig, out_dir / "loss_curves.png")]


def report(metrics: dict, cfg: Config) -> str:
    """Test cross-entropy per model (median [Q1, Q3] over seeds) beside Arjovsky et al.'s."""
    base = metrics["baseline"]
    fmt = seed_stats.format_spread
    lines = [f"Test cross-entropy per step on {cfg.eval_examples} fresh sequences, median "
             f"[Q1, Q3] over {cfg.num_seeds} seeds (n = finite seeds); delay T = {cfg.delay}, "
             f"{cfg.num_steps} {cfg.optimizer} steps of batch {cfg.batch_size} (lr "
             f"{cfg.learning_rate}, global-norm clipping at {cfg.clip_threshold}), "
             f"H = {cfg.hidden_size}; memoryless baseline 10 ln 8 / (T + 20) = {base:.4f}. "
             "Reading: the median over its baseline and the trend of the median training curve "
             "(its last tenth over its value at three quarters of the run; < 1: still "
             "falling).", "",
             "| model | test CE | n | copy accuracy | reading |", "|---|---|---|---|---|"]
    for name in cfg.models:
        ce, acc = metrics["test_ce"][name], metrics["test_copy_accuracy"][name]
        read = seed_stats.reading(ce["median"] / base,
                                seed_stats.trend(metrics["curves"][name]["loss"]))
        lines.append(f"| {name} | {fmt(ce)} | {ce['n']} | {fmt(acc, '.3f')} | {read} |")
    ratio = {name: metrics["test_ce"][name]["median"] / base for name in cfg.models}
    below = [name for name in cfg.models if ratio[name] < 0.5] or ["none"]
    at = [name for name in cfg.models if ratio[name] >= 0.95] or ["none"]
    lines += ["", "Arjovsky et al. (2016), qualitatively (their Figure 1, recalled, not exact "
              "numbers): copy memory at T = 100, 200, 300 and 500 with RMSProp (lr 1e-3, decay "
              "0.9), batch 20 and parameter-matched models; the uRNN goes below the memoryless "
              "baseline at every T, while the LSTM and the tanh RNN stay at (or very near) the "
              "baseline for the long delays. The issue's target for T = 100: the LSTM leaves the "
              "baseline.", "",
              f"Here (median over seeds): below half of the baseline: {', '.join(below)}; still "
              f"at the baseline (>= 0.95 of it): {', '.join(at)}."]
    if "lstm" in ratio:
        lines += ["", "LSTM at this delay: " + (
            "below half of the baseline: it leaves the plateau within this budget."
            if ratio["lstm"] < 0.5 else
            "not below half of the baseline: not reproduced within this budget.")]
    return "\n".join(lines)
