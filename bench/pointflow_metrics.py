"""Evaluation time of 100 generated vs 100 reference shapes (all metrics), old and new code side
by side, and the error of the cluster EMD approximation against exact matching.

    python bench/pointflow_metrics.py [--shapes 100] [--points 2048] [--pairs 12] [--out FILE]
        [--clusters C --rotations R] [--error-clusters 64 128 ...] [--error-rotations 1 4 ...]
        [--baseline-rev REV] [--threads 1] [--skip-timing]

Shapes are procedural (flowsuite.data.sample_shape), all six categories. Timing: the
"generated" set is seeds 0.., the "reference" set seeds 10000.. of the same categories; the
Chamfer matrix, the EMD matrix and MMD/COV/1-NNA over the union are timed for the code at git
revision ``--baseline-rev`` (loaded from ``git show``; the KD-tree Chamfer and its default EMD
settings) and for the current code, in the same process, with ``--threads`` threads. The
error study compares exact EMD (linear_sum_assignment on the full clouds) with the cluster
approximation at each (clusters, rotations) setting, and with exact EMD on random subsets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import types
from pathlib import Path

import numba
import numpy as np
import torch

from flowsuite.data.procedural import CATEGORIES, sample_shape
from flowsuite.pointflow import metrics as M

ROOT = Path(__file__).resolve().parent.parent
BASELINE_REV = "78cd1ab"  # the last commit before the brute-force Chamfer and rotated clusters


def procedural_set(count: int, points: int, seed0: int) -> list[np.ndarray]:
    """``count`` shapes, the categories in turn, seeds ``seed0, seed0 + 1, ...``."""
    cats = list(CATEGORIES)
    return [sample_shape(cats[k % len(cats)], seed0 + k, points) for k in range(count)]


def load_revision(rev: str) -> types.ModuleType:
    """pointflow/metrics.py as it was at git revision ``rev``, as a module."""
    src = subprocess.run(["git", "show", f"{rev}:pointflow/metrics.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    mod = types.ModuleType(f"metrics_{rev}")
    exec(compile(src, f"metrics@{rev}", "exec"), mod.__dict__)
    return mod


def _timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def _metrics_from(mod: types.ModuleType, full: torch.Tensor, s: int) -> dict[str, float]:
    d_ss, d_sr, d_rr = full[:s, :s], full[:s, s:], full[s:, s:]
    mc = mod.mmd_cov(d_sr)
    return {"MMD": mc["mmd"], "COV": mc["cov"], "1-NNA": mod.one_nn_accuracy(d_ss, d_sr, d_rr)}


def timing(count: int, points: int, clusters: int, rotations: int, rev: str) -> dict:
    gen, ref = procedural_set(count, points, 0), procedural_set(count, points, 10000)
    union = [c.astype(np.float64) for c in gen + ref]
    M.chamfer_matrix(union[:2], workers=1)  # compile (or load the cached) kernel: not timed
    old = load_revision(rev)
    out: dict = {"shapes": count, "points": points, "baseline_rev": rev}
    cd_new, t_cd_new = _timed(M.chamfer_matrix, union, backend="brute", workers=1)
    cd_old, t_cd_old = _timed(old.chamfer_matrix, union, backend="kdtree", workers=1)
    emd_new, t_emd_new = _timed(M.emd_matrix, union, clusters=clusters, rotations=rotations)
    emd_old, t_emd_old = _timed(old.emd_matrix, union, clusters=128)
    for tag, mod, cd, emd, t_cd, t_emd, label in (
            ("old", old, cd_old, emd_old, t_cd_old, t_emd_old,
             "KD-tree Chamfer (float64); EMD clusters 128, 1 frame"),
            ("new", M, cd_new, emd_new, t_cd_new, t_emd_new,
             f"brute-force Chamfer (float32); EMD clusters {clusters}, {rotations} frames")):
        t0 = time.perf_counter()
        res = {f"{k}-CD": v for k, v in _metrics_from(mod, cd, count).items()}
        res.update({f"{k}-EMD": v for k, v in _metrics_from(mod, emd[0], count).items()})
        t_rest = time.perf_counter() - t0
        out[tag] = {"method": label, "seconds_chamfer_matrix": t_cd,
                    "seconds_emd_matrix": t_emd, "seconds_mmd_cov_1nna": t_rest,
                    "seconds_all_metrics": t_cd + t_emd + t_rest, "metrics": res}
    off = ~np.eye(len(union), dtype=bool)
    rel = (cd_new.numpy() - cd_old.numpy())[off] / cd_old.numpy()[off]
    out["chamfer_float32_vs_float64"] = {"max_abs_rel_error": float(np.abs(rel).max()),
                                         "mean_abs_rel_error": float(np.abs(rel).mean())}
    report, t_eval = _timed(M.evaluate, gen, ref, emd_clusters=clusters,
                            emd_rotations=rotations)
    out["seconds_evaluate_end_to_end"] = t_eval
    out["report"] = report
    return out


def emd_errors(pairs: int, points: int, settings: list[tuple[int, int]],
               subsets: list[int]) -> dict:
    """Pairs of procedural shapes, half of one category, half of two."""
    cats = list(CATEGORIES)
    xs, ys, kinds = [], [], []
    for k in range(pairs):
        ca = cats[k % len(cats)]
        cb = ca if k % 2 == 0 else cats[(k + 1 + k // len(cats)) % len(cats)]
        xs.append(sample_shape(ca, 1000 + k, points).astype(np.float64))
        ys.append(sample_shape(cb, 2000 + k, points).astype(np.float64))
        kinds.append(f"{ca}/{cb}")
    t0 = time.perf_counter()
    exact = np.array([M.emd_exact(x, y) for x, y in zip(xs, ys, strict=True)])
    exact_s = (time.perf_counter() - t0) / pairs
    out: dict = {"pairs": pairs, "points": points, "categories": kinds,
                 "exact_seconds_per_pair": exact_s,
                 "exact_emd_range": [float(exact.min()), float(exact.max())], "methods": {}}

    def stats(vals: list[float]) -> dict:
        rel = (np.array(vals) - exact) / exact
        return {"mean_rel_error": float(rel.mean()),
                "mean_abs_rel_error": float(np.abs(rel).mean()),
                "max_abs_rel_error": float(np.abs(rel).max()),
                "min_rel_error": float(rel.min())}

    for m, r in settings:
        approx, bounds = [], []
        t0 = time.perf_counter()
        for x, y in zip(xs, ys, strict=True):
            d, info = M.emd_matrix([x], [y], method="clusters", clusters=m, rotations=r)
            approx.append(float(d[0, 0]))
            bounds.append(float(info["error_bound"][0, 0]))
        sec = (time.perf_counter() - t0) / pairs
        out["methods"][f"clusters_{m}_rotations_{r}"] = {
            **stats(approx), "mean_bound_over_exact": float(np.mean(np.array(bounds) / exact)),
            "seconds_per_pair_incl_clustering": sec}
    rng = np.random.default_rng(0)
    for m in subsets:
        sub = []
        for x, y in zip(xs, ys, strict=True):
            i, j = rng.choice(points, m, replace=False), rng.choice(points, m, replace=False)
            sub.append(M.emd_exact(x[i], y[j]))
        out["methods"][f"random_subset_{m}"] = stats(sub)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=int, default=100)
    ap.add_argument("--points", type=int, default=2048)
    ap.add_argument("--clusters", type=int, default=M.EMD_CLUSTERS)
    ap.add_argument("--rotations", type=int, default=M.EMD_ROTATIONS)
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--error-clusters", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--error-rotations", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--subsets", type=int, nargs="*", default=[128],
                    help="Random-subset sizes to compare with (exact EMD on subsets).")
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    result: dict = {
        "command": "python bench/pointflow_metrics.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   f"{args.threads} thread(s)",
        "load_average_before": os.getloadavg()[0],
    }
    if not args.skip_timing:
        result["timing"] = timing(args.shapes, args.points, args.clusters, args.rotations,
                                  args.baseline_rev)
        print(json.dumps({k: v for k, v in result["timing"].items() if k != "report"}, indent=1))
        print(json.dumps(result["timing"]["report"], indent=1))
    if args.pairs:
        settings = [(m, r) for m in args.error_clusters for r in args.error_rotations]
        result["emd_error"] = emd_errors(args.pairs, args.points, settings, args.subsets)
        print(json.dumps(result["emd_error"], indent=1))
    result["load_average_after"] = os.getloadavg()[0]
    print(f"load average {result['load_average_before']:.2f} -> "
          f"{result['load_average_after']:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
