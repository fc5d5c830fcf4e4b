"""How a gated prior's onset options move its key, measured on many mels at once.

`gen eval music` compares vocoded clips with held-out audio, 8 clips per draw, so its key
stability moves by 0.05-0.1 between draws; choosing the onset options by it needs many draws.
This script asks the prior's mels directly, without a vocoder: for each style, ``--count``
crops of held-out music (the test split of ``--data``), a second set of crops (the ideal), and
``--count`` free-running clips for each ``--configs`` entry ``T:K`` (``MelPrior.sample(
onset_temperature=T, onset_choices=K)``; T ``-``: the gated prior's default onset temperature;
K ``auto``: the number of draws from the recent onset rate), each of ``--seconds``, the other
steps at ``--temperature`` (default: each style's, ``MelPrior.temperature_of``):

* ``key``: key stability (``chroma_key_stability``, the windows of ``key_stability``) of the
  mel's power per pitch class (``PitchMemory.power``: mel bands from 150 Hz to 5 kHz mapped by
  their centre frequency), mean and standard deviation over clips;
* ``mel_fd`` and ``chroma_fd``: Frechet distances of log-mel frames and of per-frame pitch-class
  shares against the held-out crops (every third frame);
* ``onset_fit``: at the steps whose mean frame rises by ``MEL_ONSET_RISE`` (the gate's label),
  how well the rise keeps to the pitch memory before it (``PitchMemory.fit``: the number the
  onset choice maximises), mean and quantiles, and the share of such steps;
* ``timing`` (``--time-repeats N``): seconds to sample one mel of ``--time-seconds`` (batch 1,
  the first style, seeds 0 to N-1) per configuration, each repeat of every configuration in
  turn; ``--count 0`` times only.

    python bench/prior_onset_choice.py --data music8 --count 96 \\
        --configs 0.7:1 1.3:1 1.3:2 1.3:3 1.3:4 1.3:8 \\
        --out bench/results/prior_onset_choice.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from bench_record import machine, save  # bench/, the script's own folder
from prior_drift import held_out_crops  # bench/, the script's own folder

from flowsuite.cli.common import model_file
from flowsuite.core.checkpoint import load_model
from flowsuite.musicflow.metrics import (
    KEY_MIN_LAG,
    KEY_WINDOW,
    chroma_key_stability,
    frechet_distance,
)
from flowsuite.musicflow.prior import DEFAULT_TEMPERATURE, MelPrior, PitchMemory
from flowsuite.musicflow.prior_train import MelCorpus

WARM_SECONDS = 1.0  # onsets before this much music has been heard are not scored


def onset_fits(prior: MelPrior, mel: torch.Tensor) -> tuple[np.ndarray, float]:
    """The fit of each onset step's rise to the pitch memory before it, for log-mels ``(N,
    n_mel, F)``, and the share of steps that are onsets."""
    memory, block = prior._pitch_memory(), prior.block
    n, _, f = mel.shape
    t_steps = f // block
    mel = mel[..., :t_steps * block].float()
    onset = prior.step_rises(prior.to_steps(prior.normalise(mel))).bool()
    power = memory.power(mel).view(n, t_steps, block, 12).mean(2)
    heard, out = torch.zeros(n, 12), []
    warm = max(1, int(WARM_SECONDS * prior.frames_per_second / block))
    for t in range(t_steps):
        if t >= warm:
            out += PitchMemory.fit(power[:, t] - power[:, t - 1], heard)[onset[:, t]].tolist()
        heard = memory.advance(heard, mel[..., t * block:(t + 1) * block])
    return np.asarray(out), float(onset.float().mean())


def _rows(x: torch.Tensor) -> np.ndarray:
    """``(N, F, D)`` -> every third of its ``N * F`` rows, float32 numpy."""
    return x.float().reshape(-1, x.shape[-1]).numpy()[::3]


def _shares(power: torch.Tensor) -> torch.Tensor:
    """Power per pitch class ``(..., 12)`` -> each row's shares of its sum."""
    return power / power.sum(-1, keepdim=True).clamp_min(1e-12)


def statistics(prior: MelPrior, mel: torch.Tensor, ref: torch.Tensor | None) -> dict:
    """The figures of the module's doc for log-mels ``(N, n_mel, F)`` against ``ref``."""
    power = prior._pitch_memory().power(mel.float())  # (N, F, 12)
    window = max(1, round(KEY_WINDOW * prior.frames_per_second))
    lag = math.ceil(KEY_MIN_LAG / KEY_WINDOW - 1e-9)
    keys = [chroma_key_stability(p.T.numpy(), window, lag) for p in power]
    fits, share = onset_fits(prior, mel)
    out = {"key": round(float(np.mean(keys)), 4), "key_sd": round(float(np.std(keys)), 4),
           "onset_fit_mean": round(float(fits.mean()), 4) if len(fits) else None,
           "onset_fit_q10_50_90": (np.quantile(fits, [0.1, 0.5, 0.9]).round(4).tolist()
                                   if len(fits) else None),
           "onset_share": round(share, 4)}
    if ref is not None:
        ref_power = prior._pitch_memory().power(ref.float())
        out["mel_fd"] = round(frechet_distance(_rows(mel.transpose(1, 2)),
                                               _rows(ref.transpose(1, 2))), 3)
        out["chroma_fd"] = round(frechet_distance(_rows(_shares(power)),
                                                  _rows(_shares(ref_power))), 5)
    return out


def _config(config: str) -> dict:
    """``T:K`` -> the sampling options it names (T ``-``: the prior's default onset
    temperature; K a number or ``auto``)."""
    t, k = config.split(":")
    return {"onset_temperature": None if t == "-" else float(t),
            "onset_choices": k if k == "auto" else int(k)}


def time_configs(prior: MelPrior, args: argparse.Namespace) -> dict:
    """Seconds per mel of ``--time-seconds`` for each configuration (see the module's doc)."""
    frames = round(args.time_seconds * prior.frames_per_second)
    style = prior.styles[0] if prior.styles else None
    times: dict[str, list[float]] = {c: [] for c in args.configs}
    for c in args.configs:  # a warm-up each
        prior.sample(frames // 8, style=style, seed=0, temperature=args.temperature, **_config(c))
    for r in range(args.time_repeats):
        for c in args.configs:
            tic = time.perf_counter()
            prior.sample(frames, style=style, seed=r, temperature=args.temperature, **_config(c))
            times[c].append(time.perf_counter() - tic)
    return {c: {"min": round(min(v), 3), "median": round(float(np.median(v)), 3),
                "all": [round(x, 3) for x in v]} for c, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=Path("data/models/mel-prior.safetensors"))
    ap.add_argument("--data", type=Path, required=True, help="a music set (its test split)")
    ap.add_argument("--count", type=int, default=96, help="clips per style and set")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--temperature", type=float, default=None,
                    help="the other steps' temperature (default: each style's, as gen music)")
    ap.add_argument("--configs", nargs="+", default=["0.7:1", "1.3:1", "1.3:4"],
                    help="onset temperature (- for the prior's default):onset choices")
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--time-repeats", type=int, default=0)
    ap.add_argument("--time-seconds", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    t0 = time.time()
    prior = load_model(model_file(args.model), expected="mel-prior").float().eval()
    if prior.gate is None:
        raise SystemExit(f"{args.model} has no onset gate: its onset steps have no options")
    test = MelCorpus.from_folder(args.data, split="test")
    frames = int(args.seconds * prior.frames_per_second) // prior.block * prior.block
    result: dict = {"model": str(args.model), "data": str(args.data), "count": args.count,
                    "seconds": args.seconds,
                    "temperature": (args.temperature if args.temperature is not None else
                                    {"by style": prior.temperatures,
                                     "else": DEFAULT_TEMPERATURE}),
                    "machine": machine(), "styles": {}}
    if args.time_repeats > 0:
        result["timing"] = time_configs(prior, args)
        print("timing", json.dumps(result["timing"]), flush=True)
    for style in (prior.styles if args.count > 0 else []):
        index = prior.styles.index(style)
        ref, _ = held_out_crops(test, args.count, frames, args.seed, index)
        ideal, _ = held_out_crops(test, args.count, frames, args.seed + 1, index)
        row = {"held_out": statistics(prior, ref, None), "ideal": statistics(prior, ideal, ref)}
        print(style, "held_out", json.dumps(row["held_out"]), "ideal", json.dumps(row["ideal"]),
              flush=True)
        for config in args.configs:
            tic = time.time()
            mel = torch.cat([prior.sample(frames, style=style, temperature=args.temperature,
                                          seed=args.seed + 1000 * i, batch=args.batch,
                                          **_config(config))
                             for i in range(-(-args.count // args.batch))])[:args.count]
            row[config] = statistics(prior, mel, ref) | {"seconds": round(time.time() - tic, 1)}
            print(style, config, json.dumps(row[config]), flush=True)
        result["styles"][style] = row
    save(result, args.out, t0, indent=1)


if __name__ == "__main__":
    main()
