"""Plotting helpers: valid PNGs, log axes, labels, and input checks (Agg canvas, no pyplot)."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

plotting = pytest.importorskip("rnn_jax.plotting")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    return path.exists() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


def test_lines_on_log_axes_drop_nonpositive_values_and_save_a_png(tmp_path):
    fig, axes = plotting.figure(1, 2)
    assert axes.shape == (2,)
    x = np.arange(10)
    with plotting.style():
        plotting.lines(axes[0], x, {"a": 0.5 ** x, "b": np.where(x < 5, 2.0 ** x, 0.0)},
                       logy=True, xlabel="lag", ylabel="norm", title="t",
                       styles={"b": {"linestyle": "--"}})
    ax = axes[0]
    assert ax.get_yscale() == "log"
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("lag", "norm", "t")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    b_line = ax.get_lines()[1]
    assert b_line.get_linestyle() == "--"
    assert np.isnan(b_line.get_ydata()[5:]).all()  # zeros are not drawn on a log axis
    assert not np.array_equal(ax.get_lines()[0].get_color(), b_line.get_color())
    path = plotting.save(fig, tmp_path / "sub" / "lines.png")
    assert _is_png(path)
    assert not list(path.parent.glob(".*tmp*"))  # written atomically, no temporary left


def test_surface_trajectory_and_branches(tmp_path):
    fig, ax = plotting.figure()
    x, y = np.linspace(0, 1, 5), np.linspace(0, 2, 4)
    z = np.outer(y + 1, x + 1)
    with plotting.style():
        plotting.surface(ax, x, y, z, log=True, xlabel="w", ylabel="b", colorbar="E")
        plotting.trajectory(ax, [[0.1, 0.2], [0.5, 1.0], [0.9, 1.5]], label="gd")
        plotting.branches(ax, np.arange(6.0), np.arange(6.0),
                          np.array([True, True, False, False, True, True]))
    styles = [line.get_linestyle() for line in ax.get_lines()]
    assert styles.count("--") == 1 and styles.count("-") >= 3
    labels = [line.get_label() for line in ax.get_lines()]
    assert "fixed points (stable)" in labels and "fixed points (unstable)" in labels
    assert len(fig.axes) == 2  # the plot and its colour bar
    assert _is_png(plotting.save(fig, tmp_path / "surface.png"))


def test_bad_input_raises(tmp_path):
    fig, ax = plotting.figure()
    with pytest.raises(ValueError, match="ys"):
        plotting.lines(ax, [0, 1], {})
    with pytest.raises(ValueError, match="curve 'a'"):
        plotting.lines(ax, [0, 1], {"a": [1, 2, 3]})
    with pytest.raises(ValueError, match="z must have shape"):
        plotting.surface(ax, [0, 1], [0, 1, 2], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="points"):
        plotting.trajectory(ax, [1, 2], label="x")
    with pytest.raises(ValueError, match="stable"):
        plotting.branches(ax, [0, 1], [0, 1], [True])
    with pytest.raises(ValueError, match="ncols"):
        plotting.figure(1, 0)
    with pytest.raises(ValueError, match=".png"):
        plotting.save(fig, tmp_path / "x.pdf")


def test_core_library_does_not_import_matplotlib():
    """Only rnn_jax/plotting.py may import matplotlib (checked on the source, no subprocess)."""
    import ast
    from pathlib import Path

    import rnn_jax

    offenders = []
    for path in Path(rnn_jax.__file__).parent.rglob("*.py"):
        if path.name == "plotting.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            names += ["rnn_jax.plotting"] * any(
                isinstance(node, ast.ImportFrom) and a.name == "plotting"
                for a in getattr(node, "names", []))
            if any(n.split(".")[0] == "matplotlib" or n == "rnn_jax.plotting" for n in names):
                offenders.append(path.name)
    assert offenders == []
