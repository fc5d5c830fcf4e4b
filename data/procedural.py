"""Procedural shape categories: airplanes, cars, chairs, tables, lamps and sofas built from parts
with seeded variation of style, part counts and proportions.

Orientation follows ShapeNetCore.v2's normalised models as flowsuite uses them: y is up, objects
face +z (an airplane's nose, a car's front, the side of a chair one sits down from), x is the
width (a wing's span). Every shape is centred on its bounding box, whose diagonal is 1.

    points = sample_shape("chair", seed=7, n_points=2048)     # (2048, 3) float32
    mesh = shape_mesh("airplane", seed=3)                      # open3d TriangleMesh
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

from flowsuite.core.errors import FlowsuiteError
from flowsuite.data.mesh import (
    Assembly,
    Loft,
    box,
    ellipsoid,
    frame,
    loft,
    rod,
    rot_x,
    rot_z,
)

INF = np.inf


def _u(rng: np.random.Generator, a: float, b: float) -> float:
    return float(rng.uniform(a, b))


def _pick(rng: np.random.Generator, options: list, weights: list[float] | None = None):
    w = None if weights is None else np.asarray(weights, float) / np.sum(weights)
    return options[int(rng.choice(len(options), p=w))]


def _place(parts: list[Loft], rot: np.ndarray, origin) -> list[Loft]:
    """Moves parts built in a local frame into the world: ``x -> origin + rot @ x``."""
    origin = np.asarray(origin, float)
    for p in parts:
        p.rot = rot @ p.rot
        p.origin = origin + rot @ p.origin
    return parts


def _mirror_x(part: Loft) -> Loft:
    """The part reflected through the plane x = 0 (a right wing from a left one)."""
    m = np.diag([-1.0, 1.0, 1.0])
    q = Loft(part.ys.copy(), part.rx.copy(), part.rz.copy(), part.cx.copy(), part.cz.copy(),
             part.p, m @ part.rot @ np.diag([-1.0, 1.0, 1.0]), m @ part.origin, part.capped)
    q.cx = -q.cx
    return q


# ----------------------------------------------------------------------------------------- chair

def _legs4(rng, w, d, top_y, inset, thick, square, splay, taper) -> tuple[list[Loft], list]:
    """Four legs from the floor to ``top_y`` under a w x d rectangle; returns parts and the
    leg axes as (foot, top) pairs (front-left, front-right, back-left, back-right)."""
    parts, axes = [], []
    for sz in (1, -1):
        for sx in (-1, 1):
            top = np.array([sx * (w / 2 - inset), top_y, sz * (d / 2 - inset)])
            foot = top + np.array([sx * splay * top_y, -top_y, sz * splay * top_y])
            foot[1] = 0.0
            parts.append(rod(foot, top, thick * taper, thick, p=INF if square else 2.0))
            axes.append((foot, top))
    return parts, axes


def _at(axis, y: float) -> np.ndarray:
    """The point of a leg axis (foot, top) at height ``y``."""
    foot, top = axis
    t = (y - foot[1]) / (top[1] - foot[1])
    return foot + t * (top - foot)


def _stretchers(rng, axes, thick, kind: str) -> list[Loft]:
    h = _u(rng, 0.08, 0.22)
    r = thick * 0.6
    fl, fr, bl, br = (_at(a, h) for a in axes)
    pairs = {"H": [(fl, bl), (fr, br), ((fl + bl) / 2, (fr + br) / 2)],
             "box": [(fl, fr), (bl, br), (fl, bl), (fr, br)],
             "sides": [(fl, bl), (fr, br)],
             "X": [(fl, br), (fr, bl)]}[kind]
    return [rod(a, b, r) for a, b in pairs]


def chair(rng: np.random.Generator) -> Assembly:
    """A chair: seat, one of five bases, one of five backs, optional arms."""
    base = _pick(rng, ["legs", "office", "sled", "panel", "pedestal"], [0.5, 0.16, 0.12, 0.1, 0.12])
    w = _u(rng, 0.42, 0.6)
    d = _u(rng, 0.4, 0.55)
    st = _u(rng, 0.03, 0.07) if base not in ("office", "panel") else _u(rng, 0.06, 0.11)
    sh = _u(rng, 0.40, 0.50)
    seat_p = _pick(rng, [INF, 4.0, 2.0], [0.5, 0.35, 0.15]) if base != "office" else 4.0
    if seat_p == 2.0:
        d = w * _u(rng, 0.9, 1.0)
    A = Assembly([box([0, sh - st / 2, 0], [w, st, d], p=seat_p)])

    lt = _u(rng, 0.015, 0.03)
    square = bool(rng.random() < 0.5)
    axes = None
    if base == "legs":
        inset = _u(rng, 0.015, 0.05) + lt
        if seat_p == 2.0:
            inset += 0.12 * w
        legs, axes = _legs4(rng, w, d, sh - st / 2, inset, lt, square,
                            _u(rng, 0.0, 0.08) if rng.random() < 0.5 else 0.0,
                            _u(rng, 0.55, 1.0))
        A.add(*legs)
        kind = _pick(rng, ["none", "H", "box", "sides", "X"], [0.4, 0.15, 0.2, 0.15, 0.1])
        if kind != "none":
            A.add(*_stretchers(rng, axes, lt, kind))
        if rng.random() < 0.4 and seat_p == INF:  # apron rails under the seat
            ah = _u(rng, 0.04, 0.08)
            y = sh - st - ah / 2 + 0.005
            fl, fr, bl, br = (a[1] for a in axes)
            for a, b in [(fl, fr), (bl, br), (fl, bl), (fr, br)]:
                a, b = a.copy(), b.copy()
                a[1] = b[1] = y
                A.add(rod(a, b, 0.01, rz=ah / 2, p=INF, hint=[0, 1, 0]))
    elif base == "office":
        col_top = sh - st + 0.01
        hub = _u(rng, 0.08, 0.12)
        A.add(rod([0, hub, 0], [0, col_top, 0], _u(rng, 0.02, 0.035)))
        A.add(rod([0, hub - 0.03, 0], [0, hub + 0.03, 0], 0.05))
        n = int(_pick(rng, [5, 5, 4]))
        reach = _u(rng, 0.26, 0.34)
        a0 = _u(rng, 0, 2 * np.pi)
        for k in range(n):
            ang = a0 + 2 * np.pi * k / n
            dvec = np.array([np.sin(ang), 0, np.cos(ang)])
            tip = dvec * reach + [0, 0.06, 0]
            A.add(rod([0, hub, 0], tip, 0.022, 0.016, p=4.0, hint=[0, 1, 0]))
            A.add(ellipsoid(tip + [0, -0.03, 0], [0.025, 0.03, 0.025]))
    elif base == "sled":
        rt = _u(rng, 0.01, 0.016)
        cant = rng.random() < 0.4  # cantilever: no rear uprights
        for sx in (-1, 1):
            x = sx * (w / 2 - 0.02)
            fz, bz = d / 2 - 0.02, -d / 2 + 0.02
            ftop, ffoot = [x, sh - st, fz], [x, 0.01, fz + _u(rng, 0.0, 0.04)]
            bfoot = [x, 0.01, bz - (0.08 if cant else 0.0)]
            A.add(rod(ffoot, ftop, rt), rod(ffoot, bfoot, rt))
            if not cant:
                A.add(rod(bfoot, [x, sh - st, bz], rt))
        if not cant:
            A.add(rod([-w / 2 + 0.02, 0.01, -d / 2 + 0.02], [w / 2 - 0.02, 0.01, -d / 2 + 0.02],
                      rt))
    elif base == "panel":  # side panels; raised above the seat they are the arms
        pt = _u(rng, 0.03, 0.09)
        top = sh - st + 0.01 if rng.random() < 0.4 else sh + _u(rng, 0.12, 0.25)
        pp = _pick(rng, [INF, 8.0])
        for sx in (-1, 1):
            A.add(box([sx * (w / 2 + pt / 2 - 0.005), top / 2, 0], [pt, top, d], p=pp))
        if rng.random() < 0.5:
            A.add(box([0, 0.03, 0], [w, 0.06, d * 0.9]))
    else:  # pedestal
        foot_r = _u(rng, 0.18, 0.26)
        A.add(loft([0, 0.02], foot_r, foot_r, origin=[0, 0, 0]))
        A.add(rod([0, 0.01, 0], [0, sh - st + 0.01, 0], _u(rng, 0.025, 0.06),
                  _u(rng, 0.02, 0.04)))

    # back
    back = _pick(rng, ["solid", "slats", "ladder", "cushion", "frame", "arched"],
                 [0.22, 0.18, 0.15, 0.2, 0.1, 0.15])
    if base in ("office", "panel"):
        back = _pick(rng, ["cushion", "solid", "arched"])
    bh = _u(rng, 0.32, 0.62)
    tilt = _u(rng, 0.02, 0.3)
    bw = w * _u(rng, 0.85, 1.0) if seat_p != 2.0 else w * 0.8
    bt = _u(rng, 0.02, 0.05)
    bz = -d / 2 + bt / 2 + 0.005
    gap = 0.0 if base != "office" else _u(rng, 0.03, 0.08)
    R = rot_x(-tilt)
    O = np.array([0, sh - 0.01 + gap, bz])
    bparts: list[Loft] = []
    if back in ("solid", "cushion", "arched"):
        t = bt if back != "cushion" else _u(rng, 0.06, 0.12)
        if back == "arched":
            ys = np.array([0, 0.75, 0.9, 1.0]) * bh
            rx = np.array([1, 1, _u(rng, 0.85, 0.95), _u(rng, 0.5, 0.75)]) * bw / 2
        else:
            ys, rx = np.array([0, bh]), np.array([bw / 2, bw / 2 * _u(rng, 0.85, 1.1)])
        bparts.append(loft(ys, rx, t / 2, p=4.0 if back == "cushion" else
                           _pick(rng, [INF, 6.0]), origin=[0, 0, 0]))
        if gap > 0:  # office back on a spine
            A.add(rod([0, sh - st / 2, -d / 2 + 0.02], O + R @ [0, 0.1, -t / 2], 0.025,
                      p=INF, hint=[1, 0, 0]))
    else:
        pr = lt if base == "legs" else _u(rng, 0.012, 0.02)
        px = bw / 2 - pr
        posts_sq = square if base == "legs" else bool(rng.random() < 0.5)
        for sx in (-1, 1):
            bparts.append(rod([sx * px, -0.02, 0], [sx * px, bh, 0], pr,
                              p=INF if posts_sq else 2.0))
        rail_h = _u(rng, 0.05, 0.12)
        bparts.append(box([0, bh - rail_h / 2, 0], [2 * px, rail_h, pr * 1.6], p=INF))
        if back == "slats":
            n = int(rng.integers(2, 7))
            sw = min(_u(rng, 0.02, 0.07), 1.6 * px / n)
            for k in range(n):
                x = -px + 2 * px * (k + 1) / (n + 1)
                bparts.append(box([x, (bh - rail_h) / 2, 0], [sw, bh - rail_h + 0.01, pr],
                                  p=INF))
        elif back == "ladder":
            n = int(rng.integers(1, 4))
            for k in range(n):
                y = 0.15 * bh + (bh - rail_h - 0.15 * bh) * k / max(n, 1)
                bparts.append(box([0, y + 0.02, 0], [2 * px, _u(rng, 0.03, 0.06), pr * 1.4]))
        else:  # frame: a middle cushion panel between posts
            bparts.append(box([0, bh * 0.45, 0], [2 * px, bh * 0.5, pr * 1.2], p=6.0))
    A.add(*_place(bparts, R, O))
    # rear legs of a wooden chair often continue as back posts: add that link for "legs"
    if base == "legs" and back in ("slats", "ladder", "frame") and axes is not None:
        for sx, ax in zip((-1, 1), axes[2:], strict=True):
            top = O + R @ np.array([sx * (bw / 2 - lt), 0.0, 0.0])
            A.add(rod(ax[1], top, lt, p=INF if square else 2.0))

    # arms
    p_arms = {"office": 0.6, "legs": 0.35, "sled": 0.3, "panel": 0.0, "pedestal": 0.2}[base]
    if rng.random() < p_arms:
        ah = _u(rng, 0.17, 0.27)
        aw = _u(rng, 0.035, 0.08)
        alen = d * _u(rng, 0.7, 0.95)
        for sx in (-1, 1):
            x = sx * (w / 2 - aw / 4)
            zc = -d / 2 + alen / 2
            A.add(box([x, sh + ah, zc], [aw, 0.03, alen], p=_pick(rng, [INF, 4.0])))
            fz = zc + alen / 2 - 0.05 if base != "office" else zc
            A.add(rod([x, sh - st / 2, fz], [x, sh + ah, fz], _u(rng, 0.012, 0.022),
                      p=_pick(rng, [INF, 2.0])))
    return A


# ----------------------------------------------------------------------------------------- table

def table(rng: np.random.Generator) -> Assembly:
    """A table: round, square or long top on legs, a pedestal, trestles or slab ends."""
    kind = _pick(rng, ["dining", "coffee", "side"], [0.55, 0.3, 0.15])
    h = {"dining": _u(rng, 0.70, 0.78), "coffee": _u(rng, 0.35, 0.48),
         "side": _u(rng, 0.55, 1.0)}[kind]
    shape = _pick(rng, ["rect", "round"], [0.7, 0.3])
    if kind == "side":
        w = _u(rng, 0.4, 0.7)
        d = w if shape == "round" else w * _u(rng, 0.7, 1.0)
    elif shape == "round":
        w = _u(rng, 0.7, 1.3)
        d = w * (1.0 if rng.random() < 0.7 else _u(rng, 0.55, 0.8))
    else:
        w = _u(rng, 0.9, 2.2) if kind == "dining" else _u(rng, 0.8, 1.4)
        d = w * _u(rng, 0.4, 0.75) if rng.random() < 0.8 else w
    tt = _u(rng, 0.02, 0.06)
    top_p = 2.0 if shape == "round" else _pick(rng, [INF, 8.0])
    A = Assembly([box([0, h - tt / 2, 0], [w, tt, d], p=top_p)])
    under = h - tt + 0.005

    base = _pick(rng, ["legs", "pedestal", "trestle", "slab"], [0.55, 0.2, 0.12, 0.13])
    if shape == "round" and base in ("trestle", "slab"):
        base = "pedestal"
    lt = _u(rng, 0.02, 0.045)
    if base == "legs":
        n3 = shape == "round" and rng.random() < 0.4
        if n3 or shape == "round":
            n = 3 if n3 else 4
            rad = min(w, d) / 2 * _u(rng, 0.55, 0.8)
            splay = _u(rng, 0.0, 0.15)
            a0 = np.pi / n if n == 4 else 0.0
            tops = []
            for k in range(n):
                a = a0 + 2 * np.pi * k / n
                dv = np.array([np.sin(a), 0, np.cos(a)])
                top = dv * rad + [0, under, 0]
                foot = dv * rad * (1 + splay) + [0, 0, 0]
                A.add(rod(foot, top, lt * _u(rng, 0.6, 1.0), lt))
                tops.append(top)
            if rng.random() < 0.4:  # a ring apron
                A.add(loft([-0.05, 0], rad + lt, rad + lt, origin=[0, under, 0], capped=False))
        else:
            inset = lt + (_u(rng, 0.0, 0.12) * min(w, d) if rng.random() < 0.5 else 0.01)
            legs, axes = _legs4(rng, w, d, under, inset, lt, bool(rng.random() < 0.6),
                                _u(rng, 0.0, 0.08) if rng.random() < 0.3 else 0.0,
                                _u(rng, 0.5, 1.0))
            A.add(*legs)
            if rng.random() < 0.6:  # apron
                ah = _u(rng, 0.05, 0.12)
                y = under - ah / 2
                fl, fr, bl, br = (a[1] for a in axes)
                for a, b in [(fl, fr), (bl, br), (fl, bl), (fr, br)]:
                    a, b = a.copy(), b.copy()
                    a[1] = b[1] = y
                    A.add(rod(a, b, 0.012, rz=ah / 2, p=INF, hint=[0, 1, 0]))
            extra = _pick(rng, ["none", "shelf", "stretchers"], [0.5, 0.25, 0.25])
            if extra == "shelf":
                sy = _u(rng, 0.08, 0.3) * h
                xs = w / 2 - inset + lt
                zs = d / 2 - inset + lt
                A.add(box([0, sy, 0], [2 * xs, _u(rng, 0.015, 0.03), 2 * zs]))
            elif extra == "stretchers":
                A.add(*_stretchers(rng, axes, lt, _pick(rng, ["H", "box", "X"])))
    elif base == "pedestal":
        r0 = _u(rng, 0.035, 0.09)
        prof = np.array([1.0, _u(rng, 0.6, 1.0), _u(rng, 0.7, 1.6), 1.0]) * r0
        ys = np.array([0.02, 0.3, 0.65, 1.0]) * under
        A.add(loft(ys, prof, prof))
        foot = _pick(rng, ["disc", "star"])
        if foot == "disc":
            fr = min(w, d) * _u(rng, 0.25, 0.4)
            A.add(loft([0, 0.015, 0.03], [fr, fr, fr * 0.85], [fr, fr, fr * 0.85]))
        else:
            n = int(_pick(rng, [3, 4, 4]))
            reach = min(w, d) * _u(rng, 0.3, 0.45)
            for k in range(n):
                a = 2 * np.pi * k / n + np.pi / 4
                tip = np.array([np.sin(a) * reach, 0.015, np.cos(a) * reach])
                A.add(rod([0, 0.05, 0], tip, 0.03, 0.015, p=INF, hint=[0, 1, 0]))
        if rng.random() < 0.5 and kind != "side":
            A.add(box([0, under - 0.02, 0], [w * 0.5, 0.04, d * 0.5], p=top_p))
    elif base == "trestle":
        x = w / 2 - _u(rng, 0.1, 0.25) * w / 2
        ft = _u(rng, 0.04, 0.08)
        for sx in (-1, 1):
            if rng.random() < 0.5:
                A.add(box([sx * x, under / 2, 0], [ft, under + 0.01, _u(rng, 0.08, 0.2)]))
            else:
                spread = d * _u(rng, 0.25, 0.4)
                for sz in (-1, 1):
                    A.add(rod([sx * x, 0.04, sz * spread], [sx * x, under, sz * 0.03], ft / 2,
                              p=INF))
            A.add(box([sx * x, 0.025, 0], [ft * 1.4, 0.05, d * 0.8]))
            A.add(box([sx * x, under - 0.02, 0], [ft * 1.2, 0.04, d * 0.8]))
        A.add(box([0, _u(rng, 0.2, 0.5) * under, 0], [2 * x, 0.05, 0.04]))
    else:  # slab ends, often with a shelf or a modesty panel
        st = _u(rng, 0.025, 0.07)
        for sx in (-1, 1):
            A.add(box([sx * (w / 2 - st / 2), under / 2, 0],
                      [st, under + 0.01, d * _u(rng, 0.85, 1.0)]))
        if rng.random() < 0.5:
            A.add(box([0, _u(rng, 0.1, 0.4) * h, 0], [w - 2 * st + 0.01, 0.025, d * 0.8]))
        elif rng.random() < 0.5:
            A.add(box([0, under * 0.6, -d * 0.35], [w - 2 * st + 0.01, under * 0.6, 0.02]))
    return A


# ------------------------------------------------------------------------------------------ lamp

def _shade(rng, style: str, r: float, h: float) -> list[Loft]:
    """A lamp shade opening downwards, its top at local y = 0 (``h`` tall, radius ``r``)."""
    if style == "drum":
        rt = r * _u(rng, 0.85, 1.0)
        return [loft([-h, 0], [r, rt], [r, rt], capped=False)]
    if style == "cone":
        rt = r * _u(rng, 0.35, 0.7)
        return [loft([-h, 0], [r, rt], [r, rt], capped=False)]
    if style == "dome":
        # a quarter ellipse: radius r at the open rim (y = -h) closing to a small hole on top
        phi = np.linspace(0, np.pi / 2, 7)
        ys = -h * np.cos(phi)
        rr = np.maximum(r * np.cos(phi), 0.12 * r)
        return [loft(ys, rr, rr, capped=False)]
    # globe
    return [ellipsoid([0, -h / 2, 0], [r, h / 2, r])]


def lamp(rng: np.random.Generator) -> Assembly:
    """A lamp: table, floor, articulated desk, arc or pendant lamp with one of four shades."""
    kind = _pick(rng, ["table", "floor", "desk", "arc", "pendant"], [0.3, 0.2, 0.2, 0.12, 0.18])
    A = Assembly([])
    shade = _pick(rng, ["drum", "cone", "dome", "globe"], [0.35, 0.3, 0.2, 0.15])

    def base_at(r: float, hgt: float) -> None:
        style = _pick(rng, ["disc", "square", "domed"])
        if style == "disc":
            A.add(loft([0, hgt], r, r))
        elif style == "square":
            A.add(box([0, hgt / 2, 0], [1.6 * r, hgt, 1.6 * r], p=_pick(rng, [INF, 6.0])))
        else:
            A.add(loft([0, hgt * 0.5, hgt * 1.6, hgt * 2.2], [r, r, r * 0.5, r * 0.15],
                       [r, r, r * 0.5, r * 0.15]))

    if kind == "table":
        bh = _u(rng, 0.25, 0.45)
        base_at(_u(rng, 0.07, 0.13), _u(rng, 0.02, 0.05))
        if rng.random() < 0.5:  # a vase body
            rb = _u(rng, 0.06, 0.12)
            prof = np.array([0.6, 1.0, _u(rng, 0.6, 1.0), 0.35, 0.2]) * rb
            ys = np.array([0.02, 0.3, 0.6, 0.85, 1.0]) * bh
            A.add(loft(ys, prof, prof))
        else:
            A.add(rod([0, 0.02, 0], [0, bh, 0], _u(rng, 0.008, 0.02)))
        sr = _u(rng, 0.12, 0.22)
        sh = _u(rng, 0.15, 0.28) if shade != "globe" else 2 * sr * _u(rng, 0.8, 1.0)
        st = shade if shade != "dome" else "drum"
        top = bh + sh * _u(rng, 0.5, 0.8)
        A.add(*_place(_shade(rng, st, sr, sh), np.eye(3), [0, top, 0]))
        A.add(ellipsoid([0, bh + 0.03, 0], [0.03, 0.045, 0.03]))
    elif kind == "floor":
        H = _u(rng, 1.3, 1.8)
        if rng.random() < 0.3:  # tripod
            spread = _u(rng, 0.25, 0.4)
            for k in range(3):
                a = 2 * np.pi * k / 3
                A.add(rod([np.sin(a) * spread, 0, np.cos(a) * spread], [0, H * 0.45, 0], 0.012))
            A.add(rod([0, H * 0.4, 0], [0, H, 0], 0.012))
        else:
            base_at(_u(rng, 0.13, 0.2), _u(rng, 0.02, 0.05))
            A.add(rod([0, 0.02, 0], [0, H, 0], _u(rng, 0.01, 0.02)))
        sr = _u(rng, 0.15, 0.25)
        sh = _u(rng, 0.2, 0.35)
        if rng.random() < 0.3:  # torchiere: a bowl opening upwards
            A.add(loft([H - 0.02, H + sh * 0.6], [0.03, sr], [0.03, sr], capped=False))
        else:
            st = shade if shade != "globe" else "drum"
            A.add(*_place(_shade(rng, st, sr, sh), np.eye(3), [0, H + sh * 0.7, 0]))
    elif kind == "desk":
        br = _u(rng, 0.07, 0.11)
        base_at(br, _u(rng, 0.02, 0.04))
        l1, l2 = _u(rng, 0.3, 0.45), _u(rng, 0.25, 0.4)
        a1 = _u(rng, -0.5, 0.1)  # lean of the lower arm (negative: backwards)
        a2 = _u(rng, 0.6, 1.4)   # the upper arm reaches forwards
        j0 = np.array([0, 0.04, -br * 0.5])
        j1 = j0 + l1 * np.array([0, np.cos(a1), np.sin(a1)])
        j2 = j1 + l2 * np.array([0, np.cos(a2), np.sin(a2)])
        double = rng.random() < 0.5
        for a, b in [(j0, j1), (j1, j2)]:
            if double:
                for ox in (-0.015, 0.015):
                    A.add(rod(a + [ox, 0, 0], b + [ox, 0, 0], 0.006))
            else:
                A.add(rod(a, b, 0.01))
        A.add(ellipsoid(j1, [0.025, 0.025, 0.025]), ellipsoid(j0, [0.025, 0.025, 0.025]))
        hr = _u(rng, 0.05, 0.1)
        hh = _u(rng, 0.08, 0.16)
        tilt = _u(rng, 0.2, 0.9)  # the head points down and forwards
        head = loft([-hh, 0], [hr, hr * _u(rng, 0.2, 0.5)], [hr, hr * _u(rng, 0.2, 0.5)],
                    capped=False)
        A.add(*_place([head, ellipsoid([0, 0, 0], [0.025, 0.025, 0.025])], rot_x(tilt),
                      j2 + [0, 0.0, 0.0]))
    elif kind == "arc":
        base_at(_u(rng, 0.14, 0.2), _u(rng, 0.04, 0.08))
        H = _u(rng, 1.4, 1.9)
        reach = _u(rng, 0.7, 1.2)
        t = np.linspace(0, 1, 9)
        # a quarter ellipse from the base up and over to the front
        pts = np.stack([np.zeros_like(t), 0.05 + (H - 0.05) * np.sin(t * np.pi / 2),
                        reach * (1 - np.cos(t * np.pi / 2))], 1)
        pts[:, 2] -= reach * 0.1
        for a, b in zip(pts[:-1], pts[1:], strict=True):
            A.add(rod(a, b + (b - a) * 0.05, 0.012))
        end = pts[-1]
        A.add(rod(end, end - [0, 0.12, 0], 0.006))
        sr = _u(rng, 0.2, 0.32)
        st = _pick(rng, ["dome", "cone", "drum"])
        A.add(*_place(_shade(rng, st, sr, _u(rng, 0.1, 0.2)), np.eye(3), end - [0, 0.1, 0]))
    else:  # pendant
        L = _u(rng, 0.4, 1.0)
        A.add(loft([L, L + 0.03], 0.06, 0.06))
        A.add(rod([0, 0.05, 0], [0, L + 0.01, 0], 0.005))
        sr = _u(rng, 0.12, 0.3)
        sh = _u(rng, 0.12, 0.3) if shade != "globe" else 2 * sr * _u(rng, 0.8, 1.0)
        A.add(*_place(_shade(rng, shade, sr, sh), np.eye(3), [0, 0.06, 0]))
        if shade in ("cone", "drum", "dome"):
            A.add(ellipsoid([0, 0.06 - sh * 0.6, 0], [0.035, 0.05, 0.035]))
    return A


# ------------------------------------------------------------------------------------------ sofa

def _cushion_x(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float,
               p: float = 4.0) -> Loft:
    """A cushion running along x from x0 to x1, rounded in its (y, z) profile."""
    c = np.array([0.0, (y0 + y1) / 2, (z0 + z1) / 2])
    # local y = world x; local x = world y; local z = world -z
    return loft([x0, x1], (y1 - y0) / 2, (z1 - z0) / 2, p=p,
                rot=frame([1, 0, 0], [0, 1, 0]), origin=c)


def sofa(rng: np.random.Generator) -> Assembly:
    """A sofa: 1 to 4 seats, arms of four styles or none, legs or a plinth, sometimes an L."""
    n = int(_pick(rng, [1, 2, 3, 3, 4]))
    seat_w = _u(rng, 0.5, 0.7)
    arm = _pick(rng, ["none", "slab", "rolled", "low", "track"], [0.12, 0.3, 0.25, 0.13, 0.2])
    aw = 0.0 if arm == "none" else _u(rng, 0.1, 0.25)
    W = n * seat_w
    D = _u(rng, 0.8, 1.0)
    leg_h = _u(rng, 0.05, 0.18) if rng.random() < 0.7 else 0.0
    base_top = _u(rng, 0.28, 0.36)
    ch = _u(rng, 0.1, 0.17)
    seat_h = base_top + ch
    back_t = _u(rng, 0.12, 0.22)
    back_h = _u(rng, 0.3, 0.55)
    A = Assembly([])
    y_base0 = leg_h
    A.add(box([0, (y_base0 + base_top) / 2, 0], [W, base_top - y_base0, D], p=12.0))
    # seat cushions
    zf, zb = D / 2, -D / 2 + back_t
    one_seat = rng.random() < 0.2
    ns = 1 if one_seat else n
    for k in range(ns):
        x0 = -W / 2 + W * k / ns + 0.004
        x1 = -W / 2 + W * (k + 1) / ns - 0.004
        A.add(_cushion_x(x0, x1, base_top - 0.02, seat_h, zb - 0.02, zf + 0.01))
    # back frame and back cushions
    tilt = _u(rng, 0.1, 0.3)
    top = seat_h + back_h
    A.add(Loft(*_tilted_box(W, y_base0, top, -D / 2 + back_t * 0.3, back_t * 0.6, tilt * 0.3)))
    if rng.random() < 0.75:
        nb = ns if rng.random() < 0.7 else n
        bc_h = back_h * _u(rng, 0.8, 1.0)
        for k in range(nb):
            x0 = -W / 2 + W * k / nb + 0.006
            x1 = -W / 2 + W * (k + 1) / nb - 0.006
            c = _cushion_x(x0, x1, 0.0, bc_h, -back_t * 0.55, back_t * 0.55, p=3.0)
            A.add(*_place([c], rot_x(-tilt), [0, seat_h - 0.02, -D / 2 + back_t * 0.9]))
    # arms
    ah = {"slab": _u(rng, 0.15, 0.3), "rolled": _u(rng, 0.15, 0.28), "low": _u(rng, 0.02, 0.1),
          "track": _u(rng, 0.1, 0.25), "none": 0.0}[arm]
    for sx in (-1, 1):
        if arm == "none":
            continue
        xc = sx * (W / 2 + aw / 2 - 0.01)
        y1 = seat_h + ah
        y0 = y_base0 if arm != "track" else y_base0
        A.add(box([xc, (y0 + y1) / 2, 0], [aw, y1 - y0, D], p=_pick(rng, [INF, 8.0])
                  if arm != "track" else 10.0))
        if arm == "rolled":
            rr = aw * _u(rng, 0.55, 0.7)
            c = np.array([xc, y1, 0.0])
            A.add(loft([-D / 2, D / 2], rr, rr, rot=frame([0, 0, 1], [1, 0, 0]),
                       origin=c + [0, 0, 0]))
    # legs
    if leg_h > 0:
        lw = _u(rng, 0.02, 0.045)
        sq = rng.random() < 0.5
        xs = [-W / 2 - aw + 0.06, W / 2 + aw - 0.06]
        if n >= 3:
            xs.append(0.0)
        for x in xs:
            for z in (D / 2 - 0.06, -D / 2 + 0.06):
                A.add(rod([x, 0, z], [x, leg_h + 0.02, z], lw * _u(rng, 0.6, 1.0), lw,
                          p=INF if sq else 2.0))
    # L-shaped sectional: a chaise at one end
    if rng.random() < 0.2 and n >= 2:
        sx = _pick(rng, [-1, 1])
        ext = _u(rng, 0.5, 0.8)
        x0, x1 = (0.0, W / 2) if sx > 0 else (-W / 2, 0.0)
        x0, x1 = (W / 2 - seat_w, W / 2) if sx > 0 else (-W / 2, -W / 2 + seat_w)
        A.add(box([(x0 + x1) / 2, (y_base0 + base_top) / 2, D / 2 + ext / 2 - 0.02],
                  [x1 - x0, base_top - y_base0, ext + 0.04], p=12.0))
        A.add(_cushion_x(x0 + 0.004, x1 - 0.004, base_top - 0.02, seat_h, D / 2 - 0.02,
                         D / 2 + ext))
    return A


def _tilted_box(W, y0, y1, z, t, tilt):
    """Fields of a Loft: a full-width panel from y0 to y1 at depth z, leaning back by tilt."""
    part = box([0, 0, 0], [W, y1 - y0, t], p=8.0)
    part.ys = part.ys + (y1 - y0) / 2  # from 0 to the panel's height
    R = rot_x(-tilt)
    return (part.ys, part.rx, part.rz, part.cx, part.cz, part.p, R, np.array([0, y0, z]),
            True)


# ------------------------------------------------------------------------------------------- car

def _along_z(zs, half_w, y_lo, y_hi, p: float) -> Loft:
    """A loft along world z with stations ``zs``, half-widths and the bottom/top heights."""
    y_lo, y_hi = np.asarray(y_lo, float), np.asarray(y_hi, float)
    # frame(z, x): local x = world x, local y = world z, local z = world -y
    return loft(zs, half_w, (y_hi - y_lo) / 2, cz=-(y_hi + y_lo) / 2, p=p,
                rot=frame([0, 0, 1], [1, 0, 0]))


def car(rng: np.random.Generator) -> Assembly:
    """A car: sedan, hatchback, SUV, sports car, pickup or van, on four wheels."""
    kind = _pick(rng, ["sedan", "hatch", "suv", "sports", "pickup", "van"],
                 [0.28, 0.18, 0.2, 0.14, 0.1, 0.1])
    L = {"sedan": (4.3, 5.0), "hatch": (3.6, 4.3), "suv": (4.3, 5.0), "sports": (4.1, 4.7),
         "pickup": (5.0, 5.8), "van": (4.6, 5.2)}[kind]
    L = _u(rng, *L)
    W = _u(rng, 1.72, 2.0)
    wr = {"suv": (0.36, 0.42), "pickup": (0.38, 0.44), "sports": (0.32, 0.36)}.get(kind,
                                                                                 (0.3, 0.35))
    wr = _u(rng, *wr)
    clear = {"suv": 0.28, "pickup": 0.32, "sports": 0.12, "van": 0.2}.get(kind, 0.16)
    clear *= _u(rng, 0.85, 1.15)
    belt = clear + {"sports": 0.5, "suv": 0.75, "pickup": 0.75, "van": 0.75}.get(kind, 0.6) * \
        _u(rng, 0.9, 1.1)
    roof = belt + {"sports": 0.38, "suv": 0.75, "van": 0.95, "pickup": 0.65}.get(kind, 0.55) * \
        _u(rng, 0.88, 1.08)
    A = Assembly([])
    zf, zr = L / 2, -L / 2
    hood = belt - _u(rng, 0.03, 0.12)
    nose = clear + (belt - clear) * _u(rng, 0.45, 0.7)
    # lower body: stations from the rear bumper to the front bumper
    zs = np.array([zr, zr + 0.1, zr + 0.4, zf - 0.6, zf - 0.12, zf])
    lo = np.array([clear + 0.12, clear, clear, clear, clear + 0.05, clear + 0.15])
    hi = np.array([belt - 0.15, belt, belt, hood, nose + 0.05, nose])
    hw = W / 2 * np.array([0.9, 0.98, 1.0, 1.0, 0.97, 0.9])
    if kind == "pickup":
        cab_end = zr + L * _u(rng, 0.38, 0.45)
        zs = np.array([cab_end - 0.1, cab_end, zf - 0.6, zf - 0.12, zf])
        lo, hi, hw = lo[1:], hi[1:], hw[1:]
        body = _along_z(zs, hw, lo, hi, 6.0)
        A.add(body)
        bed_h = belt - clear - 0.1
        bw = W * 0.98
        A.add(box([0, clear + 0.15, (zr + cab_end) / 2], [bw, 0.1, cab_end - zr + 0.05]))
        for sx in (-1, 1):
            A.add(box([sx * (bw / 2 - 0.04), clear + 0.1 + bed_h / 2, (zr + cab_end) / 2],
                      [0.08, bed_h, cab_end - zr + 0.05]))
        A.add(box([0, clear + 0.1 + bed_h / 2, zr + 0.05], [bw, bed_h, 0.1]))
    else:
        body = _along_z(zs, hw, lo, hi, 6.0)
        A.add(body)

    # greenhouse: from the rear window's base to the windscreen's base
    ws_base = zf - {"sports": _u(rng, 1.5, 1.9), "van": _u(rng, 0.5, 0.8)}.get(
        kind, _u(rng, 1.1, 1.5))
    ws_len = {"van": 0.5, "sports": 0.9}.get(kind, 0.75) * _u(rng, 0.85, 1.15)
    if kind in ("hatch", "suv", "van"):
        rw_base = zr + _u(rng, 0.05, 0.2)
        rw_len = _u(rng, 0.1, 0.35) if kind != "hatch" else _u(rng, 0.3, 0.6)
    elif kind == "sports":
        rw_base = zr + _u(rng, 0.3, 0.6)
        rw_len = _u(rng, 0.8, 1.2)
    elif kind == "pickup":
        rw_base = cab_end - 0.05
        rw_len = 0.1
    else:
        rw_base = zr + _u(rng, 0.7, 1.0)
        rw_len = _u(rng, 0.45, 0.7)
    gz = np.array([rw_base, rw_base + rw_len, ws_base - ws_len, ws_base])
    if gz[2] <= gz[1] + 0.2:
        gz[2] = gz[1] + 0.2
        gz[3] = max(gz[3], gz[2] + 0.2)
    gw = W / 2 * np.array([0.9, _u(rng, 0.78, 0.88), _u(rng, 0.78, 0.88), 0.92])
    g_lo = np.full(4, belt - 0.05)
    g_lo[0] = hi[0] - 0.05 if kind in ("hatch", "suv", "van") else belt - 0.05
    g_hi = np.array([belt + 0.02, roof, roof, belt + 0.02])
    A.add(_along_z(gz, gw, g_lo, g_hi, _pick(rng, [4.0, 6.0])))

    # wheels
    wb_front = zf - _u(rng, 0.75, 1.0)
    wb_rear = zr + _u(rng, 0.7, 1.0)
    tw = _u(rng, 0.18, 0.28)
    for z in (wb_front, wb_rear):
        # the wheel arch: a cylinder a little larger than the wheel, cut out of the body
        body.cuts.append(rod([-W, wr, z], [W, wr, z], wr * _u(rng, 1.08, 1.18), hint=[0, 1, 0]))
        for sx in (-1, 1):
            x = sx * (W / 2 - tw / 2 + 0.01)
            A.add(rod([x - tw / 2, wr, z], [x + tw / 2, wr, z], wr, hint=[0, 1, 0]))
            # the hub: a disc standing slightly proud of the tyre
            A.add(rod([x + sx * tw / 2 - 0.01, wr, z], [x + sx * (tw / 2 + 0.015), wr, z],
                      wr * 0.6, hint=[0, 1, 0]))
    # mirrors, spoiler, roof rails
    for sx in (-1, 1):
        A.add(box([sx * (W / 2 + 0.05), belt + 0.1, ws_base - 0.1], [0.14, 0.1, 0.06], p=4.0))
    if kind == "sports" and rng.random() < 0.5:
        sy = belt + _u(rng, 0.1, 0.25)
        A.add(box([0, sy, zr + 0.15], [W * 0.85, 0.03, 0.25]))
        for sx in (-1, 1):
            A.add(box([sx * W * 0.3, (belt + sy) / 2 - 0.05, zr + 0.15],
                      [0.03, sy - belt + 0.1, 0.08]))
    if kind == "suv" and rng.random() < 0.5:
        for sx in (-1, 1):
            A.add(rod([sx * gw[1] * 0.85, roof + 0.04, gz[1] + 0.05],
                      [sx * gw[1] * 0.85, roof + 0.04, gz[2] - 0.05], 0.025))
    return A


# -------------------------------------------------------------------------------------- airplane

def _wing(span: float, root_c: float, tip_c: float, le_z: float, sweep: float,
          dihedral: float, t_root: float, t_tip: float, y: float, x0: float = 0.0) -> Loft:
    """One wing (x > 0) from ``x0`` to ``x0 + span``: chords ``root_c``/``tip_c``, the root's
    leading edge at ``le_z``, the leading edge swept back by the angle ``sweep``, raised by the
    angle ``dihedral``."""
    ys = np.array([x0, x0 + span])
    le = np.array([le_z, le_z - span * np.tan(sweep)])
    cz_world = le - np.array([root_c, tip_c]) / 2
    cy_world = y + np.array([0.0, span * np.tan(dihedral)])
    # frame(x, y): local y = world x, local x = world y, local z = world -z
    return loft(ys, np.array([t_root, t_tip]) / 2, np.array([root_c, tip_c]) / 2,
                cx=cy_world, cz=-cz_world, p=2.0, rot=frame([1, 0, 0], [0, 1, 0]))


def _pair(w: Loft) -> list[Loft]:
    return [w, _mirror_x(w)]


def _fin(h: float, root_c: float, tip_c: float, le_z: float, sweep: float, t: float,
         y0: float, x: float = 0.0, cant: float = 0.0) -> Loft:
    ys = np.array([0.0, h])
    le = np.array([le_z, le_z - h * np.tan(sweep)])
    cz = le - np.array([root_c, tip_c]) / 2
    # frame(y, x): local x = world x, local y = world y, local z = world z
    return loft(ys, t / 2, np.array([root_c, tip_c]) / 2, cz=cz, p=2.0,
                rot=rot_z(cant), origin=[x, y0, 0.0])


def airplane(rng: np.random.Generator) -> Assembly:
    """An airplane: airliner, fighter, light propeller plane, glider, high-wing cargo plane or
    business jet, with swept, straight or delta wings, 0-4 engines and conventional, T or twin
    tails."""
    kind = _pick(rng, ["airliner", "fighter", "prop", "glider", "cargo", "bizjet"],
                 [0.3, 0.2, 0.15, 0.1, 0.12, 0.13])
    L = 1.0
    R = L * {"airliner": _u(rng, 0.045, 0.06), "fighter": _u(rng, 0.04, 0.055),
             "prop": _u(rng, 0.05, 0.07), "glider": _u(rng, 0.03, 0.04),
             "cargo": _u(rng, 0.06, 0.075), "bizjet": _u(rng, 0.045, 0.055)}[kind]
    A = Assembly([])
    # fuselage from the tail (z = -L/2) to the nose (+L/2); the tail cone rises
    s = np.array([0.0, 0.05, 0.3, 0.8, 0.9, 0.95, 0.985, 1.0])
    if kind == "fighter":
        s = np.array([0.0, 0.05, 0.3, 0.6, 0.75, 0.9, 0.97, 1.0])
        r = np.array([0.7, 0.85, 1.0, 1.0, 0.8, 0.45, 0.2, 0.02])
    else:
        r = np.array([0.18, 0.35, 1.0, 1.0, 0.9, 0.7, 0.35, 0.05])
    rise = np.array([1.0, 0.8, 0.0, 0, 0, -0.05, -0.1, -0.1]) * R * (
        0.2 if kind == "fighter" else _u(rng, 0.4, 0.8))
    zs = -L / 2 + s * L
    hfac = _u(rng, 1.0, 1.15)
    A.add(loft(zs, R * r, R * r * hfac, cz=-rise, rot=frame([0, 0, 1], [1, 0, 0])))
    if kind == "fighter" and rng.random() < 0.7:  # canopy
        A.add(ellipsoid([0, R * 0.8, L * 0.22], [R * 0.5, R * 0.55, L * 0.09]))

    # main wing
    if kind == "airliner":
        span, rc, tc = L * _u(rng, 0.42, 0.52), L * _u(rng, 0.16, 0.22), L * _u(rng, 0.04, 0.07)
        sweep, dih, wy = _u(rng, 0.45, 0.65), _u(rng, 0.03, 0.1), -R * _u(rng, 0.4, 0.7)
        le = L * _u(rng, 0.08, 0.15)
    elif kind == "fighter":
        span, rc, tc = L * _u(rng, 0.2, 0.3), L * _u(rng, 0.35, 0.5), L * _u(rng, 0.02, 0.08)
        sweep, dih, wy = _u(rng, 0.6, 1.0), _u(rng, -0.05, 0.02), _u(rng, -0.3, 0.1) * R
        le = L * _u(rng, 0.05, 0.15)
    elif kind == "glider":
        span, rc, tc = L * _u(rng, 0.8, 1.1), L * _u(rng, 0.08, 0.1), L * _u(rng, 0.03, 0.05)
        sweep, dih, wy = _u(rng, 0.0, 0.05), _u(rng, 0.03, 0.07), R * _u(rng, 0.3, 0.9)
        le = L * _u(rng, 0.12, 0.22)
    elif kind == "cargo":
        span, rc, tc = L * _u(rng, 0.45, 0.55), L * _u(rng, 0.11, 0.15), L * _u(rng, 0.05, 0.08)
        sweep, dih, wy = _u(rng, 0.05, 0.35), _u(rng, -0.06, 0.0), R * _u(rng, 0.8, 1.0)
        le = L * _u(rng, 0.1, 0.2)
    elif kind == "bizjet":
        span, rc, tc = L * _u(rng, 0.38, 0.46), L * _u(rng, 0.14, 0.18), L * _u(rng, 0.04, 0.06)
        sweep, dih, wy = _u(rng, 0.3, 0.5), _u(rng, 0.04, 0.1), -R * _u(rng, 0.5, 0.8)
        le = L * _u(rng, 0.02, 0.1)
    else:  # prop
        span, rc, tc = L * _u(rng, 0.5, 0.65), L * _u(rng, 0.13, 0.17), L * _u(rng, 0.08, 0.13)
        sweep, dih = _u(rng, 0.0, 0.08), _u(rng, 0.02, 0.08)
        wy = R * (_u(rng, 0.7, 1.0) if rng.random() < 0.5 else -_u(rng, 0.5, 0.8))
        le = L * _u(rng, 0.15, 0.25)
    thick = 0.12 if kind != "fighter" else 0.05
    A.add(*_pair(_wing(span, rc, tc, le, sweep, dih, rc * thick, tc * thick, wy, 0.0)))

    # tail: conventional, T-tail, or twin fins (fighters)
    tail_le = -L / 2 + L * _u(rng, 0.14, 0.2)
    fin_h = L * _u(rng, 0.1, 0.16) if kind != "glider" else L * _u(rng, 0.1, 0.13)
    fin_rc = L * _u(rng, 0.12, 0.18)
    fin_sweep = _u(rng, 0.5, 0.9)
    t_tail = kind in ("cargo", "bizjet", "glider") and rng.random() < 0.7
    ty = rise[0] + R * 0.1
    if kind == "fighter" and rng.random() < 0.6:
        for sx in (-1, 1):
            A.add(_fin(fin_h * 0.8, fin_rc, fin_rc * 0.4, tail_le, fin_sweep, fin_rc * 0.06,
                       R * 0.5, sx * R * 0.6, sx * -0.25))
    else:
        A.add(_fin(fin_h, fin_rc, fin_rc * _u(rng, 0.35, 0.6), tail_le, fin_sweep,
                   fin_rc * 0.1, ty))
    hs = span * _u(rng, 0.3, 0.4)
    hc = L * _u(rng, 0.07, 0.1)
    if t_tail:
        hz = tail_le - fin_h * np.tan(fin_sweep) - 0.005
        hy = ty + fin_h * 0.97
    else:
        hz = tail_le + L * 0.02 if kind != "fighter" else -L / 2 + hc * 1.3
        hy = rise[0] * 0.7
    A.add(*_pair(_wing(hs, hc, hc * 0.5, hz, _u(rng, 0.3, 0.6) if kind != "prop" else 0.1,
                       0.05 if not t_tail else 0.0, hc * 0.1, hc * 0.06, hy, 0.0)))

    # engines
    def nacelle(x: float, y: float, z: float, r: float, ln: float) -> list[Loft]:
        return [loft([z - ln / 2, z - ln * 0.3, z + ln / 2], [r * 0.7, r, r * 0.9],
                     [r * 0.7, r, r * 0.9], rot=frame([0, 0, 1], [1, 0, 0]),
                     origin=[x, y, 0.0])]

    def wing_point(frac: float) -> tuple[float, float, float]:
        x = span * frac
        zle = le - x * np.tan(sweep)
        c = rc + (tc - rc) * frac
        return x, wy + x * np.tan(dih), zle - c / 2

    if kind in ("airliner", "cargo"):
        n_eng = int(_pick(rng, [2, 2, 4])) if kind == "airliner" else int(_pick(rng, [2, 4]))
        er = R * _u(rng, 0.45, 0.65) if kind == "airliner" else R * 0.45
        eln = L * _u(rng, 0.1, 0.14)
        fracs = [0.33] if n_eng == 2 else [0.27, 0.55]
        for f in fracs:
            x, y, zc = wing_point(f)
            ey = y - er * 1.3 if kind == "airliner" else y - er * 0.9
            ez = zc + rc * 0.6
            for sx in (-1, 1):
                A.add(*nacelle(sx * x, ey, ez, er, eln))
                A.add(box([sx * x, (ey + y) / 2, ez - eln * 0.1],
                          [er * 0.3, abs(y - ey), eln * 0.6]))
            if kind == "cargo":  # propellers in front of the nacelles
                for sx in (-1, 1):
                    A.add(ellipsoid([sx * x, ey, ez + eln / 2 + 0.01], [er * 0.4] * 3))
                    for k in range(4):
                        a = np.pi / 4 + k * np.pi / 2
                        tip = [sx * x + np.cos(a) * er * 2.6, ey + np.sin(a) * er * 2.6,
                               ez + eln / 2 + 0.01]
                        A.add(rod([sx * x, ey, ez + eln / 2 + 0.01], tip, er * 0.25, er * 0.12,
                                  rz=er * 0.05, hint=[0, 0, 1]))
    elif kind == "bizjet":
        er, eln = R * 0.5, L * 0.12
        for sx in (-1, 1):
            A.add(*nacelle(sx * (R + er * 1.3), R * 0.3, -L / 2 + L * 0.27, er, eln))
            A.add(box([sx * (R + er * 0.5), R * 0.3, -L / 2 + L * 0.27],
                      [er * 1.6, er * 0.3, eln * 0.5]))
    elif kind == "prop":
        nose = np.array([0, rise[-1], L / 2])
        A.add(ellipsoid(nose, [R * 0.35, R * 0.35, R * 0.5]))
        nb = int(_pick(rng, [2, 3]))
        plen = R * _u(rng, 1.8, 2.5)
        a0 = _u(rng, 0, np.pi)
        for k in range(nb):
            a = a0 + 2 * np.pi * k / nb
            A.add(rod(nose, nose + [np.cos(a) * plen, np.sin(a) * plen, 0], R * 0.2, R * 0.1,
                      rz=R * 0.05, hint=[0, 0, 1]))
        if rng.random() < 0.4:  # fixed landing gear
            for sx in (-1, 1):
                w0 = np.array([sx * R * 1.5, -R * 2.2, L * 0.15])
                A.add(rod([0, -R * 0.7, L * 0.17], w0, R * 0.08))
                A.add(rod(w0 - [R * 0.15, 0, 0], w0 + [R * 0.15, 0, 0], R * 0.45, hint=[0, 1, 0]))
    elif kind == "fighter" and rng.random() < 0.7:  # intakes
        for sx in (-1, 1):
            A.add(box([sx * R * 1.0, -R * 0.1, L * 0.02], [R * 0.7, R * 1.1, L * 0.3], p=4.0))
    return A


# ---------------------------------------------------------------------------------------- public

CATEGORIES: dict[str, Callable[[np.random.Generator], Assembly]] = {
    "airplane": airplane, "car": car, "chair": chair, "table": table, "lamp": lamp, "sofa": sofa,
}


def _category_code(name: str) -> int:
    return zlib.crc32(name.encode())


def shape_rng(category: str, seed: int) -> np.random.Generator:
    """The generator that builds shape ``seed`` of ``category``; depends on nothing else."""
    return np.random.default_rng([_category_code(category), int(seed) & 0xFFFFFFFF,
                                  int(seed) >> 32])


def build_shape(category: str, seed: int) -> Assembly:
    """The parts of shape ``seed`` of ``category``, normalised like ShapeNetCore.v2 (bounding box
    centred, diagonal 1)."""
    if category not in CATEGORIES:
        raise FlowsuiteError(f"unknown shape category {category!r}; choose from "
                             f"{', '.join(CATEGORIES)}")
    rng = shape_rng(category, seed)
    shape = CATEGORIES[category](rng)
    shape.normalize()
    return shape


def sample_shape(category: str, seed: int, n_points: int = 15000) -> np.ndarray:
    """``(n_points, 3)`` float32 points, uniform by area on the visible surface of shape
    ``seed`` of ``category``."""
    shape = build_shape(category, seed)
    rng = np.random.default_rng([_category_code(category), int(seed) & 0xFFFFFFFF,
                                 int(seed) >> 32, 1])
    return shape.sample(n_points, rng)


def shape_mesh(category: str, seed: int):
    """Shape ``seed`` of ``category`` as an ``open3d.geometry.TriangleMesh``."""
    return build_shape(category, seed).to_open3d()
