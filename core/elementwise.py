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


def logdet_sum(logderiv: Tensor) -> Tensor:
    """Sums element-wise log-derivatives ``(B, ...)`` to ``(B,)`` in float32 or wider."""
    dims = tuple(range(1, logderiv.dim()))
    if logderiv.dtype in (torch.float32, torch.float64):
        return logderiv.sum(dims)
    return logderiv.sum(dims, dtype=torch.promote_types(logderiv.dtype, torch.float32))


def params_last(out: Tensor, dim: int, features: int, num_params: int) -> Tensor:
    """Turns a conditioner output with ``num_params * features`` entries on ``dim`` into the
    element-wise layout ``x.shape + (num_params,)`` where ``x`` has ``features`` on ``dim``."""
    d = dim % out.dim()
    return out.unflatten(d, (num_params, features)).movedim(d, -1)


class ElementwiseTransform:
    """A family of scalar bijections indexed by a parameter vector of length ``num_params``."""

    num_params: int

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward_packed(self, x: Tensor, out: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        """``forward`` with the parameters as a conditioner packs them: ``out`` holds
        ``num_params`` blocks of ``x.shape[dim]`` values on ``dim`` (all first parameters, then
        all second ones, ...). Returns ``y`` and the log-determinant summed per sample ``(B,)``
        in float32 or wider. A transform may fuse this path; the result is the same."""
        p = params_last(out, dim, x.shape[dim], self.num_params)
        y, logderiv = self.forward(x, p if p.dtype == x.dtype else p.to(x.dtype))
        return y, logdet_sum(logderiv)

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
        return shift, torch.tanh(raw * (1 / b)) * b

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        t, s = self._shift_logscale(params)
        return torch.addcmul(t, x, torch.exp(s)), s

    def forward_packed(self, x: Tensor, out: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        if torch.is_grad_enabled() and (x.requires_grad or out.requires_grad):
            return _AffinePacked.apply(x, out, dim, self.scale_bound)
        return _affine_packed(x, out, dim, self.scale_bound)[:2]

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        t, s = self._shift_logscale(params)
        return (y - t) * torch.exp(-s), -s

    def config(self) -> dict:
        return {"kind": "affine", "scale_bound": self.scale_bound}


def _affine_packed(x: Tensor, out: Tensor, dim: int, bound: float
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``Affine.forward`` on packed parameters: ``(y, logdet, tanh(raw / bound), exp(s))``."""
    f = x.shape[dim]
    th = torch.tanh(out.narrow(dim, f, f) * (1 / bound))
    s = th * bound
    e = torch.exp(s)
    return torch.addcmul(out.narrow(dim, 0, f), x, e), logdet_sum(s), th, e


class _AffinePacked(torch.autograd.Function):
    """The affine transform and its log-determinant as one autograd node with a hand-written
    backward: on a CPU a small layer's eight element-wise nodes (views, unbind, bound, exp,
    product, sum) cost more in autograd's bookkeeping than in arithmetic. First derivatives only
    (double backward raises)."""

    @staticmethod
    def forward(ctx, x: Tensor, out: Tensor, dim: int, bound: float) -> tuple[Tensor, Tensor]:
        y, logdet, th, e = _affine_packed(x, out, dim, bound)
        ctx.save_for_backward(x, th, e)
        ctx.dim = dim
        return y, logdet

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: Tensor, glogdet: Tensor) -> tuple[Tensor | None, Tensor, None, None]:
        x, th, e = ctx.saved_tensors
        gx, gout = _affine_packed_backward(x, th, e, gy, glogdet, ctx.dim)
        return gx if ctx.needs_input_grad[0] else None, gout, None, None


def _affine_packed_backward(x: Tensor, th: Tensor, e: Tensor, gy: Tensor, glogdet: Tensor,
                            dim: int) -> tuple[Tensor, Tensor]:
    """The gradients of ``_affine_packed``'s ``(y, logdet)`` for ``x`` (through ``y`` only) and
    for the packed parameters, from the ``th`` and ``e`` that it returned."""
    gx = gy * e
    # d logdet / d s = 1 for every element of a sample; ds / draw = 1 - tanh^2.
    gs = torch.addcmul(glogdet.reshape((-1,) + (1,) * (x.dim() - 1)).to(x.dtype), gx, x)
    return gx, torch.cat([gy, gs - gs * th * th], dim)


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

    Half-precision inputs (bfloat16 activations under autocast, float16) are computed in float32
    and the result is cast back; the log-derivatives stay float32. bfloat16's 8-bit mantissa
    spaces numbers 1/64 apart near 4, so minimum-size bins of a half-precision knot table collapse
    to zero height, and a zero slope's logarithm turns the loss to inf.
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

    def _table(self, params: Tensor) -> Tensor:
        """The spline as one tensor ``(..., 3, K+1)``: knot x positions, knot y positions and
        the derivatives at the knots, so that a bin's values come out of a single gather.

        The widths and the heights go through one softmax and one cumulative sum together; the
        padded ``-B`` in front makes that sum the knot positions themselves.
        """
        K, B = self.bins, self.bound
        uwh, ud = params.split((2 * K, K - 1), dim=-1)
        uwh = uwh.unflatten(-1, (2, K))
        # softmax by hand: ATen's CPU softmax takes a slow scalar path for rows shorter than a
        # vector register (measured 2x slower, forward and backward, for K = 8). The shift
        # needs no gradient: softmax does not depend on it.
        e = torch.exp(uwh - uwh.detach().amax(-1, keepdim=True))
        # Bin sizes, scaled to the interval's length 2B: 2B (m + (1 - m K) softmax).
        m = torch.full((), self.min_width, dtype=e.dtype, device=e.device)
        if self.min_height != self.min_width:  # rare: one minimum per row
            m = torch.stack([m, torch.full_like(m, self.min_height)]).unsqueeze(-1)
        scale = 2 * B * (1 - m * K)
        sizes = torch.addcdiv(2 * B * m, e, e.sum(-1, keepdim=True) / scale)
        knots = torch.cumsum(F.pad(sizes, (1, 0), value=-B), dim=-1)
        d = F.pad(F.softplus(ud + self._deriv_shift) + self.min_derivative, (1, 1), value=1.0)
        return torch.cat([knots, d.unsqueeze(-2)], dim=-2)

    @staticmethod
    def _bin(table: Tensor, row: int, v: Tensor) -> tuple[Tensor, ...]:
        """The bin that holds ``v``, searched among the knots in ``table``'s ``row``: its left
        (x, y, derivative), its width, its height and its right derivative, each like ``v``."""
        # Bin index by counting interior knots at or below v: branch-free and compile-friendly.
        idx = (v.unsqueeze(-1) >= table[..., row, 1:-1]).sum(-1)
        pair = idx[..., None, None] + torch.arange(2, device=v.device)
        lo, hi = table.gather(-1, pair.expand(*idx.shape, 3, 2)).unbind(-1)
        x0, y0, d0 = lo.unbind(-1)
        x1, y1, d1 = hi.unbind(-1)
        return x0, x1 - x0, y0, y1 - y0, d0, d1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        xw, pw = _widened(x), _widened(params)
        if xw is not x or pw is not params:
            y, logderiv = self.forward(xw, pw)
            return y.to(x.dtype), logderiv
        inside = x.abs() < self.bound
        xc = x.clamp(-self.bound, self.bound)
        x0, w, y0, h, d0, d1 = self._bin(self._table(params), 0, xc)
        s = h / w
        theta = ((xc - x0) / w).clamp(0, 1)
        omt = 1 - theta
        t1t = theta * omt
        th2 = theta * theta
        denom = torch.addcmul(s, torch.sub(d0 + d1, s, alpha=2), t1t)
        y = torch.addcdiv(y0, h * torch.addcmul(s * th2, d0, t1t), denom)
        # log(s^2 (d1 theta^2 + 2 s t1t + d0 (1 - theta)^2) / denom^2), in as few ops as it takes
        inner = torch.addcmul(torch.addcmul(d1 * th2, s, t1t, value=2), d0, omt * omt)
        logderiv = torch.add(torch.log(inner), torch.log(s / denom), alpha=2)
        return torch.where(inside, y, x), torch.where(inside, logderiv, 0.0)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        yw, pw = _widened(y), _widened(params)
        if yw is not y or pw is not params:
            x, logderiv = self.inverse(yw, pw)
            return x.to(y.dtype), logderiv
        inside = y.abs() < self.bound
        yc = y.clamp(-self.bound, self.bound)
        x0, w, y0, h, d0, d1 = self._bin(self._table(params), 1, yc)
        s = h / w
        dy = yc - y0
        c2 = torch.sub(d0 + d1, s, alpha=2)
        # theta solves a theta^2 + b theta + c = 0 with a = h (s - d0) + dy c2,
        # b = h d0 - dy c2, c = -s dy; the numerically stable root that lies in [0, 1] is
        # 2 s dy / (b + sqrt(b^2 - 4 a c)).
        a = torch.addcmul(h * (s - d0), dy, c2)
        b = torch.addcmul(h * d0, dy, c2, value=-1)
        sdy = s * dy
        disc = torch.addcmul(b * b, a, sdy, value=4).clamp_min(0)
        theta = (2 * sdy / (b + torch.sqrt(disc))).clamp(0, 1)
        x = torch.addcmul(x0, theta, w)
        omt = 1 - theta
        t1t = theta * omt
        denom = torch.addcmul(s, c2, t1t)
        inner = torch.addcmul(torch.addcmul(d1 * theta * theta, s, t1t, value=2), d0, omt * omt)
        logderiv = 2 * torch.log(denom / s) - torch.log(inner)
        return torch.where(inside, x, y), torch.where(inside, logderiv, 0.0)


def _widened(t: Tensor) -> Tensor:
    """``t`` in float32 or wider: itself (the same object) when it already is."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def make_transform(kind: str, **kwargs) -> ElementwiseTransform:
    """Builds an element-wise transform by name: ``"affine"``, ``"additive"`` or ``"spline"``."""
    kinds = {"affine": Affine, "additive": Additive, "spline": RationalQuadraticSpline}
    if kind not in kinds:
        raise ValueError(f"unknown element-wise transform {kind!r}; choose from {sorted(kinds)}")
    return kinds[kind](**kwargs)
