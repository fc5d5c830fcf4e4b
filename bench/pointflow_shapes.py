"""Small seeded synthetic shape families for the pointflow benchmarks (flowsuite.data has the real
procedural categories; these stand in so the benchmarks do not depend on it)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

FAMILIES = ("sphere", "box", "torus", "cylinder")


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def shape(family: str, n: int, g: torch.Generator) -> Tensor:
    """One shape of ``family`` with random proportions and pose, ``n`` surface points ``(n, 3)``
    inside the unit ball."""
    r = torch.rand(4, generator=g)
    if family == "sphere":
        axes = 0.5 + 0.4 * r[:3]
        pts = _unit(torch.randn(n, 3, generator=g)) * axes
    elif family == "box":
        half = 0.3 + 0.4 * r[:3]
        face = torch.randint(0, 3, (n,), generator=g)
        sign = torch.randint(0, 2, (n,), generator=g) * 2 - 1
        pts = (torch.rand(n, 3, generator=g) * 2 - 1) * half
        pts[torch.arange(n), face] = sign * half[face]
    elif family == "torus":
        big, small = 0.45 + 0.2 * r[0], 0.1 + 0.15 * r[1]
        u, v = torch.rand(n, generator=g) * 2 * math.pi, torch.rand(n, generator=g) * 2 * math.pi
        pts = torch.stack([(big + small * v.cos()) * u.cos(), (big + small * v.cos()) * u.sin(),
                           small * v.sin()], -1)
    elif family == "cylinder":
        rad, h = 0.2 + 0.3 * r[0], 0.4 + 0.5 * r[1]
        u = torch.rand(n, generator=g) * 2 * math.pi
        pts = torch.stack([rad * u.cos(), rad * u.sin(), (torch.rand(n, generator=g) * 2 - 1) * h],
                          -1)
    else:
        raise ValueError(f"unknown family {family!r}")
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    pts = pts @ q.T
    return pts / pts.norm(dim=-1).max().clamp_min(1.0)


def shapes(family: str, count: int, n: int, seed: int = 0) -> Tensor:
    """``count`` shapes of ``family``: ``(count, n, 3)``."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([shape(family, n, g) for _ in range(count)])
