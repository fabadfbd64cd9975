"""What every figure of the report shares: the colour-blind-safe palettes (Okabe-Ito, one fixed colour per outcome
class), matplotlib on the Agg backend (imported lazily), saving, error bars and the annotated matrix heatmap.

Run: `pytest tests/integration/test_report.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unbackdoor.running.cells import CONTROL

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
# one colour per outcome class (`measure.outcomes.OUTCOMES`), the same in every figure
OUTCOME_COLOURS = {"target": "#D55E00", "other_backdoor": "#CC79A7", "echo": "#F0E442", "degenerate": "#56B4E9",
                   "clean": "#009E73"}  # fmt: skip
NAN = {"rate": float("nan"), "lo": float("nan"), "hi": float("nan")}


def plt():
    """matplotlib.pyplot on the Agg backend, with the report's defaults."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    pyplot.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return pyplot


def save(fig, path: Path) -> str:
    """Write `fig` as a PNG and close it; returns its path relative to index.html."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt().close(fig)
    return f"figures/{path.name}"


def err(rates: list[dict[str, Any]]) -> list[list[float]]:
    """Matplotlib error-bar lengths of Wilson rates (never negative: runs before 6c18ed7 stored a bound a rounding
    error inside its rate, e.g. hi = 0.9999999999999999 for 128 of 128)."""
    return [[max(0.0, r["rate"] - r["lo"]) for r in rates], [max(0.0, r["hi"] - r["rate"]) for r in rates]]


def fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def heatmap(ax, values: list[list[float | None]], rows: list[str], cols: list[str], labels: list[list[str]],
            cmap: str, vmin: float, vmax: float, light: Callable[[float], bool] = lambda v: v < 0.55):  # fmt: skip
    """A matrix heatmap with a label in each cell (None: grey), the diagonal boxed and the control row set apart.

    `light(norm)` says where (at which position 0..1 of the colour scale) the label is printed in white.
    """
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    colours = colormaps[cmap].with_extremes(bad="#dddddd")
    grid = [[float("nan") if v is None else v for v in row] for row in values]
    im = ax.imshow(grid, cmap=colours, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            v = grid[i][j]
            norm = 0.5 if math.isnan(v) else (min(max(v, vmin), vmax) - vmin) / ((vmax - vmin) or 1)
            ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=6.5,
                    color="white" if not math.isnan(v) and light(norm) else "black")  # fmt: skip
            if row == col:  # the row's own removal target
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#D55E00", linewidth=2.2))
    if CONTROL in rows:
        k = rows.index(CONTROL)
        ax.axhline(k - 0.5, color="white", linewidth=4)
        ax.get_yticklabels()[k].set_fontweight("bold")
    return im
