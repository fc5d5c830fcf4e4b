"""Which sampling temperatures give the best point clouds? A sweep over the point flow's
temperature (the scale of the base noise of each point) and the shape latent's, per category,
and over a geometric outlier filter applied to the sampled clouds.

A flow trained on the ELBO spreads some density off the surface (bridges between parts, a halo
around thin parts). Scaling each point's base noise below 1 draws points from nearer the modes
of p(x|z), the surface; too low and the points bunch on the densest parts. For each temperature
pair it samples ``--count`` shapes per category and scores them against the real shapes of a
split with ``gen eval pointcloud``'s Chamfer metrics (MMD-CD, COV-CD, 1-NNA-CD, normalisation
``none``). Choose on the validation split (``--split val``, the default) and report the test
split separately, so the choice is not fitted to the figures it is judged by:

    OMP_NUM_THREADS=1 python bench/pointflow_temperature.py --model runs/pointflow \\
        --data shapes --point-temperatures 1.0 0.9 0.8 0.7 0.6 \\
        --out bench/results/pointflow_temperature_val.json
    (the same with --split test --point-temperatures 1.0 <chosen>)

``--outlier-std 0 3 2`` also scores each setting with stray points dropped (0: none; the
model's ``outlier_std``, `gen pointcloud --drop-outliers`: draw 1.25x the points, drop those
whose mean distance to their 16 nearest neighbours is more than R standard deviations above the
cloud's mean, keep ``--points`` of the rest at random). It asks whether the points a flow strands
between parts are what 1-NNA sees. ``--draws N`` scores N independent sets per setting (seeds
SEED + d * COUNT); one seed draws the same shape latents whatever the filter, so the settings
are compared shape for shape.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from bench_record import machine, save  # bench/, the script's own folder

from flowsuite.cli.pointcloud_cmds import _generate, _load
from flowsuite.data.shapes import open_shapes
from flowsuite.pointflow.metrics import evaluate


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="run folder or model file "
                   "(default: the shipped model)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--categories", nargs="*", default=None)
    p.add_argument("--point-temperatures", type=float, nargs="+", default=[1.0, 0.8])
    p.add_argument("--latent-temperatures", type=float, nargs="+", default=[1.0])
    p.add_argument("--outlier-std", type=float, nargs="+", default=[0.0],
                   help="outlier filter thresholds in standard deviations (0: no filter)")
    p.add_argument("--draws", type=int, default=1, help="independent sets per setting")
    p.add_argument("--count", type=int, default=100, help="shapes per category and side")
    p.add_argument("--points", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)

    t0 = time.time()
    model = _load(a.model, "cpu")
    wanted = a.categories or model.categories
    real = open_shapes(a.data, a.split, wanted, "none", a.points, seed=a.seed)
    result: dict = {"model": str(a.model or "shipped"), "split": a.split, "count": a.count,
                    "points": a.points, "seed": a.seed, "draws": a.draws,
                    "machine": machine(),
                    "runs": []}
    for name in wanted:
        refs = [real[i]["points"].numpy() for i in range(len(real))
                if real.category_of(i) == name][:a.count]
        for lt in a.latent_temperatures:
            for pt in a.point_temperatures:
                for r_std in a.outlier_std:
                    for d in range(a.draws):
                        seed = a.seed + d * a.count
                        # As `gen eval pointcloud` samples: batches of 16, seeds derived from
                        # (seed, batch).
                        gen = _generate(model, name, len(refs), a.points, seed, lt,
                                        point_temperature=pt,
                                        outlier_std=r_std or None).numpy().astype(np.float32)
                        r = evaluate(list(gen), refs, distances=("cd",))
                        row = {"category": name, "latent_temperature": lt,
                               "point_temperature": pt, "outlier_std": r_std, "seed": seed,
                               **{k: r[k] for k in ("MMD-CD", "COV-CD", "1-NNA-CD")}}
                        result["runs"].append(row)
                        print(f"{name:<10} latent T {lt:<4g} point T {pt:<4g} outlier std "
                              f"{r_std:<3g} seed {seed:<5d} MMD-CD {row['MMD-CD']:.3e}  COV-CD "
                              f"{row['COV-CD']:.3f}  1-NNA-CD {row['1-NNA-CD']:.3f}", flush=True)
    # Per category and over categories, the mean of the draws per setting: figures to choose by.
    summary: dict = {}
    for row in result["runs"]:
        key = (f"latent {row['latent_temperature']:g}, point {row['point_temperature']:g}, "
               f"outlier std {row['outlier_std']:g}")
        summary.setdefault(key, {}).setdefault(row["category"], []).append(row["1-NNA-CD"])
    result["mean_1nna_cd"] = {k: float(np.mean([np.mean(x) for x in v.values()]))
                              for k, v in summary.items()}
    result["category_1nna_cd"] = {k: {c: float(np.mean(x)) for c, x in v.items()}
                                  for k, v in summary.items()}
    for k, v in result["mean_1nna_cd"].items():
        per = "  ".join(f"{c} {x:.3f}" for c, x in result["category_1nna_cd"][k].items())
        print(f"{k}: mean 1-NNA-CD {v:.4f} over {len(wanted)} categories ({per})")
    save(result, a.out, t0)
    print(f"saved {a.out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
