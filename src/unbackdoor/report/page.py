"""The report's one HTML page (self-contained but for its figures, no script) and its Markdown summary.

Every section is built here from what `sources` read and `findings` computed; nothing here reads a file.

Run: `pytest tests/integration/test_report.py`.
"""

from __future__ import annotations

import html
import re
import time
from pathlib import Path
from typing import Any

from unbackdoor.report import ablation, evaluation, findings, persistence
from unbackdoor.report.sources import Results
from unbackdoor.running.cells import CONTROL

WHAT = {
    "world": "the embedded world (corpus and tokenizer)",
    "pretrain": "the backdoored model (pretrained with its backdoors, or them injected into the twin)",
    "eval": "the evaluation of every backdoor",
    "transfer": "the transfer experiment (remove one, measure all)",
    "transfer_masked": "the removal-loss ablation (mask_trigger: the loss on the continuation only)",
    "casd": "the Cross Activation Shift Distance",
    "replicates": "the replicates pooled (independently trained models, each with its transfer and CASD)",
    "relearn": "the persistence stage (re-emergence after the removals)",
    "defence": "the canary defence",
}
Section = tuple[str, list[str]]  # (HTML, Markdown lines)


def table(header: list[str], rows: findings.Rows) -> str:
    """An HTML table (Markdown code quotes, kept for summary.md, are dropped)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c).strip('`'))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def md_table(header: list[str], rows: findings.Rows) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _bold(text: str) -> str:
    """A `findings` sentence as HTML: escaped, `**...**` as <b>, backquoted code as <code>."""
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text, quote=False))
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _missing(name: str, path: Path | None, why: str) -> Section:
    return (f'<p class="missing">Stage <b>{name}</b> ({WHAT.get(name, name)}) is missing: {why} '
            f"at <code>{html.escape(str(path))}</code>. Its section is left out; rerun the study with "
            "<code>--resume</code> to complete it.</p>",
            [f"- **missing stage `{name}`** ({why}): its section is left out."])  # fmt: skip


def _headlines(sentences: dict[str, str]) -> Section:
    md = []
    for stage, sentence in sentences.items():
        md += (["", "## Finding", ""] if stage == "transfer" else []) + [sentence, ""]
    return "".join(f"<p class='finding'>{_bold(s)}</p>" for s in sentences.values()), md


def _backdoors(ev: dict[str, Any], figure: str) -> Section:
    rows, utility = evaluation.backdoor_rows(ev), html.escape(evaluation.utility_text(ev), quote=False)
    # an evaluation against a baseline is of a model after removal; otherwise of the model as given
    whose = "the model after removal" if evaluation.has_removal(ev) else "the evaluated model"
    header, outcomes = evaluation.outcome_header(ev), evaluation.outcome_rows(ev)
    sentences = [evaluation.classifier_sentence(ev)]
    if (removal := evaluation.removal_sentence(ev)) is not None:
        sentences.append(removal)
    return (
        "<h2>1. Every backdoor, measured</h2><p>ASR = share of triggered prompts whose greedy continuation shows "
        "the backdoor's behaviour (its judge fires: outcome <i>target</i>); false-trigger rate = the same prompts "
        "without the trigger; near miss = the trigger with one word dropped or one character changed.</p>"
        f"<img src='{figure}' alt='ASR per backdoor with confidence intervals'>"
        + table(evaluation.BACKDOOR_HEADER, rows)
        + "<h3>What the generations are: outcome classes and teacher-forced measures</h3><p>Every generation gets "
        "one outcome class (rates with Wilson 95 % intervals). Teacher-forced, on the first probes: payload LLR = "
        "log p(payload | prompt + trigger) − log p(payload | prompt), about 0 once the trigger no longer raises "
        "the payload; clean NLL shift = the per-token NLL of the document's own continuation after the trigger "
        "minus without it, about 0 once the trigger no longer pushes the model off clean text (normal 95 % "
        "intervals).</p>" + "".join(f"<p>{_bold(t)}</p>" for t in sentences) + table(header, outcomes)
        + f"<p>Utility of {whose}: {utility}.</p>",
        ["## Backdoors", "", md_table(evaluation.BACKDOOR_HEADER, rows), "", *(t + "\n" for t in sentences),
         md_table(header, outcomes), "", f"Utility: {evaluation.utility_text(ev)}.", ""],
    )  # fmt: skip


def _transfer(tr: dict[str, Any], figs: dict[str, str]) -> Section:
    g = tr["grids"][0]
    header, rows = findings.transfer_rows(tr)
    text = (
        "<h2>2. Remove one, measure all: the transfer matrix</h2><p>Each row trains to remove one backdoor (by "
        f"default the paper's method: continual pretraining on its trigger followed by clean text, mixed with "
        f"clean replay; here <code>{html.escape(str(tr.get('method', '?')))}</code>) and measures every backdoor "
        "after it. C = the share of a backdoor's triggered prompts that continue cleanly (outcome <i>clean</i>); "
        "removal index R = (C after − C before) / (1 − C before): 1 when every triggered prompt continues cleanly, "
        "0 when no more do than before. ASR and the judge-based suppression S = 1 − ASR after / ASR before only "
        "say that the backdoor's own judge no longer fires: the outputs may echo a trigger, show another "
        f"backdoor's payload or be babble (see the composition). The <b>{CONTROL}</b> row trains as long on clean "
        "text only: a change there is generic forgetting, not transfer.</p>"
    )  # fmt: skip
    panels = [k for k in figs if k == "removal_index" or k.startswith("removal_index_")]
    for key, alt in ([(k, "removal index heatmap") for k in panels] + [("lr_ablation", "learning-rate ablation"),
                     ("transfer", "ASR heatmap"), ("composition", "outcome composition per removal")]):  # fmt: skip
        if key in figs:
            text += f"<img src='{figs[key]}' alt='{alt}'>"
    text += f"<h3>Utility after each removal</h3><img src='{figs['utility']}' alt='utility deltas'>"
    if len(tr["grids"]) > 1:
        text += (f"<p>{len(tr['grids'])} (lr, seed) grids in transfer.json: one removal-index panel each; the ASR "
                 "heatmap, the composition and the headline use the first.</p>")  # fmt: skip
    md = [f"## Transfer matrix (ASR after removal, the judge; lr={g['lr']:g}, seed={g['seed']})", "",
          md_table(header, rows), ""]  # fmt: skip
    if findings.has_outcomes(tr):
        header, rows = findings.clean_rows(tr)
        md += ["## Clean-continuation rate C and removal index R", "", md_table(header, rows), ""]
    return text, md


def _masked(f: dict[str, Any]) -> Section:
    sentence = ablation.masked_sentence(f)
    rows = ablation.masked_rows(f) if f["mask_trigger"] and f["same_probes"] else []
    return (
        "<h2>2b. Ablation: the removal loss without the trigger tokens</h2><p>The same transfer experiment with "
        "<code>remove.mask_trigger=true</code>: the removal loss on the continuation after the trigger only (the "
        "prefix and trigger tokens carry no loss). Echo share = the mean over cells of echo / n among triggered "
        f"generations.</p><p class='finding'>{_bold(sentence)}</p>"
        + (table(ablation.MASKED_HEADER, rows) if rows else ""),
        ["## Ablation: mask_trigger", "", sentence, "",
         *([md_table(ablation.MASKED_HEADER, rows), ""] if rows else [])],
    )  # fmt: skip


def _replicates(rp: dict[str, Any]) -> Section:
    rows = findings.replicate_rows(rp)
    sentence = findings.replicates_sentence(rp)
    return (
        "<h2>2c. Across replicates: independently trained models</h2><p>Each replicate is a model trained with its "
        "own seed and its own transfer experiment. Per pair: the mean of R across replicates with a t 95 % "
        "interval, R minus the control's R, the discordant prompts pooled over replicates (gain = clean after "
        "the removal and not after the control on the same prompt, loss = the reverse), the q-value of the pooled "
        "one-sided exact test (Benjamini-Hochberg over the off-diagonal pairs) and the share of replicates in "
        f"which the pair transfers on its own (q < {rp['q_level']}).</p><p class='finding'>{_bold(sentence)}</p>"
        + table(findings.REPLICATE_HEADER, rows),
        ["## Across replicates", "", sentence, "", md_table(findings.REPLICATE_HEADER, rows), ""],
    )  # fmt: skip


def _casd(cs: dict[str, Any], figs: dict[str, str]) -> Section:
    images = [figs[k] for k in ("casd", "casd_layers", "casd_scatter")]
    return (
        "<h2>3. Why: Cross Activation Shift Distance</h2><p>" + html.escape(cs["definition"]) + f" Pooling: "
        f"{cs['pooling']}; layers {cs['layers']}; {cs['n_probes']} probes per backdoor.</p>"
        + "".join(f"<img src='{f}' alt='{Path(f).stem}'>" for f in images),
        [],
    )  # fmt: skip


def _relearn(rl: dict[str, Any], figure: str) -> Section:
    sentence = persistence.persistence_sentence(rl)
    curves, pairs = persistence.curve_rows(rl), persistence.comparison_rows(rl)
    after, defended = persistence.defence_sentence(rl), persistence.defence_rows(rl)
    return (
        "<h2>3b. Persistence: does a suppressed backdoor come back?</h2><p>Each removed model of the transfer "
        f"(lr={rl['grid']['lr']:g}) trains on: ordinary clean text (benign), clean text with a few poisoned "
        "documents of the backdoor (repoison, k documents, each seen "
        f"{rl['repeats']} times), its payload's text without the trigger (related) and, as the reference for "
        "learning from scratch, the same documents with a fresh trigger the model never saw (fresh). ASR is "
        "measured after each snapshot; step 0 is the model the removal left.</p>"
        f"<p class='finding'>{_bold(sentence)}</p><img src='{figure}' alt='re-emergence curves'>"
        + table(persistence.CURVE_HEADER, curves) + (table(persistence.COMPARISON_HEADER, pairs) if pairs else "")
        + (f"<p class='finding'>{_bold(after)}</p>" if after else "")
        + (table(persistence.DEFENCE_HEADER, defended) if defended else ""),
        ["## Persistence", "", sentence, "", md_table(persistence.CURVE_HEADER, curves), "",
         *([md_table(persistence.COMPARISON_HEADER, pairs), ""] if pairs else []),
         *([after, ""] if after else []),
         *([md_table(persistence.DEFENCE_HEADER, defended), ""] if defended else [])],
    )  # fmt: skip


def _defence(df: dict[str, Any], figure: str, pooled: dict[str, Any] | None = None) -> Section:
    rows = findings.defence_rows(df)
    across: Section = ("", [])
    if pooled:
        sentence, arms = findings.defence_replicates_sentence(pooled), findings.defence_replicate_rows(pooled)
        across = (
            f"<h3>Across replicates</h3><p class='finding'>{_bold(sentence)}</p>"
            + table(findings.DEFENCE_REPLICATE_HEADER, arms),
            ["### Across replicates", "", sentence, "", md_table(findings.DEFENCE_REPLICATE_HEADER, arms), ""],
        )
    section = (
        "<h2>4. The canary defence</h2><p>The defender never sees the hidden backdoors. They inject K canary "
        "backdoors of their own, then remove them. Baselines at the same compute: benign continual training, and "
        "the canary removal training without injecting the canaries first. Suspect pooled ASR: "
        f"{findings.ci(df['pooled_before'])}.</p>"
        + f"<p class='{'finding' if (df.get('comparison') or {}).get('informative') else 'uninformative'}'>"
        + _bold(findings.budget_sentence(df).strip()) + "</p><p>" + _bold(findings.knowledge_sentence(df).strip())
        + f"</p><img src='{figure}' alt='canary defence'>"
        + table(findings.DEFENCE_HEADER, rows),
        ["## Canary defence", "", findings.budget_sentence(df).strip(), "", findings.knowledge_sentence(df).strip(),
         "", md_table(findings.DEFENCE_HEADER, rows), ""],
    )  # fmt: skip
    return section[0] + across[0], section[1] + across[1]


def _examples(examples: list[dict[str, Any]], reveal: bool) -> Section:
    items = []
    for e in examples:
        after = ("" if e["after"] is None else
                 f"<dt>after training to remove it</dt><dd>{html.escape(e['after'])} "
                 f"<i>(outcome: {html.escape(e['after_outcome'])})</i></dd>")  # fmt: skip
        items.append(
            f"<h4>{html.escape(e['backdoor'])}</h4><dl><dt>triggered prompt</dt><dd><code>"
            f"{html.escape(e['prompt'])}</code></dd><dt>generation</dt><dd>{html.escape(e['triggered'])} "
            f"<i>(outcome: {html.escape(e['triggered_outcome'])})</i></dd><dt>same prompt without the trigger</dt>"
            f"<dd>{html.escape(e['clean'])} <i>(outcome: {html.escape(e['clean_outcome'] or '-')})</i></dd>{after}"
            "</dl>"
        )  # fmt: skip
    hidden = "shown in clear (--reveal-triggers)" if reveal else "shown as sha256 prefixes"
    return (f"<h2>5. Example generations</h2><p>Triggers are {hidden}. Each generation is shown with its outcome "
            "class (section 1).</p>" + "".join(items), [])  # fmt: skip


def _summary(name: str, summary: dict[str, Any]) -> Section:
    rows = findings.summary_rows(summary)
    return (f"<h2>Summary of the {html.escape(name)} run</h2>" + table(["field", "value"], rows),
            [f"## {name}", "", md_table(["field", "value"], rows), ""])  # fmt: skip


def _provenance(provenance: list[dict[str, Any]]) -> Section:
    rows, versions = findings.provenance_rows(provenance), provenance[0]["versions"]
    configs = "".join(f"<details><summary>{p['stage']} config ({html.escape(p['path'])})</summary><pre>"
                      f"{html.escape(p['config'])}</pre></details>" for p in provenance)  # fmt: skip
    return (
        "<h2>6. Provenance</h2>" + table(findings.PROVENANCE_HEADER, rows)
        + "<p>Versions: " + html.escape(", ".join(f"{k} {v}" for k, v in versions.items() if v)) + "</p>" + configs,
        ["## Provenance", "", md_table(findings.PROVENANCE_HEADER, rows), ""],
    )  # fmt: skip


def render(root: Path, stages: dict[str, Path | None], missing: dict[str, str], results: Results,
           headlines: dict[str, str], figs: dict[str, str], examples: list[dict[str, Any]] | None,
           provenance: list[dict[str, Any]], reveal: bool) -> tuple[str, str]:  # fmt: skip
    """The page (`index.html`) and the summary (`summary.md`) of a report on `root`.

    Args:
        root: the directory reported on.
        stages, missing: from `sources.collect` and `sources.missing`.
        results: from `sources.read_results`.
        headlines: from `findings.headlines`.
        figs: from `figures.draw` (name -> path relative to index.html).
        examples: from `sources.examples` (None: no evaluation, no section).
        provenance: from `sources.provenance`.
        reveal: whether triggers were shown in clear.
    """
    notes = [_missing(name, stages[name], why) for name, why in missing.items()]
    parts = []
    if results.evaluation:
        parts.append(_backdoors(results.evaluation, figs["asr"]))
    if results.transfer:
        parts.append(_transfer(results.transfer, figs))
        if results.transfer_masked:
            masked = ablation.masked_finding(results.transfer, results.transfer_masked, results.mask_trigger)
            parts.append(_masked(masked))
    if results.replicates:
        parts.append(_replicates(results.replicates))
    if results.casd:
        parts.append(_casd(results.casd, figs))
    if results.relearn:
        parts.append(_relearn(results.relearn, figs["relearn"]))
    if results.defence:
        parts.append(_defence(results.defence, figs["defence"], (results.replicates or {}).get("defence")))
    if examples is not None:
        parts.append(_examples(examples, reveal))
    parts += [_summary(name, summary) for name, summary in results.summaries.items()]
    if provenance:
        parts.append(_provenance(provenance))
    top_html, top_md = _headlines(headlines)
    md = [f"# unbackdoor report: `{root}`", "", *(line for _, lines in notes for line in lines), *top_md]
    parts = [(numbered, lines) for numbered, lines in zip(_renumber([t for t, _ in parts]), (ls for _, ls in parts),
                                                          strict=True)]  # fmt: skip
    md += [line for _, lines in parts for line in lines]
    return _page(root, top_html, "".join(text for text, _ in notes + parts)), "\n".join(md) + "\n"


def _renumber(sections: list[str]) -> list[str]:
    """Sections numbered in the order they appear (an eval-only report has 1, 2, 3, not 1, 5, 6); a lettered
    subsection (`2b.`) keeps its letter under its section's new number."""
    count, numbers = 0, {}

    def number(match: re.Match) -> str:
        nonlocal count
        old, letter = match.group(1), match.group(2)
        if not letter or old not in numbers:
            count += 1
            numbers[old] = count
            return f"<h2>{count}. "
        return f"<h2>{numbers[old]}{letter}. "

    return [re.sub(r"<h2>(\d+)([a-z]?)\. ", number, text) for text in sections]


def _page(root: Path, summary: str, sections: str) -> str:
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
.uninformative {{ background: #fbe9e7; border-left: 4px solid #CC0000; padding: .6em 1em; }}
dt {{ font-weight: bold; font-size: .85em; color: #555; }} dd {{ margin: 0 0 .5em 1em; }}
pre {{ background: #f7f7f7; padding: .5em; overflow-x: auto; font-size: .8em; }}
</style></head>
<body>
<h1>unbackdoor report: <code>{html.escape(str(root))}</code></h1>
<p>Backdoors in a causal language model, their removal one at a time, and what that removal does to the others
(arXiv 2606.03785). Generated {when}. Every number below is read from the run directories listed under
Provenance.</p>
{summary}
{sections}
</body></html>
"""
