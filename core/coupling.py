"""Coupling layers: one part of the features passes unchanged and parametrises an element-wise
transform of the other part (Dinh et al., 2015, 2017; Durkan et al., 2019).

The coupling knows the element-wise transform; its conditioner knows the data (an MLP for vectors
and points, a WaveNet for audio). A conditioner is any module called as
``conditioner(x_identity, context)`` that returns ``num_params * transformed_features`` values
along ``dim``, laid out as ``num_params`` blocks of ``transformed_features``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from flowsuite.core.bijection import Bijection
from flowsuite.core.conditioners import MLP, ChannelMLP
from flowsuite.core.elementwise import (  # noqa: F401 (params_last, logdet_sum: re-exported)
    Additive,
    Affine,
    ElementwiseTransform,
    RationalQuadraticSpline,
    logdet_sum,
    params_last,
)

ConditionerFactory = Callable[[int, int], nn.Module]


def default_conditioner(dim: int, hidden: Sequence[int] = (64, 64), context_features: int = 0,
                        activation: str = "relu") -> ConditionerFactory:
    """A factory of MLP conditioners: over the last dimension for ``dim=-1``, over channels
    (1x1 convolutions) otherwise."""
    if dim not in (-1, 1):
        raise ValueError(f"no default conditioner for dim={dim}; pass one for this layout")
    cls = MLP if dim == -1 else ChannelMLP

    def make(in_features: int, out_features: int) -> nn.Module:
        return cls(in_features, out_features, hidden=hidden, context_features=context_features,
                   activation=activation)

    return make


class Coupling(Bijection):
    """A coupling layer with any element-wise transform.

    Args:
        features: size of ``dim``.
        transform: the element-wise transform of the changing part.
        conditioner: a module, or a factory ``(in_features, out_features) -> module``; ``None``
            builds an MLP with ``hidden`` units and ``context_features`` of context.
        dim: the feature dimension (``-1`` for vectors and points, ``1`` for ``(B, C, T)``).
        parity: 0 keeps the first ``split`` features and transforms the rest; 1 the reverse.
        split: how many features come first (default ``features // 2``).
    """

    def __init__(self, features: int, transform: ElementwiseTransform,
                 conditioner: nn.Module | ConditionerFactory | None = None, *, dim: int = -1,
                 parity: int = 0, split: int | None = None, hidden: Sequence[int] = (64, 64),
                 context_features: int = 0, activation: str = "relu"):
        super().__init__()
        if features < 2:
            raise ValueError("a coupling needs at least two features")
        split = features // 2 if split is None else split
        if not 0 < split < features:
            raise ValueError(f"split must lie in 1..{features - 1}, got {split}")
        self.features, self.dim, self.parity = features, dim, parity % 2
        self.sizes = (split, features - split)
        self.identity_features = self.sizes[self.parity]
        self.transformed_features = self.sizes[1 - self.parity]
        self.transform = transform
        if conditioner is None:
            conditioner = default_conditioner(dim, hidden, context_features, activation)
        if not isinstance(conditioner, nn.Module):
            conditioner = conditioner(self.identity_features,
                                      transform.num_params * self.transformed_features)
        self.conditioner = conditioner

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a, b = x.split(self.sizes, dim=self.dim)
        return (a, b) if self.parity == 0 else (b, a)

    def _join(self, ident: Tensor, changed: Tensor) -> Tensor:
        parts = (ident, changed) if self.parity == 0 else (changed, ident)
        return torch.cat(parts, dim=self.dim)

    def _params(self, ident: Tensor, context: Tensor | None, like: Tensor) -> Tensor:
        out = self.conditioner(ident, context)
        p = params_last(out, self.dim, self.transformed_features, self.transform.num_params)
        return p if p.dtype == like.dtype else p.to(like.dtype)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ident, changed = self._split(x)
        y, logdet = self.transform.forward_packed(changed, self.conditioner(ident, context),
                                                  self.dim)
        return self._join(ident, y), logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ident, changed = self._split(z)
        x, logderiv = self.transform.inverse(changed, self._params(ident, context, changed))
        return self._join(ident, x), logdet_sum(logderiv)


class AffineCoupling(Coupling):
    """``z_b = x_b * exp(s(x_a)) + t(x_a)`` with the log-scale softly bounded to
    ``[-scale_bound, scale_bound]``; the identity at initialisation."""

    def __init__(self, features: int, conditioner: nn.Module | ConditionerFactory | None = None,
                 *, scale_bound: float = 3.0, **kwargs):
        super().__init__(features, Affine(scale_bound), conditioner, **kwargs)


class AdditiveCoupling(Coupling):
    """``z_b = x_b + t(x_a)``: volume preserving (NICE)."""

    def __init__(self, features: int, conditioner: nn.Module | ConditionerFactory | None = None,
                 **kwargs):
        super().__init__(features, Additive(), conditioner, **kwargs)


class SplineCoupling(Coupling):
    """A rational-quadratic spline coupling (neural spline flow) on ``[-bound, bound]`` with
    ``bins`` bins, the identity outside the interval and at initialisation."""

    def __init__(self, features: int, conditioner: nn.Module | ConditionerFactory | None = None,
                 *, bins: int = 8, bound: float = 4.0, **kwargs):
        super().__init__(features, RationalQuadraticSpline(bins, bound), conditioner, **kwargs)
