"""Signal helpers shared by the music renderer and the audio reader: silence bounds and loudness.

Pure numpy, so render workers need not import torch for them.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 22050
# Frame length (seconds) on which silence is judged.
FRAME_SECONDS = 0.02
# A frame quieter than this (dBFS, RMS) is silence even in a quiet file.
SILENCE_FLOOR_DB = -70.0


def frame_rms(x: np.ndarray, frame: int) -> np.ndarray:
    """RMS of consecutive frames of a mono signal ``(T,)``; a short last frame counts as one.
    Returns ``(ceil(T / frame),)``."""
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    pad = (-n) % frame
    xx = np.pad(x.astype(np.float64, copy=False), (0, pad))
    sq = (xx * xx).reshape(-1, frame).sum(axis=1)
    counts = np.full(len(sq), frame, dtype=np.float64)
    counts[-1] = frame - pad
    return np.sqrt(sq / counts)


def sound_bounds(rms: np.ndarray, frame: int, n_samples: int, top_db: float = 50.0,
                 pad_frames: int = 2) -> tuple[int, int]:
    """Sample range ``[start, stop)`` that holds the sound, from frame RMS values: a frame is
    sound when it is within ``top_db`` of the loudest frame and above ``SILENCE_FLOOR_DB``.
    Keeps ``pad_frames`` frames either side. ``(0, 0)`` when everything is silence."""
    if len(rms) == 0:
        return 0, 0
    peak = float(rms.max())
    floor = 10.0 ** (SILENCE_FLOOR_DB / 20.0)
    threshold = max(peak * 10.0 ** (-top_db / 20.0), floor)
    loud = np.flatnonzero(rms >= threshold)
    if len(loud) == 0:
        return 0, 0
    first = max(int(loud[0]) - pad_frames, 0)
    last = min(int(loud[-1]) + 1 + pad_frames, len(rms))
    return first * frame, min(last * frame, n_samples)


def silence_bounds(x: np.ndarray, sample_rate: int = SAMPLE_RATE, top_db: float = 50.0
                   ) -> tuple[int, int]:
    """The sample range ``[start, stop)`` of the mono signal ``(T,)`` that
    :func:`trim_silence` keeps."""
    frame = max(int(round(FRAME_SECONDS * sample_rate)), 1)
    return sound_bounds(frame_rms(x, frame), frame, len(x), top_db)


def trim_silence(x: np.ndarray, sample_rate: int = SAMPLE_RATE, top_db: float = 50.0
                 ) -> np.ndarray:
    """The mono signal ``(T,)`` without its leading and trailing silence."""
    start, stop = silence_bounds(x, sample_rate, top_db)
    return x[start:stop]


def normalize_loudness(x: np.ndarray, target_rms_db: float = -20.0, peak_db: float = -1.0
                       ) -> np.ndarray:
    """Scales ``x`` to an RMS of ``target_rms_db`` dBFS unless that would lift its peak above
    ``peak_db`` dBFS, in which case the peak sets the gain: the result never clips. A silent
    signal is returned unchanged. float32 out."""
    x = np.asarray(x, dtype=np.float32)
    peak = float(np.abs(x).max()) if len(x) else 0.0
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0
    if peak == 0.0 or rms == 0.0:
        return x
    gain = min(10.0 ** (target_rms_db / 20.0) / rms, 10.0 ** (peak_db / 20.0) / peak)
    return (x * np.float32(gain)).astype(np.float32)


def fade_out(x: np.ndarray, samples: int) -> np.ndarray:
    """``x`` with a linear fade over its last ``samples`` samples (a copy)."""
    y = np.array(x, dtype=np.float32, copy=True)
    n = min(samples, len(y))
    if n > 0:
        y[-n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
    return y
