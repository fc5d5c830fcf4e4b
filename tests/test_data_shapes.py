"""open_shapes / ShapeDataset: layouts, splits, normalisations, per-epoch subsets, bad input."""

import os
import warnings
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import torch
from click.testing import CliRunner

from flowsuite.cli.main import cli
from flowsuite.core.errors import FlowsuiteError
from flowsuite.data.shapes import ShapeFileWarning, open_shapes

KW = {"surface_points": 300, "points_per_shape": 64}


def _cloud(seed, n=300, offset=0.0, scale=1.0):
    return (np.random.default_rng(seed).normal(size=(n, 3)) * scale + offset).astype(np.float32)


def _box_mesh(size, offset=(0, 0, 0)):
    m = o3d.geometry.TriangleMesh.create_box(*size)
    m.translate(offset)
    m.compute_triangle_normals()  # STL files need them
    return m


def _write_off_modelnet(path, scale):
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float) * scale
    f = [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"OFF{len(v)} {len(f)} 0\n" + "".join(f"{a} {b} {c}\n" for a, b, c in v)
                    + "".join(f"3 {a} {b} {c}\n" for a, b, c in f))


def test_user_folder_of_mixed_formats_gets_a_seeded_split(tmp_path):
    root = tmp_path / "mine"
    (root / "boxes").mkdir(parents=True)
    (root / "blobs" / "nested").mkdir(parents=True)
    for i in range(6):
        o3d.io.write_triangle_mesh(str(root / "boxes" / f"b{i}.{['ply', 'obj', 'stl'][i % 3]}"),
                                   _box_mesh((1 + i, 1, 1)))
    for i in range(5):
        np.save(root / "blobs" / "nested" / f"c{i}.npy", _cloud(i))
    o3d.io.write_point_cloud(str(root / "blobs" / "c5.pcd"),
                             o3d.geometry.PointCloud(o3d.utility.Vector3dVector(_cloud(9))))
    (root / "README.txt").write_text("not a shape")
    parts = {s: open_shapes(root, s, **KW) for s in ("train", "val", "test")}
    tr = parts["train"]
    assert tr.format == "folder" and tr.categories == ["blobs", "boxes"]
    paths = [{str(d.path_of(i)) for i in range(len(d))} for d in parts.values()]
    assert sum(len(p) for p in paths) == 12 and len(set.union(*paths)) == 12
    assert all(len(p) >= 1 for p in paths)
    assert [str(p) for p in open_shapes(root, "val", **KW)._paths] == sorted(paths[1])
    other = open_shapes(root, "val", seed=5, **KW)
    assert {str(other.path_of(i)) for i in range(len(other))} != paths[1]
    item = tr[0]
    assert item["points"].shape == (64, 3) and item["points"].dtype == torch.float32
    assert tr.category_of(0) in tr.categories
    batch = next(iter(torch.utils.data.DataLoader(tr, batch_size=4)))
    assert batch["points"].shape == (4, 64, 3) and batch["category"].shape == (4,)


def test_pc15k_layout_with_synset_ids(tmp_path):
    root = tmp_path / "ShapeNetCore.v2.PC15k"
    for syn in ("03001627", "02691156"):
        for s, n in (("train", 3), ("val", 1), ("test", 2)):
            (root / syn / s).mkdir(parents=True)
            for i in range(n):
                np.save(root / syn / s / f"{syn}{i}.npy", _cloud(i))
    ds = open_shapes(root, "test", **KW)
    assert ds.format == "shapenet-pc15k" and ds.categories == ["airplane", "chair"]
    assert len(ds) == 4
    only = open_shapes(root, "train", categories=["03001627"], **KW)
    assert only.categories == ["chair"] and len(only) == 3
    assert {only.category_of(i) for i in range(3)} == {"chair"}
    with pytest.raises(FlowsuiteError, match="no category 'car'.*02958343"):
        open_shapes(root, "train", categories=["car"], **KW)


def test_shapenet_v2_meshes(tmp_path):
    root = tmp_path / "ShapeNetCore.v2"
    for i in range(4):
        d = root / "04379243" / f"model{i}" / "models"
        d.mkdir(parents=True)
        o3d.io.write_triangle_mesh(str(d / "model_normalized.obj"), _box_mesh((1, 0.1 + i, 1)))
        (d / "model_normalized.json").write_text("{}")
    ds = open_shapes(root, "train", normalize="none", **KW)
    assert ds.format == "shapenet-v2" and ds.categories == ["table"]
    assert len(ds) == 2 and ds.path_of(0).name == "model_normalized.obj"


def test_modelnet40_with_malformed_headers_and_carved_val(tmp_path):
    root = tmp_path / "ModelNet40"
    for cls in ("bed", "desk"):
        for i in range(10):
            _write_off_modelnet(root / cls / "train" / f"{cls}_{i:04d}.off", 1 + i)
        for i in range(3):
            _write_off_modelnet(root / cls / "test" / f"{cls}_{100 + i:04d}.off", 1 + i)
    tr, va, te = (open_shapes(root, s, **KW) for s in ("train", "val", "test"))
    assert tr.format == "modelnet"
    assert (len(tr), len(va), len(te)) == (18, 2, 6)
    assert not {str(p) for p in tr._paths} & {str(p) for p in va._paths}


def test_normalisations_are_explicit_and_recorded(tmp_path):
    root = tmp_path / "n"
    for s in ("train", "val"):
        (root / "c" / s).mkdir(parents=True)
        for i in range(4):
            np.save(root / "c" / s / f"{i}.npy", _cloud(i + (10 if s == "val" else 0),
                                                        offset=[5, -3, 2], scale=1 + i))
    box = open_shapes(root, normalize="unit_box", **KW)
    assert box.normalization == "unit_box"
    for i in range(len(box)):
        c = box.cloud(i)
        assert abs((c.max(0) - c.min(0)).max() - 2) < 1e-5
        np.testing.assert_allclose((c.max(0) + c.min(0)) / 2, 0, atol=1e-5)
    sph = open_shapes(root, normalize="unit_sphere", **KW)
    for i in range(len(sph)):
        assert abs(np.linalg.norm(sph.cloud(i), axis=1).max() - 1) < 1e-5
        np.testing.assert_allclose(sph.cloud(i).mean(0), 0, atol=1e-5)
    glob = open_shapes(root, normalize="global", **KW)
    allp = np.concatenate([glob.cloud(i) for i in range(len(glob))])
    np.testing.assert_allclose(allp.mean(0), 0, atol=1e-4)
    assert abs(allp.std() - 1) < 1e-3
    val = open_shapes(root, "val", normalize="global", **KW)
    assert val.stats == glob.stats  # evaluation uses the training statistics
    none = open_shapes(root, normalize="none", **KW)
    raw = np.load(none.path_of(0))
    np.testing.assert_array_equal(none.cloud(0), raw)
    np.testing.assert_allclose(box.denormalize(box.cloud(0), 0), raw, atol=1e-4)
    with pytest.raises(FlowsuiteError, match="unknown normalization"):
        open_shapes(root, normalize="minmax", **KW)


def test_training_subsets_change_per_epoch_and_eval_subsets_do_not(tmp_path):
    root = tmp_path / "e"
    (root / "c").mkdir(parents=True)
    for i in range(10):
        np.save(root / "c" / f"{i}.npy", _cloud(i))
    a = open_shapes(root, "train", seed=3, **KW)
    b = open_shapes(root, "train", seed=3, **KW)
    x0 = a[1]["points"]
    assert torch.equal(x0, b[1]["points"])  # reproducible from (seed, epoch, index)
    a.set_epoch(1)
    x1 = a[1]["points"]
    assert not torch.equal(x0, x1)
    b.set_epoch(1)
    assert torch.equal(x1, b[1]["points"])
    assert len({tuple(r) for r in x1.numpy()}) == 64  # drawn without replacement
    v = open_shapes(root, "test", seed=3, **KW)
    y0 = v[0]["points"]
    v.set_epoch(7)
    assert torch.equal(y0, v[0]["points"])
    full = open_shapes(root, "train", surface_points=300, points_per_shape=None)
    assert full[0]["points"].shape == (300, 3)


def test_bad_files_are_skipped_with_named_warnings_and_a_summary(tmp_path):
    root = tmp_path / "bad"
    d = root / "stuff"
    d.mkdir(parents=True)
    np.save(d / "good.npy", _cloud(0))
    (d / "empty.ply").write_bytes(b"")
    (d / "corrupt.obj").write_text("v 1 2\nf 1 2 3 x\n")
    (d / "flat.off").write_text("OFF\n3 1 0\n0 0 0\n1 1 1\n2 2 2\n3 0 1 2\n")
    np.save(d / "nan.npy", np.full((5, 3), np.nan))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = open_shapes(root, "train", split_ratios=(1, 0, 0), **KW)
    assert len(ds) == 1 and ds.path_of(0).name == "good.npy"
    msgs = [str(w.message) for w in caught if issubclass(w.category, ShapeFileWarning)]
    for name, kind in [("empty.ply", "empty"), ("corrupt.obj", "corrupt"),
                       ("flat.off", "degenerate"), ("nan.npy", "non-finite")]:
        assert any(name in m and kind in m for m in msgs), (name, msgs)
    assert any(m.startswith("skipped 4 of 5 train files") for m in msgs)
    assert len(ds.skipped) == 4


def test_unusable_folders_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(FlowsuiteError, match="does not exist"):
        open_shapes(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlowsuiteError, match="holds no shape files"):
        open_shapes(tmp_path / "empty")
    allbad = tmp_path / "allbad" / "c"
    allbad.mkdir(parents=True)
    (allbad / "a.ply").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FlowsuiteError, match="none of the 1 train files"):
            open_shapes(tmp_path / "allbad")
    with pytest.raises(FlowsuiteError, match="unknown split"):
        open_shapes(tmp_path / "allbad", split="dev")
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0)
    try:
        if os.access(locked, os.R_OK):  # root reads any folder: make the refusal happen
            real = Path.iterdir

            def refuse(self):
                if self == locked:
                    raise PermissionError(13, "Permission denied")
                return real(self)

            monkeypatch.setattr(Path, "iterdir", refuse)
        with pytest.raises(FlowsuiteError, match="permission denied"):
            open_shapes(locked)
    finally:
        os.chmod(locked, 0o755)


def test_cli_inspect(tmp_path):
    root = tmp_path / "i" / "thing"
    root.mkdir(parents=True)
    for i in range(3):
        np.save(root / f"{i}.npy", _cloud(i))
    (root / "bad.npy").write_bytes(b"")
    r = CliRunner()
    res = r.invoke(cli, ["data", "inspect", str(tmp_path / "i"), "--normalize", "unit_box"])
    assert res.exit_code == 0, res.output
    assert "thing: " in res.output and "skipped: 1" in res.output and "bad.npy" in res.output
    res = r.invoke(cli, ["data", "inspect", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output
    assert "Traceback" not in res.output


def test_parallel_reading_gives_the_same_dataset(tmp_path):
    root = tmp_path / "par" / "c"
    root.mkdir(parents=True)
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    for i in range(70):  # meshes, so the per-file sampling seed matters
        m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v * (1 + i % 5)),
                                      o3d.utility.Vector3iVector([[0, 2, 1], [0, 1, 3],
                                                                  [0, 3, 2], [1, 2, 3]]))
        o3d.io.write_triangle_mesh(str(root / f"{i}.ply"), m)
    a = open_shapes(root.parent, split_ratios=(1, 0, 0), workers=1, **KW)
    b = open_shapes(root.parent, split_ratios=(1, 0, 0), workers=2, **KW)
    assert len(a) == len(b) == 70
    for i in range(70):
        np.testing.assert_array_equal(a.cloud(i), b.cloud(i))
