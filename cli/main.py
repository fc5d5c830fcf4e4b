"""The ``gen`` application: one click group; each part of flowsuite adds its commands here."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

import click

from flowsuite.core.errors import FlowsuiteError


def _version() -> str:
    try:
        return version("flowsuite")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


class _Group(click.Group):
    """A click group that turns errors a user can cause into one line and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FlowsuiteError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except click.UsageError as e:
            # A bad option of a sub-command (a value out of range, a missing or unknown
            # option): the same one line as other user errors, with where to look.
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            click.echo(f"error: {e.format_message()} (see '{where} --help')", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), prog_name="flowsuite")
def cli() -> None:
    """flowsuite: flow-based generative models of point clouds and music."""


@cli.group()
def data() -> None:
    """Make training data (procedural shapes, rendered music)."""


@cli.group()
def train() -> None:
    """Train a model from scratch on a folder of data."""


@cli.group()
def finetune() -> None:
    """Fine-tune a trained model on your own data."""


@cli.group(name="eval")
def eval_() -> None:
    """Measure a trained model on held-out data."""


def main() -> None:
    cli(prog_name="gen")


# Each part attaches its commands to the groups above.
from flowsuite.cli import (  # noqa: E402,F401,I001
    data_cmds, data_music_cmds, finetune_cmds, models_cmds, music_cmds, pointcloud_cmds,
    vocoder_cmds,
)

if __name__ == "__main__":
    # Under `python -m` this file runs as __main__; the command modules registered themselves on
    # the group of the imported flowsuite.cli.main, so run that one.
    from flowsuite.cli.main import main as _main

    sys.exit(_main())
