"""Global-norm clipping thresholds: final loss, clip fraction and divergence vs tau / median ||g||.

Pascanu, Mikolov & Bengio (2013), "On the difficulty of training recurrent neural networks",
Sec. 3.2: rescale the gradient when its norm passes a threshold tau,

    g <- g * min(1, tau / ||g||),

and suggest choosing tau from statistics of the norm over many updates of an unclipped run,
noting that training was not very sensitive to it, even at small values. Here tau is swept as a
multiple m of the *median* pre-clip norm g_med of a short unclipped calibration run
(``calib_steps`` SGD steps on every seed; the median, because the norm's distribution is
heavy-tailed, so the mean follows a few spikes):

    tau_m = m * g_med,    m in {0.1, 0.5, 1, 5, 10, inf}   (inf: no clipping)

The task: the adding problem (sum variant, Le et al. 2015) at T = 20 with a tanh RNN trained
by plain SGD, a setting where clipping matters. The recurrent matrix starts past the edge of
stability (Gaussian, spectral radius 1.2), so the loss surface has walls (Doya's bifurcations):
most steps see small gradients, a few see norms many orders of magnitude larger, and one
unclipped SGD step there throws the weights away (as ``experiments/cliff.py`` shows for one
unit). The adding target is a real number, so a thrown-away network does not sit at chance like
a classifier: its MSE grows far above the 1/6 baseline (or overflows), which makes divergence
measurable. A small tau keeps every step short (slow progress, clip fraction near 1), a large
one lets the rare huge steps through. The defaults come from short trials: at T = 20 the
network learns within a few thousand steps, so the final loss measures training and not only
divergence (at T = 50, learning rate 0.01, no threshold left the baseline in 1000 steps); at
learning rates 0.1-0.2 the unclipped calibration run itself blew up on most seeds within 100
steps, its median norm was ~1e7-1e8, and every threshold diverged. Learning rate 0.05 sits
between: most unclipped runs survive, some do not.

One run per (multiple, seed): all of them train in one compiled, vmapped program (tau is a
traced value of the optimizer). A run has *diverged* when a step had a non-finite loss or
gradient (such steps are skipped, ``rnn_jax.training.train``) or its test MSE ends above
``divergence_factor`` x the baseline 1/6. Final loss: test MSE on ``eval_examples`` fresh
sequences, median and interquartile range over the seeds whose loss is finite
(``experiments.seed_stats.spread``; a diverged seed would dominate a mean), with the number of
such seeds and of diverged ones beside it; the clipped fraction likewise.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import harness, seed_stats, training
from rnn_jax.cells import Elman
from rnn_jax.model import SequenceModel
from rnn_jax.tasks import Adding
from rnn_jax.training import checkpoint, train

MULTIPLES = (0.1, 0.5, 1.0, 5.0, 10.0, math.inf)


@dataclasses.dataclass(frozen=True)
class Config:
    """Full run by default: 6 multiples x 16 seeds, adding (sum) at T = 20, tanh H = 32, SGD."""

    # clipping thresholds as multiples of the calibrated median norm (inf: none)
    multiples: tuple[float, ...] = MULTIPLES
    seq_len: int = 20  # T of the adding task
    hidden_size: int = 32
    spectral_radius: float = 1.2
    learning_rate: float = 0.05
    batch_size: int = 20
    num_seeds: int = 16
    calib_steps: int = 100  # unclipped SGD steps that calibrate the median gradient norm
    num_steps: int = 4000
    log_every: int = 100
    # a run whose test MSE ends above this x the 1/6 baseline has diverged
    divergence_factor: float = 2.0
    eval_examples: int = 10_000
    eval_batch_size: int = 1000
    seed: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1000

    def __post_init__(self):
        m = self.multiples
        if not m or len(set(m)) != len(m) or any(not (x > 0) for x in m):
            raise ValueError(f"multiples must be distinct positive numbers (inf allowed), "
                             f"got {m!r}")
        harness.check_positive(self, ("hidden_size", "batch_size", "num_seeds", "calib_steps",
                                      "eval_batch_size"))
        for name in ("spectral_radius", "learning_rate", "divergence_factor"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        harness.check_eval_batches(self.eval_examples, self.eval_batch_size)
        Adding(seq_len=self.seq_len)  # validates the length
        training.check_schedule(self.num_steps, self.log_every, self.checkpoint_every)


SMOKE = dict(seq_len=10, hidden_size=8, num_seeds=2, calib_steps=5, num_steps=10, log_every=5,
             checkpoint_every=5, eval_examples=100, eval_batch_size=100)


def make_model(cfg: Config) -> SequenceModel:
    """tanh Elman RNN, Gaussian U rescaled to ``spectral_radius``, readout at the last step."""
    cell = Elman(cfg.hidden_size, recurrent_init="normal", spectral_radius=cfg.spectral_radius)
    return SequenceModel(cell, 1, readout="last")


def _optimizer(tau, learning_rate: float) -> optax.GradientTransformation:
    # tau may be a tracer (vmapped over the multiples); tau = inf leaves g unchanged exactly.
    return optax.chain(optax.clip_by_global_norm(tau), optax.sgd(learning_rate))


def _init(keys, model, task, learning_rate):
    opt = _optimizer(1.0, learning_rate)  # the clip transform is stateless: any tau
    return jax.vmap(lambda k: train.init_state(k, model, task, opt))(keys)


def _stacked_init(keys, model, task, cfg: Config):
    """Step 0 of every (multiple, seed) run: the seed's parameters, repeated. [M, S, ...]"""
    state = _init(keys, model, task, cfg.learning_rate)
    return jax.tree.map(lambda x: jnp.stack([x] * len(cfg.multiples)), state)


def _steps(key, tau, state, model, task, learning_rate, batch_size, num_steps):
    """``num_steps`` clipped SGD steps of one run; per-step metrics [num_steps]."""
    opt = _optimizer(tau, learning_rate)
    step_fn = train.make_train_step(
        model, task, train.OptimizerConfig("sgd", learning_rate, clip="none"), optimizer=opt,
        sampled=True)

    def body(st, _):
        st, m = step_fn(st, train.sample_batch(task, key, st.step, batch_size))
        return st, {"loss": m["loss"], "grad_norm": m["grad_norm"],
                    "clipped": m["grad_norm"] > tau, "finite": m["finite"]}

    return jax.lax.scan(body, state, None, length=num_steps)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7))
def _chunk(keys, taus, state, model, task, learning_rate, batch_size, num_steps):
    """Every (multiple, seed) run for ``num_steps`` steps; per-step ``loss``, ``grad_norm``,
    ``clipped``, ``finite``. Shapes: taus [M], state [M, S, ...], metrics [M, S, num_steps]."""
    def one(key, tau, st):
        return _steps(key, tau, st, model, task, learning_rate, batch_size, num_steps)

    per_seed = jax.vmap(one, in_axes=(0, None, 0))
    return jax.vmap(per_seed, in_axes=(None, 0, 0))(keys, taus, state)


def window_summary(m: dict) -> dict:
    """Per-run statistics of a logging window's per-step metrics ``[M, S, n]`` (host NumPy, so a
    record does not depend on how the window was chunked); NaN where no step was finite."""
    ok = np.asarray(m["finite"], bool)
    count = ok.sum(-1)
    norm = np.asarray(m["grad_norm"], np.float32)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows: a diverged run
        median = np.nanmedian(np.where(ok, norm, np.nan), axis=-1)
    total = np.where(ok, np.asarray(m["loss"], np.float32), 0.0).sum(-1, dtype=np.float64)
    return {
        # NaN when every step was skipped: a diverged run has no training loss to report
        "loss": np.where(count > 0, total / np.maximum(count, 1), np.nan),
        "grad_norm_median": median,
        "grad_norm_max": np.where(ok, norm, 0.0).max(-1),
        "clipped": np.asarray(m["clipped"], np.float64).mean(-1),
        "nonfinite": (~ok).sum(-1).astype(np.float64),
    }


def calibrate(cfg: Config, keys, model, task) -> dict:
    """The median pre-clip norm of ``calib_steps`` unclipped SGD steps, over every seed.

    These are the first steps of the tau = inf run itself (same keys, same batches). They are
    computed by the sweep's own compiled program with every tau = inf (row 0 kept), so that
    ``calib_steps == log_every`` costs no second compilation.
    """
    state = _stacked_init(keys, model, task, cfg)
    taus = jnp.full((len(cfg.multiples),), jnp.inf, jnp.float32)
    _, m = _chunk(keys, taus, state, model, task, cfg.learning_rate, cfg.batch_size,
                  cfg.calib_steps)
    norms = np.asarray(jax.device_get(m["grad_norm"][0]), float)  # [S, calib_steps]
    norms = norms[np.isfinite(norms)]
    if norms.size == 0:
        raise ValueError("every calibration step was non-finite; lower learning_rate or "
                         "spectral_radius")
    return {"median": float(np.median(norms)), "mean": float(np.mean(norms)),
            "max": float(np.max(norms)), "num_nonfinite": int(keys.shape[0] * cfg.calib_steps
                                                               - norms.size)}


def _identity(cfg: Config) -> dict:
    fields = dataclasses.asdict(cfg)
    for name in ("checkpoint_dir", "checkpoint_every", "num_steps", "eval_examples",
                 "eval_batch_size", "divergence_factor"):
        fields.pop(name)
    return json.loads(json.dumps(harness.to_jsonable(fields)))


def _host(tree) -> dict:
    # checkpoint metadata is strict JSON: a non-finite entry is stored as None
    return {k: [[x if math.isfinite(x) else None for x in row]
                for row in np.asarray(jax.device_get(v), float).tolist()]
            for k, v in tree.items()}


def sweep(cfg: Config, keys, taus, model, task):
    """Trains every (multiple, seed) run in chunks, with checkpoints and exact resume."""
    state = _stacked_init(keys, model, task, cfg)
    identity = _identity(cfg)
    ckpt = cfg.checkpoint_dir
    start, restored, history, pending = training.resume(ckpt, state, identity, cfg.num_steps,
                                                        with_pending=True)
    if restored is None:
        history = {"step": []}
    else:
        state = restored
    step = start
    for end in training.boundaries(start, cfg.num_steps, cfg.log_every, cfg.checkpoint_every):
        state, m = _chunk(keys, taus, state, model, task, cfg.learning_rate, cfg.batch_size,
                          end - step)
        step, pending = end, training.extend(pending, m)
        if training.is_record_step(step, cfg.num_steps, cfg.log_every):
            history["step"].append(step)
            for name, value in _host(window_summary(pending)).items():
                history.setdefault(name, []).append(value)  # [records][M][S]
            pending = {}
        if ckpt is not None and training.is_record_step(step, cfg.num_steps,
                                                        cfg.checkpoint_every):
            checkpoint.save(ckpt, step, state, keep=2, metadata={
                "run": identity, "history": history,
                "pending": training.pending_to_json(pending)})
    return state, history


@functools.partial(jax.jit, static_argnums=(2, 3))
def _evaluate(params, batch, model, task):
    ev = train.make_eval_step(model, task)
    return jax.vmap(jax.vmap(ev, in_axes=(0, None)), in_axes=(0, None))(params, batch)


def metric_key(m: float) -> str:
    return f"{m:g}"


def run(cfg: Config) -> dict:
    """Calibrates g_med, trains one run per (multiple, seed), evaluates; see the docstring."""
    task = Adding(seq_len=cfg.seq_len, variant="sum")
    model = make_model(cfg)
    keys = training.seed_keys(cfg.seed, cfg.num_seeds)
    calib = calibrate(cfg, keys, model, task)
    taus = jnp.asarray([m * calib["median"] for m in cfg.multiples], jnp.float32)
    state, hist = sweep(cfg, keys, taus, model, task)
    batches = training.fresh_batches(task, training.eval_key(cfg.seed), cfg.eval_examples,
                                     cfg.eval_batch_size)
    total = None
    for batch in batches:
        out = _evaluate(state.params, batch, model, task)
        total = out if total is None else jax.tree.map(jnp.add, total, out)
    test_mse = np.asarray(total["loss"]) / len(batches)  # [M, S]
    skipped = np.asarray(state.skipped)  # [M, S]
    bound = cfg.divergence_factor * task.baseline
    diverged = (skipped > 0) | ~np.isfinite(test_mse) | (test_mse > bound)
    clipped = np.asarray(hist["clipped"], float)  # [records, M, S]: per-chunk fractions
    lengths = np.diff(np.asarray([0, *hist["step"]], float))  # steps per chunk
    # final_loss / clip_fraction [k]: medians over seeds; *_spread: median, Q1, Q3, n (finite)
    out = {"final_loss": {}, "final_loss_spread": {}, "final_loss_per_seed": {},
           "clip_fraction": {}, "clip_fraction_spread": {}, "clip_fraction_per_seed": {},
           "diverged": {}, "diverged_per_seed": {}, "skipped_steps": {}, "threshold": {},
           "curves": {}}
    for i, m in enumerate(cfg.multiples):
        k = metric_key(m)
        per_seed = lengths @ clipped[:, i] / lengths.sum()  # [S]
        for name, values in (("final_loss", test_mse[i]), ("clip_fraction", per_seed)):
            out[f"{name}_per_seed"][k] = values.tolist()
            out[f"{name}_spread"][k] = seed_stats.spread(values)
            out[name][k] = out[f"{name}_spread"][k]["median"]
        out["diverged"][k] = bool(np.any(diverged[i]))
        out["diverged_per_seed"][k] = diverged[i].tolist()
        out["skipped_steps"][k] = skipped[i].tolist()
        out["threshold"][k] = float(taus[i])
        out["curves"][k] = {name: np.asarray(hist[name], float)[:, i].T.tolist()
                            for name in ("loss", "clipped", "grad_norm_median", "grad_norm_max")}
    out["curves_step"] = hist["step"]
    out["calibration"] = calib
    out["median_grad_norm"] = calib["median"]
    out["baseline"] = task.baseline
    out["divergence_bound"] = bound
    return out


# Imported last: report.py reads this module.
from experiments.clipping_sweep.report import figures, report  # noqa: E402, F401
