"""Reading and writing point clouds: ``.ply`` through open3d, PNG previews (matplotlib, headless),
surface meshes reconstructed from points, and input clouds or meshes for ``--from``.

Every file is written atomically (a temporary file beside the target, renamed when complete) and
an existing file is replaced only with ``force=True``. Problems a user can cause raise a one-line
``FlowsuiteError``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open3d as o3d
import torch
from torch import Tensor

from flowsuite.core.errors import FlowsuiteError
from flowsuite.core.io import atomic_path

CLOUD_SUFFIXES = (".ply", ".pcd", ".xyz", ".npy")
MESH_SUFFIXES = (".obj", ".off", ".stl", ".ply")
MESH_OUT_SUFFIXES = (".ply", ".obj")

o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)


def _array(points: Tensor | np.ndarray, name: str = "points") -> np.ndarray:
    """A finite, non-empty ``(N, 3)`` float64 array."""
    arr = points.detach().cpu().numpy() if isinstance(points, Tensor) else np.asarray(points)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise FlowsuiteError(f"{name} must be a non-empty (N, 3) array, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise FlowsuiteError(f"{name} contains NaN or infinite coordinates")
    return arr


def _suffix(path: str | os.PathLike, allowed: Sequence[str], what: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in allowed:
        shown = suffix or "a file without an extension"
        raise FlowsuiteError(f"{path}: cannot write a {what} as {shown}; use one of "
                             f"{', '.join(allowed)}")
    return suffix


# ---- writing --------------------------------------------------------------------------------

def write_ply(points: Tensor | np.ndarray, path: str | os.PathLike, force: bool = False,
              colors: Tensor | np.ndarray | None = None) -> Path:
    """Writes a cloud ``(N, 3)`` (optional RGB ``colors (N, 3)`` in ``[0, 1]``) as binary
    ``.ply``. Returns the path."""
    _suffix(path, (".ply",), "point cloud")
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(_array(points)))
    if colors is not None:
        pcd.colors = o3d.utility.Vector3dVector(np.clip(_array(colors, "colors"), 0, 1))
    with atomic_path(path, force=force) as tmp:
        if not o3d.io.write_point_cloud(str(tmp), pcd, write_ascii=False):
            raise FlowsuiteError(f"could not write {path}; check the folder is writable")
    return Path(path)


def write_preview(clouds: Tensor | np.ndarray | Sequence[Tensor | np.ndarray],
                  path: str | os.PathLike, force: bool = False,
                  titles: Sequence[str] | None = None, point_size: float = 2.0,
                  elev: float = 20.0, azim: float = -60.0, panel_inches: float = 3.0) -> Path:
    """Renders one cloud ``(N, 3)`` or several (``(K, N, 3)`` or a list) side by side as a PNG of
    3D scatter plots (matplotlib's Agg backend: no display needed). Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _suffix(path, (".png",), "preview")
    if isinstance(clouds, Tensor | np.ndarray) and np.ndim(clouds) == 2:
        clouds = [clouds]
    items = [_array(c, f"cloud {i}") for i, c in enumerate(clouds)]
    if not items:
        raise FlowsuiteError("nothing to preview: give at least one cloud")
    if titles is not None and len(titles) != len(items):
        raise FlowsuiteError(f"got {len(titles)} titles for {len(items)} clouds")
    fig = Figure(figsize=(panel_inches * len(items), panel_inches), dpi=100)
    FigureCanvasAgg(fig)
    for i, pts in enumerate(items):
        ax = fig.add_subplot(1, len(items), i + 1, projection="3d")
        # Shapes are usually y-up; matplotlib's vertical axis is z.
        ax.scatter(pts[:, 0], pts[:, 2], pts[:, 1], s=point_size, c=pts[:, 1], cmap="viridis",
                   depthshade=True, linewidths=0)
        centre = (pts.max(0) + pts.min(0)) / 2
        half = max(float((pts.max(0) - pts.min(0)).max()) / 2, 1e-6)
        ax.set_xlim(centre[0] - half, centre[0] + half)
        ax.set_ylim(centre[2] - half, centre[2] + half)
        ax.set_zlim(centre[1] - half, centre[1] + half)
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=elev, azim=azim)
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    fig.subplots_adjust(0, 0, 1, 0.9 if titles else 1, 0, 0)
    with atomic_path(path, force=force) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def reconstruct_mesh(points: Tensor | np.ndarray, method: str = "ball_pivoting",
                     poisson_depth: int = 8) -> o3d.geometry.TriangleMesh:
    """A surface mesh through a cloud ``(N, 3)``: normals are estimated and oriented, then
    ``"ball_pivoting"`` (radii from the mean nearest-neighbour spacing; keeps only the sampled
    surface) or ``"poisson"`` (watertight; low-density vertices trimmed)."""
    pts = _array(points)
    if len(pts) < 4:
        raise FlowsuiteError("a surface needs at least 4 points")
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    spacing = float(np.mean(pcd.compute_nearest_neighbor_distance()))
    if not spacing > 0:
        raise FlowsuiteError("the points all coincide; no surface can be built")
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=4 * spacing, max_nn=30))
    pcd.orient_normals_consistent_tangent_plane(10)
    if method == "ball_pivoting":
        radii = o3d.utility.DoubleVector([spacing * f for f in (1.5, 3.0, 6.0)])
        mesh = o3d.geometry.TriangleMesh.create_from_point_cloud_ball_pivoting(pcd, radii)
    elif method == "poisson":
        mesh, density = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(
            pcd, depth=poisson_depth)
        density = np.asarray(density)
        mesh.remove_vertices_by_mask(density < np.quantile(density, 0.05))
    else:
        raise FlowsuiteError(f"unknown surface method {method!r}; use ball_pivoting or poisson")
    if len(mesh.triangles) == 0:
        raise FlowsuiteError("no surface could be reconstructed from these points; try more "
                             "points or the other method")
    mesh.compute_vertex_normals()
    return mesh


def write_mesh(mesh: o3d.geometry.TriangleMesh, path: str | os.PathLike,
               force: bool = False) -> Path:
    """Writes a triangle mesh as ``.ply`` or ``.obj``. Returns the path."""
    _suffix(path, MESH_OUT_SUFFIXES, "mesh")
    with atomic_path(path, force=force) as tmp:
        ok = o3d.io.write_triangle_mesh(str(tmp), mesh, write_triangle_uvs=False)
        if not ok:
            raise FlowsuiteError(f"could not write {path}; check the folder is writable")
    return Path(path)


# ---- reading --------------------------------------------------------------------------------

def _sample(arr: np.ndarray, points: int | None, seed: int) -> np.ndarray:
    if points is None or len(arr) <= points:
        return arr
    rng = np.random.default_rng(seed)
    return arr[np.sort(rng.choice(len(arr), points, replace=False))]


def sample_surface(vertices: np.ndarray, triangles: np.ndarray, points: int,
                   seed: int = 0) -> np.ndarray:
    """``points`` seeded samples, uniform by area, on a triangle mesh (``vertices (V, 3)``,
    ``triangles (T, 3)``): ``(points, 3)``."""
    tri = vertices[triangles]  # (T, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    total = area.sum()
    if not total > 0:
        raise FlowsuiteError("the mesh has no surface area to sample points from")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(tri), points, p=area / total)
    u, v = rng.random(points), rng.random(points)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[pick]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])


def read_cloud(path: str | os.PathLike, points: int | None = None, seed: int = 0) -> Tensor:
    """Reads a point cloud (``.ply``, ``.pcd``, ``.xyz``, ``.npy``) or a mesh (``.obj``,
    ``.off``, ``.stl``, or a ``.ply`` with faces, sampled uniformly on its surface) as ``(N, 3)``
    float32.

    ``points`` caps the size: a larger cloud keeps a seeded random subset, a mesh gives exactly
    that many samples (2048 when not given); a smaller cloud is returned whole.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in CLOUD_SUFFIXES + MESH_SUFFIXES:
        raise FlowsuiteError(f"{p}: unsupported format {suffix or '(no extension)'}; use one of "
                             f"{', '.join(sorted(set(CLOUD_SUFFIXES + MESH_SUFFIXES)))}")
    if not p.is_file():
        raise FlowsuiteError(f"{p} does not exist or is not a file")
    if p.stat().st_size == 0:
        raise FlowsuiteError(f"{p} is empty")
    if points is not None and (int(points) != points or points < 1):
        raise FlowsuiteError(f"points must be a positive integer, got {points!r}")
    arr: np.ndarray
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise FlowsuiteError(f"{p} is not a readable .npy array ({e})") from None
        if arr.ndim != 2 or arr.shape[1] < 3 or not np.issubdtype(arr.dtype, np.number):
            raise FlowsuiteError(f"{p} must hold an (N, 3) numeric array (extra columns such "
                                 f"as normals are dropped), got {arr.dtype} {arr.shape}")
        arr = _sample(arr[:, :3].astype(np.float64), points, seed)
    else:
        mesh = None
        if suffix in MESH_SUFFIXES:
            try:
                mesh = o3d.io.read_triangle_mesh(str(p))
            except RuntimeError:
                mesh = None
        if mesh is not None and len(mesh.triangles) > 0:
            if not np.isfinite(np.asarray(mesh.vertices)).all():
                raise FlowsuiteError(f"{p} contains NaN or infinite vertex coordinates")
            arr = sample_surface(np.asarray(mesh.vertices), np.asarray(mesh.triangles),
                                 points or 2048, seed)
        elif suffix in CLOUD_SUFFIXES:
            try:
                pcd = o3d.io.read_point_cloud(str(p))
            except RuntimeError:
                pcd = o3d.geometry.PointCloud()
            arr = _sample(np.asarray(pcd.points), points, seed)
        else:
            arr = np.zeros((0, 3))
    if arr.shape[0] == 0:
        raise FlowsuiteError(f"{p} holds no points (unreadable or empty); check the file")
    if not np.isfinite(arr).all():
        raise FlowsuiteError(f"{p} contains NaN or infinite coordinates")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
