"""The ``cliff`` experiment's figures and markdown report (its run is in ``__init__``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from experiments import seed_stats
from experiments.cliff import evaluate, grid_points

if TYPE_CHECKING:
    from experiments.cliff import Config


def figures(metrics: dict, cfg: Config, out_dir):
    import matplotlib

    from rnn_jax import plotting

    traj = metrics["trajectories"]
    ws, bs, points = grid_points(cfg, cfg.grid_size)
    ((e_grid, g_grid),) = evaluate(cfg, [points])
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
            starts = np.asarray(metrics["starts"]["theta0"])
            ax.scatter(starts[:, 0], starts[:, 1], s=14, marker="D", facecolors="none",
                       edgecolors="white", label=f"{len(starts)} random wall starts")
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
    st = metrics["starts"]
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
        "",
        f"From {cfg.num_starts} random points on the wall (w uniform, seed {cfg.seed}; b where "
        f"||∇E|| peaks on {cfg.wall_search} points within ±{cfg.start_window:g} of the closed "
        f"form), {cfg.gd_steps} steps each, median "
        "[Q1, Q3] over the starts:",
        "",
        "| descent | starts | first step |Δθ| | final E |",
        "|---|---|---|---|",
        *(f"| {name} | {st[name]['first_jump']['spread']['n']} | "
          f"{seed_stats.format_spread(st[name]['first_jump']['spread'])} | "
          f"{seed_stats.format_spread(st[name]['final_loss']['spread'])} |"
          for name in ("unclipped", "clipped")),
    ])
