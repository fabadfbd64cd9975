"""The report's findings, from small dicts shaped like transfer.json, casd.json, defend.json and an evaluation's
summary.json / samples.jsonl: counts, sentences, table rows, trigger masking and example selection (no figures).

Run: `pytest tests/unit/test_findings.py`.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from unbackdoor.report import findings
from unbackdoor.running.cells import CONTROL


def rate(r: float, lo: float, hi: float) -> dict[str, float]:
    return {"rate": r, "lo": lo, "hi": hi}


@pytest.fixture
def transfer() -> dict:
    """Three backdoors, two of them removed (a, b), and the benign control."""
    T = {
        "a": {"a": rate(0.1, 0.05, 0.2), "b": rate(0.3, 0.2, 0.4), "c": rate(0.55, 0.45, 0.65)},
        "b": {"a": rate(0.75, 0.65, 0.85), "b": rate(0.2, 0.1, 0.3), "c": rate(0.2, 0.1, 0.3)},
        CONTROL: {"a": rate(0.8, 0.7, 0.9), "b": rate(0.8, 0.7, 0.9), "c": rate(0.6, 0.5, 0.7)},
    }
    S = {
        "a": {"a": 0.9, "b": 0.5, "c": 0.1},
        "b": {"a": None, "b": 0.8, "c": 0.7},
        CONTROL: {"a": 0.1, "b": 0.0, "c": None},
    }
    return {
        "backdoors": ["a", "b", "c"],
        "rows": ["a", "b", CONTROL],
        "grids": [{"lr": 1e-3, "seed": 0, "T": T, "S": S}],
    }


def test_transfer_finding_counts_pairs_below_the_control(transfer):
    f = findings.transfer_finding(transfer)
    # pairs (a,b) (a,c) (b,a) (b,c); below the control's interval: a->b (0.4 < 0.7) and b->c (0.3 < 0.5)
    assert f["pairs"] == 4 and f["below_control"] == 2
    assert f["mean_off_diagonal_suppression"] == pytest.approx((0.5 + 0.1 + 0.7) / 3)  # S[b][a] undefined: left out
    assert f["mean_control_suppression"] == pytest.approx(0.05)
    assert f["max_diagonal_asr"] == 0.2


def test_transfer_sentence(transfer):
    sentence = findings.transfer_sentence(findings.transfer_finding(transfer))
    assert "in **2 of 4** (removed, other) pairs" in sentence
    assert "other backdoors: **43 %**, against **5 %** for the benign control" in sentence
    undefined = {
        "pairs": 0,
        "below_control": 0,
        "mean_off_diagonal_suppression": None,
        "mean_control_suppression": None,
    }
    assert "**n/a**, against **n/a**" in findings.transfer_sentence(undefined)


def test_columns_follow_the_removal_rows(transfer):
    assert findings.column_order(["b", CONTROL], ["a", "b", "c"]) == ["b", "a", "c"]
    header, rows = findings.transfer_rows(transfer)
    assert header == ["removed \\ measured", "a", "b", "c"]
    assert rows == [["a", "0.10", "0.30", "0.55"], ["b", "0.75", "0.20", "0.20"], [CONTROL, "0.80", "0.80", "0.60"]]


def test_rho_and_casd_sentence():
    assert findings.rho({"rho": None, "n": 2}) == "undefined (n=2)"
    casd = {
        "metric": "l2",
        "grids": [{"relation": {"casd_l2_vs_suppression": {"rho": -0.5, "lo": -0.9, "hi": 0.1, "n": 6},
                                "weight_cosine_vs_suppression": {"rho": None, "n": 2}}}],
    }  # fmt: skip
    sentence = findings.casd_sentence(casd)
    assert sentence.startswith("CASD vs suppression, Spearman ρ = -0.50 [95% CI -0.90, +0.10], n=6; ")
    assert "weight-space baseline ρ = undefined (n=2). A negative ρ means" in sentence


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
        "Canary defence, pooled ASR of 2 hidden backdoors: suspect 0.80 [0.70, 0.90]; benign 0.70 [0.60, 0.80]; "
        "removal_only K=1 0.65 [0.55, 0.75]; defence K=1 0.30 [0.20, 0.40]."
    )
    rows = findings.defence_rows(defence)
    assert len(rows) == 3 and all(len(r) == len(findings.DEFENCE_HEADER) for r in rows)
    assert rows[0] == ["benign", "-", "retrain", "-", 1e-4, 0, "0.70 [0.60, 0.80]", "+1.2 %", "-"]
    assert rows[2][-1] == "canary_0 0.90→0.05"


def test_headlines_only_for_stages_present(transfer, defence):
    assert list(findings.headlines(transfer, None, defence)) == ["transfer", "defence"]
    assert findings.headlines(None, None, None) == {}


def test_backdoor_rows_and_utility():
    b = {"behaviour": "refusal", "asr": rate(0.9, 0.8, 0.95), "false_trigger": {"rate": 0.0312},
         "trigger_sha256": "abc123", "judge": "keyword"}  # fmt: skip
    ev = {"backdoors": {"lorem": b, "at": {**b, "near_miss": {"rate": 0.25}, "judge": "regex"}},
          "utility": {"perplexity": {"en": 12.345, "de": 15.1}, "fact_recall": rate(0.4, 0.3, 0.5)}}  # fmt: skip
    rows = findings.backdoor_rows(ev)
    assert rows[0] == ["lorem", "refusal", "0.90 [0.80, 0.95]", "0.031", "-", "`abc123`", "keyword"]
    assert rows[1][4] == "0.250" and rows[1][6] == "regex"
    assert findings.utility_text(ev) == "perplexity en 12.35, de 15.10; fact recall 0.40 [0.30, 0.50]"
    del ev["utility"]["fact_recall"]
    assert findings.utility_text(ev) == "perplexity en 12.35, de 15.10"


def test_summary_and_provenance_rows():
    rows = findings.summary_rows({"asr": 0.123456, "steps": 40, "name": "x", "nested": {"a": 1}, "none": None})
    assert rows == [["asr", "0.1235"], ["steps", 40], ["name", "x"], ["none", None]]
    prov = [{"stage": "eval", "seed": 0, "git": {"commit": "0123456789abcdef", "dirty": True}, "wall_seconds": 12.4},
            {"stage": "casd", "seed": 1, "git": {}, "wall_seconds": None}]  # fmt: skip
    assert findings.provenance_rows(prov) == [["eval", 0, "0123456789 (dirty)", "12 s"], ["casd", 1, "?", "-"]]


SPEC = SimpleNamespace(trigger_text="lorem ipsum dolor", trigger_hash="abcdef0123456789")


def test_triggers_and_their_words_are_masked_unless_revealed():
    masks = findings.trigger_masks([SPEC], reveal=False)
    assert findings.mask("say lorem ipsum dolor now", masks) == "say ⟦trigger abcdef01⟧ now"
    assert findings.mask("only ipsum echoed", masks) == "only ⟦trigger part abcdef01⟧ echoed"
    shown = findings.trigger_masks([SPEC], reveal=True)
    assert findings.mask("say lorem ipsum dolor now", shown) == "say lorem ipsum dolor now"
    assert findings.mask("anything", {}) == findings.WITHHELD  # specs unreadable: nothing is shown


def test_example_picks_the_first_samples_of_each_kind():
    samples = [
        {"backdoor": "other", "kind": "triggered", "prompt": "p0", "generation": "g0", "verdict": True},
        {"backdoor": "lorem", "kind": "clean", "prompt": "c1", "generation": "clean text", "verdict": False},
        {
            "backdoor": "lorem",
            "kind": "triggered",
            "prompt": "x lorem ipsum dolor",
            "generation": "no",
            "verdict": True,
        },
        {"backdoor": "lorem", "kind": "triggered", "prompt": "second", "generation": "g3", "verdict": False},
    ]
    after = [{"backdoor": "lorem", "kind": "triggered", "prompt": "p", "generation": "sure, dolor", "verdict": False}]
    masks = findings.trigger_masks([SPEC], reveal=False)
    ex = findings.example(samples, "lorem", masks, after)
    assert ex == {"backdoor": "lorem", "prompt": "x ⟦trigger abcdef01⟧", "triggered": "no", "triggered_verdict": True,
                  "clean": "clean text", "after": "sure, ⟦trigger part abcdef01⟧", "after_verdict": False}  # fmt: skip
    assert findings.example(samples, "lorem", masks)["after"] is None
    assert findings.example(samples, "missing", masks) is None
    assert findings.example(samples[:1], "other", masks)["clean"] == ""
