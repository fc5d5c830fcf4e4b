"""``gen train pointcloud``, ``gen pointcloud`` and ``gen eval pointcloud`` on a tiny shape set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from flowsuite.cli.main import cli
from flowsuite.core.checkpoint import (
    Configurable,
    load_model,
    read_metadata,
    register_model,
    save_model,
)

torch.set_num_threads(1)


@register_model("test-cli-pointcloud-other")
class _Other(Configurable, nn.Module):
    def __init__(self, width: int = 2):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(width))


def _run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pfcli")
    data = root / "shapes"
    r = _run("data", "shapes", "--out", data, "--categories", "chair,table", "--per-category", 10,
             "--points", 512, "--workers", 1)
    assert r.exit_code == 0, r.output
    run = root / "run"
    r = _run("train", "pointcloud", "--data", data, "--out", run, "--steps", 4, "--batch-size", 4,
             "--points-per-shape", 128, "--preset", "tiny", "--device", "cpu")
    assert r.exit_code == 0, r.output
    return data, run


def test_training_stores_categories_and_stats(trained):
    _, run = trained
    info = read_metadata(run / "model.safetensors")
    assert info.model == "pointflow"
    assert json.loads(info.user["categories"]) == ["chair", "table"]
    stats = json.loads(info.user["stats"])
    assert len(stats["mean"]) == 3 and stats["std"] > 0
    assert info.user["step"] == "4"


def test_resume_continues_the_run(trained, tmp_path, error_line):
    data, run = trained
    run = Path(shutil.copytree(run, tmp_path / "run"))
    r = _run("train", "pointcloud", "--data", data, "--out", run, "--steps", 4, "--batch-size", 4,
             "--points-per-shape", 128, "--preset", "tiny", "--device", "cpu")
    assert "already holds a training run" in error_line(r)
    r = _run("train", "pointcloud", "--data", data, "--out", run, "--steps", 4, "--batch-size", 4,
             "--points-per-shape", 128, "--preset", "tiny", "--device", "cpu", "--resume")
    assert r.exit_code == 0, r.output
    r = _run("train", "pointcloud", "--data", data, "--out", run, "--steps", 40, "--batch-size", 4,
             "--points-per-shape", 128, "--preset", "tiny", "--device", "cpu", "--resume")
    assert r.exit_code == 0, r.output
    assert read_metadata(run / "model.safetensors").user["step"] == "40"
    assert json.loads(read_metadata(run / "model.safetensors").user["categories"]) == [
        "chair", "table"]


def test_time_limit_stops_with_a_checkpoint_and_resume_finishes(trained, tmp_path, step_clock):
    data, _ = trained
    run = tmp_path / "run"
    args = ["train", "pointcloud", "--data", data, "--out", run, "--steps", 12, "--batch-size", 4,
            "--points-per-shape", 128, "--preset", "tiny", "--device", "cpu"]
    r = _run(*args, "--time-limit", "5s")
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output
    line = [ln for ln in r.output.splitlines() if ln.startswith("time limit reached")]
    assert line == [f"time limit reached: stopped at step 5; the checkpoint is in {run / 'last'}"
                    "; run the same command with --resume to continue"]
    assert not (run / "model.safetensors").exists() and (run / "last").is_dir()
    r = _run(*args, "--resume", "--time-limit", "1h")
    assert r.exit_code == 0, r.output
    assert read_metadata(run / "model.safetensors").user["step"] == "12"


def test_init_starts_from_a_trained_model_and_adds_a_point_mixture(trained, tmp_path):
    """--init keeps the trained weights and normalisation; --point-mixture adds a base mixture
    that starts near N(0, I), so the new model's density starts where the old one was."""
    from flowsuite.pointflow.model import PointFlowModel

    data, run = trained
    out = tmp_path / "mix"
    r = _run("train", "pointcloud", "--data", data, "--out", out, "--steps", 3, "--batch-size", 4,
             "--points-per-shape", 128, "--device", "cpu", "--init", run, "--point-mixture", 3)
    assert r.exit_code == 0, r.output
    old, new = (PointFlowModel.from_pretrained(p) for p in (run, out))
    assert new.config == {**old.config, "point_mixture": 3}
    assert new.stats == old.stats and new.categories == old.categories
    assert new.point_mixture is not None and old.point_mixture is None
    # Three steps moved the shared weights only a little from the trained ones.
    shared = old.state_dict()
    drift = max((new.state_dict()[k] - v).abs().max().item() for k, v in shared.items()
                if v.is_floating_point())
    assert 0 < drift < 0.1
    r = _run("pointcloud", "--model", out, "--category", "table", "--points", 64,
             "--out", tmp_path / "t.ply", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert _n_points(tmp_path / "t.ply") == 64


def test_softflow_noise_point_steps_and_point_splines_change_only_their_setting(trained, tmp_path):
    from flowsuite.pointflow.model import PointFlowModel

    data, run = trained
    base = ["train", "pointcloud", "--data", data, "--steps", 2, "--batch-size", 4,
            "--points-per-shape", 64, "--device", "cpu"]
    r = _run(*base, "--out", tmp_path / "clean", "--init", run, "--softflow-noise", 0)
    assert r.exit_code == 0, r.output
    old, new = (PointFlowModel.from_pretrained(p) for p in (run, tmp_path / "clean"))
    assert new.config == {**old.config, "softflow_max_noise": 0.0}
    r = _run(*base, "--out", tmp_path / "deeper", "--init", run, "--point-steps",
             old.config["point_steps"] + 2)
    assert r.exit_code == 0, r.output
    deeper = PointFlowModel.from_pretrained(tmp_path / "deeper")
    assert deeper.config == {**old.config, "point_steps": old.config["point_steps"] + 2}
    r = _run(*base, "--out", tmp_path / "splined", "--init", run, "--point-splines", 2)
    assert r.exit_code == 0, r.output
    splined = PointFlowModel.from_pretrained(tmp_path / "splined")
    assert splined.config == {**old.config, "point_splines": 2}
    r = _run(*base, "--out", tmp_path / "none", "--init", run, "--point-steps", 0)
    assert r.exit_code == 2 and "Traceback" not in r.output and "--point-steps" in r.output
    assert not (tmp_path / "none").exists()
    r = _run(*base, "--out", tmp_path / "fresh", "--preset", "tiny", "--softflow-noise", 0.01)
    assert r.exit_code == 0, r.output
    assert PointFlowModel.from_pretrained(tmp_path / "fresh").softflow_max_noise == 0.01
    r = _run(*base, "--out", tmp_path / "bad", "--preset", "tiny", "--softflow-noise", -1)
    assert r.exit_code == 2 and "Traceback" not in r.output and "--softflow-noise" in r.output
    assert not (tmp_path / "bad").exists()


def test_init_errors_are_one_line(trained, tmp_path, error_line):
    data, run = trained
    base = ["train", "pointcloud", "--data", data, "--steps", 2, "--device", "cpu"]
    r = _run(*base, "--out", tmp_path / "a", "--init", run, "--preset", "tiny")
    assert "leave out --preset" in error_line(r)
    r = _run(*base, "--out", tmp_path / "b", "--init", tmp_path / "nothing")
    assert error_line(r)
    r = _run(*base, "--out", tmp_path / "c", "--init", run, "--categories", "chair")
    assert "same categories" in error_line(r)
    r = _run(*base, "--out", tmp_path / "d", "--preset", "tiny", "--point-mixture", 1)
    assert "--point-mixture must be 0 or at least 2" in error_line(r)
    assert not any((tmp_path / n).exists() for n in "abcd")


@pytest.mark.parametrize("value", ["0", "-5m", "soon", "1h1"])
def test_a_bad_time_limit_is_refused_before_training(trained, tmp_path, value):
    data, _ = trained
    r = _run("train", "pointcloud", "--data", data, "--out", tmp_path / "run", "--steps", 2,
             "--preset", "tiny", "--device", "cpu", "--time-limit", value)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "--time-limit" in r.output and "duration" in r.output
    assert not (tmp_path / "run").exists()


def test_sample_writes_numbered_ply_files_in_data_coordinates(trained, tmp_path):
    _, run = trained
    out = tmp_path / "chair.ply"
    png = tmp_path / "p.png"
    r = _run("pointcloud", "--model", run / "model.safetensors", "--category", "chair",
             "--count", 2, "--points", 100, "--out", out, "--preview", png, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert png.stat().st_size > 0
    stats = json.loads(read_metadata(run / "model.safetensors").user["stats"])
    for i in range(2):
        pts = np.asarray(o3d.io.read_point_cloud(str(tmp_path / f"chair_{i}.ply")).points)
        assert pts.shape == (100, 3)
        # Denormalised: centred near the data's mean, not near 0 in normalised units.
        assert np.isfinite(pts).all()
    one = tmp_path / "one.ply"
    r = _run("pointcloud", "--model", run, "--category", "table", "--points", 64, "--out", one,
             "--seed", 3, "--device", "cpu")
    assert r.exit_code == 0, r.output
    a = np.asarray(o3d.io.read_point_cloud(str(one)).points)
    assert a.shape == (64, 3)
    r = _run("pointcloud", "--model", run, "--category", "table", "--points", 64, "--out", one,
             "--seed", 3, "--device", "cpu", "--force")
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(np.asarray(o3d.io.read_point_cloud(str(one)).points), a)
    assert stats["std"] > 0


def test_batches_of_different_seeds_share_no_cloud(trained):
    from flowsuite.cli.pointcloud_cmds import _generate, _load

    _, run = trained
    model = _load(run, "cpu")
    a = _generate(model, "chair", 6, 20, 0, 1.0, batch=2)
    b = _generate(model, "chair", 6, 20, 1, 1.0, batch=2)
    # The first batch is the API's draw for that seed; later batches come from other seeds.
    torch.testing.assert_close(a[:2], model.denormalize(model.sample("chair", 2, 20, seed=0)))
    torch.testing.assert_close(b[:2], model.denormalize(model.sample("chair", 2, 20, seed=1)))
    assert not any(torch.equal(x, y) for x in a for y in b)
    assert not any(torch.equal(a[i], a[j]) for i in range(6) for j in range(i))
    torch.testing.assert_close(_generate(model, "chair", 6, 20, 0, 1.0, batch=2), a)


def test_samples_are_mapped_back_with_the_stored_stats(trained, tmp_path):
    _, run = trained
    moved = tmp_path / "moved.safetensors"
    meta = dict(read_metadata(run / "model.safetensors").user)
    meta["stats"] = json.dumps({"mean": [100.0, -50.0, 7.0], "std": 1e-3})
    save_model(load_model(run / "model.safetensors"), moved, metadata=meta)
    out = tmp_path / "m.ply"
    r = _run("pointcloud", "--model", moved, "--category", "chair", "--points", 50, "--out", out,
             "--temperature", "0.5", "--device", "cpu")
    assert r.exit_code == 0, r.output
    pts = np.asarray(o3d.io.read_point_cloud(str(out)).points)
    np.testing.assert_allclose(pts.mean(0), [100.0, -50.0, 7.0], atol=0.5)


def test_sample_errors_are_one_line(trained, tmp_path, error_line):
    _, run = trained
    model = run / "model.safetensors"
    out = tmp_path / "x.ply"
    assert "knows chair, table" in error_line(
        _run("pointcloud", "--model", model, "--category", "sofa", "--out", out))
    for bad in ("0", "-3"):
        assert "--points" in error_line(
            _run("pointcloud", "--model", model, "--category", "chair", "--points", bad,
                 "--out", out))
    out.write_bytes(b"mine")
    assert "--force" in error_line(
        _run("pointcloud", "--model", model, "--category", "chair", "--out", out))
    assert out.read_bytes() == b"mine"
    assert "does not exist" in error_line(
        _run("pointcloud", "--model", tmp_path / "none.safetensors", "--category", "chair",
             "--out", tmp_path / "y.ply"))
    other = save_model(_Other(), tmp_path / "other.safetensors")
    assert "pointflow" in error_line(
        _run("pointcloud", "--model", other, "--category", "chair", "--out", tmp_path / "y.ply"))
    assert not (tmp_path / "y.ply").exists()


def test_eval_prints_the_table_and_writes_json(trained, tmp_path):
    data, run = trained
    js = tmp_path / "e.json"
    r = _run("eval", "pointcloud", "--model", run / "model.safetensors", "--data", data,
             "--category", "chair", "--points", 64, "--json", js, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "MMD-CD" in r.output and "normalization" in r.output and "EMD method" in r.output
    res = json.loads(js.read_text())
    assert list(res) == ["chair"]
    assert res["chair"]["n_generated"] == res["chair"]["n_reference"] == 1
    assert 0 <= res["chair"]["COV-CD"] <= 1
    r = _run("eval", "pointcloud", "--model", run / "model.safetensors", "--data", data,
             "--category", "chair", "--points", 512, "--emd-method", "clusters", "--device",
             "cpu")
    assert r.exit_code == 0, r.output
    method = next(line for line in r.output.splitlines() if line.startswith("EMD method"))
    assert "clusters" in method and "measured error vs exact EMD" in method


def test_eval_draws_reports_the_mean_and_spread_of_independent_draws(trained, tmp_path,
                                                                      error_line):
    data, run = trained
    args = ["eval", "pointcloud", "--model", run, "--data", data, "--category", "chair",
            "--points", 64, "--count", 3, "--device", "cpu"]
    one, many = tmp_path / "one.json", tmp_path / "many.json"
    assert _run(*args, "--seed", 5, "--json", one).exit_code == 0
    r = _run(*args, "--seed", 5, "--draws", 3, "--json", many)
    assert r.exit_code == 0, r.output
    assert "means of 3 draws (seeds 5-7)" in r.output
    single, res = json.loads(one.read_text())["chair"], json.loads(many.read_text())["chair"]
    assert res["seeds"] == [5, 6, 7] and len(res["draws"]) == 3
    for m in ("MMD-CD", "COV-CD", "1-NNA-CD", "MMD-EMD", "1-NNA-EMD"):
        assert res["draws"][0][m] == pytest.approx(single[m])  # the first draw is --seed 5's
        vals = [d[m] for d in res["draws"]]
        assert res[m] == pytest.approx(np.mean(vals))
        assert res["sd"][m] == pytest.approx(np.std(vals, ddof=1))
    # Other seeds draw other shapes: the draws differ.
    assert len({d["MMD-CD"] for d in res["draws"]}) == 3
    assert "'--draws': 0 is not in the range" in error_line(_run(*args, "--draws", 0))


def _n_points(path: Path) -> int:
    return len(o3d.io.read_point_cloud(str(path)).points)


def test_from_resamples_a_given_cloud_with_a_mesh(trained, tmp_path):
    data, run = trained
    src = next((data / "chair" / "train").glob("*.npy"))
    out = tmp_path / "dense.ply"
    r = _run("pointcloud", "--model", run, "--from", src, "--points", 1000, "--out", out,
             "--mesh", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert _n_points(out) == 1000
    assert (tmp_path / "dense_mesh.ply").is_file()
    # The resampled cloud stays in the input's coordinates (the stored stats are undone).
    original = np.load(src)
    dense = np.asarray(o3d.io.read_point_cloud(str(out)).points)
    assert np.linalg.norm(dense.mean(0) - original.mean(0)) < 3 * original.std()


def test_interpolate_writes_the_path(trained, tmp_path):
    data, run = trained
    a = next((data / "chair" / "train").glob("*.npy"))
    b = next((data / "table" / "train").glob("*.npy"))
    out = tmp_path / "walk.ply"
    r = _run("pointcloud", "--model", run, "--interpolate", a, b, "--steps", 3, "--points", 64,
             "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert [_n_points(tmp_path / f"walk_{i}.ply") for i in range(3)] == [64, 64, 64]


def test_modes_and_inputs_are_checked(trained, tmp_path, error_line):
    data, run = trained
    assert "exactly one" in error_line(_run("pointcloud", "--model", run))
    assert "exactly one" in error_line(_run("pointcloud", "--model", run, "--category", "chair",
                                             "--from", tmp_path / "x.ply"))
    assert "does not exist" in error_line(_run("pointcloud", "--model", run, "--from",
                                                tmp_path / "missing.ply",
                                                "--out", tmp_path / "o.ply"))
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    error_line(_run("pointcloud", "--model", run, "--from", empty, "--out", tmp_path / "o.ply"))
    a = next((data / "chair" / "train").glob("*.npy"))
    assert "--steps" in error_line(_run("pointcloud", "--model", run, "--interpolate", a, a,
                                         "--steps", 1))


def _each_mode(run, src, tmp_path, points: int, *options) -> list[np.ndarray]:
    """The first cloud written by a sample, a resample and an interpolation with ``options``."""
    clouds = []
    for mode, out in ((["--category", "chair"], "s.ply"), (["--from", src], "r.ply"),
                      (["--interpolate", src, src, "--steps", 2], "i.ply")):
        r = _run("pointcloud", "--model", run, *mode, "--points", points, *options,
                 "--out", tmp_path / out, "--device", "cpu")
        assert r.exit_code == 0, r.output
        first = tmp_path / (out if "--steps" not in mode else out.replace(".", "_0."))
        clouds.append(np.asarray(o3d.io.read_point_cloud(str(first)).points))
    return clouds


def _refused(run, data, tmp_path, error_line, option: str, values) -> None:
    """Each bad value of ``option`` is one error line naming it, from `gen pointcloud` and
    `gen eval pointcloud`, and nothing is written."""
    for bad in values:
        assert option in error_line(
            _run("pointcloud", "--model", run, "--category", "chair", option, bad,
                 "--out", tmp_path / "bad.ply"))
        assert option in error_line(
            _run("eval", "pointcloud", "--model", run, "--data", data, option, bad))
    assert not (tmp_path / "bad.ply").exists()


def _eval_with(run, data, tmp_path, *options) -> tuple[str, dict]:
    """`gen eval pointcloud` of the chairs with ``options``: its output and its JSON's chairs."""
    js = tmp_path / "e.json"
    r = _run("eval", "pointcloud", "--model", run, "--data", data, "--category", "chair",
             "--points", 64, *options, "--json", js, "--device", "cpu")
    assert r.exit_code == 0, r.output
    return r.output, json.loads(js.read_text())["chair"]


def test_point_temperature_scales_the_points_noise(trained, tmp_path, error_line):
    """At point temperature 0 every point of a shape comes from the base's mode, so a sampled,
    resampled or interpolated cloud collapses to one point; a negative value is refused before
    anything is written."""
    data, run = trained
    src = next((data / "chair" / "train").glob("*.npy"))
    for pts in _each_mode(run, src, tmp_path, 32, "--point-temperature", 0):
        assert pts.shape == (32, 3) and np.ptp(pts, axis=0).max() < 1e-4
    r = _run("pointcloud", "--model", run, "--category", "chair", "--points", 32,
             "--point-temperature", 1, "--out", tmp_path / "one.ply", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert np.ptp(np.asarray(o3d.io.read_point_cloud(str(tmp_path / "one.ply")).points)) > 1e-2
    _refused(run, data, tmp_path, error_line, "--point-temperature", ("-1", "nan"))
    output, chairs = _eval_with(run, data, tmp_path, "--point-temperature", 0.5)
    assert "point temperature: 0.5" in output and chairs["point_temperature"] == 0.5


def test_drop_outliers_option(trained, tmp_path, error_line):
    """--drop-outliers keeps the asked number of points in every mode and is recorded by eval; a
    value that is not a positive number is one error line, before anything is written."""
    data, run = trained
    src = next((data / "chair" / "train").glob("*.npy"))
    for pts in _each_mode(run, src, tmp_path, 40, "--drop-outliers", 3):
        assert pts.shape == (40, 3)
    _refused(run, data, tmp_path, error_line, "--drop-outliers", ("0", "-2", "nan"))
    output, chairs = _eval_with(run, data, tmp_path, "--drop-outliers", 2.5)
    assert "beyond 2.5 standard deviations" in output and chairs["drop_outliers"] == 2.5


def test_precision_option_sets_the_trainers_autocast(trained, tmp_path):
    """--precision bf16 trains under bfloat16 autocast on the CPU (weights stay float32), fp32
    turns autocast off, auto leaves the trainer's choice (bf16 on CUDA only)."""
    data, run = trained
    base = ["train", "pointcloud", "--data", data, "--steps", 2, "--batch-size", 4,
            "--points-per-shape", 64, "--device", "cpu", "--init", run]
    for precision, expected in (("bf16", True), ("fp32", False), ("auto", None)):
        out = tmp_path / precision
        r = _run(*base, "--out", out, "--precision", precision)
        assert r.exit_code == 0, r.output
        assert json.loads((out / "config.json").read_text())["bf16"] is expected
    model = load_model(tmp_path / "bf16" / "model.safetensors")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    r = _run(*base, "--out", tmp_path / "bad", "--precision", "fp8")
    assert r.exit_code == 2 and "Traceback" not in r.output and "--precision" in r.output
    assert not (tmp_path / "bad").exists()
