"""``gen models``: the trained models shipped inside the package and their model cards."""

from __future__ import annotations

import click

from flowsuite.cli.main import cli
from flowsuite.core.errors import FlowsuiteError

# Card fields shown in the list, in this order (the rest is in `gen models show NAME`).
_SHOWN = ("data", "hardware", "wall_time", "steps")


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@cli.group("models", invoke_without_command=True)
@click.pass_context
def models(ctx: click.Context) -> None:
    """List the trained models shipped with flowsuite (`gen models show NAME`: a model card)."""
    if ctx.invoked_subcommand is not None:
        return
    from flowsuite.core.checkpoint import read_metadata
    from flowsuite.data import pretrained as pt

    names = pt.shipped_names()
    if not names:
        click.echo(f"no trained models are shipped with this installation ({pt.MODELS_DIR} has "
                   "none); train your own and pass them with --model:")
        for name, hint in pt.TRAIN_HINTS.items():
            click.echo(f"  {name:<10} {hint}")
        return
    total = 0
    for name in names:
        path = pt.MODELS_DIR / f"{name}.safetensors"
        size = path.stat().st_size
        total += size
        info = read_metadata(path)
        click.echo(f"{name:<10} {pt.SHIPPED[name]}")
        try:
            card = pt.read_card(path.with_suffix(".md"))
        except FlowsuiteError as e:
            click.echo(f"{'':<10} file {_megabytes(size)} ({info.dtype or 'float32'}); no usable "
                       f"card: {e}")
            continue
        try:
            params = f"{card.parameter_count():,}"
        except FlowsuiteError:
            params = card.fields.get("parameters") or "?"
        click.echo(f"{'':<10} file {_megabytes(size)} ({info.dtype or 'float32'}), "
                   f"parameters {params}")
        for key in _SHOWN:
            if card.fields.get(key):
                click.echo(f"{'':<10} {key}: {card.fields[key]}")
        for key, value in card.metrics.items():
            click.echo(f"{'':<10} metric {key}: {value}")
    missing = [n for n in pt.SHIPPED if n not in names]
    for name in missing:
        click.echo(f"{name:<10} not shipped; train one with {pt.TRAIN_HINTS[name]}")
    click.echo(f"{len(names)} model(s), {_megabytes(total)} in all; `gen models show NAME` "
               "prints a model's card")


@models.command("show")
@click.argument("name")
def show(name: str) -> None:
    """Print the model card of the shipped model NAME."""
    from flowsuite.data.pretrained import card_path

    path = card_path(name)
    try:
        click.echo(path.read_text(encoding="utf-8"), nl=False)
    except FileNotFoundError:
        raise FlowsuiteError(f"the shipped {name} model has no model card ({path} is "
                             "missing); the installation is incomplete") from None
