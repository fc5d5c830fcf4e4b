"""PNG previews of point clouds: a grid of 3D scatter plots (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from flowsuite.core.io import atomic_path


def render_grid(clouds: Sequence[Sequence[np.ndarray]], path: str | os.PathLike,
                row_labels: Sequence[str] | None = None, force: bool = False,
                point_size: float = 0.6, cell_inches: float = 1.6, dpi: int = 80,
                elev: float = 22.0, azim: float = 125.0) -> None:
    """Writes a PNG grid: one row per list in ``clouds``, one cell per ``(n, 3)`` cloud (y up,
    seen by default from the front-left (+z, -x) and above; ``elev``/``azim`` in degrees as
    matplotlib takes them, whose (x, y, z) are the cloud's (x, z, y))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e, a = np.radians(elev), np.radians(azim)
    towards_camera = np.array([np.cos(e) * np.cos(a), np.sin(e), np.cos(e) * np.sin(a)])
    rows = len(clouds)
    cols = max(len(r) for r in clouds)
    fig = plt.figure(figsize=(cols * cell_inches + (0.9 if row_labels else 0), rows * cell_inches))
    for i, row in enumerate(clouds):
        for j, pts in enumerate(row):
            ax = fig.add_subplot(rows, cols, i * cols + j + 1, projection="3d")
            p = np.asarray(pts, float)
            # matplotlib's vertical axis is z: show (x, z, y) so the cloud's y is up
            # colour by nearness to the camera (front-left, above) so depth reads at a glance
            near = p @ towards_camera
            ax.scatter(p[:, 0], p[:, 2], p[:, 1], s=point_size, c=near, cmap="viridis",
                       linewidths=0, depthshade=False)
            lim = float(np.abs(p).max()) * 0.8 + 1e-9
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_zlim(-lim, lim)
            ax.set_box_aspect((1, 1, 1))
            ax.view_init(elev=elev, azim=azim)
            ax.set_axis_off()
            if j == 0 and row_labels:
                ax.text2D(-0.25, 0.5, row_labels[i], transform=ax.transAxes, rotation=90,
                          va="center", ha="center", fontsize=10)
    fig.subplots_adjust(left=0.04 if row_labels else 0, right=1, bottom=0, top=1, wspace=0,
                        hspace=0)
    with atomic_path(path, force=force) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
