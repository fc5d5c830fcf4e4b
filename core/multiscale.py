"""Reshaping bijections for channels-first sequences: squeezing time into channels, and the
multi-scale split that lets part of the state leave the flow early (Dinh et al., 2017; WaveGlow's
early outputs)."""

from __future__ import annotations

import torch
from torch import Tensor

from flowsuite.core.bijection import Bijection, zero_logdet


class Squeeze(Bijection):
    """Folds groups of ``factor`` consecutive time steps into channels:
    ``(B, C, T) -> (B, C * factor, T // factor)``, with channel ``c * factor + j`` holding time
    ``t * factor + j`` of channel ``c``. For ``(B, 1, T)`` audio this is WaveGlow's grouping of
    samples. ``T`` must be a multiple of ``factor``. Volume preserving."""

    def __init__(self, factor: int = 2):
        super().__init__()
        if factor < 1:
            raise ValueError("the squeeze factor must be at least 1")
        self.factor = factor

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, t = x.shape
        if t % self.factor:
            raise ValueError(f"length {t} is not a multiple of the squeeze factor {self.factor}")
        z = x.reshape(b, c, t // self.factor, self.factor).transpose(2, 3)
        return z.reshape(b, c * self.factor, t // self.factor), zero_logdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, cf, t = z.shape
        c = cf // self.factor
        x = z.reshape(b, c, self.factor, t).transpose(2, 3)
        return x.reshape(b, c, t * self.factor), zero_logdet(z)


class EarlySplit(Bijection):
    """Lets the first ``leave`` features on ``dim`` go straight to the latent and passes the rest
    through ``then``: ``z = cat(x[:leave], then(x[leave:]))``. Nesting these gives a multi-scale
    flow whose later steps work on fewer features."""

    def __init__(self, leave: int, then: Bijection, dim: int = 1):
        super().__init__()
        if leave < 1:
            raise ValueError("at least one feature must leave")
        self.leave, self.then, self.dim = leave, then, dim

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n = x.shape[self.dim]
        if n <= self.leave:
            raise ValueError(f"{n} features on dim {self.dim}; {self.leave} cannot leave early")
        return x.split((self.leave, n - self.leave), dim=self.dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out, rest = self._split(x)
        rest, ld = self.then(rest, context)
        return torch.cat([out, rest], dim=self.dim), ld

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out, rest = self._split(z)
        rest, ld = self.then.inverse(rest, context)
        return torch.cat([out, rest], dim=self.dim), ld

