"""The persistence stage on the two-backdoor transfer: every stress, the references, resume, inputs untouched.

Run: `pytest tests/integration/test_relearn.py`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import RELEARN_FAST
from unbackdoor.cli import main
from unbackdoor.running.rundir import sha256_file


def test_relearn_curves_for_every_stress_and_reference(transfer_run, relearn_run):
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
    modal = transfer["grids"][0]["clean_modal"]["lorem_refusal"]["lorem_refusal"]
    assert direct["points"][0]["stereotyped"] is bool(modal and modal["stereotyped"])
    assert all(isinstance(p["stereotyped"], bool) for c in result["curves"] for p in c["points"])
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
    assert all(sha256_file(path) == sha for path, sha in weights.values())  # its inputs are never modified

    # killed in one cell: --resume redoes that cell only, and gives the same curves
    one = cells / "removed-at_repeat" / "related" / "k=2" / "at_repeat"
    kept = (cells / "backdoored" / "benign" / "eval-6" / "summary.json").stat().st_mtime_ns
    (one / "eval-6" / "DONE").unlink()
    (out / "DONE").unlink()
    assert main([*args, "--resume"]) == 0
    assert (cells / "backdoored" / "benign" / "eval-6" / "summary.json").stat().st_mtime_ns == kept
    assert json.loads((out / "relearn.json").read_text())["curves"] == result["curves"]


def test_relearn_after_the_defence(defence_study, relearn_run):
    """Each arm's model under benign training on every hidden backdoor; the defence arm's under the targeted
    stresses on the backdoors followed (the suppressed ones and the one named), compared with the direct removal."""
    out, _, _ = relearn_run
    result = json.loads((out / "relearn.json").read_text())
    defend = json.loads((defence_study[0] / "defend.json").read_text())
    first = {}
    for cell in defend["cells"]:
        first.setdefault(cell["arm"], cell)
    d = result["defence"]
    assert d["cells"] == {arm: c["dir"] for arm, c in first.items()} and d["hidden"] == defend["hidden"]
    assert d["suppressed"] == [j for j in defend["hidden"] if (first["defence"]["suppression"][j] or 0) >= 0.5]
    assert d["followed"] == list(dict.fromkeys([*d["suppressed"], "at_repeat"]))
    kinds = {(c["relation"], c["stress"], c["backdoor"]) for c in result["curves"]}
    for arm in ("defence", "removal_only", "benign"):
        assert {(f"defended-{arm}", "benign", j) for j in defend["hidden"]} <= kinds
    for j in d["followed"]:
        assert {("defended-defence", s, j) for s in ("repoison", "related")} <= kinds
        assert ("defended-defence", "fresh", j) not in kinds and ("twin", "repoison", j) in kinds
    # a defended model is the arm's saved model, measured with the arm's harness specs (its canaries known)
    start = yaml.safe_load((out / "start" / "defended-defence" / "config.yaml").read_text())
    cell = defence_study[0] / "cells" / first["defence"]["dir"]
    assert Path(start["model"]) == cell / "defend" / "model"
    assert Path(start["backdoors"]) == cell / "eval-specs.yaml"
    rows = {(r["backdoor"], r["stress"]) for r in result["defence_comparisons"]}
    assert rows == {(j, s) for j in d["followed"] for s in ("benign", "repoison", "related")}
    benign = next(r for r in result["defence_comparisons"] if r["stress"] == "benign" and r["backdoor"] == "at_repeat")
    assert {"vs_direct", "removal_only_asr", "benign_asr"} <= set(benign)
    assert benign["vs_direct"]["back"] + benign["vs_direct"]["less"] <= 32


def test_relearn_defence_must_be_of_the_transfers_model(transfer_run, relearn_run, defence_study, tmp_path, capsys):
    """A defence of another model, or a followed backdoor the defence did not hide: one line, nothing written."""
    other = tmp_path / "other"
    shutil.copytree(defence_study[0], other, symlinks=True)
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["model"] = str(relearn_run[0])  # not the transfer's model
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    done = json.loads((other / "DONE").read_text())
    done["sizes"]["config.yaml"] = (other / "config.yaml").stat().st_size
    (other / "DONE").write_text(json.dumps(done))
    base = ["relearn", "--transfer", str(transfer_run), *RELEARN_FAST]
    for extra, message in [
        (["--defence", str(other)], "not the transfer's model"),
        (["--defence", str(defence_study[0]), "defence_backdoors=[nope]"], "defence_backdoors: 'nope' is no hidden"),
        (["defence_backdoors=[at_repeat]"], "defence_backdoors: needs defence=DIR"),
    ]:
        assert main([*base, "--out", str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not (tmp_path / "o").exists()


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
