"""A normalizing flow as a distribution: a bijection from data to latent and a base distribution
on the latent."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowsuite.core.bijection import Bijection
from flowsuite.core.distributions import Distribution


class Flow(nn.Module):
    """``log p(x | c) = log p_base(f(x; c)) + log|det df/dx|``.

    ``bijection`` maps data to latent in its ``forward``; ``base`` is the latent's distribution.
    Calling the flow returns ``log_prob``.
    """

    def __init__(self, bijection: Bijection, base: Distribution):
        super().__init__()
        self.bijection = bijection
        self.base = base

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact log-density of ``x`` ``(B, ...)``: ``(B,)`` in float32 (or float64 for float64
        data)."""
        z, logdet = self.bijection(x, context)
        return self.base.log_prob(z) + logdet

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.log_prob(x, context)

    def _latent(self, n: int | None, context: Tensor | None, temperature: float,
                shape: Sequence[int] | None, generator: torch.Generator | None,
                dtype: torch.dtype | None) -> tuple[Tensor, Tensor | None]:
        if context is not None:
            if n is None:
                n = context.shape[0]
            elif context.shape[0] == 1 and n > 1:
                context = context.expand(n, *context.shape[1:])
            elif context.shape[0] != n:
                raise ValueError(f"{n} samples asked for with a context of batch size "
                                 f"{context.shape[0]}; give one context row or one per sample")
        if n is None:
            raise ValueError("give the number of samples n (or a context to take it from)")
        return self.base.sample(n, shape, temperature, generator, dtype), context

    def sample(self, n: int | None = None, context: Tensor | None = None,
               temperature: float = 1.0, shape: Sequence[int] | None = None,
               generator: torch.Generator | None = None, dtype: torch.dtype | None = None
               ) -> Tensor:
        """Draws ``n`` samples ``(n, *shape)``; ``shape`` defaults to the base's event shape.

        With a context of one row, every sample shares it; with ``n`` rows, sample ``i`` uses row
        ``i`` (``n`` may then be left out). ``temperature`` scales the base's standard deviation.
        """
        z, context = self._latent(n, context, temperature, shape, generator, dtype)
        x, _ = self.bijection.inverse(z, context)
        return x

    def sample_and_log_prob(self, n: int | None = None, context: Tensor | None = None,
                            temperature: float = 1.0, shape: Sequence[int] | None = None,
                            generator: torch.Generator | None = None,
                            dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """Samples as ``sample`` does and returns each sample's log-density under the flow (the
        untempered model) in the same pass: ``(x, log_prob)``."""
        z, context = self._latent(n, context, temperature, shape, generator, dtype)
        x, logdet_inv = self.bijection.inverse(z, context)
        # f(x) = z exactly, so the model's density at x needs no second pass at any temperature.
        return x, self.base.log_prob(z) - logdet_inv
