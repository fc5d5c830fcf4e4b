"""Activation normalisation (Kingma & Dhariwal, 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowsuite.core.bijection import Bijection


def _feature_view(dim: int, ndim: int) -> list[int]:
    """The shape that broadcasts a per-feature vector along ``dim`` of a rank-``ndim`` tensor."""
    shape = [1] * ndim
    shape[dim] = -1
    return shape


def positions(x: Tensor, dim: int) -> int:
    """How many positions share one feature: the product of the sizes other than batch and dim."""
    return x[0].numel() // x.shape[dim]


class ActNorm(Bijection):
    """A per-feature affine map ``z = (x + bias) * exp(log_scale)`` along ``dim``.

    The first batch it sees sets ``bias`` and ``log_scale`` so that its output has zero mean and
    unit variance per feature (data-dependent initialisation). Loading a checkpoint marks the layer
    initialised, since the flag is a saved buffer.
    """

    def __init__(self, features: int, dim: int = -1, eps: float = 1e-6):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.bias = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))
        self._ready = False  # mirrors the buffer without a device sync on every call

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Sets the parameters from a batch ``x`` so that the output is standardised."""
        xf = torch.movedim(x, self.dim, -1).reshape(-1, x.shape[self.dim]).float()
        mean = xf.mean(0)
        std = xf.std(0, unbiased=False) if xf.shape[0] > 1 else torch.ones_like(mean)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)
        self._ready = True

    @torch.no_grad()
    def reset_identity(self) -> None:
        """Makes the layer the identity (``bias`` and ``log_scale`` zero) and marks it
        initialised, so a first batch does not re-initialise it: how a step added to a trained
        flow starts without changing what the flow computes."""
        self.bias.zero_()
        self.log_scale.zero_()
        self.initialized.fill_(True)
        self._ready = True

    def _affine(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = _feature_view(self.dim, x.dim())
        return self.bias.view(shape).to(x.dtype), self.log_scale.view(shape).to(x.dtype)

    def _logdet(self, x: Tensor, sign: float) -> Tensor:
        ld = self.log_scale.sum().to(torch.promote_types(x.dtype, torch.float32))
        return (sign * positions(x, self.dim) * ld).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not self._ready:
            if not bool(self.initialized):
                self.initialize(x)
            self._ready = True
        b, s = self._affine(x)
        return (x + b) * torch.exp(s), self._logdet(x, 1.0)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, s = self._affine(z)
        return z * torch.exp(-s) - b, self._logdet(z, -1.0)
