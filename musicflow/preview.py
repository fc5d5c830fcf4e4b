"""PNG pictures of audio: log-mel spectrograms, one above the other (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from flowsuite.core.io import atomic_path


def write_spectrograms(path: str | os.PathLike,
                       panels: Sequence[tuple[str, torch.Tensor | np.ndarray]],
                       sample_rate: int = 22050, hop: int = 256, fmax: float = 8000.0,
                       force: bool = False, width_inches: float = 9.0, dpi: int = 90) -> None:
    """Writes a PNG with one log-mel spectrogram ``(n_mels, frames)`` per ``(title, mel)`` panel.

    All panels share one colour scale (the range of the first panel, which is usually the
    reference), so louder or noisier panels read as such; time is in seconds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("no spectrogram to draw")
    mels = [np.asarray(m.detach().float().cpu() if isinstance(m, torch.Tensor) else m, np.float32)
            for _, m in panels]
    for (title, _), m in zip(panels, mels, strict=True):
        if m.ndim != 2:
            raise ValueError(f"panel {title!r}: a spectrogram is (n_mels, frames), got {m.shape}")
    finite = mels[0][np.isfinite(mels[0])]
    vmin, vmax = -11.5, 2.0  # the log clamp of 1e-5 .. a loud frame, for an all-silent reference
    if finite.size:
        vmin, vmax = float(np.percentile(finite, 1)), float(finite.max())
    fig, axes = plt.subplots(len(mels), 1, squeeze=False, layout="constrained",
                             figsize=(width_inches, 1.9 * len(mels) + 0.4))
    image = None
    for ax, (title, _), m in zip(axes[:, 0], panels, mels, strict=True):
        seconds = m.shape[1] * hop / sample_rate
        image = ax.imshow(m, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
                          extent=(0.0, seconds, 0, m.shape[0]), interpolation="nearest")
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_ylabel("mel band", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("time (s)", fontsize=8)
    fig.colorbar(image, ax=axes[:, 0].tolist(), fraction=0.025, pad=0.01, aspect=30,
                 label=f"log magnitude (0-{fmax / 1000:g} kHz)")
    with atomic_path(path, force=force) as tmp:
        fig.savefig(str(tmp), dpi=dpi, format="png")
    plt.close(fig)
