"""The canary defence pooled over replicates: per arm, per-replicate values, means with t intervals, contrasts.

Run: `pytest tests/unit/test_pool_defences.py`.
"""

from __future__ import annotations

from typing import Any

import pytest

from unbackdoor.measure.pooled_defence import pool_defences
from unbackdoor.report import findings


def cell(arm: str, clean: float, asr: float, one_text: int | None = 0, lr: float = 1e-3) -> dict[str, Any]:
    grid = f"lr={lr:g}/seed=0"
    where = f"{grid}/benign" if arm == "benign" else f"{grid}/retrain/disjoint/k=2/{arm}"
    modal = None if one_text is None else {f"b{n}": {"stereotyped": n < one_text, "n": 20} for n in range(4)}
    return {"dir": where, "arm": arm, "k": 0 if arm == "benign" else 2, "method": "retrain", "lr": lr, "seed": 0,
            "canary_behaviours": None if arm == "benign" else ["numbers"], "pooled_asr": {"rate": asr},
            "pooled_clean": {"rate": clean}, "R": clean, "clean_modal": modal}  # fmt: skip


def study(benign: float, defence: float, removal_only: float, informative: bool = True) -> dict[str, Any]:
    return {"hidden": ["b0", "b1", "b2", "b3"], "comparison": {"informative": informative, "canaries_learned": True},
            "budget": {"scale": 0.25},
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
    assert "the canaries learned in **2 of 3**" in text and "defence K=2 − removal_only +0.13" in text
    assert "(higher in 2 of 3)" in text and "In 1 replicate benign training fell below the floor" in text
    assert "defence K=2 3, 3, 3" in text and "defence K=2 **0.27 [0.00, 0.65]**" in text  # a rate: no sign, clipped
    rows = findings.defence_replicate_rows(pooled)
    assert rows[1][:3] == ["defence K=2", "numbers; numbers; numbers", "0.30, 0.10, 0.40"]


def test_each_arm_is_compared_with_the_benign_arm_of_its_own_learning_rate():
    def two_lrs(shift: float, one_text: int | None) -> dict[str, Any]:
        d = study(0.0, 0.3, 0.1)
        d["cells"] = [cell(arm, clean + (lr > 1e-3) * shift, 0.5, one_text, lr) for lr in (1e-3, 3e-3)
                      for arm, clean in (("benign", 0.0), ("defence", 0.3), ("removal_only", 0.1))]  # fmt: skip
        return d

    pooled = pool_defences([two_lrs(0.5, 1), two_lrs(0.4, None)], ["a", "b"])
    fast = {c["against"]: c for c in pooled["contrasts"] if c["arm"] == "lr=0.003/seed=0/retrain/disjoint/k=2/defence"}
    assert set(fast) == {"lr=0.003/seed=0/benign", "lr=0.003/seed=0/retrain/disjoint/k=2/removal_only"}
    assert fast["lr=0.003/seed=0/benign"]["clean_diff"]["per_replicate"] == pytest.approx([0.3, 0.3])
    assert pooled["arms"]["lr=0.003/seed=0/retrain/disjoint/k=2/defence"]["stereotyped"] == [1, None]
    text = findings.defence_replicates_sentence(pooled)
    assert "defence K=2 (lr 0.003) − benign +0.30" in text and "1, n/a" in text
