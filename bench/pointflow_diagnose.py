"""Where does a point-cloud model lose 1-NNA: in the latent prior or in the point flow?

For each category, 1-NNA-CD, COV-CD and MMD-CD against the test split of four sets of clouds:

- ``ideal``: the validation split's real shapes (what a perfect model would score, near 50%);
- ``samples``: shapes generated from the category prior (what ``gen eval pointcloud`` scores);
- ``recon-val``: validation shapes encoded (posterior mean) and decoded by the point flow;
- ``recon-train``: the same for training shapes.

If reconstructions score as badly as samples, the point flow (the decoder) is the limit; if they
score near the ideal, the latent prior is. Also reported: how far generated points lie from the
true surface, as quantiles of each point's distance to the nearest point of the encoded shape,
beside the same for a second independent sampling of the real surface (``resample``).

How sharp must a category's surfaces be? ``--jitter 0.005 0.01 0.02`` adds the sets
``ideal+0.005`` and so on: the validation shapes with Gaussian noise of that standard deviation
(in the data's units) added to every coordinate. Categories whose shapes are much alike (cars)
are told apart at a jitter that others (tables) hide, so the same fuzz costs them more 1-NNA.
``--sets`` runs only some of the sets (``ideal``, ``samples``, ``recon-val``, ``recon-train``,
``jitter``); the surface distances need ``recon-val``.

    python bench/pointflow_diagnose.py --data shapes --count 60 --out diagnose.json
    python bench/pointflow_diagnose.py --data shapes --count 100 --sets ideal jitter \
        --jitter 0.005 0.01 0.015 0.02 --out jitter.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from flowsuite.data.shapes import open_shapes
from flowsuite.pointflow.metrics import evaluate
from flowsuite.pointflow.model import PointFlowModel

QUANTILES = (0.5, 0.9, 0.99)


def _clouds(data: Path, split: str, category: str, count: int, seed: int) -> torch.Tensor:
    ds = open_shapes(data, split, [category], "none", 2048, seed=seed)
    return torch.stack([ds[i]["points"] for i in range(min(count, len(ds)))])


def _surface_distance(points: torch.Tensor, surface: torch.Tensor) -> list[float]:
    """Quantiles of each point's distance to the nearest point of ``surface`` (per cloud)."""
    d = torch.cat([torch.cdist(p[None], s[None])[0].min(-1).values
                   for p, s in zip(points, surface, strict=True)])
    return [float(q) for q in np.quantile(d.numpy(), QUANTILES)]


SETS = ("ideal", "samples", "recon-val", "recon-train", "jitter")


def diagnose(model: PointFlowModel, data: Path, category: str, count: int, seed: int,
             sets: tuple[str, ...] = SETS, jitter: tuple[float, ...] = ()
             ) -> dict[str, dict]:
    test = list(_clouds(data, "test", category, count, seed).numpy())
    val = _clouds(data, "val", category, count, seed)
    gen = torch.Generator().manual_seed(seed)
    clouds: dict[str, torch.Tensor] = {}
    if "ideal" in sets:
        clouds["ideal"] = val
    with torch.no_grad():
        if "samples" in sets:
            clouds["samples"] = model.denormalize(model.sample(category, len(test), 2048,
                                                                  seed=seed))

        def reconstruct(x: torch.Tensor) -> torch.Tensor:
            mean, _ = model.encode(model.normalize(x))
            return model.denormalize(model.decode(mean, 2048, generator=gen))

        if "recon-val" in sets:
            clouds["recon-val"] = reconstruct(val)
        if "recon-train" in sets:
            clouds["recon-train"] = reconstruct(_clouds(data, "train", category, count, seed))
    if "jitter" in sets:
        noise = torch.Generator().manual_seed(seed)
        for sigma in jitter:
            clouds[f"ideal+{sigma:g}"] = val + sigma * torch.randn(val.shape, generator=noise)
    out: dict[str, dict] = {}
    for name, c in clouds.items():
        r = evaluate(list(c.numpy()), test, distances=("cd",))
        out[name] = {k: r[k] for k in ("1-NNA-CD", "COV-CD", "MMD-CD")}
    if "recon-val" in clouds:
        resample = _clouds(data, "val", category, count, seed + 1)
        out["surface_distance"] = {
            "quantiles": list(QUANTILES),
            "resample": _surface_distance(resample, val),
            "recon-val": _surface_distance(clouds["recon-val"], val),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model file or run (default: the shipped one)")
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--categories", default=None, help="comma-separated (default: the model's)")
    ap.add_argument("--count", type=int, default=60, help="shapes per set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS),
                    help="which sets to score (default: all)")
    ap.add_argument("--jitter", nargs="+", type=float, default=[0.005, 0.01, 0.02],
                    help="noise levels of the jittered real sets (data units)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/pointflow_diagnose.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = PointFlowModel.from_pretrained(args.model)
    model.eval()
    cats = args.categories.split(",") if args.categories else model.categories
    start = time.perf_counter()
    results = {}
    print(f"{'category':10s} {'set':12s} {'1-NNA-CD':>9s} {'COV-CD':>7s} {'MMD-CD':>9s}")
    for c in cats:
        results[c] = diagnose(model, args.data, c, args.count, args.seed, tuple(args.sets),
                              tuple(args.jitter))
        for name, r in results[c].items():
            if name == "surface_distance":
                print(f"{c:10s} distance to the surface (q50/q90/q99): resample "
                      f"{'/'.join(f'{v:.4f}' for v in r['resample'])}, reconstruction "
                      f"{'/'.join(f'{v:.4f}' for v in r['recon-val'])}")
            else:
                print(f"{c:10s} {name:12s} {100 * r['1-NNA-CD']:8.1f}% "
                      f"{100 * r['COV-CD']:6.1f}% {r['MMD-CD']:9.2e}", flush=True)

    def flag(k: str, v) -> str:
        value = " ".join(map(str, v)) if isinstance(v, list) else str(v)
        return f"--{k.replace('_', '-')} {value}"

    record = {"command": "python bench/pointflow_diagnose.py " + " ".join(
                  flag(k, v) for k, v in vars(args).items() if v is not None),
              "model": str(args.model or "shipped"), "seconds": time.perf_counter() - start,
              "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__,
                          "platform": platform.platform(), "threads": args.threads,
                          "load_average": os.getloadavg()},
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
