"""Rendering the music21 corpus to audio: format, durations, seeds, manifest, split, content."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("music21")
sf = pytest.importorskip("soundfile")

from click.testing import CliRunner  # noqa: E402

from flowsuite.cli.main import cli  # noqa: E402
from flowsuite.core.errors import FlowsuiteError  # noqa: E402
from flowsuite.data import music  # noqa: E402
from flowsuite.data.audio import AudioFolder  # noqa: E402
from flowsuite.data.music import (  # noqa: E402
    STYLES,
    Piece,
    Synth,
    corpus_pieces,
    default_soundfont,
    midi_music,
    render_music_set,
    render_piece,
    score_parts,
    split_of,
)

SR = 22050
HOURS = 9.0 / 3600  # about three pieces of at most 4 s
MAX_S = 4.0


@pytest.fixture(scope="module")
def music_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("set") / "music"
    render_music_set(out, hours=HOURS, seed=7, workers=1, max_piece_seconds=MAX_S,
                     progress=False)
    return out


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def _chroma(x: np.ndarray) -> np.ndarray:
    """Energy per pitch class, 50 Hz to 2 kHz."""
    n, hop = 4096, 2048
    frames = np.array([x[i:i + n] * np.hanning(n) for i in range(0, len(x) - n, hop)])
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).sum(axis=0)
    f = np.fft.rfftfreq(n, 1 / SR)
    band = (f >= 50) & (f <= 2000)
    pc = np.round(12 * np.log2(f[band] / 440) + 69).astype(int) % 12
    return np.bincount(pc, weights=power[band], minlength=12)


def _score_chroma(piece: Piece, tempo: float, transpose: int, seconds: float) -> np.ndarray:
    """Sounding time per pitch class of the notes the rendering plays."""
    h = np.zeros(12)
    for part in score_parts(piece):
        n = part.notes
        n = n[n[:, 0] / tempo < seconds]
        np.add.at(h, (n[:, 2].astype(int) + transpose) % 12, n[:, 1] - n[:, 0])
    return h


def test_files_are_22050_hz_mono_float_within_bounds(music_set):
    records = _records(music_set)
    assert len(records) >= 2
    total = 0.0
    for r in records:
        info = sf.info(music_set / r["file"])
        assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "FLOAT")
        assert info.frames == pytest.approx(r["duration"] * SR, abs=1)
        assert music.MIN_PIECE_SECONDS <= r["duration"] <= MAX_S
        total += r["duration"]
    # pieces are rendered until the target is reached, and no further
    assert total >= HOURS * 3600 > total - records[-1]["duration"]
    assert sorted(p.name for p in (music_set / "audio").iterdir()) == sorted(
        Path(r["file"]).name for r in records)


def test_manifest_fields_and_split_by_work(music_set):
    records = _records(music_set)
    info = json.loads((music_set / "dataset.json").read_text())
    assert info["seed"] == 7 and info["files"] == len(records)
    for r in records:
        assert r["style"] in STYLES
        assert r["split"] == split_of(r["work"])
        assert r["instruments"] and all(0 <= i["program"] < 128 and i["name"]
                                        for i in r["instruments"])
        lo, hi = music.TEMPO_RANGE[r["style"]]
        assert lo <= r["tempo_factor"] <= hi
        assert abs(r["transpose"]) <= music.TRANSPOSE_RANGE
        assert r["source"].split("#")[0] in {p.path for p in corpus_pieces(r["style"])}


def test_midi_beats_follow_the_tempo_map():
    import io

    import mido

    mf = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mf.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=500000, time=0))  # 120 per minute
    track.append(mido.Message("note_on", note=60, velocity=80, time=0))
    track.append(mido.MetaMessage("set_tempo", tempo=1000000, time=960))  # 60 from beat 2
    track.append(mido.Message("note_off", note=60, velocity=0, time=1440))
    buf = io.BytesIO()
    mf.save(file=buf)
    parts, beats = midi_music(buf.getvalue())
    assert len(parts) == 1 and parts[0].notes[0, :2].tolist() == [0.0, 4.0]
    assert beats.tolist() == [0.0, 0.5, 1.0, 2.0, 3.0, 4.0]


def test_manifest_beats_fall_where_the_notes_start(music_set):
    """The beats of the scores, moved by the tempo factor and the trimmed silence, sit on the
    rises of the rendered audio: its energy rises more just after a beat than elsewhere."""
    near, every = [], []
    for r in _records(music_set):
        beats = np.array(r["beats"])
        assert len(beats) >= 2 and np.all(np.diff(beats) > 0)
        assert 0 <= beats[0] and beats[-1] < r["duration"]
        x, _ = sf.read(music_set / r["file"], dtype="float32")
        hop = 256
        frames = x[: len(x) // hop * hop].reshape(-1, hop)
        energy = np.log(np.mean(frames ** 2, axis=1) + 1e-8)
        rise = np.maximum(np.diff(energy, prepend=energy[0]), 0)
        at = np.round(beats * SR / hop).astype(int)
        for k in range(4):  # the attack lands within 4 frames (46 ms) of the beat
            near.append(rise[np.clip(at + k, 0, len(rise) - 1)])
        every.append(rise)
    assert np.mean(np.concatenate(near)) > 1.8 * np.mean(np.concatenate(every))


def test_split_is_a_function_of_the_work_alone():
    works = [p.work for p in corpus_pieces("folk")[:3000]]
    splits = [split_of(w) for w in works]
    assert splits == [split_of(w) for w in works]
    frac = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert 0.85 < frac["train"] < 0.95 and 0.02 < frac["val"] < 0.08 and 0.02 < frac["test"] < 0.08
    # variants of one chorale are one work, so they can never straddle two splits
    chorales = {p.path: p.work for p in corpus_pieces("chorale")}
    assert chorales["bach/bwv248.23-2.mxl"] == chorales["bach/bwv248.23-s.mxl"]


def test_same_seed_gives_identical_bytes_with_any_workers(music_set, tmp_path):
    again = tmp_path / "again"
    render_music_set(again, hours=HOURS, seed=7, workers=2, max_piece_seconds=MAX_S,
                     progress=False)
    first = sorted(p.relative_to(music_set) for p in music_set.rglob("*") if p.is_file())
    second = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert first == second
    for rel in first:
        assert (music_set / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_another_seed_gives_other_music(music_set, tmp_path):
    other = tmp_path / "other"
    render_music_set(other, hours=3.0 / 3600, seed=8, max_piece_seconds=MAX_S, progress=False)
    a, b = _records(music_set)[0], _records(other)[0]
    assert (a["source"], a["instruments"], a["tempo_factor"]) != (
        b["source"], b["instruments"], b["tempo_factor"])


@pytest.mark.parametrize("source", ["bach/bwv66.6.mxl", "haydn/opus74no1/movement1.mxl"])
def test_rendering_is_loud_unclipped_and_plays_the_score_pitches(source):
    piece = next(p for s in STYLES for p in corpus_pieces(s) if p.path == source)
    synth = Synth(default_soundfont())
    try:
        audio, rec = render_piece(piece, seed=3, index=1, synth=synth, max_seconds=5.0)
    finally:
        synth.close()
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 4.0 <= len(audio) / SR <= 5.0
    peak, rms = np.abs(audio).max(), np.sqrt(np.mean(audio.astype(np.float64) ** 2))
    assert peak <= 10 ** (-1 / 20) + 1e-6  # normalised with headroom, never clipped
    assert rms > 0.03
    # the opening and the end of the trimmed audio are not silence
    assert np.abs(audio[: SR // 10]).max() > 1e-3 and np.abs(audio[-SR // 2:]).max() > 1e-4
    # pitched, not noise: energy sits on the score's pitch classes (after transposition)
    c = _chroma(audio)
    h = _score_chroma(piece, rec["tempo_factor"], rec["transpose"], len(audio) / SR)
    corr = np.corrcoef(c, h)[0, 1]
    assert corr > 0.5
    assert corr > np.corrcoef(c, np.roll(h, 1))[0, 1]
    assert corr > np.corrcoef(c, np.roll(h, -1))[0, 1]
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    flatness = np.exp(np.mean(np.log(spectrum + 1e-12))) / np.mean(spectrum)
    assert flatness < 0.05


def test_existing_folder_is_kept_without_force(music_set, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FlowsuiteError, match="not empty"):
        render_music_set(mine, hours=HOURS, progress=False)
    with pytest.raises(FlowsuiteError, match="not a flowsuite music set"):
        render_music_set(mine, hours=HOURS, force=True, progress=False)
    assert (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(FlowsuiteError, match="not empty"):
        render_music_set(music_set, hours=HOURS, progress=False)


def test_force_replaces_a_music_set(tmp_path):
    out = tmp_path / "set"
    render_music_set(out, hours=2.0 / 3600, seed=1, max_piece_seconds=3.0, progress=False)
    (out / "audio" / "stale.wav").write_bytes(b"")
    render_music_set(out, hours=2.0 / 3600, seed=2, max_piece_seconds=3.0, fmt="flac",
                     force=True, progress=False)
    files = sorted(p.name for p in (out / "audio").iterdir())
    assert files and all(f.endswith(".flac") for f in files)
    info = sf.info(out / "audio" / files[0])
    assert (info.samplerate, info.channels, info.format) == (SR, 1, "FLAC")
    assert not list(tmp_path.glob(".set.*"))  # no staging folder left behind


def test_rendered_set_reads_with_style_labels(music_set):
    ds = AudioFolder(music_set, segment_samples=SR // 2)
    records = _records(music_set)
    assert ds.styles == list(STYLES)
    by_file = {str(music_set / r["file"]): STYLES.index(r["style"]) for r in records}
    for i in range(0, len(ds), 3):
        item = ds[i]
        assert item["audio"].shape == (SR // 2,)
        assert item["style"] == by_file[str(ds.files[item["file"]].path)]


def test_cli_renders_and_reports_user_errors(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(cli, ["data", "music", "--out", str(out), "--hours", "0.0006",
                                 "--max-piece-seconds", "2.5", "--styles", "folk"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and (out / "manifest.jsonl").is_file()
    assert {r["style"] for r in _records(out)} == {"folk"}

    result = runner.invoke(cli, ["data", "music", "--out", str(out), "--hours", "0.001"])
    assert result.exit_code == 2 and "--force" in result.output

    bad = tmp_path / "bad.sf2"
    bad.write_text("not a soundfont")
    result = runner.invoke(cli, ["data", "music", "--out", str(tmp_path / "x"),
                                 "--soundfont", str(bad)])
    assert result.exit_code == 2
    assert "SoundFont" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()

    result = runner.invoke(cli, ["data", "music", "--out", str(tmp_path / "y"),
                                 "--styles", "jazz"])
    assert result.exit_code == 2 and "jazz" in result.output


def test_missing_fluidsynth_names_the_apt_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "fluidsynth", None)  # makes `import fluidsynth` fail
    music._write_float.cache_clear()
    try:
        with pytest.raises(FlowsuiteError, match="apt-get install -y libfluidsynth3"):
            Synth(default_soundfont())
    finally:
        music._write_float.cache_clear()
