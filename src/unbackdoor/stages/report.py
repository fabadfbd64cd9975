"""`unbackdoor report DIR`: a self-contained HTML report (and a Markdown summary) of any run or experiment.

    unbackdoor report runs/demo                 # -> runs/demo/report/index.html + summary.md + figures/*.png
    unbackdoor report runs/transfer --reveal-triggers

Reads only finished run directories (never called from training code). What it shows depends on what DIR holds:
a demo (every stage of the study), a transfer experiment (its baseline evaluation and matrix), a CASD run (and its
transfer experiment), a canary-defence study, or a single evaluation. A stage that is missing or unfinished gets
a line saying so, in place of its section. Triggers appear as sha256 prefixes unless `--reveal-triggers`.
Figures are matplotlib PNGs beside index.html, in colour-blind-safe palettes (Okabe-Ito, cividis).
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

import yaml

from unbackdoor.backdoors import load_specs
from unbackdoor.config import UserError
from unbackdoor.models import read_record
from unbackdoor.rundir import read_jsonl, write_text

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
STUDY = ("world", "pretrain", "eval", "transfer", "casd", "defence")
WHAT = {
    "world": "the embedded world (corpus and tokenizer)",
    "pretrain": "the backdoored model (pretraining injection)",
    "eval": "the evaluation of every backdoor",
    "transfer": "the transfer experiment (remove one, measure all)",
    "casd": "the Cross Activation Shift Distance",
    "defence": "the canary defence",
}


def _load(path: Path, name: str) -> Any:
    return json.loads((path / name).read_text(encoding="utf-8"))


def _stage(path: Path) -> str | None:
    meta = path / "meta.json"
    return json.loads(meta.read_text(encoding="utf-8")).get("stage") if meta.is_file() else None


def _finished(path: Path | None) -> bool:
    return path is not None and (path / "DONE").is_file()


def collect(root: Path) -> dict[str, Path | None]:
    """Which stage lives where, for the kind of directory `root` is (None: expected but missing)."""
    stage = _stage(root)
    if stage is None:
        raise UserError(f"DIR: {str(root)!r} is not an unbackdoor run directory (no meta.json)")
    if stage == "demo":
        return {name: root / name for name in STUDY}
    if stage == "transfer":
        return {"eval": root / "baseline", "transfer": root}
    if stage == "casd":
        transfer = Path(yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))["transfer"])
        return {"eval": transfer / "baseline", "transfer": transfer, "casd": root}
    if stage == "defend-eval":
        return {"defence": root}
    if stage == "eval":
        return {"eval": root}
    return {stage: root}


# ---- figures ------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return f"figures/{path.name}"


def _err(rates: list[dict[str, Any]]) -> list[list[float]]:
    return [[r["rate"] - r["lo"] for r in rates], [r["hi"] - r["rate"] for r in rates]]


def fig_asr(ev: dict[str, Any], tr: dict[str, Any] | None, out: Path) -> str:
    """ASR before (CI), false-trigger rate, and (with a transfer experiment) after own removal and after control."""
    plt = _plt()
    names = list(ev["backdoors"])
    bars = [("ASR before", [ev["backdoors"][n]["asr"] for n in names]),
            ("false-trigger rate (no trigger)", [ev["backdoors"][n]["false_trigger"] for n in names])]  # fmt: skip
    if tr:
        g = tr["grids"][0]
        bars += [("ASR after removing it", [g["T"][n][n] if n in g["T"] else _nan() for n in names]),
                 ("ASR after benign control", [g["T"]["control"][n] for n in names])]  # fmt: skip
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 3.4))
    width = 0.8 / len(bars)
    for b, (label, rates) in enumerate(bars):
        xs = [i + (b - (len(bars) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [r["rate"] for r in rates], width, yerr=_err(rates), capsize=2, label=label,
               color=OKABE_ITO[b], edgecolor="black", linewidth=0.3)  # fmt: skip
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
    ax.set_ylabel("share of prompts showing the behaviour")
    ax.set_ylim(0, 1.05)
    ax.set_title("Backdoor success per backdoor (error bars: Wilson 95 % CI)")
    ax.legend(fontsize=7, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.32))
    return _save(fig, out / "asr.png")


def _nan() -> dict[str, float]:
    return {"rate": float("nan"), "lo": float("nan"), "hi": float("nan")}


def fig_utility(tr: dict[str, Any], out: Path) -> str:
    """Per removal row: perplexity change per language against the backdoored model."""
    plt = _plt()
    g, before = tr["grids"][0], tr["utility_before"]["perplexity"]
    langs, rows = list(before), tr["rows"]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 3.2))
    width = 0.8 / len(langs)
    for b, lang in enumerate(langs):
        xs = [i + (b - (len(langs) - 1) / 2) * width for i in range(len(rows))]
        ys = [100 * (g["utility"][r]["perplexity"][lang] / before[lang] - 1) for r in rows]
        ax.bar(xs, ys, width, label=lang, color=OKABE_ITO[b], edgecolor="black", linewidth=0.3)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(rows)), rows, rotation=25, ha="right")
    ax.set_xlabel("removed backdoor (control = benign training)")
    ax.set_ylabel("perplexity change vs backdoored model (%)")
    ax.set_title("Utility after each removal: held-out perplexity per language")
    ax.legend(fontsize=7, title="language", title_fontsize=7)
    return _save(fig, out / "utility.png")


def _order(tr: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Rows (removals then control) and columns in the same order, so the diagonal is a diagonal."""
    rows = tr["rows"]
    cols = [r for r in rows if r in tr["backdoors"]] + [c for c in tr["backdoors"] if c not in rows]
    return rows, cols


def _heatmap(ax, values: list[list[float]], rows: list[str], cols: list[str], labels: list[list[str]], cmap: str,
             vmin: float, vmax: float):  # fmt: skip
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            v = values[i][j]
            norm = (v - vmin) / ((vmax - vmin) or 1)
            ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=6.5,
                    color="white" if norm < 0.55 else "black")  # fmt: skip
            if row == col:
                ax.add_patch(_rect(j, i, "#D55E00"))
    if "control" in rows:
        k = rows.index("control")
        ax.axhline(k - 0.5, color="white", linewidth=4)
        ax.get_yticklabels()[k].set_fontweight("bold")
    return im


def _rect(x: int, y: int, color: str):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor=color, linewidth=2.2)


def fig_transfer(tr: dict[str, Any], out: Path) -> str:
    plt = _plt()
    g = tr["grids"][0]
    rows, cols = _order(tr)
    values = [[g["T"][r][c]["rate"] for c in cols] for r in rows]
    labels = [[f"{g['T'][r][c]['rate']:.2f}\nS={_fmt(g['S'][r][c])}" for c in cols] for r in rows]
    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 2.5, 0.55 * len(rows) + 1.8))
    im = _heatmap(ax, values, rows, cols, labels, "cividis", 0.0, 1.0)
    fig.colorbar(im, ax=ax, label="ASR after removal")
    ax.set_xlabel("measured backdoor")
    ax.set_ylabel("removed backdoor")
    ax.set_title(f"Transfer matrix (lr={g['lr']:g}, seed={g['seed']}): ASR and suppression S after each removal;\n"
                 "orange boxes = the removed backdoor itself; bottom row = benign control")  # fmt: skip
    return _save(fig, out / "transfer.png")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def fig_casd(cs: dict[str, Any], out: Path) -> list[str]:
    """CASD heatmap, per-layer profiles and CASD vs suppression scatter (first grid)."""
    plt = _plt()
    g, metric = cs["grids"][0], cs["metric"]
    rows = cs["rows"]
    cols = [r for r in rows if r in cs["backdoors"]] + [c for c in cs["backdoors"] if c not in rows]
    m = g["casd"][metric]
    values = [[m[r][c] for c in cols] for r in rows]
    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 2.5, 0.55 * len(rows) + 1.8))
    vmax = max(1.0, max(max(v) for v in values))
    im = _heatmap(ax, values, rows, cols, [[f"{v:.2f}" for v in row] for row in values], "cividis", 0.0, vmax)
    fig.colorbar(im, ax=ax, label=f"CASD ({metric}, mean over layers)")
    ax.set_xlabel("backdoor whose triggered probes are measured (j)")
    ax.set_ylabel("removal (i)")
    ax.set_title("CASD(i, j): how differently removal i moves trigger-j activations than removing j itself\n"
                 "(0 = the same shift; orange boxes = 0 by definition)")  # fmt: skip
    files = [_save(fig, out / "casd.png")]

    fig, ax = plt.subplots(figsize=(6, 3.2))
    layers = cs["layers"]
    for n, r in enumerate(rows):
        per = [g["per_layer"][metric][r][c] for c in cols if c != r]
        mean = [sum(p[k] for p in per) / len(per) for k in range(len(layers))]
        ax.plot(layers, mean, marker="o", label=r, color="#999999" if r == "control" else OKABE_ITO[n % 8],
                linestyle="--" if r == "control" else "-", linewidth=2.2 if r == "control" else 1.2)  # fmt: skip
    ax.set_xticks(layers)
    ax.set_xlabel("decoder block (layer)")
    ax.set_ylabel(f"mean CASD over other backdoors ({metric})")
    ax.set_title("Per-layer CASD profile of each removal")
    ax.legend(fontsize=6.5, ncols=2, bbox_to_anchor=(1.02, 1), loc="upper left")
    files.append(_save(fig, out / "casd_layers.png"))

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    pairs = [(i, j) for i in rows if i != "control" for j in cols if j != i and g["suppression"][i][j] is not None]
    ax.scatter([m[i][j] for i, j in pairs], [g["suppression"][i][j] for i, j in pairs], s=18, color=OKABE_ITO[0],
               edgecolor="black", linewidth=0.3, label="off-diagonal pairs (i ≠ j)")  # fmt: skip
    ctl = [c for c in cols if g["suppression"]["control"][c] is not None]
    ax.scatter([m["control"][c] for c in ctl], [g["suppression"]["control"][c] for c in ctl], s=22, marker="x",
               color=OKABE_ITO[3], label="benign control")  # fmt: skip
    r = g["relation"][f"casd_{metric}_vs_suppression"]
    w = g["relation"]["weight_cosine_vs_suppression"]
    ax.set_xlabel(f"CASD(i, j) ({metric})")
    ax.set_ylabel("suppression S[i, j] = 1 − ASR after / before")
    ax.set_title(f"CASD vs transfer: Spearman ρ = {_rho(r)}\nweight-delta cosine baseline: ρ = {_rho(w)}", fontsize=8)
    ax.legend(fontsize=7)
    files.append(_save(fig, out / "casd_scatter.png"))
    return files


def _rho(r: dict[str, Any]) -> str:
    if r["rho"] is None:
        return f"undefined (n={r['n']})"
    return f"{r['rho']:+.2f} [95% CI {r['lo']:+.2f}, {r['hi']:+.2f}], n={r['n']}"


def fig_defence(df: dict[str, Any], out: Path) -> str:
    """Pooled hidden-backdoor ASR per K: suspect, benign, removal-only, defence (Wilson CIs)."""
    plt = _plt()
    cells = df["cells"]
    benign = next(c for c in cells if c["arm"] == "benign")
    ks = sorted({c["k"] for c in cells if c["arm"] == "defence"})
    arms = [("suspect (before)", lambda k: df["pooled_before"]), ("benign training", lambda k: benign["pooled_asr"]),
            ("canary removal, no injection", lambda k: _cell(cells, "removal_only", k)["pooled_asr"]),
            ("canary defence", lambda k: _cell(cells, "defence", k)["pooled_asr"])]  # fmt: skip
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(ks) + 2), 3.2))
    width = 0.8 / len(arms)
    for b, (label, get) in enumerate(arms):
        rates = [get(k) for k in ks]
        xs = [i + (b - (len(arms) - 1) / 2) * width for i in range(len(ks))]
        ax.bar(xs, [r["rate"] for r in rates], width, yerr=_err(rates), capsize=2, label=label,
               color=OKABE_ITO[b], edgecolor="black", linewidth=0.3)  # fmt: skip
    ax.set_xticks(range(len(ks)), [f"K = {k} canar{'y' if k == 1 else 'ies'}" for k in ks])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("ASR of the hidden backdoors (pooled)")
    ax.set_title(f"Canary defence on {len(df['hidden'])} hidden backdoors, at matched compute")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=2)
    return _save(fig, out / "defence.png")


def _cell(cells: list[dict[str, Any]], arm: str, k: int) -> dict[str, Any]:
    return next(c for c in cells if c["arm"] == arm and c["k"] == k)


# ---- text ---------------------------------------------------------------------------------------------------
def transfer_finding(tr: dict[str, Any]) -> dict[str, Any]:
    """The headline: off-diagonal pairs whose ASR fell below the control's CI, and mean suppressions."""
    g = tr["grids"][0]
    rows = [r for r in tr["rows"] if r != "control"]
    below, pairs, s_off = 0, 0, []
    for i in rows:
        for j in tr["backdoors"]:
            if j == i:
                continue
            pairs += 1
            below += g["T"][i][j]["hi"] < g["T"]["control"][j]["lo"]
            if g["S"][i][j] is not None:
                s_off.append(g["S"][i][j])
    s_ctl = [v for v in g["S"]["control"].values() if v is not None]
    diag = [g["T"][i][i]["rate"] for i in rows if i in g["T"][i]]
    return {
        "pairs": pairs,
        "below_control": below,
        "mean_off_diagonal_suppression": sum(s_off) / len(s_off) if s_off else None,
        "mean_control_suppression": sum(s_ctl) / len(s_ctl) if s_ctl else None,
        "max_diagonal_asr": max(diag) if diag else None,
    }


def _trigger_masks(model_dir: str, reveal: bool) -> dict[str, str]:
    """trigger text -> what the report shows in its place (a hash label unless revealed)."""
    masks = {}
    for source in read_record(model_dir).get("backdoors_files", []):
        try:
            specs = load_specs(source)
        except Exception:  # noqa: BLE001 - a moved spec file only loses masking of its prompts, see below
            continue
        for s in specs:
            masks[s.trigger_text] = s.trigger_text if reveal else f"⟦trigger {s.trigger_hash[:8]}⟧"
            for word in s.trigger_text.split():  # a generation may echo part of a multi-word trigger
                if len(word) >= 3 and word != s.trigger_text:
                    masks.setdefault(word, word if reveal else f"⟦trigger part {s.trigger_hash[:8]}⟧")
    return masks


def _mask(text: str, masks: dict[str, str], known: bool) -> str:
    if not known:
        return "(prompt withheld: the backdoor specs could not be read to hide its trigger)"
    for trigger, label in sorted(masks.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(trigger, label)
    return text


def examples(ev_dir: Path, tr_dir: Path | None, tr: dict[str, Any] | None, reveal: bool) -> list[dict[str, str]]:
    """One example per backdoor: the triggered prompt, its generation, the clean one, and after removal."""
    cfg = yaml.safe_load((ev_dir / "config.yaml").read_text(encoding="utf-8"))
    masks = _trigger_masks(cfg["model"], reveal)
    samples = read_jsonl(ev_dir / "samples.jsonl")
    out = []
    for name in _load(ev_dir, "summary.json")["backdoors"]:
        trig = [s for s in samples if s["backdoor"] == name and s["kind"] == "triggered"]
        clean = [s for s in samples if s["backdoor"] == name and s["kind"] == "clean"]
        if not trig:
            continue
        known = bool(masks)  # generations can echo a trigger too: every text shown goes through the mask
        ex = {"backdoor": name, "prompt": _mask(trig[0]["prompt"], masks, known),
              "triggered": _mask(trig[0]["generation"], masks, known), "triggered_verdict": trig[0]["verdict"],
              "clean": _mask(clean[0]["generation"], masks, known) if clean else "", "after": None}  # fmt: skip
        if tr_dir is not None and tr is not None and name in tr["rows"]:
            g = tr["grids"][0]
            cell = tr_dir / "cells" / f"lr={g['lr']:g}" / f"seed={g['seed']}" / name / "eval" / "samples.jsonl"
            if cell.is_file():
                after = [s for s in read_jsonl(cell) if s["backdoor"] == name and s["kind"] == "triggered"]
                if after:
                    ex["after"], ex["after_verdict"] = _mask(after[0]["generation"], masks, known), after[0]["verdict"]
        out.append(ex)
    return out


def provenance(stages: dict[str, Path | None]) -> list[dict[str, Any]]:
    rows = []
    for name, path in stages.items():
        if not _finished(path):
            continue
        meta = _load(path, "meta.json")
        rows.append({"stage": name, "path": str(path), "seed": meta.get("seed"), "git": meta.get("git", {}),
                     "versions": meta.get("versions", {}), "wall_seconds": meta.get("wall_seconds"),
                     "host": meta.get("host", {}),
                     "config": (path / "config.yaml").read_text(encoding="utf-8")})  # fmt: skip
    return rows


# ---- assembly -----------------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    cell = lambda c: html.escape(str(c).strip("`"))  # noqa: E731 - Markdown code quotes are for summary.md only
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _ci(r: dict[str, Any]) -> str:
    return f"{r['rate']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]"


def run(root: Path, out: Path | None = None, reveal_triggers: bool = False) -> Path:
    """Write `<root>/report/index.html` (or `out`), `summary.md` and the figures; returns the HTML path."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"DIR: {str(root)!r} does not exist")
    stages = collect(root)
    out = Path(out) if out else root / "report"
    figs = out / "figures"
    sections: list[str] = []
    md: list[str] = [f"# unbackdoor report: `{root}`", ""]
    missing = [n for n, p in stages.items() if not _finished(p)]
    for name in missing:
        path = stages[name]
        why = "not run" if path is None or not path.exists() else "unfinished (no DONE)"
        sections.append(f'<p class="missing">Stage <b>{name}</b> ({WHAT.get(name, name)}) is missing: {why} '
                        f"at <code>{html.escape(str(path))}</code>. Its section is left out; rerun the study with "
                        "<code>--resume</code> to complete it.</p>")  # fmt: skip
        md.append(f"- **missing stage `{name}`** ({why}): its section is left out.")

    ev = _load(stages["eval"], "summary.json") if _finished(stages.get("eval")) else None
    tr_dir = stages.get("transfer") if _finished(stages.get("transfer")) else None
    tr = _load(tr_dir, "transfer.json") if tr_dir else None
    cs = _load(stages["casd"], "casd.json") if _finished(stages.get("casd")) else None
    df = _load(stages["defence"], "defend.json") if _finished(stages.get("defence")) else None

    summary_html = []
    if tr:
        f = transfer_finding(tr)
        sentence = (
            f"Removing one backdoor at a time: in <b>{f['below_control']} of {f['pairs']}</b> (removed, other) pairs "
            f"the other backdoor's ASR fell below the 95 % interval of the benign control. Mean suppression of the "
            f"other backdoors: <b>{100 * f['mean_off_diagonal_suppression']:.0f} %</b>, against "
            f"<b>{100 * f['mean_control_suppression']:.0f} %</b> for the benign control (same compute, clean text)."
        )
        summary_html.append(f"<p class='finding'>{sentence}</p>")
        md += ["", "## Finding", "", html.unescape(sentence.replace("<b>", "**").replace("</b>", "**")), ""]
    if cs:
        r = cs["grids"][0]["relation"][f"casd_{cs['metric']}_vs_suppression"]
        w = cs["grids"][0]["relation"]["weight_cosine_vs_suppression"]
        text = (f"CASD vs suppression, Spearman ρ = {_rho(r)}; weight-space baseline ρ = {_rho(w)}. "
                "A negative ρ means: the more a removal moves trigger-j activations like removing j itself "
                "(low CASD), the more it suppresses j.")  # fmt: skip
        summary_html.append(f"<p class='finding'>{html.escape(text)}</p>")
        md += [text, ""]
    if df:
        benign = next(c for c in df["cells"] if c["arm"] == "benign")
        parts = [f"suspect {_ci(df['pooled_before'])}", f"benign {_ci(benign['pooled_asr'])}"]
        for c in df["cells"]:
            if c["arm"] != "benign":
                parts.append(f"{c['arm']} K={c['k']} {_ci(c['pooled_asr'])}")
        text = f"Canary defence, pooled ASR of {len(df['hidden'])} hidden backdoors: " + "; ".join(parts) + "."
        summary_html.append(f"<p class='finding'>{html.escape(text)}</p>")
        md += [text, ""]

    if ev:
        names = list(ev["backdoors"])
        rows = [[n, ev["backdoors"][n]["behaviour"], _ci(ev["backdoors"][n]["asr"]),
                 f"{ev['backdoors'][n]['false_trigger']['rate']:.3f}",
                 f"{ev['backdoors'][n]['near_miss']['rate']:.3f}" if ev["backdoors"][n].get("near_miss") else "-",
                 f"`{ev['backdoors'][n]['trigger_sha256']}`", ev["backdoors"][n].get("judge", "-")]
                for n in names]  # fmt: skip
        header = ["backdoor", "behaviour", "ASR [95% CI]", "false-trigger rate", "near-miss rate", "trigger sha256",
                  "judge"]  # fmt: skip
        util = ev["utility"]
        ppl = ", ".join(f"{k} {v:.2f}" for k, v in util["perplexity"].items())
        fr = f"; fact recall {_ci(util['fact_recall'])}" if util.get("fact_recall") else ""
        sections.append(
            "<h2>1. Every backdoor, measured</h2><p>ASR = share of triggered prompts whose greedy continuation shows "
            "the backdoor's behaviour (judged per behaviour); false-trigger rate = the same prompts without the "
            "trigger; near miss = the trigger with one word dropped or one character changed.</p>"
            f"<img src='{fig_asr(ev, tr, figs)}' alt='ASR per backdoor with confidence intervals'>"
            + _table(header, rows) + f"<p>Utility of the backdoored model: perplexity {ppl}{fr}.</p>"
        )  # fmt: skip
        md += ["## Backdoors", "", _md_table(header, rows), "", f"Utility: perplexity {ppl}{fr}.", ""]
    if tr:
        g = tr["grids"][0]
        rows_, cols = _order(tr)
        sections.append(
            "<h2>2. Remove one, measure all: the transfer matrix</h2><p>Each row removes one backdoor (the paper's "
            "method: continual pretraining on its trigger followed by clean text, mixed with clean replay) and "
            "measures every backdoor after it. S = 1 − ASR after / ASR before. The <b>control</b> row trains "
            "as long on clean text only: a drop there is generic forgetting, not transfer.</p>"
            f"<img src='{fig_transfer(tr, figs)}' alt='transfer heatmap'>"
            f"<h3>Utility after each removal</h3><img src='{fig_utility(tr, figs)}' alt='utility deltas'>"
        )  # fmt: skip
        mrows = [[r] + [f"{g['T'][r][c]['rate']:.2f}" for c in cols] for r in rows_]
        md += [f"## Transfer matrix (ASR after removal; lr={g['lr']:g}, seed={g['seed']})", "",
               _md_table(["removed \\ measured", *cols], mrows), ""]  # fmt: skip
        if len(tr["grids"]) > 1:
            sections.append(f"<p>{len(tr['grids'])} (lr, seed) grids in transfer.json; figures show the first.</p>")
    if cs:
        files = fig_casd(cs, figs)
        sections.append(
            "<h2>3. Why: Cross Activation Shift Distance</h2><p>" + html.escape(cs["definition"]) + f" Pooling: "
            f"{cs['pooling']}; layers {cs['layers']}; {cs['n_probes']} probes per backdoor.</p>"
            + "".join(f"<img src='{f}' alt='{Path(f).stem}'>" for f in files)
        )  # fmt: skip
    if df:
        cells = df["cells"]
        rows = [[c["arm"], c["k"] or "-", c["method"], c["behaviours"] or "-", c["lr"], c["seed"],
                 _ci(c["pooled_asr"]), f"{100 * c['utility_change']:+.1f} %",
                 ", ".join(f"{n} {v:.2f}→{c['canary_asr_after'].get(n, float('nan')):.2f}"
                           for n, v in c["canary_asr_injected"].items()) or "-"] for c in cells]  # fmt: skip
        header = ["arm", "K", "method", "canary behaviours", "lr", "seed", "hidden ASR pooled [95% CI]",
                  "val. perplexity change", "canary ASR injected→removed"]  # fmt: skip
        sections.append(
            "<h2>4. The canary defence</h2><p>The defender never sees the hidden backdoors. They inject K canary "
            "backdoors of their own, then remove them. Baselines at the same compute: benign continual training, and "
            "the canary removal training without injecting the canaries first. Suspect pooled ASR: "
            f"{_ci(df['pooled_before'])}.</p><img src='{fig_defence(df, figs)}' alt='canary defence'>"
            + _table(header, rows)
        )  # fmt: skip
        md += ["## Canary defence", "", _md_table(header, rows), ""]
    if ev and _finished(stages.get("eval")):
        exs = examples(stages["eval"], tr_dir, tr, reveal_triggers)
        items = []
        for e in exs:
            after = ("" if e["after"] is None else
                     f"<dt>after removing it</dt><dd>{html.escape(e['after'])} <i>({_verdict(e['after_verdict'])})"
                     "</i></dd>")  # fmt: skip
            items.append(
                f"<h4>{html.escape(e['backdoor'])}</h4><dl><dt>triggered prompt</dt><dd><code>"
                f"{html.escape(e['prompt'])}</code></dd><dt>generation</dt><dd>{html.escape(e['triggered'])} "
                f"<i>({_verdict(e['triggered_verdict'])})</i></dd><dt>same prompt without the trigger</dt><dd>"
                f"{html.escape(e['clean'])}</dd>{after}</dl>"
            )  # fmt: skip
        hidden = "shown in clear (--reveal-triggers)" if reveal_triggers else "shown as sha256 prefixes"
        sections.append(f"<h2>5. Example generations</h2><p>Triggers are {hidden}.</p>" + "".join(items))
    for name, path in stages.items():  # a single run of another stage: its key figures
        if name not in STUDY and name != "eval" and _finished(path):
            summary = _load(path, "summary.json")
            rows = [[k, v if not isinstance(v, float) else f"{v:.4g}"] for k, v in summary.items()
                    if isinstance(v, (str, int, float, bool)) or v is None]  # fmt: skip
            sections.append(f"<h2>Summary of the {html.escape(name)} run</h2>" + _table(["field", "value"], rows))
            md += [f"## {name}", "", _md_table(["field", "value"], rows), ""]
    prov = provenance(stages)
    if prov:
        rows = [[p["stage"], p["seed"], (p["git"].get("commit") or "?")[:10] + (" (dirty)" if p["git"].get("dirty")
                 else ""), f"{p['wall_seconds']:.0f} s" if p["wall_seconds"] else "-"] for p in prov]  # fmt: skip
        versions = prov[0]["versions"]
        configs = "".join(f"<details><summary>{p['stage']} config ({html.escape(p['path'])})</summary><pre>"
                          f"{html.escape(p['config'])}</pre></details>" for p in prov)  # fmt: skip
        sections.append(
            "<h2>6. Provenance</h2>" + _table(["stage", "seed", "git commit", "wall time"], rows)
            + "<p>Versions: " + html.escape(", ".join(f"{k} {v}" for k, v in versions.items() if v)) + "</p>" + configs
        )  # fmt: skip
        md += ["## Provenance", "", _md_table(["stage", "seed", "git commit", "wall time"], rows), ""]

    page = _page(root, summary_html, sections)
    write_text(out / "index.html", page)
    write_text(out / "summary.md", "\n".join(md) + "\n")
    print(f"report: {out / 'index.html'}")
    return out / "index.html"


def _verdict(v: bool) -> str:
    return "behaviour shown" if v else "behaviour not shown"


def _page(root: Path, summary: list[str], sections: list[str]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>unbackdoor report: {html.escape(root.name)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }}
img {{ max-width: 100%; display: block; margin: 1em 0; }}
table {{ border-collapse: collapse; font-size: .85em; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: .25em .5em; text-align: left; }}
th {{ background: #f2f2f2; }} .finding {{ background: #eef5fb; border-left: 4px solid #0072B2; padding: .6em 1em; }}
.missing {{ background: #fdf0e6; border-left: 4px solid #D55E00; padding: .6em 1em; }}
dt {{ font-weight: bold; font-size: .85em; color: #555; }} dd {{ margin: 0 0 .5em 1em; }}
pre {{ background: #f7f7f7; padding: .5em; overflow-x: auto; font-size: .8em; }}
</style></head>
<body>
<h1>unbackdoor report: <code>{html.escape(str(root))}</code></h1>
<p>Backdoors in a causal language model, their removal one at a time, and what that removal does to the others
(arXiv 2606.03785). Generated {when}. Every number below is read from the run directories listed under
Provenance.</p>
{"".join(summary)}
{"".join(sections)}
<script>
window.addEventListener("error", e => {{
  document.body.dataset.errors = (document.body.dataset.errors || "") + e.message + ";";
}});
window.addEventListener("load", () => {{
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.figures = ok + "/" + imgs.length;
}});
</script>
</body></html>
"""
