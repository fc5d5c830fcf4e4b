"""Helpers shared by the gen commands."""

from __future__ import annotations

from pathlib import Path

from flowsuite.core.errors import FlowsuiteError


def model_file(path: Path | str) -> Path:
    """The weights file a ``--model`` names: a ``.safetensors`` file, or a training run's folder
    (its final ``model.safetensors``)."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise FlowsuiteError(f"model file {p} does not exist; give a training run's folder or "
                             "its model.safetensors")
    return p
