"""Musical keys (musicflow.keys) and the keyed mel prior: names, the estimate from audio, the
features, and a prior that conditions on the key (zero effect at first, then a real one)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowsuite.core.errors import FlowsuiteError
from flowsuite.musicflow.keys import (
    KEY_NAMES,
    estimate_key,
    key_features,
    key_index,
    key_name,
)
from flowsuite.musicflow.prior import MelPrior

SR = 22050


def _scale(tonic_midi: int, steps: tuple[int, ...], seconds: float = 4.0,
           weights: dict[int, float] | None = None) -> np.ndarray:
    """The notes of a scale one after another (tonic and fifth longer), two partials each."""
    t = np.arange(int(seconds * SR)) / SR
    y = np.zeros_like(t)
    notes = [tonic_midi + s for s in steps] + [tonic_midi, tonic_midi + 7, tonic_midi]
    per = len(t) // len(notes)
    for i, n in enumerate(notes):
        f = 440.0 * 2 ** ((n - 69) / 12)
        seg = slice(i * per, (i + 1) * per)
        for h in (1, 2):
            y[seg] += np.sin(2 * math.pi * f * h * t[seg]) / h
    return (0.2 * y / np.abs(y).max()).astype(np.float32)


def test_key_names_parse_both_ways():
    assert len(KEY_NAMES) == 24 and KEY_NAMES[0] == "C major" and KEY_NAMES[14] == "D minor"
    for text, want in (("D minor", 14), ("dm", 14), ("D", 2), ("F# major", 6), ("Gb", 6),
                       ("Bbm", 22), ("a minor", 21), ("C#min", 13), ("Db maj", 1), (5, 5)):
        assert key_index(text) == want, text
    assert all(key_index(name) == i for i, name in enumerate(KEY_NAMES))
    assert key_name(14) == "D minor" and key_name(-1) == "none"
    for bad in ("H major", "", "D dorian", 24, -1):
        with pytest.raises(FlowsuiteError, match="key"):
            key_index(bad)


def test_key_features_mark_the_tonic_and_the_scale():
    f = key_features(torch.tensor([0, 21, -1]))
    assert f.shape == (3, 24)
    assert f[0, :12].nonzero().flatten().tolist() == [0]  # C
    assert f[0, 12:].nonzero().flatten().tolist() == [0, 2, 4, 5, 7, 9, 11]  # C D E F G A B
    assert f[1, :12].nonzero().flatten().tolist() == [9]  # A minor: its tonic, A
    assert f[1, 12:].nonzero().flatten().tolist() == [0, 2, 4, 5, 7, 8, 9, 11]  # with G#
    assert not f[2].any()  # no key


def test_estimate_key_finds_the_key_of_a_scale():
    assert estimate_key(_scale(67, (0, 2, 4, 5, 7, 9, 11)), SR) == key_index("G major")
    assert estimate_key(_scale(62, (0, 2, 3, 5, 7, 8, 11)), SR) == key_index("D minor")
    assert estimate_key(np.zeros(SR, np.float32), SR) == -1
    assert estimate_key(np.zeros(10, np.float32), SR) == -1


def test_a_keyed_prior_starts_as_the_plain_one_and_then_reads_the_key(tiny_prior):
    plain = tiny_prior()
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.05 * torch.randn_like(p))
    keyed = MelPrior.from_trained(plain, keys=True)
    assert keyed.config["keys"] and keyed.keys and not plain.keys
    mel = torch.randn(2, 8, 10) - 3
    with torch.no_grad():
        base = plain.log_prob(mel, "a")
        assert torch.allclose(keyed.log_prob(mel, "a", key="D minor"), base, atol=1e-5)
        assert torch.allclose(keyed.log_prob(mel, "a"), base, atol=1e-5)  # no key: -1
        keyed.key_map.weight.normal_()
        d_minor = keyed.log_prob(mel, "a", key="D minor")
        assert not torch.allclose(d_minor, keyed.log_prob(mel, "a", key="E major"), atol=1e-3)
        assert torch.equal(d_minor, keyed.log_prob(mel, "a", key=torch.tensor([14, 14])))
    # training reads each crop's key from the batch; gradients reach the key map
    keyed.train()
    out = keyed({"mel": mel, "style": torch.tensor([0, 1]), "key": torch.tensor([14, -1])})
    out["loss"].backward()
    assert keyed.key_map.weight.grad is not None and keyed.key_map.weight.grad.abs().sum() > 0
    keyed.eval()
    # labels: (B, 2) of style and key; a key drawn at random when none is given
    labels = keyed.labels(torch.tensor([0, 1]), "F#", None)
    assert labels.tolist() == [[0, 6], [1, 6]]
    g = torch.Generator().manual_seed(0)
    drawn = keyed.labels(torch.tensor([0, 1, 0]), None, g)[:, 1]
    assert ((drawn >= 0) & (drawn < 24)).all()
    with pytest.raises(FlowsuiteError, match="without keys"):
        plain.labels(torch.tensor([0]), "D minor")
    with pytest.raises(FlowsuiteError, match="unknown key"):
        keyed.sample(4, key="H major")


def test_keyed_sampling_is_seeded_and_its_density_is_the_teacher_forced_one(tiny_prior):
    model = MelPrior.from_trained(tiny_prior(), keys=True).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    a = model.sample(12, style="b", seed=4, key="A minor")
    assert torch.equal(a, model.sample(12, style="b", seed=4, key="A minor"))
    assert not torch.equal(a, model.sample(12, style="b", seed=4, key="Eb major"))
    assert torch.equal(model.sample(12, style="b", seed=5), model.sample(12, style="b", seed=5))
    g = torch.Generator().manual_seed(3)
    state = model.initial_state(2, "b", generator=g, key="A minor")
    parts = list(model.stream(14, state, temperature=0.8, generator=g, chunk_steps=3))
    mel = torch.cat([m for m, _, _ in parts], -1)
    with torch.no_grad():
        assert torch.allclose(model.log_prob(mel, "b", key="A minor"),
                              sum(lp for _, lp, _ in parts), rtol=1e-4, atol=1e-2)
