"""What every bench script records beside its figures: the machine it ran on, its load before and
after, and the wall time; and where the record goes. Imported by the scripts of this folder."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch


def machine() -> dict:
    """The processor, torch's threads and the 1-minute load average now."""
    return {"cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "load_1min_start": os.getloadavg()[0]}


def save(result: dict, out: Path, started: float, indent: int = 2) -> None:
    """Adds the load now and the wall time since ``started`` (``time.time()``) to ``result``
    and writes it to ``out`` as JSON."""
    result.setdefault("machine", {})["load_1min_end"] = os.getloadavg()[0]
    result["wall_s"] = round(time.time() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=indent) + "\n")
