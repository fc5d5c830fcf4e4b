"""Writing clouds, previews and meshes atomically; reading clouds and meshes; clear errors."""

from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest
import torch

from flowsuite.core import FlowsuiteError
from flowsuite.pointflow.export import (
    read_cloud,
    reconstruct_mesh,
    sample_surface,
    write_mesh,
    write_ply,
    write_preview,
)


def sphere(n: int = 800, seed: int = 0) -> torch.Tensor:
    v = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))
    return v / v.norm(dim=-1, keepdim=True)


def _leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_ply_round_trip_and_no_silent_overwrite(tmp_path):
    pts = sphere()
    out = write_ply(pts, tmp_path / "s.ply")
    back = read_cloud(out)
    assert back.shape == (800, 3) and torch.allclose(back, pts, atol=1e-6)
    with pytest.raises(FlowsuiteError, match="already exists"):
        write_ply(pts * 2, out)
    assert torch.allclose(read_cloud(out), pts, atol=1e-6)
    write_ply(pts * 2, out, force=True)
    assert torch.allclose(read_cloud(out), pts * 2, atol=1e-6)
    assert _leftovers(tmp_path) == []


def test_preview_png_of_several_clouds(tmp_path):
    out = write_preview([sphere(), sphere(300, 1) * 0.5], tmp_path / "p.png", titles=["a", "b"])
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(FlowsuiteError):
        write_preview(sphere(), tmp_path / "p.jpg")
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("method", ["ball_pivoting", "poisson"])
@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_mesh_from_points_is_written_and_lies_on_the_surface(tmp_path, method, suffix):
    mesh = reconstruct_mesh(sphere(1500), method, poisson_depth=6)
    out = write_mesh(mesh, tmp_path / f"m{suffix}")
    samples = read_cloud(out, points=500)
    assert samples.shape == (500, 3)
    radius = samples.norm(dim=-1)
    assert float((radius - 1).abs().mean()) < 0.05


@pytest.mark.parametrize("suffix", [".pcd", ".xyz", ".npy"])
def test_cloud_formats_are_read_and_capped(tmp_path, suffix):
    pts = sphere(500)
    path = tmp_path / f"c{suffix}"
    if suffix == ".npy":
        np.save(path, np.concatenate([pts.numpy(), np.zeros((500, 3))], 1))  # with normals
    else:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts.double().numpy()))
        o3d.io.write_point_cloud(str(path), pcd)
    assert read_cloud(path).shape == (500, 3)
    capped = read_cloud(path, points=100, seed=3)
    assert capped.shape == (100, 3) and torch.equal(capped, read_cloud(path, points=100, seed=3))


@pytest.mark.parametrize("suffix", [".off", ".stl", ".obj"])
def test_meshes_are_sampled_on_their_surface(tmp_path, suffix):
    box = o3d.geometry.TriangleMesh.create_box(2.0, 2.0, 2.0)
    box.compute_triangle_normals()
    path = tmp_path / f"box{suffix}"
    o3d.io.write_triangle_mesh(str(path), box)
    pts = read_cloud(path, points=1000)
    assert pts.shape == (1000, 3)
    on_face = ((pts.abs() < 1e-4) | ((pts - 2).abs() < 1e-4)).any(-1)
    assert bool(on_face.all())


def test_surface_sampling_is_uniform_by_area():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [10, 0, 0], [13, 0, 0], [10, 3, 0.0]])
    tris = np.array([[0, 1, 2], [3, 4, 5]])  # areas 0.5 and 4.5
    pts = sample_surface(verts, tris, 20000, seed=0)
    assert abs((pts[:, 0] >= 10).mean() - 0.9) < 0.01


def _file(name: str, content: bytes | str | np.ndarray | None):
    """A maker of a test input ``name`` with ``content`` in a folder (None: nothing written)."""
    def make(folder):
        path = folder / name
        if isinstance(content, np.ndarray):
            np.save(path, content)
        elif isinstance(content, str):
            path.write_text(content)
        elif content is not None:
            path.write_bytes(content)
        return path
    return make


@pytest.mark.parametrize("make,match", [
    (_file("missing.ply", None), "does not exist"),
    (_file("e.pcd", b""), "is empty"),
    (_file("g.ply", "not a ply\n"), "no points"),
    (_file("g.off", "OFF\n0 0 0\n"), "no points"),
    (_file("t.txt", "1 2 3\n"), "unsupported"),
    (_file("n.npy", np.array([[0, np.nan, 0.0]])), "NaN"),
    (_file("s.npy", np.zeros(5)), r"\(N, 3\)"),
    (_file("b.npy", b"garbage"), "not a readable"),
])
def test_bad_inputs_give_one_line_errors(tmp_path, make, match):
    with pytest.raises(FlowsuiteError, match=match) as info:
        read_cloud(make(tmp_path))
    assert "\n" not in str(info.value)


def test_bad_outputs_give_errors(tmp_path):
    with pytest.raises(FlowsuiteError):
        write_ply(torch.zeros(0, 3), tmp_path / "e.ply")
    with pytest.raises(FlowsuiteError):
        write_ply(torch.tensor([[0.0, float("inf"), 0.0]]), tmp_path / "i.ply")
    with pytest.raises(FlowsuiteError):
        write_ply(sphere(), tmp_path / "s.xyz")
    with pytest.raises(FlowsuiteError):
        reconstruct_mesh(torch.zeros(50, 3))
    assert list(tmp_path.iterdir()) == []
