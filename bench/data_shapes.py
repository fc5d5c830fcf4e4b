"""Benchmark of flowsuite.data: generating the procedural set, and reading a folder of meshes
compared with open3d's own parsing of the same files.

    python bench/data_shapes.py [--shapes 1000] [--points 15000] [--workers 2] [--meshes 1000]

Prints the figures and saves them to bench/results/data_shapes.json. No pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def bench_generate(root: Path, shapes: int, points: int, workers: int) -> dict:
    from flowsuite.data.generate import write_shape_set
    from flowsuite.data.procedural import CATEGORIES

    per = max(1, shapes // len(CATEGORIES))
    t = time.perf_counter()
    write_shape_set(root / "gen", None, per, points, seed=0, workers=workers, progress=False)
    dt = time.perf_counter() - t
    n = per * len(CATEGORIES)
    size = sum(f.stat().st_size for f in (root / "gen").rglob("*.npy"))
    return {"shapes": n, "points": points, "workers": workers, "seconds": round(dt, 2),
            "shapes_per_second": round(n / dt, 1), "megabytes": round(size / 2**20, 1)}


def bench_read(root: Path, meshes: int, subdivide: int = 0) -> dict:
    """Writes ``meshes`` procedural meshes (.ply/.obj/.off in turn; each triangle split into
    ``4 ** subdivide``), then times open3d parsing them alone against flowsuite reading them."""
    import open3d as o3d

    from flowsuite.data.procedural import CATEGORIES, shape_mesh
    from flowsuite.data.readers import read_shape
    from flowsuite.data.shapes import open_shapes

    folder = root / f"meshes{subdivide}"
    cats = list(CATEGORIES)
    files = []
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        for i in range(meshes):
            cat = cats[i % len(cats)]
            path = folder / cat / f"{i:05d}.{('ply', 'obj', 'off')[i % 3]}"
            path.parent.mkdir(parents=True, exist_ok=True)
            m = shape_mesh(cat, i)
            if subdivide:
                m = m.subdivide_midpoint(subdivide)
            o3d.io.write_triangle_mesh(str(path), m, write_vertex_normals=False)
            files.append(path)
    tris = []
    t = time.perf_counter()
    for f in files:  # the floor: open3d parsing every file, nothing else
        m = o3d.io.read_triangle_mesh(str(f), enable_post_processing=False)
        tris.append(len(m.triangles))
    raw = time.perf_counter() - t
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    for f in files:  # our reader per file: parse (own OFF parser) + area-uniform sampling
        read_shape(f, 15000, rng)
    per_file = time.perf_counter() - t
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = open_shapes(folder, "train", surface_points=15000)
        splits = [train] + [open_shapes(folder, s, surface_points=15000, stats=train.stats)
                            for s in ("val", "test")]
    full = time.perf_counter() - t
    n = sum(len(s) for s in splits)
    return {"meshes": meshes, "mean_triangles": round(float(np.mean(tris))),
            "open3d_parse_seconds": round(raw, 2), "read_shape_seconds": round(per_file, 2),
            "open_shapes_all_splits_seconds": round(full, 2), "shapes_loaded": n,
            "ratio_open_shapes_to_open3d_parse": round(full / raw, 2)}


def _print_read(r: dict) -> None:
    print(f"read: {r['meshes']} meshes (mean {r['mean_triangles']} triangles); "
          f"open3d parse alone {r['open3d_parse_seconds']} s; read_shape (parse + sample "
          f"15000) {r['read_shape_seconds']} s; open_shapes, all three splits "
          f"{r['open_shapes_all_splits_seconds']} s "
          f"({r['ratio_open_shapes_to_open3d_parse']}x the parse)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=int, default=1000)
    ap.add_argument("--points", type=int, default=15000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--meshes", type=int, default=1000)
    args = ap.parse_args()
    load = os.getloadavg()[0]  # other work on the machine slows every figure
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gen = bench_generate(root, args.shapes, args.points, args.workers)
        print(f"generate: {gen['shapes']} shapes x {gen['points']} points with "
              f"{gen['workers']} workers in {gen['seconds']} s "
              f"({gen['shapes_per_second']} shapes/s, {gen['megabytes']} MB)")
        read = bench_read(root, args.meshes)
        _print_read(read)
        dense = bench_read(root, max(1, args.meshes // 4), subdivide=2)
        _print_read(dense)
    out = Path(__file__).parent / "results" / "data_shapes.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from flowsuite.core.io import atomic_path

    with atomic_path(out) as tmp_out:
        tmp_out.write_text(json.dumps({
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "load_average_at_start": load, "generate": gen, "read": read,
            "read_dense": dense}, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
