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
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnn_jax import diagnostics as dg
from rnn_jax.training.train import OptimizerConfig, make_optimizer


@dataclasses.dataclass(frozen=True)
class Config:
    """The full run: 801² grid for the statistics, 201² plotted, 300 descent steps at lr 0.5."""

    seq_len: int = 50
    x0: float = 0.5
    target: float = 0.7
    w_range: tuple[float, ...] = (2.0, 7.0)
    b_range: tuple[float, ...] = (-4.5, 0.0)
    grid_size: int = 201  # plotted grid (recomputed by figures(), not stored)
    stats_grid_size: int = 801  # grid for max / median gradient norm
    wall_w: float = 5.0
    wall_search: int = 40001  # points on the line w = wall_w searched for the wall
    learning_rate: float = 0.5
    clip_threshold: float = 1.0
    gd_steps: int = 300
    bif_w: float = 5.0
    bif_b_range: tuple[float, ...] = (-3.25, -1.75)
    bif_num_b: int = 151
    bif_line_points: int = 2001  # E and ||grad E|| along b at w = bif_w (the wall is thin)
    bif_x0: tuple[float, ...] = (-6.0, -3.0, -1.0, 0.0, 0.5, 1.0, 3.0, 6.0)

    def __post_init__(self):
        for name in ("w_range", "b_range", "bif_b_range"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not lo_hi[0] < lo_hi[1]:
                raise ValueError(f"{name} must be (low, high) with low < high, got {lo_hi}")
        for name in ("seq_len", "grid_size", "stats_grid_size", "wall_search", "gd_steps",
                     "bif_num_b", "bif_line_points"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2, got {getattr(self, name)}")
        if not self.learning_rate > 0 or not self.clip_threshold > 0:
            raise ValueError(f"learning_rate and clip_threshold must be > 0, got "
                             f"{self.learning_rate}, {self.clip_threshold}")


SMOKE = {"grid_size": 41, "stats_grid_size": 81, "wall_search": 2001, "gd_steps": 20,
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


def _evaluate(cfg: Config, point_sets):
    """E and ||grad E|| on several sets of (w, b) points [N_i, 2] in one compiled call."""
    sizes = np.cumsum([len(p) for p in point_sets])[:-1]
    e, g = _loss_and_grad_norm(jnp.concatenate(point_sets, axis=0), cfg)
    return list(zip(jnp.split(e, sizes), jnp.split(g, sizes), strict=True))


def _grid_points(cfg: Config, n: int):
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


def run(cfg: Config) -> dict:
    _, _, fine = _grid_points(cfg, cfg.stats_grid_size)
    _, line = _line_points(cfg.wall_w, cfg.b_range, cfg.wall_search)
    b_bif, bif_line = _line_points(cfg.bif_w, cfg.bif_b_range, cfg.bif_line_points)
    (_, g_fine), (e_line, g_line), (e_bif, g_bif) = _evaluate(cfg, [fine, line, bif_line])
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
    }


def figures(metrics: dict, cfg: Config, out_dir):
    import matplotlib

    from rnn_jax import plotting

    traj = metrics["trajectories"]
    ws, bs, points = _grid_points(cfg, cfg.grid_size)
    ((e_grid, g_grid),) = _evaluate(cfg, [points])
    shape = (cfg.grid_size, cfg.grid_size)
    grid = {"loss": np.asarray(e_grid).reshape(shape),
            "grad_norm": np.asarray(g_grid).reshape(shape)}
    sig0 = 1.0 / (1.0 + np.exp(-cfg.x0))
    w_min = 1.0 / (sig0 * (1.0 - sig0))  # x_0 is a repelling fixed point only beyond this w
    paths = []
    fig, axes = plotting.figure(1, 2, width=4.8, height=4.0)
    with plotting.style():
        for ax, key, label, title in (
            (axes[0], "loss", r"$E(w, b) = (\sigma(x_{50}) - 0.7)^2$", "loss surface"),
            (axes[1], "grad_norm", r"$\|\nabla E\|$", "gradient norm (the wall)"),
        ):
            plotting.surface(ax, ws, bs, grid[key], log=True, xlabel="w",
                             ylabel="b", colorbar=label, cmap="viridis" if key == "loss"
                             else "magma", title=title)
            ax.grid(False)
            w_wall = np.linspace(max(w_min, cfg.w_range[0]), cfg.w_range[1], 50)
            ax.plot(w_wall, cfg.x0 - w_wall * sig0, color="cyan", linewidth=1.4,
                    linestyle=(0, (2, 2)), label=r"wall: $b = x_0 - w\,\sigma(x_0)$")
            plotting.trajectory(ax, traj["clipped"]["path"], color="white",
                                label=f"GD, clipped at {cfg.clip_threshold:g}")
            plotting.trajectory(ax, traj["unclipped"]["path"], color="tab:red", linestyle="--",
                                label="GD, unclipped")
            ax.set_xlim(*cfg.w_range)
            ax.set_ylim(*cfg.b_range)
        start = np.asarray(metrics["wall_theta"])
        land = np.asarray(traj["unclipped"]["path"][1])
        direction = (land - start) / np.linalg.norm(land - start)
        axes[0].annotate(
            f"one unclipped step:\n|Δθ| = {metrics['unclipped_jump']:.3g},\n"
            f"lands at ({land[0]:.3g}, {land[1]:.3g})",
            xy=start + 0.6 * direction,
            xytext=(cfg.w_range[0] + 0.05 * np.ptp(cfg.w_range),
                    cfg.b_range[0] + 0.06 * np.ptp(cfg.b_range)),
            color="black", fontsize=8, arrowprops={"arrowstyle": "->", "color": "black"})
        for ax in axes:
            ax.legend(loc="upper right", labelcolor="white", frameon=True, facecolor="black",
                      framealpha=0.45, edgecolor="none")
        paths.append(plotting.save(fig, out_dir / "cliff_surface.png"))

    bif = metrics["bifurcation"]
    fig, axes = plotting.figure(1, 2, width=4.6, height=3.8)
    with plotting.style():
        ax = axes[0]
        plotting.branches(ax, bif["fp_b"], bif["fp_x"], bif["fp_stable"], label="fixed points")
        b, x_final = np.asarray(bif["b"]), np.asarray(bif["x_final"])
        colors = matplotlib.colormaps["tab10"](np.arange(x_final.shape[1]) % 10)
        sizes = np.linspace(7.0, 2.5, x_final.shape[1])  # later x_0 drawn smaller, on top
        for j, x0 in enumerate(bif["x0"]):
            ax.plot(b, x_final[:, j], linestyle="none", marker="o", markersize=sizes[j],
                    color=colors[j], zorder=3,
                    label=f"$x_{{{cfg.seq_len}}}$ from $x_0$ = {x0:g}")
        for sn in bif["saddle_node_b"]:
            ax.axvline(sn, color="grey", linewidth=0.8, linestyle=":")
        ax.axhline(cfg.x0, color="deepskyblue", linewidth=0.8, linestyle=":")
        ax.axvline(bif["wall_b"], color="deepskyblue", linewidth=1.0, linestyle="-.",
                   label=f"wall for $x_0$ = {cfg.x0:g}")
        ax.set_xlabel("b")
        ax.set_ylabel("x")
        ax.set_title(f"Doya's bifurcation diagram, w = {cfg.bif_w:g}")
        ax.legend(loc="upper left", fontsize=6)
        ax = axes[1]
        ax.plot(bif["b_line"], bif["loss_line"], color="black",
                label=f"E ($x_0$ = {cfg.x0:g})")
        ax.set_xlabel("b")
        ax.set_ylabel(f"E(w = {cfg.bif_w:g}, b)")
        ax.set_title(f"the cliff along b at w = {cfg.bif_w:g}")
        twin = ax.twinx()
        twin.plot(bif["b_line"], bif["grad_line"], color="tab:red", linewidth=1.0,
                  label=r"$\|\nabla E\|$")
        twin.set_yscale("log")
        twin.set_ylabel(r"$\|\nabla E\|$ (log scale)", color="tab:red")
        twin.grid(False)
        for k, sn in enumerate(bif["saddle_node_b"]):
            ax.axvline(sn, color="grey", linewidth=0.8, linestyle=":",
                       label="saddle-node bifurcations" if k == 0 else None)
        ax.axvline(bif["wall_b"], color="deepskyblue", linewidth=1.0, linestyle="-.",
                   label=r"wall $b = x_0 - w\,\sigma(x_0)$")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = twin.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="center right", fontsize=7)
        paths.append(plotting.save(fig, out_dir / "bifurcation.png"))
    return paths


def report(metrics: dict, cfg: Config) -> str:
    t = metrics["trajectories"]
    w0, b0 = metrics["wall_theta"]
    sn = metrics["bifurcation"]["saddle_node_b"]
    return "\n".join([
        f"One unit, x_t = w σ(x_(t-1)) + b, x_0 = {cfg.x0}, T = {cfg.seq_len}, "
        f"E = (σ(x_T) - {cfg.target})^2 (Pascanu, Mikolov, Bengio 2013, §3; Doya 1993).",
        "",
        f"- Gradient norm on a {cfg.stats_grid_size}² grid over w ∈ {list(cfg.w_range)}, "
        f"b ∈ {list(cfg.b_range)}: max {metrics['max_grad']:.3g}, median "
        f"{metrics['median_grad']:.3g}, **max/median = {metrics['max_over_median_grad']:.3g}** "
        "(the maximum grows as the grid gets finer: the wall is thinner than a grid cell).",
        f"- Start on the wall at w = {w0:g}, b = {b0:.5f} (largest gradient on "
        f"{cfg.wall_search} points along b): ||∇E|| = {metrics['wall_grad_norm']:.4g}, "
        f"E = {metrics['wall_loss']:.4g}; the closed form b = x_0 - w σ(x_0) = "
        f"{metrics['wall_b_theory']:.5f} (where x_0 is the repelling fixed point) agrees.",
        f"- Plain gradient descent (learning rate {cfg.learning_rate:g}): the first step moves "
        f"the parameters by **{metrics['unclipped_jump']:.4g}** to "
        f"({t['unclipped']['path'][1][0]:.4g}, {t['unclipped']['path'][1][1]:.4g}), a plateau "
        f"where σ(x_T) saturates; after {cfg.gd_steps} steps E = "
        f"{t['unclipped']['final_loss']:.4g}.",
        f"- Clipped to global norm {cfg.clip_threshold:g}: the first step moves by "
        f"**{metrics['clipped_jump']:.4g}**; "
        f"{len(t['clipped']['clipped_steps'])} of {cfg.gd_steps} steps clipped (steps "
        f"{t['clipped']['clipped_steps'][:10]}); after {cfg.gd_steps} steps E = "
        f"{t['clipped']['final_loss']:.4g} at "
        f"(w, b) = ({t['clipped']['final_theta'][0]:.4g}, {t['clipped']['final_theta'][1]:.4g}).",
        f"- Bifurcation diagram at w = {cfg.bif_w:g}: two stable fixed points for b between the "
        f"saddle-node bifurcations at b = {min(sn):.4f} and b = {max(sn):.4f} (closed form: "
        "w σ'(x*) = 1); the attractor reached from x_0 depends on x_0 only there, and the cliff "
        "of E (from x_0 = 0.5) sits inside that interval, where the repelling fixed point "
        "crosses x_0 — not at a bifurcation. Dots off the branches are real: next to a "
        f"saddle-node x_t passes its 'ghost' slowly and has not arrived after {cfg.seq_len} "
        "steps, and an x_0 that is exactly the repelling fixed point (x_0 = 0 at b = -2.5) "
        "stays there.",
    ])
