"""gen data shapes: layout, reproducibility independent of workers, no silent overwrite."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from flowsuite.cli.main import cli
from flowsuite.core.errors import FlowsuiteError
from flowsuite.data.generate import split_counts, write_shape_set


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_layout_and_byte_identical_for_any_worker_count(tmp_path):
    a = write_shape_set(tmp_path / "a", ["chair", "car"], 5, 300, seed=7, workers=1,
                        progress=False)
    b = write_shape_set(tmp_path / "b", ["chair", "car"], 5, 300, seed=7, workers=2,
                        progress=False)
    fa, fb = _files(a), _files(b)
    assert fa == fb
    npys = sorted(k for k in fa if k.endswith(".npy"))
    assert len(npys) == 10
    assert {k.split("/")[1] for k in npys} == {"train", "val", "test"}
    x = np.load(a / "chair" / "train" / "000000.npy")
    assert x.shape == (300, 3) and x.dtype == np.float32
    man = json.loads((a / "shapes.json").read_text())
    assert man["seed"] == 7 and man["splits"] == split_counts(5)
    c = write_shape_set(tmp_path / "c", ["chair"], 2, 300, seed=8, workers=1, progress=False)
    assert not np.array_equal(np.load(c / "chair" / "train" / "000000.npy"), x)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_never_overwrites_without_force(tmp_path):
    out = tmp_path / "set"
    write_shape_set(out, ["lamp"], 1, 50, progress=False)
    with pytest.raises(FlowsuiteError, match="--force"):
        write_shape_set(out, ["lamp"], 1, 50, progress=False)
    write_shape_set(out, ["table"], 1, 50, force=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["shapes.json", "table"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FlowsuiteError, match="not a flowsuite shape set"):
        write_shape_set(mine, ["lamp"], 1, 50, force=True, progress=False)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_split_counts():
    assert split_counts(1000) == {"train": 800, "val": 100, "test": 100}
    assert split_counts(3) == {"train": 1, "val": 1, "test": 1}
    assert split_counts(1) == {"train": 1, "val": 0, "test": 0}


def test_cli_shapes_and_user_errors(tmp_path):
    r = CliRunner()
    out = tmp_path / "s"
    res = r.invoke(cli, ["data", "shapes", "--out", str(out), "--categories", "sofa",
                         "--per-category", "3", "--points", "100", "--workers", "1",
                         "--preview", str(tmp_path / "p.png")])
    assert res.exit_code == 0, res.output
    assert len(list(out.rglob("*.npy"))) == 3
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    for args, msg in [(["--out", str(out)], "--force"),
                      (["--out", str(tmp_path / "t"), "--categories", "boat"], "unknown"),
                      (["--out", str(tmp_path / "p.png")], "is a file")]:
        res = r.invoke(cli, ["data", "shapes", "--per-category", "1", "--points", "10", *args])
        assert res.exit_code == 2, res.output
        assert msg in res.output and "Traceback" not in res.output
