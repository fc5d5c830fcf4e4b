"""Which point flow: affine or spline couplings, with or without SoftFlow noise conditioning.

    python bench/pointflow_layers.py [--steps 300] [--points 512] [--out FILE.json]

Each configuration (the default model otherwise) trains for the same number of Adam steps on four
synthetic categories (bench/pointflow_shapes.py), then is scored on held-out shapes: the
conditional NLL per point given the posterior mean (noise level 0), and MMD-CD / COV-CD / 1-NNA-CD
of samples from each category's prior against that category's held-out shapes (averaged over
categories), plus the time to sample 2048 points on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pointflow_shapes import FAMILIES, shapes  # noqa: E402

from flowsuite.pointflow.metrics import evaluate  # noqa: E402
from flowsuite.pointflow.model import PointFlowModel  # noqa: E402

CONFIGS = {
    "affine+softflow": {"point_kind": "affine", "softflow_max_noise": 0.05},
    "spline+softflow": {"point_kind": "spline", "softflow_max_noise": 0.05},
    "affine": {"point_kind": "affine", "softflow_max_noise": 0.0},
    "spline": {"point_kind": "spline", "softflow_max_noise": 0.0},
}


def run(name: str, steps: int, points: int, batch_per_cat: int, held_out: int) -> dict:
    torch.manual_seed(0)
    model = PointFlowModel(len(FAMILIES), **CONFIGS[name])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cats = torch.arange(len(FAMILIES)).repeat_interleave(batch_per_cat)
    t0 = time.perf_counter()
    for step in range(steps):
        pts = torch.cat([shapes(f, batch_per_cat, points, 10_000 * i + step)
                         for i, f in enumerate(FAMILIES)])
        out = model({"points": pts, "category": cats})
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    train_s = time.perf_counter() - t0
    model.eval()
    nll, mmd, cov, nna = [], [], [], []
    for i, f in enumerate(FAMILIES):
        ref = shapes(f, held_out, points, 999_000 + i)
        nll.append(float(-model.conditional_log_prob(ref).mean()))
        gen = model.sample(i, count=held_out, points=points, seed=i)
        rep = evaluate(gen, ref, distances=("cd",))
        mmd.append(rep["MMD-CD"])
        cov.append(rep["COV-CD"])
        nna.append(rep["1-NNA-CD"])
    model.sample(0, 1, 2048, seed=0)
    t1 = time.perf_counter()
    for s in range(10):
        model.sample(0, 1, 2048, seed=s)
    sample_ms = (time.perf_counter() - t1) / 10 * 1e3
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {"config": name, "steps": steps, "train_seconds": train_s,
            "final_loss": float(out["loss"].detach()), "heldout_nll_per_point": mean(nll),
            "MMD-CD": mean(mmd), "COV-CD": mean(cov), "1-NNA-CD": mean(nna),
            "sample_2048_ms": sample_ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--points", type=int, default=512)
    ap.add_argument("--batch-per-category", type=int, default=2)
    ap.add_argument("--held-out", type=int, default=8)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {"command": "python bench/pointflow_layers.py " + " ".join(sys.argv[1:]),
               "load_average_before": os.getloadavg()[0], "runs": []}
    for name in args.configs:
        r = run(name, args.steps, args.points, args.batch_per_category, args.held_out)
        print(json.dumps(r), flush=True)
        results["runs"].append(r)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
