"""Does the mel prior generate note onsets? Temperatures, onset rates and likelihood by block kind.

For each prior (a run folder or a model file) and temperature it generates ``--count`` clips of
``--seconds`` (Griffin-Lim, seeds 0..count-1, random styles, as ``gen eval music`` does) and
reports ``gen eval music``'s distances to held-out clips of the test split (mel_fd, chroma_fd,
rhythm) and the onset rate (librosa onsets per second, the first rhythm statistic) of the
generated clips beside that of

* the held-out clips themselves, and
* the same held-out clips resynthesised by Griffin-Lim from their mels (what the vocoder keeps
  of real onsets: the fair ceiling for generated clips).

It also writes one spectrogram picture per prior (the first held-out clip, then one generated
clip per temperature) and, with ``--diagnose``, the model's teacher-forced NLL per mel value on
held-out steps split into onset steps (the step's mean rise in log-mel over the step before is in
the top 15%) and sustained steps (the rest):

    OMP_NUM_THREADS=1 python bench/prior_onsets.py --model /work/runs/prior-v1 \\
        --temperatures 0.5 0.7 0.9 1.0 --diagnose --pictures bench/results/prior_onsets \\
        --out bench/results/prior_onsets_v1.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from flowsuite.cli.common import model_file
from flowsuite.cli.music_cmds import _reference_clips
from flowsuite.musicflow.generator import MusicGenerator
from flowsuite.musicflow.metrics import clip_statistics, music_distances
from flowsuite.musicflow.preview import write_spectrograms
from flowsuite.musicflow.prior import MelPrior
from flowsuite.musicflow.prior_train import MelCorpus


def mel_onsets(mel: torch.Tensor, rate: float, threshold: float = 0.3, lag: int = 2,
               gap: int = 5) -> float:
    """Note onsets per second in a log-mel ``(n_mel, F)`` at ``rate`` frames/s: frames whose
    broadband rise (the mean over bands of the positive part of ``mel[t] - mel[t - lag]``, in
    nats) exceeds ``threshold`` and is the largest within ``gap`` frames either side. Unlike a
    normalised onset envelope, the fixed threshold does not find onsets in the small
    fluctuations of a drone."""
    m = mel.float()
    flux = (m[:, lag:] - m[:, :-lag]).clamp_min(0).mean(0)
    pad = torch.nn.functional.pad(flux[None, None], (gap, gap), value=-1.0)
    peak = torch.nn.functional.max_pool1d(pad, 2 * gap + 1, stride=1)[0, 0]
    hits = (flux >= threshold) & (flux >= peak)
    return float(hits.sum()) * rate / m.shape[1]


def summary(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}


def onset_rate(stats: dict[str, np.ndarray]) -> dict[str, float]:
    r = stats["rhythm"][:, 0]
    return {"mean": float(r.mean()), "min": float(r.min()), "max": float(r.max())}


@torch.no_grad()
def nll_by_kind(prior: MelPrior, corpus: MelCorpus, frames: int = 128, crops: int = 48,
                top: float = 0.15) -> dict[str, float]:
    """Teacher-forced NLL per normalised value of held-out steps (with the training's
    dequantisation noise, seeded, since the clamped silent bands make the noise-free density
    degenerate), split into onset steps and sustained steps; also the mean rise of the steps of
    each kind."""
    prior.eval()
    pairs = [(m.float(), lab) for m, lab in zip(corpus.mels, corpus.labels, strict=True)
             if m.shape[-1] >= frames]
    per_step, rise = [], []
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    for i in range(crops):
        m, label = pairs[i % len(pairs)]
        at = int(rng.integers(0, m.shape[-1] - frames + 1))
        mel = m[None, :, at:at + frames]
        x = prior.normalise(mel)
        x = x + prior.noise * torch.randn(x.shape, generator=g)
        steps = prior.to_steps(x)
        b, t, d = steps.shape
        inputs = torch.cat([prior.start.expand(b, 1, d), steps[:, :-1]], dim=1)
        out, _ = prior.rnn(inputs)
        style = torch.full((1,), label, dtype=torch.long)
        ctx = prior._context(out, style).reshape(t, -1)
        lp = prior.step_log_prob(steps.reshape(t, d), ctx)
        per_step.append((-lp / d).numpy())
        blocks = mel[0].T.reshape(t, prior.block, -1).mean(1)  # (t, n_mel) log-mel per step
        r = torch.zeros(t)
        r[1:] = (blocks[1:] - blocks[:-1]).clamp_min(0).mean(-1)
        rise.append(r.numpy())
    nll = np.concatenate([s[1:] for s in per_step])
    rs = np.concatenate([r[1:] for r in rise])
    cut = np.quantile(rs, 1 - top)
    on = rs >= cut
    return {"onset_nll": float(nll[on].mean()), "sustained_nll": float(nll[~on].mean()),
            "all_nll": float(nll.mean()), "onset_rise": float(rs[on].mean()),
            "sustained_rise": float(rs[~on].mean()), "onset_fraction": float(on.mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, type=Path)
    p.add_argument("--data", type=Path, default=Path("/work/data/music"))
    p.add_argument("--temperatures", type=float, nargs="*", default=[0.5],
                   help="none: only the --diagnose figures")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--diagnose", action="store_true")
    p.add_argument("--pictures", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    result: dict = {"machine": {"threads": torch.get_num_threads(),
                                "load_1min_start": os.getloadavg()[0]},
                    "count": a.count, "seconds": a.seconds, "models": {}}
    held = None
    for path in a.model:
        gen = MusicGenerator.from_pretrained(model_file(path), "griffin-lim")
        rate = gen.sample_rate
        front = gen.vocoder.mel.cpu()
        samples = round(a.seconds * rate)
        if held is None:
            held = _reference_clips(a.data, samples, 2 * a.count)
            ref = held[0::2]
            ref_stats = clip_statistics(ref, rate, front)
            with torch.no_grad():
                ref_mels = [front(torch.from_numpy(x)) for x in ref]
            resyn = [gen.vocode(m, samples) for m in ref_mels]
            fps = gen.prior.frames_per_second
            result["held_out_onset_rate"] = onset_rate(ref_stats)
            result["held_out_mel_onset_rate"] = summary([mel_onsets(m, fps) for m in ref_mels])
            result["held_out_griffin_lim_onset_rate"] = onset_rate(
                clip_statistics(resyn, rate, front))
            result["ideal"] = music_distances(clip_statistics(held[1::2], rate, front),
                                              ref_stats)
        row: dict = {}
        panels = [("held-out (test split)", ref_mels[0])]
        for temp in a.temperatures:
            clips, mels = [], []
            for i in range(a.count):
                mel = gen.generate_mel(a.seconds, i, temp)
                mels.append(mel)
                clips.append(gen.vocode(mel, samples, seed=i))
            stats = clip_statistics(clips, rate, front)
            row[str(temp)] = {**music_distances(stats, ref_stats),
                              "onset_rate": onset_rate(stats),
                              "mel_onset_rate": summary([mel_onsets(m, fps) for m in mels])}
            panels.append((f"{path.name} T={temp:g} seed 0", mels[0]))
            print(path, temp, row[str(temp)], flush=True)
        if a.diagnose:
            val = MelCorpus.from_folder(a.data, split="test")
            row["nll_by_kind"] = nll_by_kind(gen.prior, val)
            print(path, row["nll_by_kind"], flush=True)
        if a.pictures is not None and a.temperatures:
            a.pictures.mkdir(parents=True, exist_ok=True)
            write_spectrograms(a.pictures / f"{path.name}.png", panels, force=True)
        result["models"][str(path)] = row
    result["machine"]["load_1min_end"] = os.getloadavg()[0]
    result["wall_s"] = time.time() - t0
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "models"}, indent=2))


if __name__ == "__main__":
    main()
