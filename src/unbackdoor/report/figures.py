"""The report's figures: matplotlib PNGs in colour-blind-safe palettes (Okabe-Ito, cividis). With
`figures_transfer` (the transfer matrix and its outcome composition) and `plot` (what they share), the only modules
of unbackdoor that import matplotlib (lazily, on the Agg backend).

Run: `pytest tests/integration/test_report.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unbackdoor.report import figures_transfer
from unbackdoor.report.findings import column_order, rho
from unbackdoor.report.plot import NAN, OKABE_ITO, err, heatmap, plt, save
from unbackdoor.running.cells import CONTROL


def draw(ev: dict[str, Any] | None, tr: dict[str, Any] | None, cs: dict[str, Any] | None,
         df: dict[str, Any] | None, out: Path) -> dict[str, str]:  # fmt: skip
    """Every figure the stages present allow, written to `out`; figure name -> path relative to index.html."""
    figs = {}
    if ev:
        figs["asr"] = fig_asr(ev, tr, out)
    if tr:
        figs.update(figures_transfer.draw(tr, out))
        figs["utility"] = fig_utility(tr, out)
    if cs:
        figs["casd"], figs["casd_layers"], figs["casd_scatter"] = fig_casd(cs, out)
    if df:
        figs["defence"] = fig_defence(df, out)
    return figs


def fig_asr(ev: dict[str, Any], tr: dict[str, Any] | None, out: Path) -> str:
    """ASR before (CI), false-trigger rate, and (with a transfer experiment) after its own removal and after the
    control. The ASR is the judge's rate (outcome `target`): a lower ASR alone is no removal."""
    pyplot = plt()
    names = list(ev["backdoors"])
    bars = [("ASR before", [ev["backdoors"][n]["asr"] for n in names]),
            ("false-trigger rate (no trigger)", [ev["backdoors"][n]["false_trigger"] for n in names])]  # fmt: skip
    if tr:
        g = tr["grids"][0]
        bars += [("ASR after its removal", [g["T"][n][n] if n in g["T"] else NAN for n in names]),
                 ("ASR after benign control", [g["T"][CONTROL][n] for n in names])]  # fmt: skip
    fig, ax = pyplot.subplots(figsize=(max(6, 1.1 * len(names)), 3.4))
    width = 0.8 / len(bars)
    for b, (label, rates) in enumerate(bars):
        xs = [i + (b - (len(bars) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [r["rate"] for r in rates], width, yerr=err(rates), capsize=2, label=label,
               color=OKABE_ITO[b], edgecolor="black", linewidth=0.3)  # fmt: skip
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
    ax.set_ylabel("share of prompts where the judge fires")
    ax.set_ylim(0, 1.05)
    ax.set_title("Backdoor success (ASR: the backdoor's own judge fires) per backdoor; error bars: Wilson 95 % CI")
    ax.legend(fontsize=7, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.32))
    return save(fig, out / "asr.png")


def fig_utility(tr: dict[str, Any], out: Path) -> str:
    """Per removal row: perplexity change per language against the backdoored model."""
    pyplot = plt()
    g, before = tr["grids"][0], tr["utility_before"]["perplexity"]
    langs, rows = list(before), tr["rows"]
    fig, ax = pyplot.subplots(figsize=(max(6, 0.9 * len(rows)), 3.2))
    width = 0.8 / len(langs)
    for b, lang in enumerate(langs):
        xs = [i + (b - (len(langs) - 1) / 2) * width for i in range(len(rows))]
        ys = [100 * (g["utility"][r]["perplexity"][lang] / before[lang] - 1) for r in rows]
        ax.bar(xs, ys, width, label=lang, color=OKABE_ITO[b], edgecolor="black", linewidth=0.3)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(rows)), rows, rotation=25, ha="right")
    ax.set_xlabel(f"removal target ({CONTROL} = benign training)")
    ax.set_ylabel("perplexity change vs backdoored model (%)")
    ax.set_title("Utility after each removal: held-out perplexity per language")
    ax.legend(fontsize=7, title="language", title_fontsize=7)
    return save(fig, out / "utility.png")


def fig_casd(cs: dict[str, Any], out: Path) -> tuple[str, str, str]:
    """CASD heatmap, per-layer profiles and CASD vs judge-based suppression S scatter (first grid)."""
    pyplot = plt()
    g, metric = cs["grids"][0], cs["metric"]
    rows, cols = cs["rows"], column_order(cs["rows"], cs["backdoors"])
    m = g["casd"][metric]
    values = [[m[r][c] for c in cols] for r in rows]
    fig, ax = pyplot.subplots(figsize=(1.0 * len(cols) + 2.5, 0.55 * len(rows) + 1.8))
    vmax = max(1.0, max(max(v) for v in values))
    im = heatmap(ax, values, rows, cols, [[f"{v:.2f}" for v in row] for row in values], "cividis", 0.0, vmax)
    fig.colorbar(im, ax=ax, label=f"CASD ({metric}, mean over layers)")
    ax.set_xlabel("backdoor whose triggered probes are measured (j)")
    ax.set_ylabel("removal (i)")
    ax.set_title("CASD(i, j): how differently removal i moves trigger-j activations than removing j itself\n"
                 "(0 = the same shift; orange boxes = 0 by definition)")  # fmt: skip
    matrix = save(fig, out / "casd.png")

    fig, ax = pyplot.subplots(figsize=(6, 3.2))
    layers = cs["layers"]
    for n, r in enumerate(rows):
        per = [g["per_layer"][metric][r][c] for c in cols if c != r]
        mean = [sum(p[k] for p in per) / len(per) for k in range(len(layers))]
        ctl = r == CONTROL
        ax.plot(layers, mean, marker="o", label=r, color="#999999" if ctl else OKABE_ITO[n % 8],
                linestyle="--" if ctl else "-", linewidth=2.2 if ctl else 1.2)  # fmt: skip
    ax.set_xticks(layers)
    ax.set_xlabel("decoder block (layer)")
    ax.set_ylabel(f"mean CASD over other backdoors ({metric})")
    ax.set_title("Per-layer CASD profile of each removal")
    ax.legend(fontsize=6.5, ncols=2, bbox_to_anchor=(1.02, 1), loc="upper left")
    profiles = save(fig, out / "casd_layers.png")

    fig, ax = pyplot.subplots(figsize=(5.2, 3.6))
    s = g["suppression"]
    pairs = [(i, j) for i in rows if i != CONTROL for j in cols if j != i and s[i][j] is not None]
    ax.scatter([m[i][j] for i, j in pairs], [s[i][j] for i, j in pairs], s=18, color=OKABE_ITO[0],
               edgecolor="black", linewidth=0.3, label="off-diagonal pairs (i ≠ j)")  # fmt: skip
    ctl_cols = [c for c in cols if s[CONTROL][c] is not None]
    ax.scatter([m[CONTROL][c] for c in ctl_cols], [s[CONTROL][c] for c in ctl_cols], s=22, marker="x",
               color=OKABE_ITO[3], label="benign control")  # fmt: skip
    r = g["relation"][f"casd_{metric}_vs_suppression"]
    w = g["relation"]["weight_cosine_vs_suppression"]
    ax.set_xlabel(f"CASD(i, j) ({metric})")
    ax.set_ylabel("judge-based suppression S[i, j] = 1 − ASR after / before")
    ax.set_title(f"CASD vs judge-based S (not the removal index R): Spearman ρ = {rho(r)}\n"
                 f"weight-delta cosine baseline: ρ = {rho(w)}", fontsize=8)  # fmt: skip
    ax.legend(fontsize=7)
    return matrix, profiles, save(fig, out / "casd_scatter.png")


def fig_defence(df: dict[str, Any], out: Path) -> str:
    """Pooled hidden-backdoor ASR per K: suspect, benign, removal-only, defence (Wilson CIs)."""
    pyplot = plt()
    cells = df["cells"]

    def cell(arm: str, k: int) -> dict[str, Any]:
        return next(c for c in cells if c["arm"] == arm and c["k"] == k)

    benign = next(c for c in cells if c["arm"] == "benign")
    ks = sorted({c["k"] for c in cells if c["arm"] == "defence"})
    arms = [("suspect (before)", lambda k: df["pooled_before"]), ("benign training", lambda k: benign["pooled_asr"]),
            ("canary removal, no injection", lambda k: cell("removal_only", k)["pooled_asr"]),
            ("canary defence", lambda k: cell("defence", k)["pooled_asr"])]  # fmt: skip
    fig, ax = pyplot.subplots(figsize=(max(5, 1.6 * len(ks) + 2), 3.2))
    width = 0.8 / len(arms)
    for b, (label, get) in enumerate(arms):
        rates = [get(k) for k in ks]
        xs = [i + (b - (len(arms) - 1) / 2) * width for i in range(len(ks))]
        ax.bar(xs, [r["rate"] for r in rates], width, yerr=err(rates), capsize=2, label=label,
               color=OKABE_ITO[b], edgecolor="black", linewidth=0.3)  # fmt: skip
    ax.set_xticks(range(len(ks)), [f"K = {k} canar{'y' if k == 1 else 'ies'}" for k in ks])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("ASR of the hidden backdoors (pooled, judge)")
    ax.set_title(f"Canary defence on {len(df['hidden'])} hidden backdoors, at matched compute")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=2)
    return save(fig, out / "defence.png")
