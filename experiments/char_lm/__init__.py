"""Character-level Shakespeare: tanh RNN vs LSTM vs GRU, truncated BPTT, clipping, a sample.

Karpathy, Johnson & Fei-Fei (2015), "Visualizing and Understanding Recurrent Networks" (the
char-rnn setting; Sutskever, Martens & Hinton 2011 and Graves 2013 before them). Each model
reads characters through an embedding and predicts the next one at every step:

    e_t = E[c_t],   h_t = cell(e_t, h_{t-1}),   p(c_{t+1} | c_<=t) = softmax(h_t V + c)

Training is truncated BPTT over ``batch_size`` parallel streams of the training text
(``rnn_jax.training.tbptt``): window n covers characters [n k, n k + k), k = ``window``; its loss is
backpropagated to the window start only, and its final carry, cut from the graph
(``stop_gradient``), starts window n + 1. Every epoch restarts the streams with zero carries.
Updates are Adam on the global-norm-clipped gradient (tau = ``clip_threshold``). The loss is
a mean over the B x k characters of a window, so typical norms are well below 1: tau = 1 acts
only on the rare spikes (mostly early in training, mostly for the tanh RNN), which is what
clipping is for.

Evaluation: test bits per character, the mean cross-entropy / ln 2 over the whole test split
read as ``eval_batch_size`` contiguous streams, carries passed from window to window (no
truncation of the forward pass). Baselines the task knows: the unigram entropy of the training
characters (4.70 bits on the full corpus) and the uniform predictor, log2 V (6.46 bits, V = 88).

Data: by default the modern-spelling editions only (``edition="modern"``: 42 files, 5.06 M
characters, split 90/5/5 % in file order), so the near-duplicate First Folio texts of the same
plays cannot leak across splits. The default run is small enough for a laptop CPU (H = 128,
4000 updates of 32 x 64 characters: 8.2 M characters read, 1.8 epochs of the 4.55 M training
characters); larger runs take flags (e.g. ``--hidden_size 512 --num_steps 20000``, or
``--edition all`` for the whole corpus).

Seeds: ``num_seeds`` models per architecture, one per key (their initialisations differ; the
streams and window order are the same for all), trained as one vmapped program; test and
training bits per character and the clipped fraction are reported as the median and
interquartile range over seeds (``experiments.seed_stats.spread``), curves as the median with an
interquartile band.

Sample: ``sample_length`` characters generated after ``prompt`` at temperature
``temperature`` (softmax(z / tau); tau = 1 samples the model's own distribution, tau < 1 makes
it more conservative: fewer misspelt words, more repetition), from seed 0 of the model with the
lowest median test bits per character.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from experiments import harness, seed_stats, training
from rnn_jax.cells import GRU, LSTM, Elman, get_cell
from rnn_jax.model import SequenceModel
from rnn_jax.tasks import shakespeare_task, shakespeare_works, streams
from rnn_jax.training import checkpoint, generate, tbptt, train

MODELS = ("tanh", "lstm", "gru")
EDITIONS = ("modern", "folio", "all")
SAMPLE_STREAM = 0x5A3E  # fold_in(key(seed), SAMPLE_STREAM): the generation key


@dataclasses.dataclass(frozen=True)
class Config:
    """The full default run: three 1-layer models, H = 128, 4000 TBPTT updates each, 3 seeds
    per model trained together (vmapped): three times the arithmetic of one seed."""

    models: tuple[str, ...] = MODELS
    hidden_size: int = 128
    embed_size: int = 32  # character embedding width
    edition: str = "modern"  # texts to read: modern, folio or all
    max_chars: int | None = None  # read only this many characters (None: the whole corpus)
    window: int = 64  # truncated-BPTT window in characters (k1 = k2)
    batch_size: int = 32
    learning_rate: float = 2e-3
    clip_threshold: float = 1.0
    num_steps: int = 4000
    log_every: int = 100
    val_chars: int = 32_768  # validation characters scored during training
    eval_batch_size: int = 128
    prompt: str = "\n\nKING.\n"  # text that starts the generated sample
    sample_length: int = 400  # characters to generate after training
    temperature: float = 0.8  # sampling temperature (0: greedy)
    seed: int = 0
    num_seeds: int = 3  # models per architecture, one per key, trained as one vmapped program
    checkpoint_dir: str | None = None
    checkpoint_every: int = 500

    def __post_init__(self):
        harness.check_models(self.models, harness.with_registry(MODELS))
        if self.edition not in EDITIONS:
            raise ValueError(f"edition must be one of {EDITIONS}, got {self.edition!r}")
        for name in ("hidden_size", "embed_size", "window", "batch_size", "num_steps",
                     "log_every", "eval_batch_size", "val_chars", "num_seeds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.max_chars is not None and self.max_chars < 1000:
            raise ValueError(f"max_chars must be None or >= 1000, got {self.max_chars}")
        if not (self.learning_rate > 0 and self.clip_threshold > 0):
            raise ValueError(f"learning_rate and clip_threshold must be > 0, got "
                             f"{self.learning_rate}, {self.clip_threshold}")
        if self.sample_length < 0 or not self.prompt:
            raise ValueError(f"sample_length must be >= 0 and prompt non-empty, got "
                             f"{self.sample_length}, {self.prompt!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite float >= 0, got {self.temperature}")
        training.check_schedule(self.num_steps, self.log_every, self.checkpoint_every)

    def optimizer_config(self) -> train.OptimizerConfig:
        return train.OptimizerConfig("adam", self.learning_rate, clip="global_norm",
                                     clip_threshold=self.clip_threshold)


# Two models keep the smoke run short (LSTM: a tuple carry, GRU: an array one); val_chars = the
# whole validation split, the size of the test split, so both evaluations share one compilation.
SMOKE = dict(models=("lstm", "gru"), num_seeds=2, hidden_size=8, embed_size=4, max_chars=20_000,
             window=8, batch_size=4, num_steps=6, log_every=3, checkpoint_every=3, val_chars=1000,
             eval_batch_size=4, sample_length=20)


def works(edition: str) -> tuple[str, ...] | None:
    """The files of an edition: modern (``*_gut``), First Folio (``*_gut_f``) or all (None)."""
    if edition == "all":
        return None
    folio = tuple(w for w in shakespeare_works() if w.endswith("_f"))
    return folio if edition == "folio" else tuple(w for w in shakespeare_works()
                                                  if w not in folio)


def make_task(cfg: Config):
    """The Shakespeare char-LM task (seq_len = window; the vocabulary covers the whole text)."""
    return shakespeare_task(cfg.window, works=works(cfg.edition), max_chars=cfg.max_chars)


def make_model(name: str, cfg: Config, vocab_size: int) -> SequenceModel:
    """One recurrent layer of ``hidden_size`` units between an embedding and a softmax readout.

    The library's default initialisation: orthogonal U blocks, Glorot W, zero biases (LSTM:
    forget-gate bias 1); any other registered cell (``rj.get_cell``) with its own.
    """
    own = {"tanh": Elman, "lstm": LSTM, "gru": GRU}
    cell = own[name](cfg.hidden_size) if name in own else get_cell(name, cfg.hidden_size)
    return SequenceModel(cell, vocab_size, vocab_size=vocab_size, embed_size=cfg.embed_size)


def count_params(params) -> int:
    """The number of scalars in a parameter pytree (of one seed: pass unstacked params)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def seed_keys(cfg: Config, name: str):
    """One key per seed of model ``name``: ``split(fold_in(key(seed), model index), S)``."""
    key = jax.random.fold_in(jax.random.key(cfg.seed), harness.with_registry(MODELS).index(name))
    return jax.random.split(key, cfg.num_seeds)


# -- training in chunks of TBPTT updates ------------------------------------------------------
@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _chunk(state, carries, stream, model, opt_cfg, window, num_steps):
    """``num_steps`` TBPTT updates from update ``state.step`` (window ``step mod count``).

    Carries restart from zeros at every epoch start (window 0). Returns the new state and
    carries and per-update ``loss``, ``grad_norm`` (pre-clip), ``clipped``, ``finite``.
    """
    update = tbptt.make_tbptt_update(model, opt_cfg, k1=window)
    count = tbptt.window_count(stream.shape[1], window)

    def body(c, _):
        st, car = c
        n = st.step % count
        car = jax.tree.map(lambda x: jnp.where(n == 0, jnp.zeros_like(x), x), car)
        st, car, m = update(st, car, tbptt.window_at(stream, n, window))
        return (st, car), {k: m[k] for k in ("loss", "grad_norm", "clipped", "finite")}

    (state, carries), metrics = jax.lax.scan(body, (state, carries), None, length=num_steps)
    return state, carries, metrics


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _chunk_seeds(states, carries, stream, model, opt_cfg, window, num_steps):
    """:func:`_chunk` for every seed at once. Shapes: states and carries [S, ...]; metrics
    [S, num_steps]; the stream is shared."""
    return jax.vmap(lambda st, car: _chunk(st, car, stream, model, opt_cfg, window, num_steps)
                    )(states, carries)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _stream_loss(params, stream, model, window):
    """Mean cross-entropy (nats) of every seed over a stream. Shapes: params [S, ...] -> [S]."""
    return jax.vmap(lambda p: tbptt.stream_loss(model, p, stream, window))(params)


def _identity(name: str, cfg: Config, model) -> dict:
    fields = dataclasses.asdict(cfg)
    # what the saved state and history depend on (not num_steps: a run may be extended)
    for k in ("checkpoint_dir", "checkpoint_every", "num_steps", "prompt", "sample_length",
              "temperature", "models"):
        fields.pop(k)
    return json.loads(json.dumps(harness.to_jsonable({**fields, "model": name,
                                                      "repr": repr(model)})))


def _finite(values) -> list:
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, float)]


def _summary(m) -> dict:
    """Per seed, over a logging window's finite updates ``[S, n]``: mean loss, median and
    largest pre-clip norm (None where no update was finite), clipped fraction, skipped count."""
    ok = np.asarray(m["finite"], bool)
    loss = np.where(ok, np.asarray(m["loss"], float), np.nan)
    norm = np.where(ok, np.asarray(m["grad_norm"], float), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a seed with no finite update
        stats = {"loss": np.nanmean(loss, -1), "grad_norm": np.nanmedian(norm, -1),
                 "grad_norm_max": np.nanmax(norm, -1)}
    return {**{k: _finite(v) for k, v in stats.items()},
            "clipped": np.mean(m["clipped"], -1).tolist(),
            "nonfinite": np.sum(~ok, -1).astype(int).tolist()}


def fit(name: str, cfg: Config, task, val_stream):
    """Trains model ``name`` with TBPTT in chunks; logs every ``log_every`` updates; checkpoints
    every ``checkpoint_every`` updates (with the unfinished logging window) and resumes.

    Returns ``(model, state, history)``: the stacked state of the ``num_seeds`` seeds, and per
    logging window and seed (``history[name]`` is ``[records][S]``) the mean training loss
    (nats), the median and largest pre-clip gradient norm, the clipped fraction and the
    validation loss (nats) on the first ``val_chars`` validation characters.
    """
    model = make_model(name, cfg, task.input_size)
    opt_cfg = cfg.optimizer_config()
    stream = task.streams("train", cfg.batch_size)
    if tbptt.window_count(stream.shape[1], cfg.window) < 1:
        raise ValueError(f"the training text gives streams of {stream.shape[1]} characters at "
                         f"batch_size={cfg.batch_size}, shorter than window + 1")
    optimizer = train.make_optimizer(opt_cfg)
    state = jax.vmap(lambda k: train.init_state(k, model, task, optimizer))(seed_keys(cfg, name))
    carries = model.initial_carries((cfg.num_seeds, cfg.batch_size))
    ckpt = None if cfg.checkpoint_dir is None else os.path.join(cfg.checkpoint_dir, name)
    identity = _identity(name, cfg, model)
    like = {"state": state, "carries": carries}
    start, restored, history, pending = training.resume(ckpt, like, identity, cfg.num_steps,
                                                        with_pending=True)
    if restored is None:
        history = {"step": [], "train_loss": [], "grad_norm": [], "grad_norm_max": [],
                   "clipped": [], "nonfinite": [], "val_loss": []}
    else:
        state, carries = restored["state"], restored["carries"]
    step = start
    for end in training.boundaries(start, cfg.num_steps, cfg.log_every, cfg.checkpoint_every):
        state, carries, m = _chunk_seeds(state, carries, stream, model, opt_cfg, cfg.window,
                                         end - step)
        step, pending = end, training.extend(pending, m)
        if training.is_record_step(step, cfg.num_steps, cfg.log_every):
            s = _summary(pending)
            pending = {}
            val = _stream_loss(state.params, val_stream, model, cfg.window)
            history["step"].append(step)
            history["train_loss"].append(s["loss"])
            for k in ("grad_norm", "grad_norm_max", "clipped", "nonfinite"):
                history[k].append(s[k])
            history["val_loss"].append(_finite(val))
        if ckpt is not None and training.is_record_step(step, cfg.num_steps,
                                                        cfg.checkpoint_every):
            checkpoint.save(ckpt, step, {"state": state, "carries": carries}, keep=2, metadata={
                "run": identity, "history": history,
                "pending": training.pending_to_json(pending)})
    return model, state, history


def eval_stream(task, split: str, batch_size: int, max_chars: int | None = None):
    """The first ``max_chars`` characters of a split (all: None) as ``batch_size`` streams."""
    return streams(task.split_tokens(split)[:max_chars], batch_size)


def run(cfg: Config) -> dict:
    """Trains every model, scores test bits per character, prints and stores a sample."""
    task = make_task(cfg)
    ln2 = math.log(2.0)
    val_stream = eval_stream(task, "validation", cfg.eval_batch_size, cfg.val_chars)
    test_stream = eval_stream(task, "test", cfg.eval_batch_size)
    # test_bpc[name] etc.: medians over seeds; *_spread: median, Q1, Q3, n; *_per_seed: [S]
    out = {f"{k}{suffix}": {} for k in ("test_bpc", "final_train_bpc", "clip_fraction")
           for suffix in ("", "_spread", "_per_seed")}
    out |= {"samples": {}, "num_params": {}, "curves": {}}
    for name in cfg.models:
        model, state, hist = fit(name, cfg, task, val_stream)
        test = np.asarray(_stream_loss(state.params, test_stream, model, cfg.window)) / ln2
        train_bpc = [np.nan if v is None else v / ln2 for v in hist["train_loss"][-1]]
        clipped = np.mean(np.asarray(hist["clipped"], float), axis=0)  # [S]
        for key, values in (("test_bpc", test), ("final_train_bpc", train_bpc),
                            ("clip_fraction", clipped)):
            out[f"{key}_per_seed"][name] = _finite(values)
            out[f"{key}_spread"][name] = seed_stats.spread(values)
            out[key][name] = out[f"{key}_spread"][name]["median"]
        seed0 = jax.tree.map(lambda x: x[0], state.params)
        out["num_params"][name] = count_params(seed0)
        out["curves"][name] = hist
        key = jax.random.fold_in(jax.random.key(cfg.seed), SAMPLE_STREAM)
        out["samples"][name] = generate.generate_text(
            key, model, seed0, task, cfg.prompt, cfg.sample_length,
            temperature=cfg.temperature)
    best = min(cfg.models, key=lambda m: out["test_bpc"][m])
    out["best_model"] = best
    out["sample"] = cfg.prompt + out["samples"][best]
    out["unigram_bpc"] = task.unigram_entropy / ln2
    out["uniform_bpc"] = task.baseline / ln2
    out["vocab_size"] = task.input_size
    out["chars"] = {s: int(task.split_tokens(s).shape[0]) for s in task.split_names}
    out["train_chars_read"] = cfg.num_steps * cfg.batch_size * cfg.window
    print(f"char_lm sample ({best}, temperature {cfg.temperature:g}):\n{out['sample']}")
    return out


# Imported last: report.py reads this module.
from experiments.char_lm.report import figures, report  # noqa: E402, F401
