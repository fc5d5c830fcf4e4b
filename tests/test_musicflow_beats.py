"""The onset gate and the beat clock of the mel prior: the clock of a corpus, its features, a
gated prior that starts as the plain one, exact marginal densities, seeded clocked sampling,
and a gate that learns where the beat falls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowsuite.core.errors import FlowsuiteError
from flowsuite.musicflow.metrics import mel_onset_frames
from flowsuite.musicflow.prior import (
    BEAT_FEATURES,
    DEFAULT_GATE_TEMPERATURE,
    GATE_HISTORY,
    MelPrior,
    clock_features,
    track_clock,
)
from flowsuite.musicflow.prior_train import MelCorpus, MelCrops


def _moved(model: MelPrior, scale: float = 0.1) -> MelPrior:
    """Every weight off its initialisation (zero-initialised parts would pass any formula)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


def _clicks(frames: int, period: int, offset: int, n_mel: int = 8) -> torch.Tensor:
    """A log-mel at the floor with a one-frame broadband click every ``period`` frames from
    ``offset``."""
    mel = torch.full((n_mel, frames), -6.0)
    mel[:, offset::period] = 0.0
    return mel


def test_mel_onset_frames_finds_each_attack_once():
    mel = _clicks(64, 16, 5)
    hits = mel_onset_frames(mel)
    assert hits.shape == (64,) and hits.nonzero().flatten().tolist() == [5, 21, 37, 53]
    batch = torch.stack([mel, torch.full((8, 64), -6.0)])  # and a silent one: no onsets
    assert torch.equal(mel_onset_frames(batch)[0], hits) and not mel_onset_frames(batch)[1].any()


def test_corpus_clock_gives_the_phase_and_tempo_of_the_beats():
    fps = 22050 / 256
    mels = [torch.zeros(8, 200, dtype=torch.float16), torch.zeros(8, 100, dtype=torch.float16)]
    corpus = MelCorpus(mels, [0, 1], ["a", "b"], beats=[np.array([10.0, 30.0, 50.0, 90.0]),
                                                           np.zeros(0)])
    clock = corpus.clock(0, 0, 100).numpy()
    assert clock.shape == (100, 2)
    # before the first beat the first interval is extended back; after the last, the last on
    assert clock[10].tolist() == [0.0, pytest.approx(60 * fps / 20)]
    assert clock[20, 0] == pytest.approx(0.5) and clock[0, 0] == pytest.approx(0.5)
    assert clock[70, 0] == pytest.approx(0.5) and clock[70, 1] == pytest.approx(60 * fps / 40)
    assert clock[95, 0] == pytest.approx(5 / 40)
    assert np.isnan(corpus.clock(1, 0, 10).numpy()).all()  # a file without beats: no clock
    tempi = corpus.tempi()
    assert set(tempi) == {"all", "a"}
    assert tempi["a"] == pytest.approx(60 * fps / 20, rel=1e-3)
    # crops carry the clock of where they were cut
    crops = MelCrops(corpus, 16, random=False, limit=4)
    item = crops[0]
    assert item["beat"].shape == (16, 2)
    assert MelCorpus(mels, [0, 1], ["a", "b"]).tempi() == {}


def test_clock_features_are_periodic_and_zero_without_a_clock():
    clock = torch.tensor([[0.0, 100.0], [1.0 - 1e-7, 100.0], [0.25, 200.0],
                          [float("nan"), float("nan")]])
    f = clock_features(clock)
    assert f.shape == (4, BEAT_FEATURES)
    assert torch.allclose(f[0], f[1], atol=1e-5)
    assert f[0, 1] == pytest.approx(1.0) and f[2, 0] == pytest.approx(1.0)  # sin, cos of phase
    assert f[0, -1] == 0.0 and f[2, -1] == pytest.approx(1.0)  # log2 of tempo / 100
    assert not f[3].any()


def test_a_gated_prior_starts_as_the_plain_one_and_its_density_is_exact(tiny_prior):
    plain = _moved(tiny_prior())
    gated = MelPrior.from_trained(plain, onset_gate=True).eval()
    mel = torch.randn(2, 8, 12) - 3
    with torch.no_grad():
        base = plain.log_prob(mel, "a")
        # the gate starts undecided and the flow ignores the label: the mel's density is the
        # plain prior's, and the joint with any labels is ln 2 per step below it
        assert torch.allclose(gated.log_prob(mel, "a"), base, atol=1e-4)
        _moved(gated)
        marginal = gated.log_prob(mel, "a")
        x = gated.normalise(mel)
        style = gated.style_index("a", 2)
        steps = x.shape[-1] // gated.block
        log_std = mel.shape[-1] * torch.log(gated.std).sum()
        joints = []
        for bits in range(2 ** steps):  # every labelling of the six steps, summed: the marginal
            onset = torch.tensor([(bits >> t) & 1 for t in range(steps)], dtype=torch.float32)
            joints.append(gated._log_prob_normalised(x, style, onset.expand(2, -1)) - log_std)
        joints = torch.stack(joints)
        assert (joints <= marginal + 1e-4).all()
        assert torch.allclose(torch.logsumexp(joints, 0), marginal, atol=1e-3)


def test_the_gate_reads_the_rises_of_the_steps_before_as_sampling_made_them(tiny_prior):
    gated = _moved(MelPrior.from_trained(tiny_prior(), onset_gate=True, beats=True))
    mel = _clicks(16, 8, 2)[None]  # clicks in steps 1 and 5: rises there
    steps = gated.to_steps(gated.normalise(mel))
    rises = gated.step_rises(steps)
    assert rises.tolist() == [[0, 1, 0, 0, 0, 1, 0, 0]]
    history = gated.rise_history(rises)
    assert history.shape == (1, 8, GATE_HISTORY)
    assert history[0, 2, :2].tolist() == [1, 0] and history[0, 6, :5].tolist() == [1, 0, 0, 0, 1]
    assert not history[0, :2].any()  # nothing before the first rise
    # sampling keeps the same history of its own steps, chunk after chunk
    g = torch.Generator().manual_seed(1)
    state = gated.initial_state(2, "a", generator=g)
    parts = list(gated.stream(40, state, generator=g, chunk_steps=3))
    drawn = torch.cat([m for m, _, _ in parts], -1)
    flags = gated.step_rises(gated.to_steps(gated.normalise(drawn)))
    latest = parts[-1][2].rises
    assert torch.equal(latest[:, :19], flags.flip(-1)[:, :19])  # (the first has no step before)
    # a prime's steps fill the history before the first sampled step
    primed = gated.initial_state(1, "a", prime=mel[0])
    assert primed.rises[0, :8].tolist() == [0, 0, 1, 0, 0, 0, 1, 0]


def test_training_reads_the_onsets_of_the_data_and_the_gate_reads_the_clock(tiny_prior):
    gated = MelPrior.from_trained(tiny_prior(), onset_gate=True, beats=True, tempi={"a": 90.0})
    assert gated.beats and gated.config["beats"] and gated.config["tempi"] == {"a": 90.0}
    mel = torch.stack([_clicks(16, 8, 2), _clicks(16, 8, 4)])
    assert gated.onset_labels(mel).tolist() == [[0, 1, 0, 0, 0, 1, 0, 0], [0, 0, 1, 0] * 2]
    clock = torch.stack([torch.linspace(0, 1, 16), torch.full((16,), 90.0)], -1)
    clock = clock.expand(2, -1, -1)
    _moved(gated).train()  # (the gate's last layer starts at zero: no gradient behind it)
    out = gated({"mel": mel, "style": torch.tensor([0, 1]), "beat": clock})
    out["loss"].backward()
    first = next(gated.gate.parameters())
    clock_columns = slice(3, 3 + BEAT_FEATURES)  # after the style embedding, before the rises
    assert first.grad is not None and first.grad[:, clock_columns].abs().sum() > 0
    # each label's mixture is fitted to its own steps
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in gated.onset_mixture.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="clock"):
        gated({"mel": mel, "style": torch.tensor([0, 1]), "beat": clock[:, :8]})
    with pytest.raises(ValueError, match="onset_gate"):
        tiny_prior(beats=True)
    with pytest.raises(ValueError, match="excludes"):
        tiny_prior(onset_gate=True, rollout=1)
    with pytest.raises(ValueError, match="needs a mixture latent"):
        MelPrior(n_mel=8, block=2, hidden=12, n_flows=2, flow_hidden=[16], onset_gate=True)


def test_clocked_sampling_is_seeded_and_checks_the_tempo(tiny_prior):
    gated = _moved(MelPrior.from_trained(tiny_prior(), onset_gate=True, beats=True,
                                         tempi={"a": 90.0, "all": 100.0}))
    with torch.no_grad():  # a gate that the clock moves, and the two mixtures apart
        for p in gated.gate.parameters():
            p.normal_(0.0, 0.5)
        for p in gated.onset_mixture.parameters():
            p.normal_()
    a = gated.sample(20, style="a", seed=3)
    assert a.shape == (1, 8, 20) and torch.isfinite(a).all()
    assert torch.equal(a, gated.sample(20, style="a", seed=3))
    assert torch.equal(a, gated.sample(20, style="a", seed=3, tempo=90))  # the style's tempo
    assert any(not torch.equal(gated.sample(20, style="a", seed=s, gate_temperature=1.0),
                               gated.sample(20, style="a", seed=s, tempo=150,
                                            gate_temperature=1.0)) for s in range(8))
    state = gated.initial_state(2, "b", tempo=None)
    assert state.clock.tolist() == [[0.0, 100.0], [0.0, 100.0]]  # no tempo for b: "all"'s
    fps = gated.frames_per_second
    assert gated.advance(state.clock, 3)[0, 0].item() == pytest.approx(
        math.fmod(3 * 2 / fps * 100 / 60, 1.0), abs=1e-6)
    for bad in (0.0, 10.0, 1000.0, float("nan")):
        with pytest.raises(FlowsuiteError, match="beats per minute"):
            gated.sample(4, tempo=bad)
    with pytest.raises(FlowsuiteError, match="without beats"):
        tiny_prior().sample(4, tempo=90)
    # the gate's temperature: 0 draws the likelier label, a lower one follows the odds more
    g = torch.Generator().manual_seed(0)
    firm = gated.initial_state(64, "a", generator=g, gate_temperature=0.0)
    assert firm.gate_temperature == 0.0
    ctx = gated._context(firm.hidden[-1], firm.style, firm.last)
    likelier = (gated.gate_logits(ctx, firm.clock, firm.rises) > 0).float()
    assert torch.equal(gated.step(firm, 0.7, g)[2].onset, likelier)
    assert gated.initial_state(1, "a").gate_temperature == DEFAULT_GATE_TEMPERATURE
    clockless = MelPrior.from_trained(tiny_prior(), onset_gate=True)  # draws at its own odds
    assert clockless.initial_state(1, "a").gate_temperature == 1.0
    for bad in (-1.0, float("nan")):
        with pytest.raises(FlowsuiteError, match="gate temperature"):
            gated.sample(4, gate_temperature=bad)
    with pytest.raises(FlowsuiteError, match="no onset gate"):
        tiny_prior().sample(4, gate_temperature=0.5)


def _click_track(bpm: float, first: int, frames: int) -> tuple[torch.Tensor, float]:
    """A log-mel with a click on every beat at ``bpm`` from frame ``first``, and the phase of
    the beat just after its last frame."""
    fps = 22050 / 256
    mel = torch.full((80, frames), -6.0)
    period = 60 * fps / bpm
    at = np.arange(first, frames, period)
    mel[:, np.round(at).astype(int)] = 0.0
    return mel, float((frames - at[-1]) / period % 1.0)


@pytest.mark.parametrize("bpm", [90.0, 120.0])
def test_track_clock_finds_the_tempo_and_phase_of_a_click_track(bpm):
    mel, phase = _click_track(bpm, 7, 520)
    found = track_clock(mel, 22050 / 256)
    assert found is not None
    assert found[1] == pytest.approx(bpm, abs=2.0)
    assert abs((found[0] - phase + 0.5) % 1.0 - 0.5) < 0.06
    assert track_clock(torch.full((80, 200), -6.0), 22050 / 256) is None  # no beat: no clock


def test_a_clocked_continuation_starts_its_clock_on_the_primes_beat(tiny_prior):
    gated = MelPrior.from_trained(tiny_prior(), onset_gate=True, beats=True, tempi={"a": 70.0})
    mel, phase = _click_track(120.0, 7, 520)
    prime = mel[:8]  # the tiny prior's 8 bands
    state = gated.initial_state(1, "a", prime=prime)
    assert state.clock[0, 1].item() == pytest.approx(120.0, abs=2.0)
    assert abs((state.clock[0, 0].item() - phase + 0.5) % 1.0 - 0.5) < 0.06
    state = gated.initial_state(1, "a", prime=prime, tempo=100.0)  # a tempo given wins
    assert state.clock[0, 1].item() == 100.0
    assert gated.initial_state(1, "a").clock[0].tolist() == [0.0, 70.0]


def _clicked_batch(period: int, bpm: float, count: int = 8, frames: int = 48
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clicks on every beat of a clock at a random phase: mels ``(count, 8, frames)`` and their
    clocks ``(count, frames, 2)``."""
    offsets = torch.randint(period, (count,))
    mel = torch.stack([_clicks(frames, period, int(o)) for o in offsets])
    mel = mel + 0.05 * torch.randn_like(mel)
    at = torch.arange(frames)[None] - offsets[:, None]
    clock = torch.stack([torch.remainder(at / period, 1.0), torch.full(at.shape, bpm)], -1)
    return mel, clock


def test_the_gate_learns_where_the_beat_falls():
    """Trained on clicks that fall on the beat, the clocked gate opens on the beat (with the
    true clock it gives the steps with a click a high probability, with the clock half a beat
    off a low one), and the prior's samples at that tempo click on their clock's beat."""
    torch.manual_seed(0)
    model = MelPrior(n_mel=8, block=2, hidden=16, n_flows=2, flow_hidden=[16], style_dim=3,
                     styles=["a"], mixture=2, onset_gate=True, beats=True)
    period = 16  # frames per beat
    bpm = 60 * model.frames_per_second / period
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    style = torch.zeros(8, dtype=torch.long)
    for _ in range(150):
        mel, clock = _clicked_batch(period, bpm)
        loss = model({"mel": mel, "style": style, "beat": clock})
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
    model.eval()
    mel, clock = _clicked_batch(period, bpm)
    off = clock.clone()
    off[..., 0] = torch.remainder(off[..., 0] + 0.5, 1.0)
    with torch.no_grad():
        labels = model.onset_labels(mel).bool()
        ctx = model.teacher_forced_context(model.to_steps(model.normalise(mel)), style)
        p_true = torch.sigmoid(model.gate_logits(ctx, model.step_clock(clock, 48)))
        p_off = torch.sigmoid(model.gate_logits(ctx, model.step_clock(off, 48)))
    assert p_true[labels].mean() > 0.45 > 0.05 > p_true[~labels].mean()
    assert p_off[labels].mean() < 0.1
    sampled = model.sample(96, style="a", seed=0, batch=6, tempo=bpm)
    frames = mel_onset_frames(sampled).nonzero()[:, 1].float()
    phase = torch.remainder(frames / period, 1.0)  # the clock starts on a beat
    assert len(frames) >= 8
    assert ((phase < 0.2) | (phase > 0.9)).float().mean() > 0.6  # 0.3 by chance
