"""Solid parts for procedural shapes, their triangle meshes, and area-uniform sampling of the
visible surface of an assembly of parts.

Every part is a *loft*: a solid swept along its local y axis through a few cross-sections
(superellipses: an ellipse for exponent 2, a rectangle for ``inf``, rounded rectangles between),
with the cross-section's size and centre interpolated linearly between the stations. That one
primitive gives boxes, cylinders, cones, tapered and swept wings, rounded cushions and
ellipsoids, and it has an exact inside test that matches its mesh, which is what lets sampling
drop the surface hidden inside other parts (a leg's end inside a seat) as a real model's visible
surface would.

Units are arbitrary; y is up. Arrays are float64 while building, float32 once sampled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_SEGMENTS_ROUND = 20


def frame(axis: np.ndarray, hint: np.ndarray | None = None) -> np.ndarray:
    """A rotation ``(3, 3)`` whose columns are local x, y, z in world coordinates, with local y
    along ``axis`` and local x as close to ``hint`` (default world x) as it can be."""
    y = np.asarray(axis, float)
    y = y / np.linalg.norm(y)
    h = np.array([1.0, 0.0, 0.0]) if hint is None else np.asarray(hint, float)
    x = h - np.dot(h, y) * y
    if np.linalg.norm(x) < 1e-6:
        h = np.array([0.0, 0.0, 1.0]) if abs(y[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
        x = h - np.dot(h, y) * y
    x = x / np.linalg.norm(x)
    z = np.cross(x, y)
    return np.stack([x, y, z], axis=1)


def rot_x(a: float) -> np.ndarray:
    """Rotation by ``a`` radians about world x, ``(3, 3)``."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], float)


def rot_y(a: float) -> np.ndarray:
    """Rotation by ``a`` radians about world y, ``(3, 3)``."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], float)


def rot_z(a: float) -> np.ndarray:
    """Rotation by ``a`` radians about world z, ``(3, 3)``."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], float)


@dataclass
class Loft:
    """A solid swept along local y.

    ``ys`` (K,) increasing station heights; ``rx``, ``rz`` (K,) cross-section half-widths;
    ``cx``, ``cz`` (K,) cross-section centres; ``p`` the superellipse exponent (2 ellipse,
    ``inf`` rectangle); ``rot`` (3, 3) and ``origin`` (3,) place local coordinates in the world
    (``world = origin + rot @ local``). ``capped=False`` leaves the ends open (a lamp shade):
    such a part is a shell and hides nothing. ``cuts`` are solids taken away from this one
    (a car's wheel arches): its surface inside them is dropped and they hide nothing.
    """

    ys: np.ndarray
    rx: np.ndarray
    rz: np.ndarray
    cx: np.ndarray
    cz: np.ndarray
    p: float = 2.0
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    capped: bool = True
    cuts: list[Loft] = field(default_factory=list)

    def _ring(self) -> tuple[np.ndarray, np.ndarray]:
        if np.isinf(self.p):
            t = np.pi / 4 + np.arange(4) * np.pi / 2
            return np.sign(np.cos(t)), np.sign(np.sin(t))
        m = _SEGMENTS_ROUND if self.p <= 2.5 else 28
        t = np.arange(m) * (2 * np.pi / m)
        c, s = np.cos(t), np.sin(t)
        e = 2.0 / self.p
        return np.sign(c) * np.abs(c) ** e, np.sign(s) * np.abs(s) ** e

    def mesh(self) -> tuple[np.ndarray, np.ndarray]:
        """World vertices ``(V, 3)`` and triangles ``(T, 3)`` (int64)."""
        ux, uz = self._ring()
        m, k = len(ux), len(self.ys)
        x = self.cx[:, None] + self.rx[:, None] * ux[None]
        z = self.cz[:, None] + self.rz[:, None] * uz[None]
        y = np.broadcast_to(self.ys[:, None], x.shape)
        local = np.stack([x, y, z], -1).reshape(-1, 3)
        j = np.arange(m)
        jn = (j + 1) % m
        tris = []
        for i in range(k - 1):
            a, b = i * m + j, i * m + jn
            c, d = (i + 1) * m + jn, (i + 1) * m + j
            tris.append(np.stack([a, d, c], 1))
            tris.append(np.stack([a, c, b], 1))
        if self.capped:
            centres = np.array([[self.cx[0], self.ys[0], self.cz[0]],
                                [self.cx[-1], self.ys[-1], self.cz[-1]]])
            c0, c1 = k * m, k * m + 1
            local = np.concatenate([local, centres])
            tris.append(np.stack([np.full(m, c0), jn, j], 1))
            top = (k - 1) * m
            tris.append(np.stack([np.full(m, c1), top + j, top + jn], 1))
        verts = local @ self.rot.T + self.origin
        return verts, np.concatenate(tris).astype(np.int64)

    def inside(self, pts: np.ndarray, margin: float = 0.01) -> np.ndarray:
        """Boolean ``(N,)``: which world points ``(N, 3)`` lie inside the solid, shrunk by the
        relative ``margin`` so points on (or just by) its surface count as outside."""
        if not self.capped:
            return np.zeros(len(pts), bool)
        loc = (pts - self.origin) @ self.rot
        y = loc[:, 1]
        span = self.ys[-1] - self.ys[0]
        lo, hi = self.ys[0] + margin * span, self.ys[-1] - margin * span
        out = np.zeros(len(pts), bool)
        sel = np.flatnonzero((y > lo) & (y < hi))
        if len(sel) == 0:
            return out
        ys = y[sel]
        rx = np.interp(ys, self.ys, self.rx)
        rz = np.interp(ys, self.ys, self.rz)
        u = np.abs(loc[sel, 0] - np.interp(ys, self.ys, self.cx)) / np.maximum(rx, 1e-12)
        v = np.abs(loc[sel, 2] - np.interp(ys, self.ys, self.cz)) / np.maximum(rz, 1e-12)
        # the mesh's chords cut inside a round cross-section by up to ~1.3 % of its radius
        lim = 1.0 - margin - (0.0 if np.isinf(self.p) else 0.015)
        if np.isinf(self.p):
            ok = np.maximum(u, v) < lim
        else:
            ok = u ** self.p + v ** self.p < lim ** self.p
        out[sel] = ok
        for cut in self.cuts:
            hit = np.flatnonzero(out)
            out[hit] = ~cut.inside(pts[hit], margin=0.0)
        return out


def loft(ys, rx, rz, cx=0.0, cz=0.0, p: float = 2.0, rot=None, origin=None,
         capped: bool = True) -> Loft:
    """Builds a :class:`Loft`, broadcasting scalar station values to ``len(ys)``."""
    ys = np.asarray(ys, float)
    k = len(ys)

    def arr(v):
        return np.broadcast_to(np.asarray(v, float), (k,)).copy()

    return Loft(ys, arr(rx), arr(rz), arr(cx), arr(cz), float(p),
                np.eye(3) if rot is None else np.asarray(rot, float),
                np.zeros(3) if origin is None else np.asarray(origin, float), capped)


def box(center, size, rot=None, p: float = np.inf) -> Loft:
    """A box of full extents ``size`` (3,) centred at ``center`` (3,), optionally rotated
    (``rot`` (3, 3) about its centre); ``p`` < inf rounds its vertical edges."""
    sx, sy, sz = (float(s) for s in size)
    return loft([-sy / 2, sy / 2], sx / 2, sz / 2, p=p, rot=rot, origin=center)


def rod(a, b, r: float, r_end: float | None = None, p: float = 2.0, hint=None,
        rz: float | None = None, rz_end: float | None = None) -> Loft:
    """A rod from point ``a`` to ``b`` (3,) with radius ``r`` (tapering to ``r_end``); ``p``
    inf gives a square section; ``rz`` makes the section elliptic/rectangular."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    length = float(np.linalg.norm(b - a))
    r_end = r if r_end is None else r_end
    rz = r if rz is None else rz
    rz_end = (rz * r_end / r if r > 0 else r_end) if rz_end is None else rz_end
    return loft([0.0, length], [r, r_end], [rz, rz_end], p=p, rot=frame(b - a, hint), origin=a)


def ellipsoid(center, radii, rot=None, stations: int = 9) -> Loft:
    """An ellipsoid with semi-axes ``radii`` (3,) (local x, y, z), as a loft of ``stations``."""
    rx, ry, rz = (float(r) for r in radii)
    phi = np.linspace(0, np.pi, stations)
    ys = -ry * np.cos(phi)
    s = np.sin(phi)
    return loft(ys, rx * s, rz * s, rot=rot, origin=center)


class Assembly:
    """A shape made of parts; meshes and samples the union's visible surface."""

    def __init__(self, parts: list[Loft]):
        self.parts = list(parts)

    def add(self, *parts: Loft) -> None:
        self.parts.extend(parts)

    def mesh(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vertices ``(V, 3)``, triangles ``(T, 3)`` and the part of each triangle ``(T,)``."""
        vs, ts, ids = [], [], []
        off = 0
        for i, part in enumerate(self.parts):
            v, t = part.mesh()
            vs.append(v)
            ts.append(t + off)
            ids.append(np.full(len(t), i))
            off += len(v)
        return np.concatenate(vs), np.concatenate(ts), np.concatenate(ids)

    def transform(self, scale: float, shift: np.ndarray) -> None:
        """Maps every part by ``x -> scale * x + shift`` (in place)."""
        for p in self.parts:
            p.ys, p.rx, p.rz = p.ys * scale, p.rx * scale, p.rz * scale
            p.cx, p.cz = p.cx * scale, p.cz * scale
            p.origin = p.origin * scale + shift
            for c in p.cuts:
                c.ys, c.rx, c.rz = c.ys * scale, c.rx * scale, c.rz * scale
                c.cx, c.cz = c.cx * scale, c.cz * scale
                c.origin = c.origin * scale + shift

    def normalize(self) -> None:
        """Centres the bounding box of the mesh at the origin and scales its diagonal to 1, as
        ShapeNetCore.v2's ``model_normalized`` files are."""
        v, _, _ = self.mesh()
        lo, hi = v.min(0), v.max(0)
        s = 1.0 / float(np.linalg.norm(hi - lo))
        self.transform(s, -(lo + hi) / 2 * s)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` points ``(n, 3)`` float32, uniform by area on the visible surface: the union's
        surface without the parts of each part's surface that lie inside another part."""
        v, t, pid = self.mesh()
        tri = v[t]
        cum = np.cumsum(triangle_areas(tri))
        boxes = [(part, *_bounds(v[t[pid == i]].reshape(-1, 3)))
                 for i, part in enumerate(self.parts)]
        out: list[np.ndarray] = []
        have, want = 0, int(n * 1.5) + 64
        while have < n:
            pts, idx = _sample_cum(tri, cum, want, rng)
            src = pid[idx]
            hidden = np.zeros(want, bool)
            for i, part in enumerate(self.parts):
                for cut in part.cuts:
                    mine = np.flatnonzero(src == i)
                    hidden[mine] |= cut.inside(pts[mine], margin=0.0)
            for i, (part, lo, hi) in enumerate(boxes):
                cand = np.flatnonzero((src != i) & ~hidden
                                      & np.all((pts > lo) & (pts < hi), axis=1))
                if len(cand):
                    hidden[cand] = part.inside(pts[cand])
            keep = pts[~hidden]
            out.append(keep)
            have += len(keep)
            want = max(int((n - have) * 2.0) + 64, 256)
        return np.concatenate(out)[:n].astype(np.float32)

    def to_open3d(self):
        """The assembly as an ``open3d.geometry.TriangleMesh`` (all parts' surfaces)."""
        import open3d as o3d

        v, t, _ = self.mesh()
        m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v),
                                      o3d.utility.Vector3iVector(t.astype(np.int32)))
        m.compute_vertex_normals()
        return m


def triangle_areas(tri: np.ndarray) -> np.ndarray:
    """Areas ``(T,)`` of triangles given as corners ``(T, 3, 3)``."""
    return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


def _sample_cum(tri: np.ndarray, cum: np.ndarray, n: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    u = rng.random((3, n))
    idx = np.minimum(np.searchsorted(cum, u[0] * cum[-1], side="right"), len(cum) - 1)
    s = np.sqrt(u[1])
    w = np.stack([1 - s, s * (1 - u[2]), s * u[2]], 1)  # barycentric weights (n, 3)
    return np.einsum("nk,nkd->nd", w, tri[idx]), idx


def sample_surface(vertices: np.ndarray, triangles: np.ndarray, n: int,
                   rng: np.random.Generator) -> np.ndarray:
    """``n`` points ``(n, 3)`` float32 uniform by area on a triangle mesh (``vertices`` (V, 3),
    ``triangles`` (T, 3) int). The mesh must have a positive area."""
    tri = np.asarray(vertices, np.float64)[np.asarray(triangles)]
    cum = np.cumsum(triangle_areas(tri))
    return _sample_cum(tri, cum, n, rng)[0].astype(np.float32)


def _bounds(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return v.min(0), v.max(0)
