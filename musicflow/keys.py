"""Musical keys: their names, an estimate of a recording's key, and the features a keyed mel
prior reads.

A key is an index ``0..23``: ``0..11`` the major keys on C, C#, D, ... B, ``12..23`` the minor
keys on the same tonics; ``-1`` is "no key". :func:`estimate_key` correlates a recording's mean
chroma with the Krumhansl-Kessler key profiles (Krumhansl, *Cognitive Foundations of Musical
Pitch*, 1990) rotated to each tonic and takes the best; it needs no labels, so it serves any
folder of audio. :func:`key_features` gives the 24 values a keyed :class:`MelPrior` reads: the
tonic (one-hot over the 12 pitch classes) and the pitch classes of the key's scale (major, or
natural minor with the raised seventh), so keys that share notes share features.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from flowsuite.core.errors import FlowsuiteError

PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
KEY_NAMES = tuple([f"{p} major" for p in PITCH_NAMES] + [f"{p} minor" for p in PITCH_NAMES])
KEY_FEATURES = 24

_SPELLINGS = {"c": 0, "b#": 0, "c#": 1, "db": 1, "d": 2, "d#": 3, "eb": 3, "e": 4, "fb": 4,
              "e#": 5, "f": 5, "f#": 6, "gb": 6, "g": 7, "g#": 8, "ab": 8, "a": 9, "a#": 10,
              "bb": 10, "b": 11, "cb": 11}
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10, 11)


def key_index(key: str | int) -> int:
    """The index of a key given as a name (``"D minor"``, ``"Dm"``, ``"F# major"``, ``"Gb"``,
    case and spaces free; a bare tonic is major) or an index ``0..23``. Raises
    ``FlowsuiteError`` for anything else."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if 0 <= int(key) < len(KEY_NAMES):
            return int(key)
        raise FlowsuiteError(f"key index {key} is out of range 0..{len(KEY_NAMES) - 1}")
    text = str(key).strip().lower().replace(" ", "").replace("\u266f", "#").replace("\u266d", "b")
    minor = False
    for suffix, is_minor in (("major", False), ("minor", True), ("maj", False), ("min", True),
                             ("m", True)):
        if text.endswith(suffix) and text[:-len(suffix)] in _SPELLINGS:
            text, minor = text[:-len(suffix)], is_minor
            break
    if text not in _SPELLINGS:
        raise FlowsuiteError(f"unknown key {key!r}; give a tonic and major or minor, e.g. "
                             f"'D minor', 'F# major', 'Bbm' or 'G'")
    return _SPELLINGS[text] + (12 if minor else 0)


def key_name(index: int) -> str:
    """``"D minor"`` for 14; ``"none"`` for -1."""
    return "none" if index < 0 else KEY_NAMES[index]


def balanced_chroma(power: np.ndarray, sample_rate: int, n_fft: int) -> np.ndarray:
    """Chroma ``(12, F)`` of an STFT power spectrogram ``(1 + n_fft // 2, F)`` (librosa's
    filters at the recording's estimated tuning), each pitch class divided by its filter's
    total weight: the filters weigh the 12 classes up to 10% apart, a fixed pattern that would
    otherwise read as a key in noise or in a recording of no key."""
    import librosa

    tuning = librosa.estimate_tuning(S=power, sr=sample_rate, n_fft=n_fft)
    filters = librosa.filters.chroma(sr=sample_rate, n_fft=n_fft, tuning=tuning)
    return (filters @ power) / filters.sum(1)[:, None]


def estimate_key(audio: np.ndarray, sample_rate: int) -> int:
    """The key ``0..23`` of mono ``audio`` whose chroma, summed over the whole recording,
    correlates best with a Krumhansl-Kessler profile rotated to a tonic; -1 for silence."""
    import librosa

    x = np.asarray(audio, np.float32)
    if x.size < 2048 or not np.isfinite(x).all() or not np.any(x):
        return -1
    power = np.abs(librosa.stft(x, n_fft=4096, hop_length=2048)) ** 2
    profile = balanced_chroma(power, sample_rate, 4096).sum(1)
    if not profile.any():
        return -1
    scores = [np.corrcoef(profile, np.roll(p, tonic))[0, 1]
              for p in (MAJOR_PROFILE, MINOR_PROFILE) for tonic in range(12)]
    return int(np.nanargmax(scores))


def _feature_table() -> Tensor:
    """``(25, 24)``: the features of each key, then a row of zeros for "no key"."""
    table = torch.zeros(len(KEY_NAMES) + 1, KEY_FEATURES)
    for k in range(len(KEY_NAMES)):
        tonic = k % 12
        table[k, tonic] = 1.0
        for step in (MAJOR_SCALE if k < 12 else MINOR_SCALE):
            table[k, 12 + (tonic + step) % 12] = 1.0
    return table


_FEATURES = _feature_table()  # built once: a keyed prior reads it at every sampled step


def key_features(keys: Tensor) -> Tensor:
    """Keys ``(B,)`` (-1: none) -> ``(B, 24)`` float: the tonic one-hot, then the scale's pitch
    classes; all zeros for -1."""
    keys = torch.as_tensor(keys).long().reshape(-1)
    idx = torch.where(keys < 0, len(KEY_NAMES), keys)
    return _FEATURES.to(keys.device)[idx]
