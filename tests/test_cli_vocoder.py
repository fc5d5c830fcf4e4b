"""gen train vocoder, gen vocode, gen eval vocoder, and the vocoder metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from flowsuite.cli.main import cli
from flowsuite.musicflow.metrics import (
    MCD_CONSTANT,
    dct_matrix,
    log_mel_l1,
    mel_cepstral_distortion,
    multi_resolution_stft,
)

SR = 22050


def _sine(freq: float, seconds: float, sr: int = SR, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def _invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A folder of sines and a tiny vocoder trained on it for 3 steps."""
    root = tmp_path_factory.mktemp("voc")
    data = root / "data"
    data.mkdir()
    for i, f in enumerate((220.0, 330.0, 440.0)):
        sf.write(data / f"s{i}.wav", _sine(f, 0.5), SR)
    out = root / "run"
    r = _invoke("train", "vocoder", "--data", data, "--out", out, "--preset", "tiny",
                "--steps", 3, "--batch-size", 2, "--segment", 2048, "--device", "cpu")
    assert r.exit_code == 0, r.output
    return root, data, out / "model.safetensors"


# ---------------------------------------------------------------------------------- metrics


def test_metrics_are_zero_for_identical_signals():
    x = torch.from_numpy(_sine(440, 0.2))
    m = multi_resolution_stft(x, x)
    assert m["spectral_convergence"] == pytest.approx(0, abs=1e-6)
    assert m["log_mag_l1"] == pytest.approx(0, abs=1e-6)
    mel = torch.randn(80, 20)
    assert log_mel_l1(mel, mel) == 0
    assert mel_cepstral_distortion(mel, mel) == pytest.approx(0, abs=1e-6)


def test_metrics_grow_for_a_louder_or_shifted_signal():
    x = torch.from_numpy(_sine(440, 0.2))
    louder = multi_resolution_stft(x, 2 * x)
    # Twice as loud: |2S - S| / |S| = 1 and |log 2S - log S| = log 2 wherever S is above eps.
    assert louder["spectral_convergence"] == pytest.approx(1.0, rel=1e-3)
    assert 0 < louder["log_mag_l1"] <= math.log(2) + 1e-4
    assert multi_resolution_stft(x, torch.from_numpy(_sine(660, 0.2)))["mr_stft"] > 1
    mel = torch.randn(80, 20)
    assert log_mel_l1(mel, mel + 0.5) == pytest.approx(0.5)
    # A constant offset in log-mel lives in c0 only, which MCD excludes.
    assert mel_cepstral_distortion(mel, mel + 0.5) == pytest.approx(0, abs=1e-4)
    shifted = torch.roll(mel, 3, dims=0)
    assert mel_cepstral_distortion(mel, shifted) > 1


def test_mcd_matches_the_formula_on_one_cepstral_coefficient():
    d = dct_matrix(80)
    assert torch.allclose(d @ d.T, torch.eye(80), atol=1e-5)
    c = torch.zeros(80, 4)
    c[1] = 0.1
    mel = d.T @ c  # log-mel whose cepstrum is 0.1 at c1 only
    assert mel_cepstral_distortion(torch.zeros(80, 4), mel) == pytest.approx(
        MCD_CONSTANT * 0.1, rel=1e-4)


# ---------------------------------------------------------------------------- train, vocode


def test_train_writes_a_model_and_refuses_a_second_run(run):
    root, data, model = run
    assert model.is_file()
    r = _invoke("train", "vocoder", "--data", data, "--out", model.parent, "--preset", "tiny",
                "--steps", 3, "--batch-size", 2, "--segment", 2048, "--device", "cpu")
    assert r.exit_code == 2 and r.output.startswith("error:")
    assert "Traceback" not in r.output


def test_vocode_writes_a_22050_hz_wav_and_needs_force_to_replace(run, tmp_path):
    root, data, model = run
    src = tmp_path / "in.flac"
    sf.write(src, np.stack([_sine(300, 0.3, 44100)] * 2, axis=1), 44100)
    out = tmp_path / "out.wav"
    r = _invoke("vocode", src, "--out", out, "--model", model, "--device", "cpu",
                "--chunk-frames", 8)
    assert r.exit_code == 0, r.output
    y, rate = sf.read(out)
    assert rate == SR and y.ndim == 1 and len(y) == (int(0.3 * SR) // 256) * 256
    assert np.isfinite(y).all()
    before = out.read_bytes()
    r = _invoke("vocode", src, "--out", out, "--model", model, "--device", "cpu")
    assert r.exit_code == 2 and "--force" in r.output and out.read_bytes() == before
    r = _invoke("vocode", src, "--out", out, "--model", model, "--device", "cpu", "--force",
                "--sigma", 0)
    assert r.exit_code == 0, r.output
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _bad_inputs(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), SR)
    short = tmp_path / "short.wav"
    sf.write(short, _sine(440, 0.01), SR)
    nan = tmp_path / "nan.wav"
    x = _sine(440, 0.2)
    x[100] = np.nan
    sf.write(nan, x, SR, subtype="FLOAT")
    return {"cannot read": text, "no samples": empty, "too short": short, "NaN": nan,
            "does not exist": tmp_path / "missing.wav"}


def test_vocode_bad_inputs_are_one_line_errors(run, tmp_path):
    root, data, model = run
    good = data / "s0.wav"
    out = tmp_path / "o.wav"
    cases = {k: (p, model) for k, p in _bad_inputs(tmp_path).items()}
    cases["model"] = (good, tmp_path / "nope.safetensors")
    from flowsuite.core.checkpoint import save_model
    from flowsuite.core.models import DensityModel

    other = tmp_path / "other.safetensors"
    save_model(DensityModel("realnvp", features=2, steps=1, hidden=[4]), other)
    cases["waveglow"] = (good, other)
    for words, (src, m) in cases.items():
        r = _invoke("vocode", src, "--out", out, "--model", m, "--device", "cpu")
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2, (words, r.output)
        assert len(lines) == 1 and lines[0].startswith("error:"), (words, r.output)
        assert words in lines[0], (words, lines[0])
    assert not out.exists()


# ------------------------------------------------------------------------------------ eval


def test_eval_reports_waveglow_and_griffin_lim(run, tmp_path):
    root, data, model = run
    js = tmp_path / "m.json"
    r = _invoke("eval", "vocoder", "--model", model, "--data", data, "--json", js,
                "--clips", 2, "--segment", 2048, "--gl-iters", 4, "--device", "cpu")
    assert r.exit_code == 0, r.output
    res = json.loads(js.read_text())
    assert res["clips"] == 2
    for sys in ("waveglow", "griffin_lim"):
        for k in ("spectral_convergence", "log_mag_l1", "mr_stft", "log_mel_l1", "mcd_db"):
            v = res["metrics"][sys][k]
            assert math.isfinite(v) and v > 0
    r = _invoke("eval", "vocoder", "--model", model, "--data", data, "--json", js,
                "--device", "cpu")
    assert r.exit_code == 2 and "--force" in r.output


def test_resume_continues_a_run_to_more_steps(run, tmp_path):
    root, data, model = run
    out = tmp_path / "run"
    args = ["train", "vocoder", "--data", data, "--out", out, "--preset", "tiny",
            "--batch-size", 2, "--segment", 2048, "--device", "cpu"]
    assert _invoke(*args, "--steps", 2).exit_code == 0
    r = _invoke(*args, "--steps", 3, "--resume")
    assert r.exit_code == 0, r.output
    assert (out / "model.safetensors").is_file()
    last = (out / "metrics.jsonl").read_text().strip().splitlines()[-1]
    assert json.loads(last)["step"] == 3


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_vocode_and_eval_write_spectrogram_previews(run, tmp_path):
    root, data, model = run
    out, png = tmp_path / "o.wav", tmp_path / "o.png"
    r = _invoke("vocode", data / "s0.wav", "--out", out, "--model", model, "--device", "cpu",
                "--preview", png)
    assert r.exit_code == 0, r.output
    w2, h2 = _png_size(png)
    cmp_png = tmp_path / "cmp.png"
    r = _invoke("eval", "vocoder", "--model", model, "--data", data, "--clips", 1,
                "--segment", 2048, "--gl-iters", 2, "--device", "cpu", "--preview", cmp_png)
    assert r.exit_code == 0, r.output
    w3, h3 = _png_size(cmp_png)
    assert w3 == w2 and h3 > h2  # three panels (reference, WaveGlow, Griffin-Lim) against two
    # an existing preview is kept unless --force, and nothing is half-written
    before = png.read_bytes()
    r = _invoke("vocode", data / "s0.wav", "--out", tmp_path / "o2.wav", "--model", model,
                "--device", "cpu", "--preview", png)
    assert r.exit_code == 2 and "--force" in r.output and png.read_bytes() == before
    assert not (tmp_path / "o2.wav").exists()
