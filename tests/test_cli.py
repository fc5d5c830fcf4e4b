"""The gen application: help, version, and errors a user causes end in one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from flowsuite.cli.main import cli
from flowsuite.core.errors import FlowsuiteError


def test_help_lists_the_command_groups():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("data", "train", "eval", "pointcloud", "vocode"):
        assert name in result.output


def test_the_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "flowsuite.cli.main", "--version"],
                         capture_output=True, text=True, check=True)
    assert "flowsuite" in out.stdout
    out = subprocess.run([sys.executable, "-m", "flowsuite.cli.main", "data", "--help"],
                         capture_output=True, text=True, check=True)
    assert "shapes" in out.stdout and "music" in out.stdout


def test_a_user_error_is_one_line_and_exit_2():
    @cli.command("fail-for-test", hidden=True)
    def fail() -> None:
        raise FlowsuiteError("input.ply is empty; give a file with points")

    try:
        result = CliRunner().invoke(cli, ["fail-for-test"])
        assert result.exit_code == 2
        assert result.output.strip() == "error: input.ply is empty; give a file with points"
        assert "Traceback" not in result.output
    finally:
        cli.commands.pop("fail-for-test")


def test_an_unknown_flag_is_a_usage_error_not_a_traceback():
    result = CliRunner().invoke(cli, ["--no-such-flag"])
    assert result.exit_code == 2
    assert "No such option" in result.output


def test_a_bad_option_of_a_command_is_one_error_line(error_line):
    line = error_line(CliRunner().invoke(cli, ["eval", "pointcloud", "--data", ".", "--points",
                                               "0"]))
    assert "'--points': 0 is not in the range x>=1" in line
    assert "'gen eval pointcloud --help'" in line or "eval pointcloud --help" in line
    assert "Missing option '--data'" in error_line(CliRunner().invoke(cli, ["eval",
                                                                            "pointcloud"]))
    assert "No such command 'nonesuch'" in error_line(CliRunner().invoke(cli, ["nonesuch"]))



def test_a_model_is_a_file_or_a_run_folder(tmp_path):
    import pytest

    from flowsuite.cli.common import model_file

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FlowsuiteError, match="does not exist"):
        model_file(run)
    (run / "model.safetensors").write_bytes(b"x")
    assert model_file(run) == run / "model.safetensors"
    assert model_file(run / "model.safetensors") == run / "model.safetensors"
