"""The trained models that ship inside the package, their model cards, and where their files lie.

Each shipped model is ``data/models/<name>.safetensors`` (weights with the model's config in the
metadata, as :mod:`flowsuite.core.checkpoint` writes them) beside its model card
``data/models/<name>.md``. Nothing is downloaded: a name that has no file here is not shipped.

A model card is Markdown that opens with a front-matter block of ``key: value`` lines between two
``---`` lines, then free text::

    ---
    model: pointflow
    parameters: 1921970
    data: gen data shapes --out shapes (6 categories, 800 training shapes each)
    command: gen train pointcloud --config recipes/pointflow.toml --data shapes --out run
    hardware: 2-core CPU
    wall_time: 5 h 10 min
    steps: 8000
    metric.1-NNA-CD: 0.71 (test split, 2048 points, normalization none)
    ---
    # free text ...

``model`` is the registered model name stored in the weights file and ``parameters`` its parameter
count (the packing step checks both); keys starting with ``metric.`` are the measured metrics.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from flowsuite.core.errors import FlowsuiteError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from flowsuite.core.checkpoint import CheckpointInfo

MODELS_DIR = Path(__file__).resolve().parent / "models"

# The shipped models by name: what each one is, for messages and `gen models`.
SHIPPED: dict[str, str] = {
    "pointflow": "point clouds of the procedural shape categories (gen pointcloud)",
    "waveglow": "WaveGlow vocoder, mel spectrogram to 22050 Hz audio (gen vocode, gen music)",
    "mel-prior": "flow prior over mel spectrograms of music (gen music)",
}

# The registered model name (core.checkpoint.register_model) that each shipped file must hold.
MODEL_OF: dict[str, str] = {"pointflow": "pointflow", "waveglow": "waveglow",
                            "mel-prior": "mel-prior"}

# How to train each one yourself, for the messages given when it is not shipped.
TRAIN_HINTS: dict[str, str] = {
    "pointflow": "`gen data shapes --out shapes` then `gen train pointcloud --data shapes "
                 "--out run`",
    "waveglow": "`gen data music --out music` then `gen train vocoder --data music --out run`",
    "mel-prior": "`gen data music --out music` then `gen train prior --data music --out run`",
}

# Size limits of what ships (decimal megabytes: 1 MB = 1,000,000 bytes).
MAX_FILE_BYTES = 25_000_000
MAX_TOTAL_BYTES = 80_000_000

# Front-matter keys every card must have; at least one `metric.` key is required too.
REQUIRED_FIELDS: tuple[str, ...] = ("model", "parameters", "data", "command", "hardware",
                                    "wall_time", "steps")
METRIC_PREFIX = "metric."
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def shipped_path(name: str) -> Path:
    """The weights file of the shipped model ``name``; a one-line error when it is not shipped."""
    if name not in SHIPPED:
        raise FlowsuiteError(f"no shipped model is called {name!r}; the names are "
                             f"{', '.join(SHIPPED)}")
    path = MODELS_DIR / f"{name}.safetensors"
    if not path.is_file():
        raise FlowsuiteError(f"this installation ships no trained {name} model ({path} is "
                             f"missing); train one with {TRAIN_HINTS[name]}, and pass the run "
                             "folder with --model")
    return path


def card_path(name: str) -> Path:
    """The model card (Markdown) of the shipped model ``name``."""
    return shipped_path(name).with_suffix(".md")


def shipped_names() -> list[str]:
    """The names of the models this installation ships (their weights files exist)."""
    return [n for n in SHIPPED if (MODELS_DIR / f"{n}.safetensors").is_file()]


def load_pretrained(name: str, path: str | os.PathLike | None = None, *,
                    expected: str | tuple[str, ...] | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointInfo]:
    """A trained model and its checkpoint metadata, in eval mode on ``map_location``.

    ``path`` ``None`` takes the shipped model ``name`` (a one-line error when it is not shipped);
    otherwise a training run's folder or a ``.safetensors`` file. ``expected`` names the
    registered model the caller can use (default: ``MODEL_OF[name]``). Half-precision files come
    back in the model's own dtype.
    """
    from flowsuite.core.checkpoint import load_model, model_file, read_metadata

    file = shipped_path(name) if path is None else model_file(path)
    info = read_metadata(file)
    model = load_model(file, expected=expected or MODEL_OF.get(name, name),
                       map_location=map_location)
    return model.eval(), info


# ---- model cards ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCard:
    """A parsed model card: the front matter's ``key: value`` fields and the Markdown after it."""

    fields: dict[str, str]
    body: str
    path: Path | None = None
    metrics: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        metrics = {k[len(METRIC_PREFIX):]: v for k, v in self.fields.items()
                   if k.startswith(METRIC_PREFIX)}
        object.__setattr__(self, "metrics", metrics)

    def missing(self) -> list[str]:
        """Required fields that are absent or empty (``metric.*`` when there is no metric)."""
        gone = [k for k in REQUIRED_FIELDS if not self.fields.get(k)]
        if not self.metrics:
            gone.append(f"{METRIC_PREFIX}*")
        return gone

    def check(self) -> ModelCard:
        """``self``; a one-line error naming the missing fields when the card is incomplete."""
        gone = self.missing()
        if gone:
            where = self.path if self.path is not None else "the model card"
            raise FlowsuiteError(f"{where} lacks the field(s) {', '.join(gone)}; see "
                                 "recipes/README.md for the card format")
        return self

    def parameter_count(self) -> int:
        """The ``parameters`` field as a number (``1921970``, ``1,921,970`` or ``1_921_970``)."""
        text = self.fields.get("parameters", "").replace(",", "").replace("_", "").strip()
        if not text.isdigit():
            raise FlowsuiteError(f"{self.path or 'the model card'}: parameters must be a whole "
                                 f"number, not {self.fields.get('parameters')!r}")
        return int(text)


def parse_card(text: str, path: Path | None = None) -> ModelCard:
    """Parses a model card: ``---``, ``key: value`` lines (blank lines and ``#`` comments
    allowed), ``---``, then free Markdown. A one-line error for a malformed front matter."""
    where = str(path) if path is not None else "the model card"
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise FlowsuiteError(f"{where} must open with a front-matter block: a '---' line, "
                             "'key: value' lines, and a closing '---' line")
    fields: dict[str, str] = {}
    for i, line in enumerate(lines[1:], start=2):
        s = line.strip()
        if s == "---":
            return ModelCard(fields, "\n".join(lines[i:]).strip("\n") + "\n", path)
        if not s or s.startswith("#"):
            continue
        key, sep, value = s.partition(":")
        key = key.strip()
        if not sep or not _KEY.fullmatch(key):
            raise FlowsuiteError(f"{where} line {i}: expected 'key: value' in the front matter, "
                                 f"got {s!r}")
        if key in fields:
            raise FlowsuiteError(f"{where} line {i}: the key {key!r} appears twice")
        fields[key] = value.strip()
    raise FlowsuiteError(f"{where} has no closing '---' line after its front matter")


def read_card(path: str | os.PathLike) -> ModelCard:
    """Reads and parses the model card at ``path`` (see :func:`parse_card`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FlowsuiteError(f"model card {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FlowsuiteError(f"cannot read model card {p} ({e}); give a UTF-8 Markdown file"
                             ) from None
    return parse_card(text, p)
