"""Flat parameters (core.flat): same gradients and checkpoints, fresh caches, compiles."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from flowsuite.core import (
    DensityModel,
    InvertibleLinear,
    flatten_parameters,
    is_flattened,
    load_model,
    load_weights,
    maf,
    nsf,
    realnvp,
    save_model,
    unflatten_parameters,
)
from flowsuite.core.ema import EMA
from flowsuite.core.errors import FlowsuiteError
from flowsuite.core.trainer import TrainConfig, Trainer

BUILDERS = {
    "maf": lambda: maf(3, steps=2, hidden=(8, 8), context_features=2),
    "nsf_linear": lambda: nsf(3, steps=2, hidden=(8,), context_features=2, bins=4,
                              mixing="linear", learn_base=True),
    "realnvp": lambda: realnvp(3, steps=2, hidden=(8,), context_features=2),
}


def _pair(kind: str):
    """A model with perturbed weights (ActNorm initialised) and its flattened copy."""
    torch.manual_seed(0)
    plain = BUILDERS[kind]()
    with torch.no_grad():
        plain.log_prob(torch.randn(16, 3), torch.randn(16, 2))
        for p in plain.parameters():
            p.add_(0.2 * torch.randn_like(p))
    flat = flatten_parameters(copy.deepcopy(plain))
    return plain, flat


def _flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_gradients_and_outputs_match_the_ordinary_model(kind):
    plain, flat = _pair(kind)
    assert [n for n, _ in flat.named_parameters()] == ["flat_parameters_0"]
    x, c = torch.randn(32, 3), torch.randn(32, 2)
    for _ in range(2):  # the second pass accumulates into the same gradients
        lp, lf = plain.log_prob(x, c), flat.log_prob(x, c)
        assert torch.allclose(lp, lf, atol=1e-6)
        lp.mean().backward()
        lf.mean().backward()
        assert torch.allclose(_flat_grad(plain), flat.flat_parameters_0.grad, atol=1e-6)
    with torch.no_grad():
        z = torch.randn(5, 3)
        g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        s1 = plain.sample(5, torch.randn(1, 2, generator=g1), generator=g1)
        s2 = flat.sample(5, torch.randn(1, 2, generator=g2), generator=g2)
        assert torch.allclose(s1, s2, atol=1e-5)
        assert torch.allclose(plain.bijection.inverse(z, c[:5])[0],
                              flat.bijection.inverse(z, c[:5])[0], atol=1e-5)


def test_state_dict_names_and_files_are_those_of_the_ordinary_model(tmp_path):
    torch.manual_seed(0)
    model = DensityModel("maf", features=2, steps=2, hidden=(8,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flatten_parameters(model)
    with torch.no_grad():
        model.flow.bijection[0].made.first.bias.add_(1.0)  # written through the view
    after = model.state_dict()
    assert list(after) == list(before)
    assert torch.equal(after["flow.bijection.bijections.0.made.first.bias"],
                       before["flow.bijection.bijections.0.made.first.bias"] + 1)
    x = torch.randn(8, 2)
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path)  # an ordinary model
    assert not is_flattened(loaded)
    assert torch.allclose(loaded.log_prob(x), model.log_prob(x))
    # ... and back into a flattened one.
    torch.manual_seed(1)
    other = flatten_parameters(DensityModel("maf", features=2, steps=2, hidden=(8,)))
    load_weights(other, path)
    assert torch.allclose(other.log_prob(x), model.log_prob(x))


def test_load_state_dict_reports_the_per_layer_names():
    _, flat = _pair("maf")
    state = flat.state_dict()
    key = "bijection.bijections.1.made.rest.1.weight"
    missing = {k: v for k, v in state.items() if k != key}
    result = flat.load_state_dict(missing, strict=False)
    assert result.missing_keys == [key] and not result.unexpected_keys
    bad = dict(state, **{key: torch.zeros(3, 3)})
    with pytest.raises(RuntimeError, match=f"size mismatch for {key}"):
        flat.load_state_dict(bad)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        flat.load_state_dict(dict(state, stray=torch.zeros(1)))


def test_inverse_cache_sees_optimizer_steps():
    _, flat = _pair("nsf_linear")
    lin = next(m for m in flat.modules() if isinstance(m, InvertibleLinear))
    opt = torch.optim.Adam(flat.parameters(), lr=0.05)
    x, c = torch.randn(64, 3), torch.randn(64, 2)
    for _ in range(2):
        with torch.no_grad():
            cached = lin.inverse_weight()  # fills the cache
            assert torch.allclose(cached, lin._inverse_weight_uncached())
        loss = -flat.log_prob(x, c).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            assert not torch.allclose(lin.inverse_weight(), cached)
            assert torch.allclose(lin.inverse_weight(), lin._inverse_weight_uncached())
            back, _ = flat.bijection.inverse(flat.bijection(x, c)[0], c)
            assert torch.allclose(back, x, atol=1e-4)


def test_compiles_without_graph_breaks_and_with_the_same_gradients():
    dynamo = pytest.importorskip("torch._dynamo")
    plain, flat = _pair("realnvp")
    x, c = torch.randn(16, 3), torch.randn(16, 2)
    dynamo.reset()
    try:
        out = dynamo.explain(flat.log_prob)(x, c)
        assert out.graph_break_count == 0, [str(r.reason) for r in out.break_reasons]
        # aot_eager: the traced forward and backward without inductor's (slow) code generation
        compiled = torch.compile(lambda x, c: -flat.log_prob(x, c).mean(), backend="aot_eager")
        compiled(x, c).backward()
    finally:
        dynamo.reset()
    (-plain.log_prob(x, c).mean()).backward()
    assert torch.allclose(_flat_grad(plain), flat.flat_parameters_0.grad, atol=1e-5)


def test_deepcopy_ema_and_unflatten():
    plain, flat = _pair("realnvp")
    ema = EMA(flat, 0.5)
    with torch.no_grad():
        flat.flat_parameters_0.add_(1.0)
    weight = 1 - ema.current_decay()
    ema.update(flat)
    x, c = torch.randn(8, 3), torch.randn(8, 2)
    assert not ema.shadow.log_prob(x, c).requires_grad
    assert list(ema.state_dict()["weights"]) == list(plain.state_dict())
    assert torch.allclose(ema.shadow.flat_parameters_0, flat.flat_parameters_0 - 1 + weight,
                          atol=1e-6)
    names = [n for n, _ in plain.named_parameters()]
    unflatten_parameters(flat)
    assert not is_flattened(flat) and type(flat) is type(plain)
    assert [n for n, _ in flat.named_parameters()] == names
    for (_, a), (_, b) in zip(plain.named_parameters(), flat.named_parameters(), strict=True):
        assert torch.allclose(a + 1, b) and b.is_leaf


def test_groups_tied_and_frozen_parameters_and_refusals():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight  # tied
    frozen = nn.Linear(3, 2)
    frozen.requires_grad_(False)
    model = nn.Sequential(a, b, frozen)
    keys = list(model.state_dict())
    flatten_parameters(model, group=lambda name, p: p.ndim >= 2)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    # matrices (the tied one once), vectors, and the frozen layer's two groups
    assert sorted(s.numel() for s in shapes.values()) == [2, 6, 6, 9]
    assert list(model.state_dict()) == keys
    assert model[0].weight.data_ptr() == model[1].weight.data_ptr()
    assert not model[2].weight.requires_grad
    model(torch.randn(4, 3)).sum().backward()
    with pytest.raises(AttributeError, match="view of a flat parameter"):
        model[0].weight = torch.zeros(3, 3)
    with pytest.raises(KeyError, match="'weight' already exists"):
        model[0].weight = nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="flat parameters already"):
        flatten_parameters(model)
    with pytest.raises(ValueError, match="no flat parameters"):
        unflatten_parameters(nn.Linear(2, 2))


def _gaussian_run(tmp_path, **kw):
    torch.manual_seed(0)
    model = DensityModel("realnvp", features=2, steps=2, hidden=(8,))
    data = torch.utils.data.TensorDataset(torch.randn(64, 2) * 0.5 + 1)
    cfg = TrainConfig(steps=12, batch_size=16, lr=0.01, warmup=2, val_every=6, ckpt_every=6,
                      log_every=3, ema_decay=0.9, progress=False, **kw)
    trainer = Trainer(model, data, cfg, out_dir=tmp_path)
    trainer.fit()
    return trainer


def test_trainer_with_flat_parameters_trains_the_same_model(tmp_path):
    _gaussian_run(tmp_path / "plain", weight_decay=0.1)
    flat = _gaussian_run(tmp_path / "flat", weight_decay=0.1, flat_parameters=True)
    assert is_flattened(flat.model)
    decays = sorted(g["weight_decay"] for g in flat.optimizer.param_groups)
    assert decays == [0.0, 0.1] and all(len(g["params"]) == 1 for g in flat.optimizer.param_groups)
    for which in ("model.safetensors", "last/model.safetensors"):  # EMA and raw weights
        a = load_model(tmp_path / "plain" / which).state_dict()
        b = load_model(tmp_path / "flat" / which).state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-5), (which, k)


def test_trainer_refuses_weight_decay_on_a_mixed_flat_parameter(tmp_path):
    torch.manual_seed(0)
    model = flatten_parameters(DensityModel("maf", features=2, steps=1, hidden=(4,)))
    data = torch.utils.data.TensorDataset(torch.randn(32, 2))
    cfg = TrainConfig(steps=2, batch_size=8, weight_decay=0.1, progress=False)
    with pytest.raises(FlowsuiteError, match="mixes matrices and vectors"):
        Trainer(model, data, cfg, out_dir=tmp_path).fit()
