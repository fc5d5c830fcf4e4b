"""Music from nothing: the mel prior samples a spectrogram, WaveGlow turns it into audio.

    gen = MusicGenerator.from_pretrained()           # the shipped models
    audio, rate = gen.generate(seconds=10, seed=0)   # float32 (10 * rate,), 22050
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from flowsuite.core.checkpoint import load_model
from flowsuite.core.errors import FlowsuiteError
from flowsuite.musicflow.mel import GriffinLimVocoder
from flowsuite.musicflow.prior import MAX_SECONDS, MelPrior
from flowsuite.musicflow.waveglow import WaveGlow

# The name that picks the Griffin-Lim vocoder (no weights) instead of a WaveGlow file.
GRIFFIN_LIM = "griffin-lim"

_HOW_TO_TRAIN = {
    "mel-prior": "train one with `gen train prior --data DIR --out RUN` and pass --model RUN",
    "waveglow": "train one with `gen train vocoder --data DIR --out RUN` and pass --vocoder RUN",
}


def _model_path(path: str | os.PathLike | None, name: str) -> Path:
    """``path``, or the shipped model ``name`` when ``None``."""
    if path is not None:
        return Path(path)
    from flowsuite.data.pretrained import shipped_path

    if not _shipped(name):
        raise FlowsuiteError(f"this installation ships no {name} model; {_HOW_TO_TRAIN[name]}")
    return shipped_path(name)


def _shipped(name: str) -> bool:
    """Whether this installation ships the model ``name``."""
    from flowsuite.data.pretrained import MODELS_DIR

    return (MODELS_DIR / f"{name}.safetensors").is_file()


def check_seconds(seconds: float) -> float:
    """``seconds`` if it lies in 1 s .. 10 min, else a one-line ``FlowsuiteError``."""
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds)
            and 1.0 <= seconds <= MAX_SECONDS):
        raise FlowsuiteError(f"the length must be from 1 to {MAX_SECONDS:.0f} seconds (10 "
                             f"minutes), not {seconds}")
    return float(seconds)


class MusicGenerator:
    """A mel prior and a vocoder (a WaveGlow, or the Griffin-Lim baseline) that agree on the mel
    front end."""

    def __init__(self, prior: MelPrior, vocoder: WaveGlow | GriffinLimVocoder):
        mel = vocoder.mel
        mine = (prior.n_mel, prior.hop, prior.sample_rate)
        theirs = (mel.n_mel, mel.hop, mel.sample_rate)
        if mine != theirs:
            raise FlowsuiteError(f"the prior's mels (bands, hop, rate = {mine}) do not match the "
                                 f"vocoder's {theirs}; use models trained on the same front end")
        self.prior, self.vocoder = prior.eval(), vocoder.eval()

    @classmethod
    def from_pretrained(cls, prior: str | os.PathLike | None = None,
                        vocoder: str | os.PathLike | None = None,
                        device: str | torch.device = "cpu") -> MusicGenerator:
        """Loads the two models from their files (``None``: the shipped ones). ``vocoder`` may be
        ``"griffin-lim"``, the baseline that needs no weights; with ``None`` and no WaveGlow
        shipped, Griffin-Lim is used (see :attr:`vocoder_name`)."""
        p = load_model(_model_path(prior, "mel-prior"), expected="mel-prior", map_location=device)
        if vocoder is None and not _shipped("waveglow"):
            vocoder = GRIFFIN_LIM
        if str(vocoder) == GRIFFIN_LIM:
            v: WaveGlow | GriffinLimVocoder = GriffinLimVocoder().to(device)
        else:
            v = load_model(_model_path(vocoder, "waveglow"), expected="waveglow",
                           map_location=device)  # type: ignore[assignment]
        return cls(p, v)  # type: ignore[arg-type]

    @property
    def vocoder_name(self) -> str:
        """``"waveglow"`` or ``"griffin-lim"``."""
        return GRIFFIN_LIM if isinstance(self.vocoder, GriffinLimVocoder) else "waveglow"

    @property
    def sample_rate(self) -> int:
        return self.prior.sample_rate

    def prime_mel(self, prime_audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Log-mel ``(n_mel, F)`` of mono audio ``(T,)`` at :attr:`sample_rate`."""
        x = torch.as_tensor(np.asarray(prime_audio, dtype=np.float32))
        if x.dim() != 1 or x.shape[0] < 2 * self.prior.hop * self.prior.block:
            raise FlowsuiteError(f"the clip to continue must be mono and at least "
                                 f"{2 * self.prior.hop * self.prior.block} samples long")
        with torch.no_grad():
            return self.vocoder.mel(x.to(self.vocoder.mel.window.device))

    @torch.no_grad()
    def generate_mel(self, seconds: float, seed: int = 0, temperature: float | None = None,
                     style: str | None = None, prime_audio: np.ndarray | None = None,
                     key: str | int | None = None, tempo: float | None = None,
                     gate_temperature: float | None = None,
                     onset_temperature: float | None = None,
                     onset_choices: int | str | None = None) -> torch.Tensor:
        """The log-mel ``(n_mel, F)`` covering ``seconds`` (``F = ceil(seconds * rate / hop)``);
        ``key`` for a prior trained with keys (a name such as ``"D minor"``; ``None``: at
        random), ``tempo`` for one trained with beats (beats per minute; ``None``: the
        style's) and ``gate_temperature``, ``onset_temperature`` and ``onset_choices`` for one
        with an onset gate (``None``: the prior's defaults; see :meth:`MelPrior.initial_state`).
        ``temperature``: ``None`` draws at the style's (:meth:`MelPrior.temperature_of`:
        ``DEFAULT_TEMPERATURE`` unless the prior names one for it)."""
        seconds = check_seconds(seconds)
        frames = math.ceil(round(seconds * self.sample_rate) / self.prior.hop)
        prime = None if prime_audio is None else self.prime_mel(prime_audio)
        return self.prior.sample(frames, style=style, temperature=temperature, seed=seed,
                                 prime=prime, key=key, tempo=tempo,
                                 gate_temperature=gate_temperature,
                                 onset_temperature=onset_temperature,
                                 onset_choices=onset_choices)[0]

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor, samples: int, sigma: float = 0.6, seed: int = 0,
               chunk_frames: int = 256) -> np.ndarray:
        """Audio float32 ``(samples,)`` from a log-mel ``(n_mel, F)``, synthesised in chunks of
        ``chunk_frames`` frames (bounded memory; Griffin-Lim uses chunks of 2048 frames). Where
        the mel covers fewer than ``samples`` samples, the rest is silence."""
        if not (sigma >= 0 and math.isfinite(sigma)):
            raise FlowsuiteError(f"sigma must be a non-negative number, not {sigma}")
        out = np.zeros(samples, dtype=np.float32)
        at = 0
        if isinstance(self.vocoder, GriffinLimVocoder):
            chunk_frames = max(chunk_frames, 2048)  # fewer seams; a chunk is cheap to hold
        for piece in self.vocoder.stream(mel[None], sigma, chunk_frames=chunk_frames, seed=seed):
            take = min(piece.shape[-1], samples - at)
            out[at:at + take] = piece[0, :take].cpu().numpy()
            at += take
            if at >= samples:
                break
        return out

    def generate(self, seconds: float, seed: int = 0, temperature: float | None = None,
                 sigma: float = 0.6, style: str | None = None,
                 prime_audio: np.ndarray | None = None,
                 key: str | int | None = None, tempo: float | None = None,
                 gate_temperature: float | None = None,
                 onset_temperature: float | None = None,
                 onset_choices: int | str | None = None) -> tuple[np.ndarray, int]:
        """``(waveform float32 (round(seconds * rate),), rate)`` of new music; with
        ``prime_audio`` (mono float32 at ``rate``) the music continues that clip (the output
        holds only the continuation); ``temperature``, ``key``, ``tempo``, ``gate_temperature``,
        ``onset_temperature`` and ``onset_choices`` as in :meth:`generate_mel`."""
        if temperature is not None and not (temperature >= 0 and math.isfinite(temperature)):
            raise FlowsuiteError(f"temperature must be a non-negative number, not {temperature}")
        if not (sigma >= 0 and math.isfinite(sigma)):
            raise FlowsuiteError(f"sigma must be a non-negative number, not {sigma}")
        mel = self.generate_mel(seconds, seed, temperature, style, prime_audio, key, tempo,
                                gate_temperature, onset_temperature, onset_choices)
        audio = self.vocode(mel, round(check_seconds(seconds) * self.sample_rate), sigma, seed)
        return audio, self.sample_rate
