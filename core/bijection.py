"""The bijection contract and its composition.

Every bijection maps data to latent in ``forward`` (the normalizing direction, used for the
likelihood) and latent to data in ``inverse`` (sampling). Both return the transformed tensor and
the log-absolute-determinant of their own Jacobian with the batch shape ``(x.shape[0],)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _hooks


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

    def _fusion_key(self, x: Tensor) -> Hashable | None:
        """A key under which ``Compose.forward`` may pass this layer, with the consecutive
        layers of an equal key, to ``type(self)._forward_run`` in one call, bypassing their
        ``__call__`` (it does so only for layers without hooks); None (the default): never.
        For layers whose forward passes cost less fused than one by one."""
        return None

    @classmethod
    def _forward_run(cls, run: Sequence[Bijection], x: Tensor, context: Tensor | None
                     ) -> tuple[Tensor, Tensor]:
        """``forward`` of the layers of ``run`` in turn, the log-determinants summed."""
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
        parts = list(self.bijections)
        i = 0
        while i < len(parts):
            b = parts[i]
            # A run of consecutive layers that fuse (Bijection._fusion_key) goes in one call.
            key = b._fusion_key(x) if _plain(b) else None
            j = i + 1
            if key is not None:
                while j < len(parts) and _plain(parts[j]) and parts[j]._fusion_key(x) == key:
                    j += 1
            # (The key was checked and the layers have no hooks: a run of one goes the same way.)
            x, ld = (type(b)._forward_run(parts[i:j], x, context) if key is not None
                     else b(x, context))
            lds.append(ld)
            i = j
        return x, _total(lds, x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lds = []
        for b in reversed(self.bijections):
            z, ld = b.inverse(z, context)
            lds.append(ld)
        return z, _total(lds, z)


def _plain(m: nn.Module) -> bool:
    """Whether calling ``m`` runs nothing but its ``forward``: no hooks, its own or global."""
    return not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or m._backward_pre_hooks or _hooks._global_forward_hooks
                or _hooks._global_forward_pre_hooks or _hooks._global_backward_hooks
                or _hooks._global_backward_pre_hooks)


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
