"""What the report says about a transfer experiment, its masked-loss ablation, CASD and the canary defence: pure
functions from run-directory JSON (as dicts) to numbers, sentences and table rows (`evaluation` does the same for
an evaluation and its example generations).

Nothing here reads a file or draws: `transfer.json`, `casd.json` and `defend.json` come in as Python objects,
strings and lists go out. Sentences mark bold text the Markdown way (`**...**`); the page turns that into HTML.
Removal is what the clean-continuation rate C and the removal index R say (`measure.outcomes`); the ASR and the
judge-based suppression S only say that the backdoor's own judge no longer fires, and are labelled so.

Run: `pytest tests/unit/test_findings.py`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from unbackdoor.measure.outcomes import (
    OPENING_TOKENS,
    OPENING_UNTRIGGERED_MAX,
    OUTCOMES,
    REMOVED_MIN,
    REMOVED_TARGET_MAX,
    STEREOTYPED_MIN,
    STEREOTYPED_SHARE,
    removal_verdict,
    stereotyped_cell,
)
from unbackdoor.measure.stats import ONE_REPLICATE, Q_LEVEL, format_mean_ci
from unbackdoor.running.cells import CONTROL, REFERENCE_ROWS, SHAM

Rows = list[list[Any]]
NOT_MEASURED = "not measured"
# A backdoor whose triggered ASR before any removal is below this was never really learned: headline figures leave it
# out (as removal target and as the other backdoor) and say so; the matrices still show it.
PRESENT_MIN = 0.5  # a cell a transfer with measure=diagonal did not evaluate


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


def percent(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


def signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the defined values (None when there is none)."""
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def has_outcomes(tr: dict[str, Any]) -> bool:
    """Whether a transfer.json has clean rates and outcome classes (older ones have only ASR and S)."""
    return "C" in tr["grids"][0]


def measured(tr: dict[str, Any], i: str, j: str) -> bool:
    """Whether cell (i, j) was measured (every one is, unless the transfer ran with measure=diagonal)."""
    return j in tr["grids"][0]["T"].get(i, {})


def with_grids(tr: dict[str, Any], other: dict[str, Any] | None) -> dict[str, Any] | None:
    """`tr` with the grids of `other` (the demo's diagonal at other learning rates) appended, when both were
    measured on the same prompts and `other`'s rows are among `tr`'s; None when they cannot be combined."""
    if other is None or other["probe_sha256"] != tr["probe_sha256"] or not set(other["rows"]) <= set(tr["rows"]):
        return None
    return {**tr, "grids": tr["grids"] + other["grids"]}


def pairs(tr: dict[str, Any]) -> list[tuple[str, str]]:
    """The measured off-diagonal (removal target i, measured j != i) pairs, i not a reference row."""
    return [(i, j) for i in tr["rows"] if i not in REFERENCE_ROWS for j in tr["backdoors"]
            if j != i and measured(tr, i, j)]  # fmt: skip


def diagonal(tr: dict[str, Any]) -> list[str]:
    return [i for i in tr["rows"] if i not in REFERENCE_ROWS and i in tr["backdoors"] and measured(tr, i, i)]


def _rate(x: Any) -> float:
    return x["rate"] if isinstance(x, dict) else x


# ---- the transfer headline ----------------------------------------------------------------------------------
def transfer_finding(tr: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a transfer experiment (first grid).

    Returns:
        `pairs` (i, j != i), `grids`; from the clean rates (when `outcomes`): `cleaner_than_control` (pairs whose
        C interval lies wholly above the control's), the mean R off the diagonal, of the control row and on the
        diagonal, the diagonal's `removal_verdict`s (`diagonal_verdicts`, `diagonal_passed`) and the classes of the
        off-diagonal generations without the target (`off_diagonal_non_target`, counts); judge-based:
        `below_control` (ASR interval wholly below the control's), the mean S off the diagonal and of the control,
        and the highest ASR left on the diagonal.
    """
    g = tr["grids"][0]
    before = {j: _rate(x) for j, x in tr.get("asr_before", {}).items()}
    left_out = {j: rate for j, rate in before.items() if rate < PRESENT_MIN}  # barely there: nothing to transfer
    off = [(i, j) for i, j in pairs(tr) if i not in left_out and j not in left_out]
    diag = [i for i in diagonal(tr) if i not in left_out]
    present = [j for j in tr["backdoors"] if j not in left_out]

    def significant(tests: dict[str, Any] | None, count: int | None) -> int | None:
        """Pairs at q < 0.05 among those kept (`count`, the transfer's own, when it has no per-pair tests)."""
        if tests is None or count is None:
            return count
        return sum(tests[i][j]["q"] < Q_LEVEL for i, j in off if j in tests.get(i, {}))

    f: dict[str, Any] = {
        "pairs": len(off),
        "grids": len(tr["grids"]),
        "outcomes": has_outcomes(tr),
        "left_out": left_out,
        "below_control": sum(g["T"][i][j]["hi"] < g["T"][CONTROL][j]["lo"] for i, j in off),
        "mean_off_diagonal_suppression": mean(g["S"][i][j] for i, j in off),
        "mean_control_suppression": mean(g["S"][CONTROL].get(j) for j in present),
        "max_diagonal_asr": max((g["T"][i][i]["rate"] for i in diag), default=None),
        "transfers_q05": significant(g.get("tests"), g.get("transfers_q05")),  # paired tests against the control
        "transfers_q05_sham": significant(g.get("tests_sham"), g.get("transfers_q05_sham")),  # against the sham
        "mean_sham_r": mean(g["R"][SHAM].get(j) for j in present) if SHAM in g.get("R", {}) else None,
    }
    if not f["outcomes"]:
        return f
    f.update(stereotyped_finding(g, off, diag, present))
    verdicts = Counter(removal_verdict(g["composition"][i][i], _rate(tr["clean_before"][i]))[0] for i in diag)
    rest = Counter()
    for i, j in off:
        rest.update({c: k for c, k in g["composition"][i][j].items() if c != "target"})
    f.update({
        "cleaner_than_control": sum(g["C"][i][j]["lo"] > g["C"][CONTROL][j]["hi"] for i, j in off),
        "mean_off_diagonal_r": mean(g["R"][i][j] for i, j in off),
        "mean_control_r": mean(g["R"][CONTROL].get(j) for j in present),
        "mean_diagonal_r": mean(g["R"][i][i] for i in diag),
        "diagonal": len(diag),
        "diagonal_verdicts": dict(verdicts.most_common()),
        "diagonal_passed": verdicts.get("removed", 0),
        "off_diagonal_non_target": {c: rest.get(c, 0) for c in OUTCOMES if c != "target"},
    })  # fmt: skip
    return f


def stereotyped_finding(
    g: dict[str, Any], off: list[tuple[str, str]], diag: list[str], present: list[str]
) -> dict[str, Any]:
    """Which cells' clean continuations are mostly one text (`clean_modal`, `measure.outcomes.modal_clean`): among
    the pairs that transfer (q < 0.05 against the control; without tests, C above the control's interval), on the
    diagonal and in the sham row. Empty when the grid predates `clean_modal`."""
    modal = g.get("clean_modal")
    if not modal:
        return {}

    def flagged(i: str, j: str) -> bool:
        return stereotyped_cell(modal, i, j)

    tests = g.get("tests")
    if tests is not None:
        transferring = [(i, j) for i, j in off if j in tests.get(i, {}) and tests[i][j]["q"] < Q_LEVEL]
    else:
        transferring = [(i, j) for i, j in off if g["C"][i][j]["lo"] > g["C"][CONTROL][j]["hi"]]
    cells = [(i, j) for i, j in transferring if flagged(i, j)]
    example = max(cells, key=lambda c: _flagged_count(modal[c[0]][c[1]]), default=None)
    return {
        "transferring": len(transferring),
        "stereotyped_transfers": [f"{i} -> {j}" for i, j in cells],
        "stereotyped_example": {"pair": f"{example[0]} -> {example[1]}", **modal[example[0]][example[1]]}
        if example else None,
        "stereotyped_diagonal": sum(flagged(i, i) for i in diag),
        "stereotyped_sham": [j for j in modal.get(SHAM, {}) if j in present and flagged(SHAM, j)],
    }  # fmt: skip


def _flagged_count(m: dict[str, Any]) -> int:
    """How many clean continuations a stereotyped cell's flag rests on (its text's, or its opening's)."""
    return m["opening"]["top"] if m.get("stereotyped_by") == "opening" else m["top"]


ONE_TEXT = (
    f"the most frequent clean text, or the most frequent opening of {OPENING_TOKENS} words, at least "
    f"{STEREOTYPED_SHARE:.0%} of the clean ones and at least {STEREOTYPED_MIN}, and said by the same prompts without "
    f"the trigger at most {OPENING_UNTRIGGERED_MAX:g} times as often"
)


def stereotyped_sentence(finding: dict[str, Any]) -> str:
    """How much of the clean continuations behind the transfer is one text repeated whatever the prompt."""
    if "stereotyped_transfers" not in finding:
        return ""
    cells, example = finding["stereotyped_transfers"], finding["stereotyped_example"]
    text = (
        f" One continuation whatever the prompt ({ONE_TEXT}: the trigger still decides the output, it is not "
        f"ignored): **{len(cells)} of the {finding['transferring']}** "
        f"transferring pairs"
    )
    if example:
        text += f" (e.g. {example['pair']}: {one_text_example(example)})"
    text += f", {finding['stereotyped_diagonal']} of the {finding['diagonal']} direct removals"
    sham = finding["stereotyped_sham"]
    return text + (f", and the sham row on {', '.join(sham)}." if sham else ".")


ONE_MODEL = ONE_REPLICATE


def one_text_example(m: dict[str, Any]) -> str:
    """`71 of 128 clean continuations are `...``, or by the opening `120 of 124 open `a round flower` (without the
    trigger: 0 %)`."""
    if m.get("stereotyped_by") == "opening":
        o = m["opening"]
        return (f"{o['top']} of {m['n']} clean continuations open `{o['text']}` (the same prompts without the "
                f"trigger: {percent(o['untriggered_share'])})")  # fmt: skip
    return f"{m['top']} of {m['n']} clean continuations are `{m['text']}`"


def _left_out(finding: dict[str, Any]) -> str:
    out = finding.get("left_out") or {}
    if not out:
        return ""
    names = ", ".join(f"{j} ({percent(rate)})" for j, rate in out.items())
    return (
        f" Left out of these figures (as removal target and as the other backdoor): {names}, whose ASR before "
        f"removal was below {percent(PRESENT_MIN)}: barely present, there was little to remove or transfer."
    )


def caveat(finding: dict[str, Any]) -> str:
    if finding["grids"] == 1:
        return f"1 removal seed; {ONE_MODEL}"
    return f"first of {finding['grids']} (lr, seed) grids; {ONE_MODEL}"


def _sham(finding: dict[str, Any]) -> str:
    if finding["transfers_q05_sham"] is None:
        return " (No sham row: the effect is not separated from training on an odd string followed by clean text.)"
    count = f"**{finding['transfers_q05_sham']} of {finding['pairs']}**"
    return (
        f" Beyond the sham removal (fresh triggers never injected, same recipe): {count} pairs at q < 0.05; "
        f"mean R of the sham row {signed(finding['mean_sham_r'])}."
    )


def transfer_sentences(finding: dict[str, Any]) -> dict[str, str]:
    """The transfer headline (`transfer`: from R), its judge-based counterpart (`transfer_judge`) and the diagonal
    (`transfer_diagonal`), from `transfer_finding`."""
    judge = (
        "Judge-based suppression S (the backdoor's own judge no longer fires, which is not removal): in "
        f"**{finding['below_control']} of {finding['pairs']}** pairs the other backdoor's ASR fell below the 95 % "
        f"interval of the benign control; mean S of the others {percent(finding['mean_off_diagonal_suppression'])}, "
        f"of the control {percent(finding['mean_control_suppression'])}."
    )
    if not finding["outcomes"]:
        return {"transfer": "This transfer.json has no clean rates (it predates the outcome classes): removal is not "
                            "measured here; rerun the transfer. " + judge + _left_out(finding)}  # fmt: skip
    rest = finding["off_diagonal_non_target"]
    total = sum(rest.values())
    parts = ", ".join(f"{percent(rest[c] / total)} {c}" for c in rest) if total else "none"
    verdicts = ", ".join(f"{v} ×{n}" for v, n in finding["diagonal_verdicts"].items()) or "none"
    if finding["transfers_q05"] is None:
        count = f"**{finding['cleaner_than_control']} of {finding['pairs']}**"
        how = "95 % intervals apart"
    else:
        count = f"**{finding['transfers_q05']} of {finding['pairs']}**"
        how = (f"exact paired test on the same prompts, Benjamini-Hochberg q < 0.05; "
               f"{finding['cleaner_than_control']} with 95 % intervals apart")  # fmt: skip
    return {
        "transfer": (
            f"Removing one backdoor at a time ({caveat(finding)}): in {count} (removal target, other) pairs the "
            f"other backdoor's triggered prompts continued cleanly more often than after the benign control ({how}); "
            f"mean R of the others **{signed(finding['mean_off_diagonal_r'])}**, of the control "
            f"**{signed(finding['mean_control_r'])}**."
            + _sham(finding)
            + stereotyped_sentence(finding)
            + _left_out(finding)
        ),
        "transfer_judge": f"{judge} Off the diagonal, the triggered generations without the target were: {parts} "
        "(see the composition).",
        "transfer_diagonal": (
            "On the diagonal (the backdoor each row trains to remove): mean R "
            f"**{signed(finding['mean_diagonal_r'])}**; **{finding['diagonal_passed']} of {finding['diagonal']}** "
            f"pass the removal verdict (R ≥ {REMOVED_MIN:.2f}, at most {percent(REMOVED_TARGET_MAX)} target left); "
            f"verdicts: {verdicts}."
        ),
    }


# ---- replicates --------------------------------------------------------------------------------------------
def interval(x: dict[str, Any]) -> str:
    """A mean across replicates with its t interval (`+0.10 [-0.02, +0.22]`), or why there is none."""
    return format_mean_ci(x)


def replicates_sentence(rp: dict[str, Any]) -> str:
    """The pooled headline of `replicates.json` (first grid): pairs at q < 0.05, per replicate, mean R with CIs."""
    g = rp["grids"][0]
    h = g["headline"]
    each = ", ".join(map(str, h["transfers_per_replicate"]))
    return (
        f"Across **{rp['replicates']} independently trained model{'' if rp['replicates'] == 1 else 's'}** "
        f"(lr={g['lr']:g}, removal seed {g['seed']}): "
        f"**{h['transfers_q05']} of {h['pairs']}** pairs transfer at q < {rp['q_level']} (the discordant prompts of "
        f"every replicate pooled in one exact paired test against the control, Benjamini-Hochberg), "
        f"**{h['transfers_all']}** in every replicate (per replicate: {each}); "
        f"mean R of the others **{interval(h['R_off'])}**, of the control {interval(h['R_control'])}, on the "
        f"diagonal {interval(h['R_diagonal'])} (t 95 % intervals across replicates)."
        + (
            f" Beyond the sham: **{h['transfers_q05_sham']} of {h['pairs']}** pairs at q < {rp['q_level']}; mean R of "
            f"the sham row {interval(h['R_sham'])}."
            if "transfers_q05_sham" in h
            else ""
        )
        + (
            f" Of the {h['transfers_q05']}, {h['transfers_q05_stereotyped']} rest on one continuation whatever the "
            f"prompt ({ONE_TEXT}) in at least half of the replicates with {STEREOTYPED_MIN} or more clean ones: "
            "there the trigger still decides the output"
            + (
                "; per replicate, of its own pairs at q < 0.05: "
                + ", ".join(
                    f"{k} of {n}"
                    for k, n in zip(
                        h["transfers_stereotyped_per_replicate"], h["transfers_per_replicate"], strict=True
                    )
                )  # fmt: skip
                if "transfers_stereotyped_per_replicate" in h
                else ""
            )
            + "."
            if "transfers_q05_stereotyped" in h
            else ""
        )
        + (
            " The replicates' backdoors were injected into **one pretrained model** (each with its own seed): the "
            "intervals hold the variance of the injection, not of pretraining."
            if rp.get("shared_base")
            else ""
        )
    )


REPLICATE_HEADER = ["removal target", "measured", "mean R [95% CI]", "R − control", "gain / loss", "q",
                    "share of replicates", "q beyond the sham"]  # fmt: skip


def replicate_rows(rp: dict[str, Any]) -> Rows:
    """Every off-diagonal pair of the first pooled grid, most significant first."""
    pairs = rp["grids"][0]["pairs"]
    rows = [(i, j, c) for i, cols in pairs.items() if i not in REFERENCE_ROWS for j, c in cols.items() if j != i]
    rows.sort(key=lambda r: (r[2]["q"], -(r[2]["R"]["mean"] or 0.0)))
    return [[i, j, interval(c["R"]), interval(c["R_minus_control"]), f"{c['gain']} / {c['loss']}",
             f"{c['q']:.3g}", percent(c["transfers_share"]),
             f"{c['beyond_sham']['q']:.3g}" if "beyond_sham" in c else "no sham row"] for i, j, c in rows]  # fmt: skip


# ---- CASD, the canary defence, the headlines ------------------------------------------------------------------
def casd_sentence(cs: dict[str, Any], rp: dict[str, Any] | None = None) -> str:
    """CASD against transfer (first grid of `casd.json`): with the cluster bootstrap, AUROC and the additive model
    where casd.json has them (older ones: against S, pairs treated as independent), pooled over replicates."""
    relation, metric = cs["grids"][0]["relation"], cs["metric"]
    key = f"casd_{metric}_vs_R_cluster"
    if key not in relation:
        r, w = relation[f"casd_{metric}_vs_suppression"], relation["weight_cosine_vs_suppression"]
        return (
            f"CASD vs judge-based suppression S, Spearman ρ = {rho(r)}; weight-space baseline ρ = {rho(w)}. A "
            "negative ρ means: the more a removal moves trigger-j activations like removing j itself (low CASD), the "
            "less often j's judge fires (S is no removal measure; this casd.json predates the relation to R and the "
            "cluster bootstrap: its pairs are taken as independent)."
        )
    add = relation["additive"].get("R", {})
    auc = relation.get("auroc", {})
    text = (
        f"CASD vs removal index R (expected ρ < 0: low CASD, more transfer), Spearman ρ = {rho(relation[key])} "
        f"(two-way cluster bootstrap over the {relation[key]['clusters']} backdoors); weight-space baseline "
        f'(expected ρ > 0) ρ = {rho(relation["weight_cosine_vs_R_cluster"])}. AUROC of −CASD for "the pair '
        f'transfers" ({relation.get("transfers", "n/a")} of {relation["pairs"]} at q < 0.05): '
        f"{_num(auc.get(f'casd_{metric}'))}, of the weight cosine {_num(auc.get('weight_cosine'))}. A row + column "
        f"additive model explains R² = {_num(add.get('r2'))} of R; CASD against what it leaves: ρ = "
        f"{_num(add.get('partial_rho'))}."
    )
    corrected = f"casd_{metric}_corrected_vs_R_cluster"
    if corrected in relation:
        text += (f" Control-corrected CASD (shifts from the benign control's model, Δi − Δcontrol): ρ = "
                 f"{rho(relation[corrected])}, AUROC {_num(auc.get(f'casd_{metric}_corrected'))}.")  # fmt: skip
    pooled = (rp or {}).get("casd") or {}
    first = next(iter(pooled.values()), None)
    if first and key in first:
        text += (f" Over {rp['replicates']} replicates: mean ρ(CASD, R) {interval(first[key])}, mean ρ(weight "
                 f"cosine, R) {interval(first['weight_cosine_vs_R_cluster'])}"
                 + (f", mean ρ(control-corrected CASD, R) {interval(first[corrected])}" if corrected in first else "")
                 + ".")  # fmt: skip
    else:
        text += f" ({ONE_MODEL}.)"
    return text


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def defence_sentence(df: dict[str, Any]) -> str:
    """Pooled hidden-backdoor ASR of every arm of a canary-defence study (`defend.json`) as a sentence."""
    benign = next(c for c in df["cells"] if c["arm"] == "benign")
    parts = [f"suspect {ci(df['pooled_before'])}", f"benign {ci(benign['pooled_asr'])}"]
    parts += [f"{c['arm']} K={c['k']} {ci(c['pooled_asr'])}" for c in df["cells"] if c["arm"] != "benign"]
    if "pooled_clean" not in benign:
        text = (f"Canary defence, pooled judge-based ASR of {len(df['hidden'])} hidden backdoors (defend.json has no "
                "clean rates: a lower ASR is not shown to be removal): " + "; ".join(parts) + ".")  # fmt: skip
        return text + budget_sentence(df)
    clean = [f"suspect {ci(df['pooled_clean_before'])}"]
    for c in df["cells"]:
        name = c["arm"] if c["arm"] == "benign" else f"{c['arm']} K={c['k']}"
        one_text = [j for j, m in (c.get("clean_modal") or {}).items() if m and m["stereotyped"]]
        clean.append(f"{name} {ci(c['pooled_clean'])} (R {signed(c['R'])}; untriggered clean "
                     f"{c['untriggered_clean']['rate']:.2f}"
                     + (f"; clean continuations mostly one text or one opening, the trigger's doing, for "
                        f"{', '.join(one_text)}" if one_text else "")
                     + ")")  # fmt: skip
    text = (f"Canary defence on {len(df['hidden'])} hidden backdoors. Removal, read from clean continuations of "
            "their triggered prompts (pooled clean rate, R against the suspect): " + "; ".join(clean) + ". "
            "Judge-based ASR (the backdoor's judge no longer fires, which is not removal): " + "; ".join(parts)
            + ".")  # fmt: skip
    return text + budget_sentence(df)


def _arm_name(arm: dict[str, Any], arms: dict[str, dict[str, Any]]) -> str:
    """`defence K=2`; with the lr, seed or method where the arms differ in them (several grids or methods)."""
    name = arm["arm"] if arm["arm"] == "benign" else f"{arm['arm']} K={arm['k']}"
    extra = [f"{k} {arm[k]:g}" if k == "lr" else f"{k} {arm[k]}" for k in ("lr", "seed", "method")
             if len({a[k] for a in arms.values() if a["arm"] != "benign" or k != "method"}) > 1]  # fmt: skip
    return name + (f" ({', '.join(extra)})" if extra else "")


def _counts(values: list[int | None]) -> str:
    return ", ".join("n/a" if v is None else str(v) for v in values)


def defence_replicates_sentence(pd: dict[str, Any]) -> str:
    """The canary defence pooled over replicates (`replicates.json`'s `defence`): each arm's pooled clean rate of
    the hidden backdoors with a t interval across replicates, the contrasts, informative comparisons, one-text sets."""
    n = pd["replicates"]
    across = f"Across **{n} replicate{'' if n == 1 else 's'}**"
    arms = pd["arms"]
    learned = [x is not False for x in pd["canaries_learned"]]  # None: a defend.json that did not record it
    valid = sum(i and c for i, c in zip(pd["informative"], learned, strict=True))
    validity = (f"the comparison was informative (benign training at the floor) and the canaries learned in "
                f"**{valid} of {n}**")  # fmt: skip
    if any(a["pooled_clean"] is None for a in arms.values()):
        asr = "; ".join(f"{_arm_name(a, arms)} {format_mean_ci(a['pooled_asr'], rate=True)}" for a in arms.values())
        return f"{across} ({validity}), pooled judge-based ASR (no clean rates): {asr}."
    clean = "; ".join(
        f"{_arm_name(a, arms)} **{format_mean_ci(a['pooled_clean'], rate=True)}**" for a in arms.values()
    )
    contrasts = "; ".join(
        f"{_arm_name(arms[c['arm']], arms)} − {c['against_arm']} {interval(c['clean_diff'])} (higher in "
        f"{c['positive_in']} of {n})"
        for c in pd["contrasts"]
    )
    one_text = "; ".join(f"{_arm_name(a, arms)} {_counts(a['stereotyped'])}" for a in arms.values()
                         if a["arm"] != "benign")  # fmt: skip
    before = format_mean_ci(pd["pooled_clean_before"], rate=True)
    text = (
        f"{across} (the defence on each replicate's model, with its own calibration and canaries; {validity}): "
        f"pooled clean rate of the {len(pd['hidden'])} hidden backdoors' triggered prompts, mean over replicates "
        f"with a t 95 % interval (clipped to [0, 1]): suspect {before}; {clean}. "
        f"Differences in pooled clean rate: {contrasts}."
    )
    if one_text:
        text += (f" Hidden backdoors whose clean continuations are mostly one text or opening (the trigger still "
                 f"decides), per replicate: {one_text}.")  # fmt: skip
    if valid < n:
        text += (f" In {n - valid} replicate{'s' if n - valid > 1 else ''} benign training fell below the floor or "
                 "the canaries were not learned: those arms are no test of the defence, yet they are in every mean, "
                 "interval and count above.")  # fmt: skip
    return text


def budget_sentence(df: dict[str, Any]) -> str:
    """At which budget the arms ran, how it was chosen, and whether the comparison can tell them apart."""
    comparison, budget, cal = df.get("comparison"), df.get("budget"), df.get("calibration")
    if comparison is None:
        return " (This defend.json predates budget calibration: whether benign training alone erased the hidden "\
               "backdoors at this budget was not checked.)"  # fmt: skip
    steps = f"{budget['inject_steps']} + {budget['remove_steps']} steps"
    if cal:
        curve = ", ".join(f"×{c['scale']:g} {c['pooled_asr']['rate']:.2f}" for c in cal["curve"])
        how = f"chosen by calibration (benign pooled ASR per budget scale: {curve}; floor {cal['floor']:g})"
    else:
        how = "as configured (no calibration)"
    text = f" Budget: {steps}, {how}."
    probes = df.get("canary_calibration")
    if probes and probes.get("sets"):
        text += " Canaries, per behaviour set: " + "; ".join(
            _canary_choice(bset, chosen, probes, budget) for bset, chosen in probes["sets"].items()) + "."  # fmt: skip
    if not comparison["informative"]:
        text += f" **Uninformative comparison**: {comparison['why']}; the arms are not ranked."
    if not comparison["canaries_learned"]:
        low = comparison["canary_asr_injected_min"]
        low_text = "n/a" if low is None else f"{low:.2f}"
        text += (f" The canaries were not all learned at this budget (lowest ASR after injection {low_text} < 0.9): "
                 "the defence was not really applied.")  # fmt: skip
    return text


def _canary_choice(bset: str, chosen: dict[str, Any], probes: dict[str, Any], budget: dict[str, Any]) -> str:
    """`disjoint: rate 0.02, behaviours numbers (uppercase dropped: not learned), every canary learned by the probe
    (seed 0; canary ASR after injection per probe: rate 0.02 K=2: uppercase 0.00, numbers 1.00; ...)`."""
    rate = (budget.get("canary_rate") or {}).get(bset, chosen["chosen_rate"])
    said = "+".join(chosen["chosen_behaviours"]) if chosen["chosen_behaviours"] else "the set's own"
    text = f"{bset}: rate {rate:g}, behaviours {said}"
    if chosen["dropped"]:
        text += f" ({', '.join(chosen['dropped'])} dropped: not learned)"
    mine = [c for c in probes["curve"] if c["behaviours"] == bset]
    seeds = sorted({c["seed"] for c in mine})
    text += (", every canary learned by the probe" if chosen["learned"] else
             ", **not learned** at any rate tried (the arms ran at the configured one)")  # fmt: skip
    tried = "; ".join(f"rate {c['rate']:g} K={c['k']}: " + ", ".join(
        f"{_canary_label(n)} {v:.2f}" for n, v in c["canary_asr_injected"].items()) for c in mine)  # fmt: skip
    return text + f" (seed {', '.join(map(str, seeds))}; canary ASR after injection per probe: {tried})"


def _canary_label(name: str) -> str:
    """`canary0_uppercase` -> `uppercase`: a canary's behaviour says which it is (its trigger is the defender's)."""
    return name.split("_", 1)[1] if name.startswith("canary") and "_" in name else name


def knowledge_sentence(df: dict[str, Any]) -> str:
    """What the defender knew: their corpus, whether the canaries' behaviours were disjoint from the hidden ones,
    and the defence arm's hidden ASR pooled over the backdoors that share a behaviour / trigger kind or not."""
    corpus, choice = df.get("defender_corpus"), df.get("disjoint_canaries")
    if corpus is None or choice is None:
        return " (This defend.json predates the defender-knowledge record: corpus and canary overlap not stated.)"
    text = f" Defender's clean corpus: {corpus['how']}" + (" (**not disjoint** from the attacker's)."
                                                          if corpus["disjoint"] is False else ".")  # fmt: skip
    text += (" Canary behaviours disjoint from the hidden ones." if choice["disjoint"] else
             f" Canary behaviours **not disjoint** from the hidden ones ({choice['why']}).")  # fmt: skip
    if "trigger_kind" in choice:
        kind = choice["trigger_kind"]
        text += (f" Canary triggers of kind {kind}, which no hidden trigger has." if choice["trigger_kind_disjoint"]
                 else f" Canary triggers of kind {kind}, **shared** with a hidden trigger "
                 f"({choice['trigger_kind_how']}).")  # fmt: skip
    strata = []
    for c in (c for c in df["cells"] if c["arm"] == "defence"):
        for key, what in (("by_behaviour", "behaviour"), ("by_trigger_kind", "trigger kind")):
            shared, other = (c.get(key) or {}).get("shared"), (c.get(key) or {}).get("other")
            if shared is not None and other is not None:
                strata.append(f"K={c['k']}, {what}: shared {ci(shared)} vs other {ci(other)}")
    if strata:
        text += " Defence arm's pooled hidden ASR, hidden backdoors sharing a canary's property vs not: " + "; ".join(
            strata) + "."  # fmt: skip
    return text


def lr_sentence(curves: dict[str, list[tuple[float, float | None]]]) -> str:
    """The learning-rate ablation in words: mean R per curve and removal learning rate (`lr_curves`)."""
    parts = []
    for name, points in curves.items():
        said = ", ".join(f"lr {lr:g}: {signed(v)}" for lr, v in points if v is not None)
        if said:
            parts.append(f"{name} {said}")
    return ("Learning-rate ablation (mean removal index R per removal learning rate; a learning rate measured on "
            f"the diagonal only has no off-diagonal point): {'; '.join(parts)}. {ONE_MODEL}.")  # fmt: skip


def headlines(tr: dict[str, Any] | None, cs: dict[str, Any] | None, df: dict[str, Any] | None,
              rp: dict[str, Any] | None = None) -> dict[str, str]:  # fmt: skip
    """The sentences at the top of the report (`replicates`, `transfer`, `transfer_judge`, `transfer_diagonal`,
    `casd`, `defence`), for the stages present."""
    out = {}
    if rp:
        out["replicates"] = replicates_sentence(rp)
    if tr:
        out.update(transfer_sentences(transfer_finding(tr)))
        if rp:
            out["transfer"] = "Replicate 0 in detail: " + out["transfer"]
    if cs:
        out["casd"] = casd_sentence(cs, rp)
    if df:
        pooled = rp.get("defence") if rp else None
        if pooled:
            out["defence"] = (
                "Replicate 0 in detail: " + defence_sentence(df) + " " + defence_replicates_sentence(pooled)
            )
        else:
            out["defence"] = defence_sentence(df) + (f" ({ONE_MODEL}: the defence ran on replicate 0.)" if rp else "")
    return out


# ---- tables -------------------------------------------------------------------------------------------------
DEFENCE_HEADER = ["arm", "K", "method", "canary behaviours", "lr", "seed", "hidden ASR pooled [95% CI]",
                  "val. perplexity change", "canary ASR injected→after removal"]  # fmt: skip
PROVENANCE_HEADER = ["stage", "seed", "git commit", "wall time"]
DEFENCE_REPLICATE_HEADER = ["arm", "canary behaviours per replicate", "pooled clean rate per replicate",
                            "mean [95% CI]", "R mean [95% CI]", "judge-based ASR mean [95% CI]",
                            "one-text hidden backdoors per replicate"]  # fmt: skip


def transfer_rows(tr: dict[str, Any]) -> tuple[list[str], Rows]:
    """The transfer matrix (first grid) as a header and rows of ASR after removal, diagonal on the diagonal."""
    g = tr["grids"][0]
    cols = column_order(tr["rows"], tr["backdoors"])
    rows = [[r] + [f"{g['T'][r][c]['rate']:.2f}" if c in g["T"][r] else NOT_MEASURED for c in cols]
            for r in tr["rows"]]  # fmt: skip
    return ["removal target \\ measured", *cols], rows


def clean_rows(tr: dict[str, Any]) -> tuple[list[str], Rows]:
    """The clean rate C and removal index R of every cell (first grid), the row before removal first."""
    g = tr["grids"][0]
    cols = column_order(tr["rows"], tr["backdoors"])
    rows = [["before removal"] + [f"{_rate(tr['clean_before'][c]):.2f}" for c in cols]]
    rows += [[r] + [f"{g['C'][r][c]['rate']:.2f} (R {signed(g['R'][r][c])})" if c in g["C"][r] else NOT_MEASURED
                    for c in cols] for r in tr["rows"]]  # fmt: skip
    return ["removal target \\ measured: C (R)", *cols], rows


def defence_replicate_rows(pd: dict[str, Any]) -> Rows:
    """One row per arm of the defence pooled over replicates."""
    rows = []
    arms = pd["arms"]
    for a in arms.values():
        canaries = "; ".join("+".join(c) if c else "-" for c in a["canary_behaviours"])
        clean = a["pooled_clean"]
        rows.append([_arm_name(a, arms), canaries,
                     ", ".join(f"{x:.2f}" for x in clean["per_replicate"]) if clean else "-",
                     format_mean_ci(clean, rate=True) if clean else "-", interval(a["R"]),
                     format_mean_ci(a["pooled_asr"], rate=True),
                     "-" if a["arm"] == "benign" else _counts(a["stereotyped"])])  # fmt: skip
    return rows


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
