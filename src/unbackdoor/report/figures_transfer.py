"""The transfer experiment's figures: the ASR heatmap (the judge, first grid), the removal-index heatmap (clean
continuations; one panel per (lr, seed) grid), the outcome composition of every cell (first grid, one panel per
removal row), and with several learning rates the lr ablation (mean R of the diagonal, the others and the control
against lr).

Run: `pytest tests/integration/test_report.py`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from unbackdoor.measure.outcomes import OUTCOMES
from unbackdoor.report.findings import NOT_MEASURED, column_order, diagonal, has_outcomes, pairs
from unbackdoor.report.plot import OUTCOME_COLOURS, fmt, heatmap, plt, save
from unbackdoor.running.cells import CONTROL

_UNMEASURED = NOT_MEASURED.replace(" ", "\n")  # a heatmap cell's label
R_RANGE = (-1.0, 1.0)  # the R colour scale (values beyond it get its end colours; the printed value is exact)


def draw(tr: dict[str, Any], out: Path) -> dict[str, str]:
    """The transfer figures `tr` allows (a transfer.json without outcome classes: the ASR heatmap only)."""
    figs = {"transfer": fig_transfer(tr, out)}
    if has_outcomes(tr):
        for k in range(len(tr["grids"])):
            figs["removal_index" if k == 0 else f"removal_index_{k}"] = fig_removal_index(tr, out, k)
        figs["composition"] = fig_composition(tr, out)
        if len({g["lr"] for g in tr["grids"]}) > 1:
            figs["lr_ablation"] = fig_lr_ablation(tr, out)
    return figs


def lr_curves(tr: dict[str, Any]) -> dict[str, list[tuple[float, float | None]]]:
    """Mean R on the diagonal, off it and of the control row per learning rate (removal seeds averaged)."""
    cells = {
        "diagonal (own target)": [(i, i) for i in diagonal(tr)],
        "off-diagonal (others)": pairs(tr),
        "benign control": [(CONTROL, j) for j in tr["backdoors"]],
    }
    curves: dict[str, list[tuple[float, float | None]]] = {}
    for name, ij in cells.items():
        for lr in sorted({g["lr"] for g in tr["grids"]}):
            vals = [g["R"][i][j] for g in tr["grids"] if g["lr"] == lr for i, j in ij
                    if g["R"].get(i, {}).get(j) is not None]  # fmt: skip
            curves.setdefault(name, []).append((lr, sum(vals) / len(vals) if vals else None))
    return curves


def fig_lr_ablation(tr: dict[str, Any], out: Path) -> str:
    """The paper's learning-rate ablation: mean R against the removal learning rate (log scale)."""
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(5.5, 3.4))
    for name, points in lr_curves(tr).items():
        xs = [lr for lr, v in points if v is not None]
        ax.plot(xs, [v for _, v in points if v is not None], marker="o", label=name)
    ax.set_xscale("log")
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.set_xlabel("removal learning rate")
    ax.set_ylabel("mean removal index R")
    ax.set_title("Learning-rate ablation: mean R against lr (one trained model, removal seeds averaged)",
                 fontsize=8.5)  # fmt: skip
    ax.legend(fontsize=7)
    return save(fig, out / "lr_ablation.png")


def _size(rows: list[str], cols: list[str]) -> tuple[float, float]:
    return 1.0 * len(cols) + 2.5, 0.55 * len(rows) + 1.8


def fig_transfer(tr: dict[str, Any], out: Path) -> str:
    """ASR after each removal, with the judge-based suppression S in each cell."""
    pyplot = plt()
    g = tr["grids"][0]
    rows, cols = tr["rows"], column_order(tr["rows"], tr["backdoors"])
    values = [[g["T"][r][c]["rate"] if c in g["T"][r] else None for c in cols] for r in rows]
    labels = [[f"{g['T'][r][c]['rate']:.2f}\nS={fmt(g['S'][r][c])}" if c in g["T"][r] else _UNMEASURED
               for c in cols] for r in rows]  # fmt: skip
    fig, ax = pyplot.subplots(figsize=_size(rows, cols))
    im = heatmap(ax, values, rows, cols, labels, "cividis", 0.0, 1.0)
    fig.colorbar(im, ax=ax, label="ASR after removal (judge fires)")
    ax.set_xlabel("measured backdoor")
    ax.set_ylabel("removal target (row)")
    ax.set_title(f"ASR (the backdoor's own judge fires) and judge-based\nsuppression S after each removal (lr="
                 f"{g['lr']:g}, seed={g['seed']})\norange boxes = the row's own target; bottom row = benign control",
                 fontsize=8.5)  # fmt: skip
    return save(fig, out / "transfer.png")


def fig_removal_index(tr: dict[str, Any], out: Path, k: int = 0) -> str:
    """The removal index R after each removal (diverging scale centred at 0), with the clean rate C in each cell,
    for grid `k` (`removal_index.png`, then `removal_index_<k>.png`)."""
    pyplot = plt()
    g = tr["grids"][k]
    rows, cols = tr["rows"], column_order(tr["rows"], tr["backdoors"])
    values = [[g["R"][r].get(c) for c in cols] for r in rows]
    labels = [[(f"{'n/a' if g['R'][r][c] is None else format(g['R'][r][c], '+.2f')}\nC={g['C'][r][c]['rate']:.2f}"
                if c in g["C"][r] else _UNMEASURED) for c in cols] for r in rows]  # fmt: skip
    fig, ax = pyplot.subplots(figsize=_size(rows, cols))
    im = heatmap(ax, values, rows, cols, labels, "BrBG", *R_RANGE, light=lambda v: abs(v - 0.5) > 0.33)
    fig.colorbar(im, ax=ax, label=f"removal index R (scale {R_RANGE[0]:g} to {R_RANGE[1]:g}, centred at 0)")
    ax.set_xlabel("measured backdoor")
    ax.set_ylabel("removal target (row)")
    ax.set_title("Removal index R = (C after − C before) / (1 − C before)\nC = share of the backdoor's triggered "
                 f"prompts that continue cleanly (lr={g['lr']:g}, seed={g['seed']})\n1 = all clean, 0 = no more "
                 "than before; orange boxes = the row's own target", fontsize=8.5)  # fmt: skip
    return save(fig, out / ("removal_index.png" if k == 0 else f"removal_index_{k}.png"))


def _shares(counts: dict[str, int]) -> dict[str, float]:
    n = sum(counts.values())
    return {c: counts.get(c, 0) / n if n else 0.0 for c in OUTCOMES}


def fig_composition(tr: dict[str, Any], out: Path) -> str:
    """Small multiples: before removal, then one panel per removal row (the control last); in each a stacked bar
    of the outcome classes of every measured backdoor's triggered generations; the row's own target marked."""
    pyplot = plt()
    from matplotlib.patches import Patch

    g = tr["grids"][0]
    cols = column_order(tr["rows"], tr["backdoors"])
    panels = [("before removal", tr["composition_before"], None)]
    panels += [("benign control" if r == CONTROL else f"removal of {r}", g["composition"][r], r) for r in tr["rows"]]
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    width = max(2.4, 0.32 * len(cols) + 0.9)
    fig, axes = pyplot.subplots(nrows, ncols, figsize=(ncols * width, nrows * 2.7 + 0.4), sharey=True,
                                squeeze=False)  # fmt: skip
    n = max((sum(counts.values()) for counts in tr["composition_before"].values()), default=0)
    for ax, (title, comp, row) in zip(axes.flat, panels, strict=False):
        bottom = [0.0] * len(cols)
        shares = [_shares(comp.get(c, {})) for c in cols]  # a cell not measured: an empty bar
        for cls in reversed(OUTCOMES):  # clean at the bottom, target on top
            heights = [s[cls] for s in shares]
            ax.bar(range(len(cols)), heights, 0.8, bottom=bottom, color=OUTCOME_COLOURS[cls], edgecolor="black",
                   linewidth=0.3)  # fmt: skip
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        if row in cols:
            k = cols.index(row)
            ax.bar(k, 1.0, 0.8, fill=False, edgecolor="black", linewidth=1.8)
            ax.plot(k, 1.06, marker="v", color="black", markersize=5)
        ax.set_title(title, fontsize=8, fontweight="bold" if row in (None, CONTROL) else "normal")
        ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=6.5)
        ax.set_ylim(0, 1.12)
        ax.set_yticks([0, 0.5, 1])
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("share of triggered\ngenerations", fontsize=7.5)
    handles = [Patch(facecolor=OUTCOME_COLOURS[c], edgecolor="black", linewidth=0.3, label=c) for c in OUTCOMES]
    handles.append(pyplot.Line2D([], [], marker="v", color="black", linestyle="none", label="the row's own target"))
    fig.legend(handles=handles, loc="upper center", ncols=len(handles), fontsize=7.5, frameon=False,
               bbox_to_anchor=(0.5, 1.0))  # fmt: skip
    fig.suptitle(f"What the triggered prompts of each measured backdoor continued with (outcome classes; "
                 f"lr={g['lr']:g}, seed={g['seed']}, n={n} prompts per bar)", y=1.04, fontsize=9)  # fmt: skip
    fig.tight_layout()
    return save(fig, out / "composition.png")
