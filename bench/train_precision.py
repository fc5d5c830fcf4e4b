"""Training step time in float32 and under bfloat16 autocast on the CPU, for the three models.

    python bench/train_precision.py [--models pointflow prior waveglow] [--threads 1]
        [--rounds 5] [--steps 4] [--out bench/results/train_precision_cpu.json]

For each model: one training step (forward, backward, Adam) on a fixed batch, timed in thread
CPU time, float32 and bf16 interleaved round by round (so both see the same machine load); the
median per precision and their ratio. Beside it, the model's loss on the same batch in
evaluation mode in both precisions (how far bf16 moves the number the trainer optimises).
``TrainConfig(bf16=True)`` / ``--precision bf16`` is this autocast: matrix products in bfloat16,
weights, log-determinants and the optimiser in float32. It pays only on a CPU that multiplies
bfloat16 in hardware (AMX, AVX512-BF16); the script prints which flags the CPU has.

Batches: pointflow, the shipped model at the shipped recipe's batch (32 shapes of 512 points
drawn from the model itself, in its normalised coordinates); prior, the shipped mel prior on 16
crops of 128 frames it generated; waveglow, the compact preset (untrained) on 8 segments of
16384 samples of chords.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core_vs_peers import cpu_model  # noqa: E402

BATCHES = {"pointflow": "32 shapes x 512 points", "prior": "16 mels x 128 frames",
           "waveglow": "8 segments x 16384 samples"}


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])
    return sorted(f for f in flags if f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile"))


def make(name: str) -> tuple[torch.nn.Module, dict]:
    """The model (train mode) and one batch."""
    torch.manual_seed(0)
    if name == "pointflow":
        from flowsuite.pointflow.model import PointFlowModel

        model = PointFlowModel.from_pretrained().float()
        cats = torch.arange(32) % len(model.categories)
        with torch.no_grad():
            pts = torch.cat([model.sample(int(c), count=1, points=512, seed=i)
                             for i, c in enumerate(cats)])
        return model.train(), {"points": pts.float(), "category": cats}
    if name == "prior":
        from flowsuite.core.checkpoint import load_model
        from flowsuite.data.pretrained import shipped_path

        model = load_model(shipped_path("mel-prior"), expected="mel-prior").float()
        with torch.no_grad():
            mel = model.sample(128, style=None, seed=0, batch=16)
        return model.train(), {"mel": mel.float(), "style": torch.full((16,), -1)}
    if name == "waveglow":
        from flowsuite.musicflow.waveglow import WaveGlow

        model = WaveGlow.from_preset("compact")
        t = torch.arange(16384) / 22050
        audio = torch.stack([sum(0.2 * torch.sin(2 * math.pi * f * (1 + i / 16) * t)
                                 for f in (220.0, 277.2, 329.6)) for i in range(8)])
        return model.train(), {"audio": audio}
    raise ValueError(name)


def run(name: str, rounds: int, steps: int) -> dict:
    model, batch = make(name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for bf16 in (False, True):  # warm-up: first calls, autocast caches, allocator
        step(bf16)
    for r in range(rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for bf16 in order:
            t0 = time.thread_time()
            for _ in range(steps):
                step(bf16)
            times["bf16" if bf16 else "fp32"].append((time.thread_time() - t0) / steps)
    model.eval()
    losses = {}
    for key, bf16 in (("fp32", False), ("bf16", True)):
        torch.manual_seed(1)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses[key] = float(model(batch)["loss"])
    fp32, bf16 = (statistics.median(times[k]) for k in ("fp32", "bf16"))
    return {"model": name, "batch": BATCHES[name],
            "step_ms_fp32": round(fp32 * 1e3, 1), "step_ms_bf16": round(bf16 * 1e3, 1),
            "speedup": round(fp32 / bf16, 2),
            "steps_ms_fp32_all": [round(t * 1e3, 1) for t in times["fp32"]],
            "steps_ms_bf16_all": [round(t * 1e3, 1) for t in times["bf16"]],
            "eval_loss_fp32": losses["fp32"], "eval_loss_bf16": losses["bf16"],
            "eval_loss_difference": losses["bf16"] - losses["fp32"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(BATCHES), choices=list(BATCHES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="Steps per timed block.")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {
        "command": "python bench/train_precision.py --models " + " ".join(args.models)
                   + f" --threads {args.threads} --rounds {args.rounds} --steps {args.steps}",
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{args.threads} thread(s)",
        "cpu_flags": cpu_flags(), "load_average_before": os.getloadavg(), "runs": []}
    print(results["machine"], "| bf16 hardware flags:", " ".join(results["cpu_flags"]) or "none")
    for name in args.models:
        r = run(name, args.rounds, args.steps)
        print(f"{name:10s} {r['batch']:28s} fp32 {r['step_ms_fp32']:8.1f} ms  "
              f"bf16 {r['step_ms_bf16']:8.1f} ms  {r['speedup']:.2f}x  eval loss "
              f"{r['eval_loss_fp32']:.4f} -> {r['eval_loss_bf16']:.4f}")
        results["runs"].append(r)
    results["load_average_after"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
