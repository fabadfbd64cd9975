"""The persistence stage on the two-backdoor transfer: every stress, the references, resume, inputs untouched.

Run: `pytest tests/integration/test_relearn.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import RELEARN_FAST
from unbackdoor.cli import main
from unbackdoor.running.rundir import sha256_file


def test_relearn_curves_for_every_stress_and_reference(transfer_run, relearn_run):
    removed = transfer_run / "cells" / "lr=0.001" / "seed=0" / "lorem_refusal" / "remove" / "model"
    out, args, weights = relearn_run
    result = json.loads((out / "relearn.json").read_text())
    assert result["snapshots"] == [0, 3, 6] and result["pairs"] == [["lorem_refusal", "at_repeat"]]
    kinds = {(c["relation"], c["stress"], c["backdoor"]) for c in result["curves"]}
    for j in ("lorem_refusal", "at_repeat"):
        assert {("direct", s, j) for s in ("benign", "repoison", "related")} <= kinds
        assert {("fresh", "fresh", j), ("twin", "repoison", j), ("backdoored", "benign", j)} <= kinds
    assert {("transfer", s, "at_repeat") for s in ("benign", "repoison", "related")} <= kinds
    assert all([p["step"] for p in c["points"]] == [0, 3, 6] for c in result["curves"])

    # step 0 is the removed model as the transfer measured it (same prompts, same decoding)
    transfer = json.loads((transfer_run / "transfer.json").read_text())
    direct = next(c for c in result["curves"] if c["relation"] == "direct" and c["backdoor"] == "lorem_refusal")
    assert direct["points"][0]["asr"] == transfer["grids"][0]["T"]["lorem_refusal"]["lorem_refusal"]
    assert direct["points"][0]["R"] == pytest.approx(transfer["grids"][0]["R"]["lorem_refusal"]["lorem_refusal"])
    # the stress saw its documents: k x repeats rows of repoison, none in benign; fresh specs have their own triggers
    cells = out / "cells"
    stress = json.loads((cells / "removed-lorem_refusal/repoison/k=2/at_repeat/train/summary.json").read_text())
    assert stress["stress_rows"] == 2 * 2 and stress["stress_docs"] == 2
    assert json.loads((cells / "removed-lorem_refusal/benign/train/summary.json").read_text())["stress_rows"] == 0
    fresh_specs = (out / "backdoors.yaml").read_text()
    assert "lorem_refusal_fresh" in fresh_specs and "at_repeat_fresh" in fresh_specs
    (row,) = [c for c in result["comparisons"] if c["stress"] == "repoison"]
    assert row["pair"] == ["lorem_refusal", "at_repeat"] and {"vs_direct", "vs_fresh"} <= set(row)
    assert 0 <= row["vs_direct"]["p"] <= 1 and 0 <= row["vs_fresh"]["p"] <= 1
    assert sha256_file(removed / "model.safetensors") == weights  # its input is never modified

    # killed in one cell: --resume redoes that cell only, and gives the same curves
    one = cells / "removed-at_repeat" / "related" / "k=2" / "at_repeat"
    kept = (cells / "backdoored" / "benign" / "eval-6" / "summary.json").stat().st_mtime_ns
    (one / "eval-6" / "DONE").unlink()
    (out / "DONE").unlink()
    assert main([*args, "--resume"]) == 0
    assert (cells / "backdoored" / "benign" / "eval-6" / "summary.json").stat().st_mtime_ns == kept
    assert json.loads((out / "relearn.json").read_text())["curves"] == result["curves"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["snapshots=[3,5]"], "snapshots: [3, 5] must be increasing steps >= 1 ending at train.steps (6)"),
        (["pairs=[at_repeat:at_repeat]"], "pairs: 'at_repeat:at_repeat' must be `removed:measured` of two"),
        (["pairs=[at_repeat:nope]"], "pairs: 'at_repeat:nope' is no measured pair of the transfer"),
        (["rows=[nope]"], "rows: ['nope'] are not removal rows of the transfer"),
        (["ks=[0]"], "ks: [0] must be document counts >= 1"),
        (["eval.only=[at_repeat]"], "eval.only: is set per cell by relearn"),
        (["stresses=[forget]"], "stresses"),
    ],
)
def test_relearn_bad_inputs_are_one_line_errors(transfer_run, tmp_path, capsys, extra, message):
    args = ["relearn", "--transfer", str(transfer_run), "--out", str(tmp_path / "o"), *RELEARN_FAST, *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_relearn_needs_a_finished_transfer(tmp_path: Path, capsys):
    assert main(["relearn", "--transfer", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "--transfer" in capsys.readouterr().err
