"""Where do a point flow's stray points come from? Four probes of a trained model, per category,
scored with `gen eval pointcloud`'s Chamfer metrics (100 vs 100, normalisation ``none``).

The cars of the shipped model cover their reference like real cars but carry points off the
surface (BENCHMARKS.md, "Stray points"). Each probe asks whether one part of the model puts them
there:

* ``amortisation``: the encoder. Reconstruct validation shapes from the encoder's posterior mean,
  then from a latent optimised for ``log p(X | z) + log p(z | c)`` (Adam, ``--opt-steps``, 512
  random points per step), and score both against the test shapes beside the validation shapes
  themselves (the ideal). If the encoder's amortisation were the gap, the optimised latents
  would close it.
* ``base``: the base noise. For sampled clouds, the correlation of each point's stray score (the
  mean distance to its 16 nearest neighbours, in standard deviations of the cloud) with the
  norm of its normal noise, with the largest responsibility of the mixture component it was
  drawn from, and with the base density at its base point. Strays made by the tails of the base
  would correlate with the noise norm and sit at low base density.
* ``truncation``: sample with the normal noise redrawn wherever its norm exceeds ``R``
  (``--radii``): a truncated base, which removes the tails and keeps the bulk.
* ``ascent``: after sampling, move every point ``--ascent-steps`` gradient steps up
  ``log p(x | z)`` (step ``eta * grad``, capped at ``--ascent-cap`` model units), towards the
  ridges of the density, where a thin surface's points belong.

    OMP_NUM_THREADS=2 python bench/pointflow_strays.py --data shapes --categories car airplane \\
        --out bench/results/pointflow_strays.json

Needs a model with a point mixture (the shipped one has 8 components).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from bench_record import machine, save  # bench/, the script's own folder

from flowsuite.cli.pointcloud_cmds import _load
from flowsuite.core.rng import derive_seed
from flowsuite.data.shapes import open_shapes
from flowsuite.pointflow.metrics import evaluate
from flowsuite.pointflow.model import neighbour_distances


def stray_scores(cloud: np.ndarray) -> np.ndarray:
    """Each point's mean distance to its ``OUTLIER_NEIGHBOURS`` nearest neighbours, in standard
    deviations above the cloud's mean (the score `--drop-outliers` thresholds)."""
    s = neighbour_distances(cloud)
    return (s - s.mean()) / max(float(s.std()), 1e-12)


def draw(model, z: torch.Tensor, gen: torch.Generator, radius: float = 0.0
         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clouds ``(B, 2048, 3)`` (model units) as ``model.decode`` draws them with a point mixture,
    the normal noise redrawn where its norm exceeds ``radius`` (0: never); also the noise, the
    base points, the largest component responsibility and the base log-density of each point."""
    b, n = z.shape[0], 2048
    context = model._point_context(z)
    u = torch.rand(b, n, generator=gen)
    eps = torch.randn(b, n, 3, generator=gen)
    if radius > 0:
        for _ in range(100):
            far = eps.norm(dim=-1) > radius
            if not far.any():
                break
            eps[far] = torch.randn(int(far.sum()), 3, generator=gen)
    base = model.point_mixture.sample_from_noise(context, u, eps)
    x, _ = model.point_flow.bijection.inverse(base, context)
    logw, mean, log_scale = model.point_mixture.params(context)
    diff = (base[:, :, None, :] - mean[:, None]) / log_scale.exp()[:, None]
    joint = (-0.5 * diff ** 2 - log_scale[:, None]).sum(-1) + logw[:, None]
    info = {"noise_norm": eps.norm(dim=-1), "base_log_density": torch.logsumexp(joint, -1),
            "responsibility": torch.softmax(joint, -1).amax(-1)}
    return x, info


def ascend(model, x: torch.Tensor, z: torch.Tensor, steps: int, eta: float, cap: float
           ) -> torch.Tensor:
    """``steps`` capped gradient steps of every point up ``log p(x | z)``."""
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            grad, = torch.autograd.grad(model.points_log_prob(x, z).sum(), x)
        step = eta * grad
        norm = step.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        x = x.detach() + step * torch.clamp(cap / norm, max=1.0)
    return x.detach()


def sample_set(model, category: str, count: int, seed: int, radius: float = 0.0,
               ascent: tuple[int, float, float] | None = None) -> np.ndarray:
    """``count`` clouds in data units, batches of 16 seeded as `gen eval pointcloud` seeds them."""
    parts = []
    for k, start in enumerate(range(0, count, 16)):
        n = min(16, count - start)
        gen = torch.Generator().manual_seed(seed if k == 0
                                            else derive_seed(seed, "pointcloud batch", k))
        with torch.no_grad():
            z = model.sample_latent(category, n, generator=gen)
            x, _ = draw(model, z, gen, radius)
        if ascent is not None:
            x = ascend(model, x, z, *ascent)
        parts.append(x)
    return model.denormalize(torch.cat(parts)).numpy().astype(np.float32)


def score(gen: np.ndarray | list, refs: list) -> dict[str, float]:
    r = evaluate(list(gen), refs, distances=("cd",))
    return {k: round(float(r[k]), 6) for k in ("MMD-CD", "COV-CD", "1-NNA-CD")}


def amortisation(model, data: Path, category: str, count: int, steps: int, lr: float,
                 refs: list) -> dict:
    val = open_shapes(data, "val", [category], "none", 2048, seed=0)
    shapes = torch.stack([val[i]["points"] for i in range(min(count, len(val)))])
    norm = model.normalize(shapes)
    with torch.no_grad():
        mean, _ = model.encode(norm)

    def decode(z: torch.Tensor) -> np.ndarray:
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            parts = [model.decode(z[i:i + 16], 2048, 1.0, gen) for i in range(0, len(z), 16)]
        return model.denormalize(torch.cat(parts)).numpy()

    def nll(z: torch.Tensor) -> float:
        with torch.no_grad():
            return round(float(-model.points_log_prob(norm, z).mean() / norm.shape[1]), 4)

    cats = torch.full((len(shapes),), model.categories.index(category))
    z = mean.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.requires_grad_(False)
    for _ in range(steps):
        idx = torch.randint(norm.shape[1], (512,), generator=gen)
        loss = -(model.points_log_prob(norm[:, idx], z).sum() / 512
                 + model.prior_log_prob(z, cats).sum() / norm.shape[1]) / len(shapes)
        opt.zero_grad()
        loss.backward()
        opt.step()
    z = z.detach()
    return {"ideal_val_shapes": score(list(shapes.numpy()), refs),
            "encoder_mean": {**score(decode(mean), refs), "nll_per_point": nll(mean)},
            "optimised_latent": {**score(decode(z), refs), "nll_per_point": nll(z),
                                 "mean_latent_change": round(float((z - mean).norm(dim=1)
                                                                   .mean()), 4),
                                 "mean_latent_norm": round(float(mean.norm(dim=1).mean()), 4)}}


def base_statistics(model, category: str, shapes: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = model.sample_latent(category, shapes, generator=gen)
        x, info = draw(model, z, gen)
    rows = []
    for b in range(shapes):
        s = stray_scores(x[b].numpy())
        stray = s > 3
        row = {}
        for name, v in info.items():
            v = v[b].numpy()
            row[f"corr_{name}"] = float(np.corrcoef(s, v)[0, 1])
            row[f"{name}_strays"] = float(v[stray].mean())
            row[f"{name}_all"] = float(v.mean())
        dens = info["base_log_density"][b].numpy()
        row["base_density_percentile_of_strays"] = float(np.mean([(dens < d).mean()
                                                                  for d in dens[stray]]))
        row["strays_share"] = float(stray.mean())
        rows.append(row)
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--categories", nargs="+", default=["car", "airplane"])
    p.add_argument("--probes", nargs="+", default=["amortisation", "base", "truncation",
                                                   "ascent"],
                   choices=["amortisation", "base", "truncation", "ascent"])
    p.add_argument("--count", type=int, default=100, help="shapes per set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--opt-steps", type=int, default=200)
    p.add_argument("--opt-lr", type=float, default=0.02)
    p.add_argument("--radii", type=float, nargs="+", default=[3.0, 2.5, 2.0])
    p.add_argument("--ascent-steps", type=int, default=3)
    p.add_argument("--ascent-etas", type=float, nargs="+", default=[2e-4, 5e-4, 1e-3])
    p.add_argument("--ascent-cap", type=float, default=0.05)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)

    t0 = time.time()
    model = _load(a.model, "cpu")
    if model.point_mixture is None:
        raise SystemExit("this probe needs a model with a point mixture (--point-mixture)")
    result: dict = {"model": str(a.model or "shipped"), "count": a.count, "seed": a.seed,
                    "machine": machine(),
                    "categories": {}}
    test = open_shapes(a.data, "test", a.categories, "none", 2048, seed=0)
    val = open_shapes(a.data, "val", a.categories, "none", 2048, seed=0)
    for name in a.categories:
        row: dict = {}
        test_refs = [test[i]["points"].numpy() for i in range(len(test))
                     if test.category_of(i) == name][:a.count]
        val_refs = [val[i]["points"].numpy() for i in range(len(val))
                    if val.category_of(i) == name][:a.count]
        if "amortisation" in a.probes:
            row["amortisation"] = amortisation(model, a.data, name, a.count, a.opt_steps,
                                               a.opt_lr, test_refs)
        if "base" in a.probes:
            row["base"] = base_statistics(model, name, 8, a.seed)
        if "truncation" in a.probes or "ascent" in a.probes:
            row["plain"] = score(sample_set(model, name, a.count, a.seed), val_refs)
        if "truncation" in a.probes:
            row["truncation"] = {str(r): score(sample_set(model, name, a.count, a.seed, r),
                                               val_refs) for r in a.radii}
        if "ascent" in a.probes:
            row["ascent"] = {str(eta): score(sample_set(model, name, a.count, a.seed,
                                                        ascent=(a.ascent_steps, eta,
                                                                a.ascent_cap)), val_refs)
                             for eta in a.ascent_etas}
        result["categories"][name] = row
        print(name, json.dumps(row), flush=True)
    save(result, a.out, t0)
    print(f"saved {a.out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
