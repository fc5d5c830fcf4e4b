"""Does the mel prior generate note onsets? Temperatures, onset rates and likelihood by block kind.

For each prior (a run folder or a model file) and temperature it generates ``--count`` clips of
``--seconds`` (Griffin-Lim, seeds 0..count-1, random styles, as ``gen eval music`` does) and
reports ``gen eval music``'s distances to held-out clips of the test split (mel_fd, chroma_fd,
rhythm, tonality), the mean key stability (``musicflow.metrics.key_stability``) of the
generated and the held-out clips, and the onset rate (librosa onsets per second, the first rhythm
statistic) of the generated clips beside that of

* the held-out clips themselves, and
* the same held-out clips resynthesised by Griffin-Lim from their mels (what the vocoder keeps
  of real onsets: the fair ceiling for generated clips).

It also writes one spectrogram picture per prior (the first held-out clip, then one generated
clip per temperature) and, with ``--diagnose``, the NLL per mel value of every 128-frame crop of
the test and val splits, and the teacher-forced NLL of held-out steps split into onset steps (the
step's mean rise in log-mel over the step before is in the top 15%) and sustained steps (the
rest), with the other figures of :func:`nll_by_kind`:

    OMP_NUM_THREADS=1 python bench/prior_onsets.py --model /work/runs/prior-v1 \\
        --temperatures 0.5 0.7 0.9 1.0 --diagnose --pictures bench/results/prior_onsets \\
        --out bench/results/prior_onsets_v1.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from bench_record import machine, save  # bench/, the script's own folder

from flowsuite.cli.common import model_file
from flowsuite.cli.music_cmds import _reference_clips
from flowsuite.musicflow.generator import MusicGenerator
from flowsuite.musicflow.metrics import clip_statistics, mel_onset_frames, music_distances
from flowsuite.musicflow.preview import write_spectrograms
from flowsuite.musicflow.prior import MelPrior
from flowsuite.musicflow.prior_train import MelCorpus


def mel_onsets(mel: torch.Tensor, rate: float) -> float:
    """Note onsets per second in a log-mel ``(n_mel, F)`` at ``rate`` frames/s
    (:func:`~flowsuite.musicflow.metrics.mel_onset_frames`)."""
    return float(mel_onset_frames(mel).sum()) * rate / mel.shape[1]


def summary(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}


def onset_rate(stats: dict[str, np.ndarray]) -> dict[str, float]:
    r = stats["rhythm"][:, 0]
    return {"mean": float(r.mean()), "min": float(r.min()), "max": float(r.max())}


@torch.no_grad()
def split_nll(prior: MelPrior, corpus: MelCorpus, frames: int = 128) -> dict[str, object]:
    """NLL per mel value (nats, with the training's noise, seeded) of every whole crop of
    ``frames`` frames of each file: the mean over files and each file's figure. Styles are
    matched by name; a keyed prior reads each file's key (``corpus`` loaded with keys)."""
    prior.eval()
    g = torch.Generator().manual_seed(0)
    per = []
    keys = corpus.keys or [-1] * len(corpus.mels)
    for m, lab, key in zip(corpus.mels, corpus.labels, keys, strict=True):
        name = corpus.styles[lab] if lab >= 0 else None
        idx = prior.styles.index(name) if name in prior.styles else -1
        n = m.shape[-1] // frames
        crops = m[:, :n * frames].float().reshape(m.shape[0], n, frames).permute(1, 0, 2)
        x = prior.normalise(crops) + prior.noise * torch.randn(crops.shape, generator=g)
        labels = torch.full((n,), idx)
        if prior.keys:
            labels = prior.labels(labels, torch.full((n,), key))
        lp = (prior._log_prob_normalised(x, labels)
              - frames * torch.log(prior.std).sum())
        per.append(float(-lp.sum() / crops.numel()))
    return {"mean": float(np.mean(per)), "per_file": [round(v, 4) for v in per]}


def per_step_mel(prior: MelPrior, s: torch.Tensor) -> torch.Tensor:
    """Normalised steps ``(t, block * n_mel)`` -> the log-mel of each step ``(t, n_mel)``
    (mean over its frames)."""
    return prior.denormalise(prior.from_steps(s[None]))[0].T.reshape(
        s.shape[0], prior.block, -1).mean(1)


@torch.no_grad()
def nll_by_kind(prior: MelPrior, corpus: MelCorpus, frames: int = 128, crops: int = 48,
                top: float = 0.15) -> dict[str, float]:
    """Teacher-forced NLL per normalised value of held-out steps (with the training's
    dequantisation noise, seeded, since the clamped silent bands make the noise-free density
    degenerate), split into onset steps and sustained steps; also the mean rise of the steps of
    each kind, the share of steps where one step sampled at temperature 1 from the true past
    rises above the onset cut (and its correlation with the true rise), and for a mixture prior
    the mean responsibility of each component for steps of each kind."""
    prior.eval()
    pairs = [(m.float(), lab) for m, lab in zip(corpus.mels, corpus.labels, strict=True)
             if m.shape[-1] >= frames]
    per_step, rise, sampled, resp = [], [], [], []
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)  # the noise: the same for every model
    g_sample = torch.Generator().manual_seed(1)
    for i in range(crops):
        m, label = pairs[i % len(pairs)]
        at = int(rng.integers(0, m.shape[-1] - frames + 1))
        mel = m[None, :, at:at + frames]
        x = prior.normalise(mel)
        x = x + prior.noise * torch.randn(x.shape, generator=g)
        steps = prior.to_steps(x)
        b, t, d = steps.shape
        style = torch.full((1,), label, dtype=torch.long)
        ctx = prior.teacher_forced_context(steps, style).reshape(t, -1)
        lp = prior.step_log_prob(steps.reshape(t, d), ctx)
        per_step.append((-lp / d).numpy())
        blocks = per_step_mel(prior, steps[0])
        r = torch.zeros(t)
        r[1:] = (blocks[1:] - blocks[:-1]).clamp_min(0).mean(-1)
        rise.append(r.numpy())
        drawn = per_step_mel(prior, prior.sample_step(ctx, 1.0, g_sample)[0])
        r = torch.zeros(t)
        r[1:] = (drawn[1:] - blocks[:-1]).clamp_min(0).mean(-1)
        sampled.append(r.numpy())
        if prior.mixture is not None:
            z, _, flow_ctx = prior.step_latent(steps[0], ctx)
            logw, mean, log_scale = prior.mixture.params(flow_ctx)
            u = (z[:, None] - mean) * torch.exp(-log_scale)
            comp = -0.5 * (u * u).sum(-1) - log_scale.sum(-1)
            resp.append(torch.softmax(logw + comp, -1).numpy())
    nll = np.concatenate([s[1:] for s in per_step])
    rs = np.concatenate([r[1:] for r in rise])
    cut = np.quantile(rs, 1 - top)
    on = rs >= cut
    drawn = np.concatenate([r[1:] for r in sampled])
    out = {"onset_nll": float(nll[on].mean()), "sustained_nll": float(nll[~on].mean()),
           "all_nll": float(nll.mean()), "onset_rise": float(rs[on].mean()),
           "sustained_rise": float(rs[~on].mean()), "onset_fraction": float(on.mean()),
           "sampled_t1_above_cut": float((drawn >= cut).mean()),
           "sampled_t1_rise_correlation": float(np.corrcoef(drawn, rs)[0, 1])}
    if resp:
        rr = np.concatenate([x[1:] for x in resp])
        out["responsibility_onset"] = rr[on].mean(0).round(3).tolist()
        out["responsibility_sustained"] = rr[~on].mean(0).round(3).tolist()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, type=Path)
    p.add_argument("--data", type=Path, default=Path("/work/data/music"))
    p.add_argument("--temperatures", type=float, nargs="*", default=[0.5],
                   help="none: only the --diagnose figures")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--seed", type=int, default=0, help="clips use seeds seed .. seed+count-1")
    p.add_argument("--diagnose", action="store_true")
    p.add_argument("--pictures", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    result: dict = {"machine": machine(),
                    "count": a.count, "seconds": a.seconds, "seed": a.seed, "models": {}}
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
            result["held_out_key_stability"] = summary(ref_stats["tonality"][:, 0].tolist())
        row: dict = {}
        panels = [("held-out (test split)", ref_mels[0])]
        for temp in a.temperatures:
            clips, mels = [], []
            for i in range(a.count):
                mel = gen.generate_mel(a.seconds, a.seed + i, temp)
                mels.append(mel)
                clips.append(gen.vocode(mel, samples, seed=a.seed + i))
            stats = clip_statistics(clips, rate, front)
            row[str(temp)] = {**music_distances(stats, ref_stats),
                              "onset_rate": onset_rate(stats),
                              "mel_onset_rate": summary([mel_onsets(m, fps) for m in mels]),
                              "key_stability": summary(stats["tonality"][:, 0].tolist())}
            panels.append((f"{path.name} T={temp:g} seed 0", mels[0]))
            print(path, temp, row[str(temp)], flush=True)
        if a.diagnose:
            test = MelCorpus.from_folder(a.data, split="test", keys=gen.prior.keys)
            row["nll_by_kind"] = nll_by_kind(gen.prior, test)
            row["test_nll"] = split_nll(gen.prior, test)
            row["val_nll"] = split_nll(gen.prior, MelCorpus.from_folder(a.data, split="val",
                                                                        keys=gen.prior.keys))
            print(path, row["nll_by_kind"], row["test_nll"], row["val_nll"], flush=True)
        if a.pictures is not None and a.temperatures:
            a.pictures.mkdir(parents=True, exist_ok=True)
            write_spectrograms(a.pictures / f"{path.name}.png", panels, force=True)
        result["models"][str(path)] = row
    save(result, a.out, t0)
    print(json.dumps({k: v for k, v in result.items() if k != "models"}, indent=2))


if __name__ == "__main__":
    main()
