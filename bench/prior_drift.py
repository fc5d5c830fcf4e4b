"""Does a mel prior keep the spectral detail of music while it runs on its own samples?

Held-out music has sharp partials: neighbouring mel bands differ a lot within a frame. This
script measures that **band contrast** (the mean over frames and neighbouring band pairs of
``|mel[b + 1] - mel[b]|``, in nats of log-mel) for, per prior:

* ``truth``: held-out continuations (the test split), the target;
* ``teacher_forced``: one step sampled from the context of the true past (what training sees);
* ``primed``: free-running continuations of 2 s of held-out music, per 0.5 s window, so the
  drift away from the truth is visible as it happens;
* ``unprimed``: free-running clips from the start vector, per 5 s window up to ``--seconds``;

at each ``--temperatures``, with the curvature across bands, the log-mel level (mean and
10/50/90% quantiles), the share of values below -7 (dark), the median level per window (a prior
that brightens as it runs climbs window by window), the mel onset rate (`prior_onsets.py`'s
``mel_onsets``) and the pulse clarity of the mel's broadband rise beside it. ``--by-style``
measures each style the prior knows on its own: crops of that style's held-out files, primed
and unprimed samples asked for that style. A prior whose
teacher-forced steps keep the truth's contrast but whose free-running steps lose it within a
second or two suffers from exposure bias (it never read its own samples in training), which
``gen train prior --self-feed``, ``--rollout`` and ``--context-smear`` address
(BENCHMARKS.md, "Why the notes smear").

    OMP_NUM_THREADS=1 python bench/prior_drift.py --model data/models/mel-prior.safetensors \\
        --model /work/runs/prior-c4k --out bench/results/prior_drift.json
    python bench/prior_drift.py --model data/models/mel-prior.safetensors --data music8 \\
        --by-style --temperatures 0.7 --count 12 --continue-seconds 8 --seconds 12 \\
        --out bench/results/prior_drift_styles.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from bench_record import machine, save  # bench/, the script's own folder
from prior_onsets import mel_onsets  # bench/, the script's own folder

from flowsuite.cli.common import model_file
from flowsuite.core.checkpoint import load_model
from flowsuite.musicflow.metrics import mel_rise, pulse_clarity
from flowsuite.musicflow.prior import MelPrior
from flowsuite.musicflow.prior_train import MelCorpus


def band_contrast(mel: torch.Tensor) -> torch.Tensor:
    """``(B, n_mel, F)`` log-mels -> the mean ``|mel[b + 1] - mel[b]|`` of each frame ``(F,)``,
    averaged over the batch."""
    return (mel[:, 1:] - mel[:, :-1]).abs().mean(1).mean(0)


def level(mel: torch.Tensor) -> dict[str, float]:
    """Band contrast; curvature, the mean ``|mel[b + 1] - 2 mel[b] + mel[b - 1]|`` (narrow
    partials curve sharply, a ripple across bands too); the level's mean and 10/50/90%
    quantiles (a raised floor between partials lifts q10 and the median); the share of values
    below -7 nats."""
    q = torch.quantile(mel.flatten()[::7].float(), torch.tensor([0.1, 0.5, 0.9]))
    return {"contrast": round(float(band_contrast(mel).mean()), 4),
            "curvature": round(float((mel[:, 2:] - 2 * mel[:, 1:-1] + mel[:, :-2]).abs().mean()),
                               4),
            "mean": round(float(mel.mean()), 3),
            "q10_q50_q90": [round(float(v), 3) for v in q],
            "dark": round(float((mel < -7).float().mean()), 4)}


def windows(curve: torch.Tensor, width: int) -> list[float]:
    n = curve.shape[0] // width
    return [round(float(curve[k * width:(k + 1) * width].mean()), 4) for k in range(n)]


def level_windows(mel: torch.Tensor, width: int) -> list[float]:
    """The median log-mel of each window of ``width`` frames over the batch ``(B, n_mel, F)``."""
    n = mel.shape[-1] // width
    return [round(float(mel[..., k * width:(k + 1) * width].median()), 3) for k in range(n)]


def mel_onset_rate(mel: torch.Tensor, fps: float) -> float:
    """Mean mel onsets per second over the clips of ``(B, n_mel, F)``."""
    return round(float(np.mean([mel_onsets(m, fps) for m in mel])), 3)


def mel_pulse_clarity(mel: torch.Tensor, fps: float) -> float:
    """`gen eval music`'s pulse clarity (:func:`~flowsuite.musicflow.metrics.pulse_clarity`)
    of the mel itself, no vocoder: of its broadband rise (the mean over bands of the positive
    part of ``mel[t] - mel[t - 2]``); the mean over the clips of ``(B, n_mel, F)``."""
    return round(float(np.mean([pulse_clarity(r.numpy(), fps) for r in mel_rise(mel)])), 4)


def held_out_crops(corpus: MelCorpus, count: int, frames: int, seed: int = 0,
                   style: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random crops of ``frames`` frames (log-mel) of the corpus (of its files of
    ``style``, an index of ``corpus.styles``, when given) and their styles."""
    rng = np.random.default_rng(seed)
    pairs = [(m.float(), lab) for m, lab in zip(corpus.mels, corpus.labels, strict=True)
             if m.shape[-1] > frames and (style is None or lab == style)]
    if not pairs:
        raise SystemExit(f"no held-out file of {frames} frames or more"
                         + ("" if style is None else f" of style {corpus.styles[style]}"))
    crops, labels = [], []
    for i in range(count):
        m, lab = pairs[i % len(pairs)]
        at = int(rng.integers(0, m.shape[-1] - frames))
        crops.append(m[:, at:at + frames])
        labels.append(lab)
    return torch.stack(crops), torch.tensor(labels)


@torch.no_grad()
def teacher_forced(prior: MelPrior, crops: torch.Tensor, labels: torch.Tensor,
                   temperature: float, seed: int = 1) -> torch.Tensor:
    """One step sampled per position from the context of the true past, as log-mel (floored
    as sampling floors it)."""
    g = torch.Generator().manual_seed(seed)
    steps = prior.to_steps(prior.normalise(crops))
    b, t, d = steps.shape
    ctx = prior.teacher_forced_context(steps, labels).reshape(b * t, -1)
    x = prior.draw_step(ctx, temperature, g)[0].view(b, t, d)
    return prior.denormalise(prior.from_steps(x))


def measure(prior: MelPrior, test: MelCorpus, temperatures: list[float], count: int,
            seconds: float, continue_seconds: float = 6.0, style: str | None = None) -> dict:
    fps = prior.frames_per_second
    prime_frames = int(2 * fps) // prior.block * prior.block
    cont = int(continue_seconds * fps) // prior.block * prior.block
    crops, labels = held_out_crops(test, count, prime_frames + cont,
                                   style=None if style is None else test.styles.index(style))
    if style is not None:
        labels = torch.full_like(labels, prior.styles.index(style))
    elif prior.styles:
        labels = torch.where(labels < 0, 0, labels)
    else:
        labels = torch.full_like(labels, -1)
    half, two = int(0.5 * fps), int(2 * fps)
    truth = crops[:, :, prime_frames:]
    row: dict = {"truth": {**level(truth), "primed_windows": windows(band_contrast(truth), half),
                           "level_windows": level_windows(truth, two),
                           "onsets_per_s": mel_onset_rate(truth, fps),
                           "pulse_clarity": mel_pulse_clarity(truth, fps)}}
    for temp in temperatures:
        tf = teacher_forced(prior, crops, labels, temp)
        g = torch.Generator().manual_seed(0)
        state = prior.initial_state(count, None, crops[:, :, :prime_frames], g)
        state = dataclasses.replace(state, style=labels)
        primed = torch.cat([m for m, _, _ in prior.stream(cont, state, temp, g)], -1)
        free = prior.sample(int(seconds * fps), style=style, temperature=temp, seed=0,
                            batch=count)
        row[str(temp)] = {
            "teacher_forced": level(tf[:, :, prior.block:]),
            "primed": {**level(primed), "windows": windows(band_contrast(primed), half),
                       "level_windows": level_windows(primed, two),
                       "onsets_per_s": mel_onset_rate(primed, fps),
                       "pulse_clarity": mel_pulse_clarity(primed, fps)},
            "unprimed": {**level(free), "windows": windows(band_contrast(free), int(5 * fps)),
                         "level_windows": level_windows(free, two),
                         "onsets_per_s": mel_onset_rate(free, fps),
                         "pulse_clarity": mel_pulse_clarity(free, fps)},
        }
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, type=Path)
    p.add_argument("--data", type=Path, default=Path("/work/data/music"))
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.9])
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30.0, help="length of unprimed clips")
    p.add_argument("--continue-seconds", type=float, default=6.0,
                   help="length of the primed continuations (after 2 s of held-out music)")
    p.add_argument("--by-style", action="store_true",
                   help="measure each style the prior knows on its own")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    t0 = time.time()
    test = MelCorpus.from_folder(a.data, split="test")
    result: dict = {"machine": machine(),
                    "count": a.count, "seconds": a.seconds, "models": {}}
    for path in a.model:
        prior = load_model(model_file(path), expected="mel-prior").float().eval()
        if a.by_style:
            row = {name: measure(prior, test, a.temperatures, a.count, a.seconds,
                                 a.continue_seconds, name) for name in prior.styles}
        else:
            row = measure(prior, test, a.temperatures, a.count, a.seconds, a.continue_seconds)
        result["models"][str(path)] = row
        print(path, json.dumps(row), flush=True)
    save(result, a.out, t0)


if __name__ == "__main__":
    main()
