"""Preset flows and DensityModel: trained by the Trainer, rebuilt from the checkpoint alone."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from flowsuite.core import DensityModel, TrainConfig, Trainer, load_model
from flowsuite.core.testing import check_inverse, check_logdet


@pytest.mark.parametrize("preset", ["maf", "nsf", "realnvp"])
def test_presets_are_exact_flows(preset):
    torch.manual_seed(0)
    model = DensityModel(preset, features=3, steps=3, hidden=(16,), context_features=2).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    x, c = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    check_inverse(model.flow.bijection, x, c)
    check_logdet(model.flow.bijection, x, c)


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        DensityModel("glowish", features=2)


def test_trainer_fits_a_density_model_and_the_checkpoint_rebuilds_it(tmp_path):
    torch.manual_seed(0)
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
    data = torch.randn(2048, 2) @ torch.linalg.cholesky(cov).T
    model = DensityModel("maf", features=2, steps=2, hidden=(32,))
    config = TrainConfig(steps=300, batch_size=256, lr=1e-2, warmup=10, progress=False,
                         val_every=1000, ckpt_every=1000, log_every=50, ema_decay=0.9)
    Trainer(model, TensorDataset(data), config, out_dir=tmp_path / "run").fit()
    rebuilt = load_model(tmp_path / "run" / "model.safetensors", expected="density")
    assert isinstance(rebuilt, DensityModel) and rebuilt.config["preset"] == "maf"
    entropy = 0.5 * math.log(torch.linalg.det(2 * math.pi * math.e * cov).item())
    with torch.no_grad():
        nll = -rebuilt.log_prob(data).mean().item()
    assert abs(nll - entropy) < 0.08
    assert rebuilt.sample(5).shape == (5, 2)
