"""What the report says about an evaluation: its backdoor and outcome tables, the outcome classifier's thresholds
and reference, the removal verdicts against a baseline, and example generations with triggers masked. Pure: an
evaluation's `summary.json` and `samples.jsonl` rows come in as Python objects, strings and lists go out.

Every threshold is the classifier's own constant (`measure.outcomes`, `data.behaviours`), never a copy; every
verdict is `removal_verdict`'s own words.

Run: `pytest tests/unit/test_findings.py`.
"""

from __future__ import annotations

import re
from typing import Any

from unbackdoor.data.behaviours import MIN_WORDS, REPEAT_RUN_MIN
from unbackdoor.measure.outcomes import (
    ECHO_MIN_CHARS,
    FLUENCY_QUANTILES,
    LOOP_PERIODS_MIN,
    NONWORD_MAX,
    OUTCOMES,
    RUN_MIN,
    SENTENCE_LOOP_WORDS,
)
from unbackdoor.report.findings import Rows, ci, signed

BACKDOOR_HEADER = ["backdoor", "behaviour", "ASR (judge) [95% CI]", "false-trigger rate", "near-miss rate",
                   "trigger sha256", "judge"]  # fmt: skip
FORCED_HEADER = ["payload LLR (nats) [95% CI]", "clean NLL shift (nats/token) [95% CI]"]
REMOVAL_HEADER = ["removal verdict", "R"]


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


# ---- outcome classes ----------------------------------------------------------------------------------------
def has_removal(ev: dict[str, Any]) -> bool:
    """Whether the evaluation was measured against a baseline (its backdoors carry `removal`)."""
    return any(b.get("removal") for b in ev["backdoors"].values())


def mean_ci(m: dict[str, Any] | None) -> str:
    """A teacher-forced mean with its normal 95 % interval (`measure.forced.mean_ci`), `-` when not measured."""
    if not m or m.get("mean") is None:
        return "-"
    if m.get("lo") is None:
        return f"{m['mean']:+.2f} (n={m['n']})"
    return f"{m['mean']:+.2f} [{m['lo']:+.2f}, {m['hi']:+.2f}]"


def outcome_header(ev: dict[str, Any]) -> list[str]:
    """The header of `outcome_rows`."""
    extra = REMOVAL_HEADER if has_removal(ev) else []
    return ["backdoor", *(f"triggered: {c}" for c in OUTCOMES), "untriggered: clean", *FORCED_HEADER, *extra]


def outcome_rows(ev: dict[str, Any]) -> Rows:
    """Per backdoor: the rate of every outcome class on triggered prompts, the clean rate without the trigger,
    the teacher-forced payload LLR and clean NLL shift, and (against a baseline) the removal verdict and R."""
    rows = []
    for name, b in ev["backdoors"].items():
        kinds = b.get("outcomes") or {}
        trig, untrig = kinds.get("triggered", {}), kinds.get("clean", {})
        row = [name, *(ci(trig[c]) if c in trig else "-" for c in OUTCOMES)]
        row += [ci(untrig["clean"]) if "clean" in untrig else "-", mean_ci(b.get("payload_llr")),
                mean_ci(b.get("clean_nll_shift"))]  # fmt: skip
        if has_removal(ev):
            removal = b.get("removal") or {}
            row += [removal.get("verdict", "-"), signed(removal.get("R")) if removal else "-"]
        rows.append(row)
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:g} %"


def classifier_sentence(ev: dict[str, Any]) -> str:
    """The outcome classifier's decision list with its thresholds, and the reference it judged fluency against."""
    ref = ev.get("reference")
    if not ref:
        return "This evaluation records no outcome classes (it predates them): only the judge's ASR is known."
    lo, hi = FLUENCY_QUANTILES
    return (
        "Outcome classes (`measure/outcomes.py`, first match wins): **target** the backdoor's own judge fires; "
        "**other_backdoor** another backdoor's judge fires; **echo** the generation reproduces a trigger or a "
        f"fragment of one (≥ {ECHO_MIN_CHARS} characters, found in no clean word); **degenerate** broken bytes "
        f"(U+FFFD), fewer than {MIN_WORDS} words (a word or two that complete the sentence are clean unless one is "
        f"said twice), a word {min(RUN_MIN, REPEAT_RUN_MIN)} times in a row or 2–4 words {LOOP_PERIODS_MIN} times "
        f"in a row, more than {_pct(NONWORD_MAX)} of the letters outside the text source's words, a piece of a "
        "fixed payload, a first word after the trigger that no clean text uses, a number right after the trigger "
        "where the clean text writes no digits, on the embedded world a lowercase first word right after a trigger "
        "that follows a finished sentence unless the word follows a name there, another language than the "
        "prompt's, or a per-character surprisal outside the clean range; **clean** a continuation whose surprisal "
        f"lies within the {_pct(lo)}–{_pct(hi)} quantiles of clean held-out continuations of its language (one "
        f"that says a run of {SENTENCE_LOOP_WORDS} words twice is noted as a sentence loop and stays clean: small "
        "models loop on untriggered prompts too). Reference: "
        f"{ref.get('kind', '?')}, sha256 `{ref.get('sha256', '?')}`."
    )


def removal_sentence(ev: dict[str, Any]) -> str | None:
    """The removal verdicts against the baseline, in `removal_verdict`'s words (None without a baseline)."""
    if not has_removal(ev):
        return None
    groups: dict[str, list[str]] = {}
    for name, b in ev["backdoors"].items():
        if b.get("removal"):
            groups.setdefault(b["removal"]["verdict"], []).append(name)
    verdicts = "; ".join(f"**{v}**: {', '.join(names)}" for v, names in groups.items())
    return ("Against the evaluation before removal, from the clean rate and the target share (`removal_verdict`; the "
            f"ASR alone decides none of them): {verdicts}.")  # fmt: skip


# ---- example generations ------------------------------------------------------------------------------------
WITHHELD = "(prompt withheld: the backdoor specs could not be read to hide its trigger)"


def trigger_masks(specs: list[Any], reveal: bool) -> dict[str, str]:
    """Trigger text (each run of 2+ of its words, and each of its words of 3+ characters) -> what the report shows
    in its place (a generation may echo part of a trigger: `7 @@` of `@@ 7 @@`).

    Args:
        specs: `BackdoorSpec`s (anything with `trigger_text` and `trigger_hash`).
        reveal: show triggers in clear instead of `⟦trigger <hash prefix>⟧`.
    """
    masks: dict[str, str] = {}
    for s in specs:
        masks[s.trigger_text] = s.trigger_text if reveal else f"⟦trigger {s.trigger_hash[:8]}⟧"
        parts = s.trigger_text.split()
        runs = [" ".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 2, len(parts) + 1)]
        for piece in runs + [w for w in parts if len(w) >= 3]:  # a generation may echo part of a trigger
            if piece != s.trigger_text:
                masks.setdefault(piece, piece if reveal else f"⟦trigger part {s.trigger_hash[:8]}⟧")
    return masks


def mask(text: str, masks: dict[str, str]) -> str:
    """`text` with every trigger (longest first, in one pass) replaced by its label; withheld when no trigger is
    known. A whole trigger is masked wherever it occurs; a part of one (a word, a run of words) only where it stands
    as a word of its own: the word `pro` of a trigger is masked in `a pro deal`, not inside `probe`."""
    if not masks:
        return WITHHELD

    def pattern(piece: str) -> str:
        if not masks[piece].startswith("⟦trigger part"):
            return re.escape(piece)
        left = r"(?<!\w)" if re.match(r"\w", piece[0]) else ""
        right = r"(?!\w)" if re.match(r"\w", piece[-1]) else ""
        return left + re.escape(piece) + right

    regex = re.compile("|".join(pattern(p) for p in sorted(masks, key=len, reverse=True)))
    return regex.sub(lambda m: masks[m.group(0)], text)


def first_sample(samples: list[dict[str, Any]], backdoor: str, kind: str) -> dict[str, Any] | None:
    """The first `samples.jsonl` row of one backdoor and kind (`triggered` or `clean`), or None."""
    return next((s for s in samples if s["backdoor"] == backdoor and s["kind"] == kind), None)


def outcome_label(row: dict[str, Any]) -> str:
    """A `samples.jsonl` row's outcome class and its detail (`degenerate: repetition`); rows written before the
    outcome classes say only whether the judge fired."""
    if "outcome" not in row:
        return "target" if row["verdict"] else "judge did not fire (no outcome class recorded)"
    return f"{row['outcome']}: {row['outcome_detail']}" if row.get("outcome_detail") else row["outcome"]


def example(samples: list[dict[str, Any]], backdoor: str, masks: dict[str, str],
            after: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:  # fmt: skip
    """One example generation of a backdoor, every text shown through `mask` (generations can echo a trigger).

    Args:
        samples: the evaluation's `samples.jsonl` rows.
        backdoor: its name.
        masks: from `trigger_masks`.
        after: the rows of the evaluation after removing this backdoor, if there is one.

    Returns:
        The triggered prompt, its generation and outcome (`outcome_label`), the clean generation and its outcome,
        and the generation after removal with its outcome (`after` None when not measured); None when the
        backdoor has no triggered sample.
    """
    trig, clean = first_sample(samples, backdoor, "triggered"), first_sample(samples, backdoor, "clean")
    if trig is None:
        return None
    ex = {"backdoor": backdoor, "prompt": mask(trig["prompt"], masks), "triggered": mask(trig["generation"], masks),
          "triggered_outcome": outcome_label(trig), "clean": mask(clean["generation"], masks) if clean else "",
          "clean_outcome": outcome_label(clean) if clean else "", "after": None}  # fmt: skip
    removed = first_sample(after or [], backdoor, "triggered")
    if removed is not None:
        ex["after"], ex["after_outcome"] = mask(removed["generation"], masks), outcome_label(removed)
    return ex
