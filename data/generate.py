"""Writes the procedural shape set in the ShapeNetCore.v2.PC15k layout:
``<out>/<category>/{train,val,test}/<id>.npy``, each ``(points, 3)`` float32, plus
``<out>/shapes.json`` describing how the set was made.

The set is a function of its arguments alone: shape ``i`` of a category is built from a seed
derived from ``(seed, i)``, so files are byte-identical whatever the number of workers. The set
is written into a hidden folder beside ``out`` and moved into place when complete, so ``out``
never holds half a set.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flowsuite.core.errors import FlowsuiteError
from flowsuite.core.io import atomic_path, check_output_folder
from flowsuite.data.procedural import CATEGORIES, sample_shape

SPLITS = ("train", "val", "test")
MANIFEST = "shapes.json"


def split_counts(n: int, val: float = 0.1, test: float = 0.1) -> dict[str, int]:
    """How many of ``n`` shapes go to train, val and test (a split with a positive fraction
    gets at least one shape once ``n >= 3``)."""
    nv, nt = int(round(n * val)), int(round(n * test))
    if n >= 3:
        nv, nt = max(nv, int(val > 0)), max(nt, int(test > 0))
    return {"train": n - nv - nt, "val": nv, "test": nt}


def shape_seed(seed: int, index: int) -> int:
    """The 64-bit seed of shape ``index`` in a set made with ``seed``."""
    h = hashlib.blake2b(f"flowsuite-shapes:{int(seed)}:{int(index)}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def _split_of(i: int, counts: dict[str, int]) -> str:
    if i < counts["train"]:
        return "train"
    return "val" if i < counts["train"] + counts["val"] else "test"


def _make_one(task: tuple[str, str, int, int, int, str]) -> None:
    root, category, seed, index, n_points, split = task
    pts = sample_shape(category, shape_seed(seed, index), n_points)
    with atomic_path(Path(root) / category / split / f"{index:06d}.npy") as tmp, \
            open(tmp, "wb") as f:
        np.save(f, pts)


def _prepare_out(out: Path, force: bool) -> None:
    check_output_folder(out, force, (out / MANIFEST).is_file(), "shape set")


def write_shape_set(out: str | os.PathLike, categories: Sequence[str] | None = None,
                    per_category: int = 1000, n_points: int = 15000, seed: int = 0,
                    workers: int | None = None, force: bool = False,
                    progress: bool = True) -> Path:
    """Generates ``per_category`` shapes of each category (default: all), ``n_points`` points
    each, into ``out`` (see the module doc). ``workers`` processes (default: the CPU count)
    share the work. Returns the output folder."""
    out = Path(out)
    cats = list(categories) if categories else list(CATEGORIES)
    unknown = [c for c in cats if c not in CATEGORIES]
    if unknown:
        raise FlowsuiteError(f"unknown shape categor{'ies' if len(unknown) > 1 else 'y'} "
                             f"{', '.join(unknown)}; choose from {', '.join(CATEGORIES)}")
    if per_category < 1 or n_points < 1:
        raise FlowsuiteError("--per-category and --points must be at least 1")
    _prepare_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    counts = split_counts(per_category)
    try:
        for c in cats:
            for s in SPLITS:
                (stage / c / s).mkdir(parents=True, exist_ok=True)
        tasks = [(str(stage), c, int(seed), i, int(n_points), _split_of(i, counts))
                 for c in cats for i in range(per_category)]
        n_workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), unit="shape", desc="shapes", disable=not progress)
        if n_workers == 1:
            for t in tasks:
                _make_one(t)
                bar.update()
        else:
            with _pool_context().Pool(n_workers) as pool:
                for _ in pool.imap_unordered(_make_one, tasks, chunksize=8):
                    bar.update()
        bar.close()
        manifest = {
            "generator": "flowsuite.data.procedural", "format": "ShapeNetCore.v2.PC15k layout",
            "seed": int(seed), "points": int(n_points), "per_category": int(per_category),
            "categories": cats, "splits": counts,
            "orientation": "y up, front faces +z, x is the width",
            "normalization": "bounding box centred at the origin, diagonal 1 (as "
                             "ShapeNetCore.v2 model_normalized)",
        }
        with atomic_path(stage / MANIFEST) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_in(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return out


def _swap_in(stage: Path, out: Path) -> None:
    """Moves the finished ``stage`` folder to ``out``, replacing an empty folder or (checked
    before) an earlier shape set."""
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        else:
            out.rmdir()
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _pool_context():
    """Forked workers start at once (the work is numpy only); spawn where fork is missing."""
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")
