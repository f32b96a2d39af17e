"""The demo: its plan builds valid configs, and --smoke writes a REPORT.md whose links resolve."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import re  # noqa: E402

import pytest  # noqa: E402

from experiments import demo, harness  # noqa: E402

pytest.importorskip("matplotlib")


def test_every_planned_config_is_valid():
    # Catches renamed fields in the headline experiments without running them.
    assert [p[0] for p in demo.PLAN] == ["vanishing", "cliff", "clipping_sweep", "mnist1d",
                                         "char_lm"]
    for name, full, smoke in demo.PLAN:
        module = harness.load(name)
        harness.make_config(module, full)
        harness.make_config(module, smoke, smoke=True)


def test_smoke_report_links_existing_files(tmp_path, capsys):
    # Two of the five experiments keep the test fast; `demo --smoke` runs all five the same way.
    path = demo.main(out=tmp_path, smoke=True, only=("cliff", "char_lm"))
    assert path == tmp_path / "REPORT.md"
    text = path.read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert "cliff/report.md" in links and "char_lm/report.md" in links
    assert any(link.endswith(".png") for link in links)
    for link in links:
        assert not link.startswith("/"), link  # relative paths only
        assert (tmp_path / link).is_file(), link
    assert "| [cliff](cliff/report.md) |" in text
    assert "Sample (gru" in text and "```" in text
    assert "## Environment" in text and "jax:" in text
    assert "[2/2] char_lm done" in capsys.readouterr().err


def test_unknown_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="only"):
        demo.main(out=tmp_path, smoke=True, only=("transformer",))
    assert not (tmp_path / "REPORT.md").exists()
