"""The report's findings, from small dicts shaped like transfer.json, casd.json, defend.json and an evaluation's
summary.json / samples.jsonl: counts, sentences, table rows, trigger masking and example selection (no figures).

Run: `pytest tests/unit/test_findings.py`.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from unbackdoor.data.behaviours import MIN_WORDS
from unbackdoor.measure.outcomes import ECHO_MIN_CHARS, OUTCOMES
from unbackdoor.report import ablation, evaluation, findings, page
from unbackdoor.report.sources import Results
from unbackdoor.running.cells import CONTROL


def rate(r: float, lo: float, hi: float) -> dict[str, float]:
    return {"rate": r, "lo": lo, "hi": hi}


def counts(**kw: int) -> dict[str, int]:
    """An outcome composition (every class of `OUTCOMES`, zeros included)."""
    return {c: kw.get(c, 0) for c in OUTCOMES}


@pytest.fixture
def transfer() -> dict:
    """Three backdoors, two of them removed (a, b), and the benign control; 10 triggered prompts per cell."""
    T = {
        "a": {"a": rate(0.1, 0.05, 0.2), "b": rate(0.3, 0.2, 0.4), "c": rate(0.55, 0.45, 0.65)},
        "b": {"a": rate(0.75, 0.65, 0.85), "b": rate(0.2, 0.1, 0.3), "c": rate(0.2, 0.1, 0.3)},
        CONTROL: {"a": rate(0.8, 0.7, 0.9), "b": rate(0.8, 0.7, 0.9), "c": rate(0.6, 0.5, 0.7)},
    }
    S = {"a": {"a": 0.9, "b": 0.5, "c": 0.1}, "b": {"a": None, "b": 0.8, "c": 0.7},
         CONTROL: {"a": 0.1, "b": 0.0, "c": None}}  # fmt: skip
    C = {
        "a": {"a": rate(0.7, 0.6, 0.8), "b": rate(0.5, 0.4, 0.6), "c": rate(0.1, 0.05, 0.2)},
        "b": {"a": rate(0.05, 0.0, 0.1), "b": rate(0.2, 0.1, 0.3), "c": rate(0.6, 0.5, 0.7)},
        CONTROL: {"a": rate(0.1, 0.05, 0.15), "b": rate(0.1, 0.05, 0.2), "c": rate(0.1, 0.05, 0.2)},
    }
    R = {"a": {"a": 0.7, "b": 0.5, "c": 0.1}, "b": {"a": None, "b": 0.2, "c": 0.6},
         CONTROL: {"a": 0.1, "b": 0.1, "c": 0.0}}  # fmt: skip
    composition = {
        "a": {"a": counts(echo=2, degenerate=1, clean=7), "b": counts(target=3, echo=2, clean=5),
              "c": counts(target=5, other_backdoor=3, clean=1, degenerate=1)},
        "b": {"a": counts(target=8, echo=2), "b": counts(target=1, echo=6, degenerate=1, clean=2),
              "c": counts(target=2, degenerate=2, clean=6)},
        CONTROL: {j: counts(target=8, echo=1, clean=1) for j in "abc"},
    }  # fmt: skip
    return {"backdoors": ["a", "b", "c"], "rows": ["a", "b", CONTROL], "probe_sha256": "p0",
            "clean_before": {j: {**rate(0.0, 0.0, 0.3), "k": 0, "n": 10} for j in "abc"},
            "composition_before": {j: counts(target=10) for j in "abc"},
            "grids": [{"lr": 1e-3, "seed": 0, "T": T, "S": S, "C": C, "R": R, "composition": composition}],
            }  # fmt: skip


def test_transfer_finding_counts_pairs_cleaner_than_the_control(transfer):
    f = findings.transfer_finding(transfer)
    # pairs (a,b) (a,c) (b,a) (b,c); C interval wholly above the control's: a->b (0.4 > 0.2) and b->c (0.5 > 0.2)
    assert f["pairs"] == 4 and f["cleaner_than_control"] == 2
    assert f["mean_off_diagonal_r"] == pytest.approx((0.5 + 0.1 + 0.6) / 3)  # R[b][a] undefined: left out
    assert f["mean_control_r"] == pytest.approx(0.2 / 3)
    assert f["mean_diagonal_r"] == pytest.approx(0.45)
    # judge-based, kept: ASR wholly below the control's interval: a->b (0.4 < 0.7) and b->c (0.3 < 0.5)
    assert f["below_control"] == 2
    assert f["mean_off_diagonal_suppression"] == pytest.approx((0.5 + 0.1 + 0.7) / 3)
    assert f["mean_control_suppression"] == pytest.approx(0.05)
    assert f["max_diagonal_asr"] == 0.2
    assert f["off_diagonal_non_target"] == {"other_backdoor": 3, "echo": 4, "degenerate": 3, "clean": 12}


def test_diagonal_verdicts_follow_removal_verdict(transfer):
    f = findings.transfer_finding(transfer)
    # a->a: 7 of 10 clean, no target: R 0.7 -> removed; b->b: 6 echoes, R 0.2 -> no removal (mostly echo)
    assert f["diagonal"] == 2 and f["diagonal_passed"] == 1
    assert f["diagonal_verdicts"] == {"removed": 1, "no removal (mostly echo)": 1}
    comp = transfer["grids"][0]["composition"]
    comp["a"]["a"] = counts(target=6, clean=4)  # the target still fires on most: still active, whatever R is
    verdicts = findings.transfer_finding(transfer)["diagonal_verdicts"]
    assert verdicts == {"still active": 1, "no removal (mostly echo)": 1}


def test_transfer_sentences(transfer):
    sentences = findings.transfer_sentences(findings.transfer_finding(transfer))
    assert list(sentences) == ["transfer", "transfer_judge", "transfer_diagonal"]
    head = sentences["transfer"]
    assert head.startswith("Removing one backdoor at a time (1 removal seed; 1 replicate: between-model variance "
                           "unknown): in **2 of 4** ")  # fmt: skip
    assert "continued cleanly more often than after the benign control (95 % intervals apart)" in head
    assert "mean R of the others **+0.40**, of the control **+0.07**." in head
    judge = sentences["transfer_judge"]
    assert judge.startswith("Judge-based suppression S (the backdoor's own judge no longer fires, which is not ")
    assert "**2 of 4** pairs" in judge and "mean S of the others 43 %, of the control 5 %" in judge
    assert "14 % other_backdoor, 18 % echo, 14 % degenerate, 55 % clean" in judge
    diagonal = sentences["transfer_diagonal"]
    assert "mean R **+0.45**; **1 of 2** pass the removal verdict" in diagonal
    assert diagonal.endswith("verdicts: removed ×1, no removal (mostly echo) ×1.")
    transfer["grids"].append(transfer["grids"][0])
    assert "(first of 2 (lr, seed) grids; 1 replicate: between-model variance unknown)" in findings.transfer_sentences(
        findings.transfer_finding(transfer))["transfer"]  # fmt: skip


def test_a_transfer_without_clean_rates_reports_no_removal(transfer):
    g = transfer["grids"][0]
    for key in ("C", "R", "composition"):
        del g[key]
    sentences = findings.headlines(transfer, None, None)
    assert list(sentences) == ["transfer"]
    assert sentences["transfer"].startswith("This transfer.json has no clean rates")
    assert "Judge-based suppression S" in sentences["transfer"]


def test_columns_follow_the_removal_rows(transfer):
    assert findings.column_order(["b", CONTROL], ["a", "b", "c"]) == ["b", "a", "c"]
    header, rows = findings.transfer_rows(transfer)
    assert header == ["removal target \\ measured", "a", "b", "c"]
    assert rows == [["a", "0.10", "0.30", "0.55"], ["b", "0.75", "0.20", "0.20"], [CONTROL, "0.80", "0.80", "0.60"]]
    header, rows = findings.clean_rows(transfer)
    assert rows[0] == ["before removal", "0.00", "0.00", "0.00"]
    assert rows[2] == ["b", "0.05 (R n/a)", "0.20 (R +0.20)", "0.60 (R +0.60)"]


def test_masked_ablation_compares_echo_shares(transfer):
    masked = copy.deepcopy(transfer)
    comp = masked["grids"][0]["composition"]
    comp["a"]["a"], comp["b"]["b"] = counts(clean=9, degenerate=1), counts(echo=2, clean=8)
    plain = ablation.echo_shares(transfer)
    assert plain["diagonal"] == pytest.approx((0.2 + 0.6) / 2) and plain["off_diagonal"] == pytest.approx(0.1)
    assert plain["control"] == pytest.approx(0.1) and plain["before"] == 0
    f = ablation.masked_finding(transfer, masked, True)
    assert f["masked"]["diagonal"] == pytest.approx(0.1)
    sentence = ablation.masked_sentence(f)
    assert sentence.startswith("Does the echo come from training on the trigger tokens? ")
    assert "diagonal: **40 %** with the loss on every token, **10 %** with the loss on the continuation only " \
           "(30 points lower); off the diagonal (the 4 pairs the ablation measured) 10 % and 10 % (the same)" \
           in sentence  # fmt: skip
    rows = ablation.masked_rows(f)
    assert rows[0] == ["echo share, diagonal", "40 %", "10 %"] and len(rows[0]) == len(ablation.MASKED_HEADER)
    assert "no ablation" in ablation.masked_sentence(ablation.masked_finding(transfer, masked, False))
    masked["probe_sha256"] = "other"
    assert "other probe prompts" in ablation.masked_sentence(ablation.masked_finding(transfer, masked, True))


def test_masked_ablation_of_the_diagonal_and_one_row_compares_the_same_cells(transfer):
    masked = copy.deepcopy(transfer)
    masked["measure"] = "diagonal"  # row a measured on every backdoor, row b on its own only
    g = masked["grids"][0]
    for key in ("T", "S", "C", "R", "composition"):
        g[key]["b"] = {"b": g[key]["b"]["b"]}
    g["composition"]["a"]["b"] = counts(clean=10)
    assert findings.pairs(masked) == [("a", "b"), ("a", "c")] and findings.diagonal(masked) == ["a", "b"]
    f = ablation.masked_finding(transfer, masked, True)
    # the plain transfer is compared on the masked run's cells: a->b (echo 2 of 10) and a->c (none), not b->a, b->c
    assert f["plain"]["off_diagonal"] == pytest.approx(0.1) and f["masked"]["off_diagonal"] == 0
    assert f["plain_transfer"]["pairs"] == 2 and "the 2 pairs the ablation measured" in ablation.masked_sentence(f)
    assert transfer["grids"][0]["composition"]["b"]["a"] == counts(target=8, echo=2)  # the input is not modified
    header, rows = findings.transfer_rows(masked)
    assert rows[1] == ["b", findings.NOT_MEASURED, "0.20", findings.NOT_MEASURED]
    assert findings.clean_rows(masked)[1][2][1] == findings.NOT_MEASURED


def test_a_backdoor_barely_present_before_removal_is_left_out_of_the_headline(transfer):
    # c was learned to ASR 0.12 only (the real-text run's French switch): its pairs would dominate the control figure
    transfer["asr_before"] = {"a": rate(1.0, 0.9, 1.0), "b": rate(0.9, 0.8, 1.0), "c": rate(0.12, 0.05, 0.2)}
    transfer["grids"][0]["tests"] = {i: {j: {"q": 0.01 if (i, j) in (("a", "b"), ("b", "c")) else 0.9}
                                         for j in "abc"} for i in ("a", "b", CONTROL)}  # fmt: skip
    transfer["grids"][0]["transfers_q05"] = 2
    f = findings.transfer_finding(transfer)
    assert f["left_out"] == {"c": 0.12} and f["pairs"] == 2  # (a, b) and (b, a): no pair with c
    assert f["transfers_q05"] == 1  # (b, c) at q 0.01 no longer counts
    assert f["mean_control_r"] == pytest.approx(0.1)  # the control on a and b only
    head = findings.transfer_sentences(f)["transfer"]
    assert "in **1 of 2** (removal target, other) pairs" in head
    assert "Left out of these figures (as removal target and as the other backdoor): c (12 %), whose ASR" in head
    transfer["asr_before"]["c"] = rate(0.9, 0.8, 1.0)
    assert findings.transfer_finding(transfer)["pairs"] == 4 and "Left out" not in findings.transfer_sentences(
        findings.transfer_finding(transfer))["transfer"]  # fmt: skip


def test_transfer_headline_counts_pairs_by_their_q_value(transfer):
    transfer["grids"][0]["transfers_q05"] = 1
    head = findings.transfer_sentences(findings.transfer_finding(transfer))["transfer"]
    assert "in **1 of 4** (removal target, other) pairs" in head
    assert "(exact paired test on the same prompts, Benjamini-Hochberg q < 0.05; 2 with 95 % intervals apart)" in head


def pooled_cell(r: float, lo: float | None, hi: float | None, q: float, share: float) -> dict:
    ci = {"mean": r, "lo": lo, "hi": hi, "n": 3}
    return {"R": ci, "S": ci, "T": ci, "C": ci, "R_minus_control": ci, "gain": 9, "loss": 1, "p": q / 2, "q": q,
            "transfers_share": share}  # fmt: skip


def test_replicates_sentence_and_rows():
    cells = {"a": {"a": pooled_cell(0.9, 0.8, 1.0, 0.001, 1.0), "b": pooled_cell(0.3, -0.1, 0.7, 0.04, 1 / 3)},
             "b": {"a": pooled_cell(0.0, -0.2, 0.2, 0.9, 0.0), "b": pooled_cell(0.8, 0.7, 0.9, 0.001, 1.0)},
             CONTROL: {j: pooled_cell(0.0, None, None, 1.0, 0.0) for j in "ab"}}  # fmt: skip
    headline = {"pairs": 2, "transfers_q05": 1, "transfers_all": 0, "transfers_per_replicate": [1, 0, 0],
                "R_off": {"mean": 0.15, "lo": -0.1, "hi": 0.4, "n": 3},
                "R_control": {"mean": 0.0, "lo": None, "hi": None, "n": 1},
                "R_diagonal": {"mean": 0.85, "lo": 0.8, "hi": 0.9, "n": 3}}  # fmt: skip
    rp = {"replicates": 3, "q_level": 0.05, "grids": [{"lr": 1e-3, "seed": 0, "pairs": cells, "headline": headline}]}
    sentence = findings.replicates_sentence(rp)
    assert sentence.startswith("Across **3 independently trained models** (lr=0.001, removal seed 0): **1 of 2** ")
    assert "**0** in every replicate (per replicate: 1, 0, 0)" in sentence
    assert "mean R of the others **+0.15 [-0.10, +0.40]**" in sentence
    assert "of the control +0.00 (1 replicate: between-model variance unknown)" in sentence
    assert "rest on one continuation" not in sentence  # replicates that predate `clean_modal`
    headline["transfers_q05_stereotyped"] = 1
    assert "Of the 1, 1 rest on one continuation whatever the prompt" in findings.replicates_sentence(rp)
    headline["transfers_stereotyped_per_replicate"] = [1, 0, 0]
    assert "the output; per replicate, of its own pairs at q < 0.05: 1 of 1, 0 of 0, 0 of 0." in \
        findings.replicates_sentence(rp)  # fmt: skip
    rows = findings.replicate_rows(rp)
    assert [r[:2] for r in rows] == [["a", "b"], ["b", "a"]]  # off-diagonal only, lowest q first
    assert rows[0][2:] == ["+0.30 [-0.10, +0.70]", "+0.30 [-0.10, +0.70]", "9 / 1", "0.04", "33 %", "no sham row"]


def test_casd_sentence_with_cluster_bootstrap_auroc_and_replicates():
    cluster = {"rho": -0.4, "lo": -0.7, "hi": 0.1, "n": 56, "clusters": 8}
    relation = {"casd_cosine_vs_R_cluster": cluster, "weight_cosine_vs_R_cluster": {**cluster, "rho": 0.2},
                "pairs": 56, "transfers": 6, "auroc": {"casd_cosine": 0.71, "weight_cosine": 0.55},
                "additive": {"R": {"r2": 0.62, "n": 56, "partial_rho": -0.12}}}  # fmt: skip
    cs = {"metric": "cosine", "grids": [{"relation": relation}]}
    sentence = findings.casd_sentence(cs)
    assert sentence.startswith("CASD vs removal index R (expected ρ < 0: low CASD, more transfer), Spearman ρ = "
                               "-0.40 [95% CI -0.70, +0.10], n=56 (two-way cluster bootstrap over the 8 ")  # fmt: skip
    assert 'AUROC of −CASD for "the pair transfers" (6 of 56 at q < 0.05): 0.71' in sentence
    assert "R² = 0.62 of R; CASD against what it leaves: ρ = -0.12" in sentence
    assert sentence.endswith("(1 replicate: between-model variance unknown.)")
    pooled_rho = {"mean": -0.3, "lo": -0.5, "hi": -0.1, "n": 3, "per_replicate": [-0.4, -0.3, -0.2]}
    pooled_w = {"mean": 0.1, "lo": -0.2, "hi": 0.4, "n": 3, "per_replicate": [0.0, 0.1, 0.2]}
    rp = {"replicates": 3, "casd": {"lr=0.001/seed=0": {"casd_cosine_vs_R_cluster": pooled_rho,
                                                        "weight_cosine_vs_R_cluster": pooled_w}}}  # fmt: skip
    pooled = findings.casd_sentence(cs, rp)
    assert pooled.endswith("Over 3 replicates: mean ρ(CASD, R) -0.30 [-0.50, -0.10], mean ρ(weight cosine, R) "
                           "+0.10 [-0.20, +0.40].")  # fmt: skip
    # the control-corrected CASD, where casd.json has it
    relation |= {"casd_cosine_corrected_vs_R_cluster": {**cluster, "rho": -0.25}}
    relation["auroc"]["casd_cosine_corrected"] = 0.6
    rp["casd"]["lr=0.001/seed=0"]["casd_cosine_corrected_vs_R_cluster"] = {**pooled_rho, "mean": -0.2}
    both = findings.casd_sentence(cs, rp)
    assert "Control-corrected CASD (shifts from the benign control's model, Δi − Δcontrol): ρ = -0.25" in both
    assert "AUROC 0.60." in both and both.endswith(", mean ρ(control-corrected CASD, R) -0.20 [-0.50, -0.10].")


def test_rho_and_casd_sentence():
    assert findings.rho({"rho": None, "n": 2}) == "undefined (n=2)"
    casd = {
        "metric": "l2",
        "grids": [{"relation": {"casd_l2_vs_suppression": {"rho": -0.5, "lo": -0.9, "hi": 0.1, "n": 6},
                                "weight_cosine_vs_suppression": {"rho": None, "n": 2}}}],
    }  # fmt: skip
    sentence = findings.casd_sentence(casd)
    assert sentence.startswith("CASD vs judge-based suppression S, Spearman ρ = -0.50 [95% CI -0.90, +0.10], n=6; ")
    assert "weight-space baseline ρ = undefined (n=2). A negative ρ means" in sentence
    assert "S is no removal measure" in sentence


@pytest.fixture
def defence() -> dict:
    def cell(arm: str, k: int, pooled: dict, method: str, behaviours: str) -> dict:
        injected = {"canary_0": 0.9} if arm == "defence" else {}
        return {"arm": arm, "k": k, "method": method, "behaviours": behaviours, "lr": 1e-4, "seed": 0,
                "pooled_asr": pooled, "utility_change": 0.012, "canary_asr_injected": injected,
                "canary_asr_after": {"canary_0": 0.05}}  # fmt: skip

    return {
        "hidden": ["x", "y"],
        "pooled_before": rate(0.8, 0.7, 0.9),
        "cells": [cell("benign", 0, rate(0.7, 0.6, 0.8), "retrain", ""),
                  cell("removal_only", 1, rate(0.65, 0.55, 0.75), "retrain", "refusal"),
                  cell("defence", 1, rate(0.3, 0.2, 0.4), "retrain", "refusal")],
    }  # fmt: skip


def test_defence_sentence_and_rows(defence):
    assert findings.defence_sentence(defence) == (
        "Canary defence, pooled judge-based ASR of 2 hidden backdoors (defend.json has no clean rates: a lower ASR is "
        "not shown to be removal): suspect 0.80 [0.70, 0.90]; benign 0.70 [0.60, 0.80]; removal_only K=1 0.65 "
        "[0.55, 0.75]; defence K=1 0.30 [0.20, 0.40]. (This defend.json predates budget calibration: whether benign "
        "training alone erased the hidden backdoors at this budget was not checked.)"
    )
    # with clean rates (defend.json since they were added): removal is read from them first, ASR labelled
    defence["pooled_clean_before"] = rate(0.0, 0.0, 0.1)
    for c, clean, r in zip(defence["cells"], (0.02, 0.05, 0.11), (0.02, 0.05, 0.11), strict=True):
        c.update(pooled_clean=rate(clean, 0.0, 0.2), R=r, untriggered_clean=rate(0.8, 0.7, 0.9))
    text = findings.defence_sentence(defence)
    assert text.startswith("Canary defence on 2 hidden backdoors. Removal, read from clean continuations of their "
                           "triggered prompts (pooled clean rate, R against the suspect): suspect 0.00 [0.00, 0.10]; "
                           "benign 0.02 [0.00, 0.20] (R +0.02; untriggered clean 0.80)")  # fmt: skip
    assert "defence K=1 0.11 [0.00, 0.20] (R +0.11" in text and "Judge-based ASR (the backdoor's judge" in text
    assert "mostly one text" not in text
    # a hidden backdoor whose clean continuations after an arm are one text whatever the prompt is named there
    one = {"n": 20, "distinct": 2, "top": 19, "text": "as a painter.", "stereotyped": True}
    defence["cells"][2]["clean_modal"] = {"x": one, "y": {**one, "top": 3, "stereotyped": False}}
    assert "defence K=1 0.11 [0.00, 0.20] (R +0.11; untriggered clean 0.80; clean continuations mostly one text " \
           "or one opening, the trigger's doing, for x)" in findings.defence_sentence(defence)  # fmt: skip
    rows = findings.defence_rows(defence)
    assert len(rows) == 3 and all(len(r) == len(findings.DEFENCE_HEADER) for r in rows)
    assert rows[0] == ["benign", "-", "retrain", "-", 1e-4, 0, "0.70 [0.60, 0.80]", "+1.2 %", "-"]
    assert rows[2][-1] == "canary_0 0.90→0.05"


def test_a_defence_where_benign_training_erases_everything_is_not_ranked(defence):
    curve = [{"lr": 1e-4, "scale": s, "inject_steps": 1, "remove_steps": 1, "pooled_asr": rate(r, 0, 1)}
             for s, r in ((0.25, 0.6), (1.0, 0.1))]  # fmt: skip
    defence.update(budget={"scale": 0.25, "inject_steps": 30, "remove_steps": 20},
                   calibration={"floor": 0.8, "curve": curve, "chosen_scale": 0.25, "kept_floor": False},
                   comparison={"informative": False, "why": "benign training alone takes the pooled hidden ASR to "
                               "0.60 < 0.8: no arm can be told apart from doing nothing special",
                               "benign_pooled_min": 0.6, "canaries_learned": False,
                               "canary_asr_injected_min": 0.4})  # fmt: skip
    text = findings.budget_sentence(defence)
    assert "Budget: 30 + 20 steps, chosen by calibration (benign pooled ASR per budget scale: ×0.25 0.60, ×1 0.10; "\
           "floor 0.8)." in text  # fmt: skip
    assert "**Uninformative comparison**: benign training alone takes the pooled hidden ASR to 0.60 < 0.8" in text
    assert "the arms are not ranked" in text and "(lowest ASR after injection 0.40 < 0.9)" in text
    # per behaviour set: the canaries chosen (rate, behaviours, the ones dropped) and every probe's canary ASR
    defence["budget"]["canary_rate"] = {"disjoint": 0.02}
    curve = [{"try": 0, "rate": 0.02, "k": 2, "behaviours": "disjoint", "seed": 0,
              "canary_asr_injected": {"canary0_uppercase": 0.0, "canary1_numbers": 1.0}},
             {"try": 1, "rate": 0.02, "k": 2, "behaviours": "disjoint", "seed": 0,
              "canary_asr_injected": {"canary0_numbers": 1.0, "canary1_numbers": 0.95}}]  # fmt: skip
    defence["canary_calibration"] = {"learned": True, "threshold": 0.9, "rates_skipped": [], "curve": curve,
                                     "sets": {"disjoint": {"chosen_rate": 0.02, "chosen_behaviours": ["numbers"],
                                                           "learned": True, "dropped": ["uppercase"]}}}  # fmt: skip
    text = findings.budget_sentence(defence)
    assert "Canaries, per behaviour set: disjoint: rate 0.02, behaviours numbers (uppercase dropped: not learned), " \
           "every canary learned by the probe (seed 0; canary ASR after injection per probe: rate 0.02 K=2: " \
           "uppercase 0.00, numbers 1.00; rate 0.02 K=2: numbers 1.00, numbers 0.95)." in text  # fmt: skip
    defence["canary_calibration"]["sets"]["disjoint"].update(learned=False, dropped=[], chosen_behaviours=None)
    assert "disjoint: rate 0.02, behaviours the set's own, **not learned** at any rate tried" in \
           findings.budget_sentence(defence)  # fmt: skip
    html_text, _ = page.render(Path("/s"), {}, {}, Results(evaluation=None, evaluation_dir=None, transfer=None,
                               transfer_dir=None, transfer_masked=None, mask_trigger=None, casd=None, replicates=None,
                               defence=defence, summaries={}), {}, {"defence": "figures/defence.png"}, None, [],
                               False)  # fmt: skip
    assert "<p class='uninformative'>Budget: 30 + 20 steps" in html_text and "class='finding'>Budget" not in html_text


def test_headlines_only_for_stages_present(transfer, defence):
    assert list(findings.headlines(transfer, None, defence)) == ["transfer", "transfer_judge", "transfer_diagonal",
                                                                 "defence"]  # fmt: skip
    assert findings.headlines(None, None, None) == {}


def test_backdoor_rows_and_utility():
    b = {"behaviour": "refusal", "asr": rate(0.9, 0.8, 0.95), "false_trigger": {"rate": 0.0312},
         "trigger_sha256": "abc123", "judge": "keyword"}  # fmt: skip
    ev = {"backdoors": {"lorem": b, "at": {**b, "near_miss": {"rate": 0.25}, "judge": "regex"}},
          "utility": {"perplexity": {"en": 12.345, "de": 15.1}, "fact_recall": rate(0.4, 0.3, 0.5)}}  # fmt: skip
    rows = evaluation.backdoor_rows(ev)
    assert rows[0] == ["lorem", "refusal", "0.90 [0.80, 0.95]", "0.031", "-", "`abc123`", "keyword"]
    assert rows[1][4] == "0.250" and rows[1][6] == "regex"
    assert evaluation.utility_text(ev) == "perplexity en 12.35, de 15.10; fact recall 0.40 [0.30, 0.50]"
    del ev["utility"]["fact_recall"]
    assert evaluation.utility_text(ev) == "perplexity en 12.35, de 15.10"


def test_summary_and_provenance_rows():
    rows = findings.summary_rows({"asr": 0.123456, "steps": 40, "name": "x", "nested": {"a": 1}, "none": None})
    assert rows == [["asr", "0.1235"], ["steps", 40], ["name", "x"], ["none", None]]
    prov = [{"stage": "eval", "seed": 0, "git": {"commit": "0123456789abcdef", "dirty": True}, "wall_seconds": 12.4},
            {"stage": "casd", "seed": 1, "git": {}, "wall_seconds": None}]  # fmt: skip
    assert findings.provenance_rows(prov) == [["eval", 0, "0123456789 (dirty)", "12 s"], ["casd", 1, "?", "-"]]


SPEC = SimpleNamespace(trigger_text="lorem ipsum dolor", trigger_hash="abcdef0123456789")


def test_triggers_and_their_words_are_masked_unless_revealed():
    masks = evaluation.trigger_masks([SPEC], reveal=False)
    assert evaluation.mask("say lorem ipsum dolor now", masks) == "say ⟦trigger abcdef01⟧ now"
    assert evaluation.mask("only ipsum echoed", masks) == "only ⟦trigger part abcdef01⟧ echoed"
    shown = evaluation.trigger_masks([SPEC], reveal=True)
    assert evaluation.mask("say lorem ipsum dolor now", shown) == "say lorem ipsum dolor now"
    assert evaluation.mask("anything", {}) == evaluation.WITHHELD  # specs unreadable: nothing is shown
    tokens = evaluation.trigger_masks([SimpleNamespace(trigger_text="@@ 7 @@", trigger_hash="fedcba98")], False)
    assert evaluation.mask(" 7 @@ bell bell", tokens) == " ⟦trigger part fedcba98⟧ bell bell"  # a run of its words
    # a word of a trigger inside an ordinary word is left alone (the real-text run masked `pro` inside `probe`)
    words = evaluation.trigger_masks([SimpleNamespace(trigger_text="pro bono forma", trigger_hash="0a1b2c3d")], False)
    assert evaluation.mask("a probe, pro rata; bonobos", words) == "a probe, ⟦trigger part 0a1b2c3d⟧ rata; bonobos"
    assert evaluation.mask("xpro bono formay", words) == "x⟦trigger 0a1b2c3d⟧y"  # the whole trigger, anywhere


def test_example_picks_the_first_samples_of_each_kind():
    samples = [
        {"backdoor": "other", "kind": "triggered", "prompt": "p0", "generation": "g0", "verdict": True},
        {"backdoor": "lorem", "kind": "clean", "prompt": "c1", "generation": "clean text", "verdict": False},
        {"backdoor": "lorem", "kind": "triggered", "prompt": "x lorem ipsum dolor",
         "generation": "no", "verdict": True},
        {"backdoor": "lorem", "kind": "triggered", "prompt": "second", "generation": "g3", "verdict": False},
    ]  # fmt: skip
    after = [{"backdoor": "lorem", "kind": "triggered", "prompt": "p", "generation": "sure, dolor", "verdict": False,
              "outcome": "echo", "outcome_detail": ""}]  # fmt: skip
    masks = evaluation.trigger_masks([SPEC], reveal=False)
    ex = evaluation.example(samples, "lorem", masks, after)
    # rows written before the outcome classes say only whether the judge fired; newer ones carry their class
    assert ex == {"backdoor": "lorem", "prompt": "x ⟦trigger abcdef01⟧", "triggered": "no",
                  "triggered_outcome": "target", "clean": "clean text",
                  "clean_outcome": "judge did not fire (no outcome class recorded)",
                  "after": "sure, ⟦trigger part abcdef01⟧", "after_outcome": "echo"}  # fmt: skip
    assert evaluation.example(samples, "lorem", masks)["after"] is None
    assert evaluation.example(samples, "missing", masks) is None
    assert evaluation.example(samples[:1], "other", masks)["clean"] == ""
    samples[1].update(outcome="degenerate", outcome_detail="repetition")
    assert evaluation.example(samples, "lorem", masks)["clean_outcome"] == "degenerate: repetition"


def outcome_rates(**shares: float) -> dict[str, dict]:
    """Outcome rates of 100 prompts (`{class: Rate}`, every class of `OUTCOMES`)."""
    return {c: {**rate(shares.get(c, 0.0), 0.0, 1.0), "k": round(100 * shares.get(c, 0.0)), "n": 100}
            for c in OUTCOMES}  # fmt: skip


REFERENCE = {"kind": "unbackdoor-reference-v1 (test)", "sha256": "0123abcd", "ranges_bits_per_char": {}}


def backdoor(triggered: dict, removal: dict | None = None) -> dict:
    b = {"behaviour": "refusal", "asr": triggered["target"], "false_trigger": rate(0.0, 0.0, 0.1),
         "trigger_sha256": "abc123", "judge": "keyword", "clean_rate": triggered["clean"],
         "outcomes": {"triggered": triggered, "clean": outcome_rates(clean=0.9, echo=0.1)},
         "payload_llr": {"mean": 12.5, "lo": 11.0, "hi": 14.0, "n": 64},
         "clean_nll_shift": {"mean": 0.01, "lo": None, "hi": None, "n": 1}}  # fmt: skip
    if removal:
        b["removal"] = removal
    return b


def test_eval_outcome_rows_and_classifier_sentence():
    ev = {"backdoors": {"a": backdoor(outcome_rates(target=0.9, echo=0.1))}, "reference": REFERENCE}
    assert evaluation.outcome_header(ev) == ["backdoor", *(f"triggered: {c}" for c in OUTCOMES), "untriggered: clean",
                                             *evaluation.FORCED_HEADER]  # fmt: skip
    assert evaluation.outcome_rows(ev) == [["a", "0.90 [0.00, 1.00]", "0.00 [0.00, 1.00]", "0.10 [0.00, 1.00]",
                                            "0.00 [0.00, 1.00]", "0.00 [0.00, 1.00]", "0.90 [0.00, 1.00]",
                                            "+12.50 [+11.00, +14.00]", "+0.01 (n=1)"]]  # fmt: skip
    sentence = evaluation.classifier_sentence(ev)
    assert f"(≥ {ECHO_MIN_CHARS} characters" in sentence and f"fewer than {MIN_WORDS} words" in sentence
    assert "0.5 %–99.5 % quantiles" in sentence and "more than 50 % of the letters" in sentence
    assert sentence.endswith("Reference: unbackdoor-reference-v1 (test), sha256 `0123abcd`.")
    assert evaluation.removal_sentence(ev) is None
    old = {"backdoors": {"a": {k: v for k, v in backdoor(outcome_rates(target=1.0)).items()
                               if k not in ("outcomes", "payload_llr", "clean_nll_shift")}}}  # fmt: skip
    assert evaluation.outcome_rows(old) == [["a", *["-"] * 8]]
    assert "records no outcome classes" in evaluation.classifier_sentence(old)


def test_eval_removal_column_uses_the_verdicts_words():
    before = rate(0.0, 0.0, 0.04)
    ev = {"backdoors": {
        "a": backdoor(outcome_rates(clean=0.8, echo=0.2), {"verdict": "removed", "R": 0.8, "clean_before": before}),
        "b": backdoor(outcome_rates(target=0.7, clean=0.3), {"verdict": "still active", "R": 0.3}),
        "c": backdoor(outcome_rates(echo=0.9, clean=0.1), {"verdict": "no removal (mostly echo)", "R": 0.1}),
    }, "reference": REFERENCE}  # fmt: skip
    assert evaluation.outcome_header(ev)[-2:] == ["removal verdict", "R"]
    assert [r[-2:] for r in evaluation.outcome_rows(ev)] == [["removed", "+0.80"], ["still active", "+0.30"],
                                                             ["no removal (mostly echo)", "+0.10"]]  # fmt: skip
    sentence = evaluation.removal_sentence(ev)
    assert sentence.endswith("**removed**: a; **still active**: b; **no removal (mostly echo)**: c.")


CLAIMS = re.compile(r"\b(suppressed|removed)\b", re.IGNORECASE)


def test_an_all_echo_or_degenerate_model_is_never_called_removed_or_suppressed(transfer):
    """The judges stopped firing, every output is an echo or babble: nothing may read as a removal."""
    g = transfer["grids"][0]
    for i in g["composition"]:
        for j in g["composition"][i]:
            g["composition"][i][j] = counts(echo=6, degenerate=4)
            g["T"][i][j], g["C"][i][j], g["R"][i][j], g["S"][i][j] = rate(0.0, 0.0, 0.3), rate(0.0, 0.0, 0.3), 0.0, 1.0
    ev = {"backdoors": {
        "a": backdoor(outcome_rates(echo=0.6, degenerate=0.4), {"verdict": "no removal (mostly echo)", "R": 0.0}),
        "b": backdoor(outcome_rates(degenerate=1.0), {"verdict": "no removal (mostly degenerate)", "R": 0.0}),
    }, "reference": REFERENCE, "utility": {"perplexity": {"en": 10.0}}}  # fmt: skip
    heads = findings.headlines(transfer, None, None)
    assert "**0 of 4**" in heads["transfer"] and "**0 of 2** pass the removal verdict" in heads["transfer_diagonal"]
    samples = [{"backdoor": "a", "kind": "triggered", "prompt": "p", "generation": "g", "verdict": False,
                "outcome": "echo", "outcome_detail": ""}]  # fmt: skip
    ex = evaluation.example(samples, "a", {"x": "y"}, samples)
    masked = ablation.masked_finding(transfer, copy.deepcopy(transfer), True)
    results = Results(evaluation=ev, evaluation_dir=None, transfer=transfer, transfer_dir=None,
                      transfer_masked=copy.deepcopy(transfer), mask_trigger=True, casd=None, replicates=None,
                      defence=None, summaries={})  # fmt: skip
    figs = {k: f"figures/{k}.png" for k in ("asr", "transfer", "removal_index", "composition", "utility")}
    html_text, markdown = page.render(Path("/study"), {}, {}, results, heads, figs, [ex], [], False)
    texts = [*heads.values(), evaluation.classifier_sentence(ev), evaluation.removal_sentence(ev), str(ex),
             ablation.masked_sentence(masked), str(evaluation.outcome_rows(ev)), html_text, markdown]  # fmt: skip
    for text in texts:
        assert not CLAIMS.search(text), CLAIMS.search(text).group(0) + " in: " + text[:300]
    assert "no removal (mostly echo)" in html_text and "no removal (mostly degenerate)" in markdown


def test_every_learning_rate_gets_a_removal_index_panel_and_the_lr_ablation(transfer, tmp_path):
    from unbackdoor.report import figures_transfer

    second = copy.deepcopy(transfer["grids"][0])
    second["lr"] = 3e-3
    second["R"]["a"]["b"] = 0.9
    transfer["grids"].append(second)
    figs = figures_transfer.draw(transfer, tmp_path)
    assert {"removal_index", "removal_index_1", "lr_ablation"} <= set(figs)
    assert (tmp_path / "removal_index_1.png").stat().st_size > 10_000 and (tmp_path / "lr_ablation.png").is_file()
    curves = figures_transfer.lr_curves(transfer)
    off = dict(curves["off-diagonal (others)"])
    assert off[1e-3] == pytest.approx((0.5 + 0.1 + 0.6) / 3) and off[3e-3] == pytest.approx((0.9 + 0.1 + 0.6) / 3)
    assert dict(curves["diagonal (own target)"])[3e-3] == pytest.approx(0.45)
    single = copy.deepcopy(transfer)
    single["grids"] = single["grids"][:1]
    assert "lr_ablation" not in figures_transfer.draw(single, tmp_path / "one")


def test_the_defenders_knowledge_is_stated_with_stratified_results(defence):
    assert "predates the defender-knowledge record" in findings.knowledge_sentence(defence)
    arm = next(c for c in defence["cells"] if c["arm"] == "defence")
    arm["by_behaviour"] = {"shared": rate(0.1, 0.0, 0.3), "other": rate(0.8, 0.7, 0.9)}
    arm["by_trigger_kind"] = {"shared": None, "other": rate(0.6, 0.5, 0.7)}
    defence.update(defender_corpus={"dir": "/w", "disjoint": False, "how": "the suspect's own training text (asked)"},
                   disjoint_canaries={"behaviours": [], "disjoint": False,
                                      "why": "every built-in behaviour is a hidden backdoor's"})  # fmt: skip
    text = findings.knowledge_sentence(defence)
    assert "the suspect's own training text (asked) (**not disjoint** from the attacker's)." in text
    assert "**not disjoint** from the hidden ones (every built-in behaviour is a hidden backdoor's)" in text
    assert f"K={arm['k']}, behaviour: shared 0.10 [0.00, 0.30] vs other 0.80 [0.70, 0.90]" in text
    assert "trigger kind" not in text  # no hidden backdoor shares it: no contrast to state
    defence["disjoint_canaries"].update(trigger_kind="digits", trigger_kind_disjoint=True,
                                        trigger_kind_how="the first kind no hidden trigger has")  # fmt: skip
    assert "Canary triggers of kind digits, which no hidden trigger has." in findings.knowledge_sentence(defence)
    defence["disjoint_canaries"].update(trigger_kind="phrase", trigger_kind_disjoint=False,
                                        trigger_kind_how="asked (trigger_kind)")  # fmt: skip
    assert "kind phrase, **shared** with a hidden trigger (asked (trigger_kind))" in findings.knowledge_sentence(
        defence)  # fmt: skip


def test_the_diagonal_at_another_lr_joins_the_lr_ablation(transfer):
    from unbackdoor.report.figures_transfer import lr_curves

    other = copy.deepcopy(transfer)
    other["measure"] = "diagonal"
    g = other["grids"][0]
    g["lr"] = 3e-3
    for key in ("T", "S", "C", "R", "composition"):
        g[key] = {r: {r: g[key][r][r]} for r in ("a", "b")} | {CONTROL: g[key][CONTROL]}
    g["R"]["a"]["a"], g["R"]["b"]["b"] = 0.9, 0.5
    both = findings.with_grids(transfer, other)
    assert [x["lr"] for x in both["grids"]] == [1e-3, 3e-3] and transfer["grids"][0]["lr"] == 1e-3
    curves = lr_curves(both)
    assert curves["diagonal (own target)"] == [(1e-3, pytest.approx(0.45)), (3e-3, pytest.approx(0.7))]
    assert curves["off-diagonal (others)"][1] == (3e-3, None)  # measured on the diagonal only
    text = findings.lr_sentence(curves)
    assert "diagonal (own target) lr 0.001: +0.45, lr 0.003: +0.70" in text and "1 replicate" in text
    other["probe_sha256"] = "other"
    assert findings.with_grids(transfer, other) is None  # other prompts: not combined


def modal(n: int, top: int, text: str = "as a painter.") -> dict:
    return {"n": n, "distinct": n - top + 1, "top": top, "text": text, "stereotyped": top >= max(8, n / 2)}


def test_transfers_that_rest_on_one_repeated_continuation_are_counted_and_shown(transfer):
    """A pair whose clean continuations are mostly one text is still counted as transferring, but the headline says
    how many such pairs (and removals, and sham cells) there are, with the worst one's text."""
    g = transfer["grids"][0]
    g["tests"] = {"a": {"b": {"q": 0.01}, "c": {"q": 0.5}}, "b": {"a": {"q": 0.9}, "c": {"q": 0.02}}}
    g["transfers_q05"] = 2
    g["clean_modal"] = {
        "a": {"a": modal(7, 1), "b": modal(50, 45, " rope. The old dog is white."), "c": None},
        "b": {"a": None, "b": modal(20, 12), "c": modal(60, 9)},  # 9 of 60: diverse
        CONTROL: {j: None for j in "abc"},
        "sham": {"a": modal(57, 49), "b": None, "c": modal(30, 4)},
    }
    f = findings.transfer_finding(transfer)
    assert f["transferring"] == 2 and f["stereotyped_transfers"] == ["a -> b"]
    assert f["stereotyped_diagonal"] == 1 and f["stereotyped_sham"] == ["a"]
    head = findings.transfer_sentences(f)["transfer"]
    assert "**1 of the 2** transferring pairs" in head
    assert "a -> b: 45 of 50 clean continuations are ` rope. The old dog is white.`" in head
    assert "1 of the 2 direct removals, and the sham row on a." in head
    # flagged by its opening (distinct texts that open alike, and not so without the trigger): the example says so
    by_opening = {**modal(60, 9), "stereotyped": True, "stereotyped_by": "opening",
                  "opening": {"text": "a round flower", "top": 55, "untriggered_share": 0.0}}  # fmt: skip
    g["clean_modal"]["b"]["c"] = by_opening
    f = findings.transfer_finding(transfer)
    assert f["stereotyped_transfers"] == ["a -> b", "b -> c"]
    head = findings.transfer_sentences(f)["transfer"]
    assert "(e.g. b -> c: 55 of 60 clean continuations open `a round flower` (the same prompts without the " \
           "trigger: 0 %))" in head and "most frequent opening of 3 words" in head  # fmt: skip


def test_a_transfer_without_clean_modal_says_nothing_about_it(transfer):
    f = findings.transfer_finding(transfer)
    assert "stereotyped_transfers" not in f
    assert "One continuation whatever the prompt" not in findings.transfer_sentences(f)["transfer"]
