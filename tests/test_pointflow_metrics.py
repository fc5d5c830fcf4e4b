"""Point-cloud distances and PointFlow's MMD / COV / 1-NNA on cases with known answers."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from flowsuite.core import FlowsuiteError
from flowsuite.pointflow.metrics import (
    balanced_clusters,
    chamfer_distance,
    chamfer_matrix,
    cut_rotations,
    emd_exact,
    emd_matrix,
    evaluate,
    mmd_cov,
    one_nn_accuracy,
)


def clouds(count: int, n: int, seed: int, offset: float = 0.0) -> torch.Tensor:
    """Ellipsoids with random axes: a family of distinct but similar shapes."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(count, n, 3, generator=g)
    axes = 0.5 + 0.5 * torch.rand(count, 1, 3, generator=g)
    return v / v.norm(dim=-1, keepdim=True) * axes + offset


def brute_chamfer(x: torch.Tensor, y: torch.Tensor) -> float:
    d = ((x[:, None] - y[None]) ** 2).sum(-1)
    return float(d.min(1).values.mean() + d.min(0).values.mean())


def test_chamfer_of_identical_clouds_is_zero_and_matches_brute_force():
    a, b = clouds(3, 100, 0), clouds(3, 80, 1)
    assert torch.allclose(chamfer_distance(a, a), torch.zeros(3), atol=1e-6)
    got = chamfer_distance(a, b, max_elements=1000)  # forces several chunks
    want = torch.tensor([brute_chamfer(a[i], b[i]) for i in range(3)])
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("backend", ["brute", "kdtree", "torch"])
def test_chamfer_matrix_backends_agree_with_brute_force(backend):
    a, b = clouds(3, 64, 2), clouds(2, 64, 3)
    m = chamfer_matrix(a, b, backend=backend)
    assert m.shape == (3, 2)
    for i, j in itertools.product(range(3), range(2)):
        assert abs(float(m[i, j]) - brute_chamfer(a[i], b[j])) < 1e-5
    self_m = chamfer_matrix(a, backend=backend)
    assert torch.allclose(self_m, self_m.T) and float(self_m.diagonal().abs().max()) < 1e-6


def test_compiled_brute_force_chamfer_equals_the_kdtree_one():
    # Ragged sizes, some not a multiple of the kernel's 4-point sweep.
    g = np.random.default_rng(0)
    ragged = [g.standard_normal((n, 3)) * g.uniform(0.2, 2, 3) + g.normal(0, 0.3, 3)
              for n in (1, 5, 130, 257, 300)]
    for b in (None, [g.standard_normal((n, 3)) for n in (3, 64, 201)]):
        got = chamfer_matrix(ragged, b, backend="brute")
        want = chamfer_matrix(ragged, b, backend="kdtree")
        assert got.dtype == torch.float64 and got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    self_m = chamfer_matrix(ragged, backend="brute", workers=1)
    assert torch.equal(self_m, self_m.T) and float(self_m.diagonal().abs().max()) == 0.0
    with pytest.raises(FlowsuiteError, match="backend"):
        chamfer_matrix(ragged, backend="bogus")


def test_exact_emd_equals_brute_force_over_all_permutations():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, y = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
        cost = torch.cdist(x.double(), y.double())
        best = min(float(cost[range(6), list(p)].mean())
                   for p in itertools.permutations(range(6)))
        assert abs(emd_exact(x, y) - best) < 1e-9
    assert emd_exact(x, x[torch.randperm(6)]) == pytest.approx(0.0, abs=1e-12)


def test_compiled_assignment_solver_is_exact_against_scipy():
    from scipy.optimize import linear_sum_assignment

    from flowsuite.pointflow.metrics import _min_mean_assignment
    g = np.random.default_rng(1)
    for n in (1, 2, 3, 7, 40):
        for k in range(6):
            c = g.random((n, n)) if k % 2 else np.round(g.random((n, n)) * 3)  # ties too
            rows, cols = linear_sum_assignment(c)
            got = _min_mean_assignment(c, np.empty((3, n + 1)), np.empty((3, n + 1), np.int64))
            assert got == pytest.approx(c[rows, cols].mean(), abs=1e-12)


def test_exact_emd_matrix_matches_scipy_on_every_pair():
    a, b = clouds(4, 24, 20), clouds(3, 24, 21)
    got, info = emd_matrix(a, b, method="exact", workers=1)
    want = [[emd_exact(x, y) for y in b] for x in a]
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-12)
    self_m, _ = emd_matrix(a, method="exact")
    assert torch.equal(self_m, self_m.T) and float(self_m.diagonal().abs().max()) == 0.0
    assert self_m[0, 1] == pytest.approx(emd_exact(a[0], a[1]), abs=1e-12)
    assert "exact" in info["emd_method"]


def test_cut_rotations_are_fixed_proper_rotations():
    rot = cut_rotations(5)
    assert rot.shape == (5, 3, 3) and np.array_equal(rot[0], np.eye(3))
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(rot), 1.0)
    assert np.array_equal(rot, cut_rotations(5)) and np.array_equal(cut_rotations(2), rot[:2])


def test_more_cut_frames_never_raise_the_estimate_and_keep_the_bound():
    a, b = clouds(3, 256, 22), clouds(3, 256, 23)
    exact, _ = emd_matrix(a, b, method="exact")
    one, _ = emd_matrix(a, b, method="clusters", clusters=32, rotations=1)
    four, info = emd_matrix(a, b, method="clusters", clusters=32, rotations=4)
    assert bool((four <= one + 1e-12).all()) and bool((four < one).any())
    assert bool(((four - exact).abs() <= info["error_bound"] + 1e-9).all())
    assert "4 rotations" in info["emd_method"]
    same, _ = emd_matrix(a, a[:, torch.randperm(256)], method="clusters", clusters=32,
                         rotations=4)
    assert float(same.diagonal().abs().max()) < 1e-9
    with pytest.raises(FlowsuiteError, match="power of two"):
        emd_matrix(a, b, method="clusters", clusters=48)
    _, info = emd_matrix(a, b, method="clusters")  # the defaults state their measured error
    assert "64 balanced" in info["emd_method"] and "measured error" in info["emd_method"]
    _, info = emd_matrix(clouds(2, 16, 24), method="clusters")  # 16 points: 16 groups
    assert info["emd_method"].startswith("clusters (16 ") and "not measured" in info["emd_method"]


def test_balanced_clusters_are_equal_groups_with_a_valid_bound():
    x = clouds(2, 256, 4)
    cent, spread = balanced_clusters(x, 32)
    assert cent.shape == (2, 32, 3) and spread.shape == (2,)
    assert torch.allclose(cent.mean(1), x.mean(1), atol=1e-5)  # equal groups keep the mean
    with pytest.raises(ValueError):
        balanced_clusters(x, 24)


def test_cluster_emd_error_stays_within_its_bound_and_is_small():
    a, b = clouds(3, 256, 5), clouds(3, 256, 6)
    exact, _ = emd_matrix(a, b, method="exact")
    approx, info = emd_matrix(a, b, method="clusters", clusters=64)
    err = (approx - exact).abs()
    assert bool((err <= info["error_bound"] + 1e-9).all())
    assert float((err / exact).max()) < 0.15
    same, _ = emd_matrix(a, a[:, torch.randperm(256)], method="clusters", clusters=64)
    assert float(same.diagonal().abs().max()) < 1e-9


def test_identical_sets_cover_everything_and_have_zero_mmd():
    s = clouds(8, 64, 7)
    report = evaluate(s, s.clone(), emd_method="exact")
    assert report["COV-CD"] == 1.0 and report["COV-EMD"] == 1.0
    assert report["MMD-CD"] == pytest.approx(0, abs=1e-12)
    assert report["MMD-EMD"] == pytest.approx(0, abs=1e-12)
    # Every shape's nearest neighbour is its own copy in the other set: a copying generator.
    assert report["1-NNA-CD"] == 0.0
    json.dumps(report)
    assert report["normalization"].startswith("none") and "exact" in report["emd_method"]


def test_one_nna_of_copies_of_one_shape_is_near_half_through_ties():
    one = clouds(1, 64, 8).expand(10, -1, -1)
    report = evaluate(one, one.clone(), distances=("cd",))
    assert report["1-NNA-CD"] == pytest.approx(9 / 19)  # 9 of the 19 tied neighbours agree


def test_one_nna_of_two_samples_of_one_family_is_near_half():
    report = evaluate(clouds(40, 128, 9), clouds(40, 128, 10), distances=("cd",))
    assert 0.3 <= report["1-NNA-CD"] <= 0.7
    assert report["COV-CD"] > 0.4


def test_far_apart_sets_are_fully_separable():
    gen, ref = clouds(10, 64, 11), clouds(10, 64, 12, offset=10.0)
    report = evaluate(gen, ref, emd_method="exact")
    assert report["1-NNA-CD"] == 1.0 and report["1-NNA-EMD"] == 1.0
    assert report["MMD-CD"] > 100


def test_mmd_cov_and_one_nna_follow_their_definitions_on_a_hand_made_matrix():
    d_sr = torch.tensor([[1.0, 5.0, 3.0], [2.0, 4.0, 9.0]])  # 2 generated x 3 reference
    assert mmd_cov(d_sr) == {"mmd": pytest.approx((1 + 4 + 3) / 3), "cov": pytest.approx(1 / 3)}
    d_ss = torch.tensor([[0.0, 0.5], [0.5, 0.0]])
    d_rr = torch.tensor([[0.0, 7.0, 8.0], [7.0, 0.0, 6.0], [8.0, 6.0, 0.0]])
    # s0 -> s1 (right), s1 -> s0 (right), r0 -> s0 (wrong), r1 -> s1 (wrong), r2 -> s0 (wrong)
    assert one_nn_accuracy(d_ss, d_sr, d_rr) == pytest.approx(2 / 5)


def test_normalization_is_reported_and_applied():
    s = clouds(4, 64, 13)
    big = evaluate(s * 3, s * 3, normalization="unit_sphere", distances=("cd",))
    assert big["normalization"].startswith("unit_sphere")
    other = evaluate(s * 3, clouds(4, 64, 14) * 3, normalization="unit_sphere",
                     distances=("cd",))
    plain = evaluate(s, clouds(4, 64, 14), normalization="unit_sphere", distances=("cd",))
    assert other["MMD-CD"] == pytest.approx(plain["MMD-CD"], rel=1e-6)


@pytest.mark.parametrize("call", [
    lambda: evaluate(np.zeros((2, 5, 2)), np.zeros((2, 5, 3))),
    lambda: evaluate([np.full((5, 3), np.nan)], [np.zeros((5, 3))]),
    lambda: evaluate([], [np.zeros((5, 3))]),
    lambda: evaluate(clouds(2, 8, 0), clouds(2, 8, 1), normalization="bogus"),
    lambda: evaluate(clouds(2, 8, 0), clouds(2, 8, 1), distances=("hausdorff",)),
    lambda: emd_exact(torch.zeros(4, 3), torch.zeros(5, 3)),
    lambda: emd_matrix(clouds(2, 8, 0), clouds(2, 9, 1), method="exact"),
])
def test_bad_inputs_raise_flowsuite_error(call):
    with pytest.raises(FlowsuiteError):
        call()
