"""Evaluation time of 100 generated vs 100 reference shapes (all metrics) and the error of the
cluster EMD approximation against exact matching.

    python bench/pointflow_metrics.py [--shapes 100] [--points 2048] [--pairs 12] [--out FILE]

The "generated" and "reference" sets are seeded synthetic shape families (bench/
pointflow_shapes.py), half of them shared between the sets so that the metrics are not trivial.
The error study compares exact EMD (linear_sum_assignment on the full clouds) with the cluster
approximation at several cluster counts and with exact EMD on random subsets of the same size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pointflow_shapes import FAMILIES, shapes  # noqa: E402

from flowsuite.pointflow import metrics as M  # noqa: E402


def make_sets(count: int, points: int) -> tuple[torch.Tensor, torch.Tensor]:
    per = count // 4
    gen = torch.cat([shapes(f, per, points, 100 + i) for i, f in enumerate(FAMILIES)])
    ref = torch.cat([shapes(f, per, points, 200 + i) for i, f in
                     enumerate(("sphere", "box", "torus", "torus"))])
    return gen, ref


def timing(count: int, points: int, clusters: int) -> dict:
    torch.set_num_threads(2)
    gen, ref = make_sets(count, points)
    t0 = time.perf_counter()
    report = M.evaluate(gen, ref, emd_clusters=clusters)
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    M.evaluate(gen, ref, distances=("cd",))
    cd_only = time.perf_counter() - t0
    return {"shapes": count, "points": points, "emd_clusters": clusters,
            "seconds_all_metrics": total, "seconds_cd_only": cd_only, "report": report}


def emd_errors(pairs: int, points: int, clusters: list[int]) -> dict:
    fams = list(FAMILIES)
    xs, ys = [], []
    for k in range(pairs):
        fa = fams[k % 4]
        fb = fa if k % 2 == 0 else fams[(k + 1 + k // 4) % 4]  # half same family, half not
        xs.append(shapes(fa, 1, points, 1000 + k)[0])
        ys.append(shapes(fb, 1, points, 2000 + k)[0])
    t0 = time.perf_counter()
    exact = np.array([M.emd_exact(x, y) for x, y in zip(xs, ys, strict=True)])
    exact_s = (time.perf_counter() - t0) / pairs
    out: dict = {"pairs": pairs, "points": points, "exact_seconds_per_pair": exact_s,
                 "exact_emd_range": [float(exact.min()), float(exact.max())], "methods": {}}
    for m in clusters:
        approx, bounds = [], []
        t0 = time.perf_counter()
        for x, y in zip(xs, ys, strict=True):
            d, info = M.emd_matrix(torch.stack([x]), torch.stack([y]), method="clusters",
                                   clusters=m)
            approx.append(float(d[0, 0]))
            bounds.append(float(info["error_bound"][0, 0]))
        sec = (time.perf_counter() - t0) / pairs
        rel = (np.array(approx) - exact) / exact
        out["methods"][f"clusters_{m}"] = {
            "mean_rel_error": float(rel.mean()), "mean_abs_rel_error": float(np.abs(rel).mean()),
            "max_abs_rel_error": float(np.abs(rel).max()),
            "mean_bound_over_exact": float(np.mean(np.array(bounds) / exact)),
            "seconds_per_pair_incl_clustering": sec}
        rng = np.random.default_rng(0)
        sub = []
        for x, y in zip(xs, ys, strict=True):
            i, j = rng.choice(points, m, replace=False), rng.choice(points, m, replace=False)
            sub.append(M.emd_exact(x[i], y[j]))
        rel = (np.array(sub) - exact) / exact
        out["methods"][f"random_subset_{m}"] = {
            "mean_rel_error": float(rel.mean()), "mean_abs_rel_error": float(np.abs(rel).mean()),
            "max_abs_rel_error": float(np.abs(rel).max())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=int, default=100)
    ap.add_argument("--points", type=int, default=2048)
    ap.add_argument("--clusters", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--error-clusters", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    result: dict = {
        "command": "python bench/pointflow_metrics.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   f"load average before {os.getloadavg()[0]:.1f}",
    }
    if not args.skip_timing:
        result["timing"] = timing(args.shapes, args.points, args.clusters)
        print(json.dumps({k: v for k, v in result["timing"].items() if k != "report"}))
        print(json.dumps(result["timing"]["report"], indent=1))
    if args.pairs:
        result["emd_error"] = emd_errors(args.pairs, args.points, args.error_clusters)
        print(json.dumps(result["emd_error"], indent=1))
    result["load_average_after"] = os.getloadavg()[0]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
