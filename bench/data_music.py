"""Benchmark of the music data: render speed of `gen data music` and reading throughput of
AudioFolder. Prints the figures and saves them as JSON.

    python bench/data_music.py --minutes 6 --workers 1 2 --out bench/results/data_music.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "load_average_1min": os.getloadavg()[0]}


def bench_render(tmp: Path, minutes: float, workers: int, seed: int) -> dict:
    from flowsuite.data.music import render_music_set

    out = tmp / f"set-w{workers}"
    t = time.perf_counter()
    records = render_music_set(out, hours=minutes / 60, seed=seed, workers=workers,
                               progress=False)
    wall = time.perf_counter() - t
    audio = sum(r["duration"] for r in records)
    return {"workers": workers, "pieces": len(records), "audio_s": round(audio, 1),
            "wall_s": round(wall, 2), "audio_s_per_wall_s": round(audio / wall, 2),
            "folder": str(out)}


def bench_synthesis(seconds: float) -> dict:
    """FluidSynth alone: a parsed chorale played for ``seconds``."""
    from flowsuite.data.music import Synth, corpus_pieces, default_soundfont, score_parts

    piece = next(p for p in corpus_pieces("chorale") if p.path == "bach/bwv66.6.mxl")
    parts = score_parts(piece)
    synth = Synth(default_soundfont())
    t = time.perf_counter()
    rendered = 0.0
    while rendered < seconds:
        rendered += len(synth.render(parts, [19, 19, 19, 19])) / synth.sample_rate
    wall = time.perf_counter() - t
    synth.close()
    return {"audio_s": round(rendered, 1), "wall_s": round(wall, 3),
            "audio_s_per_wall_s": round(rendered / wall, 1)}


def bench_read(folder: Path, segment: int, label: str) -> dict:
    from flowsuite.data.audio import AudioFolder

    t = time.perf_counter()
    ds = AudioFolder(folder, segment_samples=segment)
    index_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    wall = time.perf_counter() - t
    audio = len(ds) * segment / ds.sample_rate
    return {"set": label, "files": len(ds.files), "segments": len(ds),
            "index_s": round(index_s, 2), "read_s": round(wall, 2),
            "segments_per_s": round(len(ds) / wall, 1),
            "audio_s_per_wall_s": round(audio / wall, 1)}


def make_user_folder(src: Path, dst: Path) -> Path:
    """The rendered set re-encoded as a user would have it: 44.1 kHz stereo FLAC and MP3."""
    import soundfile as sf

    from flowsuite.data.audio import resample

    dst.mkdir(parents=True)
    for i, f in enumerate(sorted((src / "audio").iterdir())):
        x, rate = sf.read(f, dtype="float32")
        y = resample(x, rate, 44100)
        stereo = np.stack([y, 0.8 * y], axis=1)
        ext = "flac" if i % 2 == 0 else "mp3"
        sf.write(dst / f"{f.stem}.{ext}", stereo, 44100)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=6.0, help="audio to render per run")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--segment", type=int, default=16000)
    ap.add_argument("--out", type=Path, default=Path("bench/results/data_music.json"))
    args = ap.parse_args()

    from flowsuite.core.io import atomic_path

    results: dict = {"machine": machine(), "command": "python bench/data_music.py "
                     f"--minutes {args.minutes} --workers {' '.join(map(str, args.workers))}"}
    tmp = Path(tempfile.mkdtemp(prefix="bench-music-"))
    try:
        results["synthesis"] = bench_synthesis(120.0)
        print("fluidsynth alone:", results["synthesis"])
        results["render"] = []
        for w in args.workers:
            r = bench_render(tmp, args.minutes, w, args.seed)
            results["render"].append(r)
            print("render:", r)
        rendered = Path(results["render"][0]["folder"])
        results["read"] = [bench_read(rendered, args.segment, "rendered set (22050 Hz wav)")]
        print("read:", results["read"][0])
        user = make_user_folder(rendered, tmp / "user")
        results["read"].append(bench_read(user, args.segment,
                                          "user folder (44.1 kHz stereo flac+mp3)"))
        print("read:", results["read"][1])
        for r in results["render"]:
            r.pop("folder")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    with atomic_path(args.out) as t:
        t.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
