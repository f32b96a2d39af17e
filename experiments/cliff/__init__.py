"""The one-unit cliff: exploding gradients as walls of the loss surface, and clipping.

Pascanu, Mikolov, Bengio (2013), section 3, after Doya (1993): one recurrent unit

    x_t = w sigma(x_{t-1}) + b,   x_0 = 0.5,   t = 1..50,     E(w, b) = (sigma(x_50) - 0.7)^2

For w > 4 the map has two stable fixed points over an interval of b (a saddle-node pair at each
end, Doya's bifurcations). Crossing a bifurcation moves x_50 from one attractor to the other,
so E jumps and its gradient is huge on a thin "wall" in (w, b); elsewhere it is tiny. One plain
gradient step from the wall throws the parameters far away onto a flat plateau, while a step
clipped to a global norm tau (the rescaling the paper proposes) stays local and keeps
descending the valley.

Computed here: the loss and gradient norm on a (w, b) grid (``vmap``), a start point on the
wall (largest gradient on a fine line at w = ``wall_w``), gradient-descent trajectories with
and without clipping (the project's optimizer factory,
``rnn_jax.training.train.make_optimizer``), and Doya's bifurcation diagram at w = 5 (fixed
points and the attractor reached from several x_0).

The descent is deterministic, so its spread comes from where it starts: besides the wall point
at w = ``wall_w``, ``num_starts`` points are drawn on the wall (w uniform from ``key(seed)``
over the part of ``w_range`` where x_0 is a repelling fixed point, b where ||grad E|| peaks on a
fine line across the closed-form wall), each descended with and without clipping, and the first
step's length and the final loss are reported as the median and interquartile range over them
(``experiments.seed_stats.spread``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import seed_stats
from rnn_jax import diagnostics as dg
from rnn_jax.training.train import OptimizerConfig, make_optimizer


@dataclasses.dataclass(frozen=True)
class Config:
    """The full run: 801² grid for the statistics, 201² plotted, 300 descent steps at lr 0.5
    from the wall at w = 5 and from 16 random wall points (whose wall searches, 16 x 40001
    points, cost about as much as the 801² grid again)."""

    seq_len: int = 50  # T, steps of the one-unit recurrence
    x0: float = 0.5  # initial state x_0
    target: float = 0.7  # target value of sigma(x_T)
    w_range: tuple[float, ...] = (2.0, 7.0)  # range of the recurrent weight w on the grid
    b_range: tuple[float, ...] = (-4.5, 0.0)  # range of the bias b on the grid
    grid_size: int = 201  # plotted grid (recomputed by figures(), not stored)
    stats_grid_size: int = 801  # grid for max / median gradient norm
    wall_w: float = 5.0  # w of the line searched for the wall
    wall_search: int = 40001  # points on the line w = wall_w searched for the wall
    learning_rate: float = 0.5
    clip_threshold: float = 1.0
    gd_steps: int = 300  # gradient-descent steps from the wall, with and without clipping
    num_starts: int = 16  # random wall points descended too: the spread over start points
    seed: int = 0  # draws the random wall points
    start_window: float = 0.05  # half-width in b of each random start's search for its wall
    bif_w: float = 5.0  # w of the bifurcation diagram
    bif_b_range: tuple[float, ...] = (-3.25, -1.75)  # range of b in the bifurcation diagram
    bif_num_b: int = 151  # values of b in the bifurcation diagram
    bif_line_points: int = 2001  # E and ||grad E|| along b at w = bif_w (the wall is thin)
    # initial states whose attractors are drawn
    bif_x0: tuple[float, ...] = (-6.0, -3.0, -1.0, 0.0, 0.5, 1.0, 3.0, 6.0)

    def __post_init__(self):
        for name in ("w_range", "b_range", "bif_b_range"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not lo_hi[0] < lo_hi[1]:
                raise ValueError(f"{name} must be (low, high) with low < high, got {lo_hi}")
        for name in ("seq_len", "grid_size", "stats_grid_size", "wall_search", "gd_steps",
                     "bif_num_b", "bif_line_points", "num_starts"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2, got {getattr(self, name)}")
        if not self.start_window > 0:
            raise ValueError(f"start_window must be > 0, got {self.start_window}")
        if not self.learning_rate > 0 or not self.clip_threshold > 0:
            raise ValueError(f"learning_rate and clip_threshold must be > 0, got "
                             f"{self.learning_rate}, {self.clip_threshold}")


SMOKE = {"grid_size": 41, "stats_grid_size": 81, "wall_search": 2001, "gd_steps": 20,
         "num_starts": 4,
         "bif_num_b": 41, "bif_line_points": 201, "bif_x0": (-3.0, 0.5, 3.0)}


# -- the model ---------------------------------------------------------------------------------
def final_state(theta, x0, num_steps):
    """x_T of x_t = w sigma(x_{t-1}) + b from x_0 (one unit, no input), theta = (w, b)."""
    w, b = theta[0], theta[1]
    x, _ = jax.lax.scan(lambda x, _: (w * jax.nn.sigmoid(x) + b, None), x0, None,
                        length=num_steps)
    return x


def loss(theta, cfg: Config):
    """E(w, b) = (sigma(x_T) - target)^2."""
    x = final_state(theta, jnp.float32(cfg.x0), cfg.seq_len)
    return (jax.nn.sigmoid(x) - cfg.target) ** 2


@functools.partial(jax.jit, static_argnums=1)
def _loss_and_grad_norm(thetas, cfg: Config):
    e, g = jax.vmap(jax.value_and_grad(loss), (0, None))(thetas, cfg)
    return e, jnp.linalg.norm(g, axis=-1)


def evaluate(cfg: Config, point_sets):
    """E and ||grad E|| on several sets of (w, b) points [N_i, 2] in one compiled call."""
    sizes = np.cumsum([len(p) for p in point_sets])[:-1]
    e, g = _loss_and_grad_norm(jnp.concatenate(point_sets, axis=0), cfg)
    return list(zip(jnp.split(e, sizes), jnp.split(g, sizes), strict=True))


def grid_points(cfg: Config, n: int):
    ws = jnp.linspace(*cfg.w_range, n)
    bs = jnp.linspace(*cfg.b_range, n)
    wg, bg = jnp.meshgrid(ws, bs)  # rows follow b
    return ws, bs, jnp.stack([wg.ravel(), bg.ravel()], axis=-1)


def _line_points(w, b_range, n):
    bs = jnp.linspace(*b_range, n)
    return bs, jnp.stack([jnp.full_like(bs, w), bs], axis=-1)


def descend(theta0, cfg: Config, clip: bool):
    """Gradient descent from theta0 with the project's SGD, clipped to ``clip_threshold`` or not.

    Returns the path [steps + 1, 2], the loss [steps + 1] and the pre-clip gradient norm [steps].
    """
    opt = make_optimizer(OptimizerConfig(
        name="sgd", learning_rate=cfg.learning_rate, clip="global_norm" if clip else "none",
        clip_threshold=cfg.clip_threshold))
    value_grad = jax.value_and_grad(lambda t: loss(t, cfg))

    def step(state, _):
        theta, opt_state = state
        e, g = value_grad(theta)
        updates, opt_state = opt.update(g, opt_state, theta)
        new = optax.apply_updates(theta, updates)
        return (new, opt_state), (new, e, optax.tree.norm(g))

    @jax.jit
    def run_all(t0):
        _, (path, e, gnorm) = jax.lax.scan(step, (t0, opt.init(t0)), None, length=cfg.gd_steps)
        path = jnp.concatenate([t0[None, :], path], axis=0)
        return path, jnp.append(e, loss(path[-1], cfg)), gnorm

    return run_all(theta0)


def bifurcation(cfg: Config):
    """Doya's diagram at w = bif_w: fixed points x* (parametric in x) and x_T from each x_0.

        x* = w sigma(x*) + b  <=>  b = x* - w sigma(x*);   stable iff w sigma'(x*) < 1
    """
    w = cfg.bif_w
    lo, hi = cfg.bif_b_range
    xs = jnp.linspace(lo - 1.0, hi + w + 1.0, 2001)
    b_of_x = xs - w * jax.nn.sigmoid(xs)
    keep = (b_of_x >= lo) & (b_of_x <= hi)
    stable = w * jax.nn.sigmoid(xs) * (1 - jax.nn.sigmoid(xs)) < 1.0
    bs = jnp.linspace(lo, hi, cfg.bif_num_b)
    x0s = jnp.asarray(cfg.bif_x0, jnp.float32)

    def one(b, x0):
        return final_state(jnp.stack([jnp.float32(w), b]), x0, cfg.seq_len)

    finals = jax.jit(jax.vmap(jax.vmap(one, (None, 0)), (0, None)))(bs, x0s)  # [num_b, x0]
    # the saddle-node points: where w sigma'(x) = 1
    s = jnp.array([0.5 + 0.5 * np.sqrt(1 - 4 / w), 0.5 - 0.5 * np.sqrt(1 - 4 / w)])
    x_sn = jnp.log(s / (1 - s))
    return {
        "fp_x": xs[keep], "fp_b": b_of_x[keep], "fp_stable": stable[keep],
        "b": bs, "x0": x0s, "x_final": finals,
        "saddle_node_b": x_sn - w * jax.nn.sigmoid(x_sn),
        "wall_b": wall_b(w, cfg.x0),
    }


def wall_b(w, x0):
    """Where the cliff is: b at which x_0 is the unstable fixed point, b = x_0 - w sigma(x_0).

    For w sigma'(x_0) > 1, x_0 sits on the repelling branch there, so x_t leaves for the upper
    attractor on one side and the lower one on the other: E is discontinuous as T -> inf.
    """
    return x0 - w * jax.nn.sigmoid(x0)


def wall_starts(cfg: Config):
    """``num_starts`` points on the wall: w ~ U[max(w_min, w_lo), w_hi] from ``key(seed)``
    (w_min = 1 / (sigma(x_0) sigma'(x_0)): below it x_0 is not a repelling fixed point and there
    is no wall), b where ||grad E|| peaks on ``wall_search`` points within ``start_window`` of
    the closed form :func:`wall_b` (the wall is far thinner than a line across ``b_range`` could
    resolve at every w).

    Shapes: -> [num_starts, 2].
    """
    sig0 = jax.nn.sigmoid(cfg.x0)
    w_lo = max(float(1.0 / (sig0 * (1.0 - sig0))), cfg.w_range[0])
    ws = jax.random.uniform(jax.random.key(cfg.seed), (cfg.num_starts,), minval=w_lo,
                            maxval=cfg.w_range[1])
    offsets = jnp.linspace(-cfg.start_window, cfg.start_window, cfg.wall_search)
    bs = wall_b(ws, cfg.x0)[:, None] + offsets[None, :]  # [N, L]
    lines = jnp.stack(jnp.broadcast_arrays(ws[:, None], bs), axis=-1)  # [N, L, 2]
    ((_, g),) = evaluate(cfg, [lines.reshape(-1, 2)])
    peak = jnp.argmax(g.reshape(cfg.num_starts, -1), axis=1)
    return jnp.stack([ws, jnp.take_along_axis(bs, peak[:, None], axis=1)[:, 0]], axis=-1)


def descend_from_starts(cfg: Config) -> dict:
    """Clipped and unclipped descents from every :func:`wall_starts` point: per start the first
    step's length and the final loss, and their median [Q1, Q3] over starts."""
    starts = wall_starts(cfg)
    out = {"theta0": np.asarray(starts).tolist()}
    for name, clip in (("unclipped", False), ("clipped", True)):
        path, e, _ = jax.device_get(jax.vmap(lambda t, c=clip: descend(t, cfg, c))(starts))
        per_start = {"first_jump": np.linalg.norm(path[:, 1] - path[:, 0], axis=-1),
                     "final_loss": np.asarray(e[:, -1])}
        out[name] = {k: {"per_start": v.tolist(), "spread": seed_stats.spread(v)}
                     for k, v in per_start.items()}
    return out


def run(cfg: Config) -> dict:
    _, _, fine = grid_points(cfg, cfg.stats_grid_size)
    _, line = _line_points(cfg.wall_w, cfg.b_range, cfg.wall_search)
    b_bif, bif_line = _line_points(cfg.bif_w, cfg.bif_b_range, cfg.bif_line_points)
    (_, g_fine), (e_line, g_line), (e_bif, g_bif) = evaluate(cfg, [fine, line, bif_line])
    # the wall: the largest gradient on a fine line across it at w = wall_w
    i_wall = jnp.argmax(g_line)
    theta0 = line[i_wall]

    paths = {}
    for name, clip in (("unclipped", False), ("clipped", True)):
        path, e, gnorm = jax.device_get(descend(theta0, cfg, clip))
        clipped = gnorm > cfg.clip_threshold if clip else np.zeros_like(gnorm, bool)
        stats = jax.device_get(dg.clipping_stats(jnp.asarray(gnorm), jnp.asarray(clipped)))
        paths[name] = {
            "path": np.asarray(path).tolist(), "loss": np.asarray(e).tolist(),
            "grad_norm": np.asarray(gnorm).tolist(),
            "first_jump": float(np.linalg.norm(path[1] - path[0])),
            "final_theta": np.asarray(path[-1]).tolist(), "final_loss": float(e[-1]),
            "min_loss": float(np.min(e)),
            "fraction_clipped": float(stats["fraction_clipped"]),
            "clipped_steps": np.flatnonzero(clipped).tolist(),
            "grad_norm_median": float(stats["quantiles"][0]),
        }
    bif = jax.device_get({**bifurcation(cfg), "b_line": b_bif, "loss_line": e_bif,
                          "grad_line": g_bif})
    g_fine = np.asarray(g_fine)
    return {
        "max_over_median_grad": float(g_fine.max() / np.median(g_fine)),
        "max_grad": float(g_fine.max()),
        "median_grad": float(np.median(g_fine)),
        "unclipped_jump": paths["unclipped"]["first_jump"],
        "clipped_jump": paths["clipped"]["first_jump"],
        "wall_theta": np.asarray(theta0).tolist(),
        "wall_grad_norm": float(jnp.max(g_line)),
        "wall_loss": float(e_line[i_wall]),
        "wall_b_theory": float(wall_b(cfg.wall_w, cfg.x0)),
        "trajectories": paths,
        "bifurcation": {k: np.asarray(v).tolist() for k, v in bif.items()},
        "starts": descend_from_starts(cfg),
    }


# Imported last: report.py reads this module.
from experiments.cliff.report import figures, report  # noqa: E402, F401
