"""One process of the data-parallel test: run as ``torchrun --nproc_per_node 2 ddp_worker.py OUT``
(or as a plain script for the single-process reference). Each process trains, then writes its own
final weights to ``OUT/rank<r>.safetensors`` for the test to compare. ``FLOWSUITE_TEST_FLAT=1``
trains with flat parameters."""

from __future__ import annotations

import os
import sys

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

from flowsuite.core.trainer import TrainConfig, Trainer


class Regression(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, batch):
        x, y = batch
        err = (self.net(x).squeeze(-1) - y).pow(2)
        return {"loss": err.mean(), "max_err": err.max()}


def main(out: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(rank)  # a different initialisation on every rank: DDP must unify them
    model = Regression()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=g)
    y = 0.5 * x @ torch.tensor([1.0, -2.0, 0.5])
    config = TrainConfig(steps=40, batch_size=32, lr=0.05, warmup=4, val_every=20, ckpt_every=20,
                         log_every=10, ema_decay=0.9, progress=False, seed=3,
                         flat_parameters=os.environ.get("FLOWSUITE_TEST_FLAT") == "1")
    summary = Trainer(model, TensorDataset(x, y), config, val_set=TensorDataset(x[:50], y[:50]),
                      out_dir=os.path.join(out, "run")).fit()
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    weights["val_loss"] = torch.tensor(summary.last_val_loss)
    save_file(weights, os.path.join(out, f"rank{rank}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
