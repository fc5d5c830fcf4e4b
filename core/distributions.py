"""Base distributions of flows. Each gives ``log_prob(z) -> (B,)`` summed over every
non-batch dimension, and ``sample(n, shape=None, temperature=1.0)``; ``temperature`` scales the
standard deviation. The event shape is a default: point sets and audio may be sampled at any
size along their free dimensions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

_LOG_2PI = math.log(2 * math.pi)


class Distribution(nn.Module):
    """A distribution over events of shape ``event_shape`` (a default for sampling)."""

    def __init__(self, event_shape: Sequence[int]):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, shape: Sequence[int] | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, dtype: torch.dtype | None = None
               ) -> Tensor:
        raise NotImplementedError

    def _noise(self, n: int, shape: Sequence[int] | None, generator: torch.Generator | None,
               dtype: torch.dtype | None) -> Tensor:
        shape = self.event_shape if shape is None else tuple(shape)
        return torch.randn((n, *shape), generator=generator, device=self._anchor.device,
                           dtype=dtype or torch.float32)


class StandardNormal(Distribution):
    """The standard normal distribution ``N(0, I)`` over events of ``event_shape``."""

    def __init__(self, *event_shape: int):
        super().__init__(event_shape)

    def log_prob(self, z: Tensor) -> Tensor:
        zf = z.reshape(z.shape[0], -1).to(torch.promote_types(z.dtype, torch.float32))
        return -0.5 * (zf * zf).sum(-1) - 0.5 * zf.shape[1] * _LOG_2PI

    def sample(self, n: int, shape: Sequence[int] | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, dtype: torch.dtype | None = None
               ) -> Tensor:
        return self._noise(n, shape, generator, dtype) * temperature


class DiagonalNormal(Distribution):
    """A normal distribution with a learned mean and standard deviation per feature on ``dim``,
    shared by every other position (so a point set may have any number of points)."""

    def __init__(self, *event_shape: int, dim: int = -1):
        super().__init__(event_shape)
        self.dim = dim
        features = self.event_shape[dim]
        self.loc = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))

    def _view(self, t: Tensor, ndim: int) -> Tensor:
        shape = [1] * ndim
        shape[self.dim if self.dim < 0 else self.dim + 1] = -1
        return t.view(shape)

    def log_prob(self, z: Tensor) -> Tensor:
        dtype = torch.promote_types(z.dtype, torch.float32)
        loc = self._view(self.loc, z.dim()).to(dtype)
        log_scale = self._view(self.log_scale, z.dim()).to(dtype)
        u = (z.to(dtype) - loc) * torch.exp(-log_scale)
        lp = -0.5 * u * u - log_scale - 0.5 * _LOG_2PI
        return lp.reshape(z.shape[0], -1).sum(-1)

    def sample(self, n: int, shape: Sequence[int] | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, dtype: torch.dtype | None = None
               ) -> Tensor:
        eps = self._noise(n, shape, generator, dtype)
        loc = self._view(self.loc, eps.dim()).to(eps.dtype)
        scale = self._view(torch.exp(self.log_scale), eps.dim()).to(eps.dtype)
        return loc + temperature * scale * eps
