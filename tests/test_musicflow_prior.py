"""The mel prior (flow, streaming, priming, styles), gen train prior, gen music, gen eval music."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from flowsuite.cli.main import cli
from flowsuite.core.checkpoint import load_model, save_model
from flowsuite.core.errors import FlowsuiteError
from flowsuite.core.testing import check_inverse, check_logdet
from flowsuite.musicflow.mel import MelSpectrogram
from flowsuite.musicflow.metrics import (
    chroma_key_stability,
    frechet_distance,
    key_stability,
    shaped_noise,
)
from flowsuite.musicflow.prior import MelPrior
from flowsuite.musicflow.waveglow import WaveGlow

SR = 22050


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _fails(r, *words: str) -> None:
    """One line on stderr-or-stdout, status 2, no traceback, and the given words in it."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.output
    for w in words:
        assert w in lines[0], lines[0]


def _chords(seconds: float, notes: list[float], seed: int) -> np.ndarray:
    """A few notes of a few partials each, one after another."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    y = np.zeros_like(t)
    per = len(t) // len(notes)
    for i, f in enumerate(notes):
        seg = slice(i * per, (i + 1) * per)
        for h in (1, 2, 3):
            y[seg] += np.sin(2 * math.pi * f * h * t[seg] + rng.uniform(0, 6)) / h
    return (0.2 * y / np.abs(y).max()).astype(np.float32)


@pytest.fixture(scope="module")
def music_set(tmp_path_factory):
    """A miniature music set: audio/ and a manifest with styles and splits."""
    root = tmp_path_factory.mktemp("prior") / "music"
    (root / "audio").mkdir(parents=True)
    plan = [("train", "chorale", 1.2), ("train", "folk", 1.2), ("train", "quartet", 1.2),
            ("train", "folk", 1.2), ("val", "chorale", 1.0), ("test", "folk", 2.2),
            ("test", "chorale", 2.2)]
    with open(root / "manifest.jsonl", "w") as f:
        for i, (split, style, secs) in enumerate(plan):
            name = f"audio/{i:02d}.wav"
            sf.write(root / name, _chords(secs, [220 * 1.26 ** (i % 3), 330, 262, 392], i), SR)
            f.write(json.dumps({"file": name, "style": style, "split": split}) + "\n")
    return root


@pytest.fixture(scope="module")
def models(music_set, tmp_path_factory):
    """A tiny prior trained for 3 steps by the CLI, and an untrained tiny vocoder."""
    root = tmp_path_factory.mktemp("models")
    run = root / "prior"
    r = _invoke("train", "prior", "--data", music_set, "--out", run, "--preset", "tiny",
                "--steps", 3, "--batch-size", 2, "--segment-frames", 16, "--device", "cpu")
    assert r.exit_code == 0, r.output
    torch.manual_seed(0)
    voc = WaveGlow.from_preset("compact", n_flows=2, wn_layers=2, wn_channels=16)
    save_model(voc, root / "voc.safetensors")
    return run, root / "voc.safetensors"


def _tiny(**kw) -> MelPrior:
    torch.manual_seed(0)
    cfg = dict(n_mel=8, block=2, hidden=12, n_flows=2, flow_hidden=[16], style_dim=3)
    model = MelPrior(**{**cfg, **kw})
    with torch.no_grad():  # ActNorm's data-dependent initialisation, as training does first
        model(torch.randn(4, 8, 6))
    return model


# ------------------------------------------------------------------------------------ model


def _off_identity(model: MelPrior, scale: float = 0.1) -> MelPrior:
    """Every weight moved off its initialisation (zero-initialised layers are the identity,
    which would make a test of them pass for any formula)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


@pytest.mark.parametrize("coupling,spline_bins", [("affine", 0), ("spline", 0), ("affine", 3)])
def test_step_flow_inverts_and_its_logdet_matches_the_jacobian(coupling, spline_bins):
    model = _off_identity(_tiny(coupling=coupling, styles=["a", "b"],
                                spline_bins=spline_bins)).double()
    x = torch.randn(3, model.features, dtype=torch.float64)
    ctx = torch.randn(3, 12 + 3, dtype=torch.float64)
    check_inverse(model.flow.bijection, x, ctx)
    check_logdet(model.flow.bijection, x, ctx)


def test_shapes_loss_and_style_labels():
    model = _tiny(styles=["a", "b"])
    mel = torch.randn(4, 8, 10) - 4
    out = model({"mel": mel, "style": torch.tensor([0, 1, -1, 0])})
    assert out["loss"].shape == () and torch.isfinite(out["loss"])
    assert model.log_prob(mel, "b").shape == (4,)
    assert model.sample(7, style="a", seed=0, batch=2).shape == (2, 8, 7)
    with pytest.raises(FlowsuiteError, match="frames"):
        model.log_prob(torch.randn(1, 8, 9))  # not a whole number of 2-frame steps
    with pytest.raises(FlowsuiteError, match="unknown style 'jazz'.*a, b"):
        model.sample(4, style="jazz")
    with pytest.raises(FlowsuiteError, match="without styles"):
        _tiny().sample(4, style="a")


@pytest.mark.parametrize("mixture,spline_bins,carry", [(0, 0, False), (3, 0, False),
                                                      (3, 4, False), (0, 0, True), (3, 0, True)])
def test_streamed_sampling_density_equals_the_teacher_forced_one(mixture, spline_bins, carry):
    """The GRU run step by step while sampling and over the whole sequence in training give the
    same contexts (and, for a carry prior, the same step before each step): the sampler's
    log-density of its output is the batch log_prob."""
    model = _off_identity(_tiny(styles=["a", "b"], mixture=mixture, spline_bins=spline_bins,
                                carry=carry), 0.05).eval()
    g = torch.Generator().manual_seed(3)
    state = model.initial_state(2, "b", generator=g)
    parts = list(model.stream(14, state, temperature=0.8, generator=g, chunk_steps=3))
    mel = torch.cat([m for m, _, _ in parts], -1)
    streamed = sum(lp for _, lp, _ in parts)
    with torch.no_grad():
        assert torch.allclose(model.log_prob(mel, "b"), streamed, rtol=1e-4, atol=1e-2)


def test_chunking_and_continuing_a_stream_change_nothing():
    model = _tiny().eval()
    whole = model.sample(20, seed=5, temperature=0.5)
    g = torch.Generator().manual_seed(5)
    state = model.initial_state(1, generator=g)
    first = [(m, s) for m, _, s in model.stream(8, state, 0.5, g, chunk_steps=1)]
    rest = [m for m, _, _ in model.stream(12, first[-1][1], 0.5, g, chunk_steps=64)]
    assert torch.equal(torch.cat([m for m, _ in first] + rest, -1), whole)


@pytest.mark.parametrize("carry", [False, True])
def test_a_primed_continuation_is_the_conditional_of_the_whole(carry):
    """log p(prime + continuation) - log p(prime) = the streamed density of the continuation."""
    model = _off_identity(_tiny(carry=carry), 0.05 if carry else 0.0).eval()
    prime = model.sample(6, seed=1)[0]
    g = torch.Generator().manual_seed(2)
    state = model.initial_state(1, prime=prime, generator=g)
    parts = list(model.stream(8, state, 1.0, g))
    cont = torch.cat([m for m, _, _ in parts], -1)
    with torch.no_grad():
        joint = model.log_prob(torch.cat([prime[None], cont], -1))
        cond = joint - model.log_prob(prime[None])
    assert torch.allclose(cond, sum(lp for _, lp, _ in parts), rtol=1e-4, atol=1e-2)
    assert not torch.equal(cont, model.sample(8, seed=2))  # the prime does change the music


def test_long_generation_carries_a_fixed_size_state():
    model = _tiny().eval()
    g = torch.Generator().manual_seed(0)
    start = model.initial_state(1, generator=g)
    sizes, widths = set(), set()
    for mel, _, state in model.stream(600, start, 0.5, g, chunk_steps=16):
        sizes.add(tuple(state.hidden.shape))
        widths.add(mel.shape[-1])
    assert sizes == {(1, 1, 12)} and max(widths) == 32  # 16 steps of 2 frames at most


def test_from_trained_keeps_the_weights_and_adds_a_fresh_mixture():
    source = _tiny(styles=["a"]).eval()
    mel = torch.randn(2, 8, 6)
    same = MelPrior.from_trained(source).eval()
    mixed = MelPrior.from_trained(source, mixture=4).eval()
    assert mixed.config["mixture"] == 4 and mixed.mixture is not None
    with torch.no_grad():
        assert torch.equal(same.log_prob(mel, "a"), source.log_prob(mel, "a"))
        assert torch.equal(mixed.rnn.weight_hh_l0, source.rnn.weight_hh_l0)
        # the fresh mixture starts close to the standard normal it replaces
        gap = (mixed.log_prob(mel, "a") - source.log_prob(mel, "a")).abs() / mel[0].numel()
        assert gap.max() < 0.05
    with pytest.raises(FlowsuiteError, match="rnn"):
        MelPrior.from_trained(source, hidden=20)
    with pytest.raises(ValueError, match="mixture"):
        _tiny(mixture=1)
    with pytest.raises(ValueError, match="spline_bins"):
        _tiny(spline_bins=-1)


@pytest.mark.parametrize("coupling,mixture,grow", [
    ("affine", 0, {"n_flows": 4}), ("affine", 3, {"n_flows": 4}), ("spline", 0, {"n_flows": 4}),
    ("affine", 3, {"spline_bins": 3}), ("affine", 3, {"carry": True})])
def test_from_trained_grows_the_step_flow_from_the_identity(coupling, mixture, grow):
    """More flow steps, a context spline per mel value or the carried last frame, added to a
    trained prior, start as the identity (the same likelihood) and then learn."""
    source = _off_identity(_tiny(styles=["a"], coupling=coupling, mixture=mixture), 0.05)
    source.eval()
    mel = torch.randn(3, 8, 6)
    grown = MelPrior.from_trained(source, **grow).eval()
    assert all(grown.config[k] == v for k, v in grow.items())
    with torch.no_grad():
        torch.testing.assert_close(grown.log_prob(mel, "a"), source.log_prob(mel, "a"),
                                   rtol=1e-5, atol=1e-4)
    # the added steps take part in training: their parameters get gradients
    grown.train()
    (-grown.log_prob(mel, "a").mean()).backward()
    added = [p for name, p in grown.named_parameters() if name not in source.state_dict()]
    assert added and any(p.grad is not None and p.grad.abs().sum() > 0 for p in added)


def test_carry_shifts_each_step_by_the_gain_times_the_last_frame_before():
    """A carry prior's step flow reads ``x - a(c) * last``, ``last`` the final frame of the step
    before repeated over the step's frames; a shift, so the density is the flow's at that point,
    and sampling adds the same shift back."""
    model = _off_identity(_tiny(carry=True, mixture=3), 0.05).eval()
    steps = model.to_steps(torch.randn(2, 8, 8))  # 4 steps of 2 frames x 8 bands
    style = torch.full((2,), -1)
    ctx = model.teacher_forced_context(steps, style)
    plain, prev = ctx[..., :-16], ctx[..., -16:]
    assert torch.equal(prev[:, 0], torch.zeros(2, 16)) and torch.equal(prev[:, 1:], steps[:, :-1])
    gain = model.carry(plain)
    last = steps[:, :-1, 8:].repeat(1, 1, 2)  # the second frame of each step before, twice
    shift = gain * torch.cat([torch.zeros(2, 1, 16), last], 1)
    with torch.no_grad():
        z, ld, flow_ctx = model.step_latent(steps.reshape(8, 16), ctx.reshape(8, -1))
        want_z, want_ld = model.flow.bijection((steps - shift).reshape(8, 16),
                                               plain.reshape(8, -1))
        torch.testing.assert_close(z, want_z)
        torch.testing.assert_close(ld, want_ld)
        assert torch.equal(flow_ctx, plain.reshape(8, -1))
        # sampling: the same shift is added to the flow's sample
        g = torch.Generator().manual_seed(0)
        x, _ = model.sample_step(ctx.reshape(8, -1), 0.7, g)
        back, _, _ = model.step_latent(x, ctx.reshape(8, -1))
        g = torch.Generator().manual_seed(0)
        u = model.mixture.sample(plain.reshape(8, -1), 0.7, g)
        torch.testing.assert_close(back, u, rtol=1e-4, atol=1e-4)


def test_checkpoint_keeps_statistics_and_styles(tmp_path):
    model = _tiny(styles=["x"], mean=[float(i) for i in range(8)], std=[2.0] * 8).eval()
    save_model(model, tmp_path / "p.safetensors")
    back = load_model(tmp_path / "p.safetensors", expected="mel-prior")
    mel = torch.randn(2, 8, 6)
    assert back.styles == ["x"] and torch.equal(back.std, model.std)
    with torch.no_grad():
        assert torch.allclose(back.log_prob(mel, "x"), model.log_prob(mel, "x"))


def test_frechet_distance_and_shaped_noise():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, a + [2, 0, 0]) == pytest.approx(4, rel=1e-6)
    front = MelSpectrogram()
    clips = [_chords(1.0, [440.0], 0)]
    noise = shaped_noise(clips, 2, 8000, front, seed=1)
    assert [len(n) for n in noise] == [8000, 8000]
    spec = front.stft(torch.from_numpy(noise[0])).abs().mean(-1)
    assert int(spec.argmax()) == int(front.stft(torch.from_numpy(clips[0])).abs().mean(-1).argmax())


def _scales(tonics: list[int], seed: int, seconds: float = 1.0) -> np.ndarray:
    """One window of ``seconds`` per tonic (a MIDI number): the notes of its major scale
    sounding together with random loudness (a new voicing in every window), two partials each."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    out = []
    for tonic in tonics:
        y = np.zeros_like(t)
        for step in (0, 2, 4, 5, 7, 9, 11):
            f = 440.0 * 2 ** ((tonic + step + 12 * rng.integers(-1, 1) - 69) / 12)
            for h in (1, 2):
                y += rng.uniform(0.5, 1.0) * np.sin(2 * math.pi * f * h * t + rng.uniform(0, 6))
        out.append(y / np.abs(y).max())
    return (0.2 * np.concatenate(out)).astype(np.float32)


def test_chroma_key_stability_scores_windows_of_a_chroma_sequence():
    one = np.tile(np.eye(12)[0][:, None] + 0.1, (1, 40))  # one loud class throughout
    assert chroma_key_stability(one, 10, 2) == pytest.approx(1.0)
    swap = np.concatenate([np.tile(np.eye(12)[i][:, None], (1, 10)) for i in (0, 6) * 3], 1)
    # windows 0-5 alternate two classes: of the 10 pairs 2 or more apart, the 6 an even number
    # apart agree (1), the 4 an odd number apart correlate as -1/11 (centred one-hots)
    assert chroma_key_stability(swap, 10, 2) == pytest.approx((6 - 4 / 11) / 10)
    assert chroma_key_stability(one, 10, 2, loud=np.zeros(40, bool)) == 0.0
    assert chroma_key_stability(one, 10, 4) == 0.0  # no two windows that far apart


def test_key_stability_tells_a_clip_that_keeps_its_key_from_one_that_wanders():
    stay = _scales([60] * 8, 0)  # C major throughout, voiced anew each second
    wander = _scales([60, 66, 61, 67, 62, 68, 63, 69], 0)  # a new key every second
    noise = np.random.default_rng(0).normal(0, 0.1, 8 * SR).astype(np.float32)
    ks = {name: key_stability(x, SR) for name, x in
          (("stay", stay), ("wander", wander), ("noise", noise))}
    assert ks["stay"] > 0.45 and ks["wander"] < 0.1 and abs(ks["noise"]) < 0.2, ks
    # Too short for two windows two seconds apart, or silent: 0.
    assert key_stability(stay[:2 * SR], SR) == 0.0
    assert key_stability(np.zeros(4 * SR, np.float32), SR) == 0.0


# -------------------------------------------------------------------------------------- CLI


def test_train_prior_takes_styles_from_the_manifest_and_resumes(models, music_set):
    run, _ = models
    model = load_model(run / "model.safetensors", expected="mel-prior")
    assert model.styles == ["chorale", "folk", "quartet"]
    assert model.block == 2 and len(model.config["mean"]) == 80
    args = ("train", "prior", "--data", music_set, "--out", run, "--preset", "tiny",
            "--batch-size", 2, "--segment-frames", 16, "--device", "cpu")
    _fails(_invoke(*args, "--steps", 3), "already holds a training run")
    r = _invoke(*args, "--steps", 5, "--resume")
    assert r.exit_code == 0 and "trained 5 steps" in r.output, r.output
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 5


def test_train_prior_time_limit_and_the_shared_deadline_of_both_parts(models, music_set,
                                                                     tmp_path, step_clock):
    run, voc = models
    args = ("train", "prior", "--data", music_set, "--out", tmp_path / "p", "--preset", "tiny",
            "--steps", 4, "--batch-size", 2, "--segment-frames", 16, "--device", "cpu")
    r = _invoke(*args, "--time-limit", "2s")
    assert r.exit_code == 3 and "time limit reached: stopped at step 2" in r.output, r.output
    assert not (tmp_path / "p" / "model.safetensors").exists()
    r = _invoke(*args, "--resume")
    assert r.exit_code == 0 and "trained 4 steps" in r.output, r.output
    # --part both: the prior part stops at the limit and the vocoder part does not start.
    start = tmp_path / "start"
    start.mkdir()
    shutil.copy(run / "model.safetensors", start / "prior.safetensors")
    shutil.copy(voc, start / "vocoder.safetensors")
    out = tmp_path / "both"
    r = _invoke("finetune", "music", "--part", "both", "--from", start, "--data", music_set,
                "--out", out, "--steps", 4, "--batch-size", 2, "--segment-frames", 16,
                "--segment", 1024, "--device", "cpu", "--time-limit", "3s")
    assert r.exit_code == 3 and "time limit reached" in r.output, r.output
    assert (out / "prior" / "last").is_dir() and not (out / "vocoder").exists()


def test_train_prior_from_a_trained_prior_with_a_mixture(models, music_set, tmp_path):
    run, voc = models
    source = load_model(run / "model.safetensors", expected="mel-prior")
    args = ("train", "prior", "--data", music_set, "--steps", 2, "--batch-size", 2,
            "--segment-frames", 16, "--device", "cpu")
    r = _invoke(*args, "--out", tmp_path / "mix", "--init", run, "--mixture", 2)
    assert r.exit_code == 0, r.output
    model = load_model(tmp_path / "mix" / "model.safetensors", expected="mel-prior")
    assert model.config["mixture"] == 2 and model.block == source.block == 2
    assert model.config["mean"] == source.config["mean"] and model.styles == source.styles
    assert model.sample(6, seed=0).shape == (1, 80, 6)
    r = _invoke(*args, "--out", tmp_path / "deep", "--init", run, "--flows",
                source.config["n_flows"] + 1)
    assert r.exit_code == 0, r.output
    deep = load_model(tmp_path / "deep" / "model.safetensors", expected="mel-prior")
    assert deep.config["n_flows"] == source.config["n_flows"] + 1
    r = _invoke(*args, "--out", tmp_path / "f0", "--flows", 0)
    assert r.exit_code == 2 and "Traceback" not in r.output and "'--flows'" in r.output
    assert not (tmp_path / "f0").exists()
    r = _invoke(*args, "--out", tmp_path / "spl", "--init", run, "--spline-bins", 3)
    assert r.exit_code == 0, r.output
    spl = load_model(tmp_path / "spl" / "model.safetensors", expected="mel-prior")
    assert spl.config["spline_bins"] == 3 and spl.flow.bijection[0].spline is not None
    r = _invoke(*args, "--out", tmp_path / "spl2", "--spline-bins", -1)
    assert r.exit_code == 2 and "Traceback" not in r.output and "'--spline-bins'" in r.output
    r = _invoke(*args, "--out", tmp_path / "carry", "--init", run, "--carry")
    assert r.exit_code == 0, r.output
    carried = load_model(tmp_path / "carry" / "model.safetensors", expected="mel-prior")
    assert carried.config["carry"] is True and carried.carry is not None
    r = _invoke(*args, "--out", tmp_path / "ro", "--init", run, "--rollout", 2)
    assert r.exit_code == 0, r.output
    rolled = load_model(tmp_path / "ro" / "model.safetensors", expected="mel-prior")
    assert rolled.config["rollout"] == 2
    r = _invoke(*args, "--out", tmp_path / "ros", "--init", run, "--rollout", 2, "--rollout-share",
                0.5)
    assert r.exit_code == 0, r.output
    shared = load_model(tmp_path / "ros" / "model.safetensors", expected="mel-prior")
    assert shared.config["rollout_share"] == 0.5
    _fails(_invoke(*args, "--out", tmp_path / "ro2", "--rollout", 2, "--self-feed", 0.5),
           "--rollout", "--self-feed")
    assert not (tmp_path / "ro2").exists()
    fed_run = tmp_path / "sf"  # made below; a rollout on top of its self-feeding fails cleanly
    r = _invoke(*args, "--out", tmp_path / "sf", "--init", run, "--self-feed", 0.5)
    assert r.exit_code == 0, r.output
    fed = load_model(tmp_path / "sf" / "model.safetensors", expected="mel-prior")
    assert fed.config["self_feed"] == 0.5 and source.config.get("self_feed", 0.0) == 0.0
    _fails(_invoke(*args, "--out", tmp_path / "ro3", "--init", fed_run, "--rollout", 2),
           "rollout", "self_feed")
    assert not (tmp_path / "ro3").exists()
    r = _invoke(*args, "--out", tmp_path / "sm", "--init", run, "--context-smear", 0.5)
    assert r.exit_code == 0, r.output
    smeared = load_model(tmp_path / "sm" / "model.safetensors", expected="mel-prior")
    assert smeared.config["context_smear"] == 0.5
    r = _invoke(*args, "--out", tmp_path / "sm2", "--context-smear", 2)
    assert r.exit_code == 2 and "Traceback" not in r.output and "'--context-smear'" in r.output
    assert not (tmp_path / "sm2").exists()
    r = _invoke(*args, "--out", tmp_path / "sf2", "--self-feed", 1.5)
    assert r.exit_code == 2 and "Traceback" not in r.output and "'--self-feed'" in r.output
    assert not (tmp_path / "sf2").exists()
    _fails(_invoke(*args, "--out", tmp_path / "m1", "--mixture", 1), "--mixture", "1")
    _fails(_invoke(*args, "--out", tmp_path / "m2", "--init", voc), "waveglow")
    _fails(_invoke(*args, "--out", tmp_path / "m3", "--init", tmp_path / "none"))


def test_train_prior_on_a_plain_folder_has_no_styles(tmp_path):
    data = tmp_path / "clips"
    data.mkdir()
    for i in range(2):
        sf.write(data / f"{i}.wav", _chords(0.8, [300.0, 400.0], i), SR)
    r = _invoke("train", "prior", "--data", data, "--out", tmp_path / "run", "--preset", "tiny",
                "--steps", 1, "--batch-size", 2, "--segment-frames", 16, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert load_model(tmp_path / "run" / "model.safetensors").styles == []


@pytest.mark.filterwarnings("ignore::flowsuite.data.audio.AudioSkipWarning")
def test_train_prior_bad_input(tmp_path, music_set):
    base = ("train", "prior", "--out", tmp_path / "r", "--preset", "tiny", "--steps", 1,
            "--device", "cpu")
    _fails(_invoke(*base, "--data", tmp_path / "nowhere"), "does not exist")
    _fails(_invoke(*base, "--data", music_set, "--segment-frames", 15), "multiple")
    _fails(_invoke(*base, "--data", music_set, "--segment-frames", 4000), "usable")


def test_gen_music_writes_exactly_the_asked_length(models, tmp_path):
    run, voc = models
    out, png = tmp_path / "m.wav", tmp_path / "m.png"
    r = _invoke("music", "--seconds", 1.5, "--model", run, "--vocoder", voc, "--out", out,
                "--preview", png, "--style", "folk", "--device", "cpu", "--seed", 4)
    assert r.exit_code == 0, r.output
    y, rate = sf.read(out)
    assert rate == SR and y.ndim == 1 and len(y) == round(1.5 * SR)
    assert png.read_bytes()[:4] == b"\x89PNG"
    before = out.read_bytes()
    _fails(_invoke("music", "--seconds", 1, "--model", run, "--vocoder", voc, "--out", out,
                   "--device", "cpu"), "--force")
    assert out.read_bytes() == before
    r = _invoke("music", "--seconds", 1, "--model", run, "--vocoder", voc, "--out", out,
                "--device", "cpu", "--force", "--seed", 4)
    assert r.exit_code == 0 and len(sf.read(out)[0]) == SR


def test_gen_music_continues_a_clip(models, tmp_path):
    run, voc = models
    clip = tmp_path / "clip.flac"
    sf.write(clip, _chords(0.5, [262.0, 330.0], 9), 44100)
    out = tmp_path / "c.wav"
    r = _invoke("music", "--seconds", 1, "--from", clip, "--model", run, "--vocoder", voc,
                "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert len(sf.read(out)[0]) == SR


def test_gen_music_bad_input(models, tmp_path, monkeypatch):
    run, voc = models
    out = tmp_path / "x.wav"
    base = ("music", "--model", run, "--vocoder", voc, "--out", out, "--device", "cpu")
    for s in ("0", "-3", "1e9", "nan", "0.5"):
        _fails(_invoke(*base, "--seconds", s), "seconds")
    _fails(_invoke(*base, "--temperature", -1), "--temperature")
    _fails(_invoke(*base, "--sigma", "nan"), "--sigma")
    _fails(_invoke(*base, "--style", "jazz"), "unknown style", "chorale, folk, quartet")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    _fails(_invoke(*base, "--from", bad), "cannot read")
    _fails(_invoke(*base, "--from", tmp_path / "missing.wav"), "does not exist")
    _fails(_invoke("music", "--model", tmp_path / "none", "--vocoder", voc, "--out", out),
           "does not exist")
    _fails(_invoke("music", "--model", voc, "--vocoder", voc, "--out", out), "waveglow")
    _fails(_invoke("music", "--model", run, "--vocoder", run, "--out", out), "mel-prior")
    import flowsuite.data.pretrained as pretrained

    monkeypatch.setattr(pretrained, "MODELS_DIR", tmp_path / "empty")
    _fails(_invoke("music", "--out", out), "gen train prior")
    assert not out.exists()  # (no WaveGlow shipped: Griffin-Lim, tested below)


def test_train_prior_with_keys_and_gen_music_in_a_key(models, music_set, tmp_path):
    """``--keys``: the corpus gets each file's key from its audio, the model reads it; `gen
    music --key` writes in a key, and a key for a prior without keys, or an unknown key, is one
    line each."""
    run = tmp_path / "keyed"
    r = _invoke("train", "prior", "--data", music_set, "--out", run, "--preset", "tiny",
                "--steps", 2, "--batch-size", 2, "--segment-frames", 16, "--device", "cpu",
                "--keys", "--context-blank", 0.5)
    assert r.exit_code == 0, r.output
    model = load_model(run / "model.safetensors")
    assert model.keys and model.config["context_blank"] == 0.5
    from flowsuite.musicflow.prior_train import MelCorpus

    corpus = MelCorpus.from_folder(music_set, split="train", keys=True)
    assert len(corpus.keys) == len(corpus.mels) and all(-1 <= k < 24 for k in corpus.keys)
    out, png = tmp_path / "k.wav", tmp_path / "k.png"
    r = _invoke("music", "--seconds", 1, "--model", run, "--vocoder", "griffin-lim", "--key",
                "D minor", "--out", out, "--preview", png, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert out.is_file() and png.is_file()
    _fails(_invoke("music", "--seconds", 1, "--model", run, "--vocoder", "griffin-lim",
                   "--key", "H major", "--out", tmp_path / "x.wav"), "unknown key")
    plain, _ = models
    _fails(_invoke("music", "--seconds", 1, "--model", plain, "--vocoder", "griffin-lim",
                   "--key", "D minor", "--out", tmp_path / "y.wav"), "without keys")
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "y.wav").exists()


def test_train_prior_with_beats_and_gen_music_at_a_tempo(models, music_set, tmp_path):
    """``--beats``: each file's clock comes from the manifest's beats (or beats tracked in the
    audio), the prior gets an onset gate that reads it and the median tempo per style; `gen
    music --tempo` sets its clock. Music with no beat to find, a tempo for a prior without
    beats and an absurd tempo: one line each."""
    drone = tmp_path / "drone"
    drone.mkdir()
    t = np.arange(2 * SR) / SR
    for i in range(2):
        sf.write(drone / f"{i}.wav", (0.2 * np.sin(2 * math.pi * 220 * (i + 1) * t)), SR)
    _fails(_invoke("train", "prior", "--data", drone, "--out", tmp_path / "none",
                   "--preset", "tiny", "--steps", 1, "--segment-frames", 16, "--beats",
                   "--mixture", 2), "--beats", "none were found")
    assert not (tmp_path / "none").exists()
    from flowsuite.musicflow.prior_train import MelCorpus

    tracked = MelCorpus.from_folder(music_set, split="train", beats=True)  # no beats listed
    assert any(len(b) >= 2 for b in tracked.beats)
    beat_set = tmp_path / "beat_set"
    (beat_set / "audio").mkdir(parents=True)
    with open(beat_set / "manifest.jsonl", "w") as f:
        for line in (music_set / "manifest.jsonl").read_text().splitlines():
            r = json.loads(line)
            (beat_set / r["file"]).write_bytes((music_set / r["file"]).read_bytes())
            step = 0.5 if r["style"] == "folk" else 0.75  # 120 and 80 beats per minute
            f.write(json.dumps({**r, "beats": np.arange(0, 2.0, step).tolist()}) + "\n")
    run = tmp_path / "clocked"
    _fails(_invoke("train", "prior", "--data", beat_set, "--out", tmp_path / "plain",
                   "--preset", "tiny", "--steps", 1, "--segment-frames", 16, "--beats"),
           "needs a mixture latent")
    r = _invoke("train", "prior", "--data", beat_set, "--out", run, "--preset", "tiny",
                "--steps", 2, "--batch-size", 2, "--segment-frames", 16, "--device", "cpu",
                "--beats", "--mixture", 2)
    assert r.exit_code == 0, r.output
    model = load_model(run / "model.safetensors")
    assert model.beats and model.config["onset_gate"]
    assert model.tempi["folk"] == pytest.approx(120.0)
    assert model.tempi["chorale"] == pytest.approx(80.0)
    out = tmp_path / "t.wav"
    r = _invoke("music", "--seconds", 1, "--model", run, "--vocoder", "griffin-lim", "--tempo",
                96, "--style", "folk", "--gate-temperature", 0.5, "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert len(sf.read(out)[0]) == SR
    _fails(_invoke("music", "--seconds", 1, "--model", run, "--vocoder", "griffin-lim",
                   "--gate-temperature", -1, "--out", tmp_path / "x.wav"), "gate temperature")
    r = _invoke("music", "--seconds", 1, "--model", run, "--vocoder", "griffin-lim",
                "--onset-temperature", 1.3, "--onset-choices", 3, "--out", tmp_path / "oc.wav",
                "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert len(sf.read(tmp_path / "oc.wav")[0]) == SR
    _fails(_invoke("music", "--seconds", 1, "--model", run, "--vocoder", "griffin-lim",
                   "--onset-choices", 0, "--out", tmp_path / "x.wav"), "onset choices")
    _fails(_invoke("music", "--seconds", 1, "--model", run, "--vocoder", "griffin-lim",
                   "--onset-choices", "many", "--out", tmp_path / "x.wav"), "or auto")
    _fails(_invoke("music", "--seconds", 1, "--model", run, "--vocoder", "griffin-lim",
                   "--onset-temperature", -2, "--out", tmp_path / "x.wav"), "onset temperature")
    for bad in ("0", "1000", "nan"):
        _fails(_invoke("music", "--seconds", 1, "--model", run, "--vocoder", "griffin-lim",
                       "--tempo", bad, "--out", tmp_path / "x.wav"), "beats per minute")
    # fine-tuning a clocked prior: on a set with beats it reads them, on plain audio no clock
    for data, out_dir in ((beat_set, tmp_path / "ft-beats"), (beat_set / "audio",
                                                               tmp_path / "ft-plain")):
        r = _invoke("finetune", "music", "--part", "prior", "--from", run, "--data", data,
                    "--out", out_dir, "--steps", 1, "--batch-size", 2, "--segment-frames", 16,
                    "--device", "cpu")
        assert r.exit_code == 0, r.output
        assert load_model(out_dir / "model.safetensors").config == model.config
    plain, _ = models
    _fails(_invoke("music", "--seconds", 1, "--model", plain, "--vocoder", "griffin-lim",
                   "--tempo", 90, "--out", tmp_path / "y.wav"), "without beats")
    _fails(_invoke("music", "--seconds", 1, "--model", plain, "--vocoder", "griffin-lim",
                   "--gate-temperature", 0.5, "--out", tmp_path / "y.wav"), "no onset gate")
    _fails(_invoke("music", "--seconds", 1, "--model", plain, "--vocoder", "griffin-lim",
                   "--onset-choices", 2, "--out", tmp_path / "y.wav"), "no onset gate")
    # gen eval music samples at the gate temperature asked for
    js = tmp_path / "e.json"
    r = _invoke("eval", "music", "--model", run, "--vocoder", "griffin-lim", "--data", beat_set,
                "--count", 2, "--seconds", 1, "--gate-temperature", 0.5, "--onset-temperature",
                1.2, "--onset-choices", 2, "--json", js, "--device", "cpu")
    assert r.exit_code == 0, r.output
    got = json.loads(js.read_text())
    assert got["gate_temperature"] == 0.5
    assert got["onset_temperature"] == 1.2 and got["onset_choices"] == 2
    # unnamed, the gated prior's default onset draws are recorded, as drawn
    r = _invoke("eval", "music", "--model", run, "--vocoder", "griffin-lim", "--data", beat_set,
                "--count", 2, "--seconds", 1, "--json", js, "--force", "--device", "cpu")
    assert r.exit_code == 0, r.output
    got = json.loads(js.read_text())
    assert (got["onset_temperature"], got["onset_choices"]) == (1.3, "auto")
    _fails(_invoke("eval", "music", "--model", plain, "--vocoder", "griffin-lim", "--data",
                   beat_set, "--gate-temperature", 0.5), "no onset gate")
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "y.wav").exists()


def test_gen_eval_music_reports_four_systems(models, music_set, tmp_path):
    run, voc = models
    js = tmp_path / "e.json"
    r = _invoke("eval", "music", "--model", run, "--vocoder", voc, "--data", music_set,
                "--count", 2, "--seconds", 1, "--json", js, "--device", "cpu")
    assert r.exit_code == 0, r.output
    res = json.loads(js.read_text())
    assert set(res["metrics"]) == {"generated", "vocoded", "shaped_noise", "ideal"}
    assert (res["onset_temperature"], res["onset_choices"]) == (None, 1)  # no gate: plain draw
    for m in res["metrics"].values():
        assert set(m) == {"mel_fd", "chroma_fd", "rhythm", "tonality"}
        assert all(np.isfinite(v) and v >= 0 for v in m.values())
    assert set(res["key_stability"]) == {"held_out", *res["metrics"]}
    assert all(-1 <= v <= 1 for v in res["key_stability"].values())
    assert "vocoded" in r.output and "key_stab" in r.output
    # the rhythm distance's parts, per system: held-out clips have onsets and a pulse measure
    assert set(res["rhythm_features"]) == {"held_out", *res["metrics"]}
    for feats in res["rhythm_features"].values():
        assert set(feats) == {"onset_rate", "onset_strength_mean", "onset_strength_cv",
                              "pulse_clarity"}
        assert all(np.isfinite(v) and v >= 0 for v in feats.values())
    assert "rhythm, held-out / generated: onset_rate" in r.output
    _fails(_invoke("eval", "music", "--model", run, "--vocoder", voc, "--data", music_set,
                   "--json", js), "--force")
    _fails(_invoke("eval", "music", "--model", run, "--vocoder", voc, "--data", music_set,
                   "--count", 1), "--count")


def test_gen_eval_music_draws_average_disjoint_clip_sets(models, music_set, tmp_path):
    """--draws N scores N disjoint sets of generated clips (seeds SEED + d * COUNT onwards)
    against the same held-out clips: each draw is what a single run at that seed gives."""
    run, _ = models
    base = ["eval", "music", "--model", run, "--vocoder", "griffin-lim", "--data", music_set,
            "--count", 2, "--seconds", 1, "--device", "cpu"]
    singles = []
    for seed in (3, 5):
        js = tmp_path / f"s{seed}.json"
        assert _invoke(*base, "--seed", seed, "--json", js).exit_code == 0
        singles.append(json.loads(js.read_text()))
    js = tmp_path / "d.json"
    r = _invoke(*base, "--seed", 3, "--draws", 2, "--json", js)
    assert r.exit_code == 0, r.output
    assert "mean of 2 sets, seeds 3-6" in r.output and " sd " in r.output
    res = json.loads(js.read_text())
    assert res["draws"] == 2 and len(res["generated_draws"]) == 2
    for m in ("mel_fd", "chroma_fd", "rhythm", "tonality"):
        each = [d[m] for d in res["generated_draws"]]
        assert each == pytest.approx([s["metrics"]["generated"][m] for s in singles])
        assert res["metrics"]["generated"][m] == pytest.approx(np.mean(each))
        assert res["generated_sd"][m] == pytest.approx(np.std(each, ddof=1))
        # the baselines do not depend on the draws
        assert res["metrics"]["ideal"][m] == pytest.approx(singles[0]["metrics"]["ideal"][m])
    assert res["key_stability"]["generated"] == pytest.approx(
        np.mean([s["key_stability"]["generated"] for s in singles]))
    for f, v in res["rhythm_features"]["generated"].items():  # over the clips of both draws
        assert v == pytest.approx(np.mean([s["rhythm_features"]["generated"][f]
                                           for s in singles]))


def test_gen_eval_music_style_compares_one_style(models, tmp_path):
    """--style generates in that style and takes the held-out clips of that style only."""
    run, _ = models
    root = tmp_path / "held"
    (root / "audio").mkdir(parents=True)
    plan = [("chorale", 4.2, [220.0, 262.0]), ("folk", 2.2, [523.0, 659.0]),
            ("quartet", 1.2, [330.0])]  # folk and quartet too short for 4 one-second clips
    with open(root / "manifest.jsonl", "w") as f:
        for i, (style, secs, notes) in enumerate(plan):
            name = f"audio/{i:02d}.wav"
            sf.write(root / name, _chords(secs, notes, i), SR)
            f.write(json.dumps({"file": name, "style": style, "split": "test"}) + "\n")
    js = tmp_path / "e.json"
    r = _invoke("eval", "music", "--model", run, "--vocoder", "griffin-lim", "--data", root,
                "--count", 2, "--seconds", 1, "--style", "chorale", "--json", js,
                "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "2 clips of style chorale" in r.output
    res = json.loads(js.read_text())
    assert res["style"] == "chorale" and res["reference_clips"] == 2
    # the ideal pairs chorale clips with chorale clips: far closer than with the folk file
    mixed = tmp_path / "m.json"
    r = _invoke("eval", "music", "--model", run, "--vocoder", "griffin-lim", "--data", root,
                "--count", 2, "--seconds", 1, "--json", mixed, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert json.loads(mixed.read_text())["style"] is None
    assert (res["metrics"]["ideal"]["mel_fd"]
            < json.loads(mixed.read_text())["metrics"]["ideal"]["mel_fd"])
    _fails(_invoke("eval", "music", "--model", run, "--vocoder", "griffin-lim", "--data", root,
                   "--count", 2, "--seconds", 1, "--style", "quartet"),
           "1 held-out clip(s) of style quartet")
    _fails(_invoke("eval", "music", "--model", run, "--vocoder", "griffin-lim", "--data", root,
                   "--style", "reel"), "unknown style 'reel'")


def test_gen_eval_music_vocoded_baseline_is_near_the_ideal(models, music_set, tmp_path):
    """Held-out clips resynthesised through their own mels keep what the log-mel distance
    measures: with Griffin-Lim they land near the ideal, far closer than shaped noise or an
    untrained prior."""
    run, _ = models
    js = tmp_path / "e.json"
    r = _invoke("eval", "music", "--model", run, "--vocoder", "griffin-lim", "--data", music_set,
                "--count", 2, "--seconds", 1, "--json", js, "--device", "cpu")
    assert r.exit_code == 0, r.output
    m = json.loads(js.read_text())["metrics"]
    assert m["vocoded"]["mel_fd"] < 1.5 * m["ideal"]["mel_fd"]
    assert m["vocoded"]["mel_fd"] < m["shaped_noise"]["mel_fd"] / 2
    assert m["vocoded"]["mel_fd"] < m["generated"]["mel_fd"] / 2  # a prior trained 3 steps


def test_music_generator_api(models):
    from flowsuite.musicflow import MusicGenerator

    run, voc = models
    gen = MusicGenerator.from_pretrained(run / "model.safetensors", voc)
    audio, rate = gen.generate(1.25, seed=3, temperature=0.5, sigma=0.6, style="chorale")
    assert rate == SR and audio.dtype == np.float32 and audio.shape == (round(1.25 * SR),)
    again, _ = gen.generate(1.25, seed=3, temperature=0.5, sigma=0.6, style="chorale")
    assert np.array_equal(audio, again)
    primed, _ = gen.generate(1.0, seed=3, prime_audio=_chords(0.5, [262.0], 1))
    assert primed.shape == (SR,)
    with pytest.raises(FlowsuiteError, match="do not match"):
        MusicGenerator(MelPrior.from_preset("tiny", hop=128), gen.vocoder)


def test_finetune_prior_and_both_start_from_the_given_models(music_set, models, tmp_path):
    from flowsuite.core.checkpoint import read_metadata

    prior_run, voc = models
    # --part prior on a plain folder of audio (no styles: the "no style" context is trained)
    out = tmp_path / "ft-prior"
    args = ["finetune", "music", "--part", "prior", "--from", prior_run, "--data",
            music_set / "audio", "--out", out, "--steps", 2, "--batch-size", 2,
            "--segment-frames", 16, "--device", "cpu"]
    r = _invoke(*args)
    assert r.exit_code == 0, r.output
    base, tuned = load_model(prior_run / "model.safetensors"), load_model(out / "model.safetensors")
    assert tuned.config == base.config  # its own statistics and styles are kept
    assert read_metadata(out / "model.safetensors").user["step"] == "2"
    r = _invoke(*args[:-8], "--steps", 3, "--batch-size", 2, "--segment-frames", 16,
                "--device", "cpu", "--resume")
    assert r.exit_code == 0, r.output
    assert read_metadata(out / "model.safetensors").user["step"] == "3"
    # --part both from a folder holding prior/ and vocoder.safetensors
    start = tmp_path / "start"
    start.mkdir()
    shutil.copytree(prior_run, start / "prior")
    shutil.copy(voc, start / "vocoder.safetensors")
    both = tmp_path / "ft-both"
    r = _invoke("finetune", "music", "--part", "both", "--from", start, "--data", music_set,
                "--out", both, "--steps", 1, "--batch-size", 2, "--segment-frames", 16,
                "--segment", 2048, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert read_metadata(both / "prior" / "model.safetensors").model == "mel-prior"
    assert read_metadata(both / "vocoder" / "model.safetensors").model == "waveglow"
    # one-line errors: a vocoder given as the prior, a --from folder without a vocoder
    for bad, words in ((["--part", "prior", "--from", voc], "waveglow"),
                       (["--part", "both", "--from", prior_run], "needs both")):
        r = _invoke("finetune", "music", *bad, "--data", music_set, "--out", tmp_path / "x",
                    "--steps", 1, "--device", "cpu")
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and words in lines[0], r.output
    assert not (tmp_path / "x").exists()


def test_context_noise_is_seeded_and_samples_stay_above_the_log_floor():
    """With context noise the past the GRU reads is blurred in training and sampling alike:
    training losses differ from the clean model's, sampling stays reproducible from the seed,
    and no sampled log-mel value lies below log(CLAMP), the floor of the front end."""
    from flowsuite.musicflow.mel import CLAMP

    clean, noisy = _tiny(), _tiny(context_noise=0.5)
    assert noisy.config["context_noise"] == 0.5
    with torch.no_grad():  # off the identity start, so the context matters
        for p in clean.parameters():
            p.add_(0.2 * torch.randn_like(p))
    noisy.load_state_dict(clean.state_dict())
    mel = torch.randn(2, 8, 6)
    clean.train(), noisy.train()
    torch.manual_seed(1)
    a = clean(mel)["loss"]
    torch.manual_seed(1)
    b = noisy(mel)["loss"]
    assert not torch.allclose(a, b)
    noisy.eval()
    with torch.no_grad():  # log_prob reads a clean past: deterministic
        assert torch.equal(noisy.log_prob(mel), noisy.log_prob(mel))
    s1 = noisy.sample(20, temperature=1.0, seed=5)
    s2 = noisy.sample(20, temperature=1.0, seed=5)
    assert torch.equal(s1, s2)
    assert not torch.equal(s1, clean.eval().sample(20, temperature=1.0, seed=5))
    # a model whose statistics put the floor inside the sampled range is clamped to it
    low = _tiny(mean=[-11.0] * 8, std=[1.0] * 8).eval()
    out = low.sample(40, temperature=1.0, seed=0)
    assert out.min() >= math.log(CLAMP) - 1e-5
    with pytest.raises(ValueError):
        MelPrior(n_mel=8, context_noise=-1.0)


def _evaluates_and_samples_as(model: MelPrior, plain: MelPrior, mel: torch.Tensor) -> None:
    """A training-only option: in eval mode ``model`` scores and samples exactly as ``plain``,
    the same weights without it."""
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model.log_prob(mel), plain.log_prob(mel))
        assert torch.equal(model.sample(8, seed=2), plain.sample(8, seed=2))


def _plain_and(**option) -> tuple[MelPrior, MelPrior]:
    """A tiny mixture prior off the identity, and the same weights with a training option."""
    plain = _off_identity(_tiny(styles=["a"], mixture=3), 0.1)
    model = MelPrior(**{**plain.config, **option})
    model.load_state_dict(plain.state_dict())
    assert all(model.config[k] == v for k, v in option.items())
    return plain, model


def _trains_apart_but_evaluates_as(model: MelPrior, plain: MelPrior, mel: torch.Tensor) -> None:
    """A training-only option that changes what the GRU reads: at one seed its training loss is
    finite and differs from ``plain``'s (the same weights without it), gradients reach the GRU,
    and in eval mode it scores and samples exactly as ``plain``."""
    model.train(), plain.train()
    torch.manual_seed(3)
    loss = model(mel)["loss"]
    loss.backward()
    assert model.rnn.weight_ih_l0.grad is not None
    torch.manual_seed(3)
    assert torch.isfinite(loss) and not torch.allclose(loss.detach(), plain(mel)["loss"])
    _evaluates_and_samples_as(model, plain, mel)


@pytest.mark.parametrize("mixture", [0, 3])
def test_self_feed_reads_the_models_own_one_step_samples_in_training(mixture, monkeypatch):
    """Scheduled sampling: with ``self_feed=1`` every past step the GRU reads in training is
    the model's sample of that step drawn from the context of the true steps before it (so the
    contexts handed to the sampler are the teacher-forced ones), lifted to the log floor; the
    likelihood is still of the true steps, gradients reach the weights, and evaluation and
    sampling are those of the same weights without it."""
    plain = _tiny(styles=["a"], mixture=mixture)
    with torch.no_grad():  # off the identity start, so the past matters
        for p in plain.parameters():
            p.add_(0.2 * torch.randn_like(p))
    fed = MelPrior(**{**plain.config, "self_feed": 1.0})
    fed.load_state_dict(plain.state_dict())
    assert fed.config["self_feed"] == 1.0
    mel = torch.randn(3, 8, 10)
    style = torch.tensor([0, -1, 0])
    steps = plain.to_steps(plain.normalise(mel))
    with torch.no_grad():
        inputs = torch.cat([plain.start.expand(3, 1, plain.features), steps[:, :-1]], 1)
        want_ctx = plain._context(plain.rnn(inputs)[0], style)[:, :-1].reshape(3 * 4, -1)
    seen = []
    drawn = torch.randn(3 * 4, plain.features) - 11.0  # some below the floor, log(1e-5)
    real_sample = MelPrior.sample_step

    def sample_step(self, context, temperature=0.9, generator=None):
        seen.append((context.clone(), temperature))
        return drawn.clone(), torch.zeros(context.shape[0])

    monkeypatch.setattr(MelPrior, "sample_step", sample_step)
    fed.train()
    fed.noise = 0.0  # the same steps as above
    past = fed._self_fed(steps, style)
    (ctx, temp), = seen
    assert temp == 1.0 and torch.allclose(ctx, want_ctx, atol=1e-6)
    lifted = torch.maximum(drawn, plain._floor_step()).view(3, 4, -1)
    assert torch.equal(past, lifted)
    assert bool((drawn < plain._floor_step()).any())
    monkeypatch.setattr(MelPrior, "sample_step", real_sample)

    # the loss: the true steps' likelihood given the self-fed past, with gradients
    plain.train()
    plain.noise = 0.0
    torch.manual_seed(3)
    loss_fed = fed(mel)["loss"]
    loss_fed.backward()
    assert fed.rnn.weight_ih_l0.grad is not None and fed.start.grad is not None
    torch.manual_seed(3)
    assert not torch.allclose(loss_fed.detach(), plain(mel)["loss"])
    # half the steps: reproducible from the seed, and between teacher forcing and full feeding
    fed.self_feed = 0.5
    torch.manual_seed(4)
    a = fed(mel)["loss"]
    torch.manual_seed(4)
    assert torch.equal(a, fed(mel)["loss"])
    _evaluates_and_samples_as(fed, plain, mel)
    with pytest.raises(ValueError, match="self_feed"):
        _tiny(self_feed=1.5)


def test_context_smear_blends_the_past_with_its_band_average_in_training_only():
    """``context_smear``: in training the GRU reads each sequence's past blended, by a share
    drawn from ``[0, context_smear]``, with each frame's 3-band moving average (edge bands
    repeated) shifted so that its maximum is the frame's own; the likelihood is still of the
    true steps, and evaluation and sampling are those of the same weights without it."""
    plain, smeared = _plain_and(context_smear=0.8)
    steps = torch.randn(3, 4, smeared.features)
    torch.manual_seed(7)
    share = torch.rand(3, 1, 1) * 0.8
    bands = steps.view(3, 4, smeared.block, 8)
    padded = torch.cat([bands[..., :1], bands, bands[..., -1:]], dim=-1)
    average = (padded[..., :-2] + padded[..., 1:-1] + padded[..., 2:]) / 3
    average = average + bands.max(-1, keepdim=True).values - average.max(-1, keepdim=True).values
    want = steps + share * (average.reshape(3, 4, -1) - steps)
    torch.manual_seed(7)
    assert torch.allclose(smeared._smeared(steps), want, atol=1e-6)
    assert torch.equal(plain._smeared(steps), steps)  # 0: the past as it is
    # one spike of 3 in band 1 of 8: the average spreads it evenly over bands 0-2 (band 0 reads
    # itself twice at the edge), 1 each, and the shift lifts the frame by 2 to keep the peak
    one = MelPrior(**{**plain.config, "context_smear": 1.0})
    flat = torch.zeros(1, 1, one.features)
    flat[0, 0, 1] = 3.0
    torch.manual_seed(0)
    share_one = float(torch.rand(1))
    torch.manual_seed(0)
    got = one._smeared(flat)[0, 0, :8]
    assert torch.allclose(got, share_one * torch.tensor([3.0, 3, 3, 2, 2, 2, 2, 2]) +
                          (1 - share_one) * torch.tensor([0.0, 3, 0, 0, 0, 0, 0, 0]), atol=1e-6)

    _trains_apart_but_evaluates_as(smeared, plain, torch.randn(3, 8, 10))
    with pytest.raises(ValueError, match="context_smear"):
        _tiny(context_smear=1.5)


def test_context_blank_replaces_the_past_of_a_share_of_sequences_by_noise_in_training_only():
    """``context_blank``: in training a share of the sequences, drawn per sequence, read a past
    of standard normal noise in place of their true steps (the others read it untouched); the
    likelihood is still of the true steps, and evaluation and sampling are those of the same
    weights without it."""
    plain, blank = _plain_and(context_blank=0.5)
    steps = torch.randn(64, 4, blank.features)
    torch.manual_seed(5)
    rows = torch.rand(64, 1, 1) < 0.5
    noise = torch.randn_like(steps)
    torch.manual_seed(5)
    got = blank._blanked(steps)
    assert torch.equal(got, torch.where(rows, noise, steps))
    kept = (got == steps).all(-1).all(-1)
    assert 16 < int(kept.sum()) < 48 and bool((~kept == rows.view(-1)).all())
    assert torch.equal(plain._blanked(steps), steps)  # 0: the past as it is
    one = MelPrior(**{**plain.config, "context_blank": 1.0})
    assert not (one._blanked(steps) == steps).any()

    _trains_apart_but_evaluates_as(blank, plain, torch.randn(3, 8, 10))
    with pytest.raises(ValueError, match="context_blank"):
        _tiny(context_blank=-0.1)


@pytest.mark.parametrize("carry", [False, True])
def test_rollout_states_have_read_the_models_own_last_steps(carry, monkeypatch):
    """With ``rollout=2`` the state that predicts step s has read the true steps before s - 2,
    then the first draw for s - 2 and the second draw for s - 1 (each drawn from the state
    before it), exactly as a sequential GRU over that past; for a carry prior the step before
    is the second draw. The loss is the likelihood of the true steps, with gradients."""
    model = _off_identity(_tiny(styles=["a"], mixture=3, carry=carry, rollout=2), 0.05)
    model.train()
    model.noise = 0.0
    mel = torch.randn(2, 8, 10)
    style = torch.tensor([0, -1])
    steps = model.to_steps(model.normalise(mel))  # (2, 5, 16)
    draws = [torch.randn(2 * 4, 16) - 11.0, torch.randn(2 * 4, 16)]  # the first partly floored
    calls = []

    def sample_step(self, context, temperature=0.9, generator=None):
        calls.append(temperature)
        return draws[len(calls) - 1].clone(), torch.zeros(context.shape[0])

    monkeypatch.setattr(MelPrior, "sample_step", sample_step)
    with torch.no_grad():
        out, _ = model.rnn(torch.cat([model.start.expand(2, 1, 16), steps[:, :-1]], 1))
        rolled, prev = model._rolled_out(out, model._previous(steps[:, :-1]), style)
    assert calls == [1.0, 1.0]
    d1 = torch.maximum(draws[0], model._floor_step()).view(2, 4, 16)
    d2 = draws[1].view(2, 4, 16)
    for s in range(5):
        if s == 0:
            seq = model.start.expand(2, 1, 16)
        elif s == 1:  # one step back: only the second draw (from the start state)
            seq = torch.cat([model.start.expand(2, 1, 16), d2[:, :1]], 1)
        else:
            seq = torch.cat([model.start.expand(2, 1, 16), steps[:, :s - 2],
                             d1[:, s - 2:s - 1], d2[:, s - 1:s]], 1)
        with torch.no_grad():
            want, _ = model.rnn(seq)
        torch.testing.assert_close(rolled[:, s], want[:, -1], rtol=1e-5, atol=1e-5)
    assert torch.equal(prev[:, 0], torch.zeros(2, 16)) and torch.equal(prev[:, 1:], d2)
    monkeypatch.undo()
    loss = model(mel)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and model.rnn.weight_hh_l0.grad.abs().sum() > 0
    model.eval()
    plain = MelPrior(**{**model.config, "rollout": 0})
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model.log_prob(mel, "a"), plain.eval().log_prob(mel, "a"))
    with pytest.raises(ValueError, match="rollout"):
        _tiny(rollout=2, rnn_layers=2)
    with pytest.raises(ValueError, match="rollout"):
        _tiny(rollout=2, self_feed=0.5)


def test_rollout_share_rolls_out_a_random_share_of_the_batch(monkeypatch):
    """``rollout_share`` picks the sequences of each batch that train on rollouts (a fresh draw
    per batch); the rest keep their teacher-forced states. 0 is teacher forcing."""
    base = _off_identity(_tiny(styles=["a"], mixture=3), 0.05)
    mel = torch.randn(6, 8, 10)

    def made(**kw):
        m = MelPrior(**{**base.config, **kw})
        m.load_state_dict(base.state_dict())
        m.train()
        m.noise = 0.0
        return m

    forced_model, none = made(), made(rollout=2, rollout_share=0.0)
    torch.manual_seed(0)
    forced = forced_model(mel)["loss"]
    torch.manual_seed(0)
    assert torch.equal(none(mel)["loss"], forced)
    seen = []
    real = MelPrior._rolled_out

    def spy(self, out, prev, style):  # halves the states of the rows it is given
        seen.append((out.shape[0], style.clone()))
        return out * 0.5, prev

    monkeypatch.setattr(MelPrior, "_rolled_out", spy)
    half_model = made(rollout=2, rollout_share=0.5)
    x, style = half_model.normalise(mel), torch.zeros(6, dtype=torch.long)
    torch.manual_seed(1)
    chosen = torch.rand(6) < 0.5
    torch.manual_seed(1)
    half = half_model._log_prob_normalised(x, style)
    with torch.no_grad():
        per_row = forced_model._log_prob_normalised(x, style)
        steps = forced_model.to_steps(x)
        ctx = forced_model.teacher_forced_context(steps, style)
        ctx[chosen, :, :12] *= 0.5  # the GRU part of the chosen rows' contexts, as the spy does
        want = forced_model.step_log_prob(steps.reshape(30, -1), ctx.reshape(30, -1))
    assert 0 < int(chosen.sum()) < 6 and seen[0][0] == int(chosen.sum())
    assert torch.equal(half[~chosen], per_row[~chosen])
    torch.testing.assert_close(half, want.view(6, 5).sum(1))
    assert not torch.isclose(half[chosen], per_row[chosen]).any()
    monkeypatch.setattr(MelPrior, "_rolled_out", real)
    model = made(rollout=2, rollout_share=0.5)
    loss = model(mel)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and model.rnn.weight_hh_l0.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="rollout_share"):
        _tiny(rollout=2, rollout_share=1.5)


def test_self_feed_waits_for_the_actnorm_initialisation():
    """A fresh model's first training batch initialises ActNorm by a forward pass; self-feeding
    would sample through it first, so that batch is teacher-forced."""
    torch.manual_seed(0)
    model = MelPrior(n_mel=8, block=2, hidden=12, n_flows=2, flow_hidden=[16], style_dim=3,
                     self_feed=1.0).train()
    assert not model._flow_ready()
    loss = model(torch.randn(4, 8, 6))["loss"]
    assert torch.isfinite(loss) and model._flow_ready()
    assert torch.isfinite(model(torch.randn(4, 8, 6))["loss"])


def test_gen_music_and_the_api_sample_at_the_measured_default_temperature(models, tmp_path,
                                                                          monkeypatch):
    """0.7, not 0.5: see DEFAULT_TEMPERATURE. The command, the API and the prior agree."""
    from flowsuite.musicflow import prior as prior_module
    from flowsuite.musicflow.generator import MusicGenerator

    assert prior_module.DEFAULT_TEMPERATURE == 0.7
    seen = _spy_step_temperatures(monkeypatch)
    run, _ = models
    r = _invoke("music", "--seconds", 1, "--model", run, "--vocoder", "griffin-lim",
                "--out", tmp_path / "a.wav", "--device", "cpu")
    assert r.exit_code == 0, r.output
    n = len(seen)
    MusicGenerator.from_pretrained(run / "model.safetensors", "griffin-lim").generate(1.0)
    assert n > 0 and len(seen) == 2 * n and set(seen) == {0.7}


def _spy_step_temperatures(monkeypatch) -> list:
    """The temperature each ``MelPrior.step`` draws at (per sample where they differ)."""
    seen = []
    real = MelPrior.step

    def spy(self, state, temperature=None, generator=None):
        t = state.temperature if temperature is None else temperature
        seen.extend(t.tolist() if isinstance(t, torch.Tensor) else [t])
        return real(self, state, temperature, generator)

    monkeypatch.setattr(MelPrior, "step", spy)
    return seen


def test_a_style_named_in_temperatures_samples_at_its_own():
    """``temperatures``: a sample drawn without a temperature takes its style's, or
    DEFAULT_TEMPERATURE; a batch of mixed styles draws each row at its own; an explicit
    temperature wins; the config keeps them; names outside the styles are refused."""
    torch.manual_seed(0)
    m = MelPrior.from_preset("tiny", styles=["a", "b"], mixture=2, temperatures={"a": 1.3})
    assert torch.equal(m.sample(8, style="a", seed=3), m.sample(8, style="a", temperature=1.3,
                                                                 seed=3))
    assert torch.equal(m.sample(8, style="b", seed=3), m.sample(8, style="b", temperature=0.7,
                                                                 seed=3))
    assert not torch.equal(m.sample(8, style="a", seed=3), m.sample(8, style="a", seed=3,
                                                                     temperature=0.7))
    assert m.temperature_of(torch.tensor([1, 1, -1])) == 0.7
    assert torch.equal(m.temperature_of(torch.tensor([0, 1, -1])), torch.tensor([1.3, 0.7, 0.7]))
    # per row: each row of a mixed draw is what that row's temperature alone gives
    ctx = torch.randn(2, 16 + 4)
    mixed, _ = m.sample_step(ctx, torch.tensor([1.3, 0.7]), torch.Generator().manual_seed(5))
    hot, _ = m.sample_step(ctx, 1.3, torch.Generator().manual_seed(5))
    cool, _ = m.sample_step(ctx, 0.7, torch.Generator().manual_seed(5))
    torch.testing.assert_close(mixed, torch.stack([hot[0], cool[1]]))
    plain = MelPrior.from_preset("tiny", styles=["a", "b"], temperatures={"b": 0.2})
    mixed, _ = plain.sample_step(ctx, torch.tensor([0.2, 1.0]), torch.Generator().manual_seed(5))
    cold, _ = plain.sample_step(ctx, 0.2, torch.Generator().manual_seed(5))
    warm, _ = plain.sample_step(ctx, 1.0, torch.Generator().manual_seed(5))
    torch.testing.assert_close(mixed, torch.stack([cold[0], warm[1]]))
    assert MelPrior(**m.config).temperatures == {"a": 1.3}
    with pytest.raises(ValueError, match="does not know: c"):
        MelPrior.from_preset("tiny", styles=["a"], temperatures={"c": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        MelPrior.from_preset("tiny", styles=["a"], temperatures={"a": -1.0})


def test_gated_prior_draws_mixed_style_temperatures_with_onset_choices():
    """A batch of random styles with per-style temperatures through the onset gate and the
    choice among onset draws (each row's temperature follows it into the choice)."""
    torch.manual_seed(0)
    m = MelPrior.from_preset("tiny", styles=["a", "b"], mixture=2, onset_gate=True,
                             temperatures={"a": 1.0, "b": 0.5})
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
        last = [x for x in m.gate.modules() if isinstance(x, torch.nn.Linear)][-1]
        last.bias.fill_(2.0)  # open often: onsets to choose among
    mel = m.sample(24, seed=1, batch=6, onset_temperature=None, onset_choices=3)
    assert mel.shape == (6, 80, 24) and torch.isfinite(mel).all()
    state = m.initial_state(4, None, generator=torch.Generator().manual_seed(2))
    assert torch.equal(state.temperature, torch.tensor([1.0, 0.5])[state.style])
    x, _, after = m.step(state, generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(x).all() and torch.equal(after.temperature, state.temperature)
    # onset steps at the sampling temperature, chosen among 3: each row's own follows it
    import dataclasses
    own = dataclasses.replace(after, onset_temperature=None, onset_choices=3)
    for _ in range(4):
        x, _, own = m.step(own, generator=torch.Generator().manual_seed(3))
        assert torch.isfinite(x).all()


def test_gen_music_draws_the_style_temperature_the_model_names(models, music_set, tmp_path,
                                                               monkeypatch):
    """`gen music --style S` without --temperature draws at S's temperature where the model
    names one; --temperature overrides it; `gen eval music` records what it drew at."""
    run, _ = models
    prior = load_model(run / "model.safetensors", expected="mel-prior")
    named = MelPrior.from_trained(prior, temperatures={"folk": 1.1})
    save_model(named, tmp_path / "named.safetensors")
    seen = _spy_step_temperatures(monkeypatch)
    common = ("--seconds", 1, "--model", tmp_path / "named.safetensors", "--vocoder",
              "griffin-lim", "--device", "cpu")
    r = _invoke("music", *common, "--style", "folk", "--out", tmp_path / "a.wav")
    assert r.exit_code == 0, r.output
    assert set(seen) == {1.1}
    seen.clear()
    r = _invoke("music", *common, "--style", "folk", "--temperature", 0.4,
                "--out", tmp_path / "b.wav")
    assert r.exit_code == 0, r.output
    assert set(seen) == {0.4}
    seen.clear()
    r = _invoke("music", *common, "--style", "chorale", "--out", tmp_path / "c.wav")
    assert r.exit_code == 0, r.output
    assert set(seen) == {0.7}
    seen.clear()
    js = tmp_path / "eval.json"
    r = _invoke("eval", "music", "--model", tmp_path / "named.safetensors", "--vocoder",
                "griffin-lim", "--data", music_set, "--count", 2, "--seconds", 1,
                "--device", "cpu", "--json", js)
    assert r.exit_code == 0, r.output
    res = json.loads(js.read_text())
    assert res["temperature"] == "by style" and res["style_temperatures"] == {"folk": 1.1}
    assert set(seen) <= {0.7, 1.1} and seen


def test_vocode_pads_a_short_mel_with_silence(models):
    """A mel of F frames gives F * hop samples; asking for more leaves silence, never whatever
    the memory held."""
    from flowsuite.musicflow.generator import MusicGenerator

    run, _ = models
    gen = MusicGenerator.from_pretrained(run / "model.safetensors", "griffin-lim")
    for _ in range(3):  # fresh buffers may be zero by luck; reused ones are not
        garbage = np.full(5000, 1e19, np.float32)
        del garbage
        audio = gen.vocode(torch.full((80, 10), -4.0), 10 * 256 + 300)
        assert np.all(audio[10 * 256:] == 0) and np.abs(audio).max() < 10


def test_griffin_lim_vocoder_streams_in_cross_faded_chunks():
    from flowsuite.musicflow.mel import GriffinLimVocoder

    voc = GriffinLimVocoder(iterations=4, overlap=4)
    mel = voc.mel(torch.from_numpy(_chords(1.0, [220, 330, 440], 0)))[None]
    whole = torch.cat(list(voc.stream(mel, seed=2, chunk_frames=None)), -1)
    direct = voc.mel.griffin_lim_from_mel(mel, 4, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(whole, direct)  # one chunk is plain Griffin-Lim
    pieces = list(voc.stream(mel, seed=2, chunk_frames=20))
    chunked = torch.cat(pieces, -1)
    assert chunked.shape == whole.shape and torch.isfinite(chunked).all()
    assert [p.shape[-1] for p in pieces[:-1]] == [20 * voc.hop] * (len(pieces) - 1)
    # the chunks follow the same mel: their log-mel error is close to the whole one's
    err = [float((voc.mel(a[0]) - mel[0]).abs().mean()) for a in (whole, chunked)]
    assert err[1] < 1.5 * err[0] + 0.1
    with pytest.raises(FlowsuiteError):
        next(voc.stream(torch.zeros(1, 7, 10)))


def test_gen_music_uses_griffin_lim_when_no_waveglow_ships(models, tmp_path, monkeypatch):
    from flowsuite.data import pretrained

    run, _ = models
    monkeypatch.setattr(pretrained, "MODELS_DIR", tmp_path / "empty")
    out = tmp_path / "gl.wav"
    r = _invoke("music", "--seconds", 1.2, "--model", run, "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "Griffin-Lim" in r.output
    y, rate = sf.read(out)
    assert rate == SR and len(y) == round(1.2 * SR) and np.isfinite(y).all()
    r = _invoke("music", "--seconds", 1, "--model", run, "--vocoder", "griffin-lim", "--out",
                tmp_path / "gl2.wav", "--device", "cpu")
    assert r.exit_code == 0 and "ships" not in r.output, r.output


def test_precision_reaches_the_trainer_of_every_music_part(models, music_set, tmp_path):
    """--precision bf16 / fp32 of `gen train prior|vocoder` and `gen finetune music` sets the
    trainer's autocast (config.json's bf16); the weights stay float32."""
    run, voc = models

    def bf16(folder: Path):
        return json.loads((folder / "config.json").read_text())["bf16"]

    r = _invoke("train", "prior", "--data", music_set, "--out", tmp_path / "p", "--init", run,
                "--steps", 1, "--batch-size", 2, "--segment-frames", 16, "--device", "cpu",
                "--precision", "bf16")
    assert r.exit_code == 0, r.output
    assert bf16(tmp_path / "p") is True
    model = load_model(tmp_path / "p" / "model.safetensors", expected="mel-prior")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    r = _invoke("train", "vocoder", "--data", music_set, "--out", tmp_path / "v", "--preset",
                "tiny", "--steps", 1, "--batch-size", 2, "--segment", 1024, "--device", "cpu",
                "--precision", "fp32")
    assert r.exit_code == 0, r.output
    assert bf16(tmp_path / "v") is False
    start = tmp_path / "start"
    start.mkdir()
    shutil.copy(run / "model.safetensors", start / "prior.safetensors")
    shutil.copy(voc, start / "vocoder.safetensors")
    r = _invoke("finetune", "music", "--part", "both", "--from", start, "--data", music_set,
                "--out", tmp_path / "both", "--steps", 1, "--batch-size", 2,
                "--segment-frames", 16, "--segment", 1024, "--device", "cpu",
                "--precision", "bf16")
    assert r.exit_code == 0, r.output
    assert bf16(tmp_path / "both" / "prior") is True and bf16(tmp_path / "both" / "vocoder") is True
