"""Reading users' audio folders: rates, channels, trimming, segments, labels and bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

sf = pytest.importorskip("soundfile")
pytest.importorskip("soxr")

from flowsuite.core.errors import FlowsuiteError  # noqa: E402
from flowsuite.data.audio import AudioFolder, AudioSkipWarning, resample  # noqa: E402
from flowsuite.data.music import STYLES, write_audio  # noqa: E402

SR = 22050


def tone(seconds: float, rate: int, freq: float = 440.0, silence: float = 0.0,
         channels: int = 1) -> np.ndarray:
    """A sine with ``silence`` seconds of zeros either side; ``(T,)`` or ``(T, channels)``."""
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    pad = np.zeros(int(silence * rate))
    x = np.concatenate([pad, x, pad]).astype(np.float32)
    return x if channels == 1 else np.stack([x * (1 - 0.1 * c) for c in range(channels)], 1)


def load(root: Path, **kw) -> tuple[AudioFolder, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = AudioFolder(root, **kw)
    return ds, [str(w.message) for w in caught if issubclass(w.category, AudioSkipWarning)]


def dominant_hz(x: np.ndarray, rate: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def test_any_rate_and_channels_become_22050_mono_trimmed_segments(tmp_path):
    sf.write(tmp_path / "a.wav", tone(2.0, 44100, silence=0.5, channels=2), 44100)
    sf.write(tmp_path / "b.flac", tone(1.5, 48000, freq=660, channels=6), 48000)
    sf.write(tmp_path / "c.wav", tone(1.2, 16000, freq=330), 16000, subtype="PCM_16")
    ds, skipped = load(tmp_path, segment_samples=SR // 2, hop=SR // 4)
    assert skipped == []
    assert [f.path.name for f in ds.files] == ["a.wav", "b.flac", "c.wav"]
    assert all(f.style == -1 for f in ds.files) and ds.styles == []
    a = ds.files[0]
    # the half-second silences are gone (up to the silence detector's frames)
    assert abs(a.start / 44100 - 0.5) < 0.05 and abs(a.stop / 44100 - 2.5) < 0.05
    # 2 s of sound, 0.5 s segments every 0.25 s -> 7; 1.5 s -> 5; 1.2 s -> 3
    counts = np.bincount([ds[i]["file"] for i in range(len(ds))])
    assert counts.tolist() == [7, 5, 3]
    for i in range(len(ds)):
        item = ds[i]
        assert item["audio"].shape == (SR // 2,) and item["audio"].dtype == torch.float32
        assert item["style"] == -1
        want = (440.0, 660.0, 330.0)[item["file"]]
        assert abs(dominant_hz(item["audio"].numpy()) - want) < 5.0
        assert item["audio"].abs().max() > 0.2


def test_segments_match_resampling_the_whole_file(tmp_path):
    x = tone(3.0, 48000, freq=523.25)
    x += 0.1 * np.sin(2 * np.pi * 3000 * np.arange(len(x)) / 48000).astype(np.float32)
    sf.write(tmp_path / "x.wav", x, 48000, subtype="FLOAT")
    ds, _ = load(tmp_path, segment_samples=4000, hop=3333)
    whole = resample(x[ds.files[0].start:], 48000, SR)
    for i in range(len(ds)):
        _, offset = ds.locate(i)
        seg = ds[i]["audio"].numpy()
        ref = whole[offset:offset + 4000]
        assert np.abs(seg[: len(ref)] - ref).max() < 2e-3


def test_long_files_are_read_a_segment_at_a_time(tmp_path, monkeypatch):
    sf.write(tmp_path / "long.wav", tone(60.0, 44100), 44100)
    ds, _ = load(tmp_path, segment_samples=8192)
    asked = []
    real_read = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        asked.append(frames)
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    _ = ds[len(ds) // 2]["audio"]
    assert asked and 0 < max(asked) < 2 * 8192 * 2 + 4410  # one segment plus context, not 60 s


def test_compressed_formats_are_read(tmp_path):
    sf.write(tmp_path / "a.ogg", tone(2.0, 44100), 44100)
    sf.write(tmp_path / "b.mp3", tone(2.0, 44100, freq=880), 44100)
    ds, skipped = load(tmp_path, segment_samples=SR)
    assert skipped == [] and len(ds.files) == 2
    assert abs(dominant_hz(ds[0]["audio"].numpy()) - 440) < 5
    assert abs(dominant_hz(ds[len(ds) - 1]["audio"].numpy()) - 880) < 5


def test_sub_folders_are_style_labels(tmp_path):
    for name, freq in (("reels", 440), ("airs", 550)):
        (tmp_path / name).mkdir()
        sf.write(tmp_path / name / f"{name}.wav", tone(1.0, SR, freq), SR)
    sf.write(tmp_path / "loose.wav", tone(1.0, SR), SR)
    (tmp_path / "notes.txt").write_text("not audio, not listed")
    ds, skipped = load(tmp_path, segment_samples=SR // 2)
    assert skipped == [] and ds.styles == ["airs", "reels"]
    labels = {f.path.name: f.style for f in ds.files}
    assert labels == {"airs.wav": 0, "reels.wav": 1, "loose.wav": -1}
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["audio"].shape == (4, SR // 2)
    # indices(style): the segments of that style's files only, in order
    assert list(ds.indices()) == list(range(len(ds)))
    for name in ("airs", "reels"):
        picked = ds.indices(name)
        assert len(picked) == 2
        assert {ds[int(i)]["style"] for i in picked} == {ds.styles.index(name)}
    with pytest.raises(FlowsuiteError, match="no style 'jigs'.*airs, reels"):
        ds.indices("jigs")


def test_bad_files_are_skipped_with_a_warning_each_and_a_summary(tmp_path):
    sf.write(tmp_path / "good.wav", tone(1.0, SR), SR)
    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x00\x00junk" * 10)
    (tmp_path / "text.mp3").write_text("this is not an mp3 file\n" * 20)
    sf.write(tmp_path / "empty.flac", np.zeros(0, dtype=np.float32), SR)
    sf.write(tmp_path / "short.wav", tone(0.1, SR), SR)
    sf.write(tmp_path / "silent.wav", np.zeros(SR * 2, dtype=np.float32), SR)
    nan = tone(1.0, SR)
    nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, SR, subtype="FLOAT")
    ds, skipped = load(tmp_path, segment_samples=SR // 2)
    assert [f.path.name for f in ds.files] == ["good.wav"]
    per_file = {m.split(":")[0].removeprefix("skipping ") for m in skipped[:-1]}
    assert per_file == {str(tmp_path / n) for n in ("garbage.wav", "text.mp3", "empty.flac",
                                                    "short.wav", "silent.wav", "nan.wav")}
    text = "\n".join(skipped)
    for reason in ("not readable", "empty", "too short", "silent", "NaN"):
        assert reason in text
    assert skipped[-1].startswith("skipped 6 of 7 audio files")


def test_folder_errors_are_one_line(tmp_path):
    with pytest.raises(FlowsuiteError, match="does not exist"):
        AudioFolder(tmp_path / "missing")
    (tmp_path / "readme.txt").write_text("no audio here")
    with pytest.raises(FlowsuiteError, match="no .wav, .flac, .ogg or .mp3 files"):
        AudioFolder(tmp_path)
    (tmp_path / "bad.wav").write_bytes(b"not a wav")
    with pytest.warns(AudioSkipWarning), pytest.raises(FlowsuiteError, match="none of the 1"):
        AudioFolder(tmp_path)
    sf.write(tmp_path / "ok.wav", tone(1.0, SR), SR)
    for rate in (1000, 22050.5, 200000):
        with pytest.raises(FlowsuiteError, match="unsupported sample rate") as e:
            AudioFolder(tmp_path, sample_rate=rate)
        assert "\n" not in str(e.value)
    with pytest.raises(FlowsuiteError, match="positive"):
        AudioFolder(tmp_path, segment_samples=0)
    with pytest.raises(FlowsuiteError, match="manifest"):
        AudioFolder(tmp_path, split="train")


def test_other_model_rates_are_supported(tmp_path):
    sf.write(tmp_path / "a.wav", tone(1.0, 44100), 44100)
    ds, _ = load(tmp_path, segment_samples=8000, sample_rate=16000)
    assert ds.sample_rate == 16000 and len(ds) == 2
    assert abs(dominant_hz(ds[0]["audio"].numpy(), 16000) - 440) < 5


def test_music_set_manifest_gives_styles_and_splits(tmp_path):
    records = []
    for i, (style, split) in enumerate([("chorale", "train"), ("folk", "val"),
                                         ("quartet", "test"), ("folk", "train")]):
        rel = f"audio/{i:05d}.wav"
        write_audio(tmp_path / rel, tone(1.0, SR, 300 + 100 * i))
        records.append({"file": rel, "style": style, "split": split, "duration": 1.0})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "stray.wav").write_bytes(b"outside the manifest, never read")
    ds, skipped = load(tmp_path, segment_samples=SR // 2)
    assert skipped == [] and ds.styles == list(STYLES) and len(ds.files) == 4
    assert [f.style for f in ds.files] == [0, 1, 2, 1]
    train, _ = load(tmp_path, segment_samples=SR // 2, split="train")
    assert [f.path.name for f in train.files] == ["00000.wav", "00003.wav"]
    assert {train[i]["style"] for i in range(len(train))} == {0, 1}
    with pytest.raises(FlowsuiteError, match="split"):
        AudioFolder(tmp_path, split="holdout")
