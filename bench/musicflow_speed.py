"""WaveGlow synthesis speed, memory with and without chunking, and parameter counts.

For each preset, precision and thread count: synthesis of ``--seconds`` of audio from a random
log-mel (the weights are random too: speed does not depend on them), timed after a warm-up of the
same shape; the repeats are interleaved and the best and median are reported, since the machine
may be shared. Also the two mel upsamplers on the compact preset, and the peak resident memory of
synthesising long audio whole and in chunks, each measured in a fresh process.

    python bench/musicflow_speed.py --out bench/results/musicflow_speed_cpu.json
    python bench/musicflow_speed.py --device cuda --presets paper compact \\
        --dtypes float32 float16 bfloat16 --seconds 10 --out bench/results/musicflow_speed_cuda.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from flowsuite.musicflow.waveglow import PRESETS, WaveGlow

SR, HOP = 22050, 256


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


# Designs tried for the compact preset (float32, first thread count): how the squeeze group,
# the number of steps and the WaveNet size trade against speed.
CANDIDATES: dict[str, dict] = {
    "g16-8x4L64": dict(n_flows=8, n_group=16, n_early_every=4, n_early_size=4, wn_layers=4,
                       wn_channels=64, upsample="linear"),
    "g32-8x4L64": dict(n_flows=8, n_group=32, n_early_every=4, n_early_size=8, wn_layers=4,
                       wn_channels=64, upsample="linear"),
    "g32-12x4L64": dict(n_flows=12, n_group=32, n_early_every=4, n_early_size=8, wn_layers=4,
                        wn_channels=64, upsample="linear"),
    "g32-8x6L96": dict(n_flows=8, n_group=32, n_early_every=4, n_early_size=8, wn_layers=6,
                       wn_channels=96, upsample="linear"),
}


def build(config: dict, device: str) -> WaveGlow:
    torch.manual_seed(0)
    return WaveGlow(**config).to(device).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_infer(model: WaveGlow, mel: torch.Tensor, device: str, **kw) -> float:
    sync(device)
    t0 = time.perf_counter()
    model.infer(mel, **kw)
    sync(device)
    return time.perf_counter() - t0


def speed_cases(args: argparse.Namespace) -> list[dict]:
    on_cpu = args.device == "cpu"
    thread_counts = args.threads if on_cpu else [torch.get_num_threads()]
    cases = []

    def add(name: str, config: dict, dtype: str, threads: int, seconds: float, runs: int,
            chunk: int | None = None) -> None:
        cases.append({"name": name, "config": config, "upsample": config["upsample"],
                      "dtype": dtype, "threads": threads, "seconds": seconds,
                      "chunk_frames": chunk, "runs": runs})

    for preset in args.presets:
        upsamplers = [PRESETS[preset]["upsample"]]
        if preset == "compact" and args.compare_upsamplers:
            upsamplers = ["linear", "transposed"]
        slow = preset == "paper" and on_cpu
        seconds = args.paper_seconds if slow else args.seconds
        for up in upsamplers:
            config = {**PRESETS[preset], "upsample": up}
            for dtype in args.dtypes:
                for threads in thread_counts:
                    add(preset, config, dtype, threads, seconds, 1 if slow else args.repeats)
        if preset == "compact":  # the cost of the chunks' overlap
            add(preset, PRESETS[preset], args.dtypes[0], thread_counts[0], seconds,
                args.repeats, args.chunk_frames)
    if args.candidates:
        for name, config in CANDIDATES.items():
            add(name, config, "float32", thread_counts[0], args.seconds, args.repeats)
    return cases


def speed(args: argparse.Namespace) -> list[dict]:
    """Interleaved timing of every case (preset or candidate, upsampler, dtype, threads)."""
    cases = speed_cases(args)
    g = torch.Generator().manual_seed(0)
    models: dict[str, WaveGlow] = {}
    mels, times = [], []
    for c in cases:  # build and warm up
        key = json.dumps(c["config"], sort_keys=True)
        if key not in models:
            models[key] = build(c["config"], args.device)
        c["model"] = models[key]
        frames = round(c["seconds"] * SR / HOP)
        mels.append((torch.randn(1, 80, frames, generator=g) - 5.0).to(args.device))
        torch.set_num_threads(c["threads"])
        time_infer(c["model"], mels[-1], args.device, dtype=c["dtype"],
                   chunk_frames=c["chunk_frames"])
        times.append([])
    for r in range(args.repeats):
        for i in [(j + r) % len(cases) for j in range(len(cases))]:  # a rotating order
            c = cases[i]
            if len(times[i]) < c["runs"]:
                torch.set_num_threads(c["threads"])
                times[i].append(time_infer(c["model"], mels[i], args.device, dtype=c["dtype"],
                                           chunk_frames=c["chunk_frames"]))
    rows = []
    for c, mel, t in zip(cases, mels, times, strict=True):
        samples = mel.shape[-1] * HOP
        best, med = min(t), statistics.median(t)
        model = c.pop("model")
        row = dict(c, device=args.device, samples=samples, runs=len(t), best_s=best,
                   median_s=med, khz_best=samples / best / 1e3, khz_median=samples / med / 1e3,
                   x_realtime_best=samples / SR / best, x_realtime_median=samples / SR / med,
                   parameters=model.num_parameters(),
                   receptive_field_frames=model.receptive_field_frames)
        rows.append(row)
        print(f"{c['name']:12s} {c['upsample']:10s} {c['dtype']:9s} threads={c['threads']} "
              f"chunk={c['chunk_frames']} {model.num_parameters() / 1e6:6.2f} M "
              f"{c['seconds']:4.1f} s audio: best {best:6.2f} s = {row['khz_best']:7.1f} kHz "
              f"= {row['x_realtime_best']:6.2f}x real time "
              f"(median {row['x_realtime_median']:.2f}x)", flush=True)
    return rows


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _memory_child(preset: str, seconds: float, chunk: int | None, threads: int,
                  queue: mp.Queue) -> None:
    torch.set_num_threads(threads)
    model = build(PRESETS[preset], "cpu")
    model.infer(torch.randn(1, 80, 64) - 5.0, chunk_frames=chunk)  # warm-up
    mel = torch.randn(1, 80, round(seconds * SR / HOP)) - 5.0
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident set size (VmHWM) to the current one
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    audio = model.infer(mel, chunk_frames=chunk)
    elapsed = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    queue.put({"preset": preset, "seconds": seconds, "chunk_frames": chunk,
               "rss_before_mb": before / 1024, "peak_rss_mb": peak / 1024,
               "peak_increase_mb": (peak - before) / 1024,
               "output_mb": audio.numel() * 4 / 2 ** 20, "time_s": elapsed})


def memory(args: argparse.Namespace) -> list[dict]:
    """Peak resident memory of synthesis in a fresh process per case (Linux: VmHWM, reset
    before the synthesis through /proc/self/clear_refs)."""
    ctx = mp.get_context("spawn")
    rows = []
    for seconds in args.memory_seconds:
        for chunk in (None, args.chunk_frames):
            q = ctx.Queue()
            p = ctx.Process(target=_memory_child,
                            args=(args.memory_preset, seconds, chunk, args.memory_threads, q))
            p.start()
            row = q.get()
            p.join()
            rows.append(row)
            print(f"memory {args.memory_preset} {seconds:5.0f} s chunk={chunk}: peak "
                  f"+{row['peak_increase_mb']:.0f} MB over {row['rss_before_mb']:.0f} MB "
                  f"(output {row['output_mb']:.1f} MB), {row['time_s']:.1f} s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["compact", "paper"], choices=list(PRESETS))
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=5.0, help="audio per timed synthesis")
    ap.add_argument("--paper-seconds", type=float, default=1.0,
                    help="audio per timed synthesis of the paper preset on the CPU (timed once)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True,
                    help="time synthesis (--no-speed: memory only)")
    ap.add_argument("--compare-upsamplers", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--candidates", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the designs tried for the compact preset")
    ap.add_argument("--memory-seconds", nargs="*", type=float, default=[10.0, 60.0],
                    help="audio lengths for the memory measurement (CPU; none = skip)")
    ap.add_argument("--memory-preset", default="compact", choices=list(PRESETS))
    ap.add_argument("--memory-threads", type=int, default=1)
    ap.add_argument("--chunk-frames", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path("bench/results/musicflow_speed_cpu.json"))
    args = ap.parse_args()

    params = {}
    for name in PRESETS:
        with torch.device("meta"):
            m = WaveGlow.from_preset(name)
        params[name] = {"parameters": m.num_parameters(),
                        "receptive_field_frames": m.receptive_field_frames,
                        "config": m.config}
        print(f"{name}: {m.num_parameters():,} parameters, receptive field "
              f"+-{m.receptive_field_frames} frames", flush=True)
    load_before = load()
    rows = speed(args) if args.speed else []
    mem = memory(args) if args.device == "cpu" and args.memory_seconds else []
    result = {"machine": machine(), "load_average_before": load_before,
              "load_average_after": load(), "args": {k: (str(v) if isinstance(v, Path) else v)
                                                     for k, v in vars(args).items()},
              "presets": params, "speed": rows, "memory": mem}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    print(f"load average {load_before:.1f} before, {result['load_average_after']:.1f} after; "
          f"saved {args.out}")


if __name__ == "__main__":
    main()
