"""Building blocks of the point-cloud model that core does not have (yet): a FiLM conditioner for
point couplings, the PointNet encoder, and the two flows (over points and over shape latents)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowsuite.core import (
    ActNorm,
    AffineCoupling,
    Bijection,
    Compose,
    InvertibleLinear,
    SplineCoupling,
)
from flowsuite.core.conditioners import broadcast_context, make_activation

POINT_KINDS = ("affine", "spline")


class FiLMConditioner(nn.Module):
    """An MLP over the last dimension whose every hidden layer is modulated by the context:
    ``h <- act(W h + b) * (1 + scale(c)) + shift(c)``.

    ``x: (B, ..., in_features)``, ``context: (B, C)`` -> ``(B, ..., out_features)``. The
    modulation is computed once per sample and broadcast over the points, so a shape latent
    costs nothing per point. The last layer starts at zero (the coupling starts as the identity).
    """

    def __init__(self, in_features: int, out_features: int, context_features: int,
                 hidden: Sequence[int] = (128, 128), activation: str = "relu"):
        super().__init__()
        hidden = list(hidden)
        if not hidden:
            raise ValueError("FiLMConditioner needs at least one hidden layer")
        dims = [in_features, *hidden]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:],
                                                                       strict=True))
        self.act = make_activation(activation)
        self.film = nn.Linear(context_features, 2 * sum(hidden))
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.hidden = hidden
        self.last = nn.Linear(hidden[-1], out_features)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if context is None:
            raise ValueError("FiLMConditioner needs a context")
        mods = broadcast_context(self.film(context), x, -1)
        scales, shifts = mods.split(sum(self.hidden), dim=-1)
        scales, shifts = scales.split(self.hidden, -1), shifts.split(self.hidden, -1)
        h = x
        for lin, s, t in zip(self.linears, scales, shifts, strict=True):
            h = torch.addcmul(t, self.act(lin(h)), 1 + s)
        return self.last(h)


def point_bijection(steps: int, hidden: Sequence[int], context_features: int, kind: str = "affine",
                    bins: int = 8, bound: float = 4.0, scale_bound: float = 3.0,
                    splines: int = 0) -> Compose:
    """The flow over points ``(B, N, 3)`` conditioned on ``(B, context_features)``.

    ``ActNorm`` standardises the coordinates; then ``steps`` couplings alternate between
    transforming two coordinates from the third (``split=1, parity=0``) and the third from the
    other two (``parity=1``), with a learned 3x3 ``InvertibleLinear`` before every pair so that
    the split axes rotate. ``splines`` more couplings of the rational-quadratic spline kind follow
    on the base side, in the same pattern: appended after the others, they keep the names of a
    flow without them, so a trained flow can be grown by them from the identity.
    """
    if kind not in POINT_KINDS:
        raise ValueError(f"point flow kind must be one of {POINT_KINDS}, got {kind!r}")

    def cond(a: int, b: int) -> nn.Module:
        return FiLMConditioner(a, b, context_features, hidden)

    layers: list[Bijection] = [ActNorm(3)]
    for i in range(steps + splines):
        if i % 2 == 0:
            layers.append(InvertibleLinear(3))
        if kind == "affine" and i < steps:
            layers.append(AffineCoupling(3, cond, split=1, parity=i % 2, scale_bound=scale_bound))
        else:
            layers.append(SplineCoupling(3, cond, split=1, parity=i % 2, bins=bins, bound=bound))
    return Compose(layers)


def latent_bijection(features: int, steps: int, hidden: Sequence[int],
                     context_features: int) -> Compose:
    """The flow over shape latents ``(B, features)`` conditioned on a category embedding.

    Affine couplings with a learned ``InvertibleLinear`` between them: both directions take one
    network pass per layer, so drawing a latent costs as little as scoring one. No ActNorm: its
    data-dependent start would read the scale of an untrained encoder's codes.
    """
    layers: list[Bijection] = []
    for i in range(steps):
        layers.append(InvertibleLinear(features))
        layers.append(AffineCoupling(features, parity=i % 2, hidden=tuple(hidden),
                                     context_features=context_features))
    return Compose(layers)


class PointNetEncoder(nn.Module):
    """PointNet: a shared per-point MLP, max- and mean-pooling over points, and an MLP head giving
    the mean and log-variance of a Gaussian posterior over the shape latent.

    ``points: (B, N, 3)`` -> ``(mean (B, D), logvar (B, D))``. Invariant to the order of points.
    """

    def __init__(self, latent_dim: int, width: int = 256):
        super().__init__()
        half = max(width // 2, 16)
        self.point_mlp = nn.Sequential(
            nn.Linear(3, half), nn.ReLU(),
            nn.Linear(half, half), nn.ReLU(),
            nn.Linear(half, width),
        )
        self.head = nn.Sequential(
            nn.Linear(2 * width, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, 2 * latent_dim),
        )
        # A narrow posterior at the start keeps the first reconstructions informative.
        with torch.no_grad():
            self.head[-1].bias[latent_dim:].fill_(-4.0)
            self.head[-1].weight[latent_dim:].mul_(0.1)

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        h = self.point_mlp(points)
        pooled = torch.cat([h.amax(1), h.mean(1)], dim=-1)
        mean, raw = self.head(pooled).chunk(2, dim=-1)
        logvar = 10.0 * torch.tanh(raw / 10.0)  # soft bound: variances in [e^-10, e^10]
        return mean, logvar
