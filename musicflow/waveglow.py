"""WaveGlow (Prenger et al., 2019): a flow from audio to Gaussian noise conditioned on a mel
spectrogram, built from flowsuite.core's layers.

Audio ``(B, T)`` is squeezed into groups of ``n_group`` samples ``(B, n_group, T / n_group)``;
each step is an invertible 1x1 convolution and an affine coupling whose conditioner is a
:class:`~flowsuite.musicflow.wavenet.WaveNet` fed with the mel upsampled to the squeezed rate;
every ``n_early_every`` steps ``n_early_size`` channels leave for the latent. ``F`` mel frames
correspond to exactly ``F * hop`` samples (the framing of :mod:`flowsuite.musicflow.mel`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowsuite.core import (
    AffineCoupling,
    Bijection,
    Compose,
    EarlySplit,
    Flow,
    InvertibleLinear,
    Squeeze,
    StandardNormal,
)
from flowsuite.core.checkpoint import register_model
from flowsuite.musicflow.mel import (
    CLAMP,
    FMAX,
    FMIN,
    HOP,
    N_FFT,
    N_MEL,
    SAMPLE_RATE,
    AudioShapeError,
    MelSpectrogram,
)
from flowsuite.musicflow.wavenet import WaveNet, compute_dtype

PRESETS: dict[str, dict] = {
    # The paper's vocoder: 12 steps on groups of 8 samples, 2 channels out every 4 steps, WaveNets
    # of 8 layers and width 256, the mel upsampled to the sample rate by a transposed convolution.
    "paper": dict(n_flows=12, n_group=8, n_early_every=4, n_early_size=2, wn_layers=8,
                  wn_channels=256, kernel_size=3, upsample="transposed"),
    # For CPUs: groups of 32 samples (a quarter of the paper's steps per second; SqueezeWave
    # goes further), 8 steps of 6-layer WaveNets of width 64, and the mel interpolated straight
    # to the squeezed rate (80 context channels instead of 80 * 32). Chosen among candidates by
    # measured speed: see bench/BENCHMARKS_musicflow.md.
    "compact": dict(n_flows=8, n_group=32, n_early_every=4, n_early_size=8, wn_layers=6,
                    wn_channels=64, kernel_size=3, upsample="linear"),
}

# Latent noise is drawn in blocks of this many frames, each from its own generator seeded by
# (seed, block index), so the noise at a sample does not depend on how synthesis is chunked.
NOISE_BLOCK_FRAMES = 64
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}


class MelUpsampler(nn.Module):
    """Mel ``(B, n_mel, F)`` -> context at the squeezed rate ``(B, channels, F * hop / n_group)``.

    ``"transposed"`` (WaveGlow): a transposed convolution with stride ``hop`` and kernel
    ``4 * hop`` to the sample rate, trimmed by ``1.5 * hop`` on both sides so that frame ``f``
    covers the samples of its STFT window, then folded into groups: ``n_mel * n_group`` channels.
    ``"linear"``: a learned 3-tap convolution over frames, then linear interpolation to the
    squeezed rate with each frame's value at the centre of its hop block: ``channels`` channels.
    """

    def __init__(self, n_mel: int, hop: int, n_group: int, mode: str = "transposed",
                 channels: int | None = None):
        super().__init__()
        self.n_mel, self.hop, self.n_group, self.mode = n_mel, hop, n_group, mode
        if mode == "transposed":
            self.conv = nn.ConvTranspose1d(n_mel, n_mel, 4 * hop, stride=hop)
            self.channels = n_mel * n_group
        elif mode == "linear":
            self.channels = channels or n_mel
            self.conv = nn.Conv1d(n_mel, self.channels, 3, padding=1)
        else:
            raise ValueError(f"unknown upsampling {mode!r}; use 'transposed' or 'linear'")

    #: How many frames on each side of a frame can change the context at its samples.
    half_receptive_field = 3

    def _transposed(self, mel: Tensor) -> Tensor:
        """The transposed convolution as one matrix product and a shift-add of its ``taps``
        overlapping blocks: ``(B, n_mel, F) -> (B, n_mel, F * hop)``. (oneDNN builds a new
        kernel for each new input length, which costs seconds with this kernel size.)"""
        b, _, frames = mel.shape
        taps = self.conv.kernel_size[0] // self.hop
        w = self.conv.weight.flatten(1)  # (in, out * taps * hop)
        blocks = (mel.transpose(1, 2) @ w).view(b, frames, -1, taps, self.hop)
        out = blocks.new_zeros(b, frames + taps - 1, blocks.shape[2], self.hop)
        for j in range(taps):
            out[:, j:j + frames] += blocks[:, :, :, j]
        out = out.permute(0, 2, 1, 3).reshape(b, -1, (frames + taps - 1) * self.hop)
        trim = (self.conv.kernel_size[0] - self.hop) // 2
        return out[..., trim:trim + frames * self.hop] + self.conv.bias[:, None]

    def forward(self, mel: Tensor) -> Tensor:
        if self.mode == "transposed":
            up = self._transposed(mel)
            b, c, t = up.shape
            up = up.reshape(b, c, t // self.n_group, self.n_group).transpose(2, 3)
            return up.reshape(b, c * self.n_group, t // self.n_group)
        return F.interpolate(self.conv(mel), scale_factor=self.hop // self.n_group,
                             mode="linear", align_corners=False)


@register_model("waveglow")
class WaveGlow(nn.Module):
    """A mel-conditioned WaveGlow vocoder.

    The constructor takes JSON-serialisable keyword arguments only and keeps them in
    ``self.config``, so ``WaveGlow(**model.config)`` rebuilds the architecture.

    Args:
        n_mel: mel bands of the conditioning spectrogram.
        n_flows: flow steps (1x1 convolution + affine coupling each).
        n_group: samples folded into channels by the squeeze.
        n_early_every, n_early_size: ``n_early_size`` channels leave before every
            ``n_early_every``-th step (0 = no early outputs).
        wn_layers, wn_channels, kernel_size: each coupling's WaveNet.
        hop, sample_rate, n_fft, fmin, fmax: the mel front end (``self.mel``).
        upsample, upsample_channels: the mel upsampler (:class:`MelUpsampler`).
        scale_bound: soft bound of each coupling's log-scale.
    """

    def __init__(self, n_mel: int = N_MEL, n_flows: int = 12, n_group: int = 8,
                 n_early_every: int = 4, n_early_size: int = 2, wn_layers: int = 8,
                 wn_channels: int = 256, kernel_size: int = 3, hop: int = HOP,
                 sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, fmin: float = FMIN,
                 fmax: float = FMAX, upsample: str = "transposed",
                 upsample_channels: int | None = None, scale_bound: float = 3.0):
        super().__init__()
        self.config = dict(n_mel=n_mel, n_flows=n_flows, n_group=n_group,
                           n_early_every=n_early_every, n_early_size=n_early_size,
                           wn_layers=wn_layers, wn_channels=wn_channels, kernel_size=kernel_size,
                           hop=hop, sample_rate=sample_rate, n_fft=n_fft, fmin=fmin, fmax=fmax,
                           upsample=upsample, upsample_channels=upsample_channels,
                           scale_bound=scale_bound)
        if hop % n_group:
            raise ValueError(f"hop {hop} must be a multiple of n_group {n_group}")
        splits = (n_flows - 1) // n_early_every if n_early_every > 0 else 0
        if n_group - splits * n_early_size < 2:
            raise ValueError(f"{splits} early outputs of {n_early_size} channels leave fewer "
                             f"than 2 of {n_group} channels for the last steps")
        self.n_mel, self.hop, self.n_group, self.n_flows = n_mel, hop, n_group, n_flows
        self.n_early_every, self.n_early_size = n_early_every, n_early_size
        self.sample_rate = sample_rate
        self.mel = MelSpectrogram(sample_rate, n_fft, hop, n_fft, n_mel, fmin, fmax, CLAMP)
        self.upsample = MelUpsampler(n_mel, hop, n_group, upsample, upsample_channels)
        ctx = self.upsample.channels

        def step(channels: int) -> list[Bijection]:
            half = channels // 2
            net = WaveNet(half, 2 * (channels - half), ctx, wn_layers, wn_channels, kernel_size)
            return [InvertibleLinear(channels, dim=1),
                    AffineCoupling(channels, net, dim=1, split=half, scale_bound=scale_bound)]

        def segment(start: int, channels: int) -> Compose:
            end = n_flows if n_early_every <= 0 else min(n_flows, start + n_early_every)
            parts: list[Bijection] = []
            for _ in range(start, end):
                parts += step(channels)
            if end < n_flows:
                parts.append(EarlySplit(n_early_size, segment(end, channels - n_early_size),
                                        dim=1))
            return Compose(*parts)

        # Audio (B, 1, T) -> latent (B, n_group, T / n_group), context = upsampled mel.
        self.bijection = Compose(Squeeze(n_group), segment(0, n_group))
        self.flow = Flow(self.bijection, StandardNormal(n_group, hop // n_group))
        self._bias: tuple[tuple, Tensor] | None = None

    @classmethod
    def from_preset(cls, name: str, **overrides) -> WaveGlow:
        """A model of a named size (``"paper"`` or ``"compact"``), with any argument changed."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *,
                        map_location: str | torch.device = "cpu") -> WaveGlow:
        """A trained vocoder in eval mode: the shipped one (``path=None``), or a training run's
        folder or ``.safetensors`` file. ``model.metadata`` holds the file's extra metadata."""
        from flowsuite.data.pretrained import load_pretrained

        model, info = load_pretrained("waveglow", path, map_location=map_location)
        model.metadata = dict(info.user)
        return model

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def receptive_field_frames(self) -> int:
        """Frames of mel context on each side beyond which a chunk's audio cannot change: the
        overlap that makes chunked synthesis equal to whole synthesis."""
        nets = [m for m in self.modules() if isinstance(m, WaveNet)]
        steps = sum(n.half_receptive_field for n in nets)  # the couplings run one after another
        return math.ceil(steps * self.n_group / self.hop) + self.upsample.half_receptive_field

    # ----------------------------------------------------------------------------- likelihood

    def check_mel(self, mel: Tensor) -> Tensor:
        """Validates a log-mel spectrogram ``(B, n_mel, F)`` or ``(n_mel, F)``; returns it as
        ``(B, n_mel, F)``. Raises :class:`AudioShapeError` (a ``ValueError``) otherwise."""
        if not isinstance(mel, Tensor) or not mel.is_floating_point():
            raise AudioShapeError("the mel spectrogram must be a floating-point tensor")
        if mel.dim() == 2:
            mel = mel[None]
        if mel.dim() != 3:
            raise AudioShapeError(f"the mel spectrogram must be (B, {self.n_mel}, frames) or "
                                  f"({self.n_mel}, frames), got shape {tuple(mel.shape)}")
        if mel.shape[1] != self.n_mel:
            hint = " (frames and bands swapped?)" if mel.shape[2] == self.n_mel else ""
            raise AudioShapeError(f"the mel spectrogram has {mel.shape[1]} bands but this model "
                                  f"takes {self.n_mel}{hint}; compute it with the model's "
                                  f"front end (model.mel)")
        if mel.shape[2] < 1:
            raise AudioShapeError("the mel spectrogram has no frames")
        if not torch.isfinite(mel).all():
            raise AudioShapeError("the mel spectrogram holds NaN or infinite values; log-mels are "
                                  f"clamped at log({CLAMP})")
        return mel

    def _check_audio(self, audio: Tensor) -> Tensor:
        if not isinstance(audio, Tensor) or not audio.is_floating_point():
            raise AudioShapeError("audio must be a floating-point tensor")
        if audio.dim() == 1:
            audio = audio[None]
        if audio.dim() != 2:
            raise AudioShapeError(f"audio must be (B, T) or (T,), got {tuple(audio.shape)}")
        if audio.shape[-1] % self.hop or audio.shape[-1] == 0:
            raise AudioShapeError(f"audio of {audio.shape[-1]} samples is not a whole number of "
                                  f"{self.hop}-sample frames; trim or pad it")
        return audio

    def _check_pair(self, audio: Tensor, mel: Tensor | None) -> tuple[Tensor, Tensor]:
        audio = self._check_audio(audio)
        if mel is None:
            mel = self.mel(audio)
        mel = self.check_mel(mel)
        if mel.shape[-1] * self.hop != audio.shape[-1] or mel.shape[0] != audio.shape[0]:
            raise AudioShapeError(f"{mel.shape[-1]} mel frames need {mel.shape[-1] * self.hop} "
                                  f"samples, got audio of shape {tuple(audio.shape)}")
        return audio, mel

    def log_prob(self, audio: Tensor, mel: Tensor | None = None) -> Tensor:
        """``log p(audio | mel)`` in nats, ``(B,)``. ``audio: (B, F * hop)``; ``mel: (B, n_mel,
        F)``, computed from the audio by ``self.mel`` when left out."""
        audio, mel = self._check_pair(audio, mel)
        dtype = self._dtype()
        return self.flow.log_prob(audio[:, None].to(dtype), self.upsample(mel.to(dtype)))

    def forward(self, batch: dict | tuple | list | Tensor) -> dict[str, Tensor]:
        """The trainer's loss: ``batch`` is ``{"audio": (B, T), "mel": (B, n_mel, F)}`` (``mel``
        optional), a pair ``(audio, mel)`` or an audio tensor. Returns ``loss``, the negative
        log-likelihood per sample in nats, and the same detached as ``nll_per_dim``."""
        if isinstance(batch, dict):
            audio, mel = batch["audio"], batch.get("mel")
        elif isinstance(batch, (tuple, list)):
            audio, mel = batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            audio, mel = batch, None
        audio, mel = self._check_pair(audio, mel)
        nll = -self.log_prob(audio, mel) / audio.shape[-1]
        loss = nll.mean()
        return {"loss": loss, "nll_per_dim": loss.detach()}

    # ------------------------------------------------------------------------------ synthesis

    def _dtype(self) -> torch.dtype:
        return self.upsample.conv.weight.dtype

    def _device(self) -> torch.device:
        return self.upsample.conv.weight.device

    def latent_noise(self, batch: int, start_frame: int, frames: int, seed: int) -> Tensor:
        """Standard normal noise ``(batch, n_group, frames * hop / n_group)`` for the frames
        ``[start_frame, start_frame + frames)`` of a signal: the same at each position whatever
        the window asked for."""
        if seed < 0:
            raise ValueError(f"the seed must be a non-negative integer, got {seed}")
        steps = self.hop // self.n_group
        first = start_frame // NOISE_BLOCK_FRAMES
        last = (start_frame + frames - 1) // NOISE_BLOCK_FRAMES
        blocks = []
        for k in range(first, last + 1):
            state = np.random.SeedSequence([seed, k]).generate_state(2, np.uint32)
            gen = torch.Generator(device=self._device())
            gen.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
            blocks.append(torch.randn(batch, self.n_group, NOISE_BLOCK_FRAMES * steps,
                                      generator=gen, device=self._device()))
        noise = torch.cat(blocks, dim=-1)
        offset = (start_frame - first * NOISE_BLOCK_FRAMES) * steps
        return noise[..., offset:offset + frames * steps].to(self._dtype())

    def _synthesise(self, mel: Tensor, sigma: float, seed: int, start_frame: int) -> Tensor:
        """One window: mel ``(B, n_mel, F)`` starting at ``start_frame`` -> audio
        ``(B, F * hop)``."""
        context = self.upsample(mel.to(self._dtype()))
        z = self.latent_noise(mel.shape[0], start_frame, mel.shape[-1], seed) * sigma
        audio, _ = self.bijection.inverse(z, context)
        return audio[:, 0]

    def _compute_dtype(self, dtype: torch.dtype | str | None) -> torch.dtype | None:
        """The WaveNets' autocast dtype for ``dtype``: ``None`` for the model's own precision."""
        if isinstance(dtype, str):
            if dtype not in _DTYPES:
                raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(_DTYPES)}")
            dtype = _DTYPES[dtype]
        if dtype is None or dtype == self._dtype():
            return None
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"cannot run a {self._dtype()} model in {dtype}; cast the model "
                             "(model.to(dtype)) or ask for float16 or bfloat16")
        return dtype

    def stream(self, mel: Tensor, sigma: float = 0.6, *, dtype: torch.dtype | str | None = None,
               chunk_frames: int | None = None, overlap_frames: int | None = None,
               denoise: float = 0.0, seed: int | None = 0) -> Iterator[Tensor]:
        """Synthesises audio chunk by chunk and yields consecutive pieces ``(B, chunk * hop)``;
        see :meth:`infer` for the arguments. Memory stays bounded by the chunk size."""
        mel = self.check_mel(mel).to(self._device())
        if sigma < 0:
            raise ValueError(f"sigma must be non-negative, got {sigma}")
        if denoise < 0:
            raise ValueError(f"the denoiser strength must be non-negative, got {denoise}")
        if chunk_frames is not None and chunk_frames < 1:
            raise ValueError(f"chunk_frames must be at least 1, got {chunk_frames}")
        if seed is None:
            seed = int(torch.randint(0, 2 ** 62, ()))
        low = self._compute_dtype(dtype)
        frames = mel.shape[-1]
        chunk = frames if chunk_frames is None else chunk_frames
        overlap = self.receptive_field_frames if overlap_frames is None else overlap_frames
        # Denoising a sample reads the audio up to one STFT window away.
        margin = math.ceil(self.mel.n_fft / self.hop) if denoise > 0 else 0
        # The contexts are entered per chunk, never across a yield: the caller's code between
        # chunks keeps its own grad mode and the WaveNets their own precision.
        bias = None
        if denoise > 0:
            with torch.no_grad(), compute_dtype(self, low):
                bias = self.bias_spectrum() * denoise
        for a in range(0, frames, chunk):
            b = min(frames, a + chunk)
            lo, hi = max(0, a - overlap - margin), min(frames, b + overlap + margin)
            with torch.no_grad(), compute_dtype(self, low):
                audio = self._synthesise(mel[..., lo:hi], sigma, seed, lo)
                if bias is not None:
                    audio = self._subtract(audio, bias)
            yield audio[:, (a - lo) * self.hop:(b - lo) * self.hop].float()

    def infer(self, mel: Tensor, sigma: float = 0.6, *, dtype: torch.dtype | str | None = None,
              chunk_frames: int | None = None, overlap_frames: int | None = None,
              denoise: float = 0.0, seed: int | None = 0) -> Tensor:
        """Audio ``(B, F * hop)`` (float32) from a log-mel ``(B, n_mel, F)``; ``(F * hop,)`` from
        ``(n_mel, F)``.

        Args:
            sigma: standard deviation of the latent noise (0 = the deterministic mode).
            dtype: precision of the WaveNets (``float32``, ``float16``, ``bfloat16``; ``None`` =
                the model's). The flow's state, the 1x1 convolutions and the affine transforms
                stay in the model's precision.
            chunk_frames: synthesise this many frames at a time (``None`` = all at once).
            overlap_frames: mel context on each side of a chunk; by default the receptive
                field, which makes chunked output equal to whole output.
            denoise: strength of the bias-spectrum denoiser (0 = off; 0.01 to 0.1 is usual).
            seed: seeds the latent noise, drawn per global sample position (``None`` = from
                torch's global generator).
        """
        single = mel.dim() == 2
        audio = torch.cat(list(self.stream(mel, sigma, dtype=dtype, chunk_frames=chunk_frames,
                                           overlap_frames=overlap_frames, denoise=denoise,
                                           seed=seed)), dim=-1)
        return audio[0] if single else audio

    # ------------------------------------------------------------------------------- denoiser

    def bias_spectrum(self, frames: int = 32) -> Tensor:
        """The model's bias: the mean STFT magnitude ``(n_freq, 1)`` of the audio it makes from
        a silent mel (every band at the clamp) with ``sigma = 0``. Cached until a weight
        changes."""
        params = list(self.parameters())
        key = (frames, self._device(), self._dtype(),
               tuple(n.compute_dtype for n in self.modules() if isinstance(n, WaveNet)),
               tuple((p.data_ptr(), p._version) for p in params))
        if self._bias is None or self._bias[0] != key:
            with torch.no_grad():
                silent = torch.full((1, self.n_mel, frames), math.log(CLAMP),
                                    device=self._device(), dtype=self._dtype())
                audio = self._synthesise(silent, 0.0, 0, 0)
                spectrum = self.mel.stft(audio).abs().mean(dim=-1)[0, :, None]
            self._bias = (key, spectrum)
        return self._bias[1]

    def _subtract(self, audio: Tensor, bias: Tensor) -> Tensor:
        spec = self.mel.stft(audio)
        mag = spec.abs()
        gain = (mag - bias.to(mag.dtype)).clamp_min(0) / mag.clamp_min(1e-12)
        return self.mel.istft(spec * gain)

    def denoise(self, audio: Tensor, strength: float = 0.01) -> Tensor:
        """Removes ``strength`` times the model's bias spectrum (:meth:`bias_spectrum`) from the
        STFT magnitudes of ``audio`` ``(B, F * hop)``, keeping the phases. Strength 0 returns the
        audio unchanged (up to the STFT round trip)."""
        if strength < 0:
            raise ValueError(f"the denoiser strength must be non-negative, got {strength}")
        single = audio.dim() == 1
        audio = self._check_audio(audio).to(self._device(), self._dtype())
        with torch.no_grad():
            out = self._subtract(audio, self.bias_spectrum() * strength)
        return out[0] if single else out
