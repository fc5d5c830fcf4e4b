"""The MAF's fused likelihood pass against the composed one, in one process on the same model,
across batch sizes: each layer's MADE and affine transform as one autograd node, and a run of
consecutive layers in a ``Compose`` as one node (``_MadeAffineChain``).

    python bench/maf_fused.py [--batches 64 128 256 512 2048] [--rounds 6] [--threads 1]

The model is `bench/core_vs_peers.py`'s MAF (8 steps, MADE hidden (64, 64), flat parameters),
trained with Adam on standard normal batches. Three copies start from the same seed:
``composed`` takes each layer's MADE module and packed affine transform (as before any fusion),
``per_layer`` fuses each layer on its own (``Compose`` calls the layers one by one), ``chain``
is the default (the eight layers as one node). Rounds rotate the order of the three; each round
times a few hundred steps (forward, backward, Adam) in thread CPU time. Prints and saves the
median step time of each and the speed-ups per batch size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from core_vs_peers import build_flowsuite, machine  # noqa: E402

from flowsuite.core import MaskedAutoregressive  # noqa: E402

ARMS = ("composed", "per_layer", "chain")


def make(arm: str):
    torch.manual_seed(0)
    flow, log_prob = build_flowsuite("maf", 8, 4.0)
    for m in flow.modules():
        if isinstance(m, MaskedAutoregressive):
            if arm == "composed":
                m._fusable = lambda x: False  # the MADE module and the packed affine transform
            elif arm == "per_layer":
                m._fusion_key = lambda x: None  # Compose calls each layer on its own
    return log_prob, torch.optim.Adam(flow.parameters(), lr=1e-3)


def run(batch: int, rounds: int) -> dict:
    x = torch.randn(batch, 2, generator=torch.Generator().manual_seed(batch))
    steps = max(30, 100_000 // batch)
    times: dict[str, list[float]] = {k: [] for k in ARMS}
    models = {k: make(k) for k in ARMS}
    for r in range(rounds):
        for arm in ARMS[r % 3:] + ARMS[:r % 3]:
            log_prob, opt = models[arm]

            def step(log_prob=log_prob, opt=opt) -> None:
                loss = -log_prob(x).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            for _ in range(10):
                step()
            t0 = time.thread_time()
            for _ in range(steps):
                step()
            times[arm].append((time.thread_time() - t0) / steps * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": batch, "steps_per_round": steps,
            **{f"step_ms_{k}": round(med[k], 3) for k in ARMS},
            "speedup_per_layer": round(med["composed"] / med["per_layer"], 3),
            "speedup_chain": round(med["composed"] / med["chain"], 3),
            "chain_over_per_layer": round(med["per_layer"] / med["chain"], 3),
            **{f"step_ms_{k}_all": [round(t, 3) for t in times[k]] for k in ARMS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512, 2048])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "maf_fused_cpu.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for batch in a.batches:
        row = run(batch, a.rounds)
        rows.append(row)
        print(f"batch {batch:5d}: composed {row['step_ms_composed']:.3f} ms, per layer "
              f"{row['step_ms_per_layer']:.3f} ms ({row['speedup_per_layer']:.3f}x), chain "
              f"{row['step_ms_chain']:.3f} ms ({row['speedup_chain']:.3f}x; "
              f"{row['chain_over_per_layer']:.3f}x per layer)", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"command": " ".join(sys.argv), "machine":
                                 machine(torch.device("cpu")), "results": rows}, indent=1))
    print(f"saved {a.out}")


if __name__ == "__main__":
    main()
