"""Distances between point clouds and the distribution metrics of PointFlow (Yang et al., 2019).

Definitions (as PointFlow's evaluation uses them):

- Chamfer distance: ``CD(X, Y) = mean_x min_y |x - y|^2 + mean_y min_x |x - y|^2`` (squared
  Euclidean distances, each direction averaged over its points, the two directions summed).
- Earth mover's distance between equal-size sets: ``EMD(X, Y) = min_pi mean_i |x_i - y_pi(i)|``
  over bijections ``pi`` (Euclidean, not squared), i.e. the 1-Wasserstein distance between the
  two uniform distributions.
- Over a generated set ``S`` and a reference set ``R`` with a shape distance ``d``:
  ``MMD = mean_{r in R} min_{s in S} d(r, s)``; ``COV = |{argmin_r d(s, r) : s in S}| / |R|``;
  ``1-NNA`` is the accuracy of the leave-one-out 1-nearest-neighbour classifier that tells the
  two sets apart in ``S u R`` (50% is ideal, 100% means fully separable, below 50% means the
  generated shapes copy reference shapes).
- Ties (several nearest neighbours at the same distance): a 1-NNA vote is the fraction of the tied
  neighbours with the same label, and COV counts every tied reference as matched.

EMD is exact (optimal assignment by a compiled shortest-augmenting-path solver) for sets of up
to ``exact_max`` points.
Larger sets use the *cluster* approximation: each cloud is split by recursive median cuts along its
widest axis into ``clusters`` groups of equal size (a power of two dividing the point count); the
exact EMD between the group centroids (equal weights) replaces the EMD between the clouds. Since
moving every point to its centroid is a transport plan, each such estimate is within the sum of the
two clouds' mean point-to-centroid distances (their *spread*) of the true EMD. The cuts are made in
``rotations`` fixed frames (``cut_rotations``: the identity, then seeded random rotations) and the
least of the estimates is kept: in practice every estimate lies above the true EMD, so the least
one is the closest; its error bound (the largest of the frames' bounds) is returned with the
matrix. Its error against exact matching on procedural shape pairs is measured by
``bench/pointflow_metrics.py`` and stated in BENCHMARKS.md and in ``MEASURED_EMD_ERROR``. If
``clusters`` does not divide the point count, a fixed random subset of the largest multiple is
used.

Chamfer distances on a CPU come from a compiled (numba) float32 brute-force kernel: exact nearest
neighbours, every unordered pair of clouds once; measured against float64 KD-trees in
BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numba
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from torch import Tensor

from flowsuite.core import FlowsuiteError

Clouds = Tensor | np.ndarray | Sequence[Tensor | np.ndarray]
NORMALIZATIONS = {
    "none": "clouds compared as given (PointFlow's convention: the data set's own scale)",
    "unit_sphere": "each cloud centred on its bounding-box centre and scaled so that its "
                   "farthest point lies at distance 1",
    "unit_box": "each cloud centred on its bounding-box centre and scaled so that its longest "
                "bounding-box side is 2 (it fits in [-1, 1]^3)",
}
CD_DEFINITION = ("mean squared nearest-neighbour distance from X to Y plus from Y to X")
EMD_DEFINITION = "mean Euclidean distance under the optimal bijection (1-Wasserstein)"
EMD_CLUSTERS = 64
EMD_ROTATIONS = 4
# Relative error (mean signed, max absolute) of the cluster approximation against exact matching
# for (clusters, rotations), measured on 24 pairs of 2048-point procedural shapes by
# bench/pointflow_metrics.py (bench/results/pointflow_metrics_emd_error.json; BENCHMARKS.md,
# "EMD approximation error").
MEASURED_EMD_ERROR: dict[tuple[int, int], tuple[float, float]] = {
    (32, 1): (0.077, 0.210), (32, 4): (0.053, 0.170), (32, 8): (0.046, 0.141),
    (64, 1): (0.063, 0.335), (64, 4): (0.042, 0.108), (64, 8): (0.039, 0.081),
    (128, 1): (0.040, 0.193), (128, 4): (0.030, 0.108), (128, 8): (0.029, 0.108),
}


# ---- inputs ---------------------------------------------------------------------------------

def as_cloud_list(clouds: Clouds, name: str = "clouds") -> list[np.ndarray]:
    """Validates clouds ``(K, N, 3)`` or a sequence of ``(n_k, 3)``; returns float64 arrays."""
    if isinstance(clouds, Tensor | np.ndarray):
        arr = clouds.detach().cpu().numpy() if isinstance(clouds, Tensor) else clouds
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise FlowsuiteError(f"{name} must be (K, N, 3) or a list of (N, 3) clouds, got "
                                 f"shape {arr.shape}")
        items = list(arr)
    else:
        items = [c.detach().cpu().numpy() if isinstance(c, Tensor) else np.asarray(c)
                 for c in clouds]
    if not items:
        raise FlowsuiteError(f"{name} is empty: give at least one cloud")
    out = []
    for i, c in enumerate(items):
        if c.ndim != 2 or c.shape[1] != 3 or c.shape[0] == 0:
            raise FlowsuiteError(f"cloud {i} of {name} must be a non-empty (N, 3) array, got "
                                 f"shape {c.shape}")
        c = c.astype(np.float64)
        if not np.isfinite(c).all():
            raise FlowsuiteError(f"cloud {i} of {name} contains NaN or infinite coordinates")
        out.append(c)
    return out


def normalize_clouds(clouds: list[np.ndarray], mode: str) -> list[np.ndarray]:
    """Applies one of ``NORMALIZATIONS`` to each cloud ``(n, 3)``."""
    if mode not in NORMALIZATIONS:
        raise FlowsuiteError(f"unknown normalization {mode!r}; choose from "
                             f"{sorted(NORMALIZATIONS)}")
    if mode == "none":
        return clouds
    out = []
    for c in clouds:
        lo, hi = c.min(0), c.max(0)
        centred = c - (lo + hi) / 2
        if mode == "unit_sphere":
            scale = np.linalg.norm(centred, axis=1).max()
        else:
            scale = (hi - lo).max() / 2
        out.append(centred / scale if scale > 0 else centred)
    return out


# ---- Chamfer --------------------------------------------------------------------------------

def chamfer_distance(x: Tensor, y: Tensor, max_elements: int = 1 << 24) -> Tensor:
    """Chamfer distance of paired clouds ``x (B, N, 3)`` and ``y (B, M, 3)`` -> ``(B,)``.

    Brute force in torch (any device, differentiable), in chunks of points so that no distance
    block holds more than ``max_elements`` entries.
    """
    if x.dim() != 3 or y.dim() != 3 or x.shape[0] != y.shape[0] or x.shape[2] != 3 \
            or y.shape[2] != 3:
        raise FlowsuiteError(f"chamfer_distance needs paired clouds (B, N, 3) and (B, M, 3), got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
    b, n, _ = x.shape
    m = y.shape[1]
    yy = (y * y).sum(-1)  # (B, M)
    rows = max(1, max_elements // max(1, b * m))
    x_to_y = []
    y_to_x = torch.full((b, m), math.inf, dtype=x.dtype, device=x.device)
    for s in range(0, n, rows):
        xs = x[:, s:s + rows]
        d = torch.baddbmm(yy.unsqueeze(1), xs, y.transpose(1, 2), alpha=-2.0)
        d = (d + (xs * xs).sum(-1, keepdim=True)).clamp_min(0)  # (B, rows, M)
        x_to_y.append(d.amin(2))
        y_to_x = torch.minimum(y_to_x, d.amin(1))
    return torch.cat(x_to_y, 1).mean(1) + y_to_x.mean(1)


def _directed_nn_matrix(queries: list[np.ndarray], targets: list[np.ndarray],
                        workers: int) -> np.ndarray:
    """``D[i, j] = mean_{x in queries[i]} min_{y in targets[j]} |x - y|^2`` with KD-trees."""
    sizes = np.array([len(q) for q in queries])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    stacked = np.concatenate(queries)
    out = np.empty((len(queries), len(targets)))
    for j, t in enumerate(targets):
        dist, _ = cKDTree(t, leafsize=16).query(stacked, k=1, workers=workers)
        out[:, j] = np.add.reduceat(dist * dist, starts) / sizes
    return out


_FAST = {"nsz", "arcp", "contract", "reassoc", "nnan", "ninf"}  # finite inputs are checked
if "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
    # numba's own thread pool first: it needs no TBB (an old one only gives a warning) and does
    # not share an OpenMP runtime with torch.
    numba.config.THREADING_LAYER_PRIORITY = ["workqueue", "omp", "tbb"]


@numba.njit(fastmath=_FAST, boundscheck=False, cache=True)
def _nn_sq_sum(x: np.ndarray, yt: np.ndarray, lo: int, hi: int, best: np.ndarray) -> float:
    """Sum over the points ``yt[:, lo:hi]`` of the squared distance to their nearest point of
    ``x (n, 3)`` (float32; ``best`` is scratch of at least ``hi - lo``). Brute force, four
    points of ``x`` per sweep so that the inner loop vectorises."""
    m = hi - lo
    y0, y1, y2 = yt[0, lo:hi], yt[1, lo:hi], yt[2, lo:hi]
    for j in range(m):
        best[j] = np.float32(3e38)
    n = x.shape[0]
    for i in range(0, n - n % 4, 4):
        a0, a1, a2 = x[i, 0], x[i, 1], x[i, 2]
        b0, b1, b2 = x[i + 1, 0], x[i + 1, 1], x[i + 1, 2]
        c0, c1, c2 = x[i + 2, 0], x[i + 2, 1], x[i + 2, 2]
        e0, e1, e2 = x[i + 3, 0], x[i + 3, 1], x[i + 3, 2]
        for j in range(m):
            p, q, r = y0[j], y1[j], y2[j]
            da = (a0 - p) * (a0 - p) + (a1 - q) * (a1 - q) + (a2 - r) * (a2 - r)
            db = (b0 - p) * (b0 - p) + (b1 - q) * (b1 - q) + (b2 - r) * (b2 - r)
            dc = (c0 - p) * (c0 - p) + (c1 - q) * (c1 - q) + (c2 - r) * (c2 - r)
            de = (e0 - p) * (e0 - p) + (e1 - q) * (e1 - q) + (e2 - r) * (e2 - r)
            d1 = da if da < db else db
            d2 = dc if dc < de else de
            d = d1 if d1 < d2 else d2
            best[j] = d if d < best[j] else best[j]
    for i in range(n - n % 4, n):
        a0, a1, a2 = x[i, 0], x[i, 1], x[i, 2]
        for j in range(m):
            da = (a0 - y0[j]) ** 2 + (a1 - y1[j]) ** 2 + (a2 - y2[j]) ** 2
            best[j] = da if da < best[j] else best[j]
    total = 0.0
    for j in range(m):
        total += np.float64(best[j])
    return total


@numba.njit(parallel=True, cache=True)
def _chamfer_pairs(pts: np.ndarray, pts_t: np.ndarray, starts: np.ndarray, pi: np.ndarray,
                   pj: np.ndarray) -> np.ndarray:
    """Chamfer distance of the clouds ``pts[starts[k]:starts[k + 1]]`` for each pair
    ``(pi[p], pj[p])``; ``pts (P, 3)`` and ``pts_t (3, P)`` float32 -> ``(pairs,)`` float64."""
    out = np.empty(len(pi))
    width = 0
    for k in range(len(starts) - 1):
        width = max(width, starts[k + 1] - starts[k])
    for p in numba.prange(len(pi)):
        a0, a1 = starts[pi[p]], starts[pi[p] + 1]
        b0, b1 = starts[pj[p]], starts[pj[p] + 1]
        best = np.empty(width, np.float32)
        to_a = _nn_sq_sum(pts[a0:a1], pts_t, b0, b1, best)  # each point of b to its NN in a
        to_b = _nn_sq_sum(pts[b0:b1], pts_t, a0, a1, best)
        out[p] = to_a / (b1 - b0) + to_b / (a1 - a0)
    return out


@contextlib.contextmanager
def _numba_threads(threads: int | None) -> Iterator[None]:
    """Runs the block with ``threads`` numba threads (``None``: as set)."""
    before = numba.get_num_threads()
    if threads is not None:
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _pair_indices(na: int, nb: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs into ``clouds_a + clouds_b``: every ``(a, b)``, or with ``nb=None`` every
    unordered pair of distinct clouds of ``a``."""
    if nb is None:
        pi, pj = np.triu_indices(na, 1)
    else:
        pi, pj = np.divmod(np.arange(na * nb), nb)
        pj = pj + na
    return pi.astype(np.int64), pj.astype(np.int64)


def _fill_matrix(vals: np.ndarray, pi: np.ndarray, pj: np.ndarray, na: int,
                 nb: int | None) -> np.ndarray:
    """The ``(A, B)`` matrix (``(A, A)``, symmetric, zero diagonal, for ``nb=None``) from the
    values of ``_pair_indices(na, nb)``."""
    if nb is None:
        out = np.zeros((na, na))
        out[pi, pj] = vals
        out[pj, pi] = vals
        return out
    return vals.reshape(na, nb)


def _chamfer_matrix_brute(la: list[np.ndarray], lb: list[np.ndarray] | None,
                          threads: int | None) -> np.ndarray:
    """Chamfer matrix ``(A, B)`` by the float32 brute-force kernel; ``lb=None``: ``la`` against
    itself, each unordered pair computed once (one pass over a pair's distances per direction)."""
    clouds = la if lb is None else la + lb
    starts = np.concatenate([[0], np.cumsum([len(c) for c in clouds])]).astype(np.int64)
    pts = np.ascontiguousarray(np.concatenate(clouds), dtype=np.float32)
    pts_t = np.ascontiguousarray(pts.T)
    nb = None if lb is None else len(lb)
    pi, pj = _pair_indices(len(la), nb)
    with _numba_threads(threads):
        vals = _chamfer_pairs(pts, pts_t, starts, pi, pj)
    return _fill_matrix(vals, pi, pj, len(la), nb)


def chamfer_matrix(a: Clouds, b: Clouds | None = None, backend: str = "auto",
                   workers: int = -1) -> Tensor:
    """Chamfer distances between every cloud of ``a`` and every cloud of ``b`` (``a`` itself if
    ``None``): ``(A, B)`` float64.

    ``backend``: ``"brute"`` (exact nearest neighbours by a compiled float32 brute-force kernel,
    fastest on a CPU: one pass over each pair's distances per direction, each unordered pair of
    ``a`` once when ``b`` is None; relative error below 1e-6 against float64, measured in
    BENCHMARKS.md), ``"kdtree"`` (scipy's KD-tree, float64), ``"torch"`` (brute force, chunked;
    on CUDA when available) or ``"auto"`` (torch when CUDA is available, else brute).
    ``workers``: CPU threads for brute and kdtree, -1 for all.
    """
    la = as_cloud_list(a, "a")
    lb = la if b is None else as_cloud_list(b, "b")
    if backend == "auto":
        backend = "torch" if torch.cuda.is_available() else "brute"
    if backend == "brute":
        return torch.from_numpy(_chamfer_matrix_brute(la, None if b is None else lb,
                                                      None if workers == -1 else workers))
    if backend == "kdtree":
        d_ab = _directed_nn_matrix(la, lb, workers)
        d_ba = d_ab if b is None else _directed_nn_matrix(lb, la, workers)
        return torch.from_numpy(d_ab + d_ba.T)
    if backend != "torch":
        raise FlowsuiteError(f"unknown Chamfer backend {backend!r}; use auto, brute, kdtree or "
                             "torch")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = torch.empty(len(la), len(lb), dtype=torch.float64)
    tb = [torch.from_numpy(c).float().to(device) for c in lb]
    for i, ca in enumerate(la):
        x = torch.from_numpy(ca).float().to(device).unsqueeze(0)
        for j, y in enumerate(tb):
            out[i, j] = float(chamfer_distance(x, y.unsqueeze(0))[0])
    return out


# ---- EMD ------------------------------------------------------------------------------------

def emd_exact(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> float:
    """Exact EMD of two clouds of equal size ``(N, 3)``: the mean Euclidean distance under the
    optimal bijection (Hungarian-type solver; cubic in N, so meant for N up to ~1000)."""
    xa, ya = as_cloud_list([x], "x")[0], as_cloud_list([y], "y")[0]
    if len(xa) != len(ya):
        raise FlowsuiteError(f"exact EMD needs clouds of equal size, got {len(xa)} and "
                             f"{len(ya)} points")
    cost = np.linalg.norm(xa[:, None, :] - ya[None, :, :], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def balanced_clusters(points: Tensor, clusters: int) -> tuple[Tensor, Tensor]:
    """Splits each cloud of ``points (K, N, 3)`` into ``clusters`` equal groups by recursive
    median cuts along the group's widest axis.

    ``clusters`` must be a power of two dividing ``N``. Returns the group centroids
    ``(K, clusters, 3)`` and each cloud's spread ``(K,)``: its mean point-to-centroid distance.
    """
    k, n, _ = points.shape
    levels = int(round(math.log2(clusters)))
    if clusters < 1 or 2 ** levels != clusters or n % clusters:
        raise ValueError(f"clusters must be a power of two dividing {n}, got {clusters}")
    g = points.unsqueeze(1)  # (K, groups, size, 3)
    for _ in range(levels):
        axis = (g.amax(2) - g.amin(2)).argmax(-1)  # (K, G)
        key = g.gather(3, axis[..., None, None].expand(-1, -1, g.shape[2], 1)).squeeze(-1)
        order = key.argsort(dim=-1, stable=True)
        g = g.gather(2, order.unsqueeze(-1).expand(-1, -1, -1, 3))
        g = g.reshape(k, g.shape[1] * 2, g.shape[2] // 2, 3)
    centroids = g.mean(2)
    spread = (g - centroids.unsqueeze(2)).norm(dim=-1).mean((1, 2))
    return centroids, spread


def cut_rotations(count: int) -> np.ndarray:
    """``count`` fixed rotations ``(count, 3, 3)``: the identity, then seeded random ones. The
    cluster approximation repeats its median cuts in each rotated frame."""
    rng = np.random.default_rng(0)
    out = [np.eye(3)]
    while len(out) < count:
        q, r = np.linalg.qr(rng.standard_normal((3, 3)))
        q = q * np.sign(np.diag(r))
        out.append(q if np.linalg.det(q) > 0 else -q)
    return np.stack(out[:count])


def _cluster_summaries(clouds: list[np.ndarray], clusters: int, rotations: int
                       ) -> tuple[list[np.ndarray], np.ndarray]:
    """Centroids ``(rotations, m, 3)`` and spreads ``(K, rotations)`` of every cloud, each
    clustering made in one frame of ``cut_rotations``; grouped by point count for batching."""
    cents: list[np.ndarray | None] = [None] * len(clouds)
    spreads = np.zeros((len(clouds), rotations))
    frames = torch.from_numpy(cut_rotations(rotations))
    by_size: dict[int, list[int]] = {}
    for i, c in enumerate(clouds):
        by_size.setdefault(len(c), []).append(i)
    for n, idx in by_size.items():
        m = min(clusters, 1 << int(math.floor(math.log2(n))))
        keep = n - n % m
        batch = torch.from_numpy(np.stack([clouds[i] for i in idx]))
        if keep < n:  # a fixed random subset whose size m divides
            sel = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:keep]
            batch = batch[:, sel.sort().values]
        turned = torch.einsum("knd,red->krne", batch, frames)  # (K, R, n', 3)
        cent, spread = balanced_clusters(turned.reshape(-1, keep, 3), m)
        cent, spread = cent.reshape(len(idx), rotations, m, 3), spread.reshape(len(idx), rotations)
        for j, i in enumerate(idx):
            cents[i] = cent[j].numpy()
            spreads[i] = spread[j].numpy()
    return cents, spreads  # type: ignore[return-value]


@numba.njit(cache=True)
def _min_mean_assignment(c: np.ndarray, work: np.ndarray, iwork: np.ndarray) -> float:
    """Least mean cost of a bijection for the square cost ``c (n, n)``: exact, by shortest
    augmenting paths with dual potentials (Jonker-Volgenant style) after a column and row
    reduction that matches the rows whose cheapest reduced column is free. ``work (3, n + 1)``
    float64 and ``iwork (3, n + 1)`` int64 are scratch."""
    n = c.shape[0]
    u, v, minv = work[0], work[1], work[2]
    col_row, way, row_col = iwork[0], iwork[1], iwork[2]  # 1-based; 0 is "none"
    used = np.zeros(n + 1, np.bool_)
    col_row[:] = 0
    row_col[:] = 0
    u[:] = 0.0
    v[0] = 0.0
    for j in range(1, n + 1):
        v[j] = c[0, j - 1]
        for i in range(1, n):
            v[j] = min(v[j], c[i, j - 1])
    for i in range(1, n + 1):
        best, bj = np.inf, 1
        for j in range(1, n + 1):
            r = c[i - 1, j - 1] - v[j]
            if r < best:
                best, bj = r, j
        u[i] = best
        if col_row[bj] == 0:
            col_row[bj] = i
            row_col[i] = bj
    for i in range(1, n + 1):
        if row_col[i]:
            continue
        col_row[0] = i
        j0 = 0
        minv[:] = np.inf
        used[:] = False
        while True:  # Dijkstra over the columns until a free one is reached
            used[j0] = True
            i0 = col_row[j0]
            delta, j1 = np.inf, 0
            for j in range(1, n + 1):
                if not used[j]:
                    cur = c[i0 - 1, j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j] = cur
                        way[j] = j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(n + 1):
                if used[j]:
                    u[col_row[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if col_row[j0] == 0:
                break
        while j0:  # flip the augmenting path
            j1 = way[j0]
            col_row[j0] = col_row[j1]
            j0 = j1
        for j in range(1, n + 1):
            row_col[col_row[j]] = j
    total = 0.0
    for j in range(1, n + 1):
        total += c[col_row[j] - 1, j - 1]
    return total / n


@numba.njit(parallel=True, cache=True)
def _emd_pairs(sets: np.ndarray, pi: np.ndarray, pj: np.ndarray) -> np.ndarray:
    """For each pair ``(pi[p], pj[p])`` of ``sets (K, R, m, 3)`` float64: the least over ``r``
    of the exact EMD between ``sets[pi[p], r]`` and ``sets[pj[p], r]`` -> ``(pairs,)``."""
    m = sets.shape[2]
    out = np.empty(len(pi))
    for p in numba.prange(len(pi)):
        cost = np.empty((m, m))
        work = np.empty((3, m + 1))
        iwork = np.empty((3, m + 1), np.int64)
        best = np.inf
        for r in range(sets.shape[1]):
            x, y = sets[pi[p], r], sets[pj[p], r]
            for i in range(m):
                for j in range(m):
                    d0, d1, d2 = x[i, 0] - y[j, 0], x[i, 1] - y[j, 1], x[i, 2] - y[j, 2]
                    cost[i, j] = math.sqrt(d0 * d0 + d1 * d1 + d2 * d2)
            best = min(best, _min_mean_assignment(cost, work, iwork))
        out[p] = best
    return out


def cluster_method_description(clusters: int, rotations: int) -> str:
    """The ``"emd_method"`` text of the cluster approximation, with its measured error."""
    text = (f"clusters ({clusters} balanced median-cut groups per cloud, exact assignment of "
            f"their centroids, least estimate over {rotations} rotations of the cuts)")
    if (clusters, rotations) in MEASURED_EMD_ERROR:
        mean, worst = MEASURED_EMD_ERROR[clusters, rotations]
        return (f"{text}; measured error vs exact EMD on 2048-point procedural shape pairs: "
                f"mean {mean:+.1%}, max {worst:.1%}")
    return f"{text}; error not measured for these settings (bench/pointflow_metrics.py)"


def emd_matrix(a: Clouds, b: Clouds | None = None, method: str = "auto",
               clusters: int = EMD_CLUSTERS, exact_max: int = 256,
               rotations: int = EMD_ROTATIONS, workers: int = -1
               ) -> tuple[Tensor, dict[str, Any]]:
    """EMD between every cloud of ``a`` and every cloud of ``b`` (``a`` itself if ``None``).

    ``method``: ``"exact"`` (equal-size clouds), ``"clusters"`` (the approximation described in
    the module docstring: ``clusters`` groups per cloud, the least estimate over ``rotations``
    frames of the cuts) or ``"auto"`` (exact when every cloud has the same size of at most
    ``exact_max`` points). Returns the ``(A, B)`` float64 matrix and an info dict with
    ``"emd_method"`` and, for clusters, ``"error_bound"``: the ``(A, B)`` bound on each entry's
    absolute error. Assignments are solved exactly by a compiled solver, ``workers`` threads
    (-1: all).
    """
    la = as_cloud_list(a, "a")
    lb = la if b is None else as_cloud_list(b, "b")
    sizes = {len(c) for c in la + lb}
    if method == "auto":
        method = "exact" if len(sizes) == 1 and sizes.pop() <= exact_max else "clusters"
    if method == "exact":
        if len({len(c) for c in la + lb}) != 1:
            raise FlowsuiteError("exact EMD needs every cloud to have the same number of points; "
                                 "use method='clusters'")
        sa, sb = [c[None] for c in la], [c[None] for c in lb]
        info: dict[str, Any] = {"emd_method": "exact (optimal assignment of the points)"}
    elif method == "clusters":
        if clusters < 1 or clusters & (clusters - 1) or rotations < 1:
            raise FlowsuiteError(f"EMD clusters must be a power of two and rotations at least "
                                 f"1, got {clusters} and {rotations}")
        sa, spread_a = _cluster_summaries(la, clusters, rotations)
        sb, spread_b = (sa, spread_a) if b is None else _cluster_summaries(lb, clusters,
                                                                           rotations)
        bound = (spread_a[:, None, :] + spread_b[None, :, :]).max(-1)
        used = sa[0].shape[1]  # fewer than asked for clouds of fewer points
        info = {"emd_method": cluster_method_description(used, rotations),
                "error_bound": torch.from_numpy(bound)}
    else:
        raise FlowsuiteError(f"unknown EMD method {method!r}; use auto, exact or clusters")
    if len({c.shape[1] for c in sa + sb}) != 1:
        raise FlowsuiteError("EMD needs clouds of equal size within each pair")
    nb = None if b is None else len(sb)
    pi, pj = _pair_indices(len(sa), nb)
    sets = np.ascontiguousarray(np.stack(sa if b is None else sa + sb), dtype=np.float64)
    with _numba_threads(None if workers == -1 else workers):
        vals = _emd_pairs(sets, pi, pj)
    return torch.from_numpy(_fill_matrix(vals, pi, pj, len(sa), nb)), info


# ---- distribution metrics -------------------------------------------------------------------

def _ties(row: Tensor, rtol: float = 1e-9) -> Tensor:
    """Mask of the entries of ``row`` equal to its minimum (within a relative tolerance)."""
    lo = row.min()
    return row <= lo + rtol * max(float(lo.abs()), 1e-30)


def mmd_cov(d_sr: Tensor) -> dict[str, float]:
    """MMD and COV from the distances ``d_sr (S, R)`` between generated and reference shapes."""
    mmd = float(d_sr.min(0).values.mean())
    covered = torch.zeros(d_sr.shape[1], dtype=torch.bool)
    for row in d_sr:
        covered |= _ties(row)
    return {"mmd": mmd, "cov": float(covered.float().mean())}


def one_nn_accuracy(d_ss: Tensor, d_sr: Tensor, d_rr: Tensor) -> float:
    """Leave-one-out 1-NN accuracy over ``S u R`` from the three blocks of the distance matrix
    (``d_ss (S, S)``, ``d_sr (S, R)``, ``d_rr (R, R)``); a tie counts as the fraction of the tied
    neighbours with the right label."""
    s, r = d_sr.shape
    full = torch.cat([torch.cat([d_ss, d_sr], 1), torch.cat([d_sr.T, d_rr], 1)], 0).clone()
    full.fill_diagonal_(math.inf)
    labels = torch.cat([torch.zeros(s, dtype=torch.bool), torch.ones(r, dtype=torch.bool)])
    votes = []
    for i, row in enumerate(full):
        tied = _ties(row)
        votes.append(float((labels[tied] == labels[i]).float().mean()))
    return float(np.mean(votes))


def evaluate(generated: Clouds, reference: Clouds, normalization: str = "none",
             distances: Sequence[str] = ("cd", "emd"), emd_method: str = "auto",
             emd_clusters: int = EMD_CLUSTERS, exact_max: int = 256, cd_backend: str = "auto",
             emd_rotations: int = EMD_ROTATIONS) -> dict[str, Any]:
    """MMD, COV and 1-NNA of a generated set against a reference set, with CD and/or EMD.

    Returns a JSON-serialisable dict: ``"MMD-CD"``, ``"COV-CD"``, ``"1-NNA-CD"`` (and the EMD
    ones), plus ``"normalization"``, ``"emd_method"``, the distance definitions, the set sizes,
    the mean EMD error bound (cluster approximation) and the seconds taken. COV and 1-NNA are
    fractions in ``[0, 1]``. ``emd_clusters`` and ``emd_rotations`` set the cluster
    approximation (``emd_matrix``); the distances use every numba thread (``numba.
    set_num_threads`` limits them).
    """
    start = time.perf_counter()
    gen = normalize_clouds(as_cloud_list(generated, "generated"), normalization)
    ref = normalize_clouds(as_cloud_list(reference, "reference"), normalization)
    unknown = set(distances) - {"cd", "emd"}
    if unknown or not distances:
        raise FlowsuiteError(f"distances must be among 'cd' and 'emd', got {list(distances)}")
    s = len(gen)
    report: dict[str, Any] = {
        "normalization": f"{normalization}: {NORMALIZATIONS[normalization]}",
        "n_generated": s, "n_reference": len(ref),
        "points_generated": sorted({len(c) for c in gen}),
        "points_reference": sorted({len(c) for c in ref}),
    }
    union = gen + ref
    for name in distances:
        if name == "cd":
            full = chamfer_matrix(union, backend=cd_backend)
            report["cd_definition"] = CD_DEFINITION
        else:
            full, info = emd_matrix(union, method=emd_method, clusters=emd_clusters,
                                    exact_max=exact_max, rotations=emd_rotations)
            report["emd_definition"] = EMD_DEFINITION
            report["emd_method"] = info["emd_method"]
            if "error_bound" in info:
                report["emd_mean_error_bound"] = float(info["error_bound"][:s, s:].mean())
        d_ss, d_sr, d_rr = full[:s, :s], full[:s, s:], full[s:, s:]
        mc = mmd_cov(d_sr)
        tag = name.upper()
        report[f"MMD-{tag}"] = mc["mmd"]
        report[f"COV-{tag}"] = mc["cov"]
        report[f"1-NNA-{tag}"] = one_nn_accuracy(d_ss, d_sr, d_rr)
    report["seconds"] = time.perf_counter() - start
    return report
