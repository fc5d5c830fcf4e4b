"""The bijection contract and its composition.

Every bijection maps data to latent in ``forward`` (the normalizing direction, used for the
likelihood) and latent to data in ``inverse`` (sampling). Both return the transformed tensor and
the log-absolute-determinant of their own Jacobian with the batch shape ``(x.shape[0],)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def sum_except_batch(t: Tensor) -> Tensor:
    """Sums every dimension but the first: ``(B, ...) -> (B,)``."""
    return t.reshape(t.shape[0], -1).sum(-1)


class Bijection(nn.Module):
    """An invertible map with a tractable log-determinant.

    Subclasses implement ``forward(x, context) -> (z, log|det dz/dx|)`` and
    ``inverse(z, context) -> (x, log|det dx/dz|)``; the log-determinants have shape ``(B,)``.
    """

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class Inverse(Bijection):
    """Swaps the directions of a bijection (for example an IAF built from a MAF layer)."""

    def __init__(self, bijection: Bijection):
        super().__init__()
        self.bijection = bijection

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.bijection.inverse(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.bijection.forward(z, context)


class Compose(Bijection):
    """Chains bijections, applied in order by ``forward`` and in reverse by ``inverse``.

    The log-determinants of the parts are summed (in float32 or wider, whatever the data's dtype).
    """

    def __init__(self, *bijections: Bijection | Iterable[Bijection]):
        super().__init__()
        flat: list[Bijection] = []
        for b in bijections:
            if isinstance(b, nn.Module):
                flat.append(b)
            else:
                flat.extend(b)
        self.bijections = nn.ModuleList(flat)

    def __len__(self) -> int:
        return len(self.bijections)

    def __getitem__(self, i: int) -> Bijection:
        return self.bijections[i]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lds = []
        for b in self.bijections:
            x, ld = b(x, context)
            lds.append(ld)
        return x, _total(lds, x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lds = []
        for b in reversed(self.bijections):
            z, ld = b.inverse(z, context)
            lds.append(ld)
        return z, _total(lds, z)


def _total(lds: list[Tensor], like: Tensor) -> Tensor:
    """The sum of log-determinants ``(B,)``, in float32 or wider (a zero one when empty)."""
    if not lds:
        return zero_logdet(like)
    total = lds[0]
    if total.dtype not in (torch.float32, torch.float64):
        total = total.to(torch.promote_types(total.dtype, torch.float32))
    for ld in lds[1:]:
        total = total + ld
    return total


def zero_logdet(x: Tensor) -> Tensor:
    """A zero log-determinant ``(B,)`` in float32 or wider."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return x.new_zeros(x.shape[0], dtype=dtype)
