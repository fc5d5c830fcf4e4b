"""``--config FILE.toml`` (cli.common.config_option): recipe files give option defaults."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from flowsuite.cli.main import cli, train
from flowsuite.core.errors import FlowsuiteError

ROOT = Path(__file__).resolve().parents[1]


def _params(command: str, *args) -> dict:
    """The values the train command would run with (parsed, not run)."""
    cmd = train.commands[command]
    with cmd.make_context(command, [str(a) for a in args]) as ctx:
        return dict(ctx.params)


def test_command_line_beats_file_beats_defaults(tmp_path):
    cfg = tmp_path / "r.toml"
    cfg.write_text('preset = "tiny"\nsteps = 50\nbatch-size = 4\npoints_per_shape = 64\n'
                   f'data = "{tmp_path}"\nout = "run"\n')
    p = _params("pointcloud", "--config", cfg, "--steps", 7)
    assert p["steps"] == 7  # the command line wins
    assert p["preset"] == "tiny" and p["batch_size"] == 4 and p["points_per_shape"] == 64
    assert p["data_dir"] == tmp_path and p["out"] == Path("run")  # required options from a file
    assert p["lr"] == 1e-3 and p["seed"] == 0  # neither: the built-in default
    # the flag may come before --config too: it is still the command line's value
    assert _params("pointcloud", "--batch-size", 9, "--config", cfg)["batch_size"] == 9
    cfg.write_text("resume = true\n")
    assert _params("pointcloud", "--config", cfg, "--data", tmp_path, "--out", "r")["resume"]


@pytest.mark.parametrize("command, recipe", [("pointcloud", "pointflow.toml"),
                                             ("vocoder", "vocoder.toml")])
def test_shipped_recipes_fit_their_commands(command, recipe, tmp_path):
    path = ROOT / "recipes" / recipe
    p = _params(command, "--config", path, "--data", tmp_path, "--out", tmp_path / "run")
    text = path.read_text()
    assert f"gen train {command} --config recipes/{recipe}" in text  # the reproducing command
    assert p["preset"] == ("default" if command == "pointcloud" else "compact")
    assert p["steps"] > 1000


@pytest.mark.parametrize("content, message", [
    ("steps = 5\nwarmup = 3\n", "unknown option 'warmup' for this command; it takes "),
    ("steps = \n", "is not valid TOML"),
    ("[train]\nsteps = 5\n", "[train] is a table"),
    ('steps = "many"\n', "steps = 'many' is not valid ("),
    ('preset = "huge"\n', "preset = 'huge' is not valid ("),
])
def test_bad_recipes_are_one_line_errors(content, message, tmp_path, error_line):
    cfg = tmp_path / "r.toml"
    cfg.write_text(content)
    for command in ("pointcloud", "vocoder"):
        r = CliRunner().invoke(cli, ["train", command, "--config", str(cfg), "--data",
                                     str(tmp_path), "--out", str(tmp_path / "run")])
        line = error_line(r)
        assert message in line and str(cfg) in line
    assert not (tmp_path / "run").exists()


def test_missing_recipe_and_unknown_key_lists_options(tmp_path, error_line):
    line = error_line(CliRunner().invoke(cli, ["train", "vocoder", "--config",
                                                str(tmp_path / "no.toml")]))
    assert "no.toml does not exist" in line
    cfg = tmp_path / "r.toml"
    cfg.write_text("points-per-shape = 5\n")
    with pytest.raises(FlowsuiteError, match="it takes .*batch-size.*segment"):
        _params("vocoder", "--config", cfg)


def test_config_option_serves_any_command(tmp_path):
    from flowsuite.cli.common import config_option

    @click.command()
    @config_option
    @click.option("--width", default=1, type=int)
    @click.option("--name", default="a")
    def tool(width: int, name: str) -> None:
        click.echo(f"{width} {name}")

    cfg = tmp_path / "t.toml"
    cfg.write_text('width = 3\nname = "b"\n')
    assert CliRunner().invoke(tool, ["--config", str(cfg), "--name", "c"]).output == "3 c\n"
    assert CliRunner().invoke(tool, []).output == "1 a\n"


def test_the_mixture_prior_recipe_fits_gen_train_prior(tmp_path):
    path = ROOT / "recipes" / "prior-mixture.toml"
    p = _params("prior", "--config", path, "--data", tmp_path, "--out", tmp_path / "run",
                "--init", tmp_path / "prior")
    assert p["mixture"] == 8 and p["preset"] == "small" and p["steps"] > 1000
    text = path.read_text()
    assert "gen train prior --config recipes/prior.toml" in text  # the stage it starts from
    assert "--config recipes/prior-mixture.toml" in text and "--init runs/prior" in text
