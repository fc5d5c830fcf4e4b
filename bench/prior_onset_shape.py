"""Why a gated prior's onsets are soft: the steps themselves, or the past they follow?

For each style a prior knows, on crops of held-out music (the test split of ``--data``) and on
free-running clips of the prior (``--temperature``; for a gated prior also at each of
``--onset-temperatures``, the latent temperature of the steps whose gate drew an onset, the
other steps keeping ``--temperature``: ``MelPrior.sample(onset_temperature=)``; each onset
step drawn once; ``generated_default``: as a gated prior draws by default, its onset steps
hot, each chosen among several draws):

* the **onsets**: the mel's onsets per second (``mel_onset_frames``), the largest one-frame
  broadband rise (``mel_rise`` at lag 1) within 3 frames of each (median over onsets), the
  share of the 7 frames' rise that this frame holds (how sharp the attack is), and the median
  one-frame rise away from onsets (the floor the onsets stand on);
* the **level**: the mean log-mel, its 10% quantile and the share of values below -7 nats
  (the dark floor between partials), and the broadband level after each onset relative to 4
  frames before it (at lags -1, 0, 2, 5, 10, 20 and 40 frames: how far the attack rises and how
  the note decays);
* **teacher-forced onset steps** (``--teacher-forced``): at every step of the held-out crops
  that holds an onset, the step drawn from the prior's onset mixture given the true past, with
  the largest one-frame rise within the step (from the true step before), the sum of its rises
  and the share of the largest, beside the true steps' (a prior that draws sharp attacks from
  a true past and soft ones on its own samples loses them to its drift, not to its fit).

    python bench/prior_onset_shape.py --model data/models/mel-prior.safetensors \\
        --data music8 --teacher-forced --onset-temperatures 0.7 1.0 \\
        --out bench/results/prior_onset_shape.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from bench_record import machine, save  # bench/, the script's own folder
from prior_drift import held_out_crops  # bench/, the script's own folder

from flowsuite.cli.common import model_file
from flowsuite.core.checkpoint import load_model
from flowsuite.musicflow.metrics import mel_onset_frames, mel_rise
from flowsuite.musicflow.prior import MelPrior
from flowsuite.musicflow.prior_train import MelCorpus

LAGS = (-1, 0, 2, 5, 10, 20, 40)
WINDOW = 3  # frames either side of an onset in which its attack is measured


def onset_shape(mel: torch.Tensor, fps: float) -> dict:
    """Onset and level statistics of log-mels ``(B, n_mel, F)`` (see the module's doc)."""
    mel = mel.float()
    onsets = mel_onset_frames(mel)
    rise = torch.nn.functional.pad(mel_rise(mel, 1), (1, 0))  # (B, F): one-frame rise
    level = mel.mean(1)
    near = torch.nn.functional.max_pool1d(onsets.float()[:, None], 2 * WINDOW + 1, 1,
                                          WINDOW)[:, 0] > 0
    peaks, shares, after = [], [], []
    for b, i in torch.nonzero(onsets).tolist():
        if WINDOW + 4 <= i < mel.shape[-1] - max(LAGS) - 1:
            w = rise[b, i - WINDOW:i + WINDOW + 1]
            peaks.append(float(w.max()))
            shares.append(float(w.max() / w.sum()))
            after.append([float(level[b, i + lag] - level[b, i - 4]) for lag in LAGS])
    q10 = float(torch.quantile(mel.flatten()[::7], 0.1))
    return {"onsets_per_s": round(float(onsets.sum()) / mel.shape[0] / (mel.shape[-1] / fps), 3),
            "attack": round(float(np.median(peaks)), 4) if peaks else 0.0,
            "attack_share": round(float(np.median(shares)), 4) if shares else 0.0,
            "floor_rise": round(float(rise[~near].median()), 4),
            "level_mean": round(float(mel.mean()), 3), "level_q10": round(q10, 3),
            "dark": round(float((mel < -7).float().mean()), 4),
            "after_onset": dict(zip(map(str, LAGS), np.round(np.mean(after, 0), 3).tolist(),
                                strict=True))
            if after else {}}


@torch.no_grad()
def teacher_forced(prior: MelPrior, crops: torch.Tensor, labels: torch.Tensor,
                   temperature: float, seed: int = 1) -> dict:
    """Onset steps drawn from the true past beside the true ones (see the module's doc)."""
    g = torch.Generator().manual_seed(seed)
    steps = prior.to_steps(prior.normalise(crops))
    b, t, d = steps.shape
    ctx = prior.teacher_forced_context(steps, labels)
    hit = prior.onset_labels(crops).bool()
    before = torch.cat([steps.new_zeros(b, 1, d), steps[:, :-1]], 1)[hit]
    drawn = prior.draw_step(ctx[hit], temperature, g, torch.ones(int(hit.sum())))[0]

    def rises(x: torch.Tensor) -> torch.Tensor:
        frames = torch.cat([before.view(-1, prior.block, prior.n_mel)[:, -1:],
                            x.view(-1, prior.block, prior.n_mel)], 1)
        frames = prior.denormalise(frames.transpose(1, 2))
        return (frames[..., 1:] - frames[..., :-1]).clamp_min(0).mean(1)  # (N, block)

    out = {"steps": int(hit.sum())}
    for name, x in (("true", steps[hit]), ("drawn", drawn)):
        r = rises(x)
        out[name] = {"attack": round(float(r.max(1).values.median()), 4),
                     "rise_sum": round(float(r.sum(1).median()), 4),
                     "attack_share": round(float((r.max(1).values / r.sum(1)).median()), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, type=Path)
    ap.add_argument("--data", type=Path, required=True, help="a music set (its test split)")
    ap.add_argument("--count", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--onset-temperatures", type=float, nargs="*", default=[],
                    help="latent temperatures of the onset steps (default: --temperature)")
    ap.add_argument("--teacher-forced", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    t0 = time.time()
    test = MelCorpus.from_folder(args.data, split="test")
    result: dict = {"data": str(args.data), "count": args.count, "seconds": args.seconds,
                    "temperature": args.temperature,
                    "machine": machine(), "models": {}}
    for path in args.model:
        prior = load_model(model_file(path), expected="mel-prior").float().eval()
        fps = prior.frames_per_second
        frames = int(args.seconds * fps) // prior.block * prior.block
        row = {}
        for style in prior.styles:
            crops, labels = held_out_crops(test, args.count, frames, args.seed,
                                           prior.styles.index(style))
            r: dict = {"held_out": onset_shape(crops, fps)}
            if args.teacher_forced and prior.gate is not None:  # draws from the onset mixture
                r["teacher_forced"] = teacher_forced(prior, crops, labels, args.temperature)
            gated = prior.gate is not None
            if gated:  # the prior's default onset draws (since 2026-12-08: hot, best of 4)
                r["generated_default"] = onset_shape(
                    prior.sample(frames, style=style, seed=args.seed, batch=args.count,
                                 temperature=args.temperature), fps)
            for onset_t in [None, *(args.onset_temperatures if gated else [])]:
                # one draw per onset step, at --temperature unless told (the plain draw)
                mel = prior.sample(frames, style=style, seed=args.seed, batch=args.count,
                                   temperature=args.temperature,
                                   onset_temperature=(args.temperature if onset_t is None
                                                      else onset_t), onset_choices=1)
                key = "generated" if onset_t is None else f"generated_onset_t{onset_t:g}"
                r[key] = onset_shape(mel, fps)
            row[style] = r
            print(path, style, json.dumps(r), flush=True)
        result["models"][str(path)] = row
    save(result, args.out, t0, indent=1)


if __name__ == "__main__":
    main()
