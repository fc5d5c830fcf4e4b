"""Shape files: every format, area-uniform surface sampling, the OFF parser, bad files."""

import numpy as np
import open3d as o3d
import pytest

from flowsuite.data.readers import BadShapeFile, read_off, read_shape

CUBE_V = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float)
CUBE_F = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                   [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])


def _box_mesh(sx=2.0):
    m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(CUBE_V * [sx, 1, 1]),
                                  o3d.utility.Vector3iVector(CUBE_F))
    return m


def _rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("ext", [".ply", ".obj", ".stl", ".off", ".gltf"])
def test_meshes_are_sampled_uniformly_on_the_surface(tmp_path, ext):
    path = tmp_path / f"box{ext}"
    if ext == ".off":
        v, f = CUBE_V * [2, 1, 1], CUBE_F
        path.write_text("OFF\n8 12 0\n" + "".join(f"{a} {b} {c}\n" for a, b, c in v)
                        + "".join(f"3 {a} {b} {c}\n" for a, b, c in f))
    else:
        m = _box_mesh()
        if ext == ".stl":
            m.compute_triangle_normals()
        assert o3d.io.write_triangle_mesh(str(path), m)
    p = read_shape(path, 4000, _rng())
    assert p.shape == (4000, 3) and p.dtype == np.float32
    # every point on the surface of the 2 x 1 x 1 box
    d = np.minimum(np.abs(p - [0, 0, 0]), np.abs(p - [2, 1, 1])).min(1)
    assert d.max() < 1e-5
    # the two 1 x 1 end faces hold 2 / 10 of the area
    ends = (np.abs(p[:, 0]) < 1e-5) | (np.abs(p[:, 0] - 2) < 1e-5)
    assert abs(ends.mean() - 0.2) < 0.03


@pytest.mark.parametrize("ext", [".pcd", ".xyz", ".pts", ".ply", ".npy"])
def test_point_clouds_are_read_and_capped(tmp_path, ext):
    pts = np.random.default_rng(1).normal(size=(500, 3))
    path = tmp_path / f"c{ext}"
    if ext == ".npy":
        np.save(path, pts.astype(np.float32))
    else:
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
        assert o3d.io.write_point_cloud(str(path), pc)
    p = read_shape(path, 10000, _rng())
    assert p.shape == (500, 3)
    np.testing.assert_allclose(np.sort(p[:, 0]), np.sort(pts[:, 0]), atol=1e-4)
    assert read_shape(path, 200, _rng()).shape == (200, 3)


def test_xyz_without_open3d_support_falls_back_to_text(tmp_path):
    path = tmp_path / "c.pts"
    path.write_text("3\n0 0 0 1\n1 0 0 1\n0 1 0 1\n")
    assert read_shape(path, 10, _rng()).shape == (3, 3)


def test_off_parser_handles_modelnet_quirks(tmp_path):
    path = tmp_path / "m.off"
    # ModelNet40's glued header, a comment, a quad (fan-split) and face colours
    path.write_text("OFF5 2 0\n# comment\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n0 0 1\n"
                    "4 0 1 2 3\n3 0 1 4 255 0 0\n")
    v, f = read_off(path)
    assert v.shape == (5, 3)
    assert f.tolist() == [[0, 1, 2], [0, 2, 3], [0, 1, 4]]
    assert o3d.io.read_triangle_mesh(str(path)).is_empty()  # why we parse it ourselves
    path.write_text("COFF\n\n3 1 0\n0 0 0 9 9 9\n1 0 0 9 9 9\n0 1 0 9 9 9\n3 0 1 2\n")
    assert read_off(path)[0].shape == (3, 3)


@pytest.mark.parametrize("text,kind", [
    ("", "empty"),
    ("OFF\n8 12 0\n0 0 0\n", "corrupt"),           # truncated
    ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n", "corrupt"),  # index out of range
    ("OF\n3 1 0\n", "corrupt"),
    ("OFF\n3 1 0\n0 0 0\n1 1 1\n2 2 2\n3 0 1 2\n", "degenerate"),  # collinear: no area
    ("OFF\n3 1 0\n0 0 0\nnan 0 0\n0 1 0\n3 0 1 2\n", "non-finite"),
])
def test_bad_off_files(tmp_path, text, kind):
    path = tmp_path / "bad.off"
    path.write_text(text)
    with pytest.raises(BadShapeFile) as e:
        read_shape(path, 10, _rng())
    assert e.value.kind == kind


def test_bad_files_of_other_formats(tmp_path):
    cases = {}
    (tmp_path / "garbage.ply").write_bytes(b"\x00\x01garbage")
    cases["garbage.ply"] = "corrupt"
    (tmp_path / "text.obj").write_text("this is not an obj\n")
    cases["text.obj"] = "corrupt"
    np.save(tmp_path / "wrong.npy", np.zeros((4, 2)))
    cases["wrong.npy"] = "corrupt"
    np.save(tmp_path / "inf.npy", np.array([[0, 0, np.inf], [1, 1, 1]]))
    cases["inf.npy"] = "non-finite"
    np.save(tmp_path / "point.npy", np.ones((10, 3)))
    cases["point.npy"] = "degenerate"
    (tmp_path / "empty.stl").write_bytes(b"")
    cases["empty.stl"] = "empty"
    for name, kind in cases.items():
        with pytest.raises(BadShapeFile) as e:
            read_shape(tmp_path / name, 10, _rng())
        assert e.value.kind == kind, name
