"""Is one category held back by its share of the training steps? Continue a trained point-cloud
model with that category's training shapes repeated W times in the train split (so a batch holds
it W / (W + K - 1) of the time among K categories), the same schedule as `gen train pointcloud
--init`, and write a run folder that `gen eval pointcloud --model RUN` scores.

    python bench/pointflow_category_weight.py --data shapes --category car --weight 3 \\
        --steps 6000 --seed 12 --out runs/pf-car3
    gen eval pointcloud --model runs/pf-car3 --data shapes --seed 0 --draws 4 --json OUT
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from flowsuite.cli.pointcloud_cmds import _load, finish_model, fit, open_sets
from flowsuite.pointflow.model import PointFlowModel


class _Repeated(torch.utils.data.Dataset):
    """``dataset`` with the items of ``indices`` appended (repeated); other attributes pass
    through."""

    def __init__(self, dataset, indices: np.ndarray):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[int(self.indices[i])]

    def __getattr__(self, name: str):
        return getattr(self.dataset, name)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="model to continue (default: shipped)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--weight", type=int, default=3, help="times the category's shapes appear")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--points-per-shape", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (a CPU with AMX)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)

    source = _load(a.model, "cpu")
    train_set, val_set = open_sets(a.data, source.categories, a.points_per_shape, a.seed,
                                   stats=source.stats)
    if a.category not in train_set.categories:
        p.error(f"--category {a.category} is not among {', '.join(train_set.categories)}")
    labels = np.array([train_set.category_of(i) for i in range(len(train_set))])
    extra = np.flatnonzero(labels == a.category)
    indices = np.concatenate([np.arange(len(train_set))] + [extra] * (a.weight - 1))
    print(f"{len(train_set)} training shapes -> {len(indices)} ({a.category} x{a.weight})")
    model = PointFlowModel.from_trained(source).train()
    fit(model, _Repeated(train_set, indices), val_set, a.out, steps=a.steps,
        batch_size=a.batch_size, lr=a.lr, device="cpu", seed=a.seed, resume=False,
        bf16=a.bf16 or None)
    print(finish_model(a.out, train_set.categories, train_set.stats))


if __name__ == "__main__":
    main()
