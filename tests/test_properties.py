"""Property tests over shapes and random parameters (hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowsuite.core import AffineCoupling, MaskedAutoregressive, SplineCoupling
from flowsuite.core.elementwise import RationalQuadraticSpline
from flowsuite.core.testing import check_inverse, check_logdet

SETTINGS = settings(max_examples=25, deadline=None)


@SETTINGS
@given(bins=st.integers(1, 12), bound=st.floats(0.5, 6.0), scale=st.floats(0.0, 3.0),
       seed=st.integers(0, 2**16))
def test_spline_is_monotone_invertible_and_its_derivative_is_right(bins, bound, scale, seed):
    g = torch.Generator().manual_seed(seed)
    t = RationalQuadraticSpline(bins, bound)
    x = torch.linspace(-1.2 * bound, 1.2 * bound, 257, dtype=torch.float64).requires_grad_()
    p = torch.randn(257, t.num_params, generator=g, dtype=torch.float64) * scale
    y, logderiv = t.forward(x, p)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(logderiv, torch.log(grad), atol=1e-6)
    assert (grad > 0).all()
    x_rec, inv_logderiv = t.inverse(y.detach(), p)
    assert torch.allclose(x_rec, x.detach(), atol=1e-6)
    assert torch.allclose(inv_logderiv, -logderiv.detach(), atol=1e-6)


@SETTINGS
@given(magnitude=st.floats(1e1, 1e30), seed=st.integers(0, 2**16))
def test_spline_is_finite_far_outside_its_interval(magnitude, seed):
    g = torch.Generator().manual_seed(seed)
    t = RationalQuadraticSpline(8, 3.0)
    x = (torch.tensor([-1.0, 1.0]) * magnitude).requires_grad_()
    p = torch.randn(2, t.num_params, generator=g) * 5
    y, ld = t.forward(x, p)
    assert torch.equal(y, x.detach()) and torch.equal(ld, torch.zeros(2))
    (y.sum() + ld.sum()).backward()
    assert torch.isfinite(x.grad).all()
    xi, ldi = t.inverse(y.detach(), p)
    assert torch.equal(xi, x.detach()) and torch.isfinite(ldi).all()


@SETTINGS
@given(dtype=st.sampled_from([torch.bfloat16, torch.float16]), seed=st.integers(0, 2**16))
def test_spline_in_half_precision_is_finite_and_matches_float32(dtype, seed):
    # Large parameters make bins of the minimum size (2 * 4 * 1e-3), below bfloat16's spacing
    # near the edge of the interval: a knot table in half precision collapses them.
    g = torch.Generator().manual_seed(seed)
    t = RationalQuadraticSpline(8, 4.0)
    x = torch.rand(4096, generator=g) * 8 - 4
    p = torch.randn(4096, t.num_params, generator=g) * 6
    xh, ph = x.to(dtype), p.to(dtype)
    y, ld = t.forward(xh, ph)
    assert y.dtype == dtype and ld.dtype == torch.float32
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    y32, ld32 = t.forward(xh.float(), ph.float())
    assert torch.equal(y, y32.to(dtype)) and torch.equal(ld, ld32)
    xi, ldi = t.inverse(xh, ph)
    assert xi.dtype == dtype and torch.isfinite(xi).all() and torch.isfinite(ldi).all()


@SETTINGS
@given(batch=st.integers(1, 4), points=st.integers(1, 5), features=st.integers(2, 6),
       ctx=st.sampled_from([0, 2]), kind=st.sampled_from(["affine", "spline", "maf", "iaf"]),
       seed=st.integers(0, 2**16))
def test_layers_over_random_shapes(batch, points, features, ctx, kind, seed):
    torch.manual_seed(seed)
    build = {
        "affine": lambda: AffineCoupling(features, hidden=(8,), context_features=ctx),
        "spline": lambda: SplineCoupling(features, hidden=(8,), context_features=ctx, bins=4),
        "maf": lambda: MaskedAutoregressive(features, (8,), ctx, transform="spline", bins=3),
        "iaf": lambda: MaskedAutoregressive(features, (8,), ctx, direction="iaf"),
    }
    layer = build[kind]().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(batch, points, features, dtype=torch.float64) * 2
    c = torch.randn(batch, ctx, dtype=torch.float64) if ctx else None
    check_inverse(layer, x, c)
    check_logdet(layer, x, c)
