"""Procedural shapes: recognisable layout (orientation, proportions), visible-surface sampling,
reproducibility and variety."""

import numpy as np
import pytest

from flowsuite.core.errors import FlowsuiteError
from flowsuite.data.mesh import Assembly, box, rod
from flowsuite.data.procedural import CATEGORIES, sample_shape, shape_mesh

N = 1500


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_points_are_normalised_and_reproducible(category):
    a = sample_shape(category, 3, N)
    assert a.shape == (N, 3) and a.dtype == np.float32 and np.isfinite(a).all()
    lo, hi = a.min(0), a.max(0)
    # bounding box of the mesh has diagonal 1 and is centred; the visible points fill most of it
    assert 0.85 < np.linalg.norm(hi - lo) <= 1.0 + 1e-4
    assert np.abs((lo + hi) / 2).max() < 0.08
    assert np.array_equal(a, sample_shape(category, 3, N))
    assert not np.array_equal(a, sample_shape(category, 4, N))


def _extent(p):
    return p.max(0) - p.min(0)


def test_orientation_y_up_front_plus_z():
    for s in range(6):
        plane = sample_shape("airplane", s, N)
        ex = _extent(plane)
        assert ex[0] > ex[1] and ex[2] > ex[1]  # span and length lie flat
        top = plane[plane[:, 1] > np.quantile(plane[:, 1], 0.98)]
        assert top[:, 2].mean() < 0  # the tail fin is at the back (-z)
        car = sample_shape("car", s, N)
        ex = _extent(car)
        assert ex[2] > ex[0] > 0.6 * ex[1]  # long along z
        chair = sample_shape("chair", s, N)
        top = chair[chair[:, 1] > np.quantile(chair[:, 1], 0.97)]
        assert top[:, 2].mean() < chair[:, 2].mean()  # the back is behind the seat


def test_categories_vary_in_structure():
    # proportions (height over width) spread widely within a category: not one template
    for cat in CATEGORIES:
        ratios = []
        for s in range(16):
            ex = _extent(sample_shape(cat, s, 400))
            ratios.append(ex[1] / ex[0])
        assert np.std(np.log(ratios)) > 0.1, cat


def test_hidden_surface_is_not_sampled():
    seat = box([0, 0.5, 0], [1.0, 0.1, 1.0])
    leg = rod([0, 0, 0], [0, 0.54, 0], 0.05)  # its top end is inside the seat
    pts = Assembly([seat, leg]).sample(4000, np.random.default_rng(0))
    inside_seat = (np.abs(pts[:, 0]) < 0.49) & (np.abs(pts[:, 2]) < 0.49) & \
        (pts[:, 1] > 0.46) & (pts[:, 1] < 0.54)
    assert not inside_seat.any()
    # the seat's underside is not sampled where the leg meets it
    under = (np.abs(pts[:, 1] - 0.45) < 1e-6) & (np.hypot(pts[:, 0], pts[:, 2]) < 0.045)
    assert not under.any()
    # area-uniform: the leg's visible side (2*pi*0.05*0.45 = 0.14) against the seat's 2.4
    on_leg = pts[:, 1] < 0.449
    assert abs(on_leg.mean() - 0.1414 / (2.4 - 0.0079 + 0.1414 + 0.0079)) < 0.02


def test_mesh_and_unknown_category():
    m = shape_mesh("lamp", 0)
    assert len(m.triangles) > 50 and len(m.vertices) > 50
    with pytest.raises(FlowsuiteError, match="unknown shape category"):
        sample_shape("boat", 0, 10)
