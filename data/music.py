"""Music to learn from: pieces of the music21 corpus rendered to audio with a General MIDI
SoundFont through FluidSynth.

Route: music21 score -> standard MIDI (music21's export: ties, dynamics, tempo marks) -> notes in
seconds (read with mido) -> tempo scaling, transposition and a General MIDI instrument per part
-> FluidSynth (float output, one synthesizer per piece) -> mono 22050 Hz, silence trimmed,
loudness normalised -> float WAV or FLAC. Every random choice of job ``i`` comes from
``numpy.random.default_rng([seed, i])``, so the files do not depend on the number of workers.
"""

from __future__ import annotations

import bisect
import ctypes
import hashlib
import io
import json
import os
import re
import shutil
import struct
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache, lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from flowsuite.core.errors import FlowsuiteError
from flowsuite.core.io import atomic_path, check_output_folder
from flowsuite.data.music_signal import SAMPLE_RATE, fade_out, normalize_loudness, silence_bounds

FLUIDSYNTH_APT = "apt-get install -y libfluidsynth3"
STYLES = ("chorale", "folk", "quartet")
MANIFEST = "manifest.jsonl"
INFO = "dataset.json"
AUDIO_DIR = "audio"
FORMATS = {"wav": ("WAV", "FLOAT"), "flac": ("FLAC", "PCM_24")}

# How often each style is drawn for a job; quartet movements are cut at --max-piece-seconds and
# run longer than folk tunes, so these weights give roughly equal hours of each style.
STYLE_WEIGHTS = {"chorale": 0.3, "folk": 0.55, "quartet": 0.15}
# Playback speed relative to the score (music21 exports unmarked scores at 120 quarters/minute,
# too quick for a chorale).
TEMPO_RANGE = {"chorale": (0.65, 0.9), "folk": (0.85, 1.15), "quartet": (0.85, 1.1)}
TRANSPOSE_RANGE = 3  # semitones either way
# General MIDI programs (0-based) per family and register: high, middle, low, bass.
FAMILIES: dict[str, tuple[tuple[int, ...], ...]] = {
    "piano": ((0, 1, 6),),  # one program for every part: grand, bright, harpsichord
    "organ": ((19, 16, 20),),  # church, drawbar, reed
    "guitar": ((24, 25), (24, 25), (24, 25), (32,)),  # nylon, steel; acoustic bass
    "strings": ((40,), (41, 40), (42,), (42, 43)),  # violin, viola, cello, contrabass
    "woodwinds": ((73, 68), (71, 68, 69), (70, 71), (70,)),  # flute oboe clarinet cor-anglais bsn
    "brass": ((56,), (60, 56), (57, 60), (58, 57)),  # trumpet, horn, trombone, tuba
}
FAMILY_WEIGHTS = {
    "chorale": {"organ": 0.25, "strings": 0.2, "brass": 0.15, "woodwinds": 0.15, "piano": 0.15,
                "mixed": 0.1},
    "folk": {"piano": 0.2, "guitar": 0.2, "strings": 0.2, "woodwinds": 0.25, "brass": 0.05,
             "organ": 0.1},
    "quartet": {"strings": 0.5, "woodwinds": 0.15, "piano": 0.15, "brass": 0.1, "mixed": 0.1},
}
SPLIT_FRACTIONS = (0.9, 0.05, 0.05)  # train, val, test, by work
MIN_PIECE_SECONDS = 1.0
TAIL_SECONDS = 2.0  # rendered after the last note-off for releases and reverb
# Essen's test files repeat tunes found elsewhere in the collection.
_EXCLUDE = re.compile(r"^essenFolksong/test|^mozart/k545/")


@dataclass(frozen=True)
class Piece:
    """One composition in the music21 corpus: ``path`` relative to the corpus root, ``number``
    the tune within a multi-tune ABC file, ``work`` the unit a split keeps together."""

    style: str
    path: str
    number: int | None
    work: str

    @property
    def source(self) -> str:
        return self.path if self.number is None else f"{self.path}#{self.number}"


@dataclass(frozen=True)
class RenderJob:
    """Everything a worker needs to render job ``index`` reproducibly."""

    index: int
    piece: Piece
    seed: int
    soundfont: str
    out_dir: str
    fmt: str
    max_seconds: float


# ---------------------------------------------------------------------------------------------
# The corpus


def _corpus_root() -> Path:
    from music21 import common

    return Path(common.getCorpusFilePath())


def _abc_numbers(path: Path) -> list[int]:
    numbers = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("X:"):
                m = re.match(r"X:\s*(\d+)", line)
                if m:
                    numbers.append(int(m.group(1)))
    return sorted(set(numbers))


@cache
def corpus_pieces(style: str) -> tuple[Piece, ...]:
    """The pieces of one style in the music21 corpus, in a fixed order: ``"chorale"`` (Bach's
    chorales), ``"folk"`` (the Essen collection, O'Neill's 1850 and Ryan's Mammoth Collection),
    ``"quartet"`` (string quartet movements by Haydn, Mozart and Beethoven)."""
    root = _corpus_root()
    pieces: list[Piece] = []

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    if style == "chorale":
        for p in sorted((root / "bach").glob("bwv*.mxl")):
            work = "bach/" + p.stem.split("-")[0]  # variants of one chorale stay together
            pieces.append(Piece(style, rel(p), None, work))
    elif style == "folk":
        for folder in ("essenFolksong", "oneills1850", "ryansMammoth"):
            for p in sorted((root / folder).glob("*.abc")):
                if _EXCLUDE.search(rel(p)):
                    continue
                for n in _abc_numbers(p):
                    pieces.append(Piece(style, rel(p), n, f"{rel(p)}#{n}"))
    elif style == "quartet":
        for composer in ("haydn", "mozart", "beethoven"):
            for p in sorted((root / composer).rglob("*.mxl")):
                if _EXCLUDE.search(rel(p)):
                    continue
                # movements of one quartet share a folder; a file directly under the composer's
                # folder is a whole work
                parent = p.parent.relative_to(root).as_posix()
                work = parent if parent != composer else rel(p).rsplit(".", 1)[0]
                pieces.append(Piece(style, rel(p), None, work))
    else:
        raise FlowsuiteError(f"unknown music style {style!r}; choose from {', '.join(STYLES)}")
    if not pieces:
        raise FlowsuiteError(f"the music21 corpus at {root} has no {style} pieces; reinstall "
                             "music21 (pip install --force-reinstall music21)")
    return tuple(pieces)


def split_of(work: str, fractions: Sequence[float] = SPLIT_FRACTIONS) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a work, from a hash of its name: the same work
    always lands in the same split, whatever the seed or the size of the set."""
    u = int.from_bytes(hashlib.sha256(work.encode()).digest()[:8], "big") / 2.0**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"


def plan(seed: int, styles: Sequence[str] = STYLES) -> Iterator[Piece]:
    """The endless, seeded order in which pieces are rendered: each job draws a style by
    ``STYLE_WEIGHTS``, then takes the next piece of a seeded shuffle of that style's pieces
    (starting a new shuffle when one runs out)."""
    styles = list(dict.fromkeys(styles))
    for s in styles:
        if s not in STYLES:
            raise FlowsuiteError(f"unknown music style {s!r}; choose from {', '.join(STYLES)}")
    if not styles:
        raise FlowsuiteError(f"no music style chosen; choose from {', '.join(STYLES)}")
    pools = {s: corpus_pieces(s) for s in styles}
    return _endless(np.random.default_rng([seed, 0x5EED]), styles, pools)


def _endless(rng: np.random.Generator, styles: list[str], pools: dict[str, tuple[Piece, ...]]
             ) -> Iterator[Piece]:
    weights = np.array([STYLE_WEIGHTS[s] for s in styles])
    weights /= weights.sum()
    orders: dict[str, list[int]] = {s: [] for s in styles}
    while True:
        s = styles[int(rng.choice(len(styles), p=weights))]
        if not orders[s]:
            orders[s] = list(rng.permutation(len(pools[s])))
        yield pools[s][orders[s].pop()]


# ---------------------------------------------------------------------------------------------
# Score -> notes


@dataclass
class Part:
    """One voice of a piece: its name and its notes as rows (start s, end s, pitch, velocity)."""

    name: str
    notes: np.ndarray  # (N, 4) float64


def _tick_to_seconds(tempos: list[tuple[int, int]], tpb: int) -> Callable[[int], float]:
    ticks = [0]
    secs = [0.0]
    uspb = [500000]
    for tick, tempo in sorted(tempos):
        if tick == ticks[-1]:
            uspb[-1] = tempo
            continue
        secs.append(secs[-1] + (tick - ticks[-1]) * uspb[-1] / 1e6 / tpb)
        ticks.append(tick)
        uspb.append(tempo)

    def convert(tick: int) -> float:
        i = bisect.bisect_right(ticks, tick) - 1
        return secs[i] + (tick - ticks[i]) * uspb[i] / 1e6 / tpb

    return convert


def midi_parts(midi_bytes: bytes) -> list[Part]:
    """Notes per track of a standard MIDI file (tracks without notes and drum channel 10 left
    out), times in seconds through the file's tempo map."""
    return midi_music(midi_bytes)[0]


def midi_music(midi_bytes: bytes) -> tuple[list[Part], np.ndarray]:
    """The parts of :func:`midi_parts` and the file's beats: the time in seconds of every MIDI
    beat (quarter note, through the tempo map) from the start to the last note-off."""
    import mido

    mf = mido.MidiFile(file=io.BytesIO(midi_bytes))
    tempos: list[tuple[int, int]] = []
    tracks = []
    for track in mf.tracks:
        tick = 0
        events = []
        name = ""
        for msg in track:
            tick += msg.time
            if msg.type == "set_tempo":
                tempos.append((tick, msg.tempo))
            elif msg.type == "track_name" and not name:
                name = msg.name.strip()
            elif msg.type in ("note_on", "note_off") and msg.channel != 9:
                events.append((tick, msg))
        tracks.append((name, events))
    to_sec = _tick_to_seconds(tempos, mf.ticks_per_beat)
    parts = []
    for name, events in tracks:
        open_notes: dict[tuple[int, int], list[tuple[int, int]]] = {}
        rows = []
        for tick, msg in events:
            key = (msg.channel, msg.note)
            if msg.type == "note_on" and msg.velocity > 0:
                open_notes.setdefault(key, []).append((tick, msg.velocity))
            elif open_notes.get(key):
                start, vel = open_notes[key].pop(0)
                if tick > start:
                    rows.append((to_sec(start), to_sec(tick), msg.note, vel))
        if rows:
            notes = np.array(sorted(rows), dtype=np.float64)
            parts.append(Part(name or f"part {len(parts) + 1}", notes))
    end = max((float(p.notes[:, 1].max()) for p in parts), default=0.0)
    beats = []
    tick = 0
    while (t := to_sec(tick)) <= end:
        beats.append(t)
        tick += mf.ticks_per_beat
    return parts, np.array(beats, dtype=np.float64)


def _truncate(score: Any, seconds: float) -> None:
    """Drops the measures of every part that begin after ``seconds`` of the score at its fastest
    marked tempo (with a margin): music21's MIDI export is slow, and costs time per measure."""
    marks = score.metronomeMarkBoundaries()
    qps = max([m.getQuarterBPM() / 60.0 for _, _, m in marks if m.getQuarterBPM()] + [2.0])
    quarters = seconds * qps * 1.1 + 8.0
    for part in score.parts:
        for measure in list(part.getElementsByClass("Measure")):
            if measure.offset > quarters:
                part.remove(measure)


def score_parts(piece: Piece, seconds: float = float("inf")) -> list[Part]:
    """Parses a corpus piece with music21 and returns its parts as notes in seconds; with
    ``seconds`` the score may be cut after that much music to save time."""
    return score_music(piece, seconds)[0]


def score_music(piece: Piece, seconds: float = float("inf")) -> tuple[list[Part], np.ndarray]:
    """:func:`score_parts` with the score's beats in seconds (see :func:`midi_music`)."""
    from music21 import converter

    path = str(_corpus_root() / piece.path)
    kwargs: dict[str, Any] = {"forceSource": True}
    if piece.number is not None:
        kwargs["number"] = piece.number
    score = converter.parse(path, **kwargs)
    if seconds < float(score.duration.quarterLength) / 2.0:  # shorter than the whole at 120/min
        _truncate(score, seconds)
    return midi_music(_midi_bytes(score))


def _midi_bytes(score: Any) -> bytes:
    """music21's MIDI export, which plays repeats; a score whose repeats it cannot expand (a
    corpus file's, or one cut between a start and an end repeat) is played straight through."""
    from music21 import bar, midi, repeat

    try:
        return midi.translate.music21ObjectToMidiFile(score).writestr()
    except repeat.ExpanderException:
        for measure in score.recurse().getElementsByClass("Measure"):
            if isinstance(measure.leftBarline, bar.Repeat):
                measure.leftBarline = None
            if isinstance(measure.rightBarline, bar.Repeat):
                measure.rightBarline = None
        for bracket in list(score.recurse().getElementsByClass(_repeat_spanners())):
            score.remove(bracket, recurse=True)
        return midi.translate.music21ObjectToMidiFile(score).writestr()


def _repeat_spanners() -> tuple[type, ...]:
    """music21 objects that direct repeats: first and second endings, da capo and segno marks."""
    from music21 import repeat, spanner

    return (spanner.RepeatBracket, repeat.RepeatExpression)


# ---------------------------------------------------------------------------------------------
# Variation


def _register(mean_pitch: float) -> int:
    if mean_pitch >= 70:
        return 0
    if mean_pitch >= 55:
        return 1
    if mean_pitch >= 45:
        return 2
    return 3


def choose_instruments(style: str, parts: Sequence[Part], rng: np.random.Generator
                       ) -> tuple[str, list[int]]:
    """A family for the piece (by ``FAMILY_WEIGHTS[style]``) and a General MIDI program per part
    that suits the part's register; ``"mixed"`` draws a family per part."""
    names = list(FAMILY_WEIGHTS[style])
    w = np.array([FAMILY_WEIGHTS[style][n] for n in names])
    family = names[int(rng.choice(len(names), p=w / w.sum()))]
    plain = [f for f in FAMILIES]
    shared: dict[str, int] = {}  # piano and organ: one program for all parts
    programs = []
    for part in parts:
        fam = plain[int(rng.integers(len(plain)))] if family == "mixed" else family
        table = FAMILIES[fam]
        if len(table) == 1:
            if fam not in shared:
                shared[fam] = int(rng.choice(table[0]))
            programs.append(shared[fam])
        else:
            choices = table[_register(float(part.notes[:, 2].mean()))]
            programs.append(int(rng.choice(choices)))
    return family, programs


def program_name(program: int) -> str:
    """The General MIDI name of a 0-based program number."""
    from pretty_midi.constants import INSTRUMENT_MAP

    return INSTRUMENT_MAP[program]


# ---------------------------------------------------------------------------------------------
# FluidSynth


def default_soundfont() -> Path:
    """The General MIDI SoundFont (TimGM6mb, 6 MB) that ships inside pretty_midi's wheel."""
    try:
        import pretty_midi
    except ImportError as e:
        raise FlowsuiteError("pretty_midi is missing; pip install pretty_midi, or pass "
                             "--soundfont") from e
    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


def _fluidsynth() -> Any:
    try:
        import fluidsynth
    except (ImportError, OSError) as e:
        raise FlowsuiteError(f"cannot load the FluidSynth library ({e}); install it with "
                             f"`{FLUIDSYNTH_APT}` (and pip install pyfluidsynth)") from e
    return fluidsynth


@lru_cache(maxsize=1)
def _write_float() -> Any:
    fl = _fluidsynth()
    f = fl.cfunc("fluid_synth_write_float", ctypes.c_int,
                 ("synth", ctypes.c_void_p, 1), ("len", ctypes.c_int, 1),
                 ("lout", ctypes.c_void_p, 1), ("loff", ctypes.c_int, 1),
                 ("lincr", ctypes.c_int, 1), ("rout", ctypes.c_void_p, 1),
                 ("roff", ctypes.c_int, 1), ("rincr", ctypes.c_int, 1))
    if f is None:
        raise FlowsuiteError("this FluidSynth library lacks fluid_synth_write_float; install "
                             f"FluidSynth 2 with `{FLUIDSYNTH_APT}`")
    return f


class Synth:
    """A FluidSynth synthesizer with one SoundFont loaded, rendering mono float32 audio."""

    def __init__(self, soundfont: str | os.PathLike, sample_rate: int = SAMPLE_RATE,
                 gain: float = 0.4):
        fl = _fluidsynth()
        self._write = _write_float()
        self.sample_rate = sample_rate
        self._synth = fl.Synth(gain=gain, samplerate=float(sample_rate))
        path = Path(soundfont)
        if not path.is_file():
            raise FlowsuiteError(f"SoundFont {path} not found; pass an existing .sf2 file")
        self._sfid = self._synth.sfload(str(path))
        if self._sfid < 0:
            self._synth.delete()
            raise FlowsuiteError(f"FluidSynth could not load {path} as a SoundFont; pass a "
                                 "General MIDI .sf2 file")

    def close(self) -> None:
        self._synth.delete()

    def _samples(self, n: int) -> np.ndarray:
        left = np.zeros(n, dtype=np.float32)
        right = np.zeros(n, dtype=np.float32)
        self._write(self._synth.synth, n, left.ctypes.data, 0, 1, right.ctypes.data, 0, 1)
        return 0.5 * (left + right)

    def render(self, parts: Sequence[Part], programs: Sequence[int], reverb: float = 0.5,
               tail: float = TAIL_SECONDS) -> np.ndarray:
        """Plays the parts, part ``k`` on the General MIDI program ``programs[k]``; returns mono
        ``(T,)`` float32 audio that runs ``tail`` seconds past the last note-off."""
        syn = self._synth
        syn.system_reset()
        syn.set_reverb(roomsize=0.2 + 0.6 * reverb, damping=0.4, width=0.8,
                       level=0.3 + 0.5 * reverb)
        channels = [c for c in range(16) if c != 9]
        if len(parts) > len(channels):
            raise ValueError(f"{len(parts)} parts; at most {len(channels)} can be played")
        events = []  # (time, order, channel, pitch, velocity); note-offs sort before note-ons
        for part, program, ch in zip(parts, programs, channels, strict=False):
            if syn.program_select(ch, self._sfid, 0, program) != 0:
                syn.program_select(ch, self._sfid, 0, 0)  # a SoundFont without that preset
            for start, end, pitch, vel in part.notes:
                events.append((start, 1, ch, int(pitch), int(vel)))
                events.append((end, 0, ch, int(pitch), 0))
        events.sort()
        chunks = []
        pos = 0
        for t, is_on, ch, pitch, vel in events:
            target = int(round(t * self.sample_rate))
            if target > pos:
                chunks.append(self._samples(target - pos))
                pos = target
            if is_on:
                syn.noteon(ch, pitch, vel)
            else:
                syn.noteoff(ch, pitch)
        chunks.append(self._samples(int(tail * self.sample_rate)))
        return np.concatenate(chunks)


def check_soundfont(soundfont: str | os.PathLike) -> None:
    """Fails with a ``FlowsuiteError`` unless FluidSynth is available and loads the SoundFont."""
    Synth(soundfont).close()


# ---------------------------------------------------------------------------------------------
# Rendering one piece


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60]


def vary(piece: Piece, parts: list[Part], rng: np.random.Generator, tempo: float
         ) -> dict[str, Any]:
    """Draws the rest of the variation of one rendering (after its tempo factor): transposition
    (kept inside the MIDI range), instrument family and programs, reverb amount."""
    transpose = int(rng.integers(-TRANSPOSE_RANGE, TRANSPOSE_RANGE + 1))
    pmin = min(float(p.notes[:, 2].min()) for p in parts)
    pmax = max(float(p.notes[:, 2].max()) for p in parts)
    transpose = int(np.clip(transpose, 12 - pmin, 115 - pmax))
    shifted = [Part(p.name, p.notes + np.array([0.0, 0.0, transpose, 0.0])) for p in parts]
    family, programs = choose_instruments(piece.style, shifted, rng)
    reverb = float(np.round(rng.uniform(0.1, 0.8), 3))
    return {"tempo_factor": tempo, "transpose": transpose, "family": family,
            "programs": programs, "reverb": reverb}


def _apply(parts: list[Part], v: dict[str, Any], max_seconds: float, rng: np.random.Generator
           ) -> list[tuple[int, Part]]:
    """The parts as played: tempo scaled, transposed, velocities varied by a few steps, cut at
    ``max_seconds``; with the index of each part that still has notes."""
    out = []
    for k, p in enumerate(parts):
        n = p.notes.copy()
        n[:, :2] /= v["tempo_factor"]
        n[:, 2] += v["transpose"]
        n[:, 3] = np.clip(n[:, 3] + rng.integers(-6, 7, size=len(n)), 1, 127)
        n = n[n[:, 0] < max_seconds]
        n[:, 1] = np.minimum(n[:, 1], max_seconds)
        if len(n):
            out.append((k, Part(p.name, n)))
    return out


def render_piece(piece: Piece, seed: int, index: int, synth: Synth,
                 max_seconds: float = float("inf")) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Renders job ``index`` of a plan: returns mono 22050 Hz float32 audio (trimmed,
    normalised, at most ``max_seconds`` long) and its manifest fields, or ``None`` when the piece
    has no notes or is shorter than ``MIN_PIECE_SECONDS``."""
    rng = np.random.default_rng([seed, index])
    lo, hi = TEMPO_RANGE[piece.style]
    tempo = float(np.round(rng.uniform(lo, hi), 3))
    parts, beats = score_music(piece, max_seconds * tempo)
    parts = parts[:15]
    if not parts:
        return None
    v = vary(piece, parts, rng, tempo)
    played = _apply(parts, v, max_seconds, rng)
    if not played:
        return None
    programs = [v["programs"][k] for k, _ in played]
    audio = synth.render([p for _, p in played], programs, reverb=v["reverb"])
    start, stop = silence_bounds(audio, synth.sample_rate)
    audio = audio[start:stop]
    limit = int(max_seconds * synth.sample_rate)
    if len(audio) > limit:
        audio = fade_out(audio[:limit], int(0.5 * synth.sample_rate))
    audio = normalize_loudness(audio)
    duration = len(audio) / synth.sample_rate
    if duration < MIN_PIECE_SECONDS or not np.any(audio):
        return None
    # the score's beats where they fall in the written file (played faster, leading silence cut)
    beats = beats / tempo - start / synth.sample_rate
    record = {
        "style": piece.style, "source": piece.source, "work": piece.work,
        "split": split_of(piece.work),
        "family": v["family"],
        "instruments": [{"part": p.name, "program": prog, "name": program_name(prog)}
                        for (_, p), prog in zip(played, programs, strict=True)],
        "tempo_factor": v["tempo_factor"], "transpose": v["transpose"], "reverb": v["reverb"],
        "duration": round(duration, 4), "sample_rate": synth.sample_rate,
        "beats": [round(float(b), 4) for b in beats if 0.0 <= b < duration],
    }
    return audio, record


def write_audio(path: str | os.PathLike, audio: np.ndarray, fmt: str = "wav",
                sample_rate: int = SAMPLE_RATE) -> None:
    """Writes mono float32 audio ``(T,)`` atomically: ``"wav"`` as 32-bit float WAV, ``"flac"``
    as 24-bit FLAC. The WAV is written here rather than by libsndfile, whose float WAVs carry a
    PEAK chunk with a timestamp, so that equal audio gives equal bytes."""
    with atomic_path(path) as tmp:
        if fmt == "wav":
            data = np.ascontiguousarray(audio, dtype="<f4").tobytes()
            fmt_chunk = struct.pack("<HHIIHH", 3, 1, sample_rate, 4 * sample_rate, 4, 32)
            with open(tmp, "wb") as f:
                f.write(b"RIFF" + struct.pack("<I", 4 + 8 + 18 + 8 + 4 + 8 + len(data)) + b"WAVE")
                f.write(b"fmt " + struct.pack("<I", 18) + fmt_chunk + b"\0\0")
                f.write(b"fact" + struct.pack("<II", 4, len(audio)))
                f.write(b"data" + struct.pack("<I", len(data)) + data)
        else:
            import soundfile as sf

            fmt_name, subtype = FORMATS[fmt]
            sf.write(tmp, audio, sample_rate, format=fmt_name, subtype=subtype)


def _render_job(job: RenderJob) -> dict[str, Any] | None:
    """Renders and writes one job (in a worker process); returns its manifest record."""
    # A fresh synthesizer per piece: reverb and chorus keep state from one piece to the next, and
    # a piece must not depend on which worker rendered what before it.
    synth = Synth(job.soundfont)
    try:
        result = render_piece(job.piece, job.seed, job.index, synth, job.max_seconds)
    except FlowsuiteError:
        raise
    except Exception as e:  # a score music21 cannot read or export: skip it
        return {"skipped": job.piece.source, "reason": f"{type(e).__name__}: {e}"[:200]}
    finally:
        synth.close()
    if result is None:
        return {"skipped": job.piece.source, "reason": "no notes or too short"}
    audio, record = result
    name = f"{job.index:05d}_{job.piece.style}_{_slug(job.piece.source.rsplit('.', 1)[0])}"
    rel = f"{AUDIO_DIR}/{name}.{job.fmt}"
    write_audio(Path(job.out_dir) / rel, audio, job.fmt)
    return {"file": rel, **record}


# ---------------------------------------------------------------------------------------------
# The whole set


def _is_music_set(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() and (folder / INFO).is_file()


def _check_out(out: Path, force: bool) -> None:
    check_output_folder(out, force, _is_music_set(out), "music set")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("music21", "pyfluidsynth", "mido", "soundfile"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def render_music_set(out: str | os.PathLike, hours: float = 1.0, seed: int = 0,
                     soundfont: str | os.PathLike | None = None, workers: int = 1,
                     fmt: str = "wav", styles: Sequence[str] = STYLES,
                     max_piece_seconds: float = 180.0, force: bool = False,
                     progress: bool = True) -> list[dict[str, Any]]:
    """Renders corpus pieces in the seeded order of ``plan`` until their total duration reaches
    ``hours`` (overshooting by less than one piece), into ``out/audio/`` with ``out/manifest.jsonl``
    (one JSON record per file: file, style, source, work, split, family, instruments,
    tempo_factor, transpose, reverb, duration, sample_rate, and beats: the seconds at which each
    beat of the score falls in the file) and ``out/dataset.json``.

    The set is built in a hidden folder beside ``out`` and moved into place when complete. The
    same arguments give byte-identical files for any ``workers``. Returns the manifest records.
    """
    from tqdm import tqdm

    if not hours > 0:
        raise FlowsuiteError(f"--hours must be positive, got {hours}")
    if not max_piece_seconds >= 2 * MIN_PIECE_SECONDS:
        raise FlowsuiteError(f"--max-piece-seconds must be at least {2 * MIN_PIECE_SECONDS}")
    if fmt not in FORMATS:
        raise FlowsuiteError(f"unknown audio format {fmt!r}; choose from {', '.join(FORMATS)}")
    if workers < 1:
        raise FlowsuiteError(f"--workers must be at least 1, got {workers}")
    out = Path(out)
    _check_out(out, force)
    sf2 = Path(soundfont) if soundfont is not None else default_soundfont()
    check_soundfont(sf2)
    order = plan(seed, styles)  # validates styles

    target = hours * 3600.0
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    (stage / AUDIO_DIR).mkdir(parents=True)
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    total = 0.0
    pool = (ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
            if workers > 1 else None)
    bar = tqdm(total=target, unit="s", desc="rendering music", disable=not progress)
    try:
        pending: list[Future | dict | None] = []
        next_index = 0

        def submit() -> None:
            nonlocal next_index
            job = RenderJob(next_index, next(order), seed, str(sf2.resolve()), str(stage), fmt,
                            max_piece_seconds)
            next_index += 1
            pending.append(pool.submit(_render_job, job) if pool else _render_job(job))

        while total < target:
            while len(pending) < (2 * workers if pool else 1):
                submit()
            head = pending.pop(0)
            rec = head.result() if isinstance(head, Future) else head
            if rec is None or "skipped" in rec:
                skipped.append(rec or {})
                if len(skipped) > 50 + 10 * len(records):
                    raise FlowsuiteError("most corpus pieces fail to render; check the music21 "
                                         "installation (pip install --force-reinstall music21)")
                continue
            records.append(rec)
            bar.update(min(rec["duration"], max(target - total, 0.0)))
            total += rec["duration"]
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
            pool = None
        keep = {r["file"] for r in records}
        for f in (stage / AUDIO_DIR).iterdir():  # renders beyond the target
            if f"{AUDIO_DIR}/{f.name}" not in keep:
                f.unlink()
        with atomic_path(stage / MANIFEST) as tmp:
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        info = {
            "kind": "flowsuite music set", "seed": seed, "hours_requested": hours,
            "seconds": round(total, 3), "files": len(records), "format": fmt,
            "sample_rate": SAMPLE_RATE, "styles": list(dict.fromkeys(styles)),
            "max_piece_seconds": max_piece_seconds, "soundfont": sf2.name,
            "soundfont_sha256": _sha256(sf2), "skipped": skipped,
            "split_fractions": list(SPLIT_FRACTIONS),
            "by_split": {s: sum(1 for r in records if r["split"] == s)
                         for s in ("train", "val", "test")},
            "versions": _versions(),
        }
        with atomic_path(stage / INFO) as tmp:
            tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        _move_into_place(stage, out, force)
    finally:
        bar.close()
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return records


def _move_into_place(stage: Path, out: Path, force: bool) -> None:
    if out.is_dir():
        if any(out.iterdir()):
            _check_out(out, force)  # the folder may have changed while rendering
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            stage.rename(out)
            shutil.rmtree(old, ignore_errors=True)
            return
        out.rmdir()
    stage.rename(out)


def read_manifest(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a rendered music set's ``manifest.jsonl``."""
    path = Path(folder) / MANIFEST
    try:
        lines = path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise FlowsuiteError(f"cannot read the music set manifest {path}: {e}") from e


__all__ = [
    "FAMILIES", "FLUIDSYNTH_APT", "MANIFEST", "STYLES", "Part", "Piece", "RenderJob", "Synth",
    "check_soundfont", "choose_instruments", "corpus_pieces", "default_soundfont",
    "midi_music", "midi_parts", "plan", "read_manifest", "render_music_set", "render_piece",
    "score_music", "score_parts", "split_of", "write_audio",
]
