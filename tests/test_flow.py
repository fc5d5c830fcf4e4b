"""The Flow distribution: normalised densities, sampling, temperature and context."""

from __future__ import annotations

import math

import pytest
import torch

from flowsuite.core import (
    AffineCoupling,
    Compose,
    DiagonalNormal,
    Flow,
    MaskedAutoregressive,
    Permute,
    SplineCoupling,
    StandardNormal,
)


def _randomize(m: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * scale)
    return m


def test_a_one_dimensional_flow_integrates_to_one():
    flow = _randomize(Flow(MaskedAutoregressive(1, (16,), transform="spline", bins=6, bound=3.0),
                           StandardNormal(1))).double()
    grid = torch.linspace(-12, 12, 40001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        density = flow.log_prob(grid).exp()
    total = torch.trapezoid(density, grid[:, 0])
    assert abs(float(total) - 1.0) < 1e-3


def test_a_two_dimensional_flow_integrates_to_one():
    # A grid integrates only densities whose features it resolves. Perturbed further, a spline bin
    # can be a few thousandths wide with slopes from 0.04 to 140 (about half of the starting
    # points: the log-determinant still matches the derivative to 1e-8 there, but a 0.03 grid
    # reads 0.77-1.17), so the start is fixed to one the grid resolves (totals 1.00002, 1.000001
    # and 0.999995 on 601^2, 3001^2 and a 6001^2 grid over [-20, 20]^2).
    torch.manual_seed(7)
    bij = Compose(SplineCoupling(2, hidden=(16,), bins=4, bound=2.5), Permute(2),
                  AffineCoupling(2, hidden=(16,)))
    flow = _randomize(Flow(bij, DiagonalNormal(2))).double()
    ax = torch.linspace(-9, 9, 601, dtype=torch.float64)
    xx, yy = torch.meshgrid(ax, ax, indexing="ij")
    with torch.no_grad():
        density = flow.log_prob(torch.stack([xx, yy], -1).reshape(-1, 2)).exp().reshape(601, 601)
    total = torch.trapezoid(torch.trapezoid(density, ax), ax)
    assert abs(float(total) - 1.0) < 5e-3


def test_standard_normal_log_prob():
    z = torch.randn(5, 3, 2)
    expected = torch.distributions.Normal(0, 1).log_prob(z).sum((1, 2))
    assert torch.allclose(StandardNormal(3, 2).log_prob(z), expected, atol=1e-5)


def test_diagonal_normal_matches_torch():
    d = DiagonalNormal(4, 3)
    with torch.no_grad():
        d.loc.copy_(torch.tensor([1.0, -2.0, 0.5]))
        d.log_scale.copy_(torch.tensor([0.1, -0.3, 0.7]))
    z = torch.randn(6, 4, 3)
    ref = torch.distributions.Normal(d.loc, d.log_scale.exp()).log_prob(z).sum((1, 2))
    assert torch.allclose(d.log_prob(z), ref.detach(), atol=1e-5)
    s = d.sample(20000, shape=(1, 3))
    assert torch.allclose(s.mean((0, 1)), d.loc.detach(), atol=0.05)
    assert torch.allclose(s.std((0, 1)), d.log_scale.exp().detach(), atol=0.05)


def test_sample_shapes_temperature_and_free_point_count():
    flow = _randomize(Flow(AffineCoupling(3, hidden=(8,), context_features=2),
                           StandardNormal(16, 3)))
    ctx = torch.randn(1, 2)
    x = flow.sample(4, ctx)
    assert x.shape == (4, 16, 3)
    assert flow.sample(2, ctx, shape=(100, 3)).shape == (2, 100, 3)
    assert flow.sample(context=torch.randn(5, 2)).shape == (5, 16, 3)
    with pytest.raises(ValueError, match="context"):
        flow.sample(3, torch.randn(2, 2))
    base = StandardNormal(1000)
    g = torch.Generator().manual_seed(0)
    assert abs(float(base.sample(4, temperature=0.5, generator=g).std()) - 0.5) < 0.03


def test_sampling_is_reproducible_with_a_generator():
    flow = _randomize(Flow(MaskedAutoregressive(3, (8,)), StandardNormal(3)))
    a = flow.sample(5, generator=torch.Generator().manual_seed(3))
    b = flow.sample(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sample_and_log_prob_agree_with_log_prob(temperature):
    flow = _randomize(Flow(Compose(MaskedAutoregressive(3, (8,), 2),
                                   SplineCoupling(3, hidden=(8,), context_features=2)),
                           DiagonalNormal(3))).double()
    ctx = torch.randn(6, 2, dtype=torch.float64)
    with torch.no_grad():
        x, lp = flow.sample_and_log_prob(context=ctx, temperature=temperature,
                                         dtype=torch.float64)
        assert torch.allclose(lp, flow.log_prob(x, ctx), atol=1e-8)


def test_fitting_a_gaussian_recovers_its_entropy():
    torch.manual_seed(0)
    cov = torch.tensor([[2.0, 1.2], [1.2, 1.0]])
    data = torch.randn(4096, 2) @ torch.linalg.cholesky(cov).T
    flow = Flow(Compose(MaskedAutoregressive(2, (32,)), MaskedAutoregressive(2, (32,),
                                                                           order="reverse")),
                StandardNormal(2))
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for _ in range(300):
        loss = -flow.log_prob(data).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    entropy = 0.5 * math.log(torch.linalg.det(2 * math.pi * math.e * cov).item())
    assert abs(loss.item() - entropy) < 0.05
