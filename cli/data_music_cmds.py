"""``gen data music``: render the music21 corpus to a training set of audio."""

from __future__ import annotations

from pathlib import Path

import click

from flowsuite.cli.main import data
from flowsuite.core.errors import FlowsuiteError


@data.command("music")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for the set (audio/, manifest.jsonl, dataset.json).")
@click.option("--hours", default=1.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Total duration to render; the last piece may overshoot it.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Same seed, same files (byte for byte).")
@click.option("--soundfont", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A General MIDI .sf2 file [default: TimGM6mb from pretty_midi].")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Processes rendering in parallel.")
@click.option("--format", "fmt", default="wav", show_default=True,
              type=click.Choice(["wav", "flac"]), help="32-bit float WAV or 24-bit FLAC.")
@click.option("--styles", default="chorale,folk,quartet", show_default=True,
              help="Comma-separated styles to draw from.")
@click.option("--max-piece-seconds", default=180.0, show_default=True,
              type=click.FloatRange(min=2.0), help="Pieces are cut (with a fade) at this length.")
@click.option("--force", is_flag=True, help="Replace an existing music set in --out.")
def music(out: Path, hours: float, seed: int, soundfont: Path | None, workers: int, fmt: str,
          styles: str, max_piece_seconds: float, force: bool) -> None:
    """Render Bach chorales, folk tunes and string quartets from the music21 corpus to 22050 Hz
    mono audio with sampled General MIDI instruments (FluidSynth), varied in instrumentation,
    tempo and key, with a manifest and a train/val/test split by work."""
    from flowsuite.data.music import render_music_set

    chosen = [s.strip() for s in styles.split(",") if s.strip()]
    if not chosen:
        raise FlowsuiteError("--styles is empty; give e.g. chorale,folk,quartet")
    records = render_music_set(out, hours=hours, seed=seed, soundfont=soundfont,
                               workers=workers, fmt=fmt, styles=chosen,
                               max_piece_seconds=max_piece_seconds, force=force)
    seconds = sum(r["duration"] for r in records)
    splits = {s: sum(1 for r in records if r["split"] == s) for s in ("train", "val", "test")}
    click.echo(f"wrote {len(records)} pieces, {seconds / 60:.1f} min, to {out} "
               f"(train {splits['train']}, val {splits['val']}, test {splits['test']} files)")
