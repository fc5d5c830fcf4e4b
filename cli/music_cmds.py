"""``gen train prior``, ``gen music`` and ``gen eval music``: the mel prior and music from
nothing (the prior samples a mel spectrogram, WaveGlow vocodes it)."""

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
    model_file,
    precision_option,
    resolve_device,
    run_warmup,
    stop_if_unfinished,
    time_limit_option,
)
from flowsuite.cli.main import cli, eval_, train
from flowsuite.core.errors import FlowsuiteError
from flowsuite.musicflow.prior import (
    DEFAULT_GATE_TEMPERATURE,
    DEFAULT_ONSET_CHOICES,
    DEFAULT_ONSET_TEMPERATURE,
    DEFAULT_TEMPERATURE,
    MAX_ONSET_CHOICES,
)

_DEVICE = click.Choice(["auto", "cpu", "cuda"])


def _check_number(name: str, value: float, low: float = 0.0) -> None:
    if not (math.isfinite(value) and value >= low):
        raise FlowsuiteError(f"{name} must be a number of at least {low:g}, not {value}")


def _onset_choices(value: str | None) -> int | str | None:
    """``--onset-choices``: a whole number, ``auto`` or not given (``None``); the range is
    checked with the prior (``MelPrior.check_onset_options``)."""
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise FlowsuiteError(f"onset choices must be a whole number from 1 to "
                             f"{MAX_ONSET_CHOICES} or auto, not {value}") from None


# ------------------------------------------------------------------------------------ train


def _resume_config(out_dir: Path) -> dict | None:
    """The model config of the run's last checkpoint, so a resumed run keeps its statistics."""
    from flowsuite.core.checkpoint import read_metadata

    for name in ("last", "last.prev"):
        ckpt = out_dir / name / "model.safetensors"
        if ckpt.is_file():
            info = read_metadata(ckpt)
            if info.model != "mel-prior":
                raise FlowsuiteError(f"{out_dir} holds a run of another model ({info.model}); "
                                     "choose another output folder")
            return info.config
    return None


@train.command("prior")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="A music set made by `gen data music` (styles from its manifest) or a folder "
                   "of audio (no styles).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Run folder; gets model.safetensors, checkpoints and metrics.")
@click.option("--preset", type=click.Choice(["small", "tiny"]), default="small",
              show_default=True, help="Model size (tiny: smoke tests only).")
@click.option("--steps", type=int, default=9000, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--segment-frames", type=int, default=128, show_default=True,
              help="Mel frames per training crop (a multiple of the model's step).")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--device", type=_DEVICE, default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mixture", type=int, default=None,
              help="Components of each step's latent mixture (0: one normal; default: the "
                   "preset's, or --init's).")
@click.option("--flows", type=click.IntRange(min=1), default=None,
              help="Flow steps within each autoregressive step (default: the preset's, or "
                   "--init's); more than --init's appends steps that start as the identity.")
@click.option("--spline-bins", type=click.IntRange(min=0), default=None,
              help="Bins of a context-predicted spline per mel value on the mel side of each "
                   "step's flow (0: none; default: the preset's 0, or --init's; with --init it "
                   "starts as the identity).")
@click.option("--carry/--no-carry", default=None,
              help="Carry the last frame of each step into the next directly, with a gain from "
                   "the context (default: the preset's off, or --init's; with --init it starts "
                   "at zero gain).")
@click.option("--rollout", type=click.IntRange(min=0), default=None,
              help="Train each step given a past whose last ROLLOUT steps are the prior's own "
                   "samples (default: the preset's 0, or --init's).")
@click.option("--rollout-share", type=click.FloatRange(0.0, 1.0), default=None,
              help="With --rollout: the share of each batch trained on rollouts, the rest "
                   "teacher-forced (default: 1, or --init's).")
@click.option("--self-feed", type=click.FloatRange(0.0, 1.0), default=None,
              help="Scheduled sampling: this share of the past steps the prior reads in "
                   "training is its own sample of the step instead of the true one (default: "
                   "the preset's 0, or --init's).")
@click.option("--context-smear", type=click.FloatRange(0.0, 1.0), default=None,
              help="In training, blend the past the prior reads with its 3-band average "
                   "(each frame's peak level kept) by a share up to this, per sequence, so it "
                   "learns to restore the partials a free-running prior blurs (default: the "
                   "preset's 0, or --init's).")
@click.option("--context-blank", type=click.FloatRange(0.0, 1.0), default=None,
              help="In training, this share of the sequences read a past of noise instead of "
                   "their true steps, so the prior must predict steps it cannot copy "
                   "(default: the preset's 0, or --init's).")
@click.option("--keys/--no-keys", default=None,
              help="Condition on the music's key, estimated from each file's audio; `gen "
                   "music --key` then takes one (default: off, or --init's; with --init it "
                   "starts with no effect).")
@click.option("--onset-gate/--no-onset-gate", default=None,
              help="Model whether each step starts a note explicitly, with a gate trained on "
                   "the mel's onsets (default: off, or --init's; with --init the flow starts "
                   "as it was).")
@click.option("--beats/--no-beats", default=None,
              help="The onset gate also reads a clock, the phase of the beat and the tempo: "
                   "the beats of the scores in a music set's manifest, else beats tracked in the "
                   "audio; `gen music --tempo` then sets it (implies --onset-gate; default: off, "
                   "or --init's).")
@click.option("--init", "init_path", default=None, type=click.Path(path_type=Path),
              help="Start from the weights of a trained prior (run folder or model file); its "
                   "statistics and styles are kept and new parts (--mixture, --flows) start "
                   "fresh.")
@click.option("--resume", is_flag=True, help="Continue the run in --out where it stopped.")
@precision_option
@time_limit_option
@config_option
def train_prior_cmd(data_dir: Path, out_dir: Path, preset: str, steps: int, batch_size: int,
                    segment_frames: int, lr: float, device: str, seed: int, mixture: int | None,
                    flows: int | None, spline_bins: int | None, carry: bool | None,
                    rollout: int | None, rollout_share: float | None,
                    self_feed: float | None, context_smear: float | None,
                    context_blank: float | None, keys: bool | None,
                    onset_gate: bool | None, beats: bool | None, init_path: Path | None,
                    resume: bool, precision: str,
                    time_limit: float | None) -> None:
    """Train a mel prior (the flow that generates mel spectrograms of music)."""
    from flowsuite.core.trainer import TrainConfig
    from flowsuite.data.music import MANIFEST
    from flowsuite.musicflow.prior import MelPrior
    from flowsuite.musicflow.prior_train import MelCorpus, train_prior

    if not data_dir.is_dir():
        raise FlowsuiteError(f"audio folder {data_dir} does not exist or is not a folder")
    if segment_frames < 2:
        raise FlowsuiteError(f"--segment-frames must be at least 2, not {segment_frames}")
    if mixture is not None and (mixture < 0 or mixture == 1):
        raise FlowsuiteError(f"--mixture must be 0 or at least 2 components, not {mixture}")
    if rollout and self_feed:
        raise FlowsuiteError("--rollout and --self-feed exclude each other; choose one")
    dev = resolve_device(device)
    source = None
    if init_path is not None:
        from flowsuite.core.checkpoint import load_model

        source = load_model(model_file(init_path), expected="mel-prior")
    saved = _resume_config(out_dir) if resume else None
    is_set = (data_dir / MANIFEST).is_file()
    keyed = bool(keys if keys is not None else
                 (saved or {}).get("keys", source.keys if source is not None else False))
    clocked = bool(beats if beats is not None else
                   (saved or {}).get("beats", source.beats if source is not None else False))
    corpus = MelCorpus.from_folder(data_dir, split="train" if is_set else None,
                                   min_frames=segment_frames, progress=True, keys=keyed,
                                   beats=clocked)
    has_beats = any(len(b) >= 2 for b in corpus.beats)
    if beats and not has_beats:
        raise FlowsuiteError(f"--beats needs beats, and none were found in {data_dir}: give "
                             "music with a beat, or a music set made by `gen data music` (its "
                             "manifest lists the scores' beats), or leave out --beats")
    val = None
    if is_set:
        try:
            val = MelCorpus.from_folder(data_dir, split="val", min_frames=segment_frames,
                                        keys=keyed, beats=clocked)
        except FlowsuiteError:
            val = None
    torch.manual_seed(seed)
    given = {"mixture": mixture, "n_flows": flows, "self_feed": self_feed,
             "spline_bins": spline_bins, "carry": carry, "rollout": rollout,
             "rollout_share": rollout_share, "context_smear": context_smear,
             "context_blank": context_blank, "keys": keys, "onset_gate": onset_gate,
             "beats": beats}
    if beats:
        given["onset_gate"] = True
    if clocked and has_beats and saved is None:  # sampling's default tempi: this music's
        given["tempi"] = corpus.tempi()
    extra = {k: v for k, v in given.items() if v is not None}
    try:
        if saved is not None:
            model = MelPrior(**saved)
        elif source is not None:
            model = MelPrior.from_trained(source, **extra)
        else:
            model = MelPrior.from_preset(preset, styles=corpus.styles, **corpus.band_stats(),
                                         **extra)
    except ValueError as e:  # a combination of options the model does not take
        raise FlowsuiteError(str(e)) from None
    every = min(500, steps) if steps > 0 else 1
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=dev,
                         warmup=run_warmup(out_dir, steps, resume, cap=200), val_every=every,
                         ckpt_every=every, bf16=bf16_of(precision))
    summary = train_prior(model, corpus, out_dir, config, val=val,
                          segment_frames=segment_frames, resume=resume, time_limit=time_limit)
    stop_if_unfinished(summary, out_dir)
    styles = f" (styles: {', '.join(model.styles)})" if model.styles else ""
    click.echo(f"trained {summary.step} steps on {corpus.frames} frames{styles}; model: "
               f"{summary.model_path}")


# ------------------------------------------------------------------------------------ music


_TEMPERATURE_HELP = ("Prior temperature: scales each step's latent noise (1 = untempered; 0 = "
                     "no noise: with a mixture prior, the chosen component's mean); default: "
                     "the style's where the model names one (`gen models show mel-prior`), "
                     f"else {DEFAULT_TEMPERATURE:g}.")
_ONSET_TEMPERATURE_HELP = ("For a prior with an onset gate: the latent temperature of its onset "
                           "steps (hotter: bolder attacks and richer spectra, but new notes "
                           "leave the key unless --onset-choices keeps them to it); default: "
                           f"{DEFAULT_ONSET_TEMPERATURE:g}.")
_ONSET_CHOICES_HELP = ("For a prior with an onset gate: draw each onset step this many times "
                       "and keep the draw whose new notes best fit the pitch classes heard in "
                       "the last seconds (1 to 32, or auto: more draws where onsets are "
                       f"sparse, fewer where they are dense; default: {DEFAULT_ONSET_CHOICES}). "
                       "--onset-temperature equal to --temperature with --onset-choices 1 "
                       "draws onset steps like the others.")


def _vocoder_arg(path: Path | None) -> Path | str | None:
    """``--vocoder``: a WaveGlow run folder or file, the word ``griffin-lim``, or ``None``."""
    from flowsuite.musicflow.generator import GRIFFIN_LIM

    if path is None:
        return None
    return GRIFFIN_LIM if str(path) == GRIFFIN_LIM else model_file(path)


@cli.command("music")
@click.option("--seconds", type=float, default=10.0, show_default=True,
              help="Length of the music, 1 s to 10 min.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--temperature", type=float, default=None, help=_TEMPERATURE_HELP)
@click.option("--sigma", type=float, default=0.6, show_default=True,
              help="Vocoder latent noise scale.")
@click.option("--style", default=None, help="A style the prior knows (e.g. chorale, folk, "
              "quartet); default: one at random.")
@click.option("--key", default=None, help="For a prior trained with --keys: the key to "
              "write in (e.g. 'D minor', 'F#', 'Bbm'); default: one at random.")
@click.option("--tempo", type=float, default=None, help="For a prior trained with --beats: "
              "the beats per minute of its clock (20 to 400); default: the style's median "
              "tempo in its training music.")
@click.option("--gate-temperature", type=float, default=None, help="For a prior with an "
              "onset gate: its log-odds are divided by this when it draws (lower: onsets "
              "firmer on the beat; 0: the likelier label); default "
              f"{DEFAULT_GATE_TEMPERATURE:g} for a prior trained with --beats, 1 without.")
@click.option("--onset-temperature", type=float, default=None, help=_ONSET_TEMPERATURE_HELP)
@click.option("--onset-choices", default=None, metavar="K|auto", help=_ONSET_CHOICES_HELP)
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=Path("music.wav"),
              show_default=True, help="Output .wav (22050 Hz mono).")
@click.option("--preview", type=click.Path(path_type=Path), default=None,
              help="Also write the mel spectrogram as a PNG.")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="A mel prior (run folder or model.safetensors); default: the shipped one.")
@click.option("--vocoder", "vocoder_path", type=click.Path(path_type=Path), default=None,
              help="A WaveGlow (run folder or model.safetensors), or griffin-lim for the "
                   "baseline that needs no weights; default: the shipped WaveGlow, else "
                   "Griffin-Lim.")
@click.option("--from", "from_path", type=click.Path(path_type=Path), default=None,
              help="Continue this clip: the output holds the music that follows it.")
@click.option("--device", type=_DEVICE, default="auto", show_default=True)
@click.option("--force", is_flag=True, help="Replace existing outputs.")
def music(seconds: float, seed: int, temperature: float | None, sigma: float,
          style: str | None, key: str | None, tempo: float | None,
          gate_temperature: float | None,
          onset_temperature: float | None, onset_choices: str | None, out_path: Path,
          preview: Path | None,
          model_path: Path | None, vocoder_path: Path | None, from_path: Path | None,
          device: str, force: bool) -> None:
    """Generate new music: the mel prior samples a spectrogram, WaveGlow makes it audio."""
    from flowsuite.cli.vocoder_cmds import read_audio, write_wav
    from flowsuite.core.io import check_writable
    from flowsuite.musicflow.generator import GRIFFIN_LIM, MusicGenerator, check_seconds

    check_seconds(seconds)
    if temperature is not None:
        _check_number("--temperature", temperature)
    _check_number("--sigma", sigma)
    if seed < 0:
        raise FlowsuiteError(f"--seed must not be negative, not {seed}")
    check_writable(out_path, force)
    if preview is not None:
        check_writable(preview, force)
    dev = resolve_device(device)
    gen = MusicGenerator.from_pretrained(
        model_file(model_path) if model_path is not None else None,
        _vocoder_arg(vocoder_path), device=dev)
    if gen.vocoder_name == GRIFFIN_LIM and vocoder_path is None:
        click.echo("no WaveGlow vocoder ships yet; vocoding with Griffin-Lim (pass --vocoder RUN "
                   "for a trained WaveGlow)")
    if style is not None:
        gen.prior.style_index(style, 1)  # an unknown style fails before any work
    if key is not None:  # so does an unknown key, or one for a prior without keys
        gen.prior.labels(torch.zeros(1, dtype=torch.long), key)
    gen.prior.check_clock_options(tempo, gate_temperature)  # before any work
    onset_choices = _onset_choices(onset_choices)
    gen.prior.check_onset_options(onset_temperature, onset_choices)
    prime = None
    if from_path is not None:
        prime = read_audio(from_path, gen.sample_rate, gen.prior.hop)
    mel = gen.generate_mel(seconds, seed, temperature, style, prime, key, tempo,
                           gate_temperature, onset_temperature, onset_choices)
    audio = gen.vocode(mel, round(seconds * gen.sample_rate), sigma, seed)
    if not np.isfinite(audio).all():
        raise FlowsuiteError("the models produced NaN audio; they are probably undertrained or "
                             "broken, train them further")
    write_wav(out_path, audio, gen.sample_rate, force)
    click.echo(f"wrote {out_path} ({len(audio) / gen.sample_rate:.2f} s)")
    if preview is not None:
        from flowsuite.musicflow.preview import write_spectrograms

        title = (f"gen music --seed {seed}"
                 + (f" --temperature {temperature:g}" if temperature is not None else "")
                 + (f" --style {style}" if style else "") + (f" --key '{key}'" if key else "")
                 + (f" --tempo {tempo:g}" if tempo is not None else "")
                 + (f" --gate-temperature {gate_temperature:g}"
                    if gate_temperature is not None else "")
                 + (f" --onset-temperature {onset_temperature:g}"
                    if onset_temperature is not None else "")
                 + (f" --onset-choices {onset_choices}"
                    if onset_choices is not None else ""))
        write_spectrograms(preview, [(title, mel)], gen.sample_rate, gen.prior.hop, force=force)
        click.echo(f"wrote {preview}")


# ------------------------------------------------------------------------------------- eval


def _reference_clips(data_dir: Path, samples: int, count: int,
                     style: str | None = None) -> list[np.ndarray]:
    """``count`` held-out clips of ``samples`` samples spread over the test split (or a plain
    folder's files); with ``style``, over the files of that style only."""
    from flowsuite.cli.vocoder_cmds import _held_out

    data = _held_out(data_dir, samples)
    index = data.indices(style)
    if len(index) < 2:
        what = f" of style {style}" if style is not None else ""
        raise FlowsuiteError(f"{data_dir} holds {len(index)} held-out clip(s){what} of "
                             f"{samples / 22050:.1f} s; give more audio or lower --seconds")
    picks = np.unique(np.linspace(0, len(index) - 1, min(count, len(index))).round().astype(int))
    return [data[int(index[i])]["audio"].numpy() for i in picks]


@eval_.command("music")
@click.option("--model", "model_path", default=None, type=click.Path(path_type=Path),
              help="The mel prior (run folder or model.safetensors); default: the shipped one.")
@click.option("--vocoder", "vocoder_path", default=None, type=click.Path(path_type=Path),
              help="A WaveGlow (run folder or model.safetensors), or griffin-lim; default: the "
                   "shipped WaveGlow, else Griffin-Lim.")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="Held-out music: a music set's test split, or a folder.")
@click.option("--count", type=int, default=8, show_default=True,
              help="Clips per system (the held-out side uses twice as many).")
@click.option("--seconds", type=float, default=6.0, show_default=True, help="Seconds per clip.")
@click.option("--temperature", type=float, default=None, help=_TEMPERATURE_HELP)
@click.option("--gate-temperature", type=float, default=None,
              help="For a prior with an onset gate: the temperature of its draws (default "
                   f"{DEFAULT_GATE_TEMPERATURE:g} with a clock, 1 without; see gen music).")
@click.option("--onset-temperature", type=float, default=None, help=_ONSET_TEMPERATURE_HELP)
@click.option("--onset-choices", default=None, metavar="K|auto", help=_ONSET_CHOICES_HELP)
@click.option("--sigma", type=float, default=0.6, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the figures here.")
@click.option("--device", type=_DEVICE, default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Generated clip i is what `gen music --seed SEED+i` gives with the same "
                   "options; for another set, step the seed by at least --count, or the sets "
                   "share clips.")
@click.option("--draws", type=click.IntRange(1), default=1, show_default=True,
              help="Score this many disjoint sets of generated clips (draw d takes seeds "
                   "SEED + d*COUNT onwards) against the same held-out clips and report their "
                   "mean and standard deviation: one set of 8 clips moves mel_fd by 10-20%.")
@click.option("--style", default=None,
              help="Generate in this style and compare with the held-out music of that style "
                   "only (the manifest's style, or a plain folder's sub-folder name).")
@click.option("--force", is_flag=True, help="Replace an existing --json file.")
def eval_music(model_path: Path | None, vocoder_path: Path | None, data_dir: Path, count: int,
               seconds: float, temperature: float | None, gate_temperature: float | None,
               onset_temperature: float | None, onset_choices: str | None, sigma: float,
               json_path: Path | None, device: str, seed: int, draws: int, style: str | None,
               force: bool) -> None:
    """Distances between generated and held-out music, beside shaped noise, the ideal
    (held-out clips against other held-out clips) and those clips vocoded from their mels (the
    best the prior could do with this vocoder); lower is closer. With --style, one style's
    music on both sides."""
    from flowsuite.core.io import atomic_path, check_writable
    from flowsuite.musicflow.generator import MusicGenerator
    from flowsuite.musicflow.metrics import (
        RHYTHM_FEATURES,
        clip_statistics,
        music_distances,
        shaped_noise,
    )

    if json_path is not None:
        check_writable(json_path, force)
    if count < 2:
        raise FlowsuiteError(f"--count must be at least 2, not {count}")
    if not (math.isfinite(seconds) and 1 <= seconds <= 60):
        raise FlowsuiteError(f"--seconds must be from 1 to 60, not {seconds}")
    if temperature is not None:
        _check_number("--temperature", temperature)
    _check_number("--sigma", sigma)
    dev = resolve_device(device)
    gen = MusicGenerator.from_pretrained(
        model_file(model_path) if model_path is not None else None,
        _vocoder_arg(vocoder_path), device=dev)
    drawn_at: float | str | None = temperature  # recorded as drawn
    if style is not None:  # an unknown style fails here, before any work
        drawn_at = temperature if temperature is not None else float(
            gen.prior.temperature_of(gen.prior.style_index(style, 1)))
    elif temperature is None:
        drawn_at = "by style" if gen.prior.temperatures else DEFAULT_TEMPERATURE
    gen.prior.check_clock_options(gate_temperature=gate_temperature)
    # recorded as drawn: a gated prior's defaults filled in
    onset_temperature, onset_choices = gen.prior.onset_options(onset_temperature,
                                                               _onset_choices(onset_choices))
    rate = gen.sample_rate
    samples = round(seconds * rate)
    held = _reference_clips(data_dir, samples, 2 * count, style)
    ref, other = held[0::2], held[1::2]
    n = len(ref)
    clips = {}
    seeds = [seed + d * n + i for d in range(draws) for i in range(n)]
    with click.progressbar(seeds, label="generating", file=None) as bar:
        generated = [gen.generate(seconds, s, temperature, sigma, style,
                                  gate_temperature=gate_temperature,
                                  onset_temperature=onset_temperature,
                                  onset_choices=onset_choices)[0] for s in bar]
    clips["generated"] = generated[:n]
    # The other held-out clips through their mels and this vocoder: what a perfect prior would
    # score, so the gap to the ideal splits into the prior's part and the vocoder's.
    clips["vocoded"] = [gen.vocode(gen.prime_mel(x), samples, sigma, seed + i)
                        for i, x in enumerate(other)]
    front = gen.vocoder.mel.cpu()
    clips["shaped_noise"] = shaped_noise(ref, n, samples, front, seed)
    clips["ideal"] = other
    ref_stats = clip_statistics(ref, rate, front)
    stats = {k: clip_statistics(v, rate, front) for k, v in clips.items()}
    metrics = {k: music_distances(v, ref_stats) for k, v in stats.items()}
    keys = {"held_out": float(ref_stats["tonality"].mean()),
            **{k: float(v["tonality"].mean()) for k, v in stats.items()}}
    spread = None
    if draws > 1:
        per_draw = [stats["generated"]] + [clip_statistics(generated[d * n:(d + 1) * n], rate,
                                                           front) for d in range(1, draws)]
        each = [{**music_distances(st, ref_stats), "key_stability": float(st["tonality"].mean())}
                for st in per_draw]
        spread = {m: float(np.std([e[m] for e in each], ddof=1)) for m in each[0]}
        metrics["generated"] = {m: float(np.mean([e[m] for e in each]))
                                for m in metrics["generated"]}
        keys["generated"] = float(np.mean([e["key_stability"] for e in each]))
    # What the rhythm distance is made of: each feature's mean per system (the generated
    # clips of every draw), so a gap can be read as too few onsets, too even a loudness, or
    # no pulse.
    rhythm_of = {"held_out": ref_stats["rhythm"],
                 **{k: v["rhythm"] for k, v in stats.items()}}
    if draws > 1:
        rhythm_of["generated"] = np.concatenate([st["rhythm"] for st in per_draw])
    rhythm_features = {k: dict(zip(RHYTHM_FEATURES, map(float, v.mean(0)), strict=True))
                       for k, v in rhythm_of.items()}
    result = {"model": str(model_path or "shipped mel-prior"),
              "vocoder": str(vocoder_path or "shipped waveglow"), "data": str(data_dir),
              "clips": {k: len(v) for k, v in clips.items()}, "reference_clips": n,
              "seconds": seconds, "temperature": drawn_at,
              "style_temperatures": dict(gen.prior.temperatures),
              "gate_temperature": gate_temperature, "onset_temperature": onset_temperature,
              "onset_choices": onset_choices, "sigma": sigma, "seed": seed,
              "style": style, "metrics": metrics, "key_stability": keys,
              "rhythm_features": rhythm_features}
    if spread is not None:
        result.update(draws=draws, generated_sd=spread, generated_draws=each)
    of_style = f" of style {style}" if style is not None else ""
    sets = f" (mean of {draws} sets, seeds {seed}-{seed + draws * n - 1})" if spread else ""
    click.echo(f"{n} clips{of_style} of {seconds:g} s{sets} against {n} held-out "
               f"clips{of_style} (lower is closer)")
    names = list(metrics)
    sd_head = f"{'sd':>10}" if spread else ""
    click.echo(f"{'metric':<12}{names[0]:>14}{sd_head}" + "".join(f"{k:>14}" for k in names[1:]))
    for m in ("mel_fd", "chroma_fd", "rhythm", "tonality", "key_stability"):
        vals = [keys[k] if m == "key_stability" else metrics[k][m] for k in names]
        label = "key_stab *" if m == "key_stability" else m
        sd = f"{spread[m]:>10.4f}" if spread else ""
        click.echo(f"{label:<12}{vals[0]:>14.4f}{sd}" + "".join(f"{v:>14.4f}" for v in vals[1:]))
    click.echo(f"* the mean key stability per clip, not a distance (held-out clips: "
               f"{keys['held_out']:.4f}; 1: the same pitch classes throughout, 0: unrelated "
               f"from one second to those two or more seconds later)")
    click.echo("rhythm, held-out / generated: " + ", ".join(
        f"{f} {rhythm_features['held_out'][f]:.3f} / {rhythm_features['generated'][f]:.3f}"
        for f in RHYTHM_FEATURES))
    if json_path is not None:
        with atomic_path(json_path, force=force) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
        click.echo(f"wrote {json_path}")
