"""Mel prior designs on the rendered music set, one CPU thread: frame steps against block steps,
and the size of the recurrent context.

Each design is trained from scratch for the same number of steps (``--steps``; equal steps
rather than equal time, because the shared machine's load makes time budgets unrepeatable) on
random crops of the first ``--train-files`` files of the music set's train split (batch 16, 128
frames, AdamW 1e-3 with 50 warm-up steps, gradient clipping at 1), then measured:

* ``val_nll``: negative log-likelihood per mel value (nats) on fixed crops of the val split;
* ``mel_fd``: Frechet distance between log-mel frames sampled at temperature 0.5 (or each of
  ``--temperatures``), ``--samples`` clips of 6 s with random styles, and frames of the test
  split (the spectrogram alone, no vocoder, so the figure measures the prior only);
  ``test_vs_test_mel_fd`` is the same distance between two halves of the test split (the
  ideal);
* ``s_per_step``: seconds per training step; ``sample_s_per_10s``: seconds to sample 10 s of
  mel (both on one thread of a shared machine: compare within a run).

    OMP_NUM_THREADS=1 python bench/music_prior.py --data /work/data/music \\
        --designs frame1 block2 block4 --steps 200 --out bench/results/music_prior_steps.json

With ``--time-music PRIOR VOCODER`` it instead times ``gen music --seconds 10`` end to end (a
fresh process each time, so imports and model loading count) with 1 and 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import musicflow_speed as speed_bench  # bench/ is on the path when this file runs
import numpy as np
import torch

from flowsuite.musicflow.metrics import frechet_distance
from flowsuite.musicflow.prior import PRESETS, MelPrior
from flowsuite.musicflow.prior_train import MelCorpus, MelCrops

SMALL = PRESETS["small"]
DESIGNS: dict[str, dict] = {
    "frame1": {**SMALL, "block": 1},
    "block2": {**SMALL, "block": 2},
    "block4": {**SMALL, "block": 4},
    "block8": {**SMALL, "block": 8},
    "block4-h128": {**SMALL, "block": 4, "hidden": 128},
    "block4-h512": {**SMALL, "block": 4, "hidden": 512},
    "block4-2layers": {**SMALL, "block": 4, "rnn_layers": 2},
    "block4-spline": {**SMALL, "block": 4, "coupling": "spline"},
}


def machine() -> dict:
    return {**speed_bench.machine(), "threads": torch.get_num_threads(),
            "load_1min": os.getloadavg()[0]}


def batches(crops: MelCrops, batch: int, seed: int):
    g = np.random.default_rng(seed)
    while True:
        items = [crops[int(i)] for i in g.integers(0, len(crops), batch)]
        yield {"mel": torch.stack([it["mel"] for it in items]),
               "style": torch.tensor([it["style"] for it in items])}


def train(model: MelPrior, crops: MelCrops, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    it = batches(crops, 16, seed)
    model.train()
    with torch.no_grad():
        model(next(it))  # ActNorm's data-dependent initialisation
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 1e-3 * min(1.0, (step + 1) / 50)
        loss = model(next(it))["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return (time.perf_counter() - t0) / steps


@torch.no_grad()
def val_nll(model: MelPrior, crops: MelCrops) -> float:
    model.eval()
    losses = [float(model({"mel": crops[i]["mel"][None],
                           "style": torch.tensor([crops[i]["style"]])})["loss"])
              for i in range(len(crops))]
    return float(np.mean(losses))


def test_frames(test: MelCorpus, frames: int, count: int, offset: int = 0) -> np.ndarray:
    picks = np.linspace(0, len(test.mels) - 1, 2 * count).round().astype(int)[offset::2]
    out = []
    for k, i in enumerate(picks):
        m = test.mels[i]
        at = (k * 997) % max(1, m.shape[-1] - frames)
        out.append(m[:, at:at + frames].float().T.numpy())
    return np.concatenate(out)


def time_music(prior: Path, vocoder: Path, repeats: int, out: Path | None) -> None:
    gen = Path(sys.executable).with_name("gen")
    rows = []
    for threads in (1, 2):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        times = []
        for i in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                subprocess.run([str(gen), "music", "--seconds", "10", "--model", str(prior),
                                "--vocoder", str(vocoder), "--device", "cpu", "--seed", str(i),
                                "--out", f"{tmp}/m.wav"], check=True, env=env,
                               capture_output=True)
                times.append(time.perf_counter() - t)
        rows.append({"threads": threads, "seconds": times, "best": min(times),
                     "median": sorted(times)[len(times) // 2]})
        print(f"gen music --seconds 10, {threads} thread(s): best {min(times):.2f} s, median "
              f"{rows[-1]['median']:.2f} s over {repeats}", flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": machine(), "prior": str(prior),
                                   "vocoder": str(vocoder), "runs": rows}, indent=2) + "\n")
        print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/data/music"))
    ap.add_argument("--designs", nargs="+", default=["frame1", "block4"], choices=list(DESIGNS))
    ap.add_argument("--steps", type=int, default=250, help="training steps per design")
    ap.add_argument("--train-files", type=int, default=40,
                    help="train-split files used (their mels are kept in memory)")
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.5],
                    help="sampling temperatures for mel_fd (the first 0.5 is the headline)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--time-music", nargs=2, type=Path, metavar=("PRIOR", "VOCODER"),
                    default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.time_music is not None:
        time_music(*args.time_music, args.repeats, args.out)
        return
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    corpus = MelCorpus.from_folder(args.data, split="train", min_frames=128)
    corpus = MelCorpus(corpus.mels[:args.train_files], corpus.labels[:args.train_files],
                       corpus.styles)
    val = MelCorpus.from_folder(args.data, split="val", min_frames=128)
    test = MelCorpus.from_folder(args.data, split="test", min_frames=128)
    mel_seconds = time.perf_counter() - t0
    stats = corpus.band_stats()
    crops, val_crops = MelCrops(corpus, 128), MelCrops(val, 128, random=False, limit=48)
    frames6 = 6 * 86
    ref = test_frames(test, frames6, args.samples)
    ideal = frechet_distance(test_frames(test, frames6, args.samples, 1), ref)
    print(f"mels of {len(corpus.mels)} train files ({corpus.frames} frames) + val + test in "
          f"{mel_seconds:.0f} s; test-vs-test mel_fd {ideal:.2f}")

    results = []
    for name in args.designs:
        torch.manual_seed(args.seed)
        model = MelPrior(**DESIGNS[name], styles=corpus.styles, **stats)
        s_per_step = train(model, crops, args.steps, args.seed)
        nll = val_nll(model, val_crops)
        model.eval()
        t = time.perf_counter()
        model.sample(862, seed=0)
        sample_s = time.perf_counter() - t
        fds = {}
        for temp in args.temperatures:
            mels = [model.sample(frames6, seed=1 + i, temperature=temp)[0].T.numpy()
                    for i in range(args.samples)]
            fds[temp] = frechet_distance(np.concatenate(mels), ref)
        fd = fds.get(0.5, next(iter(fds.values())))
        row = {"design": name, "config": DESIGNS[name],
               "parameters": sum(p.numel() for p in model.parameters()), "steps": args.steps,
               "s_per_step": s_per_step, "val_nll": nll, "mel_fd": fd,
               "mel_fd_by_temperature": {str(k): v for k, v in fds.items()},
               "sample_s_per_10s": sample_s}
        results.append(row)
        print(f"{name:<16} {row['parameters']:>9,} params  {s_per_step:5.2f} s/step  val_nll "
              f"{nll:7.4f}  mel_fd {fd:8.2f}  sample 10 s in {sample_s:5.2f} s", flush=True)
        if len(fds) > 1:
            print("    mel_fd by temperature: " + ", ".join(f"{k:g}: {v:.1f}"
                                                          for k, v in fds.items()), flush=True)
    report = {"machine": machine(), "train_files": len(corpus.mels),
              "train_frames": corpus.frames, "mel_cache_seconds": mel_seconds,
              "test_vs_test_mel_fd": ideal, "results": results}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
