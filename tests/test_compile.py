"""torch.compile traces the likelihood of coupling and MAF flows in one graph (no graph breaks)."""

from __future__ import annotations

import pytest
import torch

from flowsuite.core import (
    AffineCoupling,
    Compose,
    Flow,
    MaskedAutoregressive,
    SplineCoupling,
    StandardNormal,
)

dynamo = pytest.importorskip("torch._dynamo")
if not hasattr(dynamo, "explain"):
    pytest.skip("torch._dynamo.explain is unavailable", allow_module_level=True)


def _flow(kind: str, shape: tuple[int, ...], context: int = 0) -> Flow:
    features = shape[-1]
    steps = {
        "affine": lambda i: AffineCoupling(features, hidden=(16,), parity=i % 2,
                                           context_features=context),
        "spline": lambda i: SplineCoupling(features, hidden=(16,), parity=i % 2, bins=5,
                                           context_features=context),
        "maf": lambda i: MaskedAutoregressive(features, (16,), context,
                                              order=None if i % 2 == 0 else "reverse"),
        "maf_spline": lambda i: MaskedAutoregressive(features, (16,), context,
                                                     transform="spline", bins=4),
    }[kind]
    return Flow(Compose(*[steps(i) for i in range(2)]), StandardNormal(*shape[1:]))


@pytest.mark.parametrize("kind", ["affine", "spline", "maf", "maf_spline"])
@pytest.mark.parametrize("shape,context", [((8, 2), 0), ((4, 5, 3), 2)])
def test_log_prob_traces_without_graph_breaks(kind, shape, context):
    torch.manual_seed(0)
    flow = _flow(kind, shape, context)
    x = torch.randn(shape)
    c = torch.randn(shape[0], context) if context else None
    dynamo.reset()
    try:
        out = dynamo.explain(flow.log_prob)(x, c)
    finally:
        dynamo.reset()
    assert out.graph_break_count == 0, [str(r.reason) for r in out.break_reasons]
    assert out.graph_count == 1


def test_compiled_training_step_matches_eager():
    torch.manual_seed(0)
    flow = _flow("spline", (16, 2))
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(16, 2) * 2
    dynamo.reset()
    try:
        compiled = torch.compile(flow.log_prob, backend="aot_eager", fullgraph=True)
        loss = -compiled(x).mean()
        loss.backward()
        grads = [p.grad.clone() for p in flow.parameters()]
        flow.zero_grad()
        expected = -flow.log_prob(x).mean()
        expected.backward()
    finally:
        dynamo.reset()
    assert torch.allclose(loss, expected, atol=1e-5)
    for g, p in zip(grads, flow.parameters(), strict=True):
        assert torch.allclose(g, p.grad, atol=1e-5)
