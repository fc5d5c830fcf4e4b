"""Element-wise monotone transforms whose parameters come from a network.

Couplings and autoregressive layers share them: the layer computes ``params`` with shape
``x.shape + (num_params,)`` and the transform maps each element of ``x`` with its own parameters.
``forward`` returns ``(y, log|dy/dx|)`` element-wise; the layer sums the log-derivatives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


class ElementwiseTransform:
    """A family of scalar bijections indexed by a parameter vector of length ``num_params``."""

    num_params: int

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def config(self) -> dict:
        raise NotImplementedError


class Affine(ElementwiseTransform):
    """``y = x * exp(s) + t`` with ``s = bound * tanh(raw / bound)``.

    The soft bound keeps the log-scale symmetric in ``[-bound, bound]`` and equal to ``raw`` near
    zero, so zero parameters are the identity.
    """

    num_params = 2

    def __init__(self, scale_bound: float = 3.0):
        self.scale_bound = float(scale_bound)

    def _shift_logscale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = params.unbind(-1)
        b = self.scale_bound
        return shift, torch.tanh(raw / b) * b

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        t, s = self._shift_logscale(params)
        return x * torch.exp(s) + t, s

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        t, s = self._shift_logscale(params)
        return (y - t) * torch.exp(-s), -s

    def config(self) -> dict:
        return {"kind": "affine", "scale_bound": self.scale_bound}


class Additive(ElementwiseTransform):
    """``y = x + t`` (volume preserving)."""

    num_params = 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x + params[..., 0], torch.zeros_like(x)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return y - params[..., 0], torch.zeros_like(y)

    def config(self) -> dict:
        return {"kind": "additive"}


class RationalQuadraticSpline(ElementwiseTransform):
    """Monotone rational-quadratic spline (Durkan et al., 2019) on ``[-bound, bound]`` with
    ``bins`` bins, and the identity outside.

    The boundary derivatives are 1 so the map is continuously differentiable across the edges.
    Zero parameters give equal bins and unit derivatives: the identity. Inputs are clamped before
    any arithmetic, so values far outside the interval never produce inf or NaN, in the output or
    in the gradient. No data-dependent branches: every element takes the same path.
    """

    def __init__(self, bins: int = 8, bound: float = 4.0, min_width: float = 1e-3,
                 min_height: float = 1e-3, min_derivative: float = 1e-3):
        if bins < 1:
            raise ValueError("a spline needs at least one bin")
        self.bins = int(bins)
        self.bound = float(bound)
        self.min_width = float(min_width)
        self.min_height = float(min_height)
        self.min_derivative = float(min_derivative)
        self.num_params = 3 * self.bins - 1
        # min_derivative + softplus(shift) == 1: zero parameters give unit derivatives.
        self._deriv_shift = math.log(math.expm1(1.0 - self.min_derivative))

    def config(self) -> dict:
        return {"kind": "spline", "bins": self.bins, "bound": self.bound}

    def _knots(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns knot x positions, knot y positions (each ``(..., K+1)``) and derivatives
        ``(..., K+1)``."""
        K, B = self.bins, self.bound
        uw, uh, ud = params.split((K, K, K - 1), dim=-1)
        w = self.min_width + (1 - self.min_width * K) * torch.softmax(uw, dim=-1)
        h = self.min_height + (1 - self.min_height * K) * torch.softmax(uh, dim=-1)
        pad = (1, 0)
        xk = F.pad(torch.cumsum(w, -1), pad) * (2 * B) - B
        yk = F.pad(torch.cumsum(h, -1), pad) * (2 * B) - B
        d = self.min_derivative + F.softplus(ud + self._deriv_shift)
        d = F.pad(d, (1, 1), value=1.0)
        return xk, yk, d

    @staticmethod
    def _bin_params(knots_in: Tensor, knots_out: Tensor, d: Tensor, v: Tensor):
        # Bin index by counting interior knots at or below v: branch-free and compile-friendly.
        idx = (v.unsqueeze(-1) >= knots_in[..., 1:-1]).sum(-1, keepdim=True)
        x0 = knots_in.gather(-1, idx).squeeze(-1)
        x1 = knots_in.gather(-1, idx + 1).squeeze(-1)
        y0 = knots_out.gather(-1, idx).squeeze(-1)
        y1 = knots_out.gather(-1, idx + 1).squeeze(-1)
        d0 = d.gather(-1, idx).squeeze(-1)
        d1 = d.gather(-1, idx + 1).squeeze(-1)
        return x0, x1 - x0, y0, y1 - y0, d0, d1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        xk, yk, d = self._knots(params)
        inside = (x > -self.bound) & (x < self.bound)
        xc = x.clamp(-self.bound, self.bound)
        x0, w, y0, h, d0, d1 = self._bin_params(xk, yk, d, xc)
        s = h / w
        theta = ((xc - x0) / w).clamp(0, 1)
        t1t = theta * (1 - theta)
        denom = s + (d0 + d1 - 2 * s) * t1t
        y = y0 + h * (s * theta * theta + d0 * t1t) / denom
        dnum = s * s * (d1 * theta * theta + 2 * s * t1t + d0 * (1 - theta) ** 2)
        logderiv = torch.log(dnum) - 2 * torch.log(denom)
        return torch.where(inside, y, x), torch.where(inside, logderiv, torch.zeros_like(x))

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        xk, yk, d = self._knots(params)
        inside = (y > -self.bound) & (y < self.bound)
        yc = y.clamp(-self.bound, self.bound)
        y0, h, x0, w, d0, d1 = self._bin_params(yk, xk, d, yc)
        s = h / w
        dy = yc - y0
        c2 = d0 + d1 - 2 * s
        a = h * (s - d0) + dy * c2
        b = h * d0 - dy * c2
        c = -s * dy
        disc = (b * b - 4 * a * c).clamp_min(0)
        # The numerically stable root of a*theta^2 + b*theta + c = 0 that lies in [0, 1].
        theta = ((2 * c) / (-b - torch.sqrt(disc))).clamp(0, 1)
        x = x0 + theta * w
        t1t = theta * (1 - theta)
        denom = s + c2 * t1t
        dnum = s * s * (d1 * theta * theta + 2 * s * t1t + d0 * (1 - theta) ** 2)
        logderiv = 2 * torch.log(denom) - torch.log(dnum)
        return torch.where(inside, x, y), torch.where(inside, logderiv, torch.zeros_like(y))


def make_transform(kind: str, **kwargs) -> ElementwiseTransform:
    """Builds an element-wise transform by name: ``"affine"``, ``"additive"`` or ``"spline"``."""
    kinds = {"affine": Affine, "additive": Additive, "spline": RationalQuadraticSpline}
    if kind not in kinds:
        raise ValueError(f"unknown element-wise transform {kind!r}; choose from {sorted(kinds)}")
    return kinds[kind](**kwargs)
