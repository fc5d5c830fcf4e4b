"""Base distributions of flows. Each gives ``log_prob(z) -> (B,)`` summed over every
non-batch dimension, and ``sample(n, shape=None, temperature=1.0)``; ``temperature`` scales the
standard deviation. The event shape is a default: point sets and audio may be sampled at any
size along their free dimensions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowsuite.core.conditioners import MLP

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


class ContextMixture(nn.Module):
    """A mixture of ``components`` diagonal normals over ``features`` whose weights, means and
    scales come from a context (an MLP): a base distribution that can put distinct kinds of
    outcome in distinct components instead of spreading one Gaussian over all of them (a held
    note or a new one in the mel prior; a chair's seat, legs and back in the point flow, which a
    single Gaussian pushed through a continuous flow joins with bridges of points).

    The last layer of the MLP starts at zero and each component's mean gets a small fixed-seed
    offset (``spread``): at initialisation the mixture is nearly ``N(0, I)``, so the weights of a
    flow trained on a standard normal base are a good start, and the components can move apart.
    Sampling draws the component from the untempered weights and scales only the deviation within
    it by the temperature, so a low temperature sharpens each component without ruling any out.

    ``z: (B, *S, features)`` (``S`` any extra positions, e.g. the ``N`` points of a cloud, which
    share their sample's mixture), ``context: (B, context_features)``.
    """

    def __init__(self, features: int, context_features: int, components: int,
                 hidden: Sequence[int] = (256,), scale_bound: float = 3.0, spread: float = 0.05):
        super().__init__()
        if components < 2:
            raise ValueError(f"a mixture needs at least 2 components, got {components}")
        self.features, self.components, self.scale_bound = features, components, scale_bound
        self.net = MLP(context_features, components * (2 * features + 1), hidden=hidden)
        offsets = torch.randn(components, features, generator=torch.Generator().manual_seed(0))
        self.loc = nn.Parameter(spread * offsets)

    def params(self, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log-weights ``(B, K)``, means ``(B, K, features)`` and log-scales ``(B, K, features)``
        (softly bounded to ``[-scale_bound, scale_bound]``)."""
        k, d = self.components, self.features
        out = self.net(context)
        logits, rest = out[:, :k], out[:, k:].unflatten(-1, (k, 2, d))
        log_scale = torch.tanh(rest[:, :, 1] / self.scale_bound) * self.scale_bound
        return torch.log_softmax(logits, -1), rest[:, :, 0] + self.loc, log_scale

    def log_prob(self, z: Tensor, context: Tensor) -> Tensor:
        """``log p(z | context)`` ``(B,)``, summed over the positions ``S``; float32 or wider."""
        dtype = torch.promote_types(z.dtype, torch.float32)
        logw, mean, log_scale = (t.to(dtype) for t in self.params(context))
        b, k, d = mean.shape
        extra = z.dim() - 2
        view = (b, *([1] * extra), k, d)
        u = (z.to(dtype).unsqueeze(-2) - mean.view(view)) * torch.exp(-log_scale).view(view)
        comp = -0.5 * (u * u).sum(-1) - (log_scale.sum(-1) + 0.5 * d * _LOG_2PI).view(view[:-1])
        lp = torch.logsumexp(logw.view(view[:-1]) + comp, dim=-1)
        return lp.reshape(b, -1).sum(-1)

    def sample(self, context: Tensor, temperature: float = 1.0,
               generator: torch.Generator | None = None, shape: Sequence[int] = ()) -> Tensor:
        """``z (B, *shape, features)``: for each position a component from its sample's weights,
        then that component's mean plus its scale times ``temperature`` times standard normal
        noise."""
        logw, mean, log_scale = self.params(context)
        b, k, d = mean.shape
        shape = tuple(int(s) for s in shape)
        n = math.prod(shape)
        pick = torch.multinomial(logw.exp(), n, replacement=True, generator=generator)
        eps = torch.randn(b, n, d, generator=generator, device=context.device, dtype=mean.dtype)
        return self._place(mean, log_scale, pick, eps, temperature).view(b, *shape, d)

    def sample_from_noise(self, context: Tensor, uniform: Tensor, normal: Tensor,
                          temperature: float = 1.0) -> Tensor:
        """A sample made from given noise, so that one draw serves several contexts (a smooth
        path between two shapes): ``uniform (B, *S)`` in ``[0, 1)`` picks the component by the
        inverse of the cumulative weights, ``normal (B, *S, features)`` is the deviation."""
        logw, mean, log_scale = self.params(context)
        b, k, d = mean.shape
        cdf = logw.exp().cumsum(-1)
        u = uniform.reshape(b, -1).to(cdf.dtype).contiguous()
        pick = torch.searchsorted(cdf, u, right=True).clamp_(max=k - 1)
        eps = normal.reshape(b, -1, d).to(mean.dtype)
        return self._place(mean, log_scale, pick, eps, temperature).view(normal.shape)

    @staticmethod
    def _place(mean: Tensor, log_scale: Tensor, pick: Tensor, eps: Tensor,
               temperature: float) -> Tensor:
        """``mean[pick] + exp(log_scale[pick]) * eps * temperature`` for picks ``(B, n)``."""
        index = pick.unsqueeze(-1).expand(-1, -1, mean.shape[-1])
        return (mean.gather(1, index)
                + torch.exp(log_scale.gather(1, index)) * eps * temperature)
