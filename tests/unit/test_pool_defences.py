"""The canary defence pooled over replicates: per arm, per-replicate values, means with t intervals, contrasts."""

from __future__ import annotations

from typing import Any

import pytest

from unbackdoor.report import findings
from unbackdoor.stages.replicates import pool_defences


def cell(arm: str, clean: float, asr: float, one_text: int = 0) -> dict[str, Any]:
    where = "lr=0.001/seed=0/benign" if arm == "benign" else f"lr=0.001/seed=0/retrain/disjoint/k=2/{arm}"
    modal = {f"b{n}": {"stereotyped": n < one_text, "n": 20} for n in range(4)}
    return {"dir": where, "arm": arm, "k": 0 if arm == "benign" else 2, "method": "retrain", "lr": 1e-3, "seed": 0,
            "canary_behaviours": None if arm == "benign" else ["numbers"], "pooled_asr": {"rate": asr},
            "pooled_clean": {"rate": clean}, "R": clean, "clean_modal": modal}  # fmt: skip


def study(benign: float, defence: float, removal_only: float, informative: bool = True) -> dict[str, Any]:
    return {"hidden": ["b0", "b1", "b2", "b3"], "comparison": {"informative": informative}, "budget": {"scale": 0.25},
            "pooled_clean_before": {"rate": 0.0},
            "cells": [cell("benign", benign, 0.9), cell("defence", defence, 0.3, one_text=3),
                      cell("removal_only", removal_only, 0.6, one_text=1)]}  # fmt: skip


def test_arms_contrasts_and_the_sentence():
    pooled = pool_defences([study(0.0, 0.3, 0.1), study(0.0, 0.1, 0.2), study(0.1, 0.4, 0.1, informative=False)],
                           ["a", "b", "c"])  # fmt: skip
    defence = pooled["arms"]["lr=0.001/seed=0/retrain/disjoint/k=2/defence"]
    assert defence["pooled_clean"]["per_replicate"] == [0.3, 0.1, 0.4]
    assert defence["pooled_clean"]["mean"] == pytest.approx(0.8 / 3) and defence["pooled_clean"]["lo"] < 0.1
    assert defence["stereotyped"] == [3, 3, 3] and defence["canary_behaviours"] == [["numbers"]] * 3
    by = {(pooled["arms"][c["arm"]]["arm"], c["against_arm"]): c for c in pooled["contrasts"]}
    assert set(by) == {("defence", "benign"), ("defence", "removal_only"), ("removal_only", "benign")}
    vs_removal = by[("defence", "removal_only")]
    assert vs_removal["clean_diff"]["per_replicate"] == pytest.approx([0.2, -0.1, 0.3])
    assert vs_removal["positive_in"] == 2 and by[("defence", "benign")]["positive_in"] == 3
    assert pooled["informative"] == [True, True, False] and pooled["budget_scale"] == [0.25] * 3
    text = findings.defence_replicates_sentence(pooled)
    assert "informative in **2 of 3**" in text and "defence K=2 − removal_only +0.13" in text
    assert "(higher in 2 of 3)" in text and "In 1 replicate the comparison was not informative" in text
    assert "defence K=2 3, 3, 3" in text
    rows = findings.defence_replicate_rows(pooled)
    assert rows[1][:3] == ["defence K=2", "numbers; numbers; numbers", "0.30, 0.10, 0.40"]
