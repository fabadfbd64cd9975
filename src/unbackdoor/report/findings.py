"""What the report says: pure functions from run-directory JSON (as dicts) to numbers, sentences and table rows.

Nothing here reads a file or draws: `transfer.json`, `casd.json`, `defend.json`, an evaluation's `summary.json`
and its `samples.jsonl` rows come in as Python objects, strings and lists go out. Sentences mark bold text the
Markdown way (`**...**`); the page turns that into HTML.

Run: `pytest tests/unit/test_findings.py`.
"""

from __future__ import annotations

from typing import Any

from unbackdoor.running.cells import CONTROL

Rows = list[list[Any]]


# ---- formatting ---------------------------------------------------------------------------------------------
def ci(rate: dict[str, Any]) -> str:
    """A rate with its interval: `0.50 [0.40, 0.60]`."""
    return f"{rate['rate']:.2f} [{rate['lo']:.2f}, {rate['hi']:.2f}]"


def rho(relation: dict[str, Any]) -> str:
    """A Spearman correlation with its bootstrap interval and pair count (or why it is undefined)."""
    if relation["rho"] is None:
        return f"undefined (n={relation['n']})"
    return f"{relation['rho']:+.2f} [95% CI {relation['lo']:+.2f}, {relation['hi']:+.2f}], n={relation['n']}"


def column_order(rows: list[str], backdoors: list[str]) -> list[str]:
    """Measured backdoors in the order of the removal rows (then any not removed), so the diagonal is a diagonal."""
    return [r for r in rows if r in backdoors] + [c for c in backdoors if c not in rows]


def _percent(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


# ---- headline sentences -------------------------------------------------------------------------------------
def transfer_finding(tr: dict[str, Any]) -> dict[str, Any]:
    """The headline of a transfer experiment (first grid).

    Args:
        tr: `transfer.json`.

    Returns:
        `pairs` (removed i, measured j != i), `below_control` (pairs whose ASR interval lies wholly below the
        benign control's), the mean suppression off the diagonal and in the control row (None when undefined),
        and the highest ASR left on the diagonal.
    """
    g = tr["grids"][0]
    rows = [r for r in tr["rows"] if r != CONTROL]
    below, pairs, s_off = 0, 0, []
    for i in rows:
        for j in tr["backdoors"]:
            if j == i:
                continue
            pairs += 1
            below += g["T"][i][j]["hi"] < g["T"][CONTROL][j]["lo"]
            if g["S"][i][j] is not None:
                s_off.append(g["S"][i][j])
    s_ctl = [v for v in g["S"][CONTROL].values() if v is not None]
    diag = [g["T"][i][i]["rate"] for i in rows if i in g["T"][i]]
    return {
        "pairs": pairs,
        "below_control": below,
        "mean_off_diagonal_suppression": sum(s_off) / len(s_off) if s_off else None,
        "mean_control_suppression": sum(s_ctl) / len(s_ctl) if s_ctl else None,
        "max_diagonal_asr": max(diag) if diag else None,
    }


def transfer_sentence(finding: dict[str, Any]) -> str:
    """The transfer headline as a sentence (from `transfer_finding`)."""
    return (
        f"Removing one backdoor at a time: in **{finding['below_control']} of {finding['pairs']}** (removed, other) "
        "pairs the other backdoor's ASR fell below the 95 % interval of the benign control. Mean suppression of the "
        f"other backdoors: **{_percent(finding['mean_off_diagonal_suppression'])}**, against "
        f"**{_percent(finding['mean_control_suppression'])}** for the benign control (same compute, clean text)."
    )


def casd_sentence(cs: dict[str, Any]) -> str:
    """CASD against suppression, and the weight-space baseline, as a sentence (first grid of `casd.json`)."""
    relation = cs["grids"][0]["relation"]
    r, w = relation[f"casd_{cs['metric']}_vs_suppression"], relation["weight_cosine_vs_suppression"]
    return (
        f"CASD vs suppression, Spearman ρ = {rho(r)}; weight-space baseline ρ = {rho(w)}. A negative ρ means: the "
        "more a removal moves trigger-j activations like removing j itself (low CASD), the more it suppresses j."
    )


def defence_sentence(df: dict[str, Any]) -> str:
    """Pooled hidden-backdoor ASR of every arm of a canary-defence study (`defend.json`) as a sentence."""
    benign = next(c for c in df["cells"] if c["arm"] == "benign")
    parts = [f"suspect {ci(df['pooled_before'])}", f"benign {ci(benign['pooled_asr'])}"]
    parts += [f"{c['arm']} K={c['k']} {ci(c['pooled_asr'])}" for c in df["cells"] if c["arm"] != "benign"]
    return f"Canary defence, pooled ASR of {len(df['hidden'])} hidden backdoors: " + "; ".join(parts) + "."


def headlines(tr: dict[str, Any] | None, cs: dict[str, Any] | None, df: dict[str, Any] | None) -> dict[str, str]:
    """The sentences at the top of the report, by stage (`transfer`, `casd`, `defence`), for those present."""
    out = {}
    if tr:
        out["transfer"] = transfer_sentence(transfer_finding(tr))
    if cs:
        out["casd"] = casd_sentence(cs)
    if df:
        out["defence"] = defence_sentence(df)
    return out


# ---- tables -------------------------------------------------------------------------------------------------
BACKDOOR_HEADER = ["backdoor", "behaviour", "ASR [95% CI]", "false-trigger rate", "near-miss rate", "trigger sha256",
                   "judge"]  # fmt: skip
DEFENCE_HEADER = ["arm", "K", "method", "canary behaviours", "lr", "seed", "hidden ASR pooled [95% CI]",
                  "val. perplexity change", "canary ASR injected→removed"]  # fmt: skip
PROVENANCE_HEADER = ["stage", "seed", "git commit", "wall time"]


def backdoor_rows(ev: dict[str, Any]) -> Rows:
    """One row per backdoor of an evaluation's `summary.json` (see `BACKDOOR_HEADER`)."""
    rows = []
    for name, b in ev["backdoors"].items():
        near = f"{b['near_miss']['rate']:.3f}" if b.get("near_miss") else "-"
        rows.append([name, b["behaviour"], ci(b["asr"]), f"{b['false_trigger']['rate']:.3f}", near,
                     f"`{b['trigger_sha256']}`", b.get("judge", "-")])  # fmt: skip
    return rows


def utility_text(ev: dict[str, Any]) -> str:
    """The evaluated model's utility: `perplexity en 12.30, de 15.10; fact recall 0.40 [0.30, 0.50]`."""
    util = ev["utility"]
    ppl = ", ".join(f"{k} {v:.2f}" for k, v in util["perplexity"].items())
    return f"perplexity {ppl}" + (f"; fact recall {ci(util['fact_recall'])}" if util.get("fact_recall") else "")


def transfer_rows(tr: dict[str, Any]) -> tuple[list[str], Rows]:
    """The transfer matrix (first grid) as a header and rows of ASR after removal, diagonal on the diagonal."""
    g = tr["grids"][0]
    cols = column_order(tr["rows"], tr["backdoors"])
    return ["removed \\ measured", *cols], [[r] + [f"{g['T'][r][c]['rate']:.2f}" for c in cols] for r in tr["rows"]]


def defence_rows(df: dict[str, Any]) -> Rows:
    """One row per cell of a canary-defence study (see `DEFENCE_HEADER`)."""
    rows = []
    for c in df["cells"]:
        canaries = ", ".join(f"{n} {v:.2f}→{c['canary_asr_after'].get(n, float('nan')):.2f}"
                             for n, v in c["canary_asr_injected"].items())  # fmt: skip
        rows.append([c["arm"], c["k"] or "-", c["method"], c["behaviours"] or "-", c["lr"], c["seed"],
                     ci(c["pooled_asr"]), f"{100 * c['utility_change']:+.1f} %", canaries or "-"])  # fmt: skip
    return rows


def summary_rows(summary: dict[str, Any]) -> Rows:
    """The scalar fields of a stage's `summary.json` as (field, value) rows; floats to 4 significant digits."""
    return [[k, f"{v:.4g}" if isinstance(v, float) else v] for k, v in summary.items()
            if isinstance(v, (str, int, float, bool)) or v is None]  # fmt: skip


def provenance_rows(provenance: list[dict[str, Any]]) -> Rows:
    """Stage, seed, git commit (10 characters, `(dirty)` when so) and wall time of each finished stage."""
    rows = []
    for p in provenance:
        commit = (p["git"].get("commit") or "?")[:10] + (" (dirty)" if p["git"].get("dirty") else "")
        rows.append([p["stage"], p["seed"], commit, f"{p['wall_seconds']:.0f} s" if p["wall_seconds"] else "-"])
    return rows


# ---- example generations ------------------------------------------------------------------------------------
WITHHELD = "(prompt withheld: the backdoor specs could not be read to hide its trigger)"


def trigger_masks(specs: list[Any], reveal: bool) -> dict[str, str]:
    """Trigger text (and each of its words of 3+ characters) -> what the report shows in its place.

    Args:
        specs: `BackdoorSpec`s (anything with `trigger_text` and `trigger_hash`).
        reveal: show triggers in clear instead of `⟦trigger <hash prefix>⟧`.
    """
    masks: dict[str, str] = {}
    for s in specs:
        masks[s.trigger_text] = s.trigger_text if reveal else f"⟦trigger {s.trigger_hash[:8]}⟧"
        for word in s.trigger_text.split():  # a generation may echo part of a multi-word trigger
            if len(word) >= 3 and word != s.trigger_text:
                masks.setdefault(word, word if reveal else f"⟦trigger part {s.trigger_hash[:8]}⟧")
    return masks


def mask(text: str, masks: dict[str, str]) -> str:
    """`text` with every trigger (longest first) replaced by its label; withheld when no trigger is known."""
    if not masks:
        return WITHHELD
    for trigger, label in sorted(masks.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(trigger, label)
    return text


def first_sample(samples: list[dict[str, Any]], backdoor: str, kind: str) -> dict[str, Any] | None:
    """The first `samples.jsonl` row of one backdoor and kind (`triggered` or `clean`), or None."""
    return next((s for s in samples if s["backdoor"] == backdoor and s["kind"] == kind), None)


def example(samples: list[dict[str, Any]], backdoor: str, masks: dict[str, str],
            after: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:  # fmt: skip
    """One example generation of a backdoor, every text shown through `mask` (generations can echo a trigger).

    Args:
        samples: the evaluation's `samples.jsonl` rows.
        backdoor: its name.
        masks: from `trigger_masks`.
        after: the rows of the evaluation after removing this backdoor, if there is one.

    Returns:
        The triggered prompt, its generation and verdict, the clean generation, and the generation after
        removal (`after` None when not measured); None when the backdoor has no triggered sample.
    """
    trig, clean = first_sample(samples, backdoor, "triggered"), first_sample(samples, backdoor, "clean")
    if trig is None:
        return None
    ex = {"backdoor": backdoor, "prompt": mask(trig["prompt"], masks), "triggered": mask(trig["generation"], masks),
          "triggered_verdict": trig["verdict"], "clean": mask(clean["generation"], masks) if clean else "",
          "after": None}  # fmt: skip
    removed = first_sample(after or [], backdoor, "triggered")
    if removed is not None:
        ex["after"], ex["after_verdict"] = mask(removed["generation"], masks), removed["verdict"]
    return ex
