"""The mel front end: librosa's filterbank, exact framing, analytic log-mels of sines, the STFT
round trip and the Griffin-Lim baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowsuite.core import FlowsuiteError
from flowsuite.musicflow.mel import (
    LOG_SILENCE,
    AudioShapeError,
    MelSpectrogram,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
)

SR, N_FFT, HOP = 22050, 1024, 256


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors gain nothing from a second thread, and on a shared machine the idle OpenMP
    thread's spin-waiting slows every operation by up to ten times."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sine(frames: int, bin_index: float, amplitude: float = 0.5,
         dtype: torch.dtype = torch.float64) -> torch.Tensor:
    t = torch.arange(frames * HOP, dtype=dtype)
    return amplitude * torch.sin(2 * math.pi * bin_index / N_FFT * t + 0.3)


def test_filterbank_matches_librosa():
    librosa = pytest.importorskip("librosa")
    ours = mel_filterbank(SR, N_FFT, 80, 0.0, 8000.0).numpy()
    ref = librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=80, fmin=0.0, fmax=8000.0,
                              dtype=np.float64)
    assert ours.shape == (80, 513)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-14)
    other = librosa.filters.mel(sr=16000, n_fft=512, n_mels=40, fmin=50.0, fmax=7000.0,
                                dtype=np.float64)
    np.testing.assert_allclose(mel_filterbank(16000, 512, 40, 50.0, 7000.0).numpy(), other,
                               rtol=1e-10, atol=1e-14)


def test_slaney_scale_round_trips_and_is_linear_below_1khz():
    hz = np.array([0.0, 200.0, 999.0, 1000.0, 4000.0, 8000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, atol=1e-9)
    assert hz_to_mel(600.0) == pytest.approx(9.0)  # 200/3 Hz per mel below 1 kHz
    assert hz_to_mel(1000.0) == pytest.approx(15.0)


@pytest.mark.parametrize("frames", [3, 8, 37])
def test_f_frames_are_exactly_f_hops_of_samples(frames):
    mel = MelSpectrogram()
    x = torch.randn(2, frames * HOP)
    assert mel(x).shape == (2, 80, frames)
    assert mel(x[0]).shape == (80, frames)
    assert mel.stft(x).shape == (2, 513, frames)
    assert mel(torch.randn(frames * HOP + 100)).shape == (80, frames)  # T // hop frames
    assert mel.istft(mel.stft(x)).shape == (2, frames * HOP)


def test_frame_f_is_centred_on_its_hop_block():
    mel = MelSpectrogram()
    x = torch.zeros(12 * HOP, dtype=torch.float64)
    x[5 * HOP + HOP // 2] = 1.0  # an impulse in the middle of block 5
    energy = mel.stft(x).abs().square().sum(0)
    assert int(energy.argmax()) == 5
    assert torch.allclose(energy[4], energy[6])  # symmetric around frame 5


def test_log_mel_of_a_bin_centred_sine_matches_the_analytic_value():
    # A sine on bin k0 through a periodic Hann window of N samples has |X[k0]| = A N / 4 and
    # |X[k0 +- 1]| = A N / 8, and nothing elsewhere.
    k0, amp = 41, 0.5  # 41 * 22050 / 1024 = 882.9 Hz
    mel = MelSpectrogram().double()
    x = sine(16, k0, amp)
    got = mel(x)[:, 3:-3]  # frames whose window lies inside the signal
    fb = mel_filterbank().numpy()
    expected = amp * (N_FFT / 4 * fb[:, k0] + N_FFT / 8 * (fb[:, k0 - 1] + fb[:, k0 + 1]))
    expected = np.log(np.maximum(expected, 1e-5))
    np.testing.assert_allclose(got.numpy(), np.repeat(expected[:, None], got.shape[1], 1),
                               atol=1e-6)
    assert int(got[:, 0].argmax()) == int(np.argmax(fb[:, k0]))
    assert float(got.min()) == pytest.approx(LOG_SILENCE)  # far bands sit on the clamp


def test_log_mel_matches_an_independent_numpy_reference():
    librosa = pytest.importorskip("librosa")
    scipy_signal = pytest.importorskip("scipy.signal")
    g = torch.Generator().manual_seed(0)
    x = sine(20, 17.3, 0.4) + 0.05 * torch.randn(20 * HOP, generator=g, dtype=torch.float64)
    ours = MelSpectrogram().double()(x).numpy()
    padded = np.pad(x.numpy(), (N_FFT - HOP) // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    assert frames.shape[0] == 20
    mag = np.abs(np.fft.rfft(frames * scipy_signal.get_window("hann", N_FFT), axis=-1)).T
    fb = librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=80, fmin=0.0, fmax=8000.0,
                             dtype=np.float64)
    ref = np.log(np.maximum(fb @ mag, 1e-5))
    np.testing.assert_allclose(ours, ref, atol=1e-8)


def test_silence_is_the_clamp_and_float32_agrees_with_float64():
    mel = MelSpectrogram()
    assert torch.all(mel(torch.zeros(4 * HOP)) == torch.tensor(LOG_SILENCE))
    x = sine(10, 60.5, 0.3)
    lo = mel(x.float())
    hi = mel.double()(x)
    loud = hi > -6  # float32 rounding only matters near the clamp
    assert torch.allclose(lo.double()[loud], hi[loud], atol=1e-4)


def test_stft_round_trip_is_exact():
    mel = MelSpectrogram()
    x = torch.randn(3, 9 * HOP)
    assert torch.allclose(mel.istft(mel.stft(x)), x, atol=1e-5)


def test_bad_audio_is_a_clear_error():
    mel = MelSpectrogram()
    with pytest.raises(AudioShapeError, match="too short"):
        mel(torch.randn(300))
    with pytest.raises(ValueError, match=r"\(T,\) or \(B, T\)"):
        mel(torch.randn(1, 1, 2048))
    assert issubclass(AudioShapeError, FlowsuiteError)


def test_mel_to_linear_is_non_negative_and_projects_back():
    mel = MelSpectrogram()
    g = torch.Generator().manual_seed(1)
    x = (sine(12, 30.0, 0.3) + sine(12, 95.0, 0.1)).float()
    x = x + 0.01 * torch.randn(x.shape, generator=g)
    log_mel = mel(x)
    lin = mel.to_linear(log_mel)
    assert lin.shape == (513, 12) and bool((lin >= 0).all())
    err = (mel.magnitude_to_mel(lin) - log_mel).abs()
    assert float(err.mean()) < 0.05
    # The transposed filterbank alone (no iterations) is far worse.
    assert float((mel.magnitude_to_mel(mel.to_linear(log_mel, iterations=0)) - log_mel)
                 .abs().mean()) > 5 * float(err.mean())


def test_griffin_lim_baseline_recovers_a_sine():
    mel = MelSpectrogram()
    k0 = 41
    x = sine(24, k0, 0.5).float()
    log_mel = mel(x)
    g = torch.Generator().manual_seed(0)
    y = mel.griffin_lim_from_mel(log_mel, iterations=32, generator=g)
    assert y.shape == x.shape
    loud = log_mel > -6  # in the log domain, near-silent bands only measure leakage
    assert float((mel(y) - log_mel).abs()[loud].mean()) < 0.3
    noise = 0.1 * torch.randn(x.shape, generator=g)
    assert float((mel(noise) - log_mel).abs()[loud].mean()) > 1.0
    spectrum = torch.fft.rfft(y * torch.hann_window(y.numel()))
    peak_hz = float(spectrum.abs().argmax()) * SR / y.numel()
    assert abs(peak_hz - k0 * SR / N_FFT) < 30
