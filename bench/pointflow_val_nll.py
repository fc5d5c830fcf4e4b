"""Validation likelihood of point-cloud models in float32, the same crops and noise for each.

    python bench/pointflow_val_nll.py --data shapes RUN_OR_MODEL [...] [--seed 5]
        [--split train] [--out bench/results/pointflow_val_nll.json]

For each model: the mean of its training loss terms (``loss``, the negative ELBO per point;
``recon_nll_per_point``; ``prior_nll``; ``entropy``) over the whole validation split, in
evaluation mode and float32, with ``--points`` points per shape drawn with ``--seed`` and the
model's random draws seeded alike, so models are compared on identical inputs. The trainer logs
the same terms during training, but with the run's own seed and, under ``--precision bf16``,
in bf16; this script is the like-for-like comparison. ``--split train`` (or ``test``) scores
another split the same way: the gap between the training and validation figures says how much
the model has fitted its own shapes rather than the category.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from flowsuite.core.rng import seeded
from flowsuite.data import open_shapes
from flowsuite.pointflow.model import PointFlowModel


def val_terms(path: str, data: str, points: int, seed: int, batch: int,
              split: str = "val") -> dict[str, float]:
    model = PointFlowModel.from_pretrained(path).float().eval()
    ds = open_shapes(data, split=split, normalize="global", stats=model.stats,
                     points_per_shape=points, seed=seed, workers=1)
    sums: dict[str, float] = {}
    n = 0
    with torch.no_grad(), seeded(1234):
        for b in torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False):
            out = model({"points": b["points"], "category": b["category"]})
            k = len(b["points"])
            for key, v in out.items():
                if v.dim() == 0:
                    sums[key] = sums.get(key, 0.0) + float(v) * k
            n += k
    return {"model": path, "split": split, "shapes": n, **{k: v / n for k, v in sums.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", required=True)
    ap.add_argument("--points", type=int, default=512)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--split", default="val", choices=("train", "val", "test"))
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = []
    for m in args.models:
        r = val_terms(m, args.data, args.points, args.seed, args.batch, args.split)
        print(f"{m}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()
                                   if isinstance(v, float)), flush=True)
        rows.append(r)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
