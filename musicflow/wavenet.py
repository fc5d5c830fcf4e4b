"""A WaveNet-like conditioner for channel couplings over audio (WaveGlow's ``WN``).

It maps the identity half of a squeezed audio state ``(B, C_identity, T')`` and the mel context
aligned to the same time axis ``(B, C_context, T')`` to the coupling's parameters
``(B, num_params * C_transformed, T')``, the conditioner contract of
:mod:`flowsuite.core.coupling`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class WaveNet(nn.Module):
    """Dilated non-causal convolutions with gated ``tanh * sigmoid`` units, the context added
    inside every gate, residual and skip connections, and a zero-initialised output layer (so a
    coupling using it starts as the identity).

    Layer ``i`` has dilation ``2 ** i``; its half receptive field is
    ``(kernel_size - 1) / 2 * (2 ** layers - 1)`` steps (:attr:`half_receptive_field`).

    ``compute_dtype`` (``None`` = the input's dtype) runs the convolutions under autocast in a
    lower precision while the output keeps the input's dtype; :func:`compute_dtype` sets it for
    a block.
    """

    def __init__(self, in_channels: int, out_channels: int, context_channels: int,
                 layers: int = 8, channels: int = 256, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for a centred convolution, got "
                             f"{kernel_size}")
        if layers < 1:
            raise ValueError("the WaveNet needs at least one layer")
        self.layers, self.channels, self.kernel_size = layers, channels, kernel_size
        self.start = nn.Conv1d(in_channels, channels, 1)
        # One projection of the context for all layers; each layer reads its own slice, so only
        # one layer's worth of projected context is alive at a time.
        self.context = nn.Conv1d(context_channels, 2 * channels * layers, 1)
        self.dilated = nn.ModuleList(
            nn.Conv1d(channels, 2 * channels, kernel_size, dilation=2 ** i,
                      padding=(kernel_size - 1) // 2 * 2 ** i)
            for i in range(layers))
        # The last layer has no residual path, only the skip.
        self.res_skip = nn.ModuleList(
            nn.Conv1d(channels, 2 * channels if i < layers - 1 else channels, 1)
            for i in range(layers))
        self.end = nn.Conv1d(channels, out_channels, 1)
        nn.init.zeros_(self.end.weight)
        nn.init.zeros_(self.end.bias)
        self.compute_dtype: torch.dtype | None = None

    @property
    def half_receptive_field(self) -> int:
        """How many steps on each side of a position can change its output."""
        return (self.kernel_size - 1) // 2 * (2 ** self.layers - 1)

    def _context_slice(self, context: Tensor, i: int) -> Tensor:
        n = 2 * self.channels
        w = self.context.weight[i * n:(i + 1) * n]
        b = self.context.bias[i * n:(i + 1) * n]
        return F.conv1d(context, w, b)

    def _run(self, x: Tensor, context: Tensor) -> Tensor:
        h = self.start(x)
        skip: Tensor | None = None
        for i, (conv, rs) in enumerate(zip(self.dilated, self.res_skip, strict=True)):
            a, b = (conv(h) + self._context_slice(context, i)).chunk(2, dim=1)
            acts = torch.tanh(a) * torch.sigmoid(b)
            out = rs(acts)
            if i < self.layers - 1:
                res, s = out.chunk(2, dim=1)
                h = h + res
            else:
                s = out
            skip = s if skip is None else skip + s
        return self.end(skip)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``x: (B, C_in, T')``, ``context: (B, C_context, T')`` -> ``(B, C_out, T')``."""
        if context is None:
            raise ValueError("the WaveNet conditioner needs the upsampled mel as its context")
        if context.shape[-1] != x.shape[-1] or context.shape[0] != x.shape[0]:
            raise ValueError(f"context {tuple(context.shape)} is not aligned with the audio "
                             f"state {tuple(x.shape)}")
        if self.compute_dtype is None or self.compute_dtype == x.dtype:
            return self._run(x, context.to(x.dtype))
        with torch.autocast(x.device.type, dtype=self.compute_dtype):
            out = self._run(x, context)
        return out.to(x.dtype)


@contextlib.contextmanager
def compute_dtype(module: nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """Runs every :class:`WaveNet` inside ``module`` in ``dtype`` for the block, then restores
    what they had."""
    nets = [m for m in module.modules() if isinstance(m, WaveNet)]
    before = [n.compute_dtype for n in nets]
    for n in nets:
        n.compute_dtype = dtype
    try:
        yield
    finally:
        for n, d in zip(nets, before, strict=True):
            n.compute_dtype = d
