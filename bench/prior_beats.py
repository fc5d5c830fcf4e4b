"""Does the mel prior know where the beat falls, and do its samples keep one?

Three measurements, on a music set whose manifest lists the beats of the scores (`gen data
music`), each optional:

* ``--hazard MODEL`` (any prior): how well each step's onset (`MelPrior.onset_labels`) can be
  told from the prior's teacher-forced context (the GRU's summary), from the score's clock (the
  phase of the beat and the tempo, ``clock_features``), and from both: logistic regressions fitted
  on crops of four fifths of the training files, scored (log loss, AUC) on the other fifth.
* ``--gated MODEL`` (a prior trained with ``--beats``): its onset gate on held-out crops (the val
  and test splits) given the scores' clock, that clock an eighth of a beat off, the clock of
  beats tracked in the audio (``track_beats``, what a plain folder of audio trains with) and no
  clock.
* ``--draws MODEL`` (a gated prior): free-running clips per style, with the onset label the gate
  drew at every step (at each of ``--gate-temperatures``): how often it draws one, how often a
  drawn onset is one in the mel, and the pulse clarity (`musicflow.metrics.pulse_clarity`) of
  the drawn labels, of the mel's onset labels and of the mel's broadband rise; the same for
  crops of held-out music beside them (the test split of ``--reference``, by default
  ``--data``).

    git show feb6609:data/models/mel-prior.safetensors > stage3.safetensors  # before the gate
    python bench/prior_beats.py --data music-beats --hazard stage3.safetensors \\
        --gated runs/prior-beats --draws runs/prior-beats --reference music8 \\
        --gate-temperatures 1 0.5 0.3 --out bench/results/prior_beats.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from bench_record import machine, save  # bench/, the script's own folder
from torch.utils.data import default_collate

from flowsuite.core.checkpoint import load_model, model_file
from flowsuite.musicflow.metrics import mel_rise, pulse_clarity
from flowsuite.musicflow.prior import (
    DEFAULT_GATE_TEMPERATURE,
    MelPrior,
    clock_features,
    track_beats,
)
from flowsuite.musicflow.prior_train import MelCorpus, MelCrops


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    ranks = np.empty(len(score))
    ranks[np.argsort(score)] = np.arange(len(score))
    pos = label == 1
    return float((ranks[pos].mean() - (pos.sum() - 1) / 2) / (~pos).sum())


def _scores(logit: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
    ll = torch.nn.functional.binary_cross_entropy_with_logits(logit, label).item()
    p = label.mean().item()
    constant = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    return {"log_loss": round(ll, 4), "constant_log_loss": round(float(constant), 4),
            "auc": round(_auc(logit.numpy(), label.numpy()), 3)}


@torch.no_grad()
def hazard(prior: MelPrior, data: Path, frames: int = 512, per_file: int = 3) -> dict:
    """Logistic regressions of each step's onset on the context, the clock and both."""
    corpus = MelCorpus.from_folder(data, split="train", beats=True)
    rng = np.random.default_rng(0)
    ctx, clock, label, group = [], [], [], []
    hidden = prior.rnn.hidden_size
    for i, mel in enumerate(corpus.mels):
        if mel.shape[-1] < frames or len(corpus.beats[i]) < 2:
            continue
        for _ in range(per_file):
            at = int(rng.integers(0, mel.shape[-1] - frames + 1))
            x = mel[:, at:at + frames].float()[None]
            y = prior.onset_labels(x)[0]
            c = prior.teacher_forced_context(prior.to_steps(prior.normalise(x)),
                                             torch.tensor([corpus.labels[i]]))[0]
            ctx.append(c[:, :hidden])
            clock.append(clock_features(corpus.clock(i, at, frames)[::prior.block]))
            label.append(y)
            group.append(np.full(len(y), i))
    ctx_t, clock_t, y = torch.cat(ctx), torch.cat(clock), torch.cat(label)
    groups = np.concatenate(group)
    files = np.unique(groups)
    rng.shuffle(files)
    test = torch.from_numpy(np.isin(groups, files[: len(files) // 5]))

    def fit(feats: torch.Tensor) -> dict[str, float]:
        mu, sd = feats[~test].mean(0), feats[~test].std(0) + 1e-6
        f = (feats - mu) / sd
        w = torch.zeros(f.shape[1], requires_grad=True)
        b = torch.zeros((), requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=300)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                f[~test] @ w + b, y[~test]) + 1e-3 * (w * w).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        return _scores((f[test] @ w + b).detach(), y[test])

    return {"steps": len(y), "onset_share": round(y.mean().item(), 4),
            "context": fit(ctx_t), "clock": fit(clock_t),
            "context_and_clock": fit(torch.cat([ctx_t, clock_t], 1))}


@torch.no_grad()
def gated(prior: MelPrior, data: Path, frames: int = 256) -> dict:
    """The gate's log loss and AUC on held-out crops with the true, a shifted and no clock."""
    out = {}
    for split in ("val", "test"):
        corpus = MelCorpus.from_folder(data, split=split, beats=True)
        crops = MelCrops(corpus, frames, random=False, limit=64)
        batch = default_collate([crops[i] for i in range(len(crops))])
        mel, clock = batch["mel"], batch["beat"]
        steps = prior.to_steps(prior.normalise(mel))
        ctx = prior.teacher_forced_context(steps, batch["style"])
        history = prior.rise_history(prior.step_rises(steps))
        y = prior.onset_labels(mel).flatten()
        shifted = clock.clone()
        shifted[..., 0] = torch.remainder(shifted[..., 0] + 0.125, 1.0)
        tracked = MelCorpus(corpus.mels, corpus.labels, corpus.styles, beats=[
            track_beats(m.float(), prior.frames_per_second).numpy() for m in corpus.mels])
        tracked_crops = MelCrops(tracked, frames, random=False, limit=64)
        tracked_clock = torch.stack([tracked_crops[i]["beat"] for i in range(len(crops))])
        out[split] = {name: _scores(prior.gate_logits(
            ctx, None if c is None else prior.step_clock(c, frames), history).flatten().float(), y)
            for name, c in (("true_clock", clock), ("clock_eighth_beat_off", shifted),
                            ("tracked_clock", tracked_clock), ("no_clock", None))}
    return out


def _label_pulse(labels: torch.Tensor, prior: MelPrior) -> float:
    """Mean pulse clarity of per-step labels ``(B, T)``, each held for its step's frames."""
    return round(float(np.mean([pulse_clarity(lab.repeat_interleave(prior.block).numpy(),
                                              prior.frames_per_second) for lab in labels])), 4)


def _pulses(mel: torch.Tensor, prior: MelPrior) -> dict[str, float]:
    """Pulse clarity of the onset labels and of the broadband rise of log-mels (B, n_mel, F)."""
    fps = prior.frames_per_second
    labels = prior.onset_labels(mel)
    return {"onset_labels": _label_pulse(labels, prior),
            "mel_rise": round(float(np.mean([pulse_clarity(r.numpy(), fps)
                                             for r in mel_rise(mel)])), 4),
            "mel_onsets_per_s": round(labels.sum().item() / (mel.shape[0] * mel.shape[-1] / fps),
                                      3)}


@torch.no_grad()
def draws(prior: MelPrior, reference: Path, count: int, seconds: float, temperature: float,
          gate_temperature: float) -> dict:
    """Free-running clips per style with the gate's drawn labels (at ``gate_temperature``), and
    held-out crops (the first ``seconds`` of each test file of ``reference`` of that style)."""
    fps = prior.frames_per_second
    frames = int(seconds * fps) // prior.block * prior.block
    held = MelCorpus.from_folder(reference, split="test")
    out = {}
    for k, style in enumerate(prior.styles):
        g = torch.Generator().manual_seed(k)
        state = prior.initial_state(count, style, generator=g, gate_temperature=gate_temperature)
        xs, drawn = [], []
        for _ in range(frames // prior.block):
            x, _, state = prior.step(state, temperature, g)
            xs.append(x)
            drawn.append(state.onset)
        mel = prior.denormalise(prior.from_steps(torch.stack(xs, 1)))
        o = torch.stack(drawn, 1)
        labels = prior.onset_labels(mel)
        ref = [m[:, :frames].float() for m, lab in zip(held.mels, held.labels, strict=True)
               if held.styles[lab] == style and m.shape[-1] >= frames]
        out[style] = {
            "tempo": round(state.clock[0, 1].item(), 1) if state.clock is not None else None,
            "drawn_onset_share": round(o.mean().item(), 4),
            "mel_onset_when_drawn": round(labels[o == 1].mean().item(), 3),
            "mel_onset_when_not": round(labels[o == 0].mean().item(), 4),
            "pulse_of_drawn_labels": _label_pulse(o, prior),
            "generated": _pulses(mel, prior),
            "held_out": _pulses(torch.stack(ref), prior) if ref else None,
            "held_out_clips": len(ref)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a music set with beats")
    ap.add_argument("--hazard", help="a prior: onsets from its context, the clock, both")
    ap.add_argument("--gated", help="a prior trained with --beats: its gate on held-out crops")
    ap.add_argument("--draws", help="a prior trained with --beats: free-running clips")
    ap.add_argument("--reference", type=Path, help="music set whose test split --draws is "
                    "compared with (default: --data)")
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--gate-temperatures", type=float, nargs="+",
                    default=[DEFAULT_GATE_TEMPERATURE], help="for --draws")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    result: dict = {"data": str(args.data), "machine": machine()}
    start = time.time()
    for key, fn in (("hazard", hazard), ("gated", gated), ("draws", None)):
        path = getattr(args, key)
        if path is None:
            continue
        path = str(model_file(path))
        prior = load_model(path, expected="mel-prior").float().eval()
        found = ({f"gate_temperature_{t:g}": draws(
                      prior, args.reference or args.data, args.count, args.seconds,
                      args.temperature, t) for t in args.gate_temperatures}
                 if fn is None else fn(prior, args.data))
        result[key] = {"model": path, **found}
        print(key, json.dumps(result[key], indent=1), flush=True)
    save(result, args.out, start, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
