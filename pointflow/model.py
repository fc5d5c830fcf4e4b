"""The point-cloud model of issue #4: shape latents with a category prior, points from a flow.

A PointNet encoder gives the posterior ``q(z | X)``; an affine-coupling flow conditioned on a
category embedding is the prior ``p(z | c)``; a flow over 3D points conditioned on ``z`` (and, in
the manner of SoftFlow, on the level of noise added to the training points) gives ``p(x | z)`` for
every point independently. Training maximises the ELBO

    log p(X | c) >= E_q[ sum_i log p(x_i | z) ] + E_q[ log p(z | c) ] + H(q)

estimated with one reparameterised sample and divided by the number of points, so the loss is in
nats per point whatever the size of the cloud.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from flowsuite.core import ContextMixture, Flow, FlowsuiteError, StandardNormal
from flowsuite.core.checkpoint import register_model, transfer_weights
from flowsuite.pointflow.layers import (
    POINT_KINDS,
    PointNetEncoder,
    latent_bijection,
    point_bijection,
)

_LOG_2PI_E = math.log(2 * math.pi) + 1.0


# The scale of each point's base noise when sampling (`gen pointcloud`, `gen eval pointcloud`
# and the API). Measured (BENCHMARKS.md, "Sampling temperatures"; bench/pointflow_temperature.py):
# 0.9 gains under a point of 1-NNA-CD but loses 5 of 1-NNA-EMD, as the points leave thin parts.
DEFAULT_POINT_TEMPERATURE = 1.0

# Stray points: a flow moves its base density continuously, so a few points land between a
# shape's parts or off its surface. ``outlier_std`` (``--drop-outliers``) draws OUTLIER_OVERSAMPLE
# times the points, drops those whose mean distance to their OUTLIER_NEIGHBOURS nearest lies more
# than ``outlier_std`` standard deviations above the cloud's mean, and keeps the asked number of
# the rest at random. Off by default: at 3 it drops about 1% of the points and brings the shipped
# model's cars from 88% to 83% 1-NNA-CD, but the other categories move only within the noise and
# airplanes' thin wing tips are taken for strays (BENCHMARKS.md, "Stray points").
OUTLIER_OVERSAMPLE = 1.25
OUTLIER_NEIGHBOURS = 16

# A category: its id, its name in ``model.categories``, or one id or name per shape.
Category = int | str | Tensor | Sequence[int] | Sequence[str]


def neighbour_distances(cloud, k: int = OUTLIER_NEIGHBOURS):
    """Each point's mean distance to its ``k`` nearest neighbours in ``cloud (M, 3)`` (a numpy
    array, ``k < M``): the score stray points stand out by."""
    from scipy.spatial import cKDTree

    return cKDTree(cloud).query(cloud, k + 1)[0][:, 1:].mean(1)


def drop_outliers(clouds: Tensor, points: int, std: float, keys: Tensor) -> Tensor:
    """``clouds (B, M, 3)`` -> ``(B, points, 3)``, ``points <= M``: drops the points whose mean
    distance to their ``OUTLIER_NEIGHBOURS`` nearest is over the cloud's mean of it plus ``std``
    standard deviations, then keeps the ``points`` of the rest with the smallest ``keys (B, M)``
    (uniform numbers: the same keys keep the same points). When too few are left, the least
    outlying of the dropped ones fill up."""
    import numpy as np

    m = clouds.shape[1]
    if m < 3:
        return clouds[:, :points]
    k = min(OUTLIER_NEIGHBOURS, m - 1)
    xs = clouds.detach().float().cpu().numpy()
    # a cloud with non-finite points (a diverged model) is passed on unfiltered
    dist = np.stack([neighbour_distances(c, k) if np.isfinite(c).all() else np.zeros(m)
                     for c in xs])
    d = torch.from_numpy(dist).to(clouds.device)
    far = d > d.mean(1, keepdim=True) + std * d.std(1, keepdim=True)
    rank = torch.where(far, 2.0 + d / d.amax(1, keepdim=True).clamp_min(1e-30),
                       keys.to(d.dtype))
    keep = rank.argsort(1)[:, :points]
    return torch.gather(clouds, 1, keep.unsqueeze(-1).expand(-1, -1, clouds.shape[2]))


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


@register_model("pointflow")
class PointFlowModel(nn.Module):
    """Category-conditional generator of point clouds.

    Args:
        num_categories: how many categories share the model (their ids are ``0..num-1``).
        latent_dim: size of the shape latent ``z``.
        encoder_width: width of the PointNet's point features.
        point_steps: couplings in the point flow (each transforms one or two coordinates).
        point_hidden: hidden widths of each point coupling's conditioner.
        point_kind: ``"affine"`` or ``"spline"`` couplings in the point flow.
        spline_bins, spline_bound: the rational-quadratic splines (``point_kind="spline"``).
        latent_steps: couplings in the latent prior flow.
        latent_hidden: hidden widths of the prior's conditioners.
        category_dim: size of the category embedding that conditions the prior.
        softflow_max_noise: SoftFlow: during training each shape gets Gaussian noise of a standard
            deviation drawn uniformly from ``[0, softflow_max_noise]`` (data units), and the point
            flow is told that level; sampling and likelihoods use level 0. ``0`` turns it off.
        prior_weight, entropy_weight: weights of ``-log p(z|c)`` and ``-H(q)`` in the loss
            (both 1 give the ELBO).
        point_mixture: the point flow's base: ``0`` a standard normal; ``K >= 2`` a
            :class:`~flowsuite.core.ContextMixture` of K normals whose weights, means and scales
            depend on ``z``, so that disjoint parts of a shape (a car's wheels and body) can come
            from separate components instead of one Gaussian stretched into bridges between them.
        point_splines: rational-quadratic spline couplings after the ``point_steps`` ones, on the
            base side (``spline_bins``, ``spline_bound``): piecewise maps that can thin the
            density between parts where an affine map can only stretch it. Given to
            :meth:`from_trained`, they start as the identity.

    ``config`` holds these keyword arguments (JSON-serialisable): ``PointFlowModel(**m.config)``
    rebuilds the architecture.
    """

    def __init__(self, num_categories: int, latent_dim: int = 128, encoder_width: int = 256,
                 point_steps: int = 8, point_hidden: Sequence[int] = (128, 128),
                 point_kind: str = "affine", spline_bins: int = 8, spline_bound: float = 4.0,
                 latent_steps: int = 6, latent_hidden: Sequence[int] = (256, 256),
                 category_dim: int = 32, softflow_max_noise: float = 0.05,
                 prior_weight: float = 1.0, entropy_weight: float = 1.0,
                 point_mixture: int = 0, point_splines: int = 0):
        super().__init__()
        if num_categories < 1:
            raise FlowsuiteError(f"num_categories must be at least 1, got {num_categories}")
        if point_kind not in POINT_KINDS:
            raise FlowsuiteError(f"point_kind must be one of {POINT_KINDS}, got {point_kind!r}")
        if latent_dim < 2 or point_steps < 1 or latent_steps < 1:
            raise FlowsuiteError("latent_dim must be at least 2 and the flows need at least one "
                                 "step each")
        if softflow_max_noise < 0:
            raise FlowsuiteError("softflow_max_noise must be >= 0")
        if point_mixture < 0 or point_mixture == 1:
            raise FlowsuiteError("point_mixture must be 0 (a standard normal base) or at least 2 "
                                 f"components, not {point_mixture}")
        if point_splines < 0:
            raise FlowsuiteError(f"point_splines must be >= 0, not {point_splines}")
        self.config: dict[str, Any] = {
            "num_categories": int(num_categories), "latent_dim": int(latent_dim),
            "encoder_width": int(encoder_width), "point_steps": int(point_steps),
            "point_hidden": [int(h) for h in point_hidden], "point_kind": point_kind,
            "spline_bins": int(spline_bins), "spline_bound": float(spline_bound),
            "latent_steps": int(latent_steps), "latent_hidden": [int(h) for h in latent_hidden],
            "category_dim": int(category_dim), "softflow_max_noise": float(softflow_max_noise),
            "prior_weight": float(prior_weight), "entropy_weight": float(entropy_weight),
        }
        if point_mixture:  # absent from the files of models without one, which load as before
            self.config["point_mixture"] = int(point_mixture)
        if point_splines:
            self.config["point_splines"] = int(point_splines)
        self.num_categories = int(num_categories)
        self.latent_dim = int(latent_dim)
        self.softflow_max_noise = float(softflow_max_noise)
        self.prior_weight, self.entropy_weight = float(prior_weight), float(entropy_weight)

        self.encoder = PointNetEncoder(latent_dim, encoder_width)
        self.category_embedding = nn.Embedding(num_categories, category_dim)
        self.prior = Flow(latent_bijection(latent_dim, latent_steps, latent_hidden, category_dim),
                          StandardNormal(latent_dim))
        # The point flow's context: z and one feature for the SoftFlow noise level.
        self.point_flow = Flow(point_bijection(point_steps, point_hidden, latent_dim + 1,
                                               point_kind, spline_bins, spline_bound,
                                               splines=int(point_splines)),
                               StandardNormal(1, 3))
        self.point_mixture = (ContextMixture(3, latent_dim + 1, int(point_mixture),
                                             hidden=(int(point_hidden[0]),))
                              if point_mixture else None)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PointFlowModel:
        """Rebuilds the architecture from ``config`` (weights are loaded separately)."""
        return cls(**config)

    @classmethod
    def from_trained(cls, source: PointFlowModel, **overrides: Any) -> PointFlowModel:
        """A model of ``source``'s config with ``overrides``, holding ``source``'s weights
        wherever a part exists in both: a trained model given a point mixture
        (``point_mixture=8``) starts from its own density, and the mixture from its near-``N(0, I)``
        initialisation. A change of size raises ``FlowsuiteError``. The category names and
        normalisation (``categories``, ``stats``) carry over."""
        model = cls(**{**source.config, **overrides})
        transfer_weights(source, model, "point-cloud model")
        for name in ("categories", "stats"):
            if hasattr(source, name):
                setattr(model, name, getattr(source, name))
        return model.to(source.device)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *,
                        map_location: str | torch.device = "cpu") -> PointFlowModel:
        """A trained model in eval mode: the shipped one (``path=None``), or a training run's
        folder or ``.safetensors`` file.

        ``model.categories`` holds the category names in id order and ``model.stats`` the data's
        normalisation ``{"mean": [3], "std": s}`` (``None`` when the file has none): sampled
        clouds times ``std`` plus ``mean`` are in the data's coordinates. ``model.metadata``
        holds all of the file's extra metadata.
        """
        from flowsuite.data.pretrained import load_pretrained

        model, info = load_pretrained("pointflow", path, map_location=map_location)
        model.metadata = dict(info.user)
        try:
            model.categories = [str(c) for c in json.loads(info.user["categories"])]
        except (KeyError, TypeError, json.JSONDecodeError):
            model.categories = [str(i) for i in range(model.num_categories)]
        try:
            model.stats = json.loads(info.user["stats"])
        except (KeyError, json.JSONDecodeError):
            model.stats = None
        return model

    @property
    def device(self) -> torch.device:
        return self.category_embedding.weight.device

    @torch.no_grad()
    def add_categories(self, count: int) -> list[int]:
        """Grows the category embedding by ``count`` rows (for fine-tuning on new categories)
        and returns the new ids ``[num_categories, ..., num_categories + count - 1]``.

        Each new row is the mean of the existing embeddings, so a new category's prior starts
        as the prior of an average category rather than from noise; the existing rows, and so
        the existing categories' samples, are unchanged. ``config["num_categories"]`` follows,
        so a saved model rebuilds with the new size.
        """
        count = self._positive(count, "count")
        old = self.category_embedding.weight
        rows = old.mean(0, keepdim=True).expand(count, -1)
        grown = nn.Embedding(self.num_categories + count, old.shape[1], device=old.device,
                             dtype=old.dtype)
        grown.weight.copy_(torch.cat([old, rows]))
        grown.weight.requires_grad_(old.requires_grad)
        self.category_embedding = grown
        first = self.num_categories
        self.num_categories += count
        self.config["num_categories"] = self.num_categories
        return list(range(first, self.num_categories))

    # ---- names and coordinates of a trained model ---------------------------------------------

    def category_ids(self, names: str | Sequence[str]) -> int | list[int]:
        """The id of a category name (or the ids of a list of names) in ``self.categories``;
        an unknown name raises ``FlowsuiteError`` listing the known ones."""
        known = list(getattr(self, "categories", None) or
                     [str(i) for i in range(self.num_categories)])
        ids = []
        for name in [names] if isinstance(names, str) else names:
            if name not in known:
                raise FlowsuiteError(f"the model knows no category {name!r}; it knows "
                                     f"{', '.join(known)}")
            ids.append(known.index(name))
        return ids[0] if isinstance(names, str) else ids

    def _frame(self, points: Tensor) -> tuple[Tensor, float] | None:
        """``self.stats`` as ``(mean, std)`` in ``points``' dtype and device (``None``: none)."""
        stats = getattr(self, "stats", None)
        if not stats:
            return None
        return (torch.as_tensor(stats["mean"], dtype=points.dtype, device=points.device),
                float(stats["std"]))

    def denormalize(self, points: Tensor) -> Tensor:
        """The model's coordinates (what ``sample``, ``reconstruct`` and ``interpolate`` give)
        to the data's: ``points * std + mean`` with ``self.stats``; unchanged without stats."""
        frame = self._frame(points)
        return points if frame is None else points * frame[1] + frame[0]

    def normalize(self, points: Tensor | Any) -> Tensor:
        """The inverse of :meth:`denormalize`: a cloud in the data's coordinates (say, read from
        a file) to the model's, as ``encode``, ``reconstruct`` and ``log_prob`` take it."""
        points = points if isinstance(points, Tensor) else torch.as_tensor(points)
        frame = self._frame(points)
        return points if frame is None else (points - frame[0]) / frame[1]

    # ---- checks of user inputs ---------------------------------------------------------------

    def _points(self, points: Tensor | Any, name: str = "points") -> Tensor:
        """Validates a cloud ``(N, 3)`` or batch ``(B, N, 3)``; returns ``(B, N, 3)`` float."""
        if not isinstance(points, Tensor):
            points = torch.as_tensor(points)
        if points.dim() == 2:
            points = points.unsqueeze(0)
        if points.dim() != 3 or points.shape[-1] != 3:
            raise FlowsuiteError(f"{name} must have shape (N, 3) or (B, N, 3), got "
                                 f"{tuple(points.shape)}")
        if points.shape[0] == 0 or points.shape[1] == 0:
            raise FlowsuiteError(f"{name} is empty: give at least one cloud of at least one point")
        if not points.is_floating_point():
            points = points.float()
        if not bool(torch.isfinite(points).all()):
            raise FlowsuiteError(f"{name} contains NaN or infinite coordinates; clean the cloud "
                                 "first")
        return points.to(self.device, self.category_embedding.weight.dtype)

    def _categories(self, category: Category, count: int) -> Tensor:
        """Validates category ids or names; returns a ``(count,)`` long tensor."""
        if isinstance(category, Sequence) and not isinstance(category, str) and not category:
            raise FlowsuiteError("no category given: give an id or name, or one per shape")
        if isinstance(category, str) or (isinstance(category, Sequence)
                                         and all(isinstance(n, str) for n in category)):
            category = self.category_ids(category)
        try:
            c = torch.as_tensor(category, device=self.device)
        except (TypeError, ValueError):
            raise FlowsuiteError(f"a category is an id, a name, or a list of ids or of names; "
                                 f"got {category!r}") from None
        if c.is_floating_point() or c.is_complex() or c.dtype == torch.bool:
            raise FlowsuiteError(f"category ids must be integers, got dtype {c.dtype}")
        c = c.long().reshape(-1)
        if c.numel() == 1:
            c = c.expand(count)
        if c.numel() != count:
            raise FlowsuiteError(f"got {c.numel()} category ids for {count} shapes; give one id "
                                 "or one per shape")
        if bool(((c < 0) | (c >= self.num_categories)).any()):
            raise FlowsuiteError(f"category ids must lie in 0..{self.num_categories - 1}, got "
                                 f"{sorted(set(c.tolist()))}")
        return c

    @staticmethod
    def _positive(value: int, name: str) -> int:
        if int(value) != value or value < 1:
            raise FlowsuiteError(f"{name} must be a positive integer, got {value!r}")
        return int(value)

    @staticmethod
    def _outlier_std(value: float | None, name: str = "outlier_std") -> float | None:
        """``value`` as a float, ``None`` kept (keep every point); refuses anything but a
        finite number > 0, naming ``name`` (the CLI passes its option's)."""
        if value is not None and not (math.isfinite(value) and value > 0):
            raise FlowsuiteError(f"{name} must be a finite number > 0 (standard deviations; "
                                 f"leave it out to keep every point), got {value!r}")
        return None if value is None else float(value)

    @staticmethod
    def _temperature(value: float, name: str = "temperature") -> float:
        if not math.isfinite(value) or value < 0:
            raise FlowsuiteError(f"{name} must be a finite number >= 0, got {value!r}")
        return float(value)

    # ---- the densities -----------------------------------------------------------------------

    def encode(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior ``q(z | X)``: ``points (B, N, 3)`` -> ``(mean, logvar)``, each ``(B, D)``."""
        return self.encoder(points)

    def _point_context(self, z: Tensor, noise_level: Tensor | None = None) -> Tensor:
        """``(B, D + 1)``: ``z`` and the SoftFlow noise level scaled to ``[0, 1]``."""
        if noise_level is None:
            feature = z.new_zeros(z.shape[0], 1)
        else:
            feature = (noise_level / max(self.softflow_max_noise, 1e-12)).reshape(-1, 1)
        return torch.cat([z, feature.to(z.dtype)], dim=-1)

    def prior_log_prob(self, z: Tensor, category: Tensor) -> Tensor:
        """``log p(z | c)``: ``z (B, D)``, ``category (B,)`` -> ``(B,)``."""
        return self.prior.log_prob(z, self.category_embedding(category))

    def points_log_prob(self, points: Tensor, z: Tensor,
                        noise_level: Tensor | None = None) -> Tensor:
        """``sum_i log p(x_i | z)`` over the points of each cloud: ``(B, N, 3)``, ``(B, D)`` ->
        ``(B,)`` nats (noise level 0 unless given, ``(B,)``)."""
        context = self._point_context(z, noise_level)
        if self.point_mixture is None:
            return self.point_flow.log_prob(points, context)
        u, logdet = self.point_flow.bijection(points, context)
        return self.point_mixture.log_prob(u, context) + logdet

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Negative ELBO per point of a batch ``{"points": (B, N, 3), "category": (B,)}``.

        Returns ``{"loss", "recon_nll_per_point", "prior_nll", "entropy"}`` (batch means):
        ``recon_nll_per_point`` is ``-log p(X|z) / N`` in nats per point (3 coordinates),
        ``prior_nll`` is ``-log p(z|c)`` and ``entropy`` is ``H(q(z|X))``, both in nats per shape.
        ``loss = recon_nll_per_point + (prior_weight * prior_nll - entropy_weight * entropy) / N``.
        """
        if not isinstance(batch, dict) or "points" not in batch or "category" not in batch:
            raise FlowsuiteError("a batch must be a dict with 'points' (B, N, 3) and 'category' "
                                 "(B,)")
        points = self._points(batch["points"])
        b, n = points.shape[:2]
        category = self._categories(batch["category"], b)

        mean, logvar = self.encode(points)
        std = torch.exp(0.5 * logvar)
        z = mean + std * torch.randn_like(std)
        entropy = 0.5 * logvar.sum(-1) + 0.5 * self.latent_dim * _LOG_2PI_E

        target, level = points, None
        if self.training and self.softflow_max_noise > 0:
            level = torch.rand(b, device=points.device, dtype=points.dtype) \
                * self.softflow_max_noise
            target = points + torch.randn_like(points) * level.view(b, 1, 1)
        recon_nll = -self.points_log_prob(target, z, level) / n
        prior_nll = -self.prior_log_prob(z, category)
        loss = recon_nll + (self.prior_weight * prior_nll - self.entropy_weight * entropy) / n
        return {
            "loss": loss.mean(),
            "recon_nll_per_point": recon_nll.mean().detach(),
            "prior_nll": prior_nll.mean().detach(),
            "entropy": entropy.mean().detach(),
        }

    @torch.no_grad()
    def log_prob(self, points: Tensor, category: Category, samples: int = 1,
                 seed: int | None = None) -> Tensor:
        """The ELBO, a lower bound of ``log p(X | c)``, in nats per shape (summed over points),
        estimated with ``samples`` draws of ``z`` from the posterior (noise level 0).

        ``points: (N, 3)`` or ``(B, N, 3)`` -> ``(B,)``. Divide by ``N`` for nats per point.
        """
        points = self._points(points)
        b = points.shape[0]
        category = self._categories(category, b)
        samples = self._positive(samples, "samples")
        gen = _generator(seed, self.device)
        mean, logvar = self.encode(points)
        std = torch.exp(0.5 * logvar)
        entropy = 0.5 * logvar.sum(-1) + 0.5 * self.latent_dim * _LOG_2PI_E
        total = torch.zeros(b, device=self.device)
        for _ in range(samples):
            eps = torch.randn(std.shape, generator=gen, device=std.device, dtype=std.dtype)
            z = mean + std * eps
            total += self.points_log_prob(points, z) + self.prior_log_prob(z, category)
        return total / samples + entropy

    @torch.no_grad()
    def conditional_log_prob(self, points: Tensor) -> Tensor:
        """``log p(x | z = posterior mean)`` averaged over the points, in nats per point (noise
        level 0): how well the point flow fits the cloud given its own code.

        ``points: (N, 3)`` or ``(B, N, 3)`` -> ``(B,)``.
        """
        points = self._points(points)
        mean, _ = self.encode(points)
        return self.points_log_prob(points, mean) / points.shape[1]

    # ---- sampling ----------------------------------------------------------------------------

    @torch.no_grad()
    def sample_latent(self, category: Category, count: int = 1,
                      temperature: float = 1.0, generator: torch.Generator | None = None
                      ) -> Tensor:
        """Shape latents from the category prior: ``(count, D)``; ``temperature`` scales the
        prior's base noise."""
        count = self._positive(count, "count")
        c = self._categories(category, count)
        return self.prior.sample(count, self.category_embedding(c),
                                 self._temperature(temperature), generator=generator)

    @torch.no_grad()
    def decode(self, z: Tensor, points: int = 2048,
               point_temperature: float = DEFAULT_POINT_TEMPERATURE,
               generator: torch.Generator | None = None, shared_noise: bool = False,
               outlier_std: float | None = None) -> Tensor:
        """Points from the point flow given latents ``z (B, D)``: ``(B, points, 3)``.

        ``shared_noise`` draws one set of base points for every latent (smooth interpolations).
        ``outlier_std``: drop stray points (see ``OUTLIER_OVERSAMPLE``; ``None``: keep all).
        """
        wanted = self._positive(points, "points")
        t = self._temperature(point_temperature, "point_temperature")
        std = self._outlier_std(outlier_std)
        points = wanted if std is None else math.ceil(wanted * OUTLIER_OVERSAMPLE)
        b = z.shape[0]
        context = self._point_context(z)
        base = self.point_flow.base
        if self.point_mixture is None:
            if shared_noise:
                eps = base.sample(1, (points, 3), t, generator).expand(b, -1, -1)
            else:
                eps = base.sample(b, (points, 3), t, generator)
        elif shared_noise:  # one draw of noise for every latent: the components follow z
            u = torch.rand(1, points, generator=generator, device=z.device).expand(b, -1)
            normal = base.sample(1, (points, 3), 1.0, generator).expand(b, -1, -1)
            eps = self.point_mixture.sample_from_noise(context, u, normal.to(z.dtype), t)
        else:
            eps = self.point_mixture.sample(context, t, generator, (points,))
        x, _ = self.point_flow.bijection.inverse(eps.to(z.dtype), context)
        if std is not None:
            keys = torch.rand(1 if shared_noise else b, points, generator=generator,
                              device=z.device).expand(b, -1)
            x = drop_outliers(x, wanted, std, keys)
        return x

    @torch.no_grad()
    def sample(self, category: Category, count: int = 1, points: int = 2048,
               seed: int | None = None, temperature: float = 1.0,
               point_temperature: float = DEFAULT_POINT_TEMPERATURE,
               outlier_std: float | None = None) -> Tensor:
        """Generates ``count`` shapes of ``category`` (an id or a name of ``model.categories``,
        or one per shape) with ``points`` points each: ``(count, points, 3)`` in the model's
        coordinates (:meth:`denormalize` gives the data's). The same seed gives the same
        clouds. ``outlier_std`` (e.g. 3) drops stray points (:func:`drop_outliers`)."""
        gen = _generator(seed, self.device)
        z = self.sample_latent(category, count, temperature, gen)
        return self.decode(z, points, point_temperature, gen, outlier_std=outlier_std)

    @torch.no_grad()
    def reconstruct(self, points: Tensor, n_points: int | None = None, seed: int | None = None,
                    point_temperature: float = DEFAULT_POINT_TEMPERATURE,
                    outlier_std: float | None = None) -> Tensor:
        """Encodes clouds (posterior mean) and samples ``n_points`` new points for each (the
        input's count by default; more points upsample the cloud); ``outlier_std`` as in
        :meth:`sample`.

        ``(N, 3) -> (n_points, 3)`` or ``(B, N, 3) -> (B, n_points, 3)``.
        """
        if not isinstance(points, Tensor):
            points = torch.as_tensor(points)
        single = points.dim() == 2
        x = self._points(points)
        mean, _ = self.encode(x)
        out = self.decode(mean, n_points or x.shape[1], point_temperature,
                          _generator(seed, self.device), outlier_std=outlier_std)
        return out[0] if single else out

    @torch.no_grad()
    def interpolate(self, a: Tensor, b: Tensor, steps: int = 8, n_points: int = 2048,
                    seed: int | None = None,
                    point_temperature: float = DEFAULT_POINT_TEMPERATURE,
                    outlier_std: float | None = None) -> Tensor:
        """Decodes ``steps`` latents on the line between the posterior means of clouds ``a`` and
        ``b`` (each ``(N, 3)``), with the same base points at every step: ``(steps, n_points,
        3)``; the first and last are reconstructions of ``a`` and ``b``. ``outlier_std`` as in
        :meth:`sample` (the same points are kept at every step but the strays of each)."""
        steps = self._positive(steps, "steps")
        za, _ = self.encode(self._points(a, "a"))
        zb, _ = self.encode(self._points(b, "b"))
        if za.shape[0] != 1 or zb.shape[0] != 1:
            raise FlowsuiteError("interpolate takes one cloud (N, 3) at each end")
        w = torch.linspace(0, 1, steps, device=self.device, dtype=za.dtype).unsqueeze(1)
        z = (1 - w) * za + w * zb
        return self.decode(z, n_points, point_temperature, _generator(seed, self.device),
                           shared_noise=True, outlier_std=outlier_std)
