"""The application models are registered: a checkpoint rebuilds them from the file alone."""

from __future__ import annotations

import pytest
import torch

from flowsuite.core import CheckpointError, load_model, save_model
from flowsuite.musicflow.waveglow import WaveGlow
from flowsuite.pointflow.model import PointFlowModel


def _tiny_waveglow() -> WaveGlow:
    return WaveGlow(n_mel=8, n_flows=2, n_group=4, n_early_every=1, n_early_size=1, wn_layers=2,
                    wn_channels=8, upsample="linear")


def test_pointflow_round_trip(tmp_path):
    torch.manual_seed(0)
    model = PointFlowModel(2, latent_dim=8, encoder_width=16, point_steps=2, point_hidden=(16,),
                           latent_steps=2, latent_hidden=(16,), category_dim=4)
    save_model(model, tmp_path / "pf.safetensors")
    rebuilt = load_model(tmp_path / "pf.safetensors", expected="pointflow")
    a = model.sample(1, count=2, points=64, seed=3)
    b = rebuilt.sample(1, count=2, points=64, seed=3)
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(CheckpointError, match="pointflow"):
        load_model(tmp_path / "pf.safetensors", expected="waveglow")


def test_waveglow_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _tiny_waveglow()
    save_model(model, tmp_path / "wg.safetensors")
    rebuilt = load_model(tmp_path / "wg.safetensors", expected="waveglow")
    audio = torch.randn(2, 256 * 4) * 0.1
    with torch.no_grad():
        assert torch.allclose(model.log_prob(audio), rebuilt.log_prob(audio), atol=1e-4)
