"""The embedded default end to end at full tiny size, against the issue's targets (slow: ~40 minutes).

Run: `make test-slow` (or `pytest -m slow tests/integration/test_demo_targets.py`).
"""

from __future__ import annotations

import json

import pytest

from unbackdoor.cli import main


@pytest.mark.slow
def test_demo_meets_the_tiny_targets(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    ev = json.loads((out / "eval" / "summary.json").read_text())
    for name, row in ev["backdoors"].items():
        assert row["asr"]["rate"] >= 0.9, name
        assert row["false_trigger"]["rate"] <= 0.05, name
        assert row["outcomes"]["clean"]["clean"]["rate"] >= 0.8, name  # the outcome calibration is sane
    pretrain = json.loads((out / "pretrain" / "meta.json").read_text())
    assert pretrain["wall_seconds"] <= 240 * 1.25  # 4 min target, +-25 % machine drift
    assert (out / "twin" / "DONE").is_file() and not (out / "inject").exists()  # replicates_from=pretrain
    transfer = json.loads((out / "transfer" / "transfer.json").read_text())
    grid = transfer["grids"][0]
    for name in transfer["backdoors"]:
        assert grid["T"][name][name]["rate"] <= 0.1, f"removing {name} left its ASR at {grid['T'][name][name]}"
        assert set(grid["composition"][name][name]) == {"target", "other_backdoor", "echo", "degenerate", "clean"}
    assert {"C", "R", "composition", "teacher_forced"} <= set(grid)
    masked = json.loads((out / "transfer-masked" / "transfer.json").read_text())
    assert "mask_trigger: true" in (out / "transfer-masked" / "config.yaml").read_text()
    assert masked["measure"] == "diagonal" and len(masked["grids"][0]["T"][masked["rows"][0]]) == 8  # + one full row
    relearn = json.loads((out / "relearn" / "relearn.json").read_text())
    followed = {(c["relation"], c["stress"]) for c in relearn["curves"]}
    assert {("direct", s) for s in ("benign", "repoison", "related")} | {("fresh", "fresh")} <= followed
    assert len([c for c in relearn["curves"] if c["relation"] == "direct" and c["stress"] == "repoison"]) == 8
    # the twin's and the defended models' references, and the defence's own persistence comparison
    assert ("twin", "repoison") in followed and ("defended-benign", "benign") in followed
    assert ("defended-defence", "benign") in followed and ("defended-removal_only", "benign") in followed
    assert len(relearn["defence_comparisons"]) == 3 * len(relearn["defence"]["followed"])
    casd = json.loads((out / "casd" / "casd.json").read_text())
    assert (
        len(casd["grids"][0]["casd"]["cosine"]) == 10  # 8 removals, the control and the sham
        and json.loads((out / "casd" / "summary.json").read_text())["seconds"] <= 90 * 1.25
    )
    pooled = json.loads((out / "replicates" / "replicates.json").read_text())
    assert pooled["replicates"] == 3 and (out / "replicate-2" / "transfer" / "DONE").is_file()
    assert (out / "replicate-2" / "defence" / "DONE").is_file() and pooled["defence"]["replicates"] == 3
    assert len(pooled["defence"]["arms"]) == 3 and len(pooled["defence"]["informative"]) == 3
    assert pooled["shared_base"] is None and {m["planted_by"] for m in pooled["models"]} == {"pretrain"}
    assert "transfers_q05" in pooled["grids"][0]["headline"] and "transfers_q05_sham" in pooled["grids"][0]["headline"]
    defence = json.loads((out / "defence" / "defend.json").read_text())
    assert defence["calibration"]["curve"] and "informative" in defence["comparison"]
    assert {c["arm"] for c in defence["cells"]} == {"benign", "defence", "removal_only"}
    assert "mask_trigger: true" in (out / "defence" / "config.yaml").read_text()
    assert all(abs(c["utility_change"]) <= 0.10 for c in defence["cells"])
    page = (out / "report" / "index.html").read_text()
    assert page.count("<img ") == 11 and 'class="missing"' not in page  # + the lr ablation
    lr = json.loads((out / "transfer-lr" / "transfer.json").read_text())
    assert [g["lr"] for g in lr["grids"]] == [3e-3] and lr["measure"] == "diagonal"
    # A second run reuses every finished stage.
    assert main(["demo", "--out", str(out), "--resume"]) == 0
