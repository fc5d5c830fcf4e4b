"""Point-cloud commands: ``gen train pointcloud``, ``gen pointcloud`` and ``gen eval pointcloud``.

A trained model file is self-contained: besides the weights, its metadata holds the category
names (``categories``, a JSON list in id order) and the data's global normalisation
(``stats``, JSON ``{"mean": [3], "std": s}``), so sampling gives clouds in the data's coordinates.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import click

from flowsuite.cli.common import (
    bf16_of,
    category_list,
    config_option,
    precision_option,
    resolve_device,
    run_warmup,
    stop_if_unfinished,
    time_limit_option,
)
from flowsuite.cli.main import cli, eval_, train
from flowsuite.core.errors import FlowsuiteError

MODEL_NAME = "pointflow"

# Model sizes; "tiny" is for tests and smoke runs (seconds on a CPU), "default" is the paper-size
# model of PointFlowModel's defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "small": {"latent_dim": 64, "encoder_width": 128, "point_steps": 6,
              "point_hidden": [64, 64], "latent_steps": 4, "latent_hidden": [128, 128]},
    "tiny": {"latent_dim": 8, "encoder_width": 16, "point_steps": 2, "point_hidden": [16],
             "latent_steps": 1, "latent_hidden": [16], "category_dim": 4},
}


# ---- gen train pointcloud ---------------------------------------------------------------------

@train.command("pointcloud")
@config_option
@click.option("--data", "data_dir", required=True,
              type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Folder of shapes (e.g. written by `gen data shapes`).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Run folder; the trained model ends up in OUT/model.safetensors.")
@click.option("--categories", default=None, help="Comma-separated categories (default: all).")
@click.option("--steps", default=20000, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--points-per-shape", default=2048, show_default=True, type=click.IntRange(1),
              help="Points drawn from each shape per training step.")
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--device", default="auto", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue the run in --out where it stopped.")
@click.option("--latent-dim", default=None, type=click.IntRange(2),
              help="Size of the shape latent (default: the preset's).")
@click.option("--preset", default="default", show_default=True, type=click.Choice(list(PRESETS)),
              help="Model size.")
@click.option("--point-mixture", default=None, type=int,
              help="Components of the point flow's base distribution, a mixture whose weights, "
                   "means and scales depend on the shape latent (0: one standard normal; "
                   "default: the preset's, or --init's).")
@click.option("--softflow-noise", default=None,
              type=click.FloatRange(min=0, max=1),
              help="SoftFlow: each training shape gets Gaussian noise of a standard deviation "
                   "drawn from [0, this] (normalised units), and the point flow is told the "
                   "level; 0 trains on the clean points (default: the preset's 0.05, or "
                   "--init's).")
@click.option("--point-steps", default=None, type=click.IntRange(min=1),
              help="Couplings in the point flow (default: the preset's, or --init's); more than "
                   "--init's appends couplings that start as the identity.")
@click.option("--point-splines", default=None, type=click.IntRange(min=0),
              help="Rational-quadratic spline couplings after the point flow's affine ones "
                   "(default: the preset's 0, or --init's); more than --init's appends them "
                   "from the identity.")
@click.option("--init", "init_path", default=None, type=click.Path(path_type=Path),
              help="Start from the weights of a trained model (run folder or model file) on the "
                   "same categories; its normalisation is kept and new parts (--point-mixture, "
                   "--point-steps, --point-splines) start fresh. To add categories, use `gen "
                   "finetune pointcloud`.")
@click.option("--val-every", default=None, type=click.IntRange(1), hidden=True)
@click.option("--ckpt-every", default=None, type=click.IntRange(1), hidden=True)
@precision_option
@time_limit_option
def train_pointcloud(data_dir: Path, out: Path, categories: str | None, steps: int,
                     batch_size: int, points_per_shape: int, lr: float, device: str, seed: int,
                     resume: bool, latent_dim: int | None, preset: str, point_mixture: int | None,
                     softflow_noise: float | None, point_steps: int | None,
                     point_splines: int | None,
                     init_path: Path | None, val_every: int | None,
                     ckpt_every: int | None, precision: str,
                     time_limit: float | None) -> None:
    """Train a point-cloud model (PointFlow) on a folder of shapes."""
    from flowsuite.pointflow.model import PointFlowModel

    if point_mixture is not None and (point_mixture < 0 or point_mixture == 1):
        raise FlowsuiteError(f"--point-mixture must be 0 or at least 2 components, not "
                             f"{point_mixture}")
    dev = resolve_device(device)
    extra: dict[str, Any] = {} if point_mixture is None else {"point_mixture": point_mixture}
    if softflow_noise is not None:
        extra["softflow_max_noise"] = softflow_noise
    if point_steps is not None:
        extra["point_steps"] = point_steps
    if point_splines is not None:
        extra["point_splines"] = point_splines
    if init_path is None:
        train_set, val_set = open_sets(data_dir, category_list(categories), points_per_shape,
                                       seed)
        kwargs = {**PRESETS[preset], **extra}
        if latent_dim is not None:
            kwargs["latent_dim"] = latent_dim
        model = PointFlowModel(num_categories=len(train_set.categories), **kwargs)
    else:
        if latent_dim is not None or preset != "default":
            raise FlowsuiteError("--init takes the model's size from the trained model; leave "
                                 "out --preset and --latent-dim")
        source = _load(init_path, dev)
        known = source.categories
        train_set, val_set = open_sets(data_dir, category_list(categories) or known,
                                       points_per_shape, seed, stats=source.stats)
        if train_set.categories != known:
            raise FlowsuiteError(f"{init_path} was trained on {', '.join(known)}, the data has "
                                 f"{', '.join(train_set.categories)}; --init needs the same "
                                 "categories (new ones: gen finetune pointcloud)")
        model = PointFlowModel.from_trained(source, **extra).train()
    click.echo(f"training on {len(train_set)} shapes of {', '.join(train_set.categories)} "
               f"({len(val_set) if val_set is not None else 0} for validation), {dev}")
    summary = fit(model, train_set, val_set, out, steps=steps, batch_size=batch_size, lr=lr,
                  device=dev, seed=seed, resume=resume, val_every=val_every,
                  ckpt_every=ckpt_every, time_limit=time_limit, bf16=bf16_of(precision))
    final = finish_model(out, train_set.categories, train_set.stats)
    loss = f", final loss {summary.final_loss:.4g}" if summary.final_loss is not None else ""
    click.echo(f"trained to step {summary.step}{loss}; model in {final}")


# ---- the training code path shared by `gen train` and `gen finetune pointcloud` ---------------

def open_sets(data_dir: Path, categories: list[str] | None, points_per_shape: int, seed: int,
              stats: dict | None = None, with_val: bool = True):
    """The train split and the val split (``None`` when there is none, or without
    ``with_val``) of a shape folder, both with the global normalisation: ``stats`` when given,
    else the train split's own. Skipped files are reported as warnings on stderr."""
    from flowsuite.data.shapes import ShapeFileWarning, open_shapes

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ShapeFileWarning)
        train_set = open_shapes(data_dir, "train", categories, "global", points_per_shape,
                                seed=seed, stats=stats)
        val_set = None  # without validation shapes, training runs without validation
        if with_val:
            try:
                val_set = open_shapes(data_dir, "val", train_set.categories, "global",
                                      points_per_shape, seed=seed, stats=train_set.stats)
            except FlowsuiteError:
                pass
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    return train_set, val_set


def fit(model, train_set, val_set, out: Path, *, steps: int, batch_size: int, lr: float,
        device: str, seed: int, resume: bool, val_every: int | None = None,
        ckpt_every: int | None = None, time_limit: float | None = None,
        bf16: bool | None = None):
    """Trains ``model`` (a fresh one, or a loaded one to fine-tune) into the run folder ``out``
    with the trainer's schedule; returns the trainer's ``FitSummary``. A run stopped by
    ``time_limit`` (seconds) ends the command here with one line and exit status 3. ``bf16``:
    ``TrainConfig.bf16`` (``None``: bf16 autocast on CUDA only)."""
    from flowsuite.core.trainer import TrainConfig, Trainer

    config = TrainConfig(steps=steps, batch_size=min(batch_size, len(train_set)), lr=lr,
                         warmup=run_warmup(out, steps, resume),
                         val_every=val_every or min(500, steps),
                         ckpt_every=ckpt_every or min(500, steps), log_every=min(50, steps),
                         seed=seed, device=device, bf16=bf16)
    summary = Trainer(model, train_set, config, out_dir=out, val_set=val_set).fit(
        resume=resume, time_limit=time_limit)
    stop_if_unfinished(summary, out)
    return summary


def finish_model(out: Path, categories: list[str], stats: dict | None,
                 extra: dict[str, str] | None = None) -> Path:
    """Makes the run's final model file self-contained: the category names (id order), the
    normalisation stats and ``extra`` go into its metadata. Returns its path."""
    from flowsuite.core.checkpoint import load_model, read_metadata, save_model

    final = out / "model.safetensors"
    meta = dict(read_metadata(final).user)
    meta["categories"] = json.dumps(categories)
    meta["stats"] = json.dumps(stats)
    meta.update(extra or {})
    save_model(load_model(final, expected=MODEL_NAME), final, metadata=meta, force=True)
    return final


# ---- loading a trained model ------------------------------------------------------------------

def _load(model_path: Path | None, device: str):
    """The trained model (its category names in ``model.categories``, its normalisation in
    ``model.stats``); the shipped model when ``model_path`` is None."""
    from flowsuite.pointflow.model import PointFlowModel

    model = PointFlowModel.from_pretrained(model_path, map_location=resolve_device(device))
    if model.stats is None:
        click.echo(f"note: {model_path or 'the model'} stores no normalisation statistics; the "
                   "clouds stay in the model's normalised coordinates", err=True)
    return model


def _point_t(value: float | None) -> float:
    """``--point-temperature``'s value, or the model's default when it was not given."""
    from flowsuite.pointflow.model import DEFAULT_POINT_TEMPERATURE

    if value is None:
        return DEFAULT_POINT_TEMPERATURE
    if not (math.isfinite(value) and value >= 0):
        raise FlowsuiteError(f"--point-temperature must be a finite number >= 0, got {value}")
    return value


def _check_outlier_std(value: float | None) -> None:
    """Refuses a bad ``--drop-outliers`` before anything is loaded, with the model's check
    (``None``: keep every point)."""
    from flowsuite.pointflow.model import PointFlowModel

    PointFlowModel._outlier_std(value, "--drop-outliers")


_DROP_OUTLIERS_HELP = ("Drop stray points: draw 25% more points and drop those whose mean "
                       "distance to their 16 nearest neighbours is more than this many standard "
                       "deviations above the cloud's mean (3 drops about 1%: it helps the shipped "
                       "model's cars, not the other categories, see BENCHMARKS.md); default: keep "
                       "every point.")

_POINT_TEMPERATURE_HELP = ("Scale of each point's base noise (lower: points nearer the "
                           "surface, too low and they bunch); default: the model's "
                           "DEFAULT_POINT_TEMPERATURE")


def _generate(model, category: int | str, count: int, points: int, seed: int,
              temperature: float, batch: int = 16, point_temperature: float | None = None,
              data_coordinates: bool = True, outlier_std: float | None = None):
    """``(count, points, 3)`` clouds on the CPU, in the data's coordinates (the model's with
    ``data_coordinates=False``).

    The first batch is ``model.sample(..., seed=seed)``, so up to ``batch`` clouds are what the
    API gives for that seed; later batches draw with seeds derived from ``(seed, k)``, so two
    seeds share no cloud (with ``seed + k`` they did: seeds 0 and 1 shared all but one batch).
    """
    import torch

    from flowsuite.core.rng import derive_seed

    parts = []
    with torch.no_grad():
        for k, start in enumerate(range(0, count, batch)):
            n = min(batch, count - start)
            batch_seed = seed if k == 0 else derive_seed(seed, "pointcloud batch", k)
            parts.append(model.sample(category, n, points, seed=batch_seed,
                                      temperature=temperature,
                                      point_temperature=_point_t(point_temperature),
                                      outlier_std=outlier_std).cpu())
    clouds = torch.cat(parts)
    return model.denormalize(clouds) if data_coordinates else clouds


# ---- gen pointcloud ---------------------------------------------------------------------------

@cli.command("pointcloud")
@click.option("--model", "model_path", default=None, type=click.Path(path_type=Path),
              help="A trained model (a `gen train pointcloud` run or its model.safetensors; "
                   "default: the shipped one).")
@click.option("--category", default=None, help="Category name to generate, e.g. chair.")
@click.option("--from", "from_path", default=None, type=click.Path(path_type=Path),
              help="Encode this cloud or mesh and resample it (reconstruction, upsampling).")
@click.option("--interpolate", nargs=2, default=None, type=click.Path(path_type=Path),
              help="Two clouds or meshes: write the shapes along the latent path between them.")
@click.option("--steps", default=8, show_default=True, type=int,
              help="Shapes along the path, with --interpolate.")
@click.option("--count", default=1, show_default=True, type=int, help="Shapes to generate.")
@click.option("--points", default=2048, show_default=True, type=int, help="Points per shape.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--temperature", default=1.0, show_default=True, type=float,
              help="Scale of the latent noise (lower: more typical shapes).")
@click.option("--point-temperature", default=None, type=float, help=_POINT_TEMPERATURE_HELP + ".")
@click.option("--drop-outliers", "outlier_std", default=None, type=float, metavar="STD",
              help=_DROP_OUTLIERS_HELP)
@click.option("--out", default=None, type=click.Path(path_type=Path),
              help="Output .ply (default: <category>.ply, <input>_resampled.ply or "
                   "interpolation.ply); several shapes go to <stem>_0.ply ... <stem>_{N-1}.ply.")
@click.option("--preview", default=None, type=click.Path(path_type=Path),
              help="Also write a PNG of the shapes.")
@click.option("--mesh", is_flag=True,
              help="Also write a surface mesh reconstructed from each cloud (<stem>_mesh.ply).")
@click.option("--device", default="auto", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--force", is_flag=True, help="Replace existing output files.")
def pointcloud(model_path: Path | None, category: str | None, from_path: Path | None,
               interpolate: tuple[Path, Path] | None, steps: int, count: int, points: int,
               seed: int, temperature: float, point_temperature: float | None,
               outlier_std: float | None, out: Path | None, preview: Path | None, mesh: bool,
               device: str, force: bool) -> None:
    """Generate point clouds of a category with a trained model (one .ply per shape), resample a
    given cloud (--from), or walk between two shapes (--interpolate)."""
    from flowsuite.core.io import check_writable

    modes = sum(x is not None for x in (category, from_path, interpolate))
    if modes != 1:
        raise FlowsuiteError("give exactly one of --category C, --from FILE or "
                             "--interpolate A B")
    if points < 1:
        raise FlowsuiteError(f"--points must be at least 1, got {points}")
    _point_t(point_temperature)
    _check_outlier_std(outlier_std)
    if count < 1:
        raise FlowsuiteError(f"--count must be at least 1, got {count}")
    if interpolate is not None and steps < 2:
        raise FlowsuiteError(f"--steps must be at least 2, got {steps}")
    if out is None:
        stem = (category if category is not None else
                f"{from_path.stem}_resampled" if from_path is not None else "interpolation")
        out = Path(f"{stem}.ply")
    if out.suffix.lower() != ".ply":
        raise FlowsuiteError(f"--out {out} must end in .ply")
    n_shapes = count if category is not None else (1 if from_path is not None else steps)
    paths = ([out] if n_shapes == 1 else
             [out.with_name(f"{out.stem}_{i}.ply") for i in range(n_shapes)])
    mesh_paths = [p.with_name(f"{p.stem}_mesh.ply") for p in paths] if mesh else []
    for p in paths + mesh_paths + ([preview] if preview is not None else []):
        check_writable(p, force)
    inputs = [from_path] if from_path is not None else list(interpolate or [])

    from flowsuite.pointflow.export import (
        read_cloud,
        reconstruct_mesh,
        write_mesh,
        write_ply,
        write_preview,
    )

    clouds_in = [read_cloud(p, points=points, seed=seed) for p in inputs]
    model = _load(model_path, device)
    if category is not None:
        clouds = _generate(model, category, count, points, seed, temperature,
                           point_temperature=point_temperature, outlier_std=outlier_std)
        label = category
    else:
        clouds = _encode_and_decode(model, clouds_in, points, steps, seed, point_temperature,
                                    outlier_std)
        label = "resampled" if from_path is not None else "interpolation"
    for p, c in zip(paths, clouds, strict=True):
        write_ply(c, p, force=force)
    shown = str(paths[0]) if n_shapes == 1 else f"{paths[0]} ... {paths[-1]}"
    click.echo(f"wrote {n_shapes} {label} shape(s) of {points} points: {shown}")
    if mesh_paths:
        for p, c in zip(mesh_paths, clouds, strict=True):
            write_mesh(reconstruct_mesh(c), p, force=force)
        click.echo(f"wrote {len(mesh_paths)} mesh(es): {mesh_paths[0]}"
                   + (f" ... {mesh_paths[-1]}" if len(mesh_paths) > 1 else ""))
    if preview is not None:
        write_preview(clouds[:8], preview, force=force,
                      titles=[f"{label} {i}" for i in range(min(n_shapes, 8))])
        click.echo(f"wrote {preview}")


def _encode_and_decode(model, clouds: list, points: int, steps: int, seed: int,
                       point_temperature: float | None = None,
                       outlier_std: float | None = None):
    """One cloud: its reconstruction with ``points`` points; two: ``steps`` shapes between them.
    Inputs and outputs are in the data's coordinates, ``(K, points, 3)`` on the CPU."""
    import torch

    xs = [model.normalize(c.to(model.device)) for c in clouds]
    with torch.no_grad():
        if len(xs) == 1:
            out = model.reconstruct(xs[0], n_points=points, seed=seed,
                                    point_temperature=_point_t(point_temperature),
                                    outlier_std=outlier_std)[None]
        else:
            out = model.interpolate(xs[0], xs[1], steps=steps, n_points=points, seed=seed,
                                    point_temperature=_point_t(point_temperature),
                                    outlier_std=outlier_std)
    return model.denormalize(out.cpu())


# ---- gen eval pointcloud ----------------------------------------------------------------------

@eval_.command("pointcloud")
@click.option("--model", "model_path", default=None, type=click.Path(path_type=Path),
              help="A trained model (a run folder or its model.safetensors; default: the "
                   "shipped one).")
@click.option("--data", "data_dir", required=True,
              type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Folder of shapes; its test split is the reference.")
@click.option("--category", default=None, help="Evaluate one category (default: all the model's).")
@click.option("--count", default=None, type=click.IntRange(1),
              help="Shapes to generate per category (default: as many as the test split has).")
@click.option("--points", default=2048, show_default=True, type=click.IntRange(1))
@click.option("--normalization", default="none", show_default=True,
              type=click.Choice(["none", "unit_box", "unit_sphere"]),
              help="How both sets are normalised before the distances.")
@click.option("--emd-method", default="auto", show_default=True,
              type=click.Choice(["auto", "exact", "clusters"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--draws", default=1, show_default=True, type=click.IntRange(1),
              help="Evaluate this many independent draws (seeds SEED, SEED+1, ...: other "
                   "generated shapes and other reference points each time) and report the mean "
                   "and the standard deviation between them; one draw of 100 shapes moves a "
                   "category's 1-NNA by several points.")
@click.option("--point-temperature", default=None, type=float, help=_POINT_TEMPERATURE_HELP + ".")
@click.option("--drop-outliers", "outlier_std", default=None, type=float, metavar="STD",
              help=_DROP_OUTLIERS_HELP)
@click.option("--json", "json_out", default=None, type=click.Path(path_type=Path),
              help="Also write the results as JSON.")
@click.option("--device", default="auto", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--force", is_flag=True, help="Replace an existing --json file.")
def eval_pointcloud(model_path: Path | None, data_dir: Path, category: str | None,
                    count: int | None, points: int, normalization: str, emd_method: str, seed: int,
                    draws: int, point_temperature: float | None, outlier_std: float | None,
                    json_out: Path | None, device: str, force: bool) -> None:
    """Compare generated shapes with the test split (MMD, COV, 1-NNA with CD and EMD)."""
    import numpy as np

    from flowsuite.core.io import atomic_path, check_writable
    from flowsuite.data.shapes import open_shapes
    from flowsuite.pointflow.metrics import evaluate

    if json_out is not None:
        check_writable(json_out, force)
    _point_t(point_temperature)
    _check_outlier_std(outlier_std)
    model = _load(model_path, device)
    wanted = [category] if category else model.categories
    model.category_ids(wanted)
    from tqdm import tqdm

    per_draw: list[dict[str, Any]] = []
    for s in range(seed, seed + draws):
        test = open_shapes(data_dir, "test", wanted, "none", points, seed=s)
        results: dict[str, Any] = {}
        for name in tqdm(test.categories, desc=f"evaluating (seed {s})", unit="category",
                         leave=False, disable=None):
            refs = [test[i]["points"].numpy() for i in range(len(test))
                    if test.category_of(i) == name]
            n = count or len(refs)
            gen = _generate(model, name, n, points, s, 1.0, point_temperature=point_temperature,
                            outlier_std=outlier_std)
            results[name] = evaluate(list(gen.numpy().astype(np.float32)), refs,
                                     normalization=normalization, emd_method=emd_method)
            results[name]["point_temperature"] = _point_t(point_temperature)
            if outlier_std is not None:
                results[name]["drop_outliers"] = outlier_std
        per_draw.append(results)
    results = per_draw[0] if draws == 1 else _mean_of_draws(per_draw, seed)
    _print_table(results)
    if json_out is not None:
        with atomic_path(json_out, force=force) as tmp:
            tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        click.echo(f"wrote {json_out}")


_METRICS = ["MMD-CD", "COV-CD", "1-NNA-CD", "MMD-EMD", "COV-EMD", "1-NNA-EMD"]


def _mean_of_draws(per_draw: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """One result per category from several draws: each metric's mean, its standard deviation
    between draws under ``"sd"``, the draws themselves under ``"draws"``."""
    import numpy as np

    out: dict[str, Any] = {}
    for name, first in per_draw[0].items():
        r = dict(first)
        r["seeds"] = list(range(seed, seed + len(per_draw)))
        r["sd"] = {}
        for m in _METRICS:
            if m in first:
                vals = np.array([d[name][m] for d in per_draw], dtype=float)
                r[m], r["sd"][m] = float(vals.mean()), float(vals.std(ddof=1))
        r["draws"] = [d[name] for d in per_draw]
        out[name] = r
    return out


def _print_table(results: dict[str, dict[str, Any]]) -> None:
    cols = _METRICS
    click.echo(f"{'category':<12}{'gen':>5}{'ref':>5}" + "".join(f"{c:>11}" for c in cols))
    for name, r in results.items():
        vals = "".join(f"{r[c]:>11.4g}" if c in r else f"{'-':>11}" for c in cols)
        click.echo(f"{name:<12}{r['n_generated']:>5}{r['n_reference']:>5}{vals}")
    first = next(iter(results.values()), {})
    if "sd" in first:
        seeds = first["seeds"]
        click.echo(f"means of {len(seeds)} draws (seeds {seeds[0]}-{seeds[-1]}); standard "
                   "deviation between them:")
        for name, r in results.items():
            vals = "".join(f"{r['sd'][c]:>11.4g}" if c in r["sd"] else f"{'-':>11}"
                           for c in cols)
            click.echo(f"{name:<12}{'':>10}{vals}")
    click.echo(f"normalization: {first.get('normalization', '?')}")
    click.echo(f"EMD method: {first.get('emd_method', '?')}; COV and 1-NNA are fractions")
    if "point_temperature" in first:
        click.echo(f"point temperature: {first['point_temperature']:g}")
    if "drop_outliers" in first:
        click.echo(f"stray points dropped beyond {first['drop_outliers']:g} standard deviations")
