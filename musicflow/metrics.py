"""Distances between a reference waveform and a resynthesis of it.

* :func:`multi_resolution_stft`: spectral convergence and log-magnitude L1, averaged over STFTs
  of 512, 1024 and 2048 points (hop a quarter of the size, Hann window).
* :func:`log_mel_l1`: mean absolute difference of two log-mel spectrograms.
* :func:`mel_cepstral_distortion`: MCD in dB from the DCT of log-mels, ``c0`` (the energy)
  excluded, with the usual constant ``10 * sqrt(2) / ln 10``.

Every function returns 0 for identical inputs and a positive number otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

STFT_SIZES = (512, 1024, 2048)
MCD_CONSTANT = 10.0 * math.sqrt(2.0) / math.log(10.0)
_EPS = 1e-7


def _pair(ref: Tensor, est: Tensor) -> tuple[Tensor, Tensor]:
    """Both as ``(B, T)`` float32, cut to the shorter length."""
    ref, est = torch.as_tensor(ref).float(), torch.as_tensor(est).float()
    if ref.dim() == 1:
        ref = ref[None]
    if est.dim() == 1:
        est = est[None]
    n = min(ref.shape[-1], est.shape[-1])
    return ref[..., :n], est[..., :n]


def _magnitude(x: Tensor, n_fft: int) -> Tensor:
    window = torch.hann_window(n_fft, device=x.device)
    spec = torch.stft(x, n_fft, n_fft // 4, n_fft, window, center=True, pad_mode="reflect"
                      if x.shape[-1] > n_fft // 2 else "constant", return_complex=True)
    return spec.abs().clamp_min(_EPS)


def multi_resolution_stft(ref: Tensor, est: Tensor,
                          sizes: tuple[int, ...] = STFT_SIZES) -> dict[str, float]:
    """``ref, est: (T,)`` or ``(B, T)`` waveforms. Returns ``{"spectral_convergence",
    "log_mag_l1", "mr_stft"}`` (the last is their sum), each averaged over ``sizes``.

    Spectral convergence is ``||S_ref - S_est||_F / ||S_ref||_F`` on STFT magnitudes; the
    log-magnitude distance is ``mean |log S_ref - log S_est|``."""
    ref, est = _pair(ref, est)
    sc = lm = 0.0
    for n_fft in sizes:
        a, b = _magnitude(ref, n_fft), _magnitude(est, n_fft)
        sc += (torch.linalg.norm(a - b) / torch.linalg.norm(a).clamp_min(_EPS)).item()
        lm += (a.log() - b.log()).abs().mean().item()
    sc, lm = sc / len(sizes), lm / len(sizes)
    return {"spectral_convergence": sc, "log_mag_l1": lm, "mr_stft": sc + lm}


def _mels(ref: Tensor, est: Tensor) -> tuple[Tensor, Tensor]:
    ref, est = torch.as_tensor(ref).float(), torch.as_tensor(est).float()
    n = min(ref.shape[-1], est.shape[-1])
    if ref.shape[:-1] != est.shape[:-1]:
        raise ValueError(f"mel shapes differ: {tuple(ref.shape)} and {tuple(est.shape)}")
    return ref[..., :n], est[..., :n]


def log_mel_l1(ref: Tensor, est: Tensor) -> float:
    """Mean ``|ref - est|`` of log-mels ``(n_mel, F)`` or ``(B, n_mel, F)`` (frames cut to the
    shorter)."""
    ref, est = _mels(ref, est)
    return (ref - est).abs().mean().item()


def dct_matrix(n: int) -> Tensor:
    """The orthonormal DCT-II ``(n, n)``: ``c = D @ x``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None]
    d = torch.cos(math.pi * k * (2 * i + 1) / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.float()


def mel_cepstral_distortion(ref: Tensor, est: Tensor, n_cep: int = 24) -> float:
    """MCD in dB between log-mels ``(n_mel, F)`` or ``(B, n_mel, F)`` (natural log): cepstra
    ``c_1 .. c_n_cep`` from the DCT over bands, ``MCD_CONSTANT * sqrt(sum_k (dc_k)^2)`` per
    frame, averaged over frames."""
    ref, est = _mels(ref, est)
    d = dct_matrix(ref.shape[-2])[1:n_cep + 1]
    diff = torch.einsum("kn,...nf->...kf", d, ref - est)
    return (MCD_CONSTANT * diff.pow(2).sum(-2).sqrt()).mean().item()
