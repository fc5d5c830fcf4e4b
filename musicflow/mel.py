"""The mel front end with the WaveGlow / Tacotron 2 defaults, its approximate inverse and a
Griffin-Lim baseline, all in torch.

Defaults: 22050 Hz, ``n_fft`` 1024, hop 256, a 1024-sample periodic Hann window, 80 mel bands from
0 to 8000 Hz on the Slaney mel scale with Slaney (area) normalisation (librosa's default
filterbank), and the natural log of the STFT magnitude clamped at 1e-5.

Framing: the signal is reflect-padded by ``(n_fft - hop) / 2`` samples on both sides and cut
into frames without centring, so a signal of ``T`` samples gives ``F = T // hop`` frames and
frame ``f`` is centred on the middle of the hop block ``[f * hop, (f + 1) * hop)``. A signal of
``F * hop`` samples therefore maps to exactly ``F`` frames, and a vocoder turns ``F`` frames back
into exactly ``F * hop`` samples.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowsuite.core.errors import FlowsuiteError

SAMPLE_RATE = 22050
N_FFT = 1024
HOP = 256
WIN = 1024
N_MEL = 80
FMIN = 0.0
FMAX = 8000.0
CLAMP = 1e-5
LOG_SILENCE = math.log(CLAMP)


class AudioShapeError(FlowsuiteError, ValueError):
    """Audio or a mel spectrogram of the wrong shape, band count, length or values."""


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    lin = hz / f_sp
    return np.where(hz >= min_log_hz,
                    min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep, lin)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """The inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)),
                    f_sp * mel)


def mel_band_edges(n_mel: int = N_MEL, fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """The ``n_mel + 2`` edge frequencies in Hz of the mel bands, evenly spaced on the Slaney
    scale: band ``i`` rises from edge ``i``, peaks at ``i + 1`` and falls to ``i + 2``."""
    return mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mel + 2))


def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mel: int = N_MEL,
                   fmin: float = FMIN, fmax: float = FMAX) -> Tensor:
    """Triangular mel filters ``(n_mel, n_fft // 2 + 1)`` (float64) on the Slaney scale, each
    scaled by ``2 / bandwidth`` so that it has unit area in Hz (Slaney normalisation)."""
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= sample_rate / 2, got {fmin}, {fmax}")
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_band_edges(n_mel, fmin, fmax)
    widths = np.diff(edges)
    rising = (freqs[None, :] - edges[:-2, None]) / widths[:-1, None]
    falling = (edges[2:, None] - freqs[None, :]) / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return torch.from_numpy(weights)


class MelSpectrogram(nn.Module):
    """Audio ``(B, T)`` or ``(T,)`` -> natural-log mel magnitudes ``(B, n_mel, T // hop)`` or
    ``(n_mel, T // hop)``, with the framing described in the module docstring.

    Also the STFT and its inverse with the same framing (:meth:`stft`, :meth:`istft`), and the
    approximate inverse of the mel projection (:meth:`to_linear`). The window and filterbank are
    non-persistent float64 buffers: they are rebuilt from the arguments, never saved, and cast
    to the signal's precision (float32, or float64 for float64 signals) when used.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, hop: int = HOP,
                 win: int = WIN, n_mel: int = N_MEL, fmin: float = FMIN, fmax: float = FMAX,
                 clamp: float = CLAMP):
        super().__init__()
        if (n_fft - hop) % 2 or hop > n_fft or win > n_fft:
            raise ValueError(f"need hop <= n_fft, win <= n_fft and n_fft - hop even; got "
                             f"n_fft={n_fft}, hop={hop}, win={win}")
        self.sample_rate, self.n_fft, self.hop, self.win = sample_rate, n_fft, hop, win
        self.n_mel, self.fmin, self.fmax, self.clamp = n_mel, fmin, fmax, clamp
        self.pad = (n_fft - hop) // 2
        window = torch.hann_window(win, periodic=True, dtype=torch.float64)
        left = (n_fft - win) // 2  # a window shorter than n_fft sits in the middle of the frame
        window = F.pad(window, (left, n_fft - win - left))
        # Kept in float64 and cast to the signal's precision when used.
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("basis", mel_filterbank(sample_rate, n_fft, n_mel, fmin, fmax),
                             persistent=False)

    @property
    def n_freq(self) -> int:
        return self.n_fft // 2 + 1

    def frames(self, samples: int) -> int:
        """The number of frames of a signal of ``samples`` samples: ``samples // hop``."""
        return samples // self.hop

    def _as_batch(self, audio: Tensor) -> tuple[Tensor, bool]:
        if audio.dim() not in (1, 2):
            raise AudioShapeError(f"audio must be (T,) or (B, T), got shape {tuple(audio.shape)}")
        single = audio.dim() == 1
        audio = audio[None] if single else audio
        if audio.shape[-1] <= self.pad:
            raise AudioShapeError(f"audio of {audio.shape[-1]} samples is too short; give at "
                                  f"least {self.pad + 1} samples ({self.hop} per frame)")
        dtype = torch.float64 if audio.dtype == torch.float64 else torch.float32
        return audio.to(dtype), single

    def stft(self, audio: Tensor) -> Tensor:
        """Complex STFT ``(B, T) -> (B, n_fft // 2 + 1, T // hop)`` with reflect padding by
        ``(n_fft - hop) / 2`` on both sides and no centring."""
        audio, single = self._as_batch(audio)
        padded = F.pad(audio[:, None], (self.pad, self.pad), mode="reflect")[:, 0]
        spec = torch.stft(padded, self.n_fft, self.hop, self.n_fft,
                          self.window.to(audio.dtype), center=False, return_complex=True)
        return spec[0] if single else spec

    def istft(self, spec: Tensor) -> Tensor:
        """Inverse of :meth:`stft` by weighted overlap-add: ``(B, n_freq, F) -> (B, F * hop)``.
        ``istft(stft(x)) == x`` for any ``x`` of ``F * hop`` samples."""
        single = spec.dim() == 2
        spec = spec[None] if single else spec
        b, _, n = spec.shape
        window = self.window.to(spec.real.dtype)
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=1) * window[None, :, None]
        length = (n - 1) * self.hop + self.n_fft
        out = F.fold(frames, (1, length), (1, self.n_fft), stride=(1, self.hop))[:, 0, 0]
        env = F.fold(window.square()[None, :, None].expand(1, -1, n), (1, length),
                     (1, self.n_fft), stride=(1, self.hop))[:, 0, 0]
        audio = (out / env.clamp_min(1e-8))[:, self.pad:self.pad + n * self.hop]
        return audio[0] if single else audio

    def magnitude_to_mel(self, magnitude: Tensor) -> Tensor:
        """Linear magnitudes ``(B, n_freq, F)`` -> log mel ``(B, n_mel, F)``."""
        mel = torch.matmul(self.basis.to(magnitude.dtype), magnitude)
        return torch.log(mel.clamp_min(self.clamp))

    def forward(self, audio: Tensor) -> Tensor:
        return self.magnitude_to_mel(self.stft(audio).abs())

    def to_linear(self, log_mel: Tensor, iterations: int = 200) -> Tensor:
        """Approximate STFT magnitudes ``(B, n_freq, F)`` whose mel projection is closest to
        ``exp(log_mel)`` ``(B, n_mel, F)`` in least squares, subject to being non-negative
        (multiplicative updates for non-negative least squares, started from the transposed
        filterbank)."""
        basis = self.basis.to(torch.float64 if log_mel.dtype == torch.float64 else torch.float32)
        support = basis.sum(0) > 0  # bins outside every filter stay at zero
        sub = basis[:, support]
        target = torch.exp(log_mel.to(basis.dtype))
        gram = sub.T @ sub
        numer = torch.matmul(sub.T, target)
        est = numer / sub.sum(0)[:, None]
        for _ in range(iterations):
            est = est * numer / torch.matmul(gram, est).clamp_min(1e-12)
            # Flush vanishing values before they turn into denormals, which slow every later
            # operation on the CPU by orders of magnitude.
            est = est.masked_fill(est < 1e-20, 0.0)
        out = est.new_zeros(*est.shape[:-2], basis.shape[1], est.shape[-1])
        out[..., support, :] = est
        return out

    def griffin_lim(self, magnitude: Tensor, iterations: int = 32, momentum: float = 0.99,
                    generator: torch.Generator | None = None) -> Tensor:
        """Audio ``(B, F * hop)`` whose STFT magnitude approaches ``magnitude`` ``(B, n_freq,
        F)``: fast Griffin-Lim (Perraudin et al., 2013) from random phases, with this module's
        framing."""
        single = magnitude.dim() == 2
        magnitude = magnitude[None] if single else magnitude
        phase = torch.rand(magnitude.shape, generator=generator, dtype=magnitude.dtype,
                           device=magnitude.device) * (2 * math.pi)
        angles = torch.polar(torch.ones_like(magnitude), phase)
        previous = torch.zeros_like(angles)
        for _ in range(iterations):
            rebuilt = self.stft(self.istft(magnitude * angles))
            angles = rebuilt - (momentum / (1 + momentum)) * previous
            angles = angles / angles.abs().clamp_min(1e-16)
            previous = rebuilt
        audio = self.istft(magnitude * angles)
        return audio[0] if single else audio

    def griffin_lim_from_mel(self, log_mel: Tensor, iterations: int = 32,
                             generator: torch.Generator | None = None) -> Tensor:
        """The Griffin-Lim baseline vocoder: log mel ``(B, n_mel, F)`` -> audio
        ``(B, F * hop)``."""
        return self.griffin_lim(self.to_linear(log_mel), iterations, generator=generator)


class GriffinLimVocoder(nn.Module):
    """The Griffin-Lim baseline as a vocoder with WaveGlow's streaming interface: log-mel to audio
    with no trained weights (phase found by iteration, so it sounds phasey, but it follows the
    mel exactly where an undertrained WaveGlow does not).

    Long spectrograms are synthesised in chunks of ``chunk_frames`` frames; each chunk is solved
    with ``overlap`` frames more on each side and the seams are cross-faded over those frames, so
    memory stays bounded whatever the length.
    """

    def __init__(self, mel: MelSpectrogram | None = None, iterations: int = 32,
                 overlap: int = 16):
        super().__init__()
        if iterations < 1 or overlap < 0:
            raise ValueError("iterations must be positive and overlap non-negative")
        self.mel = mel if mel is not None else MelSpectrogram()
        self.iterations, self.overlap = int(iterations), int(overlap)

    @property
    def sample_rate(self) -> int:
        return self.mel.sample_rate

    @property
    def hop(self) -> int:
        return self.mel.hop

    @torch.no_grad()
    def stream(self, mel: Tensor, sigma: float = 0.0, *, chunk_frames: int | None = 2048,
               seed: int | None = 0, **_: object):
        """Yields consecutive audio pieces ``(B, frames * hop)`` of log-mel ``(B, n_mel, F)``;
        ``sigma`` is ignored (there is no latent), ``seed`` seeds the initial phases."""
        if mel.dim() != 3 or mel.shape[1] != self.mel.n_mel or mel.shape[2] < 1:
            raise AudioShapeError(f"a log-mel spectrogram (batch, {self.mel.n_mel}, frames) is "
                                  f"needed, got {tuple(mel.shape)}")
        frames, hop, ov = mel.shape[2], self.mel.hop, self.overlap
        size = max(1, chunk_frames or frames)
        gen = torch.Generator(device=mel.device).manual_seed(0 if seed is None else seed)
        tail: Tensor | None = None
        for start in range(0, frames, size):
            end = min(frames, start + size)
            a, b = max(0, start - ov), min(frames, end + ov)
            audio = self.mel.griffin_lim_from_mel(mel[..., a:b], self.iterations, generator=gen)
            body = audio[:, (start - a) * hop:(end - a) * hop].clone()
            if tail is not None and tail.shape[1]:
                n = min(tail.shape[1], body.shape[1])
                fade = torch.linspace(0.0, 1.0, n, device=body.device, dtype=body.dtype)
                body[:, :n] = tail[:, :n] * (1 - fade) + body[:, :n] * fade
            tail = audio[:, (end - a) * hop:(b - a) * hop]
            yield body
