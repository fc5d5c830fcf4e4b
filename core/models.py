"""Ready-made flows over vectors (and points, features last), and ``DensityModel``, the
checkpointable wrapper that the trainer fits.

    model = DensityModel("nsf", features=2, steps=8)
    Trainer(model, dataset, TrainConfig(steps=2000), out_dir="runs/nsf").fit()
    flow = load_model("runs/nsf/model.safetensors").flow
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from flowsuite.core.autoregressive import MaskedAutoregressive
from flowsuite.core.bijection import Bijection, Compose
from flowsuite.core.checkpoint import Configurable, register_model
from flowsuite.core.coupling import AffineCoupling, SplineCoupling
from flowsuite.core.distributions import DiagonalNormal, StandardNormal
from flowsuite.core.flow import Flow
from flowsuite.core.linear import InvertibleLinear
from flowsuite.core.normalization import ActNorm


def _base(features: int, learn_base: bool) -> nn.Module:
    return DiagonalNormal(features) if learn_base else StandardNormal(features)


def maf(features: int, steps: int = 8, hidden: Sequence[int] = (64, 64),
        context_features: int = 0, transform: str = "affine", bins: int = 8, bound: float = 4.0,
        activation: str = "relu", learn_base: bool = False) -> Flow:
    """A masked autoregressive flow: ``steps`` MADE layers whose variable orders alternate, so no
    permutation layer is needed between them."""
    kw: dict[str, Any] = {"bins": bins, "bound": bound} if transform == "spline" else {}
    layers = [MaskedAutoregressive(features, hidden, context_features, transform=transform,
                                   order="reverse" if i % 2 else None, activation=activation, **kw)
              for i in range(steps)]
    return Flow(Compose(*layers), _base(features, learn_base))


def nsf(features: int, steps: int = 8, hidden: Sequence[int] = (64, 64),
        context_features: int = 0, bins: int = 8, bound: float = 4.0, activation: str = "relu",
        mixing: str = "parity", learn_base: bool = False) -> Flow:
    """A neural spline flow of rational-quadratic spline couplings. ``mixing="parity"`` alternates
    which half is transformed; ``"linear"`` adds a learned invertible matrix between steps."""
    layers: list[Bijection] = []
    for i in range(steps):
        if mixing == "linear" and i:
            layers.append(InvertibleLinear(features))
        layers.append(SplineCoupling(features, hidden=hidden, context_features=context_features,
                                     bins=bins, bound=bound, activation=activation,
                                     parity=i % 2 if mixing == "parity" else 0))
    return Flow(Compose(*layers), _base(features, learn_base))


def realnvp(features: int, steps: int = 8, hidden: Sequence[int] = (64, 64),
            context_features: int = 0, activation: str = "relu", actnorm: bool = True,
            learn_base: bool = False) -> Flow:
    """Affine couplings (RealNVP / Glow): ActNorm, an invertible linear map and a coupling per
    step."""
    layers: list[Bijection] = []
    for _ in range(steps):
        if actnorm:
            layers.append(ActNorm(features))
        layers += [InvertibleLinear(features),
                   AffineCoupling(features, hidden=hidden, context_features=context_features,
                                  activation=activation)]
    return Flow(Compose(*layers), _base(features, learn_base))


PRESETS: dict[str, Callable[..., Flow]] = {"maf": maf, "nsf": nsf, "realnvp": realnvp}


@register_model("density")
class DensityModel(Configurable, nn.Module):
    """A preset flow (``"maf"``, ``"nsf"`` or ``"realnvp"``) wrapped for the trainer and for
    checkpoints: ``forward(batch)`` returns the mean negative log-likelihood.

    A batch is a tensor ``x`` of shape ``(B, ..., features)``, a pair ``(x, context)``, or a dict
    with ``"x"`` and optionally ``"context"``.
    """

    def __init__(self, preset: str = "nsf", **kwargs: Any):
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        self.flow = PRESETS[preset](**kwargs)

    @staticmethod
    def unpack(batch: Any) -> tuple[Tensor, Tensor | None]:
        """Splits a batch into ``(x, context)``."""
        if isinstance(batch, Tensor):
            return batch, None
        if isinstance(batch, dict):
            return batch["x"], batch.get("context")
        x, *rest = batch
        return x, (rest[0] if rest else None)

    def forward(self, batch: Any) -> dict[str, Tensor]:
        x, context = self.unpack(batch)
        nll = -self.flow.log_prob(x, context).mean()
        return {"loss": nll, "nll_per_dim": nll.detach() / x[0].numel()}

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``(B,)`` log-densities of ``x``."""
        return self.flow.log_prob(x, context)

    def sample(self, n: int | None = None, context: Tensor | None = None,
               temperature: float = 1.0, **kwargs: Any) -> Tensor:
        """Samples as ``Flow.sample`` does."""
        return self.flow.sample(n, context, temperature, **kwargs)
