"""The trained models that ship inside the package, and where their files lie.

Each shipped model is ``data/models/<name>.safetensors`` (weights with the model's config in the
metadata, as :mod:`flowsuite.core.checkpoint` writes them) beside its model card
``data/models/<name>.md``. Nothing is downloaded: a name that has no file here is not shipped.
"""

from __future__ import annotations

from pathlib import Path

from flowsuite.core.errors import FlowsuiteError

MODELS_DIR = Path(__file__).resolve().parent / "models"

# The shipped models by name: what each one is, for messages and `gen models`.
SHIPPED: dict[str, str] = {
    "pointflow": "point clouds of the procedural shape categories (gen pointcloud)",
    "waveglow": "WaveGlow vocoder, mel spectrogram to 22050 Hz audio (gen vocode, gen music)",
    "mel-prior": "flow prior over mel spectrograms of music (gen music)",
}


def shipped_path(name: str) -> Path:
    """The weights file of the shipped model ``name``; a one-line error when it is not shipped."""
    if name not in SHIPPED:
        raise FlowsuiteError(f"no shipped model is called {name!r}; shipped: {', '.join(SHIPPED)}")
    path = MODELS_DIR / f"{name}.safetensors"
    if not path.is_file():
        raise FlowsuiteError(f"this installation has no shipped {name} model ({path} is missing); "
                             f"train one with `gen train ...` and pass it with --model")
    return path


def card_path(name: str) -> Path:
    """The model card (Markdown) of the shipped model ``name``."""
    return shipped_path(name).with_suffix(".md")
