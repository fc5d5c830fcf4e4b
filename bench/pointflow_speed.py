"""Sampling and training speed of PointFlowModel on the CPU.

    python bench/pointflow_speed.py [--kind affine|spline] [--point-splines 0 2] [--threads 1 2]
        [--out FILE.json]

Prints (and optionally saves) the median time to sample one shape of 2048 points (goal < 50 ms),
batched shapes per second, and training shapes per second of the default configuration (with
``--point-splines N``, N spline couplings after its point couplings).
Weights are perturbed away from the identity start so the timings are those of a trained model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from flowsuite.pointflow.model import PointFlowModel


def _perturb(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(kind: str, splines: int, threads: int, repeats: int, train_points: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = PointFlowModel(4, point_kind=kind, point_splines=splines)
    _perturb(model)
    model.eval()
    one = _median_time(lambda: model.sample(1, count=1, points=2048, seed=0), repeats)
    batch = 16
    many = _median_time(lambda: model.sample(1, count=batch, points=2048, seed=0),
                        max(3, repeats // 5))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    shapes = torch.randn(16, train_points, 3) * 0.5
    data = {"points": shapes, "category": torch.arange(16) % 4}

    def step():
        loss = model(data)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    train = _median_time(step, 5)
    return {
        "kind": kind, "point_splines": splines, "threads": threads,
        "sample_one_2048_ms": one * 1e3,
        "sample_batch16_shapes_per_s": batch / many,
        f"train_shapes_per_s_batch16_{train_points}pts": 16 / train,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", nargs="+", default=["affine", "spline"])
    ap.add_argument("--point-splines", nargs="+", type=int, default=[0])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--train-points", type=int, default=2048)
    ap.add_argument("--out")
    args = ap.parse_args()
    results = {
        "command": "python bench/pointflow_speed.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if v is not None),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}",
        "runs": [],
    }
    for kind in args.kind:
        for splines in args.point_splines:
            for threads in args.threads:
                r = bench(kind, splines, threads, args.repeats, args.train_points)
                print(json.dumps(r))
                results["runs"].append(r)
    results["load_average_after"] = os.getloadavg()[0]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
