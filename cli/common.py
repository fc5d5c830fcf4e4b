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


def resolve_device(name: str) -> str:
    """``--device``: ``auto`` is CUDA when present, else the CPU; ``cuda`` without CUDA is an
    error a user can fix."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise FlowsuiteError("--device cuda was asked for but CUDA is not available; use "
                             "--device cpu or check the GPU driver")
    return name


def category_list(text: str | None) -> list[str] | None:
    """``--categories a,b``: the names, or ``None`` (all) when not given."""
    if not text:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise FlowsuiteError("--categories is empty; give names separated by commas")
    return names


def run_warmup(out: Path, steps: int, resume: bool) -> int:
    """Warm-up steps of a run of ``steps`` steps in ``out``: a tenth of the steps (at most 100)
    for a new run; a resumed run keeps its own, since the warm-up is fixed for the life of a run
    (resuming with more steps must not change it)."""
    from flowsuite.core.trainer import TrainConfig

    if resume and (out / "config.json").is_file():
        return TrainConfig.load(out / "config.json").warmup
    return min(100, steps // 10)
