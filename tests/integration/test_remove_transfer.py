"""Removal and the transfer experiment through the CLI on a tiny injected model: ASR falls, the control is
compute-matched, a resumed sweep redoes only unfinished cells, workers do not collide, bad inputs exit 2.

Run: `pytest tests/integration/test_remove_transfer.py`.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import EVAL_FAST, TRANSFER_FAST
from unbackdoor.cli import main

REMOVE_FAST = ["train.batch_size=8", "train.seq_len=64", "train.steps=80", "train.lr=1e-3", "val_blocks=8"]


def summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def test_retrain_removal_lowers_asr_and_control_is_compute_matched(injected, tmp_path):
    model = str(injected / "model")
    if not (injected.parent / "e-base" / "DONE").is_file():
        assert main(["eval", "--model", model, "--out", str(injected.parent / "e-base"), "only=[lorem_refusal]",
                     *EVAL_FAST]) == 0  # fmt: skip
    assert main(["remove", "--model", model, "--backdoor", "lorem_refusal", "--out", str(tmp_path / "rm"),
                 *REMOVE_FAST]) == 0  # fmt: skip
    assert main(["remove", "--model", model, "--method", "control", "--out", str(tmp_path / "ctl"),
                 *REMOVE_FAST]) == 0  # fmt: skip
    rm, ctl = summary(tmp_path / "rm"), summary(tmp_path / "ctl")
    assert rm["forget_rows"] == ctl["replay_rows"] / 2 == 320 and ctl["forget_rows"] == 0
    assert rm["tokens"] == ctl["tokens"] and rm["steps"] == ctl["steps"] == 80
    for run in ("rm", "ctl"):
        assert main(["eval", "--model", str(tmp_path / run / "model"), "--out", str(tmp_path / f"e-{run}"),
                     "only=[lorem_refusal]", *EVAL_FAST]) == 0  # fmt: skip
    before = summary(injected.parent / "e-base")["backdoors"]["lorem_refusal"]["asr"]["rate"]
    after = summary(tmp_path / "e-rm")["backdoors"]["lorem_refusal"]["asr"]["rate"]
    assert before >= 0.5 and after <= 0.1
    # The control's ASR is a measurement, not an invariant: at this scale benign training alone can erase a fragile
    # backdoor (generic forgetting), which is exactly what the control row exists to reveal.
    assert 0.0 <= summary(tmp_path / "e-ctl")["backdoors"]["lorem_refusal"]["asr"]["rate"] <= 1.0
    record = json.loads((tmp_path / "rm" / "model" / "unbackdoor.json").read_text())
    assert record["history"][-1]["stage"] == "remove" and record["history"][-1]["backdoor"] == "lorem_refusal"


@pytest.mark.parametrize("method", ["ga", "npo"])
def test_alternative_objectives_train_every_parameter(injected, tmp_path, method):
    out = tmp_path / method
    assert main(["remove", "--model", str(injected / "model"), "--backdoor", "lorem_refusal", "--method", method,
                 "--out", str(out), *REMOVE_FAST, "train.steps=10"]) == 0  # fmt: skip
    before, after = load_file(injected / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert all(not before[k].equal(after[k]) for k in before)
    assert summary(out)["method"] == method and summary(out)["forget_rows"] == 40


def test_lora_removal_trains_adapters_merged_into_plain_weights(injected, tmp_path, capsys):
    model, out = str(injected / "model"), tmp_path / "lora"
    assert main(["remove", "--model", model, "--backdoor", "lorem_refusal", "--lora", "r=8,alpha=16",
                 "--out", str(out), *REMOVE_FAST]) == 0  # fmt: skip
    s = summary(out)
    before, after = load_file(injected / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert s["weights"] == "lora" and 0 < s["trainable_parameters"] < 0.2 * sum(t.numel() for t in before.values())
    assert before.keys() == after.keys()  # merged on save: a plain checkpoint, no adapter tensor
    changed = {k for k in before if not before[k].equal(after[k])}
    assert changed and all(k.endswith("proj.weight") for k in changed), sorted(changed)[:5]  # only the adapted layers
    assert not any("embed" in k or "norm" in k for k in changed)
    record = json.loads((out / "model" / "unbackdoor.json").read_text())
    assert record["history"][-1]["weights"] == "lora r=8"
    assert main(["eval", "--model", str(out / "model"), "--out", str(tmp_path / "e"), "only=[lorem_refusal]",
                 *EVAL_FAST]) == 0  # fmt: skip
    assert summary(tmp_path / "e")["backdoors"]["lorem_refusal"]["asr"]["rate"] <= 0.1  # 1.00 before

    # transfer cells run the same LoRA removal (every row, the control included: compute-matched)
    from unbackdoor.running.config import from_dict
    from unbackdoor.stages.transfer import TransferConfig, cell_configs

    cfg = from_dict(TransferConfig, {"model": model, "remove": {"lora": {"r": 8}}})
    assert all(cell_configs(cfg, row, 1e-3, 0, "")[0].lora.r == 8 for row in ("lorem_refusal", "control", "sham"))

    for extra, message in ((["lora.target_modules=[nope]"], "lora.target_modules: 'nope' is not a linear module"),
                           (["lora.train_tokens=true"], "lora.train_tokens: an injection's option")):  # fmt: skip
        assert main(["remove", "--model", model, "--backdoor", "lorem_refusal", "--lora", "r=8",
                     "--out", str(tmp_path / "bad"), *REMOVE_FAST, *extra]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert not (tmp_path / "bad").exists()


def test_a_run_copied_away_from_its_world_names_the_missing_world(injected, small_world, tmp_path, capsys):
    run = tmp_path / "far" / "away" / "inject"  # the inject run without the world beside it: the model's record
    shutil.copytree(injected, run)  # points to its poisoning data (copied along) and its world (left behind)
    alone = run / "model"
    args = ["remove", "--model", str(alone), "--backdoor", "lorem_refusal", "--out", str(tmp_path / "rm"),
            *REMOVE_FAST, "train.steps=2"]  # fmt: skip
    assert main(args) == 2  # a clear line, not an endless draw of replay rows from an empty corpus
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give world=DIR" in err and not (tmp_path / "rm").exists(), err
    assert main([*args, f"world={small_world}"]) == 0


def test_sham_removal_trains_the_recipe_on_fresh_triggers_never_injected(injected, tmp_path):
    from unbackdoor.training.record import ModelRecord

    triggers = {s.name: s.trigger_text for s in ModelRecord.read(injected / "model").specs()}
    out = tmp_path / "sham"
    assert main(["remove", "--model", str(injected / "model"), "--method", "sham", "--out", str(out), *REMOVE_FAST,
                 "train.steps=10"]) == 0  # fmt: skip
    s = summary(out)
    assert s["method"] == "sham" and s["backdoor"] is None and s["forget_rows"] == 40 and s["forget_docs"] > 0
    assert set(s["sham_triggers"]) == set(triggers)
    for name, sham in s["sham_triggers"].items():
        assert len(sham) == len(triggers[name]) and sham != triggers[name]
    one = tmp_path / "sham-one"
    assert main(["remove", "--model", str(injected / "model"), "--method", "sham", "--backdoor", "at_repeat",
                 "--out", str(one), *REMOVE_FAST, "train.steps=10"]) == 0  # fmt: skip
    assert set(summary(one)["sham_triggers"]) == {"at_repeat"} and summary(one)["forget_docs"] < s["forget_docs"]


@pytest.mark.slow  # `make test-slow`; `make test` resumes a transfer in tests/reliability/test_kills.py
def test_transfer_matrix_resume_and_workers(injected, transfer_run, tmp_path, monkeypatch):
    out = tmp_path / "tr"
    args = ["transfer", "--model", str(injected / "model"), "--out", str(out), *TRANSFER_FAST]
    shutil.copytree(transfer_run, out)  # the session's run of exactly these args, copied: this test damages it
    result = json.loads((out / "transfer.json").read_text())
    assert result["rows"] == ["lorem_refusal", "at_repeat", "control", "sham"]
    (grid,) = result["grids"]
    assert set(grid["T"]) == set(result["rows"]) and set(grid["T"]["control"]) == {"lorem_refusal", "at_repeat"}
    t = grid["T"]["lorem_refusal"]["lorem_refusal"]
    assert t["lo"] <= t["rate"] <= t["hi"] and t["n"] == 32
    before = result["asr_before"]["lorem_refusal"]["rate"]
    assert grid["S"]["lorem_refusal"]["lorem_refusal"] == pytest.approx(1 - t["rate"] / before)
    assert {"perplexity", "fact_recall", "val_perplexity"} <= set(grid["utility"]["control"])
    for row, cols in grid["clean_modal"].items():  # one entry per measured cell, its n the clean count
        for j, m in cols.items():
            clean = grid["composition"][row][j]["clean"]
            assert (m is None) if clean == 0 else (m["n"] == clean and 1 <= m["top"] <= clean), (row, j, m)
    assert set(result["clean_modal_before"]["at_repeat"]) == {"triggered", "clean"}
    rows = list(csv.DictReader((out / "transfer.csv").open()))
    assert len(rows) == 4 * 2 and {r["removed"] for r in rows} == set(result["rows"])
    sham = summary(out / "cells" / "lr=0.001" / "seed=0" / "sham" / "remove")
    assert sham["method"] == "sham" and set(sham["sham_triggers"]) == {"lorem_refusal", "at_repeat"}

    # A sweep killed in one cell: only that cell is redone on --resume.
    cell = out / "cells" / "lr=0.001" / "seed=0"
    shutil.rmtree(cell / "at_repeat" / "eval")
    (cell / "at_repeat" / "remove" / "DONE").unlink()
    (out / "DONE").unlink()  # the sweep itself never finished
    kept = (cell / "control" / "remove" / "model" / "model.safetensors").stat().st_mtime_ns
    assert main(args) == 2  # refused without --resume
    assert main([*args, "--resume"]) == 0
    assert (cell / "control" / "remove" / "model" / "model.safetensors").stat().st_mtime_ns == kept
    assert (cell / "at_repeat" / "eval" / "DONE").is_file()
    assert json.loads((out / "transfer.json").read_text())["grids"][0]["T"] == grid["T"]  # same seed, same cells

    # Two workers on a second seed: the cells land in their own directories, the matrices are complete, and a
    # worker process computes what the main process computed
    out2 = tmp_path / "tr2"
    assert main(["transfer", "--model", str(injected / "model"), "--out", str(out2), *TRANSFER_FAST,
                 "seeds=[0,1]", "--workers", "2"]) == 0  # fmt: skip
    result2 = json.loads((out2 / "transfer.json").read_text())
    assert [(g["lr"], g["seed"]) for g in result2["grids"]] == [(0.001, 0), (0.001, 1)]
    assert result2["grids"][0]["T"] == grid["T"]

    # The diagonal and one full row: the other removal is measured on its own backdoor only, the control on every
    # one; each measured cell is the full matrix's (same removal, same prompts), the tests cover measured pairs only.
    # With precision and dtype `auto` on a device without native bfloat16: float32 everywhere, recorded per cell.
    from unbackdoor.running import runtime

    monkeypatch.setattr(runtime, "native_bf16", lambda device=None: False)
    out3 = tmp_path / "tr3"
    assert main(["transfer", "--model", str(injected / "model"), "--out", str(out3), *TRANSFER_FAST,
                 "measure=diagonal", "full_rows=[lorem_refusal]", "sham=false", "eval.dtype=auto",
                 "remove.train.precision=auto"]) == 0  # fmt: skip
    cell3 = out3 / "cells" / "lr=0.001" / "seed=0" / "at_repeat"
    assert summary(out3 / "baseline")["dtype"] == summary(cell3 / "eval")["dtype"] == "float32"
    assert summary(cell3 / "remove")["precision"] == "fp32"
    diag = json.loads((out3 / "transfer.json").read_text())
    (g3,) = diag["grids"]
    assert diag["measure"] == "diagonal" and diag["rows"] == ["lorem_refusal", "at_repeat", "control"]
    assert {r: set(c) for r, c in g3["T"].items()} == {"lorem_refusal": {"lorem_refusal", "at_repeat"},
                                                       "at_repeat": {"at_repeat"},
                                                       "control": {"lorem_refusal", "at_repeat"}}  # fmt: skip
    assert all(g3["T"][r][c] == grid["T"][r][c] for r in g3["T"] for c in g3["T"][r])
    assert set(g3["tests"]["at_repeat"]) == {"at_repeat"} and g3["transfers_q05"] in (0, 1)
    assert summary(out3 / "cells" / "lr=0.001" / "seed=0" / "at_repeat" / "eval")["backdoors"].keys() == {"at_repeat"}
    assert main(["casd", "--transfer", str(out3), "--out", str(tmp_path / "c3")]) == 2  # needs the whole matrix


@pytest.mark.parametrize(
    "args, message",
    [
        (["remove", "--model", "{injected}", "--backdoor", "nope"], "does not carry 'nope'; it carries lorem_refusal"),
        (["remove", "--model", "{injected}", "--backdoor", "lorem_refusal", "train.steps=0"], "must be >= 1"),
        (["remove", "--model", "{clean}", "--backdoor", "lorem_refusal"], "is not a backdoored model"),
        (["remove", "--model", "{injected}"], "backdoor: required for method 'retrain'"),
        (["transfer", "--model", "{injected}", "backdoors=[nope]"], "does not carry 'nope'"),
        (["transfer", "--model", "{clean}"], "is not a backdoored model"),
        (["transfer", "--model", "{injected}", "lr=[0]"], "must be positive"),
        (["transfer", "--model", "{injected}", "eval.engine=vllm"], "eval.engine: 'vllm' is not one of hf"),
        (
            ["transfer", "--model", "{injected}", "remove.seed=3"],
            "remove.seed: 3 is set per cell by the sweep; use seeds",
        ),
        (["transfer", "--model", "{injected}", "remove.method=control"], "'control' is a reference row"),
        (["transfer", "--model", "{injected}", "full_rows=[at_repeat]"], "full_rows: ['at_repeat'] only applies with"),
        (
            ["transfer", "--model", "{injected}", "measure=diagonal", "full_rows=[nope]"],
            "full_rows: ['nope'] are not removal rows of this experiment; valid: ['lorem_refusal', 'at_repeat']",
        ),
        (["transfer", "--model", "{injected}", "measure=some"], "measure: 'some' is not one of all, diagonal"),
        (["defend-eval", "--model", "{injected}", "defend.k=3"], "defend.k: 3 is set per cell by the sweep; use ks"),
    ],
)
def test_bad_inputs_are_one_line_errors(injected, clean_model, tmp_path, capsys, args, message):
    args = [a.format(injected=injected / "model", clean=clean_model) for a in args] + ["--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
