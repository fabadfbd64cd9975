"""The persistence stage in the report (`relearn.json`): does a suppressed backdoor come back? Numbers, sentences
and table rows (pure, like `findings`) and the re-emergence figure.

Run: `pytest tests/unit/test_findings.py tests/integration/test_report.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unbackdoor.measure.stats import ONE_REPLICATE, Q_LEVEL
from unbackdoor.report.findings import Rows, mean
from unbackdoor.report.plot import OKABE_ITO, plt, save

# the curves' kinds (stages.relearn); a defended model's curves are named after it (`defended-<arm>`)
RELATIONS = ("direct", "transfer", "defended-defence", "defended-removal_only", "defended-benign", "backdoored",
             "fresh", "twin")  # fmt: skip
LABELS = {
    "direct": "removed directly (row i, backdoor i)",
    "transfer": "suppressed by transfer (row i, backdoor j)",
    "defended-defence": "after the canary defence (hidden backdoor j)",
    "defended-removal_only": "after removing never-injected canaries (hidden j)",
    "defended-benign": "after the defence's benign arm (hidden j)",
    "backdoored": "never removed (theta_0)",
    "fresh": "fresh backdoor of the same spec (new trigger)",
    "twin": "never-backdoored twin",
}


def _groups(rl: dict[str, Any]) -> list[tuple[str, int]]:
    """(stress, k) panels in the order of the run's stresses."""
    seen = dict.fromkeys((c["stress"], c["k"]) for c in rl["curves"])
    order = {s: n for n, s in enumerate(rl["stresses"])}
    return sorted(seen, key=lambda g: (order.get(g[0], 99), g[1]))


def _title(stress: str, k: int) -> str:
    return stress if not k else f"{stress}, {k} document{'s' if k > 1 else ''}"


def curve_rows(rl: dict[str, Any]) -> Rows:
    """Per (stress, k) and relation: curves, mean ASR at step 0 and at the last snapshot, mean R at the last."""
    rows = []
    last = rl["snapshots"][-1]
    for stress, k in _groups(rl):
        for rel in RELATIONS:
            cs = [c for c in rl["curves"] if c["stress"] == stress and c["k"] == k and c["relation"] == rel]
            if not cs:
                continue
            start = mean(c["points"][0]["asr"]["rate"] for c in cs)
            end = mean(c["points"][-1]["asr"]["rate"] for c in cs)
            r = mean(c["points"][-1]["R"] for c in cs)
            rows.append([_title(stress, k), LABELS[rel], len(cs), f"{start:.2f}", f"{end:.2f} (step {last})",
                         "n/a" if r is None else f"{r:+.2f}"])  # fmt: skip
    return rows


CURVE_HEADER = ["stress", "curves", "n", "mean ASR at step 0", "mean ASR at the end", "mean R at the end"]
COMPARISON_HEADER = ["pair (removed → measured)", "stress", "ASR at the end: transfer", "direct removal of j",
                     "paired test (back / less, p)", "fresh backdoor", "Fisher p"]  # fmt: skip


def comparison_rows(rl: dict[str, Any]) -> Rows:
    rows = []
    for c in rl["comparisons"]:
        d, f = c.get("vs_direct"), c.get("vs_fresh")
        rows.append([f"{c['pair'][0]} → {c['pair'][1]}", _title(c["stress"], c["k"]), _num(c["asr"]),
                     _num(c["direct_asr"]), "-" if d is None else f"{d['back']} / {d['less']}, p={d['p']:.2g}",
                     _num(c.get("fresh_asr")), "-" if f is None else f"{f['p']:.2g}"])  # fmt: skip
    return rows


DEFENCE_HEADER = ["hidden backdoor", "stress", "ASR at step 0", "ASR at the end: after the defence",
                  "direct removal of j", "paired test (back / less, p)", "removal-only arm", "benign arm"]  # fmt: skip


def defence_rows(rl: dict[str, Any]) -> Rows:
    """Per hidden backdoor the defence suppressed, and stress: the defence arm's model against j's direct removal."""
    rows = []
    for c in rl.get("defence_comparisons", []):
        d = c.get("vs_direct")
        rows.append([c["backdoor"], _title(c["stress"], c["k"]), _num(c["asr_start"]), _num(c["asr"]),
                     _num(c["direct_asr"]), "-" if d is None else f"{d['back']} / {d['less']}, p={d['p']:.2g}",
                     _num(c.get("removal_only_asr")), _num(c.get("benign_asr"))])  # fmt: skip
    return rows


def defence_sentence(rl: dict[str, Any]) -> str:
    """What persistence says about the canary defence: which hidden backdoors it suppressed, and whether they come
    back faster than after their own direct removal."""
    d = rl.get("defence")
    if not d:
        return ""
    text = (f"After the canary defence: it suppressed {len(d['suppressed'])} of {len(d['hidden'])} hidden backdoors "
            f"(ASR cut by half or more){': ' + ', '.join(d['suppressed']) if d['suppressed'] else ''}.")  # fmt: skip
    if d.get("informative") is False:
        text += " The defence ran at a budget where benign training alone erased them: its suppression is no evidence."
    cmp = [c for c in rl.get("defence_comparisons", []) if c.get("vs_direct")]
    if cmp:
        more = sum(c["vs_direct"]["p"] < Q_LEVEL and c["vs_direct"]["back"] > c["vs_direct"]["less"] for c in cmp)
        less = sum(c["vs_direct"]["p"] < Q_LEVEL and c["vs_direct"]["back"] < c["vs_direct"]["less"] for c in cmp)
        text += (f" Against the direct removal of the same backdoor (same prompts, p < {Q_LEVEL}): **{more} of "
                 f"{len(cmp)}** (backdoor, stress) comparisons came back more after the defence, "
                 f"{less} less.")  # fmt: skip
    elif d["followed"]:
        text += " No direct removal of these backdoors was followed to compare with."
    return text


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def persistence_sentence(rl: dict[str, Any]) -> str:
    """The answer the report gives, per stress: direct removals against the references, and per transfer pair
    whether it comes back faster than after a direct removal and than a fresh backdoor is learned."""
    last = rl["snapshots"][-1]
    parts = []
    for stress, k in _groups(rl):
        here = [c for c in rl["curves"] if c["stress"] == stress and c["k"] == k]
        end = {rel: mean(c["points"][-1]["asr"]["rate"] for c in here if c["relation"] == rel) for rel in RELATIONS}
        said = ", ".join(f"{LABELS[r].split(' (')[0]} {v:.2f}" for r, v in end.items() if v is not None)
        parts.append(f"{_title(stress, k)}: mean ASR after {last} steps: {said}")
    text = "; ".join(parts) + "."
    cmp = [c for c in rl["comparisons"] if c.get("vs_direct")]
    if not rl["pairs"]:
        text += " No transfer pair was followed (none transferred at q < 0.05, and none was named)."
    elif cmp:
        faster = sum(c["vs_direct"]["p"] < Q_LEVEL and c["vs_direct"]["back"] > c["vs_direct"]["less"] for c in cmp)
        slower = sum(c["vs_direct"]["p"] < Q_LEVEL and c["vs_direct"]["back"] < c["vs_direct"]["less"] for c in cmp)
        fresh = [c for c in rl["comparisons"] if c.get("vs_fresh")]
        beyond = sum(c["vs_fresh"]["p"] < Q_LEVEL and c["asr"] > c["fresh_asr"] for c in fresh)
        text += (f" Suppressed by transfer against removed directly (same prompts, p < {Q_LEVEL}): **{faster} of "
                 f"{len(cmp)}** (pair, stress) comparisons came back more, {slower} less; against a fresh "
                 f"backdoor learned from the same documents: {beyond} of {len(fresh)} higher.")  # fmt: skip
    return text + f" {ONE_REPLICATE}; step 0 is the model the transfer left."


def fig_relearn(rl: dict[str, Any], out: Path) -> str:
    """One panel per (stress, k): ASR against training steps, a thin line per curve and the mean per relation."""
    pyplot = plt()
    groups = _groups(rl)
    ncols = min(3, len(groups))
    nrows = -(-len(groups) // ncols)
    fig, axes = pyplot.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.1 * nrows + 0.6), sharey=True, squeeze=False)
    colours = dict(zip(RELATIONS, OKABE_ITO, strict=False))
    for ax, (stress, k) in zip(axes.flat, groups, strict=False):
        for rel in RELATIONS:
            cs = [c for c in rl["curves"] if c["stress"] == stress and c["k"] == k and c["relation"] == rel]
            if not cs:
                continue
            steps = [p["step"] for p in cs[0]["points"]]
            for c in cs:
                ax.plot(steps, [p["asr"]["rate"] for p in c["points"]], color=colours[rel], alpha=0.25, linewidth=0.8)
            means = [mean(c["points"][n]["asr"]["rate"] for c in cs) for n in range(len(steps))]
            ax.plot(steps, means, color=colours[rel], linewidth=2.2, marker="o", markersize=3,
                    label=f"{LABELS[rel]} (n={len(cs)})")  # fmt: skip
        ax.set_title(_title(stress, k), fontsize=9)
        ax.set_xlabel("training steps after the removal", fontsize=8)
        ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize=6)
    for ax in axes.flat[len(groups) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("ASR (target outcomes)", fontsize=8)
    fig.suptitle("Re-emergence: ASR against steps of each stress (thin: one curve; thick: mean per kind)", fontsize=9)
    return save(fig, out / "relearn.png")
