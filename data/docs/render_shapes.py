"""Re-creates data/docs/shapes.png, the README's picture of the procedural categories:
six shapes (seeds 12-17, the same for every category) of each category, 4000 points each.

    python data/docs/render_shapes.py
"""

from pathlib import Path

from flowsuite.data.preview import render_grid
from flowsuite.data.procedural import CATEGORIES, sample_shape

SEEDS = range(12, 18)

if __name__ == "__main__":
    cats = list(CATEGORIES)
    rows = [[sample_shape(c, s, 4000) for s in SEEDS] for c in cats]
    out = Path(__file__).with_name("shapes.png")
    render_grid(rows, out, row_labels=cats, force=True, point_size=0.5, cell_inches=1.7, dpi=90)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
