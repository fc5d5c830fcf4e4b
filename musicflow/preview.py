"""A PNG picture of a log-mel spectrogram (matplotlib, headless)."""

from __future__ import annotations

import os

import numpy as np

from flowsuite.core.io import atomic_path


def write_spectrogram(mel: np.ndarray, path: str | os.PathLike, frames_per_second: float,
                      force: bool = False, title: str | None = None) -> None:
    """Writes log-mel ``(n_mel, F)`` as an image: time across, mel bands up, written
    atomically (an existing ``path`` needs ``force``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mel = np.asarray(mel, np.float32)
    seconds = mel.shape[1] / frames_per_second
    fig, ax = plt.subplots(figsize=(min(4 + seconds * 0.8, 20), 3.2))
    ax.imshow(mel, origin="lower", aspect="auto", cmap="magma",
              extent=(0, seconds, 0, mel.shape[0]))
    ax.set_xlabel("seconds")
    ax.set_ylabel("mel band")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path, force=force) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
