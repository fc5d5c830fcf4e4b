"""``gen finetune pointcloud`` and ``gen finetune music``: refine a trained model on your own data.

Both run the training code path of their ``gen train`` command, starting from a trained model's
weights instead of from scratch, with defaults for a small set (a few dozen shapes, minutes of
audio): fewer steps, a lower learning rate and smaller batches.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Subset

from flowsuite.cli.common import (
    bf16_of,
    category_list,
    deadline_after,
    model_file,
    precision_option,
    resolve_device,
    run_warmup,
    seconds_left,
    stop_if_unfinished,
    time_limit_option,
)
from flowsuite.cli.main import finetune
from flowsuite.core.errors import FlowsuiteError

# Written into a fine-tuning run folder before training starts; a resumed run checks it.
RECORD = "finetune.json"
# The model frame of a model file without normalisation stats: coordinates as they are.
_IDENTITY = {"mean": [0.0, 0.0, 0.0], "std": 1.0}
# Shapes drawn per category for --replay generated.
_REPLAY_POOL = 64


class _Relabeled(Dataset):
    """A shape dataset whose category ids are mapped to the model's ids."""

    def __init__(self, dataset: Dataset, ids: list[int]):
        self.dataset, self.ids = dataset, ids

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        return {**item, "category": self.ids[item["category"]]}


def _source(from_path: Path | None, shipped: str) -> Path:
    """The model file to start from: ``--from`` (a run folder or a model file), else the shipped
    model ``shipped``."""
    from flowsuite.data.pretrained import shipped_path

    if from_path is not None:
        return model_file(from_path)
    try:
        return shipped_path(shipped)
    except FlowsuiteError:
        raise FlowsuiteError(f"no --from given, and this installation ships no {shipped} model; "
                             "give a trained model (a run folder or its model.safetensors) with "
                             "--from") from None


def _check_run_folder(out: Path, resume: bool) -> dict[str, Any] | None:
    """Refuses an ``--out`` that cannot hold this run; returns the record of the run to resume
    (``None`` for a new run)."""
    if out.exists() and not out.is_dir():
        raise FlowsuiteError(f"{out} is a file; give a folder for the fine-tuning run")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    if not resume:
        raise FlowsuiteError(f"{out} is not empty (it may hold a run); pass --resume to continue "
                             "the run in it or choose another output folder")
    record = out / RECORD
    if not record.is_file():
        raise FlowsuiteError(f"{out} holds no fine-tuning run (no {RECORD}); a run of "
                             "`gen train pointcloud` resumes with that command")
    try:
        return json.loads(record.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FlowsuiteError(f"{record} is unreadable ({e}); start a new run in another "
                             "folder") from None


class _GeneratedReplay(Dataset):
    """Rehearsal without the original data: shapes the model drew of its own categories before
    fine-tuning. ``pool`` is ``(C, K, P, 3)``, K shapes of P points for each of C categories (the
    model's ids ``ids``); the dataset has ``per_category`` items per category, each a random
    pool shape and a random ``points`` of its points, drawn from torch's generator (which the
    trainer seeds per step, so a resumed run sees the same items)."""

    def __init__(self, pool: Any, ids: list[int], per_category: int, points: int):
        self.pool, self.ids, self.per_category, self.points = pool, ids, per_category, points

    def __len__(self) -> int:
        return len(self.ids) * self.per_category

    def __getitem__(self, i: int) -> dict:
        import torch

        c = i // self.per_category
        shape = self.pool[c, int(torch.randint(self.pool.shape[1], ()))]
        pick = torch.randperm(shape.shape[0])[:self.points]
        return {"points": shape[pick].contiguous(), "category": self.ids[c], "index": i}


def _generated_replay(model, ids: list[int], per_category: int, points: int,
                      seed: int) -> Dataset:
    """A :class:`_GeneratedReplay` of ``_REPLAY_POOL`` shapes (twice ``points`` points each) per
    category id in ``ids``, sampled now from ``model``, in its own frame."""
    import torch

    from flowsuite.cli.pointcloud_cmds import _generate

    # Temperature 1 for the latent and the points: replay the model's own density, whatever
    # default `gen pointcloud` samples at.
    pool = torch.stack([_generate(model, c, _REPLAY_POOL, 2 * points, seed + 7919 * c, 1.0,
                                  point_temperature=1.0, data_coordinates=False) for c in ids])
    return _GeneratedReplay(pool, ids, per_category, points)


def _replay_set(replay: Path, known: list[str], stats: dict, per_category: int,
                points_per_shape: int, seed: int) -> tuple[Dataset, list[str]]:
    """Up to ``per_category`` training shapes (seeded choice) of each of the ``known``
    categories found in the folder ``replay``, normalised with the model's own ``stats``.
    Returns the shapes and the category names their ids index."""
    from flowsuite.cli.pointcloud_cmds import open_sets
    from flowsuite.data.shapes import scan_shapes

    if not replay.is_dir():
        raise FlowsuiteError(f"--replay {replay} is not a folder; give the model's training "
                             "data, 'generated' or 'none'")
    _, found = scan_shapes(replay, seed)
    names = [c for c in known if c in found and found[c]["train"]]
    if not names:
        raise FlowsuiteError(f"--replay {replay} holds none of the model's other categories "
                             f"({', '.join(known) or 'there are none'}); give the folder the "
                             "model was trained on, or use --replay generated")
    shapes, _ = open_sets(replay, names, points_per_shape, seed, stats=stats, with_val=False)
    labels = np.array([shapes.category_of(i) for i in range(len(shapes))])
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for c in shapes.categories:
        keep += sorted(rng.permutation(np.flatnonzero(labels == c))[:per_category].tolist())
    return Subset(shapes, keep), shapes.categories


# ---- gen finetune pointcloud ------------------------------------------------------------------

@finetune.command("pointcloud")
@click.option("--from", "from_path", default=None, type=click.Path(path_type=Path),
              help="The model to start from: a run folder or a model.safetensors "
                   "(default: the shipped pointflow model).")
@click.option("--data", "data_dir", required=True,
              type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Your shapes, one sub-folder per category (meshes or point clouds).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Run folder; the fine-tuned model ends up in OUT/model.safetensors.")
@click.option("--categories", default=None,
              help="Comma-separated sub-folders of --data to use (default: all).")
@click.option("--units", default="match", show_default=True, type=click.Choice(["match", "model"]),
              help="How your shapes enter the model's coordinate frame. match: your set's overall "
                   "centre and scale are mapped onto those of the model's training data (one "
                   "shift and one scale for the whole set, so relative sizes and positions "
                   "within it are kept); use it for shapes in any units (mm, m, ...). model: "
                   "your files are already in the units of the model's training data (e.g. "
                   "more `gen data shapes` output) and are normalised with the model's own "
                   "statistics. Either way the model keeps its original statistics, so all "
                   "categories, old and new, are generated in the original data's coordinates.")
@click.option("--replay", default="generated", show_default=True,
              help="Rehearse the model's categories that --data does not hold, so they are not "
                   "forgotten: 'generated' mixes in shapes the model draws of them before "
                   "fine-tuning; a folder (the model's original training data, e.g. a `gen data "
                   "shapes` folder) mixes in its shapes of them; 'none' trains on --data only.")
@click.option("--replay-per-category", default=None, type=click.IntRange(1),
              help="Replayed shapes per category and epoch (default: as many as the largest "
                   "category in --data has).")
@click.option("--steps", default=2000, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--points-per-shape", default=2048, show_default=True, type=click.IntRange(1),
              help="Points drawn from each shape per training step.")
@click.option("--lr", default=2e-4, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate; lower than training's so the old categories are not "
                   "overwritten at once.")
@click.option("--device", default="auto", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue the run in --out where it stopped.")
@click.option("--val-every", default=None, type=click.IntRange(1), hidden=True)
@click.option("--ckpt-every", default=None, type=click.IntRange(1), hidden=True)
@precision_option
@time_limit_option
def finetune_pointcloud(from_path: Path | None, data_dir: Path, out: Path,
                        categories: str | None, units: str, replay: str,
                        replay_per_category: int | None, steps: int, batch_size: int,
                        points_per_shape: int, lr: float, device: str, seed: int, resume: bool,
                        val_every: int | None, ckpt_every: int | None, precision: str,
                        time_limit: float | None) -> None:
    """Fine-tune a point-cloud model on your own shapes.

    Categories of --data that the model knows are refined; sub-folders with other names become
    new categories, which start from the prior of an average category. The defaults suit a few
    dozen shapes per category.
    """
    from flowsuite.cli.pointcloud_cmds import _load, finish_model, fit, open_sets
    from flowsuite.data.shapes import global_stats

    dev = resolve_device(device)
    record = _check_run_folder(out, resume)
    source = _source(from_path, "pointflow")
    model = _load(source, dev)
    old_cats = model.categories
    frame = model.stats or _IDENTITY
    if record is not None and record.get("units") != units:
        raise FlowsuiteError(f"{out} was fine-tuned with --units {record.get('units')}; resume "
                             "it with the same --units")
    if units == "model":
        data_stats = frame
    else:  # the data's own statistics, fixed for the life of the run
        data_stats = record["data_stats"] if record is not None else None
    train_set, val_set = open_sets(data_dir, category_list(categories), points_per_shape, seed,
                                   stats=data_stats)
    if units == "model":
        spread = global_stats([train_set.cloud(i) for i in range(len(train_set))])["std"]
        if not 0.2 < spread < 5:
            click.echo(f"warning: in the model's frame your shapes spread {spread:.3g} times as "
                       "far as its training data; if they are in other units, use --units "
                       "match", err=True)
    names = train_set.categories
    new = [c for c in names if c not in old_cats]
    all_cats = old_cats + new
    if record is not None and record.get("categories") != all_cats:
        raise FlowsuiteError(f"{out} fine-tunes the categories {', '.join(record['categories'])}"
                             f", but {source} with {data_dir} gives {', '.join(all_cats)}; "
                             "resume with the same model and data or start a new run")
    if new:
        model.add_categories(len(new))
    ids = [all_cats.index(c) for c in names]
    parts: list[Dataset] = [_Relabeled(train_set, ids)]
    absent = [c for c in old_cats if c not in names]
    per_category = replay_per_category or max(
        Counter(map(train_set.category_of, range(len(train_set)))).values())
    replayed: list[str] = []
    if replay == "generated" and absent:
        replayed = absent
        parts.append(_generated_replay(model, [all_cats.index(c) for c in absent], per_category,
                                       points_per_shape, seed))
    elif replay not in ("generated", "none"):
        shapes, replayed = _replay_set(Path(replay), absent, frame, per_category,
                                       points_per_shape, seed)
        parts.append(_Relabeled(shapes, [all_cats.index(c) for c in replayed]))
    data = ConcatDataset(parts) if len(parts) > 1 else parts[0]
    val = _Relabeled(val_set, ids) if val_set is not None else None

    refined = [c for c in names if c in old_cats]
    n_val = len(val_set) if val_set is not None else 0
    kind = "generated " if replay == "generated" else ""
    rehearsal = (f"; replaying {len(data) - len(train_set)} {kind}shapes of "
                 f"{', '.join(replayed)}" if replayed else "")
    click.echo(f"fine-tuning {source} on {len(train_set)} shapes ({n_val} for validation): "
               f"refining {', '.join(refined) or 'no known category'}; "
               f"new: {', '.join(new) or 'none'}{rehearsal}; {dev}")
    info = {"from": str(source), "categories": all_cats, "new_categories": new, "units": units,
            "data_stats": train_set.stats, "stats": frame, "replay": replay,
            "replayed_categories": replayed}
    if record is None:
        from flowsuite.core.io import atomic_path

        with atomic_path(out / RECORD) as tmp:
            tmp.write_text(json.dumps(info, indent=2) + "\n")
    summary = fit(model, data, val, out, steps=steps, batch_size=batch_size, lr=lr, device=dev,
                  seed=seed, resume=resume, val_every=val_every, ckpt_every=ckpt_every,
                  time_limit=time_limit, bf16=bf16_of(precision))
    final = finish_model(out, all_cats, frame, {"finetune": json.dumps(info)})
    loss = f", final loss {summary.final_loss:.4g}" if summary.final_loss is not None else ""
    click.echo(f"fine-tuned to step {summary.step}{loss}; model in {final}")


# ---- gen finetune music -----------------------------------------------------------------------

def _finetune_vocoder(from_path: Path | None, data_dir: Path, out: Path, device: str, *,
                      steps: int, batch_size: int, segment: int, lr: float | None, seed: int,
                      resume: bool, deadline: float | None = None, bf16: bool | None = None,
                      **_: Any) -> Path:
    """Refines a WaveGlow (``--from``, or the shipped one) on the audio in ``data_dir``."""
    from flowsuite.cli.vocoder_cmds import _load, fit_vocoder

    model = _load(_source(from_path, "waveglow"), resolve_device(device))
    return fit_vocoder(model, data_dir, out, device=device, steps=steps, batch_size=batch_size,
                       segment=segment, lr=5e-5 if lr is None else lr, seed=seed, resume=resume,
                       time_limit=seconds_left(deadline), bf16=bf16)


def _finetune_prior(from_path: Path | None, data_dir: Path, out: Path, device: str, *,
                    steps: int, batch_size: int, segment_frames: int, lr: float | None,
                    seed: int, resume: bool, deadline: float | None = None,
                    bf16: bool | None = None, **_: Any) -> Path:
    """Refines a mel prior (``--from``, or the shipped one) on the audio in ``data_dir``: it keeps
    its own band statistics and styles; unlabelled audio trains its "no style" context."""
    from flowsuite.core.checkpoint import load_model
    from flowsuite.core.trainer import TrainConfig
    from flowsuite.data.music import MANIFEST
    from flowsuite.musicflow.prior_train import MelCorpus, train_prior

    dev = resolve_device(device)
    model = load_model(_source(from_path, "mel-prior"), expected="mel-prior", map_location=dev)
    is_set = (data_dir / MANIFEST).is_file()
    corpus = MelCorpus.from_folder(data_dir, split="train" if is_set else None,
                                   min_frames=segment_frames, progress=True, keys=model.keys,
                                   beats=model.beats)
    every = min(500, steps)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=2e-4 if lr is None else lr,
                         seed=seed, device=dev, warmup=run_warmup(out, steps, resume, cap=200),
                         val_every=every, ckpt_every=every, bf16=bf16)
    summary = train_prior(model, corpus, out, config, segment_frames=segment_frames,
                          resume=resume, time_limit=seconds_left(deadline))
    stop_if_unfinished(summary, out)
    return summary.model_path


def _finetune_both(from_path: Path | None, data_dir: Path, out: Path, device: str,
                   **train: Any) -> Path:
    """Refines the prior into ``out/prior`` and the vocoder into ``out/vocoder``; ``--from`` is a
    folder holding ``prior`` and ``vocoder`` (run folders or model files), e.g. an earlier
    ``--part both`` run, or absent for the shipped models."""
    sources: dict[str, Path | None] = {"prior": None, "vocoder": None}
    if from_path is not None:
        if not from_path.is_dir():
            raise FlowsuiteError(f"--from {from_path}: with --part both give a folder holding "
                                 "prior/ and vocoder/ (e.g. an earlier --part both run)")
        for name in sources:
            for candidate in (from_path / name, from_path / f"{name}.safetensors"):
                if candidate.exists():
                    sources[name] = candidate
                    break
            else:
                raise FlowsuiteError(f"--from {from_path} holds no {name}/ run or "
                                     f"{name}.safetensors; --part both needs both")
    _finetune_prior(sources["prior"], data_dir, out / "prior", device, **train)
    _finetune_vocoder(sources["vocoder"], data_dir, out / "vocoder", device, **train)
    return out


# The parts of the music model that `gen finetune music --part` refines, by name. Each takes
# --from (None: the shipped model, found with `_source`), the data folder, the run folder,
# --device and the training settings as keywords (steps, batch_size, segment, segment_frames,
# lr (None: the part's default), seed, resume, deadline (a time.monotonic() reading at which
# training stops with a checkpoint, or None), bf16 (TrainConfig.bf16)), and returns the
# fine-tuned model's path.
# --part offers exactly these names.
MUSIC_PARTS: dict[str, Callable[..., Path]] = {
    "vocoder": _finetune_vocoder, "prior": _finetune_prior, "both": _finetune_both}


@finetune.command("music")
@click.option("--part", required=True, type=click.Choice(list(MUSIC_PARTS)),
              help="Which model to refine: vocoder (WaveGlow, mel to audio), prior (the mel "
                   "prior of gen music), or both (into OUT/prior and OUT/vocoder).")
@click.option("--from", "from_path", default=None, type=click.Path(path_type=Path),
              help="The model to start from: a run folder or a model.safetensors (with --part "
                   "both: a folder holding prior/ and vocoder/); default: the shipped model(s).")
@click.option("--data", "data_dir", required=True,
              type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Folder of your audio (.wav .flac .ogg .mp3, any rate and channel count).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Run folder; the fine-tuned model ends up in OUT/model.safetensors "
                   "(--part both: OUT/prior/ and OUT/vocoder/).")
@click.option("--steps", default=2000, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--segment", default=16384, show_default=True, type=click.IntRange(1),
              help="Vocoder: samples per training segment (a multiple of the 256-sample hop).")
@click.option("--segment-frames", default=128, show_default=True, type=click.IntRange(2),
              help="Prior: mel frames per training crop (a multiple of the prior's step).")
@click.option("--lr", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate [default: 5e-5 for the vocoder, 2e-4 for the prior: "
                   "a fraction of training's, so the model is refined rather than retrained].")
@click.option("--device", default="auto", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue the run in --out where it stopped.")
@precision_option
@time_limit_option
def finetune_music(part: str, from_path: Path | None, data_dir: Path, out_dir: Path, steps: int,
                   batch_size: int, segment: int, segment_frames: int, lr: float | None,
                   device: str, seed: int, resume: bool, precision: str,
                   time_limit: float | None) -> None:
    """Fine-tune a part of the music model on your own audio."""
    # One deadline for the whole command: with --part both the parts share the time.
    path = MUSIC_PARTS[part](from_path, data_dir, out_dir, device, steps=steps,
                             batch_size=batch_size, segment=segment,
                             segment_frames=segment_frames, lr=lr, seed=seed, resume=resume,
                             deadline=deadline_after(time_limit), bf16=bf16_of(precision))
    click.echo(f"fine-tuned the {part} for {steps} steps; model: {path}")
