"""PointFlowModel: its flows are exact bijections, the ELBO trains, sampling honours its
arguments and seeds, and bad inputs end in FlowsuiteError."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flowsuite.core import FlowsuiteError
from flowsuite.core.testing import check_inverse, check_logdet
from flowsuite.pointflow.metrics import chamfer_distance
from flowsuite.pointflow.model import OUTLIER_OVERSAMPLE, PointFlowModel, drop_outliers

TINY = dict(latent_dim=8, encoder_width=32, point_steps=4, point_hidden=(32, 32),
            latent_steps=2, latent_hidden=(32,), category_dim=4, softflow_max_noise=0.02)


def _randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def sphere(count: int, n: int, g: torch.Generator) -> torch.Tensor:
    v = torch.randn(count, n, 3, generator=g)
    return 0.8 * v / v.norm(dim=-1, keepdim=True)


def plane(count: int, n: int, g: torch.Generator) -> torch.Tensor:
    pts = torch.rand(count, n, 3, generator=g) * 1.6 - 0.8
    pts[..., 1] = 0.0
    return pts


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and a shared CPU punishes spinning threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("kind,splines", [("affine", 0), ("spline", 0), ("affine", 3)])
def test_point_flow_is_an_exact_bijection(kind, splines):
    torch.manual_seed(0)
    model = PointFlowModel(2, point_kind=kind, point_splines=splines, **TINY).double()
    _randomize(model.point_flow)
    kinds = [type(layer).__name__ for layer in model.point_flow.bijection.bijections]
    assert kinds.count("SplineCoupling") == (TINY["point_steps"] if kind == "spline" else 0) \
        + splines
    x = torch.randn(2, 5, 3, dtype=torch.float64) * 0.7
    ctx = model._point_context(torch.randn(2, 8, dtype=torch.float64))
    # Four random spline layers compose to a less well-conditioned map than one layer: 1e-7;
    # seven random layers (four affine, three spline) to a worse one still: 1e-6.
    check_inverse(model.point_flow.bijection, x, ctx, atol=1e-6 if splines else 1e-7)
    check_logdet(model.point_flow.bijection, x, ctx)


def test_latent_prior_is_an_exact_bijection():
    torch.manual_seed(0)
    model = PointFlowModel(3, **TINY).double()
    _randomize(model.prior)
    z = torch.randn(3, 8, dtype=torch.float64)
    ctx = model.category_embedding(torch.tensor([0, 1, 2])).detach()
    check_inverse(model.prior.bijection, z, ctx)
    check_logdet(model.prior.bijection, z, ctx)


def test_points_are_independent_given_the_latent():
    """p(X|z) factorises over points: the log-density of a set is the sum of its points'."""
    torch.manual_seed(0)
    model = PointFlowModel(1, **TINY)
    _randomize(model.point_flow)
    x = torch.randn(1, 6, 3)
    z = torch.randn(1, 8)
    whole = model.points_log_prob(x, z)
    parts = model.points_log_prob(x.transpose(0, 1), z.expand(6, -1)).sum()
    assert torch.allclose(whole, parts.reshape(1), atol=1e-4)


def test_encoder_ignores_point_order():
    model = PointFlowModel(1, **TINY)
    x = torch.randn(2, 50, 3)
    mean, logvar = model.encode(x)
    mean2, logvar2 = model.encode(x[:, torch.randperm(50)])
    assert torch.allclose(mean, mean2, atol=1e-5) and torch.allclose(logvar, logvar2, atol=1e-5)


def test_forward_returns_the_trainer_contract_and_config_round_trips():
    model = PointFlowModel(2, **TINY)
    out = model({"points": torch.randn(3, 40, 3), "category": torch.tensor([0, 1, 1])})
    assert set(out) == {"loss", "recon_nll_per_point", "prior_nll", "entropy"}
    assert out["loss"].shape == () and out["loss"].requires_grad
    n = 40
    expected = out["recon_nll_per_point"] + (out["prior_nll"] - out["entropy"]) / n
    assert torch.allclose(out["loss"].detach(), expected, atol=1e-5)
    config = json.loads(json.dumps(model.config))
    clone = PointFlowModel.from_config(config)
    clone.load_state_dict(model.state_dict())
    assert clone.config == model.config


def test_softflow_noise_perturbs_training_targets_only_when_enabled():
    """In training mode the point flow scores noisy points at a random level (SoftFlow); with
    ``softflow_max_noise=0`` and in eval mode it scores the clean points, so the loss is then
    the same whichever mode drew the latent."""
    batch = {"points": torch.randn(3, 40, 3) * 0.5, "category": torch.tensor([0, 1, 1])}

    def recon(model):
        torch.manual_seed(5)  # the same latent draw each time
        return model(batch)["recon_nll_per_point"].item()

    torch.manual_seed(0)
    noisy = PointFlowModel(2, **{**TINY, "softflow_max_noise": 0.5})
    clean = PointFlowModel.from_trained(noisy, softflow_max_noise=0.0)
    assert clean.softflow_max_noise == 0.0
    for model in (noisy, clean):
        model.train()
        train_value = recon(model)
        model.eval()
        eval_value = recon(model)
        if model is clean:
            assert train_value == pytest.approx(eval_value, abs=1e-6)
        else:
            assert abs(train_value - eval_value) > 1e-3


def test_a_tiny_model_learns_two_categories():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = PointFlowModel(2, **TINY)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(300):
        pts = torch.cat([sphere(4, 128, g), plane(4, 128, g)])
        cat = torch.tensor([0] * 4 + [1] * 4)
        loss = model({"points": pts, "category": cat})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5
    model.eval()
    ref = {0: sphere(6, 256, g), 1: plane(6, 256, g)}
    for c in (0, 1):
        samples = model.sample(c, count=6, points=256, seed=1)
        own = chamfer_distance(samples, ref[c]).mean()
        other = chamfer_distance(samples, ref[1 - c]).mean()
        assert own < 0.5 * other, (c, float(own), float(other))
    elbo = model.log_prob(ref[0][:2], 0, samples=2, seed=0) / 256
    assert elbo.shape == (2,) and bool(torch.isfinite(elbo).all())
    assert bool((model.conditional_log_prob(ref[0][:2]) >= elbo - 1e-3).all())


def test_sampling_sizes_and_seeds():
    model = PointFlowModel(3, **TINY).eval()
    _randomize(model)
    a = model.sample(2, count=3, points=77, seed=5)
    assert a.shape == (3, 77, 3) and bool(torch.isfinite(a).all())
    assert torch.equal(a, model.sample(2, count=3, points=77, seed=5))
    assert not torch.equal(a, model.sample(2, count=3, points=77, seed=6))
    assert model.sample(torch.tensor([0, 1]), count=2, points=10).shape == (2, 10, 3)
    cold = model.sample(0, count=2, points=50, seed=1, temperature=0.0, point_temperature=0.0)
    assert torch.allclose(cold[0], cold[1]) and torch.allclose(cold[0], cold[0, :1].expand(50, 3))


def test_drop_outliers_takes_the_strays_and_keeps_the_rest_at_random():
    g = torch.Generator().manual_seed(0)
    surface = plane(2, 500, g)                      # two clouds on planes, spacing ~0.05
    strays = torch.tensor([[0.0, 0.6, 0.0], [0.3, -0.7, -0.2], [-0.5, 1.2, 0.5]])  # off y = 0
    clouds = torch.cat([surface, strays.expand(2, -1, -1)], 1)
    keys = torch.rand(2, 503, generator=g)
    kept = drop_outliers(clouds, 400, 3.0, keys)
    assert kept.shape == (2, 400, 3)
    for c, k in zip(clouds, kept, strict=True):
        # every kept point is an input point on the surface, each at most once
        idx = torch.cdist(k, c).argmin(1)
        assert torch.equal(c[idx], k) and len(set(idx.tolist())) == 400
        assert bool((idx < 500).all())
    # which surface points stay follows the keys: the 400 smallest among the inliers
    assert torch.equal(kept[0], clouds[0, keys[0, :500].argsort()[:400]])
    # all points asked for: the strays are the last to fill up
    full = drop_outliers(clouds, 503, 3.0, keys)
    assert torch.equal(full[:, -3:].sort(1).values, strays.expand(2, -1, -1).sort(1).values)
    # a diverged cloud is kept as drawn (no KD-tree over NaN), the finite one still filtered
    clouds[1, 7] = float("nan")
    mixed = drop_outliers(clouds, 400, 3.0, keys)
    assert torch.equal(mixed[0], kept[0]) and int(mixed[1].isnan().any(-1).sum()) <= 1


def test_sampling_with_stray_points_dropped():
    model = PointFlowModel(3, **TINY).eval()
    _randomize(model)
    a = model.sample(1, count=2, points=40, seed=3, outlier_std=3.0)
    assert a.shape == (2, 40, 3) and torch.equal(
        a, model.sample(1, count=2, points=40, seed=3, outlier_std=3.0))
    # the points come from the oversampled draw of the same latents
    g = torch.Generator().manual_seed(3)
    drawn = model.decode(model.sample_latent(1, 2, generator=g),
                         math.ceil(40 * OUTLIER_OVERSAMPLE), generator=g)
    assert all(bool((x[:, None] == y[None]).all(-1).any(1).all())
               for x, y in zip(a, drawn, strict=True))
    assert model.reconstruct(a[0], n_points=30, seed=0, outlier_std=2.0).shape == (30, 3)
    path = model.interpolate(a[0], a[1], steps=3, n_points=25, seed=0, outlier_std=3.0)
    assert path.shape == (3, 25, 3)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(FlowsuiteError, match="outlier_std"):
            model.sample(1, count=1, points=10, outlier_std=bad)


def test_categories_by_name_and_the_data_coordinates():
    model = PointFlowModel(3, **TINY).eval()
    _randomize(model)
    model.categories, model.stats = ["chair", "lamp", "table"], {"mean": [0.1, -0.2, 0.3],
                                                                 "std": 0.5}
    a = model.sample("table", count=2, points=20, seed=3)
    assert torch.equal(a, model.sample(2, count=2, points=20, seed=3))
    assert torch.equal(model.sample(["lamp", "chair"], count=2, points=20, seed=3),
                       model.sample([1, 0], count=2, points=20, seed=3))
    assert model.category_ids(["table", "chair"]) == [2, 0]
    cloud = a[0]
    by_name = model.log_prob(cloud, "table", seed=0)
    assert torch.isfinite(by_name).all() and torch.equal(by_name, model.log_prob(cloud, 2, seed=0))
    data = model.denormalize(a)
    assert torch.allclose(data, a * 0.5 + torch.tensor([0.1, -0.2, 0.3]))
    assert torch.allclose(model.normalize(data), a, atol=1e-6)
    with pytest.raises(FlowsuiteError, match="knows no category 'sofa'; it knows chair, lamp"):
        model.sample("sofa", count=1, points=10)
    plain = PointFlowModel(2, **TINY)  # no names, no stats: ids as names, coordinates as they are
    assert plain.category_ids("1") == 1 and torch.equal(plain.denormalize(a), a)


def test_reconstruct_and_interpolate_shapes():
    model = PointFlowModel(1, **TINY).eval()
    cloud = torch.randn(60, 3)
    assert model.reconstruct(cloud, n_points=200, seed=0).shape == (200, 3)
    assert model.reconstruct(cloud.expand(2, -1, -1)).shape == (2, 60, 3)
    path = model.interpolate(cloud, torch.randn(30, 3), steps=4, n_points=25, seed=0)
    assert path.shape == (4, 25, 3)
    assert torch.allclose(path[0], model.reconstruct(cloud, 25, seed=0), atol=1e-5)


@pytest.mark.parametrize("call", [
    lambda m: m.sample(5, count=1, points=10),
    lambda m: m.sample(-1, count=1, points=10),
    lambda m: m.sample(0.5, count=1, points=10),
    lambda m: m.sample(0, count=0, points=10),
    lambda m: m.sample(0, count=1, points=0),
    lambda m: m.sample(0, count=1, points=10, temperature=-1.0),
    lambda m: m.sample(0, count=1, points=10, temperature=math.nan),
    lambda m: m.sample([0, 1, 0], count=2, points=10),
    lambda m: m.sample([], count=1, points=10),
    lambda m: m.sample(["0", 1], count=2, points=10),
    lambda m: m.reconstruct(torch.randn(10, 2)),
    lambda m: m.reconstruct(torch.zeros(0, 3)),
    lambda m: m.reconstruct(torch.tensor([[0.0, math.nan, 0.0]])),
    lambda m: m({"points": torch.randn(2, 5, 3)}),
    lambda m: m({"points": torch.randn(2, 5, 3), "category": torch.tensor([0, 9])}),
    lambda m: m.log_prob(torch.randn(5, 3), 0, samples=0),
])
def test_bad_inputs_raise_flowsuite_error(call):
    model = PointFlowModel(2, **TINY)
    with pytest.raises(FlowsuiteError):
        call(model)


def test_bad_configurations_raise_flowsuite_error():
    with pytest.raises(FlowsuiteError):
        PointFlowModel(0)
    with pytest.raises(FlowsuiteError):
        PointFlowModel(2, point_kind="cnf")


def test_add_categories_grows_the_embedding_and_keeps_the_old_categories(tmp_path):
    from flowsuite.core.checkpoint import load_model, save_model

    torch.manual_seed(0)
    model = PointFlowModel(2, **TINY)
    _randomize(model.prior)
    before = model.sample([0, 1], 2, points=16, seed=3)
    old = model.category_embedding.weight.detach().clone()
    assert model.add_categories(2) == [2, 3]
    assert model.num_categories == model.config["num_categories"] == 4
    w = model.category_embedding.weight
    assert w.requires_grad
    torch.testing.assert_close(w[:2], old)
    torch.testing.assert_close(w[2], old.mean(0))
    torch.testing.assert_close(w[3], old.mean(0))
    torch.testing.assert_close(model.sample([0, 1], 2, points=16, seed=3), before)
    assert model.sample(3, 1, points=16, seed=0).shape == (1, 16, 3)
    loaded = load_model(save_model(model, tmp_path / "m.safetensors"))
    assert loaded.num_categories == 4
    torch.testing.assert_close(loaded.category_embedding.weight, w.detach())
    with pytest.raises(FlowsuiteError):
        model.add_categories(0)


def test_a_point_mixture_base_is_an_exact_density_and_starts_as_the_trained_model():
    """With point_mixture=K the density of a cloud is the mixture's density of the flow's latent
    plus the log-determinant, and from_trained gives a model whose density starts within a
    hair of the trained one (the mixture starts near N(0, I))."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    plain = PointFlowModel(2, **TINY)
    _randomize(plain, scale=0.05)
    plain.eval()
    mixed = PointFlowModel.from_trained(plain, point_mixture=3).eval()
    assert mixed.config["point_mixture"] == 3 and "point_mixture" not in plain.config
    pts, z = sphere(3, 64, g), torch.randn(3, 8, generator=g)
    near = (mixed.points_log_prob(pts, z) - plain.points_log_prob(pts, z)).abs().detach() / 64
    assert float(near.max()) < 0.05
    _randomize(mixed.point_mixture, seed=1, scale=0.3)
    ctx = mixed._point_context(z)
    u, logdet = mixed.point_flow.bijection(pts, ctx)
    want = mixed.point_mixture.log_prob(u, ctx) + logdet
    assert torch.allclose(mixed.points_log_prob(pts, z), want)
    moved = (mixed.points_log_prob(pts, z) - plain.points_log_prob(pts, z)).abs().max()
    assert float(moved.detach()) > 1
    # Sampling inverts the flow on the mixture's draws; same seed, same clouds; interpolation's
    # shared noise gives a smooth path whose ends are reconstructions.
    a = mixed.sample(1, count=2, points=100, seed=3)
    assert a.shape == (2, 100, 3) and torch.equal(a, mixed.sample(1, count=2, points=100, seed=3))
    path = mixed.interpolate(pts[0], pts[1], steps=4, n_points=50, seed=0)
    assert path.shape == (4, 50, 3) and bool(torch.isfinite(path).all())


@pytest.mark.parametrize("grow", ["point_steps", "point_splines"])
def test_from_trained_grows_the_point_flow_from_the_identity(grow):
    """More point_steps (or point_splines) than the trained model appends couplings (and their
    3x3 maps) that start as the identity: the grown model's density is the trained one's, and the
    new layers learn."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    trained = PointFlowModel(2, **{**TINY, "point_mixture": 2})
    _randomize(trained, scale=0.05)
    trained.eval()
    more = trained.config.get(grow, 0) + 3
    grown = PointFlowModel.from_trained(trained, **{grow: more}).eval()
    assert grown.config == {**trained.config, grow: more}
    pts, z = sphere(3, 64, g), torch.randn(3, 8, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(grown.points_log_prob(pts, z), trained.points_log_prob(pts, z),
                                   rtol=1e-5, atol=1e-4)
    grown.train()
    (-grown.points_log_prob(pts, z).mean()).backward()
    added = [p for name, p in grown.named_parameters() if name not in trained.state_dict()]
    assert added and any(float(p.grad.abs().sum()) > 0 for p in added if p.grad is not None)


def test_a_point_mixture_model_round_trips_and_old_files_load_without_one(tmp_path):
    from flowsuite.core.checkpoint import load_model, save_model

    plain = PointFlowModel(2, **TINY)
    save_model(plain, tmp_path / "plain.safetensors")
    again = load_model(tmp_path / "plain.safetensors")
    assert again.point_mixture is None
    mixed = PointFlowModel(2, **TINY, point_mixture=4)
    _randomize(mixed)
    save_model(mixed, tmp_path / "mixed.safetensors")
    back = load_model(tmp_path / "mixed.safetensors")
    assert back.point_mixture.components == 4
    pts, z = torch.randn(2, 16, 3), torch.randn(2, 8)
    assert torch.equal(back.points_log_prob(pts, z), mixed.eval().points_log_prob(pts, z))
    with pytest.raises(FlowsuiteError, match="point_mixture"):
        PointFlowModel(2, **TINY, point_mixture=1)
    assert "point_splines" not in plain.config and again.config == plain.config
    splined = PointFlowModel(2, **TINY, point_splines=2)
    _randomize(splined)
    save_model(splined, tmp_path / "splined.safetensors")
    back = load_model(tmp_path / "splined.safetensors").eval()
    assert back.config["point_splines"] == 2
    assert torch.equal(back.points_log_prob(pts, z), splined.eval().points_log_prob(pts, z))
    with pytest.raises(FlowsuiteError, match="point_splines"):
        PointFlowModel(2, **TINY, point_splines=-1)
    with pytest.raises(FlowsuiteError, match="cannot start from the trained"):
        PointFlowModel.from_trained(plain, latent_dim=6)
