"""The experiments CLI: ``list`` one line per experiment, ``run NAME --help`` every config field."""

import dataclasses
import subprocess
import sys

import pytest

from experiments import harness
from experiments.__main__ import _field_comments, describe_config, main

NAMES = harness.experiment_names()


def test_char_lm_help_lists_the_training_fields_with_defaults(capsys):
    assert main(["run", "char_lm", "--help"]) == 0
    out = capsys.readouterr().out
    for line in ("--num_steps", "int, default 4000", "--checkpoint_every", "int, default 500",
                 "--checkpoint_dir", "str | None, default None", "--models",
                 "tuple[str, ...], default tanh,lstm,gru", "--smoke", "--out DIR"):
        assert line in out, line


@pytest.mark.parametrize("name", NAMES)
def test_every_field_of_every_experiment_has_type_default_and_description(name, capsys):
    module = harness.load(name)
    rows = describe_config(module)
    assert [r["name"] for r in rows] == [f.name for f in dataclasses.fields(module.Config)]
    for r in rows:
        assert r["type"] and r["description"].strip(), (name, r)
    assert main(["run", name, "-h"]) == 0
    out = capsys.readouterr().out
    for r in rows:
        assert f"--{r['name']}" in out and r["description"] in out


def test_field_comments_are_read_from_the_source():
    @dataclasses.dataclass(frozen=True)
    class Config:
        a: int = 1  # trailing
        # above, line one
        # line two
        b: str = "x#y"
        c: float = 0.5

    assert _field_comments(Config) == {"a": "trailing", "b": "above, line one line two"}


def test_help_of_an_unknown_experiment_is_a_clear_error(capsys):
    assert main(["run", "no_such_experiment", "--help"]) == 2
    assert "no_such_experiment" in capsys.readouterr().err


def test_list_prints_one_line_per_experiment():
    proc = subprocess.run([sys.executable, "-m", "experiments", "list"], capture_output=True,
                          text=True, timeout=300, check=True)
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == NAMES


@pytest.mark.parametrize("smoke", [False, True])
def test_recorded_command_rebuilds_the_same_config(smoke):
    """results.json's ``command`` names every non-default field; its flags give back the config."""
    import shlex

    from experiments import remedies

    overrides = {"copy_lens": "7,9", "adding_lens": "8,10", "models": "tanh,cornn",
                 "learning_rate": "0.003", "checkpoint_dir": "/tmp/x y"}
    cfg = harness.make_config(remedies, overrides, smoke=smoke)
    words = shlex.split(harness.command_line("remedies", cfg,
                                             harness.make_config(remedies, smoke=smoke),
                                             smoke=smoke))
    assert words[:5] == ["python", "-m", "experiments", "run", "remedies"]
    assert ("--smoke" in words) == smoke
    flags = [w for w in words[5:] if w != "--smoke"]
    parsed = dict(zip([f[2:] for f in flags[::2]], flags[1::2], strict=True))
    assert set(parsed) == set(overrides)
    assert harness.make_config(remedies, parsed, smoke=smoke) == cfg


@pytest.mark.parametrize("field", ["irnn_learning_rate", "learning_rate", "clip_threshold"])
@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_a_bad_rate_is_refused_naming_the_field_that_was_set(field, value, capsys, tmp_path):
    # adding has two learning rates; each is checked under its own name (not OptimizerConfig's)
    # when the config is built, before anything runs.
    assert main(["run", "adding", f"--{field}", value, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: {field}: expected a finite number > 0, "
                           f"got {float(value)!r}"), err
    assert "OptimizerConfig" not in err and not (tmp_path / "o").exists()


def test_every_rate_of_every_experiment_is_refused_naming_it():
    for name in NAMES:
        module = harness.load(name)
        for f in dataclasses.fields(module.Config):
            if "learning_rate" in f.name or f.name == "clip_threshold":
                with pytest.raises(ValueError, match=rf"\b{f.name}\b"):
                    harness.make_config(module, {f.name: "-1"})
