"""Every core layer, on vectors, point sets and sequences, in float32 and float64, with and
without context: the inverse is exact and the log-determinant matches the autograd Jacobian."""

from __future__ import annotations

import pytest
import torch

from flowsuite.core import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    Compose,
    EarlySplit,
    Inverse,
    InvertibleLinear,
    MaskedAutoregressive,
    Permute,
    SplineCoupling,
    Squeeze,
)
from flowsuite.core.testing import check_inverse, check_logdet

CONTEXT = 3
# layout name -> (shape, feature dim)
LAYOUTS = {
    "vector": ((3, 5), -1),
    "points": ((2, 4, 3), -1),
    "sequence": ((2, 4, 6), 1),
}


def randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Moves every parameter away from its (often identity) initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


def _layers(features: int, dim: int, ctx: int):
    kw = {"dim": dim, "context_features": ctx, "hidden": (16,)}
    return {
        "actnorm": lambda: ActNorm(features, dim=dim),
        "linear": lambda: InvertibleLinear(features, dim=dim),
        "permute": lambda: Permute(features, "random", dim=dim),
        "affine": lambda: AffineCoupling(features, **kw),
        "affine_parity1": lambda: AffineCoupling(features, parity=1, **kw),
        "additive": lambda: AdditiveCoupling(features, **kw),
        "spline": lambda: SplineCoupling(features, bins=5, bound=2.0, **kw),
        "maf_affine": lambda: MaskedAutoregressive(features, (16,), ctx, dim=dim),
        "maf_spline": lambda: MaskedAutoregressive(features, (16,), ctx, dim=dim,
                                                   transform="spline", bins=4, bound=2.0),
        "iaf_affine": lambda: MaskedAutoregressive(features, (16,), ctx, dim=dim,
                                                   direction="iaf", order="reverse"),
        "inverse_maf": lambda: Inverse(MaskedAutoregressive(features, (16,), ctx, dim=dim)),
        "compose": lambda: Compose(ActNorm(features, dim=dim), AffineCoupling(features, **kw),
                                   InvertibleLinear(features, dim=dim),
                                   SplineCoupling(features, parity=1, **kw)),
        "early_split": lambda: EarlySplit(1, Compose(
            InvertibleLinear(features - 1, dim=dim),
            AffineCoupling(features - 1, **kw)), dim=dim),
    }


CASES = [(layout, name, with_ctx, dtype)
         for layout in LAYOUTS
         for name in _layers(5, -1, 0)
         for with_ctx in (False, True)
         for dtype in (torch.float32, torch.float64)]


def _build(layout: str, name: str, with_ctx: bool, dtype: torch.dtype, seed: int = 0):
    shape, dim = LAYOUTS[layout]
    torch.manual_seed(seed)
    layer = _layers(shape[dim], dim, CONTEXT if with_ctx else 0)[name]()
    layer = randomize(layer, seed).to(dtype)
    x = (torch.randn(shape, dtype=dtype) * 1.5).to(dtype)
    ctx = torch.randn(shape[0], CONTEXT, dtype=dtype) if with_ctx else None
    return layer, x, ctx


@pytest.mark.parametrize("layout,name,with_ctx,dtype", CASES)
def test_inverse_and_logdet(layout, name, with_ctx, dtype):
    layer, x, ctx = _build(layout, name, with_ctx, dtype)
    check_inverse(layer, x, ctx)
    check_logdet(layer, x, ctx)


@pytest.mark.parametrize("name", ["affine", "spline", "maf_affine", "maf_spline"])
def test_context_changes_the_map(name):
    layer, x, ctx = _build("vector", name, True, torch.float64)
    z1, _ = layer(x, ctx)
    z2, _ = layer(x, ctx + 1.0)
    assert not torch.allclose(z1, z2)


@pytest.mark.parametrize("name", ["affine", "additive", "spline", "maf_affine", "maf_spline"])
def test_identity_at_initialisation(name):
    """Couplings start as the identity; a MAF layer does with ``identity_init=True`` and by
    default starts random (its hidden layers learn from the first step)."""
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    if name.startswith("maf"):
        kw = {"transform": "spline", "bins": 4, "bound": 2.0} if name == "maf_spline" else {}
        z, _ = MaskedAutoregressive(4, (16,), **kw)(x)
        assert not torch.allclose(z, x, atol=1e-3)
        layer = MaskedAutoregressive(4, (16,), identity_init=True, **kw)
    else:
        layer = _layers(4, -1, 0)[name]()
    z, ld = layer(x)
    assert torch.allclose(z, x, atol=1e-6)
    assert torch.allclose(ld, torch.zeros(8), atol=1e-5)


def test_checks_catch_a_wrong_logdet():
    class Broken(AffineCoupling):
        def forward(self, x, context=None):
            z, ld = super().forward(x, context)
            return z, ld + 0.1

    layer = randomize(Broken(4, hidden=(8,)))
    x = torch.randn(3, 4, dtype=torch.float64)
    layer = layer.double()
    with pytest.raises(AssertionError, match="log-determinant"):
        check_logdet(layer, x)
    with pytest.raises(AssertionError, match="cancel"):
        check_inverse(layer, x)


def test_checks_catch_a_wrong_inverse():
    class Broken(Permute):
        def inverse(self, z, context=None):
            return z, super().inverse(z, context)[1]

    with pytest.raises(AssertionError, match="differs"):
        check_inverse(Broken(4, "reverse"), torch.randn(3, 4))


def test_squeeze_groups_consecutive_samples():
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 16)
    z, ld = Squeeze(8)(x)
    assert z.shape == (2, 8, 2)
    assert torch.equal(z[0, :, 0], torch.arange(8.0))  # WaveGlow's grouping of samples
    assert torch.equal(z[0, :, 1], torch.arange(8.0, 16.0))
    assert torch.equal(ld, torch.zeros(2))
    check_inverse(Squeeze(2), torch.randn(2, 3, 8))
    check_logdet(Squeeze(2), torch.randn(2, 3, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="multiple"):
        Squeeze(8)(torch.randn(1, 1, 12))


def test_actnorm_standardises_its_first_batch_and_keeps_it():
    x = torch.randn(256, 3) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([3.0, -2.0, 0.0])
    layer = ActNorm(3)
    z, _ = layer(x)
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(3), atol=1e-3)
    z2, _ = layer(x * 2)  # a second batch does not re-initialise
    assert torch.allclose(z2, layer(x * 2)[0])
    assert not torch.allclose(z2.std(0), torch.ones(3), atol=0.1)
    fresh = ActNorm(3)
    fresh.load_state_dict(layer.state_dict())
    assert torch.allclose(fresh(x * 2)[0], z2)  # a loaded layer counts as initialised


def test_invertible_linear_inverse_cache_is_never_stale():
    layer = InvertibleLinear(4)
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    x = torch.randn(5, 4) * 3
    with torch.no_grad():
        layer.inverse(x)  # fills the cache
    for _ in range(2):
        z, ld = layer(x)
        loss = (0.5 * z.pow(2).sum(-1) - ld).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            z, _ = layer(x)
            assert torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
    other = InvertibleLinear(4)
    with torch.no_grad():
        other.inverse(x)
        other.load_state_dict(layer.state_dict())
        assert torch.allclose(other.inverse(layer(x)[0])[0], x, atol=1e-5)
        other.double()
        assert torch.allclose(other.inverse(layer(x)[0].double())[0], x.double(), atol=1e-5)


@pytest.mark.parametrize("make,shape", [(lambda: ActNorm(4), (6, 5, 4)),
                                        (lambda: InvertibleLinear(4), (6, 4)),
                                        (lambda: InvertibleLinear(4, dim=1), (6, 4, 5))])
def test_reset_identity_makes_a_trained_layer_the_identity(make, shape):
    layer = make()
    x = torch.randn(shape) * 3 + 1
    with torch.no_grad():
        layer(x)  # ActNorm initialises on it
        for p in layer.parameters():
            p.add_(torch.randn_like(p))
        layer.inverse(x)  # InvertibleLinear caches its inverse
        layer.reset_identity()
        for t in (layer(x), layer.inverse(x)):
            assert torch.equal(t[0], x) and torch.equal(t[1], torch.zeros(6))
        layer(x * 7)  # a reset layer does not initialise itself again on its next batch
        assert torch.equal(layer(x)[0], x)


def test_invertible_linear_is_a_1x1_convolution_over_channels():
    layer = InvertibleLinear(4, dim=1)
    x = torch.randn(2, 4, 7)
    z, ld = layer(x)
    expected = torch.einsum("ij,bjt->bit", layer.weight(), x)
    assert torch.allclose(z, expected, atol=1e-5)
    assert torch.allclose(ld, 7 * torch.linalg.slogdet(layer.weight()).logabsdet.expand(2),
                          atol=1e-4)


def test_inverse_gradients_flow_through_the_inverse_weight():
    layer = InvertibleLinear(3)
    z = torch.randn(4, 3)
    x, _ = layer.inverse(z)
    x.sum().backward()
    assert layer.log_diag.grad is not None and layer.log_diag.grad.abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError):
        AffineCoupling(1)
    with pytest.raises(ValueError):
        AffineCoupling(4, split=4)
    with pytest.raises(ValueError):
        Permute(3, [0, 0, 1])
    with pytest.raises(ValueError):
        MaskedAutoregressive(3, direction="sideways")
    with pytest.raises(ValueError, match="context"):
        AffineCoupling(4, context_features=2)(torch.randn(2, 4))


@pytest.mark.parametrize("shape,dim", [((5, 3), -1), ((2, 4, 3), -1), ((2, 3, 7), 1)])
def test_fused_affine_matches_the_elementwise_path_in_values_and_gradients(shape, dim):
    """``Affine.forward_packed`` (one autograd node, hand-written backward) against the generic
    path (parameters unpacked, ``forward``, log-derivatives summed) and finite differences."""
    from flowsuite.core import Affine
    from flowsuite.core.elementwise import ElementwiseTransform

    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    out_shape = list(shape)
    out_shape[dim] *= 2
    out = (2 * torch.randn(out_shape, generator=g, dtype=torch.float64)).requires_grad_()
    affine = Affine(scale_bound=2.0)
    y, ld = affine.forward_packed(x, out, dim)
    y_ref, ld_ref = ElementwiseTransform.forward_packed(affine, x, out, dim)
    assert ld.shape == (shape[0],)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(ld, ld_ref)
    gy, gld = torch.randn_like(y), torch.randn_like(ld)
    grads = torch.autograd.grad((y * gy).sum() + (ld * gld).sum(), (x, out))
    grads_ref = torch.autograd.grad((y_ref * gy).sum() + (ld_ref * gld).sum(), (x, out))
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda a, b: affine.forward_packed(a, b, dim), (x, out))
    # Without autograd the same numbers come from the plain path.
    with torch.no_grad():
        torch.testing.assert_close(affine.forward_packed(x, out, dim)[0], y)
    # Only the data needs no gradient: the parameters still get theirs.
    (y2, _), = [affine.forward_packed(x.detach(), out, dim)]
    assert torch.autograd.grad(y2.sum(), out)[0].shape == out.shape


def _fused(t) -> bool:
    """Whether ``_MadeAffineChain`` made ``t`` (directly or through a view of its output)."""
    fn = t.grad_fn
    while fn is not None and type(fn).__name__ != "_MadeAffineChainBackward":
        fn = fn.next_functions[0][0] if fn.next_functions else None
        if fn is not None and type(fn).__name__.startswith("AccumulateGrad"):
            return False
    return fn is not None


def _composed_maf_pass(layer: MaskedAutoregressive, x, context):
    """The likelihood pass of ``layer`` through its MADE module and the packed affine transform:
    the path that ``_MadeAffine`` stands in for."""
    x_last = torch.movedim(x, layer.dim, -1)
    y, ld = layer.transform.forward_packed(x_last, layer.made(x_last, context), -1)
    return torch.movedim(y, -1, layer.dim), ld


def _spread_and_inputs(module, shape, context_shape) -> tuple:
    """Draws every parameter of ``module`` (float64) away from its initialisation and returns
    data of ``shape`` and a context of ``context_shape`` (or None), both needing gradients."""
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.4)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    context = (torch.randn(context_shape, dtype=torch.float64, requires_grad=True)
               if context_shape else None)
    return x, context


def _assert_same_values_and_gradients(module, x, context, out, ref) -> tuple:
    """``out`` and ``ref`` (each ``(y, logdet)`` of ``module`` at ``x``, ``context``) agree in
    value and in the gradients for the data, the context and every parameter of ``module``, and
    ``module`` passes gradcheck. Returns the gradients."""
    (y, ld), (y_ref, ld_ref) = out, ref
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(ld, ld_ref)
    inputs = [x, *([context] if context is not None else []), *module.parameters()]
    gy, gld = torch.randn_like(y), torch.randn_like(ld)
    grads = torch.autograd.grad((y * gy).sum() + (ld * gld).sum(), inputs)
    grads_ref = torch.autograd.grad((y_ref * gy).sum() + (ld_ref * gld).sum(), inputs)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b)
    if context is None:
        assert torch.autograd.gradcheck(lambda a: module(a), (x,))
    else:
        assert torch.autograd.gradcheck(lambda a, c: module(a, c), (x, context))
    return grads


@pytest.mark.parametrize("shape,context_shape,dim,hidden,order", [
    ((6, 2), None, -1, (16, 16), None),
    ((6, 5), (6, 3), -1, (16, 12, 10), "reverse"),
    ((3, 7, 3), (3, 2), -1, (16, 16), None),
    ((3, 7, 3), (3, 7, 2), -1, (8,), None),
    ((3, 4, 9), (3, 2), 1, (16, 16), "reverse"),
])
def test_fused_maf_layer_matches_the_composed_path(shape, context_shape, dim, hidden, order):
    """A MAF layer's likelihood pass on a CPU (``_MadeAffine``: MADE and affine transform as one
    autograd node with a hand-written backward) gives the values and the gradients of the MADE
    module followed by the affine transform, for the data, the context and every parameter."""
    torch.manual_seed(0)
    features = shape[dim]
    layer = MaskedAutoregressive(features, hidden, context_features=(context_shape or (0, 0))[-1],
                                 order=order, dim=dim).double()
    x, context = _spread_and_inputs(layer, shape, context_shape)
    y, ld = layer(x, context)
    assert _fused(y)
    grads = _assert_same_values_and_gradients(layer, x, context, (y, ld),
                                              _composed_maf_pass(layer, x, context))
    assert any(g.abs().sum() > 0 for g in grads)
    # Frozen weights with data that needs a gradient, and float32.
    layer.float().requires_grad_(False)
    x32 = x.detach().float().requires_grad_()
    c32 = None if context is None else context.detach().float()
    y32, ld32 = layer(x32, c32)
    assert _fused(y32)
    y32_ref, ld32_ref = _composed_maf_pass(layer, x32, c32)
    g32 = torch.autograd.grad(y32.sum() + ld32.sum(), x32)[0]
    g32_ref = torch.autograd.grad(y32_ref.sum() + ld32_ref.sum(), x32)[0]
    torch.testing.assert_close(g32, g32_ref)
    torch.testing.assert_close(y32, y32_ref)


def test_maf_layer_keeps_the_composed_path_where_the_fused_one_does_not_apply():
    """Without autograd, under autocast, with other activations or transforms, or with hooks on
    the MADE (which must fire), the MAF layer runs its MADE module."""
    x = torch.randn(8, 3, requires_grad=True)

    assert _fused(MaskedAutoregressive(3)(x)[0])
    assert not _fused(MaskedAutoregressive(3, activation="tanh")(x)[0])
    assert not _fused(MaskedAutoregressive(3, transform="spline")(x)[0])
    layer = MaskedAutoregressive(3)
    seen = []
    handle = layer.made.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    assert not _fused(layer(x)[0]) and seen == [(8, 6)]
    handle.remove()
    assert _fused(layer(x)[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _fused(layer(x)[0])
    with torch.no_grad():
        y, _ = layer(x)
    assert y.grad_fn is None


def _chain_nodes(t) -> int:
    """How many ``_MadeAffineChain`` nodes the graph of ``t`` holds."""
    seen, stack, count = set(), [t.grad_fn], 0
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        count += type(fn).__name__ == "_MadeAffineChainBackward"
        stack += [f for f, _ in fn.next_functions]
    return count


def _composed_chain(layers, x, context):
    """``Compose.forward`` of ``layers`` through each layer's MADE module and packed affine
    transform (or its own ``forward`` for other layers)."""
    total = 0
    for b in layers:
        x, ld = (_composed_maf_pass(b, x, context) if isinstance(b, MaskedAutoregressive)
                 else b(x, context))
        total = total + ld
    return x, total


@pytest.mark.parametrize("shape,context_shape,dim", [
    ((6, 3), None, -1),
    ((6, 4), (6, 2), -1),
    ((3, 5, 3), (3, 5, 2), -1),
    ((3, 4, 7), (3, 2), 1),
])
def test_a_run_of_maf_layers_in_compose_is_one_node_with_the_composed_values_and_gradients(
        shape, context_shape, dim):
    """Consecutive MAF layers in a ``Compose`` run as one ``_MadeAffineChain`` node (different
    depths, orders and contexts in one run) and give the values and gradients, for the data, the
    context and every parameter, of the layers run one by one through their MADE modules."""
    torch.manual_seed(0)
    features, c = shape[dim], (context_shape or (0, 0))[-1]
    layers = [MaskedAutoregressive(features, hidden, context_features=c * with_c, order=order,
                                   dim=dim)
              for hidden, with_c, order in [((16, 16), 1, None), ((8,), 0, "reverse"),
                                            ((12, 10, 8), 1, None)]]
    flow = Compose(*layers).double()
    x, context = _spread_and_inputs(flow, shape, context_shape)
    y, ld = flow(x, context)
    assert _chain_nodes(y) == 1 and _chain_nodes(ld) == 1
    ref = _composed_chain(layers, x, context)
    assert _chain_nodes(ref[0]) == 0
    grads = _assert_same_values_and_gradients(flow, x, context, (y, ld), ref)
    assert all(g.abs().sum() > 0 for g in grads[:2])
    # The middle layer frozen and the data without a gradient, in float32.
    flow.float()
    layers[1].requires_grad_(False)
    x32 = x.detach().float()
    c32 = None if context is None else context.detach().float()
    y32, ld32 = flow(x32, c32)
    y32_ref, ld32_ref = _composed_chain(layers, x32, c32)
    params = [p for p in flow.parameters() if p.requires_grad]
    g32 = torch.autograd.grad(y32.sum() + ld32.sum(), params)
    g32_ref = torch.autograd.grad(y32_ref.sum() + ld32_ref.sum(), params)
    for a, b in zip(g32, g32_ref, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(ld32, ld32_ref)


def test_compose_fuses_only_runs_of_plain_maf_layers():
    """Other layers, another feature dim, hooks on a layer (which must fire) and spline MAF
    layers break a run; the layers around them still fuse, and the result is unchanged."""
    torch.manual_seed(0)
    x = torch.randn(5, 3, requires_grad=True)

    def maf(**kw):
        layer = MaskedAutoregressive(3, (8, 8), **kw)
        for p in layer.parameters():
            torch.nn.init.normal_(p, std=0.3)
        return layer

    a, b, c, d = maf(), maf(order="reverse"), maf(), maf(order="reverse")
    spline = maf(transform="spline")
    flow = Compose(a, b, Permute(3), c, spline, d)
    y, ld = flow(x)
    assert _chain_nodes(y) == 3  # (a, b), then c alone, then d alone
    y_ref, ld_ref = _composed_chain(list(flow), x, None)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(ld, ld_ref)
    seen = []
    handle = b.register_forward_hook(lambda m, args, out: seen.append(out[0].shape))
    y, ld = Compose(a, b, c, d)(x)
    assert seen == [(5, 3)] and _chain_nodes(y) == 3  # a | b through its __call__ | (c, d)
    handle.remove()
    assert _chain_nodes(Compose(a, b, c, d)(x)[0]) == 1
    with torch.no_grad():
        y_nograd, _ = Compose(a, b, c, d)(x)
    torch.testing.assert_close(y_nograd, Compose(a, b, c, d)(x)[0].detach())
    # A run needs one feature dim: a channels-first MAF layer between channels-last ones.
    seq = torch.randn(2, 3, 3, requires_grad=True)
    mixed = Compose(a, MaskedAutoregressive(3, (8,), dim=1), b)
    y, _ = mixed(seq)
    assert _chain_nodes(y) == 3


@pytest.mark.parametrize("shape,dim", [((64, 128, 3), -1), ((4, 8, 256), 1)])
def test_invertible_linear_under_bf16_autocast_applies_the_matrix_its_logdet_describes(shape,
                                                                                        dim):
    """Autocast would form and apply W in bfloat16, a map of another determinant than the
    claimed sum(log_diag), which training learns to exploit; the layer computes in float32."""
    torch.manual_seed(0)
    layer = InvertibleLinear(shape[dim], dim=dim)
    with torch.no_grad():
        for p in (layer.lower, layer.upper, layer.log_diag):
            p.add_(torch.randn_like(p) * 0.7)
    x = torch.randn(shape)
    y32, ld32 = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, ld = layer(x)
        x_back, ld_inv = layer.inverse(y)
        yh, _ = layer(x.bfloat16())
    assert y.dtype == torch.float32 and torch.equal(ld, ld32) and torch.equal(ld_inv, -ld32)
    torch.testing.assert_close(y, y32, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x_back, x, atol=1e-4, rtol=1e-4)  # bfloat16: about 1e-2
    # half-precision inputs: one rounding, of the float32 result
    assert yh.dtype == torch.bfloat16
    assert torch.equal(yh, layer(x.bfloat16().float())[0].bfloat16())
