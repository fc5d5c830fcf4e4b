"""``gen train vocoder``, ``gen vocode`` and ``gen eval vocoder``: the WaveGlow mel vocoder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import numpy as np
import torch

from flowsuite.cli.common import (
    bf16_of,
    config_option,
    precision_option,
    resolve_device,
    run_warmup,
    stop_if_unfinished,
    time_limit_option,
)
from flowsuite.cli.main import cli, eval_, train
from flowsuite.core.errors import FlowsuiteError

# "tiny" is a smoke-test size (seconds per step on a CPU, useless audio).
_TINY = dict(n_flows=2, wn_layers=2, wn_channels=16)


def _make_model(preset: str):
    from flowsuite.musicflow.waveglow import WaveGlow

    if preset == "tiny":
        return WaveGlow.from_preset("compact", **_TINY)
    return WaveGlow.from_preset(preset)


def _load(model_path: Path | None, device: str):
    """The WaveGlow in ``model_path`` (a run folder or file), or the shipped one when None."""
    from flowsuite.musicflow.waveglow import WaveGlow

    return WaveGlow.from_pretrained(model_path, map_location=device)


def _splits(root: Path, segment: int) -> tuple:
    """(train set, val set or None): the music set's splits, else the whole folder for training."""
    from flowsuite.data.audio import AudioFolder
    from flowsuite.data.music import MANIFEST

    if not (root / MANIFEST).is_file():
        return AudioFolder(root, segment_samples=segment), None
    train_set = AudioFolder(root, segment_samples=segment, split="train")
    try:
        val_set = AudioFolder(root, segment_samples=segment, split="val")
    except FlowsuiteError:
        val_set = None
    return train_set, val_set


def _held_out(root: Path, segment: int):
    """The test split of a music set (else its val split), or a plain folder's every file."""
    from flowsuite.data.audio import AudioFolder
    from flowsuite.data.music import MANIFEST

    if not root.is_dir():
        raise FlowsuiteError(f"audio folder {root} does not exist or is not a folder")
    if not (root / MANIFEST).is_file():
        return AudioFolder(root, segment_samples=segment)
    try:
        return AudioFolder(root, segment_samples=segment, split="test")
    except FlowsuiteError:
        return AudioFolder(root, segment_samples=segment, split="val")


# ------------------------------------------------------------------------------------ train


@train.command("vocoder")
@config_option
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of audio (or a music set made by `gen data music`).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Run folder; gets model.safetensors, checkpoints and metrics.")
@click.option("--preset", type=click.Choice(["compact", "paper", "tiny"]), default="compact",
              show_default=True, help="Model size (tiny: smoke tests only).")
@click.option("--steps", type=int, default=10000, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--segment", type=int, default=16384, show_default=True,
              help="Samples per training segment (a multiple of the 256-sample hop).")
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out where it stopped.")
@precision_option
@time_limit_option
def train_vocoder(data_dir: Path, out_dir: Path, preset: str, steps: int, batch_size: int,
                  segment: int, lr: float, device: str, seed: int, resume: bool,
                  precision: str, time_limit: float | None) -> None:
    """Train a WaveGlow vocoder (mel spectrogram to audio)."""
    path = fit_vocoder(_make_model(preset), data_dir, out_dir, steps=steps,
                       batch_size=batch_size, segment=segment, lr=lr, device=device, seed=seed,
                       resume=resume, time_limit=time_limit, bf16=bf16_of(precision))
    click.echo(f"trained {steps} steps; model: {path}")


def fit_vocoder(model, data_dir: Path, out_dir: Path, *, steps: int, batch_size: int,
                segment: int, lr: float, device: str, seed: int, resume: bool,
                time_limit: float | None = None, bf16: bool | None = None) -> Path:
    """Trains ``model`` (a fresh WaveGlow, or a loaded one to fine-tune) on the audio in
    ``data_dir`` into the run folder ``out_dir``; returns the final model's path. The code path
    of both `gen train vocoder` and `gen finetune music --part vocoder`. A run stopped by
    ``time_limit`` (seconds) ends the command here with one line and exit status 3. ``bf16``:
    ``TrainConfig.bf16`` (``None``: bf16 autocast on CUDA only)."""
    from flowsuite.core.trainer import TrainConfig, Trainer
    from flowsuite.musicflow.mel import HOP

    if segment < HOP or segment % HOP:
        raise FlowsuiteError(f"--segment {segment} must be a positive multiple of {HOP} samples")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    train_set, val_set = _splits(data_dir, segment)
    every = min(500, steps) if steps > 0 else 1
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=dev,
                         warmup=run_warmup(out_dir, steps, resume), val_every=every,
                         ckpt_every=every, bf16=bf16)
    # Items are {"audio", "style", "file"}; WaveGlow.forward takes the collated dict's "audio"
    # and computes the mel itself.
    trainer = Trainer(model, train_set, config, out_dir=out_dir, val_set=val_set)
    stop_if_unfinished(trainer.fit(resume=resume, time_limit=time_limit), out_dir)
    return trainer.final_path


# ----------------------------------------------------------------------------------- vocode


def read_audio(path: Path, sample_rate: int, hop: int) -> np.ndarray:
    """Mono float32 ``(T,)`` at ``sample_rate``, cut to whole ``hop``-sample frames; a
    ``FlowsuiteError`` for anything that is not usable audio."""
    import soundfile as sf

    from flowsuite.data.audio import resample

    if not path.is_file():
        raise FlowsuiteError(f"{path} does not exist; give an audio file")
    try:
        x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - soundfile raises several types for bad files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FlowsuiteError(f"cannot read {path} as audio ({msg}); give a wav, flac or ogg "
                             "file") from e
    if x.size == 0:
        raise FlowsuiteError(f"{path} holds no samples; give a file with sound in it")
    if not np.isfinite(x).all():
        raise FlowsuiteError(f"{path} holds NaN or infinite samples; fix or re-export the file")
    x = resample(x.mean(axis=1), int(rate), sample_rate)
    frames = len(x) // hop
    if frames < 2:
        raise FlowsuiteError(f"{path} is too short ({len(x) / sample_rate * 1000:.0f} ms); "
                             f"give at least {2 * hop / sample_rate * 1000:.0f} ms of audio")
    return np.ascontiguousarray(x[:frames * hop], dtype=np.float32)


def write_wav(path: Path, audio: np.ndarray, sample_rate: int, force: bool) -> None:
    """Writes 16-bit PCM atomically; an existing ``path`` needs ``force``."""
    import soundfile as sf

    from flowsuite.core.io import atomic_path

    with atomic_path(path, force=force) as tmp:
        sf.write(str(tmp), np.clip(audio, -1.0, 1.0), sample_rate, format="WAV",
                 subtype="PCM_16")


@cli.command("vocode")
@click.argument("in_path", metavar="IN", type=click.Path(path_type=Path))
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="Output .wav (22050 Hz).")
@click.option("--model", "model_path", default=None, type=click.Path(path_type=Path),
              help="A WaveGlow run folder or model.safetensors (default: the shipped one).")
@click.option("--sigma", type=float, default=0.6, show_default=True,
              help="Latent noise scale (0 = deterministic).")
@click.option("--denoise", type=float, default=0.0, show_default=True,
              help="Bias-spectrum denoiser strength (0 = off; 0.01-0.1 usual).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--chunk-frames", type=int, default=256, show_default=True,
              help="Mel frames synthesised at a time (bounds memory).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--preview", type=click.Path(path_type=Path), default=None,
              help="Also write a PNG of the input's and the output's spectrograms.")
@click.option("--force", is_flag=True, help="Replace existing outputs.")
def vocode(in_path: Path, out_path: Path, model_path: Path | None, sigma: float, denoise: float,
           device: str, chunk_frames: int, seed: int, preview: Path | None,
           force: bool) -> None:
    """Resynthesise audio IN through its mel spectrogram with a WaveGlow vocoder."""
    from flowsuite.core.io import check_writable

    check_writable(out_path, force)
    if preview is not None:
        check_writable(preview, force)
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise FlowsuiteError(f"--sigma must be a non-negative number, not {sigma}")
    if denoise < 0:
        raise FlowsuiteError(f"--denoise must not be negative, not {denoise}")
    if chunk_frames < 1:
        raise FlowsuiteError(f"--chunk-frames must be positive, not {chunk_frames}")
    dev = resolve_device(device)
    model = _load(model_path, dev)
    audio = read_audio(in_path, model.sample_rate, model.hop)
    with torch.inference_mode():
        mel = model.mel(torch.from_numpy(audio).to(dev))
        out = model.infer(mel, sigma, chunk_frames=chunk_frames, denoise=denoise, seed=seed)
    out = out.float().cpu().numpy()
    if not np.isfinite(out).all():
        raise FlowsuiteError(f"the model in {model_path or 'the shipped file'} produced NaN "
                             "audio; it is probably undertrained or broken, train it further")
    write_wav(out_path, out, model.sample_rate, force)
    click.echo(f"wrote {out_path} ({len(out) / model.sample_rate:.2f} s)")
    if preview is not None:
        from flowsuite.musicflow.preview import write_spectrograms

        with torch.inference_mode():
            out_mel = model.mel(torch.from_numpy(out).to(dev))
        write_spectrograms(preview, [(f"input: {in_path.name}", mel),
                                     (f"WaveGlow resynthesis (sigma {sigma:g})", out_mel)],
                           model.sample_rate, model.hop, force=force)
        click.echo(f"wrote {preview}")


# ------------------------------------------------------------------------------------- eval


@eval_.command("vocoder")
@click.option("--model", "model_path", default=None, type=click.Path(path_type=Path),
              help="A WaveGlow run folder or model.safetensors (default: the shipped one).")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="Held-out audio: a music set's test split, or a folder.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the metrics here.")
@click.option("--clips", type=int, default=16, show_default=True)
@click.option("--segment", type=int, default=16384, show_default=True,
              help="Samples per clip.")
@click.option("--sigma", type=float, default=0.6, show_default=True)
@click.option("--gl-iters", type=int, default=32, show_default=True,
              help="Griffin-Lim iterations of the baseline.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--preview", type=click.Path(path_type=Path), default=None,
              help="Also write a PNG comparing the spectrograms of the first clip: held-out "
                   "reference, WaveGlow and Griffin-Lim.")
@click.option("--force", is_flag=True, help="Replace existing --json / --preview files.")
def eval_vocoder(model_path: Path | None, data_dir: Path, json_path: Path | None, clips: int,
                 segment: int, sigma: float, gl_iters: int, device: str, seed: int,
                 preview: Path | None, force: bool) -> None:
    """Compare WaveGlow and Griffin-Lim resynthesis of held-out clips (lower is better)."""
    from flowsuite.core.io import atomic_path, check_writable
    from flowsuite.musicflow.metrics import (
        log_mel_l1,
        mel_cepstral_distortion,
        multi_resolution_stft,
    )

    for path in (json_path, preview):
        if path is not None:
            check_writable(path, force)
    if clips < 1:
        raise FlowsuiteError(f"--clips must be positive, not {clips}")
    dev = resolve_device(device)
    model = _load(model_path, dev)
    if segment < 2 * model.hop or segment % model.hop:
        raise FlowsuiteError(f"--segment {segment} must be a multiple of {model.hop} samples, "
                             "at least two frames")
    data = _held_out(data_dir, segment)
    n = min(clips, len(data))
    picks = np.unique(np.linspace(0, len(data) - 1, n).round().astype(int))
    names = ("spectral_convergence", "log_mag_l1", "mr_stft", "log_mel_l1", "mcd_db")
    sums = {sys: dict.fromkeys(names, 0.0) for sys in ("waveglow", "griffin_lim")}
    panels: list = []
    gen = torch.Generator(device=dev).manual_seed(seed)
    with torch.inference_mode():
        for i in picks:
            ref = data[int(i)]["audio"].to(dev)
            mel = model.mel(ref)
            outs = {"waveglow": model.infer(mel, sigma, seed=seed),
                    "griffin_lim": model.mel.griffin_lim_from_mel(
                        mel, iterations=gl_iters, generator=gen)}
            for sys, est in outs.items():
                m = multi_resolution_stft(ref, est)
                est_mel = model.mel(est.float()[:ref.shape[-1]])
                m["log_mel_l1"] = log_mel_l1(mel, est_mel)
                m["mcd_db"] = mel_cepstral_distortion(mel, est_mel)
                for k in names:
                    sums[sys][k] += m[k]
                if i == picks[0]:  # the first clip is the one pictured by --preview
                    if not panels:
                        panels.append((f"held-out reference ({segment / model.sample_rate:.2f} s)",
                                       mel))
                    label = ("WaveGlow" if sys == "waveglow"
                             else f"Griffin-Lim, {gl_iters} iterations")
                    panels.append((f"{label}: MR-STFT {m['mr_stft']:.3f}, "
                                   f"log-mel L1 {m['log_mel_l1']:.3f}", est_mel))
    result = {"model": str(model_path or "shipped waveglow"), "data": str(data_dir),
              "clips": len(picks),
              "segment": segment, "sigma": sigma,
              "metrics": {sys: {k: v / len(picks) for k, v in d.items()}
                          for sys, d in sums.items()}}
    click.echo(f"{len(picks)} clips of {segment / model.sample_rate:.2f} s (lower is better)")
    click.echo(f"{'metric':<22}{'waveglow':>12}{'griffin_lim':>14}")
    for k in names:
        click.echo(f"{k:<22}{result['metrics']['waveglow'][k]:>12.4f}"
                   f"{result['metrics']['griffin_lim'][k]:>14.4f}")
    if json_path is not None:
        with atomic_path(json_path, force=force) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
        click.echo(f"wrote {json_path}")
    if preview is not None:
        from flowsuite.musicflow.preview import write_spectrograms

        write_spectrograms(preview, panels, model.sample_rate, model.hop, force=force)
        click.echo(f"wrote {preview}")
