"""Shipped models (issue #7): model cards, half-precision packing, `gen models`, loading the
shipped file when no --model is given, and the limits on what ships."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from flowsuite.cli.main import cli
from flowsuite.core.checkpoint import load_model, read_metadata, save_model
from flowsuite.core.errors import FlowsuiteError
from flowsuite.data import pretrained as pt
from flowsuite.musicflow.waveglow import WaveGlow
from flowsuite.pointflow.model import PointFlowModel

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
CATS = ["chair", "table"]
STATS = {"mean": [0.0, 0.1, 0.0], "std": 0.2}
TINY_PF = dict(latent_dim=8, encoder_width=16, point_steps=2, point_hidden=[16], latent_steps=1,
               latent_hidden=[16], category_dim=4)


def _pack_module():
    spec = importlib.util.spec_from_file_location("flowsuite_recipes_pack",
                                                  ROOT / "recipes" / "pack.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pack = _pack_module()


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _card(model: str, parameters: int, **changes: str | None) -> str:
    fields = {"model": model, "parameters": f"{parameters:,}", "data": "tiny test data",
              "command": "gen train pointcloud --preset tiny", "hardware": "2-core CPU",
              "wall_time": "3 s", "steps": "4", "metric.1-NNA-CD": "0.93 (test split)"}
    fields.update(changes)
    head = "\n".join(f"{k}: {v}" for k, v in fields.items() if v is not None)
    return f"---\n# a comment\n{head}\n---\n# {model}\n\nFree text: keys: not parsed here.\n"


def _data_bytes(path: Path) -> int:
    """The bytes of tensor data in a safetensors file (its size less the JSON header)."""
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
    return path.stat().st_size - 8 - header


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def pf_run(tmp_path_factory) -> tuple[Path, PointFlowModel]:
    """A tiny point-cloud model (ActNorm initialised) saved as a run with categories and stats."""
    torch.manual_seed(0)
    model = PointFlowModel(num_categories=2, **TINY_PF)
    model({"points": torch.randn(4, 64, 3), "category": torch.tensor([0, 1, 0, 1])})
    run = tmp_path_factory.mktemp("pf") / "run"
    run.mkdir()
    save_model(model.eval(), run / "model.safetensors",
               metadata={"categories": json.dumps(CATS), "stats": json.dumps(STATS)})
    return run, model


@pytest.fixture(scope="module")
def wg_run(tmp_path_factory) -> tuple[Path, WaveGlow]:
    torch.manual_seed(0)
    model = WaveGlow.from_preset("compact", n_flows=2, wn_layers=2, wn_channels=16).eval()
    path = tmp_path_factory.mktemp("wg") / "model.safetensors"
    save_model(model, path)
    return path, model


@pytest.fixture
def models_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    monkeypatch.setattr(pt, "MODELS_DIR", d)
    return d


def _pack_pointflow(pf_run, tmp_path: Path, **kw) -> Path:
    run, model = pf_run
    card = tmp_path / "pointflow.md"
    card.write_text(_card("pointflow", _count(model)))
    return pack.pack(run, "pointflow", card, **kw)


# ---- the files that actually ship -------------------------------------------------------------

def test_every_shipped_file_is_small_carded_and_loads():
    """Holds for whatever is in data/models now: nothing (before the models land) or the models."""
    files = sorted(p for p in pt.MODELS_DIR.iterdir() if p.is_file() and p.name != ".gitkeep")
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert {p.name for p in files} == ({p.name for p in weights}
                                       | {p.with_suffix(".md").name for p in weights}), \
        "data/models holds only <name>.safetensors files and their <name>.md cards"
    assert sum(p.stat().st_size for p in files) < pt.MAX_TOTAL_BYTES
    for p in weights:
        assert p.stem in pt.SHIPPED
        assert p.stat().st_size < pt.MAX_FILE_BYTES, p
        card = pt.read_card(p.with_suffix(".md")).check()
        model = load_model(p)
        assert read_metadata(p).model == card.fields["model"]
        assert card.parameter_count() == _count(model)
    assert pt.shipped_names() == [n for n in pt.SHIPPED if (pt.MODELS_DIR / f"{n}.safetensors")
                                  in weights]


def test_package_data_ships_the_models_folder():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"flowsuite.data" = ["models/*.safetensors", "models/*.md"]' in text


# ---- model cards ------------------------------------------------------------------------------

def test_card_round_trip_and_required_fields(tmp_path):
    card = pt.parse_card(_card("pointflow", 1234567))
    assert card.check() is card
    assert card.fields["wall_time"] == "3 s" and card.parameter_count() == 1234567
    assert card.metrics == {"1-NNA-CD": "0.93 (test split)"}
    assert card.body.startswith("# pointflow") and "keys: not parsed" in card.body
    assert "keys" not in card.fields  # the text after the front matter is not parsed
    incomplete = pt.parse_card(_card("pointflow", 5, hardware=None, **{"metric.1-NNA-CD": None}))
    assert incomplete.missing() == ["hardware", "metric.*"]
    with pytest.raises(FlowsuiteError, match=r"lacks the field\(s\) hardware, metric\.\*"):
        incomplete.check()
    template = pt.read_card(ROOT / "recipes" / "card-template.md")
    assert template.missing() == [] and set(pt.REQUIRED_FIELDS) <= set(template.fields)


@pytest.mark.parametrize("text, message", [
    ("model: x\n", "must open with a front-matter block"),
    ("---\nmodel: x\n", "no closing '---'"),
    ("---\njust words\n---\n", "line 2: expected 'key: value'"),
    ("---\nsteps: 1\nsteps: 2\n---\n", "appears twice"),
])
def test_malformed_cards_are_one_line_errors(text, message):
    with pytest.raises(FlowsuiteError, match=message):
        pt.parse_card(text)


# ---- half precision ---------------------------------------------------------------------------

def test_half_precision_pointflow_keeps_its_likelihood(pf_run, tmp_path):
    run, model = pf_run
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    save_model(model, full)
    save_model(model, half, dtype=torch.float16)
    # Float parameters halve; the bool ActNorm flags and the header do not.
    assert _data_bytes(half) < 0.51 * _data_bytes(full)
    loaded = load_model(half, expected="pointflow")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(3, 128, 3, generator=torch.Generator().manual_seed(1))
    ref = model.conditional_log_prob(x)
    got = loaded.conditional_log_prob(x)
    # float16 keeps 11 significant bits: stated tolerance 1e-3 of |log p| (nats).
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)
    a = model.sample(0, 2, 64, seed=3)
    b = loaded.sample(0, 2, 64, seed=3)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-2)


def test_half_precision_waveglow_keeps_its_audio(wg_run, tmp_path):
    path, model = wg_run
    half = save_model(model, tmp_path / "half.safetensors", dtype=torch.bfloat16)
    assert _data_bytes(half) == _data_bytes(path) // 2
    loaded = load_model(half, expected="waveglow")
    assert read_metadata(half).dtype == "bfloat16"
    audio = torch.randn(1, 4096, generator=torch.Generator().manual_seed(2)) * 0.1
    with torch.no_grad():
        ref, got = model.log_prob(audio), loaded.log_prob(audio)
        mel = model.mel(audio[0])
        a, b = model.infer(mel, 0.6, seed=0), loaded.infer(mel, 0.6, seed=0)
    # bfloat16 keeps 8 significant bits: stated tolerance 1% of |log p|, 5% of the audio's RMS.
    torch.testing.assert_close(got, ref, rtol=1e-2, atol=0)
    assert (a - b).pow(2).mean().sqrt() < 0.05 * a.pow(2).mean().sqrt()


def test_half_precision_refuses_values_out_of_range(tmp_path):
    m = torch.nn.Linear(2, 2)
    with torch.no_grad():
        m.weight[0, 0] = 1e6
    with pytest.raises(FlowsuiteError, match="beyond the range of float16.*bfloat16"):
        save_model(m, tmp_path / "x.safetensors", dtype=torch.float16)
    assert not (tmp_path / "x.safetensors").exists()
    save_model(m, tmp_path / "x.safetensors", dtype=torch.bfloat16)  # its range is float32's


# ---- packing ----------------------------------------------------------------------------------

def test_pack_writes_half_precision_file_and_card(pf_run, tmp_path, models_dir, capsys):
    target = _pack_pointflow(pf_run, tmp_path)
    assert target == models_dir / "pointflow.safetensors"
    info = read_metadata(target)
    assert info.dtype == "float16" and json.loads(info.user["categories"]) == CATS
    assert (models_dir / "pointflow.md").read_text() == (tmp_path / "pointflow.md").read_text()
    assert "largest relative weight change" in capsys.readouterr().out
    assert sorted(p.name for p in models_dir.iterdir()) == ["pointflow.md",
                                                            "pointflow.safetensors"]
    with pytest.raises(FlowsuiteError, match="--force"):
        _pack_pointflow(pf_run, tmp_path)
    _pack_pointflow(pf_run, tmp_path, force=True, dtype="float32")
    assert read_metadata(target).dtype is None


def test_pack_refuses_oversized_file_and_set(pf_run, tmp_path, models_dir, monkeypatch):
    size = save_model(pf_run[1], tmp_path / "probe.safetensors", dtype=torch.float16
                      ).stat().st_size
    monkeypatch.setattr(pt, "MAX_FILE_BYTES", size - 1)
    with pytest.raises(FlowsuiteError, match=r"over the 0 MB limit of one shipped file"):
        _pack_pointflow(pf_run, tmp_path)
    assert list(models_dir.iterdir()) == []
    monkeypatch.setattr(pt, "MAX_FILE_BYTES", size + 10_000)  # room for the packed metadata
    monkeypatch.setattr(pt, "MAX_TOTAL_BYTES", 2 * size)
    (models_dir / "waveglow.safetensors").write_bytes(b"\0" * size)
    with pytest.raises(FlowsuiteError, match="limit of the set"):
        _pack_pointflow(pf_run, tmp_path)
    assert sorted(p.name for p in models_dir.iterdir()) == ["waveglow.safetensors"]


def test_pack_checks_the_card_against_the_model(pf_run, tmp_path, models_dir, capsys):
    run, model = pf_run
    card = tmp_path / "card.md"
    card.write_text(_card("pointflow", _count(model) + 1))
    with pytest.raises(FlowsuiteError, match=f"write parameters: {_count(model)}"):
        pack.pack(run, "pointflow", card)
    card.write_text(_card("waveglow", _count(model)))
    with pytest.raises(FlowsuiteError, match="says model: waveglow.*write model: pointflow"):
        pack.pack(run, "pointflow", card)
    with pytest.raises(FlowsuiteError, match="holds a pointflow model; the shipped waveglow must "
                                             "be a waveglow model"):
        pack.pack(run, "waveglow", card)
    card.write_text(_card("pointflow", _count(model), steps=""))
    assert pack.main([str(run), "--name", "pointflow", "--card", str(card)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lacks the field(s) steps" in err
    assert pack.main([str(run), "--name", "pointcloud", "--card", str(card)]) == 2
    assert "--name must be one of pointflow, waveglow, mel-prior" in capsys.readouterr().err
    assert list(models_dir.iterdir()) == []


def test_pack_set_writes_settings_into_the_config(tmp_path, models_dir, capsys):
    """`--set KEY=JSON`: a mel prior's per-style temperatures measured after training go into
    the packed file's config, weights unchanged; an unknown key, bad JSON or a value the model
    refuses is one line and exit status 2, and nothing is written."""
    from flowsuite.musicflow.prior import MelPrior

    torch.manual_seed(0)
    prior = MelPrior.from_preset("tiny", styles=["chorale", "folk"], mixture=2).eval()
    src = tmp_path / "prior.safetensors"
    save_model(prior, src)
    card = tmp_path / "mel-prior.md"
    card.write_text(_card("mel-prior", _count(prior)))
    base = [str(src), "--name", "mel-prior", "--card", str(card), "--dtype", "float32"]
    for bad, message in ((["--set", "temperatures"], "takes KEY=JSON"),
                         (["--set", "temperatures={chorale: 1}"], "is not JSON"),
                         (["--set", "tempo=1"], "tempo not in the mel-prior model's config"),
                         (["--set", 'temperatures={"quartet": 1.0}'],
                          "refuses.*does not know: quartet")):
        assert pack.main(base + bad) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and re.search(message, err), err
    assert list(models_dir.iterdir()) == []
    assert pack.main(base + ["--set", 'temperatures={"chorale": 1.0}']) == 0
    packed = load_model(models_dir / "mel-prior.safetensors", expected="mel-prior")
    assert packed.temperatures == {"chorale": 1.0}
    for key, t in prior.state_dict().items():
        assert torch.equal(packed.state_dict()[key], t), key


# ---- gen models -------------------------------------------------------------------------------

def test_gen_models_without_models_says_how_to_train(models_dir, error_line):
    r = _run("models")
    assert r.exit_code == 0, r.output
    assert "no trained models are shipped" in r.output
    assert "gen train pointcloud" in r.output and "gen train vocoder" in r.output
    assert "error: this installation ships no trained waveglow model" in \
        error_line(_run("models", "show", "waveglow"))
    assert "no shipped model is called 'nope'" in error_line(_run("models", "show", "nope"))


def test_gen_models_lists_and_shows_cards(pf_run, tmp_path, models_dir):
    _pack_pointflow(pf_run, tmp_path)
    r = _run("models")
    assert r.exit_code == 0, r.output
    size_mb = (models_dir / "pointflow.safetensors").stat().st_size / 1e6
    assert r.output.startswith("pointflow  point clouds")
    assert f"file {size_mb:.1f} MB (float16), parameters {_count(pf_run[1]):,}" in r.output
    assert "wall_time: 3 s" in r.output and "metric 1-NNA-CD: 0.93 (test split)" in r.output
    assert "waveglow   not shipped; train one with `gen data music" in r.output
    assert "1 model(s)" in r.output
    r = _run("models", "show", "pointflow")
    assert r.exit_code == 0 and r.output == (models_dir / "pointflow.md").read_text()


# ---- the shipped model is the default ---------------------------------------------------------

def test_from_pretrained_shipped_and_run(pf_run, wg_run, tmp_path, models_dir):
    with pytest.raises(FlowsuiteError, match="ships no trained pointflow model"):
        PointFlowModel.from_pretrained()
    _pack_pointflow(pf_run, tmp_path)
    model = PointFlowModel.from_pretrained()
    assert not model.training and model.categories == CATS and model.stats == STATS
    run_model = PointFlowModel.from_pretrained(pf_run[0])
    assert run_model.categories == CATS and run_model.metadata["stats"] == json.dumps(STATS)
    with pytest.raises(FlowsuiteError, match="is a pointflow checkpoint; this command needs a "
                                             "waveglow"):
        WaveGlow.from_pretrained(pf_run[0])
    wg = WaveGlow.from_pretrained(wg_run[0])
    assert not wg.training and wg.metadata == {}
    audio = torch.randn(1, 2048, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        assert torch.equal(wg.log_prob(audio), wg_run[1].log_prob(audio))


def test_gen_pointcloud_and_eval_use_the_shipped_model(pf_run, tmp_path, models_dir, error_line):
    out = tmp_path / "c.ply"
    line = error_line(_run("pointcloud", "--category", "chair", "--out", out, "--points", 32))
    assert "ships no trained pointflow model" in line and "gen train pointcloud" in line
    line = error_line(_run("eval", "pointcloud", "--data", tmp_path))
    assert "ships no trained pointflow model" in line
    _pack_pointflow(pf_run, tmp_path)
    r = _run("pointcloud", "--category", "chair", "--out", out, "--points", 32, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert out.is_file()
    line = error_line(_run("pointcloud", "--category", "lamp", "--out", tmp_path / "l.ply"))
    assert "knows chair, table" in line


def test_gen_vocode_uses_the_shipped_model(wg_run, tmp_path, models_dir, error_line):
    wav = tmp_path / "in.wav"
    sf.write(wav, (0.2 * np.sin(np.arange(4096) / 10)).astype(np.float32), 22050)
    line = error_line(_run("vocode", wav, "--out", tmp_path / "o.wav"))
    assert "ships no trained waveglow model" in line and "gen train vocoder" in line
    line = error_line(_run("eval", "vocoder", "--data", tmp_path))
    assert "ships no trained waveglow model" in line
    save_model(wg_run[1], models_dir / "waveglow.safetensors", dtype=torch.float16)
    r = _run("vocode", wav, "--out", tmp_path / "o.wav", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert sf.info(str(tmp_path / "o.wav")).frames == 4096
