"""Reading audio to learn from: a folder of a user's recordings or a rendered music set.

Files of any sample rate and channel count are mixed to mono, resampled (soxr) to the model's
rate, stripped of leading and trailing silence and cut into fixed-length segments. Building the
dataset streams each file once in blocks to find its sound and check its samples; a segment is
read from disk, with a little context for the resampler, only when it is asked for, so long
files never sit whole in memory.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from flowsuite.core.errors import FlowsuiteError
from flowsuite.data.music import MANIFEST, STYLES, read_manifest
from flowsuite.data.music_signal import FRAME_SECONDS, SAMPLE_RATE, frame_rms, sound_bounds

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 96000
_BLOCK = 1 << 16  # frames per block when scanning a file
_CONTEXT_SECONDS = 0.02  # resampler context read either side of a segment


class AudioSkipWarning(UserWarning):
    """A file that cannot serve as training audio was left out."""


class _Skip(Exception):
    pass


@dataclass(frozen=True)
class AudioFile:
    """One usable file: its native rate and length, and the frames ``[start, stop)`` (native
    rate) that hold its sound."""

    path: Path
    style: int
    sample_rate: int
    frames: int
    start: int
    stop: int


def check_sample_rate(sample_rate: int) -> int:
    """The sample rate as an int, or a ``FlowsuiteError`` if it is outside what flowsuite reads
    (8000 to 96000 Hz, whole hertz)."""
    if (isinstance(sample_rate, bool) or not float(sample_rate).is_integer()
            or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE):
        raise FlowsuiteError(f"unsupported sample rate {sample_rate}; choose a whole number of "
                             f"hertz from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} "
                             f"(the models use {SAMPLE_RATE})")
    return int(sample_rate)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Mono ``(T,)`` float32 audio from ``rate_in`` to ``rate_out`` Hz (soxr, high quality)."""
    if rate_in == rate_out:
        return x.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(x.astype(np.float32, copy=False), rate_in, rate_out, quality="HQ")


def _mono(block: np.ndarray) -> np.ndarray:
    return block.mean(axis=1) if block.ndim == 2 else block


def scan_file(path: Path, top_db: float = 50.0) -> tuple[int, int, int, int]:
    """Streams a file once: returns ``(sample_rate, frames, start, stop)`` with ``[start, stop)``
    the frames that hold sound. Raises ``_Skip`` with the reason when the file is unusable."""
    import soundfile as sf

    try:
        with sf.SoundFile(path) as f:
            rate = f.samplerate
            frame = max(int(round(FRAME_SECONDS * rate)), 1)
            block = (_BLOCK // frame) * frame
            rms_parts = []
            frames = 0
            for chunk in f.blocks(blocksize=block, dtype="float32", always_2d=True):
                mono = _mono(chunk)
                if not np.isfinite(mono).all():
                    raise _Skip("NaN or infinite samples")
                rms_parts.append(frame_rms(mono, frame))
                frames += len(mono)
    except _Skip:
        raise
    except Exception as e:  # libsndfile's errors, or a decoder failing part way
        raise _Skip(f"not readable as audio ({str(e).splitlines()[0][:120]})") from e
    if frames == 0:
        raise _Skip("empty (no samples)")
    start, stop = sound_bounds(np.concatenate(rms_parts), frame, frames, top_db)
    if stop <= start:
        raise _Skip("silent")
    return rate, frames, start, stop


def _list_folder(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    paths = sorted(p for p in root.rglob("*")
                   if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    sub = sorted({p.relative_to(root).parts[0] for p in paths if p.parent != root})
    index = {name: i for i, name in enumerate(sub)}
    return [(p, index[p.relative_to(root).parts[0]] if p.parent != root else -1)
            for p in paths], sub


def _list_music_set(root: Path, split: str | None) -> tuple[list[tuple[Path, int]], list[str]]:
    records = read_manifest(root)
    if split is not None:
        records = [r for r in records if r.get("split") == split]
    out = []
    for r in records:
        style = r.get("style")
        out.append((root / r["file"], STYLES.index(style) if style in STYLES else -1))
    return out, list(STYLES)


class AudioFolder(Dataset):
    """Fixed-length mono segments from a folder of ``.wav .flac .ogg .mp3`` files.

    Items are ``{"audio": (segment_samples,) float32 tensor, "style": int, "file": int}``;
    ``file`` indexes ``self.files``. Style labels: from the manifest when ``root`` is a rendered
    music set (``self.styles`` is ``STYLES``; ``split`` picks train/val/test), otherwise the name
    of the sub-folder under ``root`` that holds the file (sorted names; -1 for files directly in
    ``root``). Files that cannot be used are skipped with an ``AudioSkipWarning`` naming each and
    a summary; a folder with nothing usable is a ``FlowsuiteError``.
    """

    def __init__(self, root: str | os.PathLike, segment_samples: int = 16000,
                 hop: int | None = None, sample_rate: int = SAMPLE_RATE,
                 split: str | None = None, top_db: float = 50.0):
        self.root = Path(root)
        self.sample_rate = check_sample_rate(sample_rate)
        self.segment_samples = int(segment_samples)
        self.hop = int(hop) if hop is not None else self.segment_samples
        if self.segment_samples < 1 or self.hop < 1:
            raise FlowsuiteError(f"segment length and hop must be positive, got "
                                 f"{segment_samples} and {hop}")
        if not self.root.is_dir():
            raise FlowsuiteError(f"audio folder {self.root} does not exist or is not a folder")
        is_set = (self.root / MANIFEST).is_file()
        if split is not None and split not in ("train", "val", "test"):
            raise FlowsuiteError(f"unknown split {split!r}; choose train, val or test")
        if split is not None and not is_set:
            raise FlowsuiteError(f"{self.root} has no {MANIFEST}; a split can be chosen only in "
                                 "a music set made by `gen data music`")
        try:
            listed, self.styles = (_list_music_set(self.root, split) if is_set
                                   else _list_folder(self.root))
        except OSError as e:
            raise FlowsuiteError(f"cannot read audio folder {self.root}: {e}") from e
        if not listed:
            what = (f"no files in the {split} split of" if split
                    else "no .wav, .flac, .ogg or .mp3 files in")
            raise FlowsuiteError(f"{what} {self.root}; point to a folder of audio files")

        self.files: list[AudioFile] = []
        reasons: Counter[str] = Counter()
        counts = []
        for path, style in listed:
            try:
                rate, frames, start, stop = scan_file(path, top_db)
                n_out = (stop - start) * self.sample_rate // rate
                if n_out < self.segment_samples:
                    raise _Skip(f"too short ({n_out / self.sample_rate:.2f} s of sound, a "
                                f"segment is {self.segment_samples / self.sample_rate:.2f} s)")
            except _Skip as e:
                reason = str(e)
                reasons[reason.split(" (")[0]] += 1
                warnings.warn(f"skipping {path}: {reason}", AudioSkipWarning, stacklevel=2)
                continue
            self.files.append(AudioFile(path, style, rate, frames, start, stop))
            counts.append(1 + (n_out - self.segment_samples) // self.hop)
        if reasons:
            summary = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
            warnings.warn(f"skipped {sum(reasons.values())} of {len(listed)} audio files in "
                          f"{self.root} ({summary})", AudioSkipWarning, stacklevel=2)
        if not self.files:
            raise FlowsuiteError(f"none of the {len(listed)} audio files in {self.root} is "
                                 "usable (see the warnings above); point to a folder of "
                                 "readable audio at least one segment long")
        self._first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._first[-1])

    def indices(self, style: str | None = None) -> np.ndarray:
        """Dataset indices in order: all of them, or those of the files labelled ``style`` (a
        name of :attr:`styles`; a ``FlowsuiteError`` names the known ones otherwise)."""
        if style is None:
            return np.arange(len(self))
        if style not in self.styles:
            known = ", ".join(self.styles) or "none"
            raise FlowsuiteError(f"{self.root} has no style {style!r}; its styles: {known}")
        label = self.styles.index(style)
        parts = [np.arange(self._first[f], self._first[f + 1])
                 for f, info in enumerate(self.files) if info.style == label]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def locate(self, index: int) -> tuple[int, int]:
        """``(file index, first sample of the segment at the dataset's rate, counted from the
        file's trimmed start)`` for a dataset index."""
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        f = int(np.searchsorted(self._first, index, side="right") - 1)
        return f, int(index - self._first[f]) * self.hop

    def read_segment(self, f: int, offset: int) -> np.ndarray:
        """Mono float32 ``(segment_samples,)`` of file ``f`` from ``offset`` (samples at the
        dataset's rate after the file's trimmed start)."""
        import soundfile as sf

        info = self.files[f]
        n = self.segment_samples
        if info.sample_rate == self.sample_rate:
            a, b = info.start + offset, info.start + offset + n
            return self._read(sf, info, a, b)
        # Read whole resampling blocks (L_in source frames <-> L_out output samples exactly) so
        # the segment lands on the same output grid as resampling the whole file would give.
        g = math.gcd(info.sample_rate, self.sample_rate)
        l_in, l_out = info.sample_rate // g, self.sample_rate // g
        margin = max(1, math.ceil(_CONTEXT_SECONDS * info.sample_rate / l_in))
        b0 = offset // l_out - margin
        b1 = -(-(offset + n) // l_out) + margin
        x = self._read(sf, info, info.start + b0 * l_in, info.start + b1 * l_in)
        y = resample(x, info.sample_rate, self.sample_rate)
        lead = offset - b0 * l_out
        return np.ascontiguousarray(y[lead:lead + n], dtype=np.float32)

    @staticmethod
    def _read(sf, info: AudioFile, a: int, b: int) -> np.ndarray:
        """Frames ``[a, b)`` of a file, mono, zero-padded outside the file."""
        lo, hi = max(a, 0), min(b, info.frames)
        out = np.zeros(b - a, dtype=np.float32)
        if hi > lo:
            with sf.SoundFile(info.path) as f:
                f.seek(lo)
                x = f.read(hi - lo, dtype="float32", always_2d=True)
            x = _mono(x)
            out[lo - a:lo - a + len(x)] = x
        return out

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        f, offset = self.locate(index)
        audio = self.read_segment(f, offset)
        return {"audio": torch.from_numpy(audio), "style": self.files[f].style, "file": f}
