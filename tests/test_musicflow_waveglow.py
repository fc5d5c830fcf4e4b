"""WaveGlow: a real flow (exact inverse and log-determinant), its WaveNet conditioner, training,
synthesis in several precisions, chunked synthesis, the denoiser and input errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flowsuite.core import FlowsuiteError
from flowsuite.core.testing import check_inverse, check_logdet
from flowsuite.musicflow.mel import LOG_SILENCE, AudioShapeError
from flowsuite.musicflow.waveglow import PRESETS, WaveGlow
from flowsuite.musicflow.wavenet import WaveNet

HOP = 256
TINY = dict(n_flows=4, n_group=8, n_early_every=2, n_early_size=2, wn_layers=2, wn_channels=16,
            upsample="linear")


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are too small to gain from a second thread, and on a shared machine the
    idle OpenMP thread's spin-waiting slows every operation by up to ten times."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(seed: int = 0, scale: float = 0.0, **overrides) -> WaveGlow:
    """A small WaveGlow; ``scale > 0`` moves every weight off its (identity) initialisation."""
    torch.manual_seed(seed)
    model = WaveGlow(**{**TINY, **overrides})
    if scale:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def sines(batch: int, frames: int, seed: int) -> torch.Tensor:
    """Sines of random pitch, amplitude and phase: ``(batch, frames * 256)``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames * HOP) / 22050
    f0 = 200 + 1800 * torch.rand(batch, 1, generator=g)
    amp = 0.2 + 0.4 * torch.rand(batch, 1, generator=g)
    phase = 2 * math.pi * torch.rand(batch, 1, generator=g)
    return amp * torch.sin(2 * math.pi * f0 * t + phase)


def random_mel(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 80, frames, generator=g) - 4.0


@pytest.mark.parametrize("upsample", ["linear", "transposed"])
def test_bijection_is_exactly_invertible_with_the_right_logdet(upsample):
    model = tiny(scale=0.05, upsample=upsample).double()
    x = torch.randn(2, 1, 64, dtype=torch.float64) * 0.3
    ctx = torch.randn(2, model.upsample.channels, 64 // 8, dtype=torch.float64)
    check_inverse(model.bijection, x, ctx)
    check_logdet(model.bijection, x, ctx)
    z, _ = model.bijection(x, ctx)
    assert z.shape == (2, 8, 8)


def test_log_prob_is_the_flow_density_and_infer_inverts_it():
    model = tiny(scale=0.05).double()
    mel = random_mel(2, 3).double()
    audio = model.infer(mel, sigma=0.6, seed=3).double()
    with torch.no_grad():
        z, logdet = model.bijection(audio[:, None], model.upsample(mel))
        expected_z = model.latent_noise(2, 0, 3, seed=3).double() * 0.6
        assert torch.allclose(z, expected_z, atol=1e-6)
        lp = model.log_prob(audio, mel)
    gauss = -0.5 * (z ** 2).sum((1, 2)) - 0.5 * z[0].numel() * math.log(2 * math.pi)
    assert torch.allclose(lp, gauss + logdet)


def test_paper_preset_has_about_88m_parameters_and_compact_is_small():
    paper = WaveGlow.from_preset("paper")
    assert 87e6 < paper.num_parameters() < 89e6
    assert paper.receptive_field_frames > 90  # 12 couplings of 255 squeezed steps each side
    compact = WaveGlow.from_preset("compact")
    assert compact.num_parameters() < 3e6
    assert set(PRESETS) == {"paper", "compact"}


def test_config_is_json_and_rebuilds_the_same_model():
    model = tiny(scale=0.05)
    config = json.loads(json.dumps(model.config))
    twin = WaveGlow(**config)
    twin.load_state_dict(model.state_dict())
    audio = sines(2, 4, seed=0)
    with torch.no_grad():
        assert torch.allclose(twin.log_prob(audio), model.log_prob(audio))
    assert not any(k.startswith("mel.") for k in model.state_dict())  # derived, not saved


def test_wavenet_follows_the_conditioner_contract_and_its_receptive_field():
    net = WaveNet(3, 2 * 5, 7, layers=3, channels=8, kernel_size=3)
    x, ctx = torch.randn(2, 3, 40), torch.randn(2, 7, 40)
    out = net(x, ctx)
    assert out.shape == (2, 10, 40)
    assert torch.equal(out, torch.zeros_like(out))  # zero last layer: the coupling starts as id
    with torch.no_grad():
        net.end.weight.normal_()
    x.requires_grad_(True)
    net(x, ctx)[0, :, 20].sum().backward()
    reach = (x.grad[0].abs().sum(0) > 0).nonzero().flatten()
    hw = net.half_receptive_field
    assert hw == 7
    assert reach.min() == 20 - hw and reach.max() == 20 + hw  # non-causal, exactly its field
    assert not torch.allclose(net(x, ctx), net(x, ctx + 1))  # the mel enters the gates
    with pytest.raises(ValueError, match="context"):
        net(x)
    with pytest.raises(ValueError, match="aligned"):
        net(x, ctx[..., :-1])


def test_a_fresh_model_is_the_squeezed_audio_under_rotations():
    model = tiny()
    audio = sines(2, 4, seed=1)
    with torch.no_grad():
        lp = model.log_prob(audio)
    # Couplings start as the identity; the 1x1 convolutions start as rotations (|det| = 1).
    gauss = -0.5 * (audio ** 2).sum(-1) - 0.5 * audio.shape[-1] * math.log(2 * math.pi)
    assert torch.allclose(lp, gauss, rtol=1e-5)


def test_training_a_tiny_waveglow_on_sines_lowers_the_nll():
    model = tiny(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    audio = sines(4, 4, seed=0)
    batch = {"audio": audio, "mel": model.mel(audio)}
    losses = []
    for _ in range(100):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(out["nll_per_dim"]))
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, (first, last)
    held_out = sines(4, 8, seed=1)  # other pitches: the model learnt sines, not four clips
    with torch.no_grad():
        fresh = -tiny(seed=0).log_prob(held_out).mean() / held_out.shape[-1]
        trained = -model.log_prob(held_out).mean() / held_out.shape[-1]
    assert trained < fresh - 1.0, (float(fresh), float(trained))


def test_forward_accepts_audio_alone_and_pairs():
    model = tiny(scale=0.02)
    audio = sines(2, 3, seed=2)
    a = model({"audio": audio})["loss"]
    b = model((audio, model.mel(audio)))["loss"]
    c = model(audio)["loss"]
    assert torch.allclose(a, b) and torch.allclose(a, c)
    a.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_f_frames_give_f_hops_of_samples():
    model = tiny(scale=0.02)
    assert model.infer(random_mel(2, 5)).shape == (2, 5 * HOP)
    assert model.infer(random_mel(1, 7)[0]).shape == (7 * HOP,)


def test_sigma_and_seed():
    model = tiny(scale=0.05)
    mel = random_mel(1, 4)
    base = model.infer(mel, sigma=0.0, seed=1)
    assert torch.equal(base, model.infer(mel, sigma=0.0, seed=2))  # sigma 0: deterministic
    a = model.infer(mel, sigma=0.6, seed=1)
    assert torch.equal(a, model.infer(mel, sigma=0.6, seed=1))
    assert not torch.allclose(a, model.infer(mel, sigma=0.6, seed=2))
    assert not torch.allclose(a, base)


def test_noise_depends_on_the_position_only():
    model = tiny()
    whole = model.latent_noise(1, 0, 150, seed=5)  # crosses noise blocks of 64 frames
    steps = HOP // 8
    part = model.latent_noise(1, 60, 70, seed=5)
    assert torch.equal(part, whole[..., 60 * steps:130 * steps])


@pytest.mark.parametrize("dtype", ["float32", torch.bfloat16, torch.float16])
def test_inference_in_lower_precision_stays_close(dtype):
    model = tiny(scale=0.05)
    mel = random_mel(1, 6)
    ref = model.infer(mel, seed=0)
    out = model.infer(mel, seed=0, dtype=dtype)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    rel = float((out - ref).abs().max() / ref.abs().max())
    assert rel < (1e-6 if dtype == "float32" else 0.05), rel
    assert all(m.compute_dtype is None for m in model.modules() if isinstance(m, WaveNet))


@pytest.mark.parametrize("upsample", ["linear", "transposed"])
def test_chunked_synthesis_equals_whole_synthesis(upsample):
    model = tiny(scale=0.05, upsample=upsample, wn_layers=3)
    mel = random_mel(2, 23)
    whole = model.infer(mel, seed=4)
    for chunk in (5, 8):
        chunked = model.infer(mel, seed=4, chunk_frames=chunk)
        assert torch.allclose(chunked, whole, atol=1e-5), float((chunked - whole).abs().max())
    # Without context the chunk edges differ: the overlap is what makes them equal.
    cut = model.infer(mel, seed=4, chunk_frames=5, overlap_frames=0)
    assert float((cut - whole).abs().max()) > 1e-3
    pieces = list(model.stream(mel, seed=4, chunk_frames=8))
    assert [p.shape[-1] for p in pieces] == [8 * HOP, 8 * HOP, 7 * HOP]


def test_a_paused_stream_leaves_grad_mode_and_precision_alone():
    model = tiny(scale=0.05)
    stream = model.stream(random_mel(1, 12), chunk_frames=4, dtype=torch.bfloat16, denoise=0.05)
    first = next(stream)
    assert first.shape == (1, 4 * HOP)
    assert torch.is_grad_enabled()
    assert all(m.compute_dtype is None for m in model.modules() if isinstance(m, WaveNet))
    assert len(list(stream)) == 2


def test_chunked_denoised_synthesis_equals_whole():
    model = tiny(scale=0.05)
    mel = random_mel(1, 19)
    whole = model.infer(mel, seed=1, denoise=0.05)
    chunked = model.infer(mel, seed=1, denoise=0.05, chunk_frames=6)
    assert torch.allclose(chunked, whole, atol=1e-5)


def test_denoiser_strength_zero_is_the_identity_and_positive_removes_the_bias():
    model = tiny(scale=0.05)
    audio = model.infer(random_mel(2, 8), seed=0)
    assert torch.allclose(model.denoise(audio, 0.0), audio, atol=1e-5)
    silent = torch.full((1, 80, 32), LOG_SILENCE)
    bias_audio = model.infer(silent, sigma=0.0)
    assert float(bias_audio.abs().max()) > 1e-3  # the model's own hiss
    cleaned = model.denoise(bias_audio, 1.0)
    assert float(cleaned.square().mean()) < 0.3 * float(bias_audio.square().mean())
    with pytest.raises(ValueError, match="non-negative"):
        model.denoise(audio, -0.1)
    # Denoised synthesis differs from plain synthesis only by the removed bias.
    plain = model.infer(random_mel(1, 8), seed=0)
    assert not torch.allclose(model.infer(random_mel(1, 8), seed=0, denoise=0.1), plain)


def test_bad_inputs_are_clear_errors():
    model = tiny()
    with pytest.raises(AudioShapeError, match="has 64 bands but this model takes 80"):
        model.infer(torch.randn(1, 64, 10))
    with pytest.raises(FlowsuiteError, match="swapped"):
        model.infer(torch.randn(1, 10, 80))
    with pytest.raises(ValueError, match="NaN"):
        model.infer(torch.full((1, 80, 4), float("nan")))
    with pytest.raises(ValueError, match="floating-point"):
        model.infer(torch.zeros(1, 80, 4, dtype=torch.long))
    with pytest.raises(AudioShapeError, match="whole number"):
        model.log_prob(torch.randn(1, 1000))
    with pytest.raises(AudioShapeError, match="3 mel frames need 768 samples"):
        model.log_prob(torch.randn(1, 1024), random_mel(1, 3))
    with pytest.raises(ValueError, match="sigma"):
        model.infer(random_mel(1, 2), sigma=-1)
    with pytest.raises(ValueError, match="chunk_frames"):
        model.infer(random_mel(1, 2), chunk_frames=0)
    with pytest.raises(ValueError, match="seed"):
        model.infer(random_mel(1, 2), seed=-3)
    with pytest.raises(ValueError, match="unknown dtype"):
        model.infer(random_mel(1, 2), dtype="int8")
    with pytest.raises(ValueError, match="unknown preset"):
        WaveGlow.from_preset("huge")
    with pytest.raises(ValueError, match="multiple of n_group"):
        WaveGlow(**{**TINY, "n_group": 12})
    with pytest.raises(ValueError, match="fewer than 2"):
        WaveGlow(**{**TINY, "n_early_every": 1, "n_early_size": 3})
