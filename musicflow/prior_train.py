"""Training data and the training entry point of the mel prior.

``gen train prior`` and ``gen finetune music --part prior`` both come here::

    corpus = MelCorpus.from_folder("data/music", split="train")      # mels computed once
    val = MelCorpus.from_folder("data/music", split="val")
    model = MelPrior.from_preset("small", styles=corpus.styles, **corpus.band_stats())
    train_prior(model, corpus, "runs/prior", TrainConfig(steps=2000), val=val, segment_frames=256)

A fine-tuning run passes a loaded model instead (its own statistics and styles are kept; audio
without style labels trains the model's "no style" embedding).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from flowsuite.core.errors import FlowsuiteError
from flowsuite.core.trainer import FitSummary, TrainConfig, Trainer
from flowsuite.musicflow.mel import HOP, SAMPLE_RATE, MelSpectrogram
from flowsuite.musicflow.prior import MelPrior, track_beats


@dataclass
class MelCorpus:
    """Whole log-mels of a set of audio files, kept in memory (float16, ``(n_mel, F_i)`` each),
    with a style index per file (-1: none), the style names and, when asked for, each file's key
    estimated from its audio (:func:`~flowsuite.musicflow.keys.estimate_key`; empty if not) and
    each file's beats as mel frame positions (the scores' from a music set's manifest, else
    tracked from the audio; the list empty if not asked for)."""

    mels: list[torch.Tensor]
    labels: list[int]
    styles: list[str]
    keys: list[int] = field(default_factory=list)
    beats: list[np.ndarray] = field(default_factory=list)
    frames_per_second: float = SAMPLE_RATE / HOP

    @classmethod
    def from_folder(cls, root: str | os.PathLike, split: str | None = None,
                    min_frames: int = 2, sample_rate: int = SAMPLE_RATE, hop: int = HOP,
                    progress: bool = False, keys: bool = False, beats: bool = False
                    ) -> MelCorpus:
        """The mels of a music set made by ``gen data music`` (its ``split``; styles from the
        manifest) or of every audio file in a plain folder (no styles). Files shorter than
        ``min_frames`` frames of sound are skipped with a warning (see ``AudioFolder``).
        ``keys``: also estimate each file's key; ``beats``: also read each file's beats from
        the manifest, or track them in its audio (:func:`~flowsuite.musicflow.prior.track_beats`)
        for a file of a plain folder or of a set rendered before manifests held beats."""
        import soundfile as sf

        from flowsuite.data.audio import AudioFolder, resample
        from flowsuite.data.music import MANIFEST, read_manifest

        root = Path(root)
        folder = AudioFolder(root, segment_samples=min_frames * hop, sample_rate=sample_rate,
                             split=split)
        is_set = (root / MANIFEST).is_file()
        front = MelSpectrogram(sample_rate=sample_rate, hop=hop)
        from flowsuite.musicflow.keys import estimate_key

        score_beats: dict[Path, list[float]] = {}
        if beats and is_set:
            score_beats = {(root / r["file"]).resolve(): r.get("beats") or []
                           for r in read_manifest(root)}
        mels, labels, found, beat_frames = [], [], [], []
        files = folder.files
        if progress:
            from tqdm.auto import tqdm

            files = tqdm(files, desc="mels", unit="file")
        for info in files:
            try:
                x, _ = sf.read(str(info.path), start=info.start, stop=info.stop, dtype="float32",
                               always_2d=True)
            except Exception as e:  # noqa: BLE001 - libsndfile raises several types
                raise FlowsuiteError(f"cannot read {info.path} ({e})") from e
            x = resample(x.mean(axis=1), info.sample_rate, sample_rate)
            usable = len(x) // hop * hop
            with torch.no_grad():
                mels.append(front(torch.from_numpy(np.ascontiguousarray(x[:usable]))).half())
            labels.append(info.style if is_set else -1)
            if keys:
                found.append(estimate_key(x, sample_rate))
            if beats:  # seconds in the file -> frames of the mel of its sound
                listed = score_beats.get(info.path.resolve())
                if listed:
                    at = np.asarray(listed, dtype=np.float64)
                    beat_frames.append((at - info.start / info.sample_rate) * sample_rate / hop)
                else:
                    beat_frames.append(track_beats(mels[-1], sample_rate / hop).numpy())
        return cls(mels, labels, list(folder.styles) if is_set else [], found, beat_frames,
                   sample_rate / hop)

    @property
    def frames(self) -> int:
        return sum(m.shape[-1] for m in self.mels)

    def clock(self, index: int, start: int, frames: int) -> torch.Tensor:
        """The clock of file ``index`` at frames ``[start, start + frames)``: ``(frames, 2)`` of
        the phase of the beat in ``[0, 1)`` and the local tempo in beats per minute (between
        the two beats around each frame, the nearest two before the first and after the last
        beat); NaN throughout for a file with fewer than two beats."""
        b = self.beats[index] if self.beats else np.zeros(0)
        out = np.full((frames, 2), np.nan, dtype=np.float32)
        if len(b) < 2:
            return torch.from_numpy(out)
        f = np.arange(start, start + frames, dtype=np.float64)
        k = np.clip(np.searchsorted(b, f, side="right") - 1, 0, len(b) - 2)
        period = np.maximum(b[k + 1] - b[k], 1e-3)
        out[:, 0] = np.mod((f - b[k]) / period, 1.0)
        out[:, 1] = 60.0 * self.frames_per_second / period
        return torch.from_numpy(out)

    def tempi(self) -> dict[str, float]:
        """The median tempo (beats per minute, over beats) of the files of each style, and of
        all of them under ``"all"``; empty without beats."""
        per: dict[str, list[np.ndarray]] = {}
        for b, label in zip(self.beats, self.labels, strict=False):
            if len(b) >= 2:
                bpm = 60.0 * self.frames_per_second / np.maximum(np.diff(b), 1e-3)
                names = ["all"] + ([self.styles[label]] if 0 <= label < len(self.styles) else [])
                for name in names:
                    per.setdefault(name, []).append(bpm)
        return {k: round(float(np.median(np.concatenate(v))), 2) for k, v in per.items()}

    def band_stats(self) -> dict[str, list[float]]:
        """``{"mean": [...], "std": [...]}``: per-band statistics over every frame, for
        :class:`MelPrior`'s config."""
        total = torch.zeros(self.mels[0].shape[0], dtype=torch.float64)
        sq = torch.zeros_like(total)
        for m in self.mels:
            m = m.double()
            total += m.sum(-1)
            sq += (m * m).sum(-1)
        n = self.frames
        mean = total / n
        std = (sq / n - mean * mean).clamp_min(1e-4).sqrt()
        return {"mean": mean.tolist(), "std": std.tolist()}


class MelCrops(Dataset):
    """Crops of ``segment_frames`` frames of a :class:`MelCorpus`: items ``{"mel": (n_mel,
    segment_frames) float32, "style": int}`` (and ``"key": int`` when the corpus has keys,
    ``"beat": (segment_frames, 2)`` the clock of :meth:`MelCorpus.clock` when it has beats).

    With ``random=True`` (training) there are ``frames // segment_frames`` items per epoch, each
    a crop at a random place (torch's generator, which the trainer seeds per step) of a file
    drawn in proportion to its length. With ``random=False`` (validation) the items are up to
    ``limit`` fixed crops spread evenly over the corpus.
    """

    def __init__(self, corpus: MelCorpus, segment_frames: int, random: bool = True,
                 limit: int = 64):
        self.corpus, self.segment, self.random = corpus, int(segment_frames), random
        keep = [i for i, m in enumerate(corpus.mels) if m.shape[-1] >= self.segment]
        if not keep:
            longest = max((m.shape[-1] for m in corpus.mels), default=0)
            raise FlowsuiteError(f"no audio file is {self.segment} frames long (the longest has "
                                 f"{longest}); lower --segment-frames or give longer audio")
        self.files = keep
        spans = np.array([corpus.mels[i].shape[-1] - self.segment + 1 for i in keep], np.int64)
        self._cum = np.concatenate([[0], np.cumsum(spans)])
        if random:
            self._n = max(1, sum(corpus.mels[i].shape[-1] for i in keep) // self.segment)
            self._fixed: list[int] = []
        else:
            n = min(limit, int(sum(max(1, s // self.segment) for s in spans)))
            self._fixed = np.linspace(0, self._cum[-1] - 1, n).round().astype(np.int64).tolist()
            self._n = len(self._fixed)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        if not 0 <= index < self._n:
            raise IndexError(index)
        pos = (int(torch.randint(int(self._cum[-1]), ())) if self.random
               else self._fixed[index])
        k = int(np.searchsorted(self._cum, pos, side="right") - 1)
        f = self.files[k]
        at = pos - int(self._cum[k])
        mel = self.corpus.mels[f][:, at:at + self.segment].float()
        item = {"mel": mel, "style": self.corpus.labels[f]}
        if self.corpus.keys:
            item["key"] = self.corpus.keys[f]
        if self.corpus.beats:
            item["beat"] = self.corpus.clock(f, at, self.segment)
        return item


def train_prior(model: MelPrior, corpus: MelCorpus, out_dir: str | os.PathLike,
                config: TrainConfig, *, val: MelCorpus | None = None, segment_frames: int = 256,
                resume: bool = False, time_limit: float | None = None) -> FitSummary:
    """Fits ``model`` on random crops of ``segment_frames`` frames of ``corpus`` with the core
    trainer into the run folder ``out_dir`` (validation on fixed crops of ``val``);
    ``resume=True`` continues the run there; ``time_limit`` bounds this sitting (seconds, see
    ``Trainer.fit``). Returns the trainer's summary; the weights to use are
    ``out_dir/model.safetensors`` once ``summary.finished``."""
    if segment_frames < model.block or segment_frames % model.block:
        raise FlowsuiteError(f"--segment-frames {segment_frames} must be a positive multiple of "
                             f"the model's {model.block}-frame steps")
    if corpus.styles and model.styles and corpus.styles != model.styles:
        raise FlowsuiteError(f"the data names the styles {', '.join(corpus.styles)} but the "
                             f"model knows {', '.join(model.styles)}")
    train_set = MelCrops(corpus, segment_frames)
    val_set = None
    if val is not None:
        try:
            val_set = MelCrops(val, segment_frames, random=False)
        except FlowsuiteError:
            val_set = None
    trainer = Trainer(model, train_set, config, out_dir=out_dir, val_set=val_set)
    return trainer.fit(resume=resume, time_limit=time_limit)
