"""Linear bijections over one feature dimension: permutations and learned invertible matrices."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowsuite.core.bijection import Bijection, zero_logdet
from flowsuite.core.normalization import positions


def apply_matrix(x: Tensor, w: Tensor, dim: int) -> Tensor:
    """Multiplies the features on ``dim`` of ``x`` by ``w`` (``(D, D)``): ``y[..., i] = sum_j
    w[i, j] x[..., j]``. Channels-first sequences ``(B, C, T)`` use a 1x1 convolution."""
    d = dim % x.dim()
    if d == x.dim() - 1:
        return F.linear(x, w)
    if d == 1 and x.dim() == 3:
        return F.conv1d(x, w.unsqueeze(-1))
    return torch.movedim(F.linear(torch.movedim(x, d, -1), w), -1, d)


class Permute(Bijection):
    """A fixed permutation of the features on ``dim``: ``"reverse"``, ``"random"`` (drawn from
    the global generator at construction) or an explicit order. Its log-determinant is zero."""

    def __init__(self, features: int, permutation: str | Sequence[int] = "reverse", dim: int = -1):
        super().__init__()
        if isinstance(permutation, str):
            if permutation == "reverse":
                perm = torch.arange(features - 1, -1, -1)
            elif permutation == "random":
                perm = torch.randperm(features)
            else:
                raise ValueError(f"unknown permutation {permutation!r}; use 'reverse', 'random' "
                                 "or a sequence of indices")
        else:
            perm = torch.as_tensor(list(permutation), dtype=torch.long)
            if sorted(perm.tolist()) != list(range(features)):
                raise ValueError(f"{list(permutation)} is not a permutation of 0..{features - 1}")
        self.dim = dim
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x.index_select(self.dim, self.perm), zero_logdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z.index_select(self.dim, self.inverse_perm), zero_logdet(z)


class InvertibleLinear(Bijection):
    """A learned invertible matrix over the features on ``dim``, LU-parametrised (Glow):
    ``W = P L (U + diag(sign * exp(log_diag)))``, so ``log|det W| = sum(log_diag)``.

    Over channels (``dim=1`` of ``(B, C, T)``) it is the invertible 1x1 convolution of Glow and
    WaveGlow. It starts as a random rotation. The inverse matrix used for sampling is cached
    while no gradient is needed, and recomputed whenever a parameter changes in place (an
    optimiser step, ``load_state_dict``) or moves to another device or dtype.
    """

    def __init__(self, features: int, dim: int = -1):
        super().__init__()
        self.dim = dim
        q, _ = torch.linalg.qr(torch.randn(features, features, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign", torch.sign(diag).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(features, features), -1))
        self.register_buffer("eye", torch.eye(features))
        self.lower = nn.Parameter(torch.tril(lower, -1).float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_diag = nn.Parameter(torch.log(diag.abs()).float())
        self._cache: tuple[tuple, Tensor] | None = None

    @torch.no_grad()
    def reset_identity(self) -> None:
        """Makes ``W`` the identity matrix (no permutation, unit diagonal, zero triangles): how
        a step added to a trained flow starts without changing what the flow computes."""
        self.perm.copy_(self.eye)
        self.sign.fill_(1.0)
        self.lower.zero_()
        self.upper.zero_()
        self.log_diag.zero_()
        self._cache = None

    def _factors(self, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor]:
        def cast(t: Tensor) -> Tensor:
            return t if dtype is None else t.to(dtype)

        lower = cast(self.lower) * cast(self.lower_mask) + cast(self.eye)
        upper = (cast(self.upper) * cast(self.lower_mask).T
                 + torch.diag(cast(self.sign) * torch.exp(cast(self.log_diag))))
        return cast(self.perm), lower, upper

    def weight(self, dtype: torch.dtype | None = None) -> Tensor:
        """The matrix ``W`` (``(D, D)``) of the forward map, computed in ``dtype`` (default: the
        parameters')."""
        p, lower, upper = self._factors(dtype)
        return p @ lower @ upper

    def _inverse_weight_uncached(self) -> Tensor:
        p, lower, upper = self._factors(torch.float64)
        eye = torch.eye(p.shape[0], dtype=torch.float64, device=p.device)
        l_inv = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        u_inv = torch.linalg.solve_triangular(upper, eye, upper=True)
        return (u_inv @ l_inv @ p.T).to(self.lower.dtype)

    def inverse_weight(self) -> Tensor:
        """The matrix ``W^-1``; cached when no gradient flows through it."""
        params = (self.lower, self.upper, self.log_diag)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return self._inverse_weight_uncached()
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._inverse_weight_uncached())
        return self._cache[1]

    def _logdet(self, x: Tensor, sign: float) -> Tensor:
        ld = self.log_diag.sum().to(torch.promote_types(x.dtype, torch.float32))
        return (sign * positions(x, self.dim) * ld).expand(x.shape[0])

    def _matmul(self, x: Tensor, inverse: bool) -> Tensor:
        # In float32 (or wider) with autocast off, cast back to x's dtype: under bf16 autocast
        # the matrix would otherwise be formed and applied in bfloat16, a map whose determinant
        # differs from the one _logdet claims, and training learns to exploit the difference
        # (a point flow trained so scored 0.044 nats/point better in bf16 than in float32).
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            w = self.inverse_weight().to(dtype) if inverse else self.weight(dtype)
            return apply_matrix(x.to(dtype), w, self.dim).to(x.dtype)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._matmul(x, inverse=False), self._logdet(x, 1.0)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._matmul(z, inverse=True), self._logdet(z, -1.0)
