"""Reading one shape file into points: meshes are sampled on their surface (uniform by area),
point clouds are read as they are. Any format open3d reads (``.ply .obj .off .stl .gltf .glb
.pcd .xyz .pts``) plus ``.npy``; ``.off`` goes through a parser of our own because ModelNet40's
files often glue the ``OFF`` keyword to the counts (``OFF490 518 0``), which open3d rejects.

A file that cannot give a usable shape raises :class:`BadShapeFile` with a short reason
(``empty``, ``corrupt``, ``degenerate``, ``non-finite``) so readers can skip it and say why.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from flowsuite.data.mesh import sample_surface, triangle_areas

MESH_EXTS = {".obj", ".off", ".stl", ".gltf", ".glb", ".ply"}
POINT_EXTS = {".pcd", ".xyz", ".xyzn", ".xyzrgb", ".pts", ".npy"}
SHAPE_EXTS = MESH_EXTS | POINT_EXTS


class BadShapeFile(ValueError):
    """A shape file that gives no usable shape; ``kind`` is one of ``empty``, ``corrupt``,
    ``degenerate``, ``non-finite``."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


# ----------------------------------------------------------------------------------------- OFF

_OFF_HEAD = re.compile(r"^(ST)?(C)?(N)?(4)?(n)?OFF", re.ASCII)


def read_off(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads an OFF mesh: vertices ``(V, 3)`` float64 and triangles ``(T, 3)`` int64 (polygons
    are split into fans). Accepts comments, blank lines, colour columns, ``COFF``/``NOFF``
    headers, and a header glued to the counts (``OFF1234 2000 0``). Raises ``BadShapeFile``."""
    raw = Path(path).read_bytes()
    if not raw.strip():
        raise BadShapeFile("empty", "the file is empty")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BadShapeFile("corrupt", "not a text OFF file") from None
    lines = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    if not lines:
        raise BadShapeFile("empty", "no data in the file")
    m = _OFF_HEAD.match(lines[0])
    if not m:
        raise BadShapeFile("corrupt", "no OFF header")
    rest = lines[0][m.end():].strip()
    pos = 1
    if not rest:
        if len(lines) < 2:
            raise BadShapeFile("corrupt", "no vertex and face counts")
        rest, pos = lines[1], 2
    try:
        counts = [int(t) for t in rest.split()[:2]]
        nv, nf = counts
    except ValueError:
        raise BadShapeFile("corrupt", f"bad counts line {rest[:40]!r}") from None
    if nv < 0 or nf < 0 or len(lines) < pos + nv + nf:
        raise BadShapeFile("corrupt", f"truncated: {nv} vertices and {nf} faces declared")
    vlines = lines[pos:pos + nv]
    flines = lines[pos + nv:pos + nv + nf]
    try:
        tok = " ".join(vlines).split()
        if len(tok) == 3 * nv:
            verts = np.array(tok, dtype=np.float64).reshape(nv, 3)
        else:
            verts = np.array([ln.split()[:3] for ln in vlines], dtype=np.float64)
        tok = " ".join(flines).split()
        if len(tok) == 4 * nf and all(ln.startswith("3 ") for ln in flines):
            tris = np.array(tok, dtype=np.int64).reshape(nf, 4)[:, 1:]
        else:
            out = []
            for ln in flines:
                f = ln.split()
                k = int(f[0])
                idx = [int(x) for x in f[1:1 + k]]
                if len(idx) < k:
                    raise ValueError("short face")
                out.extend((idx[0], idx[j], idx[j + 1]) for j in range(1, k - 1))
            tris = np.array(out, dtype=np.int64).reshape(-1, 3)
    except ValueError as e:
        raise BadShapeFile("corrupt", f"unreadable numbers ({e})") from None
    if verts.shape != (nv, 3):
        raise BadShapeFile("corrupt", "vertex lines with fewer than 3 numbers")
    if len(tris) and (tris.min() < 0 or tris.max() >= nv):
        raise BadShapeFile("corrupt", "a face refers to a vertex that does not exist")
    return verts, tris


# ------------------------------------------------------------------------------------ any file

def _open3d():
    import open3d as o3d

    return o3d


def _read_mesh_open3d(path: Path) -> tuple[np.ndarray, np.ndarray]:
    o3d = _open3d()
    if path.suffix.lower() == ".ply":
        with open(path, "rb") as f:
            if f.read(3) != b"ply":
                raise BadShapeFile("corrupt", "not a PLY file")
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        mesh = o3d.io.read_triangle_mesh(str(path), enable_post_processing=False,
                                         print_progress=False)
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.triangles, np.int64)


def _read_points_open3d(path: Path) -> np.ndarray:
    o3d = _open3d()
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        pc = o3d.io.read_point_cloud(str(path), print_progress=False)
    pts = np.asarray(pc.points, np.float64)
    if len(pts) == 0 and path.suffix.lower() in (".xyz", ".pts", ".xyzn", ".xyzrgb"):
        pts = _read_points_text(path)
    return pts


def _read_points_text(path: Path) -> np.ndarray:
    """Whitespace-separated rows with x y z first; a first line with one number (a count) is
    skipped."""
    rows = []
    try:
        for i, line in enumerate(path.read_text(errors="strict").splitlines()):
            f = line.split("#", 1)[0].split()
            if not f or (i == 0 and len(f) == 1):
                continue
            rows.append([float(x) for x in f[:3]])
    except (ValueError, UnicodeDecodeError):
        raise BadShapeFile("corrupt", "unreadable point rows") from None
    if rows and any(len(r) < 3 for r in rows):
        raise BadShapeFile("corrupt", "rows with fewer than 3 numbers")
    return np.array(rows, np.float64).reshape(-1, 3)


def _read_npy(path: Path) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BadShapeFile("corrupt", f"not a NumPy array file ({e})") from None
    if a.ndim != 2 or a.shape[1] < 3 or not np.issubdtype(a.dtype, np.number):
        raise BadShapeFile("corrupt", f"expected an (N, 3) array, found {a.dtype} {a.shape}")
    return a[:, :3].astype(np.float64)


def read_shape(path: str | os.PathLike, n_points: int, rng: np.random.Generator) -> np.ndarray:
    """Points ``(n, 3)`` float32 of one shape file: ``n_points`` samples on a mesh's surface,
    or a point cloud's points (a random ``n_points`` of them when it has more). Raises
    ``BadShapeFile`` for an empty, corrupt, degenerate or non-finite file."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise BadShapeFile("empty", "the file is empty")
    ext = path.suffix.lower()
    tris = np.zeros((0, 3), np.int64)
    if ext == ".npy":
        verts = _read_npy(path)
    elif ext == ".off":
        verts, tris = read_off(path)
    elif ext in MESH_EXTS:
        verts, tris = _read_mesh_open3d(path)
    elif ext in POINT_EXTS:
        verts = _read_points_open3d(path)
    else:
        raise BadShapeFile("corrupt", f"unsupported file type {ext}")
    if len(verts) == 0:
        raise BadShapeFile("corrupt", "no geometry could be read")
    if not np.isfinite(verts).all():
        raise BadShapeFile("non-finite", "coordinates that are NaN or infinite")
    if len(tris):
        if tris.max() >= len(verts):
            raise BadShapeFile("corrupt", "a face refers to a vertex that does not exist")
        area = triangle_areas(verts[tris]).sum()
        if not area > 0:
            raise BadShapeFile("degenerate", "the mesh has zero surface area")
        return sample_surface(verts, tris, n_points, rng)
    if np.ptp(verts, axis=0).max() <= 0:
        raise BadShapeFile("degenerate", "all points coincide")
    if len(verts) > n_points:
        verts = verts[rng.choice(len(verts), n_points, replace=False)]
    return verts.astype(np.float32)
