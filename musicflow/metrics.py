"""Distances between a reference waveform and a resynthesis of it.

* :func:`multi_resolution_stft`: spectral convergence and log-magnitude L1, averaged over STFTs
  of 512, 1024 and 2048 points (hop a quarter of the size, Hann window).
* :func:`log_mel_l1`: mean absolute difference of two log-mel spectrograms.
* :func:`mel_cepstral_distortion`: MCD in dB from the DCT of log-mels, ``c0`` (the energy)
  excluded, with the usual constant ``10 * sqrt(2) / ln 10``.

And distances between distributions of music clips (generated against held-out):
:func:`clip_statistics`, :func:`music_distances`, :func:`frechet_distance`, :func:`key_stability`
(whether a clip keeps its key), the shaped-noise baseline :func:`shaped_noise`, and the note
onsets of a log-mel, :func:`mel_onset_frames` (from its broadband rise, :func:`mel_rise`).

Every distance returns 0 for identical inputs and a positive number otherwise.
"""

from __future__ import annotations

import math

import numpy as np
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


# ------------------------------------------------------------------------------------------
# Distances between distributions of music clips (gen eval music)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to the rows of ``a`` ``(N, D)`` and ``b``
    ``(M, D)``: ``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))``."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(ca @ cb)
    if not np.isfinite(root).all():  # nearly singular product: regularise and try again
        eps = 1e-6 * np.eye(ca.shape[0])
        root = linalg.sqrtm((ca + eps) @ (cb + eps))
    d = float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2.0 * root.real))
    return max(d, 0.0)


RHYTHM_FEATURES = ("onset_rate", "onset_strength_mean", "onset_strength_cv", "pulse_clarity")

# Key stability (:func:`key_stability`): chroma summed over windows of this many seconds, and
# compared between windows at least KEY_MIN_LAG seconds apart.
KEY_WINDOW = 1.0
KEY_MIN_LAG = 2.0
CHROMA_FFT = 2048


def key_stability(x: np.ndarray, sample_rate: int, window: float = KEY_WINDOW,
                  min_lag: float = KEY_MIN_LAG, hop: int = 512,
                  spec: np.ndarray | None = None) -> float:
    """How much a clip stays in one key: the mean Pearson correlation, over the 12 pitch
    classes, between the chroma of ``window``-second stretches at least ``min_lag`` seconds
    apart. Tonal music that keeps its key scores well above 0 (its chords change, their pitch
    classes mostly do not); music that wanders from key to key, or white noise, scores near 0
    (noise shaped to a tonal spectrum keeps that spectrum's pitch classes, and scores as
    stable as its source: the statistic says whether the key holds, not whether it is music).
    Silent windows are left out; a clip with fewer than two windows that far apart scores 0.
    ``spec``: the STFT magnitudes of ``x`` if already computed (n_fft :data:`CHROMA_FFT`,
    this ``hop``)."""
    import librosa

    from flowsuite.musicflow.keys import balanced_chroma

    if spec is None:
        spec = np.abs(librosa.stft(np.asarray(x, np.float32), n_fft=CHROMA_FFT, hop_length=hop))
    # balanced: white noise would otherwise read as a key that never changes
    chroma = balanced_chroma(spec ** 2, sample_rate, CHROMA_FFT)
    f = max(1, int(round(window * sample_rate / hop)))
    return chroma_key_stability(chroma, f, int(math.ceil(min_lag / window - 1e-9)),
                                loud=spec.sum(0) > 0)


def chroma_key_stability(chroma: np.ndarray, window: int, lag: int,
                         loud: np.ndarray | None = None) -> float:
    """:func:`key_stability` of a chroma sequence ``(12, F)``: the mean Pearson correlation
    between the sums of ``window``-frame stretches ``lag`` or more stretches apart; stretches
    without a ``loud`` frame (``(F,)`` bool; default: every frame counts) or without contrast
    between classes are left out."""
    chroma = np.asarray(chroma)
    rows, starts = [], []
    for i in range(0, chroma.shape[1] - window + 1, window):
        w = chroma[:, i:i + window].sum(1)
        w = w - w.mean()
        norm = float(np.linalg.norm(w))
        if (loud is None or loud[i:i + window].any()) and norm > 0:
            rows.append(w / norm)
            starts.append(i)
    pairs = [float(rows[a] @ rows[b]) for a in range(len(rows)) for b in range(len(rows))
             if (starts[b] - starts[a]) // window >= lag]
    return float(np.mean(pairs)) if pairs else 0.0


MEL_ONSET_RISE = 0.3  # nats, the mean over bands of the rise over MEL_ONSET_LAG frames
MEL_ONSET_LAG = 2
MEL_ONSET_GAP = 5  # frames either side within which an onset is the largest rise


def mel_rise(mel: Tensor, lag: int = MEL_ONSET_LAG) -> Tensor:
    """The broadband rise of log-mels ``(..., n_mel, F)``: ``(..., F - lag)``, the mean over
    bands of the positive part of ``mel[t] - mel[t - lag]`` in nats, for ``t >= lag``."""
    m = mel.float()
    return (m[..., lag:] - m[..., :-lag]).clamp_min(0).mean(-2)


def mel_onset_frames(mel: Tensor, threshold: float = MEL_ONSET_RISE, lag: int = MEL_ONSET_LAG,
                     gap: int = MEL_ONSET_GAP) -> Tensor:
    """Note onsets of log-mels ``(..., n_mel, F)``: a bool ``(..., F)``, true at frames whose
    broadband rise (the mean over bands of the positive part of ``mel[t] - mel[t - lag]``, in
    nats; 0 for the first ``lag`` frames) is at least ``threshold`` and the largest within
    ``gap`` frames either side. Unlike a normalised onset envelope, the fixed threshold does not
    find onsets in the small fluctuations of a drone."""
    flux = torch.nn.functional.pad(mel_rise(mel, lag), (lag, 0))
    lead = flux.shape[:-1]
    pad = torch.nn.functional.pad(flux.reshape(-1, 1, flux.shape[-1]), (gap, gap), value=-1.0)
    peak = torch.nn.functional.max_pool1d(pad, 2 * gap + 1, stride=1).reshape(*lead, -1)
    return (flux >= threshold) & (flux >= peak)


def pulse_clarity(envelope: np.ndarray, frames_per_second: float) -> float:
    """How periodic an onset envelope ``(F,)`` is: its centred autocorrelation at its highest
    between lags of 0.25 and 2 s, relative to lag 0 (0 for a flat envelope or one shorter than
    2 s)."""
    e = np.asarray(envelope)
    e = e - e.mean()
    ac = np.correlate(e, e, mode="full")[len(e) - 1:]
    lo, hi = int(0.25 * frames_per_second), int(2.0 * frames_per_second)
    return float(ac[lo:hi].max() / ac[0]) if ac[0] > 0 and hi <= len(ac) else 0.0


def clip_statistics(clips: list[np.ndarray], sample_rate: int, front: torch.nn.Module
                    ) -> dict[str, np.ndarray]:
    """Frame and clip statistics of mono clips ``(T,)``: ``"mel"`` log-mel frames ``(F, n_mel)``
    (with ``front``), ``"chroma"`` chroma frames ``(F, 12)`` (librosa, max-normalised per
    frame, frames quieter than 40 dB below the clip's loudest dropped), ``"rhythm"`` per clip
    ``(N, 4)``: onsets per second, mean onset strength, its coefficient of variation, and pulse
    clarity (the highest autocorrelation of the onset envelope at lags of 0.25 to 2 s, relative
    to lag 0), and ``"tonality"`` per clip ``(N, 1)``: :func:`key_stability`."""
    import librosa

    mel, chroma, rhythm, tonality = [], [], [], []
    hop = 512
    for x in clips:
        x = np.asarray(x, np.float32)
        with torch.no_grad():
            mel.append(front(torch.from_numpy(x)).T.numpy())
        spec = np.abs(librosa.stft(x, n_fft=CHROMA_FFT, hop_length=hop))
        c = librosa.feature.chroma_stft(S=spec ** 2, sr=sample_rate)
        energy = spec.sum(0)
        loud = energy >= energy.max() * 10 ** (-40 / 20) if energy.max() > 0 else energy > 0
        chroma.append(c[:, loud].T if loud.any() else c.T)
        tonality.append([key_stability(x, sample_rate, hop=hop, spec=spec)])
        env = librosa.onset.onset_strength(S=librosa.amplitude_to_db(spec), sr=sample_rate)
        onsets = librosa.onset.onset_detect(onset_envelope=env, sr=sample_rate, hop_length=hop)
        seconds = len(x) / sample_rate
        mean = float(env.mean())
        cv = float(env.std() / mean) if mean > 0 else 0.0
        rhythm.append([len(onsets) / seconds, mean, cv, pulse_clarity(env, sample_rate / hop)])
    return {"mel": np.concatenate(mel), "chroma": np.concatenate(chroma),
            "rhythm": np.asarray(rhythm, np.float64),
            "tonality": np.asarray(tonality, np.float64)}


def _scaled_wasserstein(values: np.ndarray, ref: np.ndarray) -> float:
    """The mean over columns of the 1-D Wasserstein distance between per-clip ``values``
    ``(N, K)`` and ``ref`` ``(M, K)``, each column in units of the reference's spread: its
    standard deviation plus a tenth of its mean magnitude (so that a statistic that hardly
    varies over a few clips does not blow up)."""
    from scipy.stats import wasserstein_distance

    scale = ref.std(0) + 0.1 * np.abs(ref.mean(0)) + 1e-6
    return float(np.mean([wasserstein_distance(values[:, k] / scale[k], ref[:, k] / scale[k])
                          for k in range(ref.shape[1])]))


def music_distances(stats: dict[str, np.ndarray], ref: dict[str, np.ndarray]
                    ) -> dict[str, float]:
    """Distances of :func:`clip_statistics` ``stats`` from ``ref`` (lower is closer):
    ``mel_fd`` and ``chroma_fd`` (Frechet distances of frame statistics), ``rhythm`` (over
    :data:`RHYTHM_FEATURES`) and ``tonality`` (the clips' :func:`key_stability`): the mean 1-D
    Wasserstein distance between the clips' values, each in units of the reference's spread."""
    return {"mel_fd": frechet_distance(stats["mel"], ref["mel"]),
            "chroma_fd": frechet_distance(stats["chroma"], ref["chroma"]),
            "rhythm": _scaled_wasserstein(stats["rhythm"], ref["rhythm"]),
            "tonality": _scaled_wasserstein(stats["tonality"], ref["tonality"])}


def shaped_noise(clips: list[np.ndarray], count: int, samples: int, front: torch.nn.Module,
                 seed: int = 0) -> list[np.ndarray]:
    """``count`` clips of ``samples`` samples of Gaussian noise shaped to the mean STFT
    magnitude of ``clips`` (random phases), at their mean RMS: the baseline of
    ``gen eval music``."""
    with torch.no_grad():
        mags = [front.stft(torch.as_tensor(np.asarray(x, np.float32))).abs().mean(-1)
                for x in clips]
        mean_mag = torch.stack(mags).mean(0).double()
    rms = float(np.mean([np.sqrt(np.mean(np.square(x))) for x in clips]))
    g = torch.Generator().manual_seed(seed)
    frames = samples // front.hop + 1
    out = []
    for _ in range(count):
        re = torch.randn(mean_mag.shape[0], frames, generator=g, dtype=torch.float64)
        im = torch.randn(mean_mag.shape[0], frames, generator=g, dtype=torch.float64)
        y = front.istft(torch.complex(re, im) * mean_mag[:, None])[:samples].numpy()
        y = y * (rms / max(float(np.sqrt(np.mean(y ** 2))), 1e-12))
        out.append(y.astype(np.float32))
    return out
