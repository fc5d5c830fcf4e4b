"""Checkpoints: rebuilt from the file alone, strict loading, one-line errors for bad files."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from flowsuite.core.checkpoint import (
    Configurable,
    build_model,
    load_model,
    load_training_state,
    load_weights,
    read_metadata,
    register_model,
    registered_models,
    save_model,
    save_training_state,
)
from flowsuite.core.errors import CheckpointError, FlowsuiteError


@register_model("test-mlp")
class TinyMLP(Configurable, nn.Module):
    def __init__(self, dim: int, hidden: int = 8, *, sizes: tuple[int, ...] = (1, 2), tied=False):
        super().__init__()
        self.inp = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, hidden)
        if tied:
            self.out.weight = self.inp.weight if dim == hidden else self.out.weight
        self.register_buffer("count", torch.tensor(3, dtype=torch.int64))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.inp(x)))


@register_model("test-other")
class Other(Configurable, nn.Module):
    def __init__(self, width: int = 4, **extra):
        super().__init__()
        self.w = nn.Parameter(torch.randn(width))


class Unregistered(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_configurable_records_arguments_with_defaults():
    m = TinyMLP(3, sizes=(4, 5))
    assert m.config == {"dim": 3, "hidden": 8, "sizes": [4, 5], "tied": False}
    o = Other(width=2, colour="red")
    assert o.config == {"width": 2, "colour": "red"}
    assert "test-mlp" in registered_models()
    rebuilt = build_model("test-mlp", m.config)
    assert isinstance(rebuilt, TinyMLP) and rebuilt.config == m.config


def test_subclass_records_its_own_arguments():
    class Wider(TinyMLP):
        def __init__(self, width: int = 6):
            super().__init__(dim=2, hidden=width)

    assert Wider(width=5).config == {"width": 5}


def test_round_trip_rebuilds_from_file_alone(tmp_path):
    torch.manual_seed(0)
    m = TinyMLP(3, hidden=5)
    m.count.fill_(7)
    path = save_model(m, tmp_path / "m.safetensors", metadata={"note": "hello"})
    info = read_metadata(path)
    assert info.model == "test-mlp" and info.config == m.config and info.user == {"note": "hello"}
    loaded = load_model(path, expected="test-mlp")
    assert isinstance(loaded, TinyMLP) and not loaded.training
    assert loaded.config == m.config
    x = torch.randn(4, 3)
    assert torch.equal(loaded(x), m(x))
    assert int(loaded.count) == 7
    with pytest.raises(FlowsuiteError):  # no silent overwrite without force
        save_model(m, path, force=False)


def test_half_precision_storage(tmp_path):
    torch.manual_seed(0)
    m = TinyMLP(16, hidden=64)
    full = save_model(m, tmp_path / "full.safetensors")
    half = save_model(m, tmp_path / "half.safetensors", dtype=torch.float16)
    assert os.path.getsize(half) < 0.6 * os.path.getsize(full)
    loaded = load_model(half)
    assert read_metadata(half).dtype == "float16"
    assert loaded.inp.weight.dtype == torch.float32
    assert loaded.count.dtype == torch.int64 and int(loaded.count) == 3
    diff = (loaded.inp.weight - m.inp.weight).abs().max().item()
    assert 0 < diff < 1e-3


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    m = TinyMLP(4, hidden=4, tied=True)
    assert m.out.weight is m.inp.weight
    with torch.no_grad():
        m.inp.weight.mul_(2)
    path = save_model(m, tmp_path / "t.safetensors")
    info = read_metadata(path)
    assert info.aliases == {"out.weight": "inp.weight"}
    loaded = load_model(path)
    assert loaded.out.weight is loaded.inp.weight
    assert torch.equal(loaded.out.weight, m.inp.weight)


def test_unregistered_model_saves_and_loads_into_an_instance(tmp_path):
    m = Unregistered()
    path = save_model(m, tmp_path / "u.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert "load_weights" in one_line(e)
    other = load_weights(Unregistered(), path)
    assert torch.equal(other.lin.weight, m.lin.weight)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "nope.safetensors")
    assert "does not exist" in one_line(e)


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path)
    assert "folder" in one_line(e)


@pytest.mark.parametrize("keep", [4, 30, -10])
def test_truncated_file(tmp_path, keep):
    path = save_model(TinyMLP(3), tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep > 0 else data[:keep])
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert "truncated" in one_line(e)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1),
                                   dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert "not a safetensors" in one_line(e)


def test_text_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("hello, this is not a model\n")
    with pytest.raises(CheckpointError) as e:
        read_metadata(path)
    assert "not a safetensors" in one_line(e)


def test_corrupt_header(tmp_path):
    header = b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]'  # unterminated
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(CheckpointError) as e:
        read_metadata(path)
    assert "not a safetensors" in one_line(e)


def test_foreign_safetensors(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert "not a flowsuite checkpoint" in one_line(e)


def test_wrong_expected_model(tmp_path):
    path = save_model(Other(), tmp_path / "o.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_model(path, expected="test-mlp")
    assert one_line(e).endswith("is a test-other checkpoint; this command needs a test-mlp model")
    with pytest.raises(CheckpointError) as e:
        load_model(path, expected=("a", "b"))
    assert "one of: a, b" in one_line(e)
    assert isinstance(load_model(path, expected=("test-mlp", "test-other")), Other)


def _rewrite_metadata(path, **changes):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta.update(changes)
    save_file(tensors, str(path), metadata=meta)


def test_unknown_model_name(tmp_path):
    path = save_model(Other(), tmp_path / "o.safetensors")
    _rewrite_metadata(path, **{"flowsuite.model": "no-such-model",
                               "flowsuite.class": "elsewhere.Model"})
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert "'no-such-model'" in one_line(e) and "test-mlp" in one_line(e)


def test_mismatched_weights(tmp_path):
    path = save_model(TinyMLP(3, hidden=5), tmp_path / "m.safetensors")
    _rewrite_metadata(path, **{"flowsuite.config": json.dumps({"dim": 3, "hidden": 6})})
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    msg = one_line(e)
    assert "does not fit" in msg and "inp.weight is (5, 3) in the file, (6, 3) in the model" in msg
    with pytest.raises(CheckpointError) as e:
        load_weights(Other(), path)
    assert "missing w" in one_line(e) and "unexpected" in one_line(e)


def test_bad_config_in_file(tmp_path):
    path = save_model(TinyMLP(3), tmp_path / "m.safetensors")
    _rewrite_metadata(path, **{"flowsuite.config": json.dumps({"dims": 3})})
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert "configuration does not fit" in one_line(e)


def test_reserved_and_non_string_metadata(tmp_path):
    with pytest.raises(ValueError):
        save_model(Other(), tmp_path / "a.safetensors", metadata={"flowsuite.model": "x"})
    with pytest.raises(TypeError):
        save_model(Other(), tmp_path / "b.safetensors", metadata={"step": 3})


def test_training_state_loads_with_weights_only(tmp_path):
    import random

    import numpy as np

    from flowsuite.core.rng import rng_state

    model = TinyMLP(3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    state = {"step": 5, "optimizer": opt.state_dict(), "rng": rng_state(),
             "ema": {k: v.clone() for k, v in model.state_dict().items()}}
    path = save_training_state(state, tmp_path / "state.pt")
    back = torch.load(path, weights_only=True)
    assert back["step"] == 5
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    opt2 = torch.optim.AdamW(TinyMLP(3).parameters(), lr=1e-3)
    opt2.load_state_dict(load_training_state(path)["optimizer"])
    assert opt2.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])
    random.random(), np.random.rand()
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as e:
        load_training_state(tmp_path / "bad.pt")
    one_line(e)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch's compile imports
def test_wrapped_models_save_as_the_model_inside(tmp_path):
    m = TinyMLP(3)
    path = save_model(torch.compile(m), tmp_path / "w.safetensors")  # compiles only when called
    assert read_metadata(path).model == "test-mlp"
    assert torch.equal(load_model(path).inp.weight, m.inp.weight)
