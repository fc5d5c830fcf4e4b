"""A gated prior's onset options: hotter onset steps, chosen among several draws by a memory of
the pitch classes heard (`onset_temperature`, `onset_choices`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowsuite.core.errors import FlowsuiteError
from flowsuite.musicflow.mel import MelSpectrogram
from flowsuite.musicflow.prior import (
    AUTO_CHOICE_PULL,
    AUTO_MAX_CHOICES,
    DEFAULT_ONSET_CHOICES,
    DEFAULT_ONSET_TEMPERATURE,
    GATE_HISTORY,
    MelPrior,
    PitchMemory,
)


def _tone(*hz: float, seconds: float = 1.0) -> torch.Tensor:
    t = np.arange(int(22050 * seconds)) / 22050
    x = sum(0.3 * np.sin(2 * np.pi * f * t) for f in hz)
    return MelSpectrogram()(torch.tensor(x, dtype=torch.float32))


@pytest.mark.parametrize("hz,pitch_class", [(261.63, 0), (440.0, 9), (659.25, 4), (1760.0, 9),
                                            (3136.0, 7)])
def test_the_memory_names_the_pitch_class_of_a_tone(hz, pitch_class):
    memory = PitchMemory().advance(None, _tone(hz))
    assert memory.shape == (12,) and int(memory.argmax()) == pitch_class


def test_the_memory_decays_and_runs_the_same_in_pieces():
    memory = PitchMemory(2.0)
    mel = torch.randn(2, 80, 50) - 4
    pieces = memory.advance(memory.advance(None, mel[..., :17]), mel[..., 17:])
    assert torch.allclose(memory.advance(None, mel), pieces, rtol=1e-5)
    quiet, loud = torch.full((80, 1), -11.5), torch.full((80, 1), -1.0)
    a = memory.advance(None, torch.cat([loud] + [quiet] * 10, -1))  # heard 10 frames ago
    b = memory.advance(None, torch.cat([quiet] * 10 + [loud], -1))  # heard now
    assert (a.sum() / b.sum()).item() == pytest.approx(memory.decay ** 10, rel=1e-3)
    assert memory.decay == pytest.approx(np.exp(-256 / (2.0 * 22050)))
    with pytest.raises(ValueError, match="positive number of seconds"):
        PitchMemory(0.0)


def test_a_rise_in_the_heard_classes_fits_better_than_one_outside():
    memory = PitchMemory()
    # above 1 kHz a mel band spans about a semitone; below, several
    heard = memory.advance(None, _tone(1046.5, 1318.5, 1568.0))  # C major: C, E, G
    before = memory.power(_tone(1046.5)).mean(-2)
    in_key = memory.power(_tone(1046.5, 1568.0)).mean(-2) - before  # G comes in
    out_of_key = memory.power(_tone(1046.5, 1480.0)).mean(-2) - before  # F sharp comes in
    assert memory.fit(in_key, heard) > 2 * memory.fit(out_of_key, heard)
    assert memory.fit(torch.ones(12), torch.ones(12)).item() == pytest.approx(1 / 12)


def _gated(tiny_prior) -> MelPrior:
    model = MelPrior.from_trained(tiny_prior(), onset_gate=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def test_a_gated_prior_draws_its_onsets_with_the_defaults_unless_told(tiny_prior):
    model = _gated(tiny_prior)
    default = model.sample(40, "a", seed=3, batch=2)
    assert torch.equal(default, model.sample(40, "a", seed=3, batch=2,
                                             onset_temperature=DEFAULT_ONSET_TEMPERATURE,
                                             onset_choices=DEFAULT_ONSET_CHOICES))
    state = model.initial_state(2, "a")
    assert (state.onset_temperature, state.onset_choices) == (1.3, "auto")
    assert model.onset_options(None, 1) == (1.3, 1) and model.onset_options(0.5) == (0.5, "auto")
    plain = model.sample(40, "a", seed=3, batch=2, onset_temperature=0.7, onset_choices=1)
    assert not torch.equal(plain, default)
    # a prior without a gate draws as it always did, and says so
    ungated = tiny_prior()
    state = ungated.initial_state(1)
    assert (state.onset_temperature, state.onset_choices, state.pitch) == (None, 1, None)
    assert ungated.onset_options(None, 1) == (None, 1)


def test_onset_options_change_only_the_onset_steps(tiny_prior):
    model = _gated(tiny_prior)
    g = torch.Generator().manual_seed(0)
    state = model.initial_state(2, "a", generator=g, onset_temperature=1.5, onset_choices=3)
    steps = []
    for _ in range(20):
        x, lp, state = model.step(state, 0.7, g)
        steps.append(x)
        assert torch.isfinite(x).all() and torch.isfinite(lp).all()
    cont = model.denormalise(model.from_steps(torch.stack(steps, 1)))
    # the memory carried through sampling is that of everything drawn
    assert torch.allclose(state.pitch, model._pitch_memory().advance(None, cont), rtol=1e-3)
    prime = model.sample(6, "a", seed=1)[0]
    primed = model.initial_state(2, "a", prime=prime, onset_choices=2)
    assert torch.allclose(primed.pitch[0], model._pitch_memory().advance(None, prime))


def test_the_kept_draw_is_the_one_that_fits_the_memory_best(tiny_prior, monkeypatch):
    model = _gated(tiny_prior)
    g = torch.Generator().manual_seed(0)
    state = model.initial_state(3, "a", generator=g, onset_temperature=1.0, onset_choices=4)
    state.pitch = torch.rand(3, 12)
    ctx = model._context(state.hidden[-1], state.style, state.last)
    onset = torch.tensor([1.0, 0.0, 1.0])
    draws = []
    real = MelPrior.draw_step

    def recording(self, context, temperature=0.7, generator=None, onset=None):
        out = real(self, context, temperature, generator, onset)
        draws.append((onset.clone(), out[0].clone()))
        return out

    monkeypatch.setattr(MelPrior, "draw_step", recording)
    x, _ = model._draw_onsets(ctx, 0.7, g, onset, state)
    (plain_onset, plain), (hot_onset, hot) = draws  # every row once, the onsets 4 times at once
    assert torch.equal(plain_onset, torch.zeros(3)) and torch.equal(x[1], plain[1])
    assert torch.equal(hot_onset, torch.ones(8))
    hot = hot.view(4, 2, -1)  # draw, onset row
    memory = model._pitch_memory()
    fits = torch.stack([memory.fit(memory.power(model._frames(d)).mean(-2), state.pitch[[0, 2]])
                        for d in hot])
    best = fits.argmax(0)
    assert torch.equal(x[0], hot[best[0], 0]) and torch.equal(x[2], hot[best[1], 1])
    # the four draws of a row are four draws, not one
    assert not torch.equal(hot[0, 0], hot[1, 0])


def test_onset_options_need_a_gate_and_sane_values(tiny_prior):
    with pytest.raises(FlowsuiteError, match="no onset gate"):
        tiny_prior().sample(4, onset_choices=2)
    model = _gated(tiny_prior)
    for bad, match in (({"onset_choices": 0}, "1 to 32"), ({"onset_choices": 33}, "1 to 32"),
                       ({"onset_choices": "many"}, "or auto"),
                       ({"onset_temperature": -1.0}, "non-negative"),
                       ({"onset_temperature": float("nan")}, "non-negative")):
        with pytest.raises(FlowsuiteError, match=match):
            model.sample(4, **bad)


def test_onsets_at_the_sampling_temperature_take_the_plain_draw(tiny_prior, monkeypatch):
    """One draw at the sampling temperature is every other step's draw, so it takes that path
    (the numbers the defaults gave before onsets were drawn hot), not the onset draw's."""
    model = _gated(tiny_prior)

    def no(*args, **kwargs):
        raise AssertionError("the onset draw was taken")

    monkeypatch.setattr(MelPrior, "_draw_onsets", no)
    model.sample(40, "a", seed=3, batch=2, temperature=0.5, onset_temperature=0.5,
                 onset_choices=1)
    with pytest.raises(AssertionError, match="onset draw"):
        model.sample(40, "a", seed=3, batch=2, temperature=0.5, onset_temperature=0.7,
                     onset_choices=1)
    with pytest.raises(AssertionError, match="onset draw"):
        model.sample(40, "a", seed=3, batch=2)


def test_auto_choices_pull_on_the_key_per_second_not_per_onset(tiny_prior):
    model = _gated(tiny_prior)
    seconds = GATE_HISTORY * model.block / model.frames_per_second
    rises = torch.zeros(4, GATE_HISTORY)
    rises[1, :4] = 1
    rises[2, ::2] = 1
    rises[3] = 1
    got = model.auto_choices(rises)
    want = [min(AUTO_MAX_CHOICES, round(math.exp(AUTO_CHOICE_PULL * seconds / max(c, 1))))
            for c in (0, 4, GATE_HISTORY // 2, GATE_HISTORY)]
    assert got.tolist() == [max(1, w) for w in want]
    assert got[0] > got[1] > got[2] >= got[3] == 1  # a quiet past asks most, a busy one least


def test_auto_draws_each_onset_row_its_own_number_of_times(tiny_prior, monkeypatch):
    model = _gated(tiny_prior)
    g = torch.Generator().manual_seed(0)
    state = model.initial_state(3, "a", generator=g, onset_choices="auto")
    state.pitch = torch.rand(3, 12)
    state.rises = torch.zeros(3, GATE_HISTORY)
    state.rises[2] = 1  # row 2 has a busy past: one draw; row 0 a quiet one: the most
    ctx = model._context(state.hidden[-1], state.style, state.last)
    draws = []
    real = MelPrior.draw_step

    def recording(self, context, temperature=0.7, generator=None, onset=None):
        out = real(self, context, temperature, generator, onset)
        draws.append(out[0].clone())
        return out

    monkeypatch.setattr(MelPrior, "draw_step", recording)
    x, _ = model._draw_onsets(ctx, 0.7, g, torch.tensor([1.0, 0.0, 1.0]), state)
    k = int(model.auto_choices(state.rises[0:1]))
    assert k > 1 and int(model.auto_choices(state.rises[2:3])) == 1
    hot = draws[1].view(k, 2, -1)
    assert torch.equal(x[2], hot[0, 1])  # its only candidate, whatever the others' fit
    memory = model._pitch_memory()
    fits = memory.fit(memory.power(model._frames(hot[:, 0])).mean(-2), state.pitch[0])
    assert torch.equal(x[0], hot[int(fits.argmax()), 0])
