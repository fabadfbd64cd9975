"""Replicates as the unit: per-pair paired tests against the control inside a transfer experiment, and the
`replicates` stage pooling two independently injected models.

Run: `pytest tests/integration/test_replicates.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TRANSFER_FAST, inject
from unbackdoor.cli import main
from unbackdoor.measure.stats import exact_mcnemar
from unbackdoor.running.rundir import read_jsonl


@pytest.fixture(scope="module")
def second_replicate(small_world, clean_model, spec_file, tmp_path_factory):
    """The same two backdoors injected with another seed, and its transfer experiment."""
    root = tmp_path_factory.mktemp("rep1")
    assert inject(small_world, clean_model, spec_file, root / "inj", "--seed", "1") == 0
    out = root / "tr"
    assert main(["transfer", "--model", str(root / "inj" / "model"), "--out", str(out), *TRANSFER_FAST]) == 0
    return out


def test_every_pair_is_tested_against_the_control_on_the_same_prompts(transfer_run):
    table = json.loads((transfer_run / "transfer.json").read_text())
    grid = table["grids"][0]
    rows = [r for r in table["rows"] if r not in ("control", "sham")]
    assert set(grid["tests"]) == {*rows, "sham"} and set(grid["tests_sham"]) == set(rows)
    assert grid["transfers_q05_sham"] == sum(c["q"] < 0.05 for i, cols in grid["tests_sham"].items()
                                             for j, c in cols.items() if i != j)  # fmt: skip
    # recount one pair from the raw samples: gain = clean after removing i and not after the control
    i, j = rows[0], table["backdoors"][-1]
    cell = read_jsonl(transfer_run / "cells" / "lr=0.001" / "seed=0" / i / "eval" / "samples.jsonl")
    ctrl = read_jsonl(transfer_run / "cells" / "lr=0.001" / "seed=0" / "control" / "eval" / "samples.jsonl")
    a = [s["outcome"] == "clean" for s in cell if s["backdoor"] == j and s["kind"] == "triggered"]
    b = [s["outcome"] == "clean" for s in ctrl if s["backdoor"] == j and s["kind"] == "triggered"]
    t = grid["tests"][i][j]
    both = list(zip(a, b, strict=True))
    assert (t["gain"], t["loss"], t["n"]) == (sum(x and not y for x, y in both), sum(y and not x for x, y in both),
                                              len(a))  # fmt: skip
    assert t["p"] == pytest.approx(exact_mcnemar(t["gain"], t["loss"]))
    assert all(0 <= c["p"] <= c["q"] <= 1 for cols in grid["tests"].values() for c in cols.values())
    assert grid["transfers_q05"] == sum(c["q"] < 0.05 for i, cols in grid["tests"].items() for j, c in cols.items()
                                        if i != j)  # fmt: skip
    header = (transfer_run / "transfer.csv").read_text().splitlines()[0].split(",")
    assert {"p_vs_control", "q_vs_control"} <= set(header)


def test_replicates_pool_means_intervals_and_discordant_prompts(transfer_run, second_replicate, clean_model,
                                                               tmp_path):  # fmt: skip
    out = tmp_path / "pooled"
    assert main(["replicates", "--out", str(out), f"transfers=[{transfer_run},{second_replicate}]"]) == 0
    pooled = json.loads((out / "replicates.json").read_text())
    assert pooled["replicates"] == 2 and pooled["note"] is None
    tables = [json.loads((p / "transfer.json").read_text())["grids"][0] for p in (transfer_run, second_replicate)]
    grid = pooled["grids"][0]
    i, j = "lorem_refusal", "at_repeat"
    pair = grid["pairs"][i][j]
    rs = [t["R"][i][j] for t in tables]
    assert pair["R"]["mean"] == pytest.approx(sum(rs) / 2) and pair["R"]["n"] == 2
    assert pair["R"]["lo"] <= pair["R"]["mean"] <= pair["R"]["hi"]
    assert pair["gain"] == sum(t["tests"][i][j]["gain"] for t in tables)
    assert pair["p"] == pytest.approx(exact_mcnemar(pair["gain"], pair["loss"])) and pair["p"] <= pair["q"] <= 1
    assert pair["transfers_share"] in (0.0, 0.5, 1.0)
    judged = [m for t in tables if (m := t["clean_modal"][i][j]) and m["n"] >= 8]  # enough clean ones to tell
    assert pair["stereotyped_judged"] == len(judged) and "transfers_q05_stereotyped" in grid["headline"]
    assert pair["stereotyped_share"] == (sum(m["stereotyped"] for m in judged) / len(judged) if judged else None)
    assert len(grid["headline"]["transfers_stereotyped_per_replicate"]) == 2
    h = grid["headline"]
    assert h["pairs"] == 2 and h["transfers_per_replicate"] == [t["transfers_q05"] for t in tables]
    assert "control" in grid["pairs"] and "R_minus_control" not in grid["pairs"]["control"][j]
    beyond = pair["beyond_sham"]
    assert beyond["gain"] == sum(t["tests_sham"][i][j]["gain"] for t in tables) and beyond["p"] <= beyond["q"]
    assert "transfers_q05_sham" in h and h["R_sham"]["n"] == 2
    # both replicates' backdoors went into the same clean checkpoint: the pooled result says so, and the report
    assert [m["planted_by"] for m in pooled["models"]] == ["inject", "inject"]
    assert Path(pooled["shared_base"]).resolve() == clean_model.resolve()
    from unbackdoor.report.findings import replicates_sentence

    assert "injected into **one pretrained model**" in replicates_sentence(pooled)


def test_one_replicate_says_its_variance_is_unknown_and_bad_inputs_are_one_line(transfer_run, tmp_path, capsys):
    assert main(["replicates", "--out", str(tmp_path / "one"), f"transfers=[{transfer_run}]"]) == 0
    pooled = json.loads((tmp_path / "one" / "replicates.json").read_text())
    assert pooled["note"] == "1 replicate: between-model variance unknown"
    assert pooled["grids"][0]["headline"]["R_off"]["lo"] is None and pooled["shared_base"] is None
    capsys.readouterr()
    assert main(["replicates", "--out", str(tmp_path / "none")]) == 2
    assert "transfers: give the finished transfer experiments" in capsys.readouterr().err
    assert main(["replicates", "--out", str(tmp_path / "bad"), f"transfers=[{tmp_path}]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_the_defence_pools_per_arm_and_one_of_another_model_is_refused(transfer_run, second_replicate,
                                                                       defence_study, tmp_path, capsys):  # fmt: skip
    study = defence_study[0]  # the canary defence of the model transfer_run removed from
    out = tmp_path / "one"
    assert main(["replicates", "--out", str(out), f"transfers=[{transfer_run}]", f"defences=[{study}]"]) == 0
    pooled = json.loads((out / "replicates.json").read_text())["defence"]
    cells = json.loads((study / "defend.json").read_text())["cells"]
    assert list(pooled["arms"]) == [c["dir"] for c in cells] and pooled["replicates"] == 1
    for c in cells:
        arm = pooled["arms"][c["dir"]]
        assert arm["pooled_clean"]["per_replicate"] == [c["pooled_clean"]["rate"]]
        assert arm["pooled_clean"]["lo"] is None  # one replicate: no interval
        assert arm["pooled_asr"]["per_replicate"] == [c["pooled_asr"]["rate"]]
    against = {(pooled["arms"][c["arm"]]["arm"], c["against_arm"]) for c in pooled["contrasts"]}
    assert against == {("defence", "benign"), ("defence", "removal_only"), ("removal_only", "benign")}
    capsys.readouterr()
    # the second replicate's transfer removed from another model than the one this defence defended
    args = [f"transfers=[{transfer_run},{second_replicate}]", f"defences=[{study},{study}]"]
    assert main(["replicates", "--out", str(tmp_path / "bad"), *args]) == 2
    err = capsys.readouterr().err
    assert "give the defences in the order of the transfers" in err and len(err.strip().splitlines()) == 1
    assert main(["replicates", "--out", str(tmp_path / "bad"), args[0], f"defences=[{study}]"]) == 2
    assert "defences: 1 runs for 2 transfers" in capsys.readouterr().err
