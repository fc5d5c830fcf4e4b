"""The MAF layer's fused likelihood pass (``_MadeAffine``) against the composed one, in one
process on the same model, across batch sizes.

    python bench/maf_fused.py [--batches 64 128 256 512 2048] [--rounds 6] [--threads 1]

The model is `bench/core_vs_peers.py`'s MAF (8 steps, MADE hidden (64, 64), flat parameters),
trained with Adam on standard normal batches. Two copies start from the same seed; one has the
fused pass switched off (its layers take the MADE module and the packed affine transform, as
before ``_MadeAffine``). Rounds alternate between the two; each round times a few hundred
steps (forward, backward, Adam) in thread CPU time. Prints and saves the median step time of
each and their ratio per batch size.
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


def make(fused: bool):
    torch.manual_seed(0)
    flow, log_prob = build_flowsuite("maf", 8, 4.0)
    if not fused:
        for m in flow.modules():
            if isinstance(m, MaskedAutoregressive):
                m._fusable = lambda x: False  # the composed path, as before the fused one
    return log_prob, torch.optim.Adam(flow.parameters(), lr=1e-3)


def run(batch: int, rounds: int) -> dict:
    x = torch.randn(batch, 2, generator=torch.Generator().manual_seed(batch))
    steps = max(30, 100_000 // batch)
    times: dict[str, list[float]] = {"composed": [], "fused": []}
    models = {k: make(k == "fused") for k in times}
    for r in range(rounds):
        for kind in (("composed", "fused") if r % 2 == 0 else ("fused", "composed")):
            log_prob, opt = models[kind]

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
            times[kind].append((time.thread_time() - t0) / steps * 1e3)
    composed, fused = (statistics.median(times[k]) for k in ("composed", "fused"))
    return {"batch": batch, "steps_per_round": steps, "step_ms_composed": round(composed, 3),
            "step_ms_fused": round(fused, 3), "speedup": round(composed / fused, 3),
            "step_ms_composed_all": [round(t, 3) for t in times["composed"]],
            "step_ms_fused_all": [round(t, 3) for t in times["fused"]]}


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
        print(f"batch {batch:5d}: composed {row['step_ms_composed']:.3f} ms, fused "
              f"{row['step_ms_fused']:.3f} ms per step, {row['speedup']:.3f}x", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"command": " ".join(sys.argv), "machine":
                                 machine(torch.device("cpu")), "results": rows}, indent=1))
    print(f"saved {a.out}")


if __name__ == "__main__":
    main()
