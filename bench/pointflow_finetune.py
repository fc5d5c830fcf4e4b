"""What `gen finetune pointcloud` does to the old categories and to a new one.

    python bench/pointflow_finetune.py [--work DIR] [--base-steps 600] [--steps 300] [--out FILE]

Trains a "small" model on procedural chairs and tables, then fine-tunes it on a user's folder
holding one new category, "mug" (procedural lamps scaled by 1000 and shifted: other units), once
for each --replay choice (none, generated, the original folder). Prints and saves the median
held-out ELBO in nats per point (higher is better) of the test chairs and tables under their
categories and of test lamps under "mug", brought into the model's frame as the fine-tune
brought its data (--units match). The base model's "mug" row is the mean embedding a new
category starts from.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner

from flowsuite.cli.main import cli
from flowsuite.core.checkpoint import load_model, read_metadata
from flowsuite.data.shapes import open_shapes

SCALE, SHIFT = 1000.0, 5.0


def _gen(*args) -> str:
    r = CliRunner().invoke(cli, [str(a) for a in args])
    if r.exit_code != 0:
        raise SystemExit(f"gen {' '.join(map(str, args))} failed:\n{r.output}")
    return r.output


def _elbo(model, category: int, x: torch.Tensor) -> float:
    """The median over shapes (one badly fitted shape of a small test split would rule a mean)."""
    return float(model.log_prob(x, category, samples=4, seed=0).median() / x.shape[1])


def _measure(path: Path, shapes: Path, data_stats: dict) -> dict[str, float]:
    info = read_metadata(path)
    model = load_model(path)
    cats = json.loads(info.user["categories"])
    stats = json.loads(info.user["stats"])
    out = {}
    for c in ("chair", "table"):
        test = open_shapes(shapes, "test", [c], "global", 512, stats=stats)
        out[c] = _elbo(model, cats.index(c), torch.stack([s["points"] for s in test]))
    test = open_shapes(shapes, "test", ["lamp"], "none", 512)
    x = torch.stack([s["points"] for s in test]) * SCALE + SHIFT
    x = (x - torch.tensor(data_stats["mean"])) / data_stats["std"]
    if "mug" not in cats:
        cats.append("mug")
        model.add_categories(1)
    out["mug (lamp)"] = _elbo(model, cats.index("mug"), x.float())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp)")
    ap.add_argument("--base-steps", type=int, default=600)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--per-category", type=int, default=80)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="pf-finetune-"))
    shapes, mine, base = work / "shapes", work / "mine", work / "base"
    _gen("data", "shapes", "--out", shapes, "--categories", "chair,table,lamp",
         "--per-category", args.per_category, "--points", 1024, "--workers", 1)
    (mine / "mug").mkdir(parents=True)
    for i, f in enumerate(sorted((shapes / "lamp" / "train").glob("*.npy"))[:15]):
        np.save(mine / "mug" / f"m{i}.npy", np.load(f) * SCALE + SHIFT)
    common = ["--points-per-shape", 256, "--device", "cpu"]
    t0 = time.perf_counter()
    _gen("train", "pointcloud", "--data", shapes, "--categories", "chair,table", "--out", base,
         "--steps", args.base_steps, "--batch-size", 16, "--preset", "small", *common)
    results: dict[str, dict] = {"base": {"seconds": time.perf_counter() - t0}}
    runs = {"none": "none", "generated": "generated", "folder": shapes}
    for name, replay in runs.items():
        t0 = time.perf_counter()
        _gen("finetune", "pointcloud", "--from", base, "--data", mine, "--out",
             work / f"ft-{name}", "--steps", args.steps, "--replay", replay, *common)
        results[f"replay {name}"] = {"seconds": time.perf_counter() - t0}
    data_stats = json.loads((work / "ft-none" / "finetune.json").read_text())["data_stats"]
    for key, folder in [("base", base)] + [(f"replay {n}", work / f"ft-{n}") for n in runs]:
        results[key]["elbo_per_point"] = _measure(folder / "model.safetensors", shapes,
                                                  data_stats)
    print(f"median held-out ELBO, nats per point (higher is better); fine-tuning {args.steps} "
          "steps with the defaults")
    print(f"{'model':<18}{'chair':>10}{'table':>10}{'mug (lamp)':>12}{'seconds':>9}")
    for key, r in results.items():
        e = r["elbo_per_point"]
        print(f"{key:<18}{e['chair']:>10.3f}{e['table']:>10.3f}{e['mug (lamp)']:>12.3f}"
              f"{r['seconds']:>9.1f}")
    if args.out is not None:
        args.out.write_text(json.dumps({
            "results": results, "args": {k: str(v) for k, v in vars(args).items()},
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "torch": torch.__version__, "threads": args.threads}},
            indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
