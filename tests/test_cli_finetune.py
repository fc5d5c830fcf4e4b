"""``gen finetune pointcloud`` and ``gen finetune music --part vocoder`` on tiny models."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from flowsuite.cli.main import cli
from flowsuite.core.checkpoint import load_model, read_metadata

torch.set_num_threads(1)

TINY_PC = ["--points-per-shape", 128, "--batch-size", 4, "--device", "cpu"]
TINY_VOC = ["--batch-size", 2, "--segment", 2048, "--device", "cpu"]


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(autouse=True)
def nothing_shipped(tmp_path, monkeypatch):
    """The default --from is a shipped model; these tests must not depend on one being there."""
    monkeypatch.setattr("flowsuite.data.pretrained.MODELS_DIR", tmp_path / "no-models")


# ---- point clouds -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pointflow(tmp_path_factory) -> dict[str, Path]:
    """A tiny model trained on chair and table, and a user's folder in other units (x1000,
    shifted) with a known category (chair) and a new one (mug, made of lamps)."""
    root = tmp_path_factory.mktemp("ft")
    shapes = root / "shapes"
    r = _run("data", "shapes", "--out", shapes, "--categories", "chair,table,lamp",
             "--per-category", 10, "--points", 512, "--workers", 1)
    assert r.exit_code == 0, r.output
    base = root / "base"
    r = _run("train", "pointcloud", "--data", shapes, "--categories", "chair,table", "--out",
             base, "--steps", 4, "--preset", "tiny", *TINY_PC)
    assert r.exit_code == 0, r.output
    mine = root / "mine"
    for src, dst in (("chair", "chair"), ("lamp", "mug")):
        (mine / dst).mkdir(parents=True)
        for i, f in enumerate(sorted((shapes / src / "train").glob("*.npy"))[:5]):
            np.save(mine / dst / f"{dst}{i}.npy", np.load(f) * 1000.0 + 5.0)
    run = root / "run"
    r = _run("finetune", "pointcloud", "--from", base, "--data", mine, "--out", run,
             "--steps", 4, *TINY_PC)
    assert r.exit_code == 0, r.output
    assert "refining chair; new: mug; replaying 3 generated shapes of table" in r.output
    return {"shapes": shapes, "base": base, "mine": mine, "run": run, "root": root}


def test_new_category_is_added_and_the_original_stats_are_kept(pointflow):
    base = read_metadata(pointflow["base"] / "model.safetensors")
    info = read_metadata(pointflow["run"] / "model.safetensors")
    assert info.model == "pointflow"
    assert json.loads(info.user["categories"]) == ["chair", "table", "mug"]
    assert info.config["num_categories"] == 3
    assert json.loads(info.user["stats"]) == json.loads(base.user["stats"])
    # --units match: the user's set (x1000) was brought to the model's frame by its own
    # statistics, about a thousand times the model's.
    record = json.loads(info.user["finetune"])
    assert record["new_categories"] == ["mug"] and record["units"] == "match"
    ratio = record["data_stats"]["std"] / json.loads(base.user["stats"])["std"]
    assert 300 < ratio < 3000


def test_fine_tuning_starts_from_the_model_and_replays_absent_categories(pointflow, tmp_path):
    old = load_model(pointflow["base"] / "model.safetensors").category_embedding.weight
    # By default table, absent from the user's data, is rehearsed with generated shapes.
    replayed = load_model(pointflow["run"] / "model.safetensors").category_embedding.weight
    assert not torch.equal(replayed[1], old[1])
    r = _run("finetune", "pointcloud", "--from", pointflow["base"], "--data", pointflow["mine"],
             "--out", tmp_path / "run", "--replay", "none", "--steps", 2, *TINY_PC)
    assert r.exit_code == 0, r.output
    assert "replaying" not in r.output
    # Without replay table's embedding row gets no gradient: it stays as --from had it.
    new = load_model(tmp_path / "run" / "model.safetensors").category_embedding.weight
    torch.testing.assert_close(new[1], old[1], rtol=0, atol=0)
    assert not torch.equal(new[2], old.mean(0))  # the new category moved from its start


@pytest.mark.parametrize("category", ["mug", "chair", "table"])
def test_every_category_samples_after_fine_tuning(pointflow, tmp_path, category):
    out = tmp_path / f"{category}.ply"
    r = _run("pointcloud", "--model", pointflow["run"], "--category", category, "--points", 64,
             "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    pts = np.asarray(o3d.io.read_point_cloud(str(out)).points)
    assert pts.shape == (64, 3) and np.isfinite(pts).all()


def test_resume_continues_the_fine_tuning_run(pointflow, tmp_path):
    run = Path(shutil.copytree(pointflow["run"], tmp_path / "run"))
    args = ["finetune", "pointcloud", "--from", pointflow["base"], "--data", pointflow["mine"],
            "--out", run, *TINY_PC]
    assert "--resume" in _error_line(_run(*args, "--steps", 4))
    r = _run(*args, "--steps", 8, "--resume")
    assert r.exit_code == 0, r.output
    info = read_metadata(run / "model.safetensors")
    assert info.user["step"] == "8"
    assert json.loads(info.user["categories"]) == ["chair", "table", "mug"]
    # Other data (one more category) does not fit the run.
    shutil.copytree(pointflow["mine"], tmp_path / "more")
    shutil.copytree(pointflow["mine"] / "mug", tmp_path / "more" / "cup")
    r = _run("finetune", "pointcloud", "--from", pointflow["base"], "--data", tmp_path / "more",
             "--out", run, "--steps", 8, "--resume", *TINY_PC)
    assert "cup" in _error_line(r)


def test_replay_mixes_in_the_original_data_of_absent_categories(pointflow, tmp_path):
    r = _run("finetune", "pointcloud", "--from", pointflow["base"], "--data", pointflow["mine"],
             "--out", tmp_path / "run", "--replay", pointflow["shapes"], "--steps", 2, *TINY_PC)
    assert r.exit_code == 0, r.output
    assert "replaying 3 shapes of table" in r.output  # as many as the largest user category


def test_units_model_warns_when_the_data_is_in_other_units(pointflow, tmp_path):
    r = _run("finetune", "pointcloud", "--from", pointflow["base"], "--data", pointflow["mine"],
             "--out", tmp_path / "run", "--units", "model", "--steps", 1, *TINY_PC)
    assert r.exit_code == 0, r.output
    assert "--units match" in r.output


def test_point_cloud_bad_inputs_are_one_line_errors(pointflow, tmp_path):
    mine, base = pointflow["mine"], pointflow["base"]
    ft = ["finetune", "pointcloud", "--steps", 1, *TINY_PC]
    assert "--from" in _error_line(_run(*ft, "--data", mine, "--out", tmp_path / "a"))
    assert "does not exist" in _error_line(_run(*ft, "--from", tmp_path / "nope", "--data", mine,
                                                "--out", tmp_path / "a"))
    voc = tmp_path / "voc"
    r = _run("train", "vocoder", "--data", _sines(tmp_path / "audio"), "--out", voc, "--preset",
             "tiny", "--steps", 1, *TINY_VOC)
    assert r.exit_code == 0, r.output
    assert "waveglow" in _error_line(_run(*ft, "--from", voc, "--data", mine,
                                          "--out", tmp_path / "a"))
    (tmp_path / "empty").mkdir()
    assert "no shape files" in _error_line(_run(*ft, "--from", base, "--data", tmp_path / "empty",
                                                "--out", tmp_path / "a"))
    assert "--resume" in _error_line(_run(*ft, "--from", base, "--data", mine,
                                          "--out", pointflow["run"]))
    assert "fine-tuning run" in _error_line(_run(*ft, "--from", base, "--data", mine,
                                                 "--out", base, "--resume"))
    assert "--replay" in _error_line(_run(*ft, "--from", base, "--data", mine, "--out",
                                          tmp_path / "a", "--replay", tmp_path / "nope"))
    assert not (tmp_path / "a").exists()


# ---- the vocoder ------------------------------------------------------------------------------

def _sines(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(11025) / 22050
    for i, f in enumerate((220.0, 330.0, 440.0)):
        sf.write(folder / f"s{i}.wav", (0.3 * np.sin(2 * math.pi * f * t)).astype(np.float32),
                 22050)
    return folder


@pytest.fixture(scope="module")
def vocoder(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ftvoc")
    data = _sines(root / "audio")
    r = _run("train", "vocoder", "--data", data, "--out", root / "base", "--preset", "tiny",
             "--steps", 2, *TINY_VOC)
    assert r.exit_code == 0, r.output
    return data, root / "base"


def test_vocoder_fine_tuning_starts_from_the_model_and_resumes(vocoder, tmp_path):
    data, base = vocoder
    out = tmp_path / "ft"
    args = ["finetune", "music", "--part", "vocoder", "--from", base, "--data", data, "--out", out,
            "--lr", 1e-12, *TINY_VOC]
    r = _run(*args, "--steps", 1)
    assert r.exit_code == 0, r.output
    # A vanishing learning rate leaves the weights where --from had them.
    before = load_model(base / "model.safetensors").state_dict()
    after = load_model(out / "model.safetensors").state_dict()
    for k, v in before.items():
        torch.testing.assert_close(after[k], v, atol=1e-6, rtol=0)
    assert "resume" in _error_line(_run(*args, "--steps", 1))
    r = _run(*args, "--steps", 2, "--resume")
    assert r.exit_code == 0, r.output
    assert read_metadata(out / "model.safetensors").user["step"] == "2"
    last = json.loads((out / "metrics.jsonl").read_text().strip().splitlines()[-1])
    assert last["step"] == 2


def test_vocoder_time_limit_checkpoints_and_resume_finishes(vocoder, tmp_path, step_clock):
    data, base = vocoder
    out = tmp_path / "ft"
    args = ["finetune", "music", "--part", "vocoder", "--from", base, "--data", data, "--out", out,
            "--steps", 4, *TINY_VOC]
    r = _run(*args, "--time-limit", "2s")
    assert r.exit_code == 3 and "Traceback" not in r.output, r.output
    assert "time limit reached: stopped at step 2" in r.output
    assert not (out / "model.safetensors").exists()
    r = _run(*args, "--resume")
    assert r.exit_code == 0, r.output
    assert read_metadata(out / "model.safetensors").user["step"] == "4"


def test_vocoder_bad_inputs_are_one_line_errors(vocoder, pointflow, tmp_path):
    data, _ = vocoder
    ft = ["finetune", "music", "--part", "vocoder", "--data", data, "--out", tmp_path / "a",
          "--steps", 1, *TINY_VOC]
    assert "pointflow" in _error_line(_run(*ft, "--from", pointflow["base"]))
    assert "--from" in _error_line(_run(*ft))
    r = _run("finetune", "music", "--part", "drums", "--data", data, "--out", tmp_path / "a")
    assert r.exit_code == 2 and "'drums'" in r.output
    assert not (tmp_path / "a").exists()
