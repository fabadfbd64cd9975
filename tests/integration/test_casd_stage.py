"""`unbackdoor casd` on a finished transfer experiment: the matrices, their relation to transfer, resume, errors.

Run: `pytest tests/integration/test_casd_stage.py`.
"""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from safetensors.torch import load_file

from unbackdoor.cli import main
from unbackdoor.measure.casd import shift_distance

CASD_FAST = ["n_probes=32", "bootstrap=200"]


def test_casd_matrix_profiles_and_relation(transfer_run, tmp_path):
    out = tmp_path / "casd"
    assert main(["casd", "--transfer", str(transfer_run), "--out", str(out), *CASD_FAST]) == 0
    result = json.loads((out / "casd.json").read_text())
    assert result["rows"] == ["lorem_refusal", "at_repeat", "control", "sham"]
    assert result["layers"] == [0, 1, 2, 3] and result["family"] == "llama"
    (grid,) = result["grids"]
    for metric in ("cosine", "l2"):
        casd = grid["casd"][metric]
        for j in result["backdoors"]:
            assert casd[j][j] == pytest.approx(0.0, abs=1e-9)  # removing j shifts j's probes like removing j
            assert len(grid["per_layer"][metric]["control"][j]) == 4
            assert 0 < casd["control"][j] <= 2
        off = casd["lorem_refusal"]["at_repeat"]
        assert off == pytest.approx(sum(grid["per_layer"][metric]["lorem_refusal"]["at_repeat"]) / 4)
    assert grid["weight_cosine"]["control"]["control"] == pytest.approx(1.0)
    assert -1 <= grid["weight_cosine"]["lorem_refusal"]["at_repeat"] <= 1
    # control-corrected: the shifts measured from the control's model, Delta_i - Delta_control
    corrected = grid["casd_control_corrected"]
    assert set(corrected["cosine"]) == {"lorem_refusal", "at_repeat"}  # removals only: no reference row
    acts = {name: load_file(str(out / "acts" / "lr=0.001" / "seed=0" / name / "at_repeat.safetensors"))["acts"]
            for name in ("control", "lorem_refusal", "at_repeat")}  # fmt: skip
    by_hand = shift_distance(acts["lorem_refusal"] - acts["control"], acts["at_repeat"] - acts["control"], "cosine")
    assert corrected["cosine"]["lorem_refusal"]["at_repeat"] == pytest.approx(by_hand.mean().item(), rel=1e-9)
    assert corrected["l2"]["at_repeat"]["at_repeat"] == pytest.approx(0.0, abs=1e-9)
    theta0 = grid["casd"]["cosine"]["lorem_refusal"]["at_repeat"]
    assert corrected["cosine"]["lorem_refusal"]["at_repeat"] != pytest.approx(theta0)  # another reference
    relation = grid["relation"]
    measures = ("casd_cosine", "casd_l2", "casd_cosine_corrected", "casd_l2_corrected", "weight_cosine")
    assert grid["pairs"] == 2 and set(relation) == {
        "expected_sign", "pairs", "transfers", "auroc", "additive",
        *(f"{m}_vs_suppression" for m in measures),
        *(f"{m}_vs_{t}_cluster" for m in measures for t in ("suppression", "R")),
    }  # fmt: skip
    assert relation["expected_sign"].startswith("rho < 0 for CASD")
    assert relation["casd_cosine_vs_R_cluster"]["clusters"] == 2 and set(relation["auroc"]) == set(measures)
    assert set(relation["additive"]) == {"suppression", "R"}
    rows = list(csv.DictReader((out / "casd.csv").open()))
    assert len(rows) == 4 * 2 * (4 + 1) and {r["layer"] for r in rows} == {"0", "1", "2", "3", "mean"}
    assert len(list((out / "acts").rglob("*.safetensors"))) == 5 * 2  # theta_0 + 4 cells, 2 backdoors each
    # resume: a finished run is reused; a lost summary with the activations kept recomputes from the cache
    assert main(["casd", "--transfer", str(transfer_run), "--out", str(out), *CASD_FAST, "--resume"]) == 0
    (out / "DONE").unlink()
    assert main(["casd", "--transfer", str(transfer_run), "--out", str(out), *CASD_FAST, "--resume"]) == 0
    assert json.loads((out / "casd.json").read_text())["grids"][0]["casd"] == grid["casd"]


def test_last_position_pooling_and_layer_subset(transfer_run, tmp_path):
    out = tmp_path / "casd-last"
    assert main(["casd", "--transfer", str(transfer_run), "--out", str(out), *CASD_FAST, "--pooling", "last",
                 "layers=[3]"]) == 0  # fmt: skip
    result = json.loads((out / "casd.json").read_text())
    assert result["pooling"] == "last" and result["layers"] == [3]
    assert len(result["grids"][0]["per_layer"]["cosine"]["control"]["at_repeat"]) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["n_probes=0"], "n_probes"),
        (["layers=[9]"], "layers: [9] out of range for a 4-layer model (valid: 0..3)"),
        (["--pooling", "first"], "pooling"),
    ],
)
def test_bad_inputs_are_one_line_errors(transfer_run, tmp_path, capsys, extra, message):
    assert main(["casd", "--transfer", str(transfer_run), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_unfinished_transfer_names_the_missing_cells(transfer_run, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(transfer_run, partial)
    (partial / "DONE").unlink()
    shutil.rmtree(partial / "cells" / "lr=0.001" / "seed=0" / "at_repeat" / "eval")
    assert main(["casd", "--transfer", str(partial), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "1 unfinished cell(s): lr=0.001/seed=0/at_repeat" in err and err.count("\n") == 1
    assert main(["casd", "--transfer", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_casd_of_a_transfer_with_restricted_rows_checks_its_columns_first(injected, tmp_path, capsys):
    """Rows restricted to one removal (the real-checkpoint run that crashed after 6 minutes of capture): the columns
    are the removed backdoors; a column never removed is refused before anything is captured."""
    tr = tmp_path / "tr"
    args = ["transfer", "--model", str(injected / "model"), "--out", str(tr), "backdoors=[lorem_refusal]",
            "remove.train.batch_size=4", "remove.train.seq_len=64", "remove.train.steps=4", "lr=[1e-3]",
            "eval.n_prompts=8", "eval.max_new_tokens=6", "eval.ppl_blocks=2", "eval.fact_items=4"]  # fmt: skip
    assert main(args) == 0
    out = tmp_path / "casd"
    assert main(["casd", "--transfer", str(tr), "--out", str(out), "columns=[at_repeat]", *CASD_FAST]) == 2
    err = capsys.readouterr().err
    assert "columns: ['at_repeat'] was never removed in this transfer" in err and err.count("\n") == 1
    assert not out.exists()
    assert main(["casd", "--transfer", str(tr), "--out", str(out), *CASD_FAST]) == 0
    result = json.loads((out / "casd.json").read_text())
    assert result["backdoors"] == ["lorem_refusal"] and result["backdoors_left_out"] == ["at_repeat"]
    (grid,) = result["grids"]
    assert set(grid["casd"]["cosine"]) == {"lorem_refusal", "control", "sham"}
    assert grid["casd"]["cosine"]["lorem_refusal"]["lorem_refusal"] == pytest.approx(0.0, abs=1e-9)
    assert grid["pairs"] == 0  # one removal: no off-diagonal pair to relate to transfer
