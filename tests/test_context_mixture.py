"""ContextMixture: a context-weighted mixture of normals, the base of the mel prior's steps and
of the point flow (one mixture per cloud, shared by its points)."""

from __future__ import annotations

import pytest
import torch

from flowsuite.core import ContextMixture


def _perturbed(mix: ContextMixture) -> ContextMixture:
    with torch.no_grad():
        for p in mix.net.parameters():
            p.normal_(0, 0.3)  # away from the zero start, so weights and scales vary
    return mix


def test_context_mixture_density_matches_torch_distributions():
    torch.manual_seed(0)
    mix = ContextMixture(5, 4, components=3, hidden=[8]).double()
    with torch.no_grad():
        for p in mix.net.parameters():
            p.normal_(0, 0.3)  # away from the zero start, so weights and scales vary
    ctx, z = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    logw, mean, log_scale = mix.params(ctx)
    want = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logw),
        torch.distributions.Independent(torch.distributions.Normal(mean, log_scale.exp()), 1))
    assert torch.allclose(mix.log_prob(z, ctx), want.log_prob(z))
    with pytest.raises(ValueError, match="at least 2"):
        ContextMixture(5, 4, components=1)


def test_a_low_temperature_keeps_the_mixture_components_but_tempers_within_them():
    """The point of the mixture: at temperature 0.1 a single normal collapses onto its mean, the
    mixture still picks each component as often as its weight says."""
    mix = ContextMixture(2, 3, components=2, hidden=[4])
    with torch.no_grad():
        mix.loc.copy_(torch.tensor([[-3.0, -3.0], [3.0, 3.0]]))
    g = torch.Generator().manual_seed(0)
    z = mix.sample(torch.zeros(4000, 3), temperature=0.1, generator=g)
    right = z[:, 0] > 0
    assert 0.45 < right.float().mean() < 0.55  # equal weights at the zero start
    assert (z[right] - 3).abs().max() < 0.6 and (z[~right] + 3).abs().max() < 0.6
    assert torch.equal(mix.sample(torch.zeros(5, 3), 0.0, torch.Generator().manual_seed(1))
                       .abs(), torch.full((5, 2), 3.0))


def test_point_sets_sum_the_per_point_mixture_densities():
    """z (B, N, D): each point is scored under its cloud's mixture and the points are summed."""
    torch.manual_seed(0)
    mix = _perturbed(ContextMixture(3, 4, components=4, hidden=[8]).double())
    ctx, z = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 7, 3, dtype=torch.float64)
    want = torch.stack([mix.log_prob(z[:, i], ctx) for i in range(7)], 1).sum(1)
    assert torch.allclose(mix.log_prob(z, ctx), want)
    assert mix.float().log_prob(z.float(), ctx.float()).dtype == torch.float32


def test_point_samples_follow_the_weights_and_noise_can_be_shared():
    mix = ContextMixture(3, 2, components=2, hidden=[4])
    with torch.no_grad():
        mix.loc.copy_(torch.tensor([[-4.0, 0.0, 0.0], [4.0, 0.0, 0.0]]))
    g = torch.Generator().manual_seed(0)
    ctx = torch.zeros(3, 2)
    z = mix.sample(ctx, 0.5, g, (2000,))
    assert z.shape == (3, 2000, 3)
    assert 0.45 < (z[..., 0] > 0).float().mean() < 0.55
    # The same noise through different contexts: same picks where the weights agree.
    u, n = torch.rand(1, 50).expand(3, -1), torch.randn(1, 50, 3).expand(3, -1, -1)
    a = mix.sample_from_noise(ctx, u, n, 0.5)
    assert a.shape == (3, 50, 3) and torch.equal(a[0], a[2])
    assert torch.equal((a[0, :, 0] > 0), (u[0] >= 0.5))
    with pytest.raises(ValueError, match="at least 2"):
        ContextMixture(3, 2, components=0)
