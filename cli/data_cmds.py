"""``gen data shapes`` (write the procedural shape set) and ``gen data inspect`` (check a folder
of shapes the way training will read it)."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from flowsuite.cli.common import category_list
from flowsuite.cli.main import data


@data.command("shapes")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder to write (<category>/{train,val,test}/<id>.npy).")
@click.option("--categories", default=None,
              help="Comma-separated categories (default: airplane,car,chair,table,lamp,sofa).")
@click.option("--per-category", default=1000, show_default=True, type=click.IntRange(1),
              help="Shapes per category, split 80/10/10 into train/val/test.")
@click.option("--points", default=15000, show_default=True, type=click.IntRange(1),
              help="Points per shape.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the whole set.")
@click.option("--workers", default=None, type=click.IntRange(1),
              help="Worker processes (default: the CPU count); the output does not depend on it.")
@click.option("--preview", default=None, type=click.Path(path_type=Path),
              help="Also write a PNG grid of the first shapes of each category.")
@click.option("--force", is_flag=True, help="Replace an earlier shape set in --out.")
def shapes_cmd(out: Path, categories: str | None, per_category: int, points: int, seed: int,
               workers: int | None, preview: Path | None, force: bool) -> None:
    """Generate the procedural shape set (the default training data of pointflow)."""
    from flowsuite.core.io import check_writable
    from flowsuite.data.generate import write_shape_set

    if preview is not None:
        check_writable(preview, force)
    cats = category_list(categories)
    write_shape_set(out, cats, per_category, points, seed, workers, force, progress=True)
    click.echo(f"wrote {per_category} shapes x {len(cats) if cats else 6} categories to {out}")
    if preview is not None:
        _preview(out, preview, force)
        click.echo(f"wrote {preview}")


def _preview(root: Path, png: Path, force: bool, per_row: int = 6) -> None:
    import numpy as np

    from flowsuite.data.preview import render_grid

    rows, labels = [], []
    for cat in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted((cat / "train").glob("*.npy"))[:per_row]
        if files:
            rows.append([np.load(f)[::4] for f in files])
            labels.append(cat.name)
    render_grid(rows, png, row_labels=labels, force=force)


@data.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--split", default="train", show_default=True,
              type=click.Choice(["train", "val", "test"]))
@click.option("--categories", default=None, help="Comma-separated categories to keep.")
@click.option("--normalize", default="global", show_default=True,
              type=click.Choice(["unit_box", "unit_sphere", "global", "none"]))
def inspect_cmd(path: Path, split: str, categories: str | None, normalize: str) -> None:
    """Read a folder of shapes as training would, and report what was found and skipped."""
    from flowsuite.data.shapes import open_shapes

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = open_shapes(path, split=split, categories=category_list(categories),
                         normalize=normalize, progress=True)
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    counts = {c: 0 for c in ds.categories}
    for i in range(len(ds)):
        counts[ds.category_of(i)] += 1
    click.echo(f"{path}: layout {ds.format}, {len(ds)} {split} shapes, "
               f"normalization {ds.normalization} ({ds.normalization_doc})")
    for c, n in counts.items():
        click.echo(f"  {c}: {n}")
    if ds.skipped:
        click.echo(f"  skipped: {len(ds.skipped)} files (see the warnings above)")
