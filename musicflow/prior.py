"""A flow prior over log-mel spectrograms of music, autoregressive over time in the manner of
Flowtron (Valle et al., 2020), and the text-free music generator built on it.

The spectrogram ``(n_mel, F)`` is normalised per band (statistics kept in the config) and cut
into steps of ``block`` frames; step ``t`` is a vector ``x_t`` of ``block * n_mel`` values
(frame-major). Its density is a conditional flow given a context ``c_t``: the output of a GRU
that has read ``x_0 .. x_{t-1}`` (a learned start vector before ``x_0``), joined with a style
embedding when the model knows styles::

    log p(mel) = sum_t log p(x_t | c_t) - F * sum(log std)

Each step's flow (data to latent) is a context-only affine map (the GRU's prediction of the
mean and scale of ``x_t``) followed by ``n_flows`` steps of ActNorm, an invertible linear map and
a coupling (affine or rational-quadratic spline) whose MLP conditioner reads the context.
The latent is a standard normal, or with ``mixture=K`` a :class:`ContextMixture` of K normals
that the context weighs, so that a step can choose between a held note and a new one (a single
tempered normal cannot: its samples drone).
Training is teacher-forced: the GRU reads the true sequence in one call and the flow runs on
every step at once. Sampling streams: only the GRU's hidden state ``(layers, B, hidden)`` is
carried from step to step, so any length runs in bounded memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowsuite.core import MLP, Affine, Bijection, Compose, Flow, StandardNormal, nsf, realnvp
from flowsuite.core.checkpoint import Configurable, register_model, transfer_weights
from flowsuite.core.coupling import logdet_sum
from flowsuite.core.distributions import ContextMixture
from flowsuite.core.elementwise import RationalQuadraticSpline
from flowsuite.core.errors import FlowsuiteError
from flowsuite.musicflow.keys import KEY_FEATURES, KEY_NAMES, key_features, key_index
from flowsuite.musicflow.mel import (
    CLAMP,
    FMAX,
    FMIN,
    HOP,
    N_MEL,
    SAMPLE_RATE,
    AudioShapeError,
    mel_band_edges,
)
from flowsuite.musicflow.metrics import MEL_ONSET_RISE, mel_onset_frames, mel_rise

_LOG_2PI = math.log(2 * math.pi)

PRESETS: dict[str, dict[str, Any]] = {
    # The shipped size; see BENCHMARKS.md ("Mel prior") for the comparison behind it.
    "small": dict(block=4, hidden=256, rnn_layers=1, n_flows=4, flow_hidden=[256, 256],
                  coupling="affine", style_dim=16),
    # Smoke tests only.
    "tiny": dict(block=2, hidden=16, rnn_layers=1, n_flows=2, flow_hidden=[16],
                 coupling="affine", style_dim=4),
}

MAX_SECONDS = 600.0

# Neighbouring mel bands averaged by `context_smear` (a 3-band average takes the band contrast
# of held-out music to about what a free-running prior keeps; BENCHMARKS.md).
SMEAR_BANDS = 3

# The sampling temperature of `gen music`, `gen eval music` and the API (bench/prior_onsets.py,
# BENCHMARKS.md "Why the prior drones" and "Does the music keep its key?"): the mixture prior is
# closer to held-out music at 0.7-1.0 than at 0.5 on log-mel, chroma and rhythm distances, and
# level within that range; over 10-s clips it keeps its key about 3x as well at 0.7 as at 0.9
# (key stability 0.17-0.23 against 0.05-0.08, held-out music 0.30), so 0.7. A model may name
# another for a style (``temperatures``): with hot onset steps chosen by the key, the shipped
# prior's chorales come closer to the music at 1.0 with their key kept, while folk's is lost
# above 0.7 (BENCHMARKS.md, "A temperature per style").
DEFAULT_TEMPERATURE = 0.7

# A keyed prior adds KEY_GAIN * W @ key_features(key) to the GRU's summary, W starting at zero:
# the gain lets the new map learn at the scale of the trained weights around it (with Adam, a
# tenfold gain is a tenfold learning rate for W); at 1 it stayed near zero (BENCHMARKS.md).
KEY_GAIN = 10.0

# The onset gate (``onset_gate=True``; BENCHMARKS.md "A beat for the prior"). Each step is an
# onset or not (a frame of it is a mel onset, `mel_onset_frames`). A gate predicts which, with
# its own loss: a clocked prior's (``beats=True``) from the phase of the beat and the tempo, the
# style and which of the last GATE_HISTORY steps rose (the step's mean log-mel frame over the
# step before's by MEL_ONSET_RISE nats or more: a function of the steps themselves, so the
# density stays exact); an unclocked one's from the GRU's summary and the rises. The step's
# latent then comes from one of two context mixtures, the onset steps' or the others'. A label
# is worth at most its own entropy, a few tenths of a nat per step against some 25 for what
# sounds: a flow that merely read it ignored it, as a plain prior ignored the beat.
GATE_HISTORY = 32  # steps: 1.5 s
# Sampling divides a clocked gate's log-odds by this (bench/prior_beats.py --gate-temperatures):
# drawn step by step at 1, onsets are a third less periodic than the music's; at 0.3 the drawn
# labels are as periodic as the music's onsets. A gate without a clock draws at its own odds (1):
# at 0.3 it opened on under 3% of steps.
DEFAULT_GATE_TEMPERATURE = 0.3
BEAT_HARMONICS = (1, 2, 4)  # the beat, its halves and its quarters
BEAT_FEATURES = 2 * len(BEAT_HARMONICS) + 1
DEFAULT_TEMPO = 100.0  # beats per minute, where neither the call nor the model names one
TEMPO_RANGE = (20.0, 400.0)

# Onset steps drawn hotter than the others, chosen among several draws by the key (a gated
# prior's sampling options ``onset_temperature`` and ``onset_choices``; BENCHMARKS.md "Where the
# attacks go soft"). Drawn at the sampling temperature, the prior's attacks are timid; drawn
# hotter they come closer to the music's on every frame, pitch-class and rhythm distance but
# leave the key within a few onsets. So each onset step can be drawn ``onset_choices`` times and
# the draw kept whose rise (its power per pitch class over the step before's) puts the largest
# share in the pitch classes the music has sounded, a memory decaying over KEY_MEMORY_SECONDS.
# Mel bands outside PITCH_BANDS_HZ are left out (below, a band spans several semitones; above,
# partials crowd).
KEY_MEMORY_SECONDS = 4.0
PITCH_BANDS_HZ = (150.0, 5000.0)
MAX_ONSET_CHOICES = 32
# What a gated prior draws its onset steps with when the call names neither: hot, each the best
# of a number of draws that keeps the choice's pull on the key per second of music, not per
# onset ("auto"): exp(AUTO_CHOICE_PULL / r) draws (at most AUTO_MAX_CHOICES) where r is the rate
# of rising steps over the last GATE_HISTORY steps, so music with few onsets chooses hard at
# each and music with many lightly. A fixed number held quartets near the music's key but left
# chorales below it and took folk, with three times their onsets, far above; BENCHMARKS.md
# "Onset options as the default".
DEFAULT_ONSET_TEMPERATURE = 1.3
DEFAULT_ONSET_CHOICES = "auto"
AUTO_CHOICE_PULL = 3.0  # nats of choice per second: log(draws) x onsets per second
AUTO_MAX_CHOICES = 16


class PitchMemory:
    """A memory of the pitch classes a log-mel has sounded: each frame's power in the 12 pitch
    classes (mel bands mapped by their centre frequency, a band spread over the classes it
    spans), summed with weights that decay by ``exp(-1 / (seconds * frames per second))`` per
    frame."""

    def __init__(self, seconds: float = KEY_MEMORY_SECONDS, n_mel: int = N_MEL,
                 sample_rate: int = SAMPLE_RATE, hop: int = HOP, fmin: float = FMIN,
                 fmax: float = FMAX):
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"a pitch memory needs a positive number of seconds, not {seconds}")
        self.decay = math.exp(-hop / (seconds * sample_rate))
        edges = mel_band_edges(n_mel, fmin, fmax)
        low, centre, high = edges[:-2], edges[1:-1], edges[2:]
        semitone = 12 * np.log2(np.maximum(centre, 1e-3) / 440.0) + 9  # C = 0, A = 9
        spread = np.maximum(3 * np.log2(high / np.maximum(low, 1e-3)), 0.5)  # a quarter width
        d = np.abs(np.arange(12)[:, None] - semitone[None] % 12)
        d = np.minimum(d, 12 - d)
        w = np.exp(-0.5 * (d / spread[None]) ** 2)
        w /= w.sum(0, keepdims=True)
        w[:, (centre < PITCH_BANDS_HZ[0]) | (centre > PITCH_BANDS_HZ[1])] = 0.0
        self.map = torch.tensor(w, dtype=torch.float32)  # (12, n_mel)

    def power(self, mel: Tensor) -> Tensor:
        """Log-mel frames ``(..., n_mel, F)`` -> their power per pitch class ``(..., F, 12)``."""
        power = torch.exp(2 * mel.float())
        return torch.einsum("cb,...bf->...fc", self.map.to(power.device), power)

    def advance(self, state: Tensor | None, mel: Tensor) -> Tensor:
        """The memory ``(..., 12)`` (``None``: nothing heard yet) after the frames ``(..., n_mel,
        F)``: ``decay ** F * state + sum_f (1 - decay) * decay ** (F - 1 - f) * power_f``."""
        e = self.power(mel)
        n = e.shape[-2]
        w = (1 - self.decay) * self.decay ** torch.arange(n - 1, -1, -1, dtype=torch.float64)
        out = (w.to(e)[:, None] * e).sum(-2)
        return out if state is None else out + self.decay ** n * state.to(out)

    @staticmethod
    def fit(rise: Tensor, memory: Tensor) -> Tensor:
        """How well rises of power per pitch class ``(..., 12)`` (negative parts ignored) keep
        to a memory ``(..., 12)``: the share of the rise in each class times the memory's share
        of that class, summed ``(...)`` (1/12 for a memory of nothing in particular)."""
        r = rise.clamp_min(0)
        r = r / r.sum(-1, keepdim=True).clamp_min(1e-12)
        m = memory / memory.sum(-1, keepdim=True).clamp_min(1e-12)
        return (r * m).sum(-1)


def clock_features(clock: Tensor) -> Tensor:
    """Clock readings ``(..., 2)``: the phase of the beat in ``[0, 1)`` and the tempo in beats
    per minute (NaN: no clock) -> features ``(..., BEAT_FEATURES)``: sine and cosine of the phase
    at each of ``BEAT_HARMONICS`` and log2(tempo / 100); zeros where there is no clock."""
    phase, bpm = clock[..., 0], clock[..., 1]
    known = torch.isfinite(phase) & torch.isfinite(bpm) & (bpm > 0)
    angle = 2 * math.pi * torch.where(known, phase, torch.zeros_like(phase))
    feats = []
    for h in BEAT_HARMONICS:
        feats += [torch.sin(h * angle), torch.cos(h * angle)]
    feats.append(torch.log2(torch.where(known, bpm, torch.full_like(bpm, 100.0)) / 100.0))
    return torch.where(known[..., None], torch.stack(feats, -1), torch.zeros(()).to(clock))


class ContextAffine(Bijection):
    """``z = x * exp(s(c)) + t(c)`` element-wise, with ``(t, s)`` from an MLP of the context
    alone (the log-scale softly bounded); the identity at initialisation.

    With ``spline_bins > 0`` a monotone rational-quadratic spline per feature follows the affine
    map, its knots from a second MLP of the context (zero at initialisation: the identity), so
    that each mel value's density given the past can have two modes (a partial that sounds or
    not) where the affine map alone gives one.

    ``x: (B, features)``, ``context: (B, context_features)``.
    """

    def __init__(self, features: int, context_features: int, hidden: Sequence[int] = (256,),
                 scale_bound: float = 5.0, spline_bins: int = 0, spline_bound: float = 4.0):
        super().__init__()
        self.features = features
        self.transform = Affine(scale_bound)
        self.net = MLP(context_features, 2 * features, hidden=hidden)
        self.spline = (RationalQuadraticSpline(spline_bins, spline_bound) if spline_bins > 0
                       else None)
        self.spline_net = (MLP(context_features, self.spline.num_params * features,
                               hidden=hidden) if self.spline is not None else None)

    def _params(self, net: MLP, n: int, context: Tensor | None, like: Tensor) -> Tensor:
        if context is None:
            raise ValueError("ContextAffine needs a context")
        return net(context).unflatten(-1, (n, self.features)).movedim(-2, -1).to(like.dtype)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, ld = self.transform.forward(x, self._params(self.net, 2, context, x))
        ld = logdet_sum(ld)
        if self.spline is not None:
            z, ld2 = self.spline.forward(
                z, self._params(self.spline_net, self.spline.num_params, context, z))
            ld = ld + logdet_sum(ld2)
        return z, ld

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        spline_ld = None
        if self.spline is not None:
            z, ld2 = self.spline.inverse(
                z, self._params(self.spline_net, self.spline.num_params, context, z))
            spline_ld = logdet_sum(ld2)
        x, ld = self.transform.inverse(z, self._params(self.net, 2, context, z))
        ld = logdet_sum(ld)
        return x, ld if spline_ld is None else ld + spline_ld


def track_beats(mel: Tensor, frames_per_second: float) -> Tensor:
    """The beats of a log-mel ``(n_mel, F)``, tracked: frame positions ``(N,)`` (float64) from
    librosa's beat tracker on the mean rise over bands. On held-out music it finds the scores'
    tempo in most files and half of it in some (BENCHMARKS.md, "A beat for the prior")."""
    import librosa

    rise = torch.nn.functional.pad(mel_rise(mel.detach().cpu()), (2, 0))
    hop = 512  # any: the tracker works in frames, given their rate as sr / hop
    _, beats = librosa.beat.beat_track(onset_envelope=rise.numpy(), hop_length=hop,
                                       sr=frames_per_second * hop)
    return torch.as_tensor(beats, dtype=torch.float64)


def track_clock(mel: Tensor, frames_per_second: float) -> tuple[float, float] | None:
    """The clock at the end of a log-mel ``(n_mel, F)`` from its tracked beats
    (:func:`track_beats`): ``(phase of the beat just after the last frame, tempo in beats per
    minute)``, or ``None`` where fewer than two beats, or a tempo outside ``TEMPO_RANGE``, are
    found. A clocked prior continuing a clip starts its clock there."""
    beats = track_beats(mel, frames_per_second)
    if len(beats) < 2:
        return None
    period = float(beats.diff().median())
    bpm = 60.0 * frames_per_second / period
    if not TEMPO_RANGE[0] <= bpm <= TEMPO_RANGE[1]:
        return None
    # the grid's anchor: the median over beats (the tracker's last beat is often early)
    anchor = float((beats - period * torch.arange(len(beats))).median())
    return float(((mel.shape[-1] - anchor) / period) % 1.0), bpm


@dataclass
class PriorState:
    """Where a stream stands: the GRU's hidden state ``(rnn_layers, B, hidden)`` after reading
    every step so far, the labels of each sample (see :meth:`MelPrior.labels`) and the last
    step (normalised, ``(B, block * n_mel)``; ``None`` before any: the band means), which a
    ``carry`` prior carries into the next step, for a clocked prior the clock at the next
    step ``(B, 2)``: phase of the beat and tempo (see :func:`clock_features`), and for a gated
    prior which of the last ``GATE_HISTORY`` steps rose ``(B, GATE_HISTORY)``, latest first,
    the onset label drawn for the last step ``(B,)`` and the temperature of the gate's draws
    (its log-odds are divided by it; 0: the likelier label), the latent temperature of its
    onset steps (``None``: the sampling temperature; :meth:`MelPrior.initial_state` fills in
    a gated prior's default) and how many draws each onset step is chosen from, with the
    memory of the pitch classes sounded that chooses (``None`` where ``onset_choices`` is 1;
    ``"auto"``: see ``DEFAULT_ONSET_CHOICES``). ``temperature`` is what a step draws at when its
    call names none: each sample's style's (:meth:`MelPrior.temperature_of`), a number or
    ``(B,)``."""

    hidden: Tensor
    style: Tensor
    last: Tensor | None = None
    clock: Tensor | None = None
    rises: Tensor | None = None
    onset: Tensor | None = None
    gate_temperature: float = DEFAULT_GATE_TEMPERATURE
    onset_temperature: float | None = None
    onset_choices: int | str = 1
    pitch: Tensor | None = None
    temperature: float | Tensor = DEFAULT_TEMPERATURE


@register_model("mel-prior")
class MelPrior(Configurable, nn.Module):
    """An autoregressive flow over log-mel frames (see the module docstring).

    Args:
        n_mel: mel bands.
        block: frames per autoregressive step (1 = frame steps).
        hidden, rnn_layers: the GRU that summarises the past steps (the context size).
        n_flows, flow_hidden, coupling: each step's flow (``"affine"`` or ``"spline"``
            couplings with MLP conditioners of ``flow_hidden`` units).
        styles: names of the conditioning styles (empty: no style input).
        style_dim: size of the style embedding.
        mean, std: per-band statistics of the training mels (``n_mel`` each; ``None``: 0 and 1).
        noise: standard deviation of the noise added to normalised mels in training (a
            dequantisation that keeps the density finite on clamped, silent bands).
        context_noise: standard deviation of the noise added to the past steps the GRU reads,
            in training and in sampling alike. Without it a teacher-forced model learns to copy
            the frame before (successive frames of a held note are nearly equal) and samples a
            drone; blurring the past makes it model how music moves on. 0 turns it off.
        self_feed: share of the past steps that the GRU reads, in training, as the model's own
            sample of that step (drawn at temperature 1 from the true steps before it, without
            gradient) instead of the true step: scheduled sampling. A sampling prior reads only
            its own steps, which a purely teacher-forced one never saw; this teaches it to carry
            on from them. 0 (the default) trains teacher-forced.
        rollout: train on free-running rollouts: each step's likelihood is taken given a past
            whose last ``rollout`` steps are the model's own samples (drawn one after another
            from the true steps before them, at temperature 1, without gradient through the
            draws), so that the prior learns to return to the music from its own steps. All
            positions roll out at once (one GRU step and one sampling pass per rollout step);
            needs ``rnn_layers=1``. 0 (the default) trains teacher-forced.
        rollout_share: the share of each batch's sequences trained on rollouts (drawn anew per
            batch); the others stay teacher-forced.
        context_smear: in training only, the past the GRU reads is smeared across mel bands,
            as a free-running prior blurs its own samples: each frame's 3-band moving average,
            shifted so that its largest value equals the frame's own (the blur fills the valleys
            between partials but leaves the loudest band's level), is blended into the frame by
            a share drawn per sequence from ``[0, context_smear]``. The true next step still
            follows from a smeared past, so the prior learns to restore the partials rather
            than to copy the blur; keeping the peak tells it the level is unchanged (a plain
            blur also lowers the peaks, and a prior trained on it brightens as it runs).
            0 (the default) leaves the past as it is.
        keys: condition on the music's key (:mod:`flowsuite.musicflow.keys`): the 24 features
            of each sample's key (-1: none) enter the GRU's summary through a linear map that
            starts at zero (so a trained prior grows into it unchanged). Training estimates each
            file's key from its audio; sampling takes a key or draws one at random.
        context_blank: in training only, this share of the sequences (drawn per sequence) read
            a past of standard normal noise in place of their true steps, so the prior must
            predict those steps from nothing it can copy (the start of a piece, a past it
            cannot trust). Measured on the shipped prior: at temperature 0.9 it then drifts
            less from key to key, at 0.7 no less (BENCHMARKS.md, "Does the music keep its
            key?"). 0 (the default) leaves the past as it is.
        onset_gate: model each step as an onset or not explicitly (see the note above
            ``GATE_HISTORY``): the likelihood of a step is the gate's probability of its label
            times the density under that label's latent mixture (training, with the label of
            the data); :meth:`log_prob` sums over both labels (exact); sampling draws the label,
            then the step. The onset mixture starts as a copy of the other (``from_trained``),
            so a trained prior grows into the gate unchanged. Needs ``mixture``; excludes
            ``rollout`` and ``self_feed``.
        beats: the gate also reads a clock, the phase of the beat and the tempo at each step
            (see :func:`clock_features`; needs ``onset_gate``). Training reads the beats of the
            scores from the music set's manifest (audio without them reads no clock);
            sampling runs a steady clock at a chosen tempo, by default the median tempo of the
            training music of the style (``tempi``).
        tempi: for a clocked prior, the median tempo in beats per minute of the training music
            per style name, and of all of it under ``"all"``.
        temperatures: the sampling temperature per style name where a style is closer to
            held-out music at another than ``DEFAULT_TEMPERATURE`` (measured after training, so
            written into the model's config when it is packed: ``recipes/pack.py --set``); a
            sample drawn without a temperature takes its style's, ``DEFAULT_TEMPERATURE`` for a
            style not named (see :meth:`temperature_of`).
        spline_bins: bins of a monotone spline per mel value, its knots from the context, on
            the mel side of each step's flow (after the context-predicted affine map; see
            :class:`ContextAffine`), so a value's density given the past can have two modes
            (a partial sounds or not); 0 (the default) leaves it out.
        carry: carry the last frame of the step before into each step directly: the step's
            flow models ``x - a(c) * last`` with a per-value gain ``a`` from the context (zero
            at first, so a trained prior grows into it unchanged), instead of rebuilding the
            held partials from the GRU's summary alone, which loses detail that then compounds
            step after step when the prior reads its own samples.
        mixture: components of the latent's distribution given the context (a
            :class:`ContextMixture`, so a step can choose a held note or a new one); 0 keeps
            the standard normal of the first shipped prior.
        sample_rate, hop: the mel front end the spectrograms come from.
    """

    def __init__(self, n_mel: int = N_MEL, block: int = 4, hidden: int = 256,
                 rnn_layers: int = 1, n_flows: int = 4, flow_hidden: Sequence[int] = (256, 256),
                 coupling: str = "affine", styles: Sequence[str] = (), style_dim: int = 16,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 noise: float = 0.05, sample_rate: int = SAMPLE_RATE, hop: int = HOP,
                 context_noise: float = 0.0, mixture: int = 0, self_feed: float = 0.0,
                 spline_bins: int = 0, carry: bool = False, rollout: int = 0,
                 rollout_share: float = 1.0, context_smear: float = 0.0,
                 context_blank: float = 0.0, keys: bool = False, onset_gate: bool = False,
                 beats: bool = False, tempi: dict[str, float] | None = None,
                 temperatures: dict[str, float] | None = None):
        super().__init__()
        if block < 1 or hidden < 1 or rnn_layers < 1 or n_flows < 1:
            raise ValueError("block, hidden, rnn_layers and n_flows must be positive")
        if coupling not in ("affine", "spline"):
            raise ValueError(f"unknown coupling {coupling!r}; use 'affine' or 'spline'")
        self.n_mel, self.block, self.hop, self.sample_rate = n_mel, block, hop, sample_rate
        self.styles = list(styles)
        self.noise = float(noise)
        self.context_noise = float(context_noise)
        if self.noise < 0 or self.context_noise < 0:
            raise ValueError("noise and context_noise must not be negative")
        if not 0.0 <= self_feed <= 1.0:
            raise ValueError(f"self_feed must be a share between 0 and 1, not {self_feed}")
        self.self_feed = float(self_feed)
        if rollout < 0 or (rollout and rnn_layers != 1) or (rollout and self_feed):
            raise ValueError("rollout must be 0 or positive, needs rnn_layers=1 and excludes "
                             "self_feed")
        self.rollout = int(rollout)
        if not 0.0 <= rollout_share <= 1.0:
            raise ValueError(f"rollout_share must be between 0 and 1, not {rollout_share}")
        self.rollout_share = float(rollout_share)
        if not 0.0 <= context_smear <= 1.0:
            raise ValueError(f"context_smear must be a share between 0 and 1, not "
                             f"{context_smear}")
        self.context_smear = float(context_smear)
        if not 0.0 <= context_blank <= 1.0:
            raise ValueError(f"context_blank must be a share between 0 and 1, not "
                             f"{context_blank}")
        self.context_blank = float(context_blank)
        if mixture < 0 or mixture == 1:
            raise ValueError(f"mixture must be 0 (none) or at least 2 components, not {mixture}")
        if spline_bins < 0:
            raise ValueError(f"spline_bins must be 0 (none) or positive, not {spline_bins}")
        if onset_gate and (rollout or self_feed or not mixture):
            raise ValueError("the onset gate (onset_gate, --beats) needs a mixture latent "
                             "(mixture of 2 or more) and excludes rollout and self_feed")
        if beats and not onset_gate:
            raise ValueError("beats needs onset_gate (the clock is read by the onset gate)")
        self.features = d = block * n_mel
        f32 = torch.float32
        mean_t = torch.zeros(n_mel) if mean is None else torch.tensor(list(mean), dtype=f32)
        std_t = torch.ones(n_mel) if std is None else torch.tensor(list(std), dtype=f32)
        if mean_t.shape != (n_mel,) or std_t.shape != (n_mel,) or not bool((std_t > 0).all()):
            raise ValueError(f"mean and std need {n_mel} values each, std positive")
        # Rebuilt from the config, so not saved with the weights.
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)
        self.start = nn.Parameter(torch.zeros(d))
        self.rnn = nn.GRU(d, hidden, num_layers=rnn_layers, batch_first=True)
        # One more row than styles: the "no style" row for unlabelled audio (label -1).
        self.style_embedding = (nn.Embedding(len(self.styles) + 1, style_dim)
                                if self.styles else None)
        ctx = hidden + (style_dim if self.styles else 0)
        hid = list(flow_hidden)
        steps = (realnvp(d, n_flows, hid, context_features=ctx) if coupling == "affine"
                 else nsf(d, n_flows, hid, context_features=ctx, mixing="linear"))
        self.flow = Flow(Compose(ContextAffine(d, ctx, hid[:1], spline_bins=spline_bins),
                                 steps.bijection),
                         StandardNormal(d))
        self.mixture = ContextMixture(d, ctx, mixture, hid[:1]) if mixture else None
        self.carry = MLP(ctx, d, hidden=hid[:1]) if carry else None
        self.key_map = nn.Linear(KEY_FEATURES, hidden, bias=False) if keys else None
        if self.key_map is not None:
            nn.init.zeros_(self.key_map.weight)
        self._beats = bool(beats)
        self._style_dim = style_dim if self.styles else 0
        gate_in = GATE_HISTORY + ((self._style_dim + BEAT_FEATURES) if beats
                                  else ctx + (d if carry else 0))
        self.gate = MLP(gate_in, 1, hidden=hid[:1]) if onset_gate else None
        self.onset_mixture = ContextMixture(d, ctx, mixture, hid[:1]) if onset_gate else None
        self.tempi = {str(k): float(v) for k, v in (tempi or {}).items()}
        if any(not (math.isfinite(v) and v > 0) for v in self.tempi.values()):
            raise ValueError(f"tempi must be positive beats per minute, got {self.tempi}")
        self.temperatures = {str(k): float(v) for k, v in (temperatures or {}).items()}
        if any(not (math.isfinite(v) and v >= 0) for v in self.temperatures.values()):
            raise ValueError(f"temperatures must be non-negative numbers, got "
                             f"{self.temperatures}")
        if unknown := sorted(set(self.temperatures) - set(self.styles)):
            raise ValueError(f"temperatures name styles this model does not know: "
                             f"{', '.join(unknown)} (styles: {', '.join(self.styles) or 'none'})")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> MelPrior:
        """A model of a named size (``"small"`` or ``"tiny"``) with any argument changed."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_trained(cls, source: MelPrior, **overrides: Any) -> MelPrior:
        """A model of ``source``'s config with ``overrides``, holding ``source``'s weights
        wherever a part exists in both (e.g. a trained prior given a :class:`ContextMixture`:
        the new mixture keeps its initialisation). More ``n_flows`` than ``source`` appends
        flow steps on the latent side that start as the identity (ActNorm at zero, the
        invertible map at the identity matrix, couplings at zero as built), so the grown model
        starts with ``source``'s likelihood and gains capacity from there. Raises
        ``FlowsuiteError`` when a shared weight's shape differs (a change of size cannot start
        from the trained weights)."""
        model = cls(**{**source.config, **overrides})
        transfer_weights(source, model, "prior")
        if (model.onset_mixture is not None and source.onset_mixture is None
                and source.mixture is not None):  # a new gate: both labels start alike
            model.onset_mixture.load_state_dict(source.mixture.state_dict())
        return model.to(source.start.device)

    @property
    def keys(self) -> bool:
        """Whether the prior conditions on the music's key (``keys=True``)."""
        return self.key_map is not None

    @property
    def beats(self) -> bool:
        """Whether the prior's onset gate reads a clock (``beats=True``)."""
        return self._beats

    def tempo_of(self, style: Tensor) -> Tensor:
        """The default tempo (beats per minute) for style labels ``(B,)``: the median of the
        training music of the style (``tempi``), else of all of it, else ``DEFAULT_TEMPO``."""
        return torch.tensor(self._per_style(self.tempi, style,
                                            self.tempi.get("all", DEFAULT_TEMPO)),
                            dtype=torch.float32)

    def _per_style(self, table: dict[str, float], style: Tensor, fallback: float
                   ) -> list[float]:
        """For style labels ``(B,)``, each style's value in ``table`` (by name), else
        ``fallback`` (also for the label -1, no style)."""
        return [table.get(self.styles[int(s)], fallback) if 0 <= int(s) < len(self.styles)
                else fallback for s in style]

    def temperature_of(self, style: Tensor) -> float | Tensor:
        """The sampling temperature for style labels ``(B,)`` where a call names none: the
        style's (``temperatures``), else ``DEFAULT_TEMPERATURE``. One number when every sample
        has the same, else one per sample ``(B,)``."""
        values = self._per_style(self.temperatures, style, DEFAULT_TEMPERATURE)
        if len(set(values)) <= 1:
            return values[0] if values else DEFAULT_TEMPERATURE
        return torch.tensor(values, dtype=torch.float32, device=style.device)

    def advance(self, clock: Tensor, steps: int = 1) -> Tensor:
        """The clock ``(..., 2)`` ``steps`` steps later (the phase moves on, the tempo holds)."""
        beats = steps * self.block / self.frames_per_second * clock[..., 1] / 60.0
        return torch.stack([torch.remainder(clock[..., 0] + beats, 1.0), clock[..., 1]], -1)

    def onset_labels(self, mel: Tensor) -> Tensor:
        """Log-mels ``(B, n_mel, T * block)`` -> ``(B, T)`` float: 1 where a frame of the step
        is a mel onset (:func:`~flowsuite.musicflow.metrics.mel_onset_frames`)."""
        hits = mel_onset_frames(mel.float())
        return hits.view(mel.shape[0], -1, self.block).any(-1).to(mel.dtype)

    def step_clock(self, clock: Tensor | None, frames: int) -> Tensor | None:
        """A clock per frame ``(B, F, 2)`` (a batch's ``"beat"``) -> the clock at the first frame
        of each step ``(B, F // block, 2)``; ``None`` for a prior without beats or no clock."""
        if clock is None or not self.beats:
            return None
        if clock.dim() != 3 or clock.shape[1] != frames or clock.shape[2] != 2:
            raise ValueError(f"a clock must be (B, {frames}, 2) for {frames} frames, got "
                             f"{tuple(clock.shape)}")
        return clock[:, ::self.block]

    def gate_logits(self, context: Tensor, clock: Tensor | None = None,
                    rises: Tensor | None = None) -> Tensor:
        """The onset gate's log-odds ``(...)`` of contexts ``(..., C)`` (from :meth:`_context`),
        for a clocked prior the clock ``(..., 2)`` (``None``: none), and which of the last
        ``GATE_HISTORY`` steps rose ``(..., GATE_HISTORY)`` (latest first; ``None``: none). A
        clocked gate reads the clock, the style embedding and the rises, not the GRU's
        summary: running on its own samples, a prior's summary is not what it was in training,
        and a gate that read it opened on half as many beats as the music has (BENCHMARKS.md,
        "A beat for the prior")."""
        if self.gate is None:
            raise ValueError("this prior has no onset gate")
        if self.beats:
            feats = (context.new_zeros(*context.shape[:-1], BEAT_FEATURES) if clock is None
                     else clock_features(clock.to(context.device, torch.float32)))
            hidden = self.rnn.hidden_size
            style = context[..., hidden:hidden + self._style_dim]
            context = torch.cat([style, feats.to(context.dtype)], dim=-1)
        if rises is None:
            rises = context.new_zeros(*context.shape[:-1], GATE_HISTORY)
        return self.gate(torch.cat([context, rises.to(context.dtype)], dim=-1))[..., 0]

    def step_rises(self, steps: Tensor, before: Tensor | None = None) -> Tensor:
        """Normalised steps ``(B, T, D)`` -> ``(B, T)`` float: 1 where the step's mean log-mel
        frame rises over the step before's by ``MEL_ONSET_RISE`` nats or more (the mean over
        bands of the positive part); the first step is compared with ``before`` ``(B, D)``, or
        is 0 without it."""
        b, t, _ = steps.shape
        frames = self.denormalise(steps.float().reshape(b, t, self.block, self.n_mel)
                                  .mean(2).transpose(1, 2)).transpose(1, 2)
        if before is None:
            first = frames[:, :1]
        else:
            first = self.denormalise(before.float().reshape(b, self.block, self.n_mel)
                                     .mean(1)[:, :, None]).transpose(1, 2)
        rise = (frames - torch.cat([first, frames[:, :-1]], dim=1)).clamp_min(0).mean(-1)
        return (rise >= MEL_ONSET_RISE).float()

    @staticmethod
    def rise_history(rises: Tensor) -> Tensor:
        """Rises of steps ``(B, T)`` -> for each step those of the ``GATE_HISTORY`` steps
        before it, latest first ``(B, T, GATE_HISTORY)`` (zeros before the first)."""
        padded = F.pad(rises, (GATE_HISTORY, 0))
        return padded.unfold(1, GATE_HISTORY, 1)[:, :rises.shape[1]].flip(-1)

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop

    def _device(self) -> torch.device:
        return self.start.device

    # ------------------------------------------------------------------------------ layout

    def normalise(self, mel: Tensor) -> Tensor:
        """Log-mel ``(B, n_mel, F)`` -> per-band standardised ``(B, n_mel, F)``."""
        return (mel - self.mean[:, None]) / self.std[:, None]

    def denormalise(self, x: Tensor) -> Tensor:
        """The inverse of :meth:`normalise`."""
        return x * self.std[:, None] + self.mean[:, None]

    def _floor_step(self) -> Tensor:
        """log(CLAMP) normalised, laid out as one step ``(block * n_mel,)``."""
        floor = self.normalise(torch.full((1, self.n_mel, self.block), math.log(CLAMP),
                                          device=self.mean.device))
        return self.to_steps(floor)[0, 0]

    def to_steps(self, x: Tensor) -> Tensor:
        """``(B, n_mel, T * block)`` -> steps ``(B, T, block * n_mel)``."""
        b, m, f = x.shape
        return x.transpose(1, 2).reshape(b, f // self.block, self.block * m)

    def from_steps(self, s: Tensor) -> Tensor:
        """Steps ``(B, T, block * n_mel)`` -> ``(B, n_mel, T * block)``."""
        b, t, _ = s.shape
        return s.reshape(b, t * self.block, self.n_mel).transpose(1, 2)

    def check_mel(self, mel: Tensor, whole_steps: bool = True) -> Tensor:
        """Validates a log-mel ``(B, n_mel, F)`` or ``(n_mel, F)``; returns ``(B, n_mel, F)``."""
        if not isinstance(mel, Tensor) or not mel.is_floating_point():
            raise AudioShapeError("the mel spectrogram must be a floating-point tensor")
        mel = mel[None] if mel.dim() == 2 else mel
        if mel.dim() != 3 or mel.shape[1] != self.n_mel:
            raise AudioShapeError(f"the mel spectrogram must be (B, {self.n_mel}, frames), got "
                                  f"{tuple(mel.shape)}")
        if mel.shape[2] < self.block or (whole_steps and mel.shape[2] % self.block):
            raise AudioShapeError(f"{mel.shape[2]} frames are not a positive whole number of "
                                  f"{self.block}-frame steps")
        if not torch.isfinite(mel).all():
            raise AudioShapeError("the mel spectrogram holds NaN or infinite values")
        return mel

    def style_index(self, style: str | int | None, batch: int,
                    generator: torch.Generator | None = None) -> Tensor:
        """Style labels ``(batch,)``: a name or index of ``self.styles``; ``None`` draws one at
        random per sample (from ``generator``) when the model knows styles, else -1."""
        if not self.styles:
            if style is not None:
                raise FlowsuiteError(f"this model was trained without styles; leave out the "
                                     f"style (got {style!r})")
            return torch.full((batch,), -1, dtype=torch.long)
        if style is None:
            dev = generator.device if generator is not None else None
            return torch.randint(len(self.styles), (batch,), generator=generator, device=dev)
        if isinstance(style, str):
            if style not in self.styles:
                raise FlowsuiteError(f"unknown style {style!r}; this model knows "
                                     f"{', '.join(self.styles)}")
            style = self.styles.index(style)
        if not -1 <= int(style) < len(self.styles):
            raise FlowsuiteError(f"style index {style} is out of range; this model knows "
                                 f"{', '.join(self.styles)}")
        return torch.full((batch,), int(style), dtype=torch.long)

    def labels(self, style: Tensor, key: Tensor | str | int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """What the context reads of each sample: style labels ``(B,)`` alone, or for a keyed
        prior ``(B, 2)`` of style and key. ``key``: labels ``(B,)`` (-1: none), a name or index
        (see :func:`~flowsuite.musicflow.keys.key_index`), or ``None``: one drawn at random
        per sample (from ``generator``). A key given to a prior without keys is an error."""
        if not self.keys:
            if key is not None:
                raise FlowsuiteError(f"this prior was trained without keys; leave out the key "
                                     f"(got {key!r})")
            return style
        b = style.shape[0]
        if key is None:
            dev = generator.device if generator is not None else None
            key = torch.randint(len(KEY_NAMES), (b,), generator=generator, device=dev)
        elif not isinstance(key, Tensor):
            key = torch.full((b,), key_index(key), dtype=torch.long)
        return torch.stack([style.long(), key.long().to(style.device)], dim=-1)

    def _context(self, hidden_out: Tensor, style: Tensor, prev: Tensor | None = None
                 ) -> Tensor:
        """GRU outputs ``(B, T, H)`` (or ``(B, H)``), labels ``(B,)`` or ``(B, 2)`` (see
        :meth:`labels`) and, for a ``carry`` prior, the step before each ``(B, T, D)`` (or
        ``(B, D)``; ``None``: the band means) -> contexts with the style embedding (and the step
        before) appended, the key's map added to the GRU's summary."""
        if style.dim() == 2:
            style, key = style[:, 0], style[:, 1]
            if self.key_map is not None:
                feats = key_features(key).to(hidden_out.device, hidden_out.dtype)
                shift = (KEY_GAIN * self.key_map(feats)).to(hidden_out.dtype)
                hidden_out = hidden_out + (shift[:, None] if hidden_out.dim() == 3 else shift)
        ctx = hidden_out
        if self.style_embedding is not None:
            idx = torch.where(style < 0, len(self.styles), style).to(hidden_out.device)
            emb = self.style_embedding(idx)
            if hidden_out.dim() == 3:
                emb = emb[:, None].expand(-1, hidden_out.shape[1], -1)
            ctx = torch.cat([hidden_out, emb.to(hidden_out.dtype)], dim=-1)
        if self.carry is None:
            return ctx
        if prev is None:
            prev = ctx.new_zeros(*ctx.shape[:-1], self.features)
        return torch.cat([ctx, prev.to(ctx.dtype)], dim=-1)

    def _previous(self, past: Tensor) -> Tensor:
        """The steps read so far ``(B, T - 1, D)`` -> the step before each of ``T`` steps
        ``(B, T, D)`` (the band means, zeros, before the first)."""
        return torch.cat([past.new_zeros(past.shape[0], 1, past.shape[2]), past], dim=1)

    def teacher_forced_context(self, steps: Tensor, style: Tensor) -> Tensor:
        """The context ``(B, T, C)`` of each of the normalised steps ``(B, T, D)`` given the
        true steps before it (what training reads, without its noise)."""
        b, _, d = steps.shape
        past = steps[:, :-1]
        out, _ = self.rnn(torch.cat([self.start.to(steps.dtype).expand(b, 1, d), past], dim=1))
        return self._context(out, style, self._previous(past))

    # ---------------------------------------------------------------------------- likelihood

    def _log_prob_normalised(self, x: Tensor, style: Tensor, onset: Tensor | None = None,
                             clock: Tensor | None = None) -> Tensor:
        """``log p`` of normalised mels ``(B, n_mel, T * block)`` -> ``(B,)``, teacher-forced.
        A gated prior with each step's onset label ``onset`` ``(B, T)`` gives the joint
        likelihood of the mel and the labels; without, the mel's (summed over labels).
        ``clock``: per step ``(B, T, 2)`` or ``None``."""
        steps = self.to_steps(x)
        b, t, d = steps.shape
        past = steps[:, :-1]
        if self.training and self.self_feed > 0 and t > 1 and self._flow_ready():
            past = self._self_fed(steps, style)
        read = self._blanked(self._smeared(self._as_read(past))) if self.training else past
        inputs = torch.cat([self.start.to(steps.dtype).expand(b, 1, d), read], dim=1)
        out, _ = self.rnn(inputs)
        prev = self._previous(past)
        if self.training and self.rollout > 0 and t > 1 and self._flow_ready():
            rows = (torch.rand(b, device=out.device) < self.rollout_share).nonzero()[:, 0]
            if len(rows):
                ro, rp = self._rolled_out(out[rows], prev[rows], style.to(out.device)[rows])
                out, prev = out.index_copy(0, rows, ro), prev.index_copy(0, rows, rp)
        if self.gate is None:
            ctx = self._context(out, style, prev).reshape(b * t, -1)
            lp = self.step_log_prob(steps.reshape(b * t, d), ctx)
            return lp.view(b, t).sum(1)
        ctx = self._context(out, style, prev)
        with torch.no_grad():
            history = self.rise_history(self.step_rises(steps))
        logit = self.gate_logits(ctx, clock, history).float()
        z, logdet, fctx = self.step_latent(steps.reshape(b * t, d), ctx.reshape(b * t, -1))
        rest, hit = self._label_log_probs(z, fctx)
        rest, hit = (logdet + rest).view(b, t), (logdet + hit).view(b, t)
        if onset is not None:
            lp = torch.where(onset.bool(), hit, rest)
            return (lp - F.binary_cross_entropy_with_logits(
                logit, onset.to(logit.dtype), reduction="none")).sum(1)
        both = torch.stack([rest + F.logsigmoid(-logit), hit + F.logsigmoid(logit)])
        return torch.logsumexp(both, 0).sum(1)

    def _label_log_probs(self, z: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
        """A gated prior's latents ``(N, D)`` -> their log-density under the mixture of the steps
        without an onset and under the onset steps' ``(N,)`` each."""
        return self.mixture.log_prob(z, ctx), self.onset_mixture.log_prob(z, ctx)

    def _rolled_out(self, out: Tensor, prev: Tensor, style: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced GRU states ``(B, T, H)`` (the state that predicts each step) and the
        steps before each ``(B, T, D)`` -> the same after ``rollout`` free-running steps: at
        every position the state has read its own samples of the last ``min(rollout, t)``
        steps instead of the true ones. Rollout step ``j`` samples every position from the
        states of step ``j - 1`` and advances each state by one GRU step over the sample of the
        position before it."""
        b, t, _ = out.shape
        for _ in range(self.rollout):
            with torch.no_grad():
                ctx = self._context(out[:, :-1], style, prev[:, :-1]).reshape(b * (t - 1), -1)
                drawn = self.draw_step(ctx, 1.0)[0].view(b, t - 1, -1).to(out.dtype)
            read = self._as_read(drawn)
            h0 = out[:, :-1].reshape(1, b * (t - 1), -1).contiguous()
            step, _ = self.rnn(read.reshape(b * (t - 1), 1, -1), h0)
            out = torch.cat([out[:, :1], step.view(b, t - 1, -1)], dim=1)
            prev = torch.cat([prev[:, :1], drawn], dim=1)
        return out, prev

    def _as_read(self, steps: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``steps`` as the GRU reads them: with ``context_noise`` added where it is set."""
        if self.context_noise <= 0:
            return steps
        return steps + self.context_noise * torch.randn(steps.shape, generator=generator,
                                                        device=steps.device, dtype=steps.dtype)

    def _smeared(self, steps: Tensor) -> Tensor:
        """Steps ``(B, T, D)`` blended, per sequence, by a share drawn from ``[0,
        context_smear]``, with each frame's moving average over ``SMEAR_BANDS`` neighbouring
        mel bands (edge bands repeated), shifted so that its maximum is the frame's own."""
        if self.context_smear <= 0 or steps.shape[1] == 0:
            return steps
        b, t, d = steps.shape
        frames = steps.reshape(-1, 1, self.n_mel)
        pad = SMEAR_BANDS // 2
        blurred = F.avg_pool1d(F.pad(frames, (pad, pad), mode="replicate"), SMEAR_BANDS, stride=1)
        blurred = blurred + (frames.amax(-1, keepdim=True) - blurred.amax(-1, keepdim=True))
        share = torch.rand(b, 1, 1, device=steps.device, dtype=steps.dtype) * self.context_smear
        return torch.lerp(steps, blurred.view(b, t, d), share)

    def _blanked(self, steps: Tensor) -> Tensor:
        """Steps ``(B, T, D)`` with the whole past of a ``context_blank`` share of the sequences
        (drawn per sequence) replaced by standard normal noise."""
        if self.context_blank <= 0 or steps.shape[1] == 0:
            return steps
        rows = torch.rand(steps.shape[0], 1, 1, device=steps.device) < self.context_blank
        return torch.where(rows, torch.randn_like(steps), steps)

    def _flow_ready(self) -> bool:
        """Whether every ActNorm of the step flow has been initialised (a fresh model's first
        batch initialises them by a forward pass, which must come before any sampling)."""
        return all(bool(m.initialized) for m in self.flow.modules()
                   if isinstance(getattr(m, "initialized", None), Tensor))

    @torch.no_grad()
    def _self_fed(self, steps: Tensor, style: Tensor) -> Tensor:
        """The past the GRU reads under ``self_feed``: steps ``(B, T, D)`` where a random
        ``self_feed`` share of ``steps[:, :-1]`` is replaced by a one-step sample of the same
        step, drawn (temperature 1, lifted to the log floor as in sampling) from the context
        of the true steps before it."""
        b, t, d = steps.shape
        ctx = self.teacher_forced_context(steps[:, :-1], style).reshape(b * (t - 1), -1)
        drawn = self.draw_step(ctx, 1.0)[0].view(b, t - 1, d).to(steps.dtype)
        swap = torch.rand(b, t - 1, 1, device=steps.device) < self.self_feed
        return torch.where(swap, drawn, steps[:, :-1])

    def _split(self, context: Tensor) -> tuple[Tensor, Tensor | None]:
        """A step's context -> (the flow's context, the step before or ``None``)."""
        if self.carry is None:
            return context, None
        return context[..., :-self.features], context[..., -self.features:]

    def _carried(self, ctx: Tensor, prev: Tensor) -> Tensor:
        """``a(c) * last``: the gain from the context times the last frame of the step before,
        repeated over the step's frames ``(N, block * n_mel)``."""
        last = prev.reshape(-1, self.block, self.n_mel)[:, -1:].expand(-1, self.block, -1)
        return self.carry(ctx) * last.reshape(prev.shape).to(ctx.dtype)

    def step_latent(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised steps ``(N, D)`` and their contexts -> the flow's latent ``(N, D)``, the
        log-determinant ``(N,)`` and the context of the latent's distribution."""
        ctx, prev = self._split(context)
        if prev is not None:
            x = x - self._carried(ctx, prev).to(x.dtype)
        z, logdet = self.flow.bijection(x, ctx)
        return z, logdet, ctx

    def step_log_prob(self, x: Tensor, context: Tensor) -> Tensor:
        """``log p(x_t | c_t)`` ``(N,)`` of normalised steps ``(N, block * n_mel)`` given their
        contexts ``(N, context)``."""
        z, logdet, ctx = self.step_latent(x, context)
        base = (self.flow.base.log_prob(z) if self.mixture is None
                else self.mixture.log_prob(z, ctx))
        return base + logdet

    def sample_step(self, context: Tensor, temperature: float | Tensor = DEFAULT_TEMPERATURE,
                    generator: torch.Generator | None = None, onset: Tensor | None = None
                    ) -> tuple[Tensor, Tensor]:
        """A normalised step ``(N, block * n_mel)`` per context row ``(N, context)`` and its
        untempered log-density ``(N,)``; for a gated prior, of the label ``onset`` ``(N,)`` drawn
        for each row (its latent from that label's mixture; ``None``: no onsets).
        ``temperature``: one, or one per row ``(N,)``."""
        ctx, prev = self._split(context)
        if isinstance(temperature, Tensor):  # one per row: scales the noise of its row
            temperature = temperature.to(ctx.device, ctx.dtype).view(
                -1, *[1] * (1 if self.mixture is None else 2))
        if self.mixture is None:
            x, lp = self.flow.sample_and_log_prob(context=ctx, temperature=temperature,
                                                  generator=generator)
        elif self.onset_mixture is None or onset is None:
            z = self.mixture.sample(ctx, temperature, generator)
            x, logdet_inv = self.flow.bijection.inverse(z, ctx)
            lp = self.mixture.log_prob(z, ctx) - logdet_inv
        else:
            hit = onset.bool()[:, None]
            z = torch.where(hit, self.onset_mixture.sample(ctx, temperature, generator),
                            self.mixture.sample(ctx, temperature, generator))
            x, logdet_inv = self.flow.bijection.inverse(z, ctx)
            rest, on = self._label_log_probs(z, ctx)
            lp = torch.where(hit[:, 0], on, rest) - logdet_inv
        if prev is not None:  # a shift: the density is unchanged
            x = x + self._carried(ctx, prev).to(x.dtype)
        return x, lp

    def draw_step(self, context: Tensor, temperature: float | Tensor = DEFAULT_TEMPERATURE,
                  generator: torch.Generator | None = None, onset: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
        """:meth:`sample_step` as the recurrence reads it: a log-mel is never below log(CLAMP)
        (the front end clamps it there), so a sampled value that falls below is lifted to it,
        and a stray value cannot drive the following steps off the data. The log-density is
        the raw sample's."""
        x, lp = (self.sample_step(context, temperature, generator) if onset is None
                 else self.sample_step(context, temperature, generator, onset=onset))
        return torch.maximum(x, self._floor_step().to(x.dtype)), lp

    def log_prob(self, mel: Tensor, style: Tensor | str | int | None = None,
                 key: Tensor | str | int | None = None, clock: Tensor | None = None) -> Tensor:
        """Exact ``log p(mel)`` in nats ``(B,)`` of log-mels ``(B, n_mel, F)`` (``F`` a multiple
        of ``block``); ``style`` labels ``(B,)``, a name, an index or ``None`` (-1: no style);
        for a keyed prior ``key`` likewise (``None``: no key, -1); for a clocked prior the
        clock at each frame ``(B, F, 2)`` (phase, tempo; ``None`` or NaN: no clock)."""
        mel = self.check_mel(mel)
        if not isinstance(style, Tensor):
            style = (self.style_index(style, mel.shape[0]) if style is not None
                     else torch.full((mel.shape[0],), -1, dtype=torch.long))
        if self.keys and key is None:
            key = torch.full((mel.shape[0],), -1, dtype=torch.long)
        labels = self.labels(style.to(self._device()), key)
        lp = self._log_prob_normalised(self.normalise(mel), labels,
                                       clock=self.step_clock(clock, mel.shape[-1]))
        return lp - mel.shape[-1] * torch.log(self.std).sum()

    def forward(self, batch: dict[str, Tensor] | Tensor) -> dict[str, Tensor]:
        """The trainer's loss: ``batch`` is ``{"mel": (B, n_mel, F), "style": (B,)}`` or a mel
        tensor (with ``"key"`` for a keyed prior and ``"beat"``, the clock per frame ``(B, F,
        2)``, for a clocked one). Returns ``loss``, the negative log-likelihood per mel value in
        nats (with the training noise added to the normalised mel in training mode; for a gated
        prior of the mel and its onset labels), and ``nll_per_dim``."""
        if isinstance(batch, dict):
            mel, style, key = batch["mel"], batch.get("style"), batch.get("key")
            clock = batch.get("beat")
        else:
            mel, style, key, clock = batch, None, None, None
        mel = self.check_mel(mel)
        if style is None:
            style = torch.full((mel.shape[0],), -1, dtype=torch.long)
        if self.keys:  # unlabelled audio reads "no key"
            style = self.labels(style, key if key is not None
                                else torch.full((mel.shape[0],), -1, dtype=torch.long))
        x = self.normalise(mel)
        if self.training and self.noise > 0:
            x = x + self.noise * torch.randn_like(x)
        onset = self.onset_labels(mel) if self.gate is not None else None
        lp = (self._log_prob_normalised(x, style, onset, self.step_clock(clock, mel.shape[-1]))
              - mel.shape[-1] * torch.log(self.std).sum())
        loss = -lp.mean() / (mel.shape[1] * mel.shape[2])
        return {"loss": loss, "nll_per_dim": loss.detach()}

    # ------------------------------------------------------------------------------ sampling

    def onset_options(self, onset_temperature: float | None = None,
                      onset_choices: int | str | None = None
                      ) -> tuple[float | None, int | str]:
        """The onset temperature and number of choices a sample draws with: for a gated prior
        those given, ``DEFAULT_ONSET_TEMPERATURE`` and ``DEFAULT_ONSET_CHOICES`` where ``None``;
        for a prior without a gate ``(None, 1)`` (the plain draw). Checked as
        :meth:`check_onset_options` checks them."""
        self.check_onset_options(onset_temperature, onset_choices)
        if self.gate is None:
            return None, 1
        return (DEFAULT_ONSET_TEMPERATURE if onset_temperature is None
                else float(onset_temperature),
                DEFAULT_ONSET_CHOICES if onset_choices is None
                else onset_choices if onset_choices == "auto" else int(onset_choices))

    def check_onset_options(self, onset_temperature: float | None = None,
                            onset_choices: int | str | None = None) -> None:
        """A one-line ``FlowsuiteError`` for an ``onset_temperature`` or ``onset_choices``
        other than 1 (``None``: not given) given to a prior without an onset gate, a negative
        temperature, or a number of choices outside 1 to ``MAX_ONSET_CHOICES`` (or
        ``"auto"``)."""
        if onset_temperature is None and onset_choices in (None, 1):
            return
        if self.gate is None:
            raise FlowsuiteError("this prior has no onset gate; leave out the onset temperature "
                                 "and choices")
        if onset_temperature is not None and not (onset_temperature >= 0
                                                  and math.isfinite(onset_temperature)):
            raise FlowsuiteError(f"the onset temperature must be a non-negative number, not "
                                 f"{onset_temperature:g}")
        if onset_choices not in (None, "auto") and not (
                isinstance(onset_choices, int) and 1 <= onset_choices <= MAX_ONSET_CHOICES):
            raise FlowsuiteError(f"onset choices must be a whole number from 1 to "
                                 f"{MAX_ONSET_CHOICES} or auto, not {onset_choices}")

    def check_clock_options(self, tempo: float | None = None,
                            gate_temperature: float | None = None) -> None:
        """A one-line ``FlowsuiteError`` for a ``tempo`` given to a prior without beats or outside
        ``TEMPO_RANGE``, and for a ``gate_temperature`` given to a prior without an onset gate
        or negative (``None``: not given)."""
        if gate_temperature is not None:
            if self.gate is None:
                raise FlowsuiteError(f"this prior has no onset gate; leave out the gate "
                                     f"temperature (got {gate_temperature:g})")
            if not (gate_temperature >= 0 and math.isfinite(gate_temperature)):
                raise FlowsuiteError(f"the gate temperature must be a non-negative number, not "
                                     f"{gate_temperature:g}")
        if tempo is None:
            return
        if not self.beats:
            raise FlowsuiteError(f"this prior was trained without beats; leave out the tempo "
                                 f"(got {tempo:g})")
        lo, hi = TEMPO_RANGE
        if not (math.isfinite(tempo) and lo <= tempo <= hi):
            raise FlowsuiteError(f"tempo {tempo:g} is not a number of beats per minute from "
                                 f"{lo:g} to {hi:g}")

    def initial_state(self, batch: int = 1, style: str | int | None = None,
                      prime: Tensor | None = None,
                      generator: torch.Generator | None = None,
                      key: str | int | None = None, tempo: float | None = None,
                      gate_temperature: float | None = None,
                      onset_temperature: float | None = None,
                      onset_choices: int | str | None = None) -> PriorState:
        """The state before the first sampled step: the GRU has read the start vector and, with
        ``prime`` (log-mel ``(n_mel, F)`` or ``(batch, n_mel, F)``), the prime's last whole steps,
        so sampling continues it. ``key``: see :meth:`labels`. A clocked prior's clock starts on
        a beat at ``tempo`` beats per minute (``None``: the style's, see :meth:`tempo_of`), or
        after a prime where its beat, tracked (:func:`track_clock`), puts it, at the tracked
        tempo unless ``tempo`` is given; ``tempo`` given to a prior without beats is an
        error, and so is ``gate_temperature`` (``None``: ``DEFAULT_GATE_TEMPERATURE`` for a
        clocked prior, 1 for a gate without a clock) given to one without an onset gate.
        ``onset_temperature`` and ``onset_choices`` (a gated prior; see the note above
        ``KEY_MEMORY_SECONDS``): the latent temperature of the onset steps and how many draws
        each is chosen from by the pitch classes sounded before it (in the prime too);
        ``None``: ``DEFAULT_ONSET_TEMPERATURE`` and ``DEFAULT_ONSET_CHOICES``
        (:meth:`onset_options`). ``onset_temperature=temperature, onset_choices=1`` draws the
        onset steps as the others are drawn."""
        dev = self._device()
        self.check_clock_options(tempo, gate_temperature)
        onset_temperature, onset_choices = self.onset_options(onset_temperature, onset_choices)
        pitch = torch.zeros(batch, 12, device=dev) if onset_choices != 1 else None
        styles = self.style_index(style, batch, generator)
        labels = self.labels(styles, key, generator).to(dev)
        clock = None
        if self.beats:
            bpm = (self.tempo_of(styles) if tempo is None
                   else torch.full((batch,), float(tempo)))
            clock = torch.stack([torch.zeros(batch), bpm], -1).to(dev)
        inputs = self.start.expand(batch, 1, self.features)
        last = None
        rises = (torch.zeros(batch, GATE_HISTORY, device=dev) if self.gate is not None
                 else None)
        if prime is not None:
            prime = self.check_mel(prime.to(dev, torch.float32), whole_steps=False)
            if prime.shape[0] not in (1, batch):
                raise ValueError(f"a prime of batch {prime.shape[0]} for {batch} samples")
            usable = prime.shape[-1] // self.block * self.block
            steps = self.to_steps(self.normalise(prime[..., prime.shape[-1] - usable:]))
            steps = steps.expand(batch, -1, -1)
            last = steps[:, -1]
            inputs = torch.cat([inputs, self._as_read(steps, generator)], dim=1)
            if rises is not None:
                flags = self.step_rises(steps).flip(-1)[:, :GATE_HISTORY]
                rises[:, :flags.shape[1]] = flags
            if pitch is not None:
                pitch = self._pitch_memory().advance(None, prime).expand(batch, -1).clone()
            if clock is not None and (tracked := track_clock(prime[0], self.frames_per_second)):
                clock[:, 0] = tracked[0]
                if tempo is None:
                    clock[:, 1] = tracked[1]
        _, hidden = self.rnn(inputs)
        return PriorState(hidden, labels, last, clock, rises, None,
                          float(gate_temperature) if gate_temperature is not None
                          else DEFAULT_GATE_TEMPERATURE if self.beats else 1.0,
                          onset_temperature, onset_choices, pitch,
                          self.temperature_of(styles.to(dev)))

    def step(self, state: PriorState, temperature: float | None = None,
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, PriorState]:
        """One step: ``(x_t (B, block * n_mel) normalised, log p(x_t | past) (B,), next state)``.
        The log-density is the untempered model's, of the normalised step (for a gated prior,
        given the onset label it drew). ``temperature``: ``None`` draws at the state's (each
        sample's style's, :meth:`temperature_of`)."""
        if temperature is None:
            temperature = state.temperature
        ctx = self._context(state.hidden[-1], state.style, state.last)
        onset = rises = None
        if self.gate is not None:  # an onset or not, then the step given it
            logit = self.gate_logits(ctx, state.clock, state.rises).float()
            if state.gate_temperature > 0:
                onset = torch.bernoulli(torch.sigmoid(logit / state.gate_temperature),
                                        generator=generator)
            else:
                onset = (logit > 0).float()
        hot = state.onset_temperature
        alike = hot is None or (not isinstance(temperature, Tensor) and hot == temperature)
        if onset is not None and (state.onset_choices != 1 or not alike):
            x, lp = self._draw_onsets(ctx, temperature, generator, onset, state)
        else:
            x, lp = self.draw_step(ctx, temperature, generator, onset)
        pitch = state.pitch
        if pitch is not None:
            pitch = self._pitch_memory().advance(pitch, self._frames(x))
        _, hidden = self.rnn(self._as_read(x, generator)[:, None], state.hidden)
        clock = None if state.clock is None else self.advance(state.clock)
        if state.rises is not None:
            rose = self.step_rises(x[:, None], state.last)
            rises = torch.cat([rose.to(state.rises), state.rises[:, :-1]], dim=1)
        return x, lp, PriorState(hidden, state.style, x, clock, rises, onset,
                                 state.gate_temperature, state.onset_temperature,
                                 state.onset_choices, pitch, state.temperature)

    def _pitch_memory(self) -> PitchMemory:
        """The :class:`PitchMemory` of this prior's mel front end (built once, not saved)."""
        if getattr(self, "_memory", None) is None:
            self._memory = PitchMemory(n_mel=self.n_mel, sample_rate=self.sample_rate,
                                       hop=self.hop)
        return self._memory

    def _frames(self, x: Tensor) -> Tensor:
        """Normalised steps ``(N, block * n_mel)`` -> their log-mel frames ``(N, n_mel, block)``."""
        return self.denormalise(x.float().view(-1, self.block, self.n_mel).transpose(1, 2))

    def auto_choices(self, rises: Tensor) -> Tensor:
        """How many draws an onset step is chosen from under ``onset_choices="auto"``, given the
        rises of the last ``GATE_HISTORY`` steps ``(N, GATE_HISTORY)``: ``exp(AUTO_CHOICE_PULL
        / r)`` rounded, from 1 to ``AUTO_MAX_CHOICES``, where ``r`` is their rate per second
        (at least one per history, so that a quiet past asks the most) ``(N,)`` long."""
        seconds = rises.shape[-1] * self.block / self.frames_per_second
        rate = rises.float().sum(-1).clamp_min(1.0) / seconds
        return torch.exp(AUTO_CHOICE_PULL / rate).round().clamp(1, AUTO_MAX_CHOICES).long()

    def _draw_onsets(self, ctx: Tensor, temperature: float | Tensor,
                     generator: torch.Generator | None,
                     onset: Tensor, state: PriorState) -> tuple[Tensor, Tensor]:
        """:meth:`draw_step` with the onset steps (rows where ``onset`` is 1) drawn at the
        state's onset temperature, each ``onset_choices`` times (``"auto"``:
        :meth:`auto_choices` for each row; in one batch), keeping the draw
        whose rise over the step before keeps best to the pitch memory
        (:meth:`PitchMemory.fit`). Every row is first drawn as if it had no onset (the onset
        rows' draw is then replaced: it keeps the numbers of one onset draw as they were)."""
        x, lp = self.draw_step(ctx, temperature, generator, torch.zeros_like(onset))
        hit = onset.bool()
        if not bool(hit.any()):
            return x, lp
        hot = state.onset_temperature if state.onset_temperature is not None else temperature
        n = int(hit.sum())
        each = (self.auto_choices(state.rises[hit]) if state.onset_choices == "auto"
                else torch.full((n,), int(state.onset_choices), device=ctx.device))
        k = int(each.max())
        if isinstance(hot, Tensor):
            hot = hot[hit].repeat(k)
        draws, lps = self.draw_step(ctx[hit].repeat(k, 1), hot, generator, onset[hit].repeat(k))
        draws, lps = draws.view(k, n, -1), lps.view(k, n)
        pick = torch.zeros(n, dtype=torch.long, device=draws.device)
        if k > 1:
            memory = self._pitch_memory()
            before = (memory.power(self._frames(state.last[hit])).mean(-2)
                      if state.last is not None else 0.0)
            rises = memory.power(self._frames(draws.flatten(0, 1))).mean(-2).view(k, n, 12)
            fit = memory.fit(rises - before, state.pitch[hit])  # (k, n), in [0, 1]
            fit = fit.masked_fill(torch.arange(k, device=fit.device)[:, None] >= each, -1.0)
            pick = fit.argmax(0)
        rows = torch.arange(n, device=draws.device)
        x, lp = x.clone(), lp.clone()
        x[hit], lp[hit] = draws[pick, rows].to(x.dtype), lps[pick, rows].to(lp.dtype)
        return x, lp

    @torch.no_grad()
    def stream(self, frames: int, state: PriorState, temperature: float | None = None,
               generator: torch.Generator | None = None, chunk_steps: int = 64
               ) -> Iterator[tuple[Tensor, Tensor, PriorState]]:
        """Samples ``frames`` frames from ``state`` and yields ``(mel chunk (B, n_mel, f),
        log-density of the chunk's steps (B,), state after it)`` every ``chunk_steps`` steps.
        Memory is bounded by the chunk, whatever ``frames``. ``temperature``: ``None`` draws
        each sample at its style's (:meth:`temperature_of`)."""
        if frames < 1:
            raise ValueError(f"frames must be positive, got {frames}")
        if temperature is not None and not (temperature >= 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a non-negative number, got {temperature}")
        total = -(-frames // self.block)
        done = 0
        while done < total:
            n = min(chunk_steps, total - done)
            xs, lps = [], []
            for _ in range(n):
                x, lp, state = self.step(state, temperature, generator)
                xs.append(x)
                lps.append(lp)
            mel = self.denormalise(self.from_steps(torch.stack(xs, dim=1)))
            lp = torch.stack(lps, 1).sum(1) - mel.shape[-1] * torch.log(self.std).sum()
            keep = min(mel.shape[-1], frames - done * self.block)
            done += n
            yield mel[..., :keep], lp, state

    @torch.no_grad()
    def sample(self, frames: int, style: str | int | None = None,
               temperature: float | None = None, seed: int | None = None,
               generator: torch.Generator | None = None, prime: Tensor | None = None,
               batch: int = 1, key: str | int | None = None, tempo: float | None = None,
               gate_temperature: float | None = None, onset_temperature: float | None = None,
               onset_choices: int | str | None = None) -> Tensor:
        """Log-mels ``(batch, n_mel, frames)``. ``style``: a name or index (``None``: a random
        style per sample, or none for a model without styles); ``temperature`` scales the
        latent (``None``: the style's, :meth:`temperature_of`: ``DEFAULT_TEMPERATURE`` unless
        the model names one for it); ``seed`` (or ``generator``) makes it reproducible;
        ``prime`` (log-mel ``(n_mel, F)``) is continued; ``key`` (a keyed prior: a name or
        index, ``None`` at random) the key; ``tempo`` (a clocked prior: beats per minute,
        ``None``: the style's) the clock's; ``gate_temperature`` (a gated prior) that of its
        onset draws, ``onset_temperature`` and ``onset_choices`` how its onset steps are drawn
        (``None``: the gated prior's defaults; see :meth:`initial_state`). Memory does not grow
        with ``frames`` beyond the output."""
        if generator is None:
            generator = torch.Generator(device=self._device())
            generator.manual_seed(seed if seed is not None else int(torch.randint(2 ** 62, ())))
        state = self.initial_state(batch, style, prime, generator, key, tempo, gate_temperature,
                                   onset_temperature, onset_choices)
        return torch.cat([m for m, _, _ in self.stream(frames, state, temperature, generator)],
                         dim=-1)

