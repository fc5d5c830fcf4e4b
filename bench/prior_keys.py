"""Does a keyed mel prior write in the key it is asked for?

For ``--keys`` keys drawn at random (seed 0) from the 24, it generates ``--per-key`` clips of
``--seconds`` in each (Griffin-Lim, random styles), estimates the key of every clip from its
audio (``musicflow.keys.estimate_key``, as training labels the data) and counts the clips in the
asked key, and those in the asked key's scale (its relative major or minor included: the same
pitch classes). Chance is 1 in 24 and 2 in 24.

    python bench/prior_keys.py --model runs/prior-keys --temperature 0.7 \\
        --out bench/results/prior_keys.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from flowsuite.cli.common import model_file
from flowsuite.musicflow.generator import MusicGenerator
from flowsuite.musicflow.keys import KEY_NAMES, estimate_key


def same_scale(a: int, b: int) -> bool:
    """Whether two keys share their pitch classes (equal, or relative major and minor)."""
    def major(k: int) -> int:
        return k % 12 if k < 12 else (k % 12 + 3) % 12
    return a >= 0 and b >= 0 and major(a) == major(b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--keys", type=int, default=12)
    p.add_argument("--per-key", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    t0 = time.time()
    gen = MusicGenerator.from_pretrained(model_file(a.model), "griffin-lim")
    if not gen.prior.keys:
        raise SystemExit(f"{a.model} was trained without keys")
    rng = np.random.default_rng(0)
    asked = rng.choice(len(KEY_NAMES), a.keys, replace=False).tolist()
    samples = round(a.seconds * gen.sample_rate)
    rows = []
    for i, k in enumerate(asked):
        for j in range(a.per_key):
            seed = 100 * i + j
            mel = gen.generate_mel(a.seconds, seed, a.temperature, key=k)
            found = estimate_key(gen.vocode(mel, samples, seed=seed), gen.sample_rate)
            rows.append({"asked": KEY_NAMES[k], "found": KEY_NAMES[found] if found >= 0 else
                         "none", "exact": found == k, "same_scale": same_scale(found, k)})
            print(f"{KEY_NAMES[k]:>9} -> {rows[-1]['found']}", flush=True)
    n = len(rows)
    result = {"model": str(a.model), "temperature": a.temperature, "seconds": a.seconds,
              "clips": n, "exact": sum(r["exact"] for r in rows),
              "same_scale": sum(r["same_scale"] for r in rows),
              "chance_exact": n / 24, "chance_same_scale": 2 * n / 24, "rows": rows,
              "threads": torch.get_num_threads(), "wall_s": time.time() - t0}
    print(f"in the asked key: {result['exact']} of {n} (chance {n / 24:.1f}); in its scale: "
          f"{result['same_scale']} of {n} (chance {2 * n / 24:.1f})")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
