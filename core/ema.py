"""Exponential moving average of a model's weights."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """Keeps ``shadow``, a copy of a model whose floating-point parameters follow
    ``shadow = d * shadow + (1 - d) * model`` after every :meth:`update`; buffers (running
    statistics, initialisation flags) are copied as they are.

    The decay warms up as ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the
    average is not dominated by the random initial weights early in training.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), not {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        n = self.updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Moves the shadow weights toward ``model``'s (a model with the shadow's structure)."""
        weight = 1.0 - self.current_decay()
        self.updates += 1
        ema_float, src_float = [], []
        for e, p in zip(self.shadow.parameters(), model.parameters(), strict=True):
            if e.is_floating_point():
                ema_float.append(e)
                src_float.append(p.detach())
            else:
                e.copy_(p)
        if ema_float:
            torch._foreach_lerp_(ema_float, src_float, weight)
        for e, b in zip(self.shadow.buffers(), model.buffers(), strict=True):
            e.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        """The decay, update count and shadow weights (plain tensors)."""
        return {"decay": self.decay, "updates": self.updates,
                "weights": {k: v.detach().clone() for k, v in self.shadow.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.shadow.load_state_dict(state["weights"], strict=True)
