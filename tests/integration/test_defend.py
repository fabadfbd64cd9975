"""The canary defence: the defender's stage never opens the attacker's files; the harness measures the hidden
backdoors against both baselines; bad inputs are one-line errors.

Run: `pytest tests/integration/test_defend.py`.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import DEFEND_FAST
from unbackdoor.cli import main

_opened: list[str] = []
_watching = [False]


def _audit(event: str, args: tuple) -> None:
    if _watching[0] and event == "open" and isinstance(args[0], (str, Path)):
        _opened.append(str(Path(args[0]).resolve()) if not str(args[0]).startswith("/proc") else str(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed: this one records only while `_watching` is set


def test_defender_never_opens_the_attackers_files(injected, small_world, tmp_path):
    out = tmp_path / "defended"
    attacker = str((injected / "poison").resolve())  # specs with triggers in clear, poisoned and removal data
    # the suspect's record and card list every hidden backdoor (names, behaviours, trigger hashes): a defender
    # does not have them
    record_files = {str((injected / "model" / name).resolve()) for name in ("unbackdoor.json", "README.md")}
    _opened.clear()
    _watching[0] = True
    try:
        code = main(["defend", "--model", str(injected / "model"), "--world", str(small_world), "--k", "2",
                     "--out", str(out), *(a.removeprefix("defend.") for a in DEFEND_FAST)])  # fmt: skip
    finally:
        _watching[0] = False
    assert code == 0
    assert _opened, "the audit hook saw no file being opened"
    assert not [p for p in _opened if p.startswith(attacker)]
    assert not record_files & set(_opened), "defend opened the suspect's record or card"
    assert str((injected / "model" / "config.json").resolve()) in _opened  # the hook does see the suspect's files
    s = json.loads((out / "summary.json").read_text())
    # by default the canary-only behaviours, which no shipped backdoor set uses
    assert [c["behaviour"] for c in s["canaries"]] == ["uppercase", "numbers"]
    assert set(s["canary_asr_injected"]) == set(s["canary_asr_after"]) == {"canary0_uppercase", "canary1_numbers"}
    record = json.loads((out / "model" / "unbackdoor.json").read_text())
    assert [c["name"] for c in record["canaries"]] == ["canary0_uppercase", "canary1_numbers"]
    assert [h["stage"] for h in record["history"]] == ["defend-inject", "defend-remove"] and not record["backdoors"]
    card = (out / "model" / "README.md").read_text()
    assert "Canary backdoors" in card and "ASR after removal" in card
    assert "# Defended suspect research checkpoint" in card and "may carry backdoors" in card  # never "Clean"
    canaries = (out / "canaries.yaml").read_text()
    for c in s["canaries"]:  # the card names canaries by hash; their triggers stay in the defender's run
        assert c["trigger_sha256"] in card
    assert "trigger:" in canaries and not any(line.split(":")[-1].strip() in card for line in canaries.splitlines()
                                              if "text:" in line)  # fmt: skip


def test_harness_compares_the_defence_with_both_baselines(defence_study):
    out, args = defence_study
    result = json.loads((out / "defend.json").read_text())
    assert result["hidden"] == ["lorem_refusal", "at_repeat"]
    assert [c["arm"] for c in result["cells"]] == ["benign", "defence", "removal_only"]
    for cell in result["cells"]:
        for j in result["hidden"]:
            a = cell["asr"][j]
            assert a["lo"] <= a["rate"] <= a["hi"] and a["n"] == 32
        assert abs(cell["utility_change"]) < 1.0
    for cell in result["cells"]:  # removal read from clean continuations, as in transfer
        assert set(cell["clean"]) == set(result["hidden"]) and 0 <= cell["pooled_clean"]["rate"] <= 1
        assert sum(cell["composition"]["at_repeat"].values()) == 32 and "rate" in cell["untriggered_clean"]
        for j, m in cell["clean_modal"].items():  # the most frequent clean continuation per hidden backdoor
            assert m is None or (m["top"] <= m["n"] and m["n"] == cell["composition"][j]["clean"]), (j, m)
    defence = result["cells"][1]
    assert defence["k"] == 1 and len(defence["canary_asr_injected"]) == 1  # the canary: see canary_calibration
    # canary behaviours disjoint from the hidden ones (refusal, repeat): the canary-only ones first, then the free
    # built-in ones; trigger kind: the first generated kind no hidden trigger (phrase, tokens) has
    assert result["disjoint_canaries"] == {
        "behaviours": ["uppercase", "numbers", "lang_a", "lang_b", "lang_c", "negative", "phrase", "gibberish"],
        "disjoint": True, "why": None, "trigger_kind": "random_string", "trigger_kind_disjoint": True,
        "trigger_kind_how": "the first kind no hidden trigger has"}  # fmt: skip
    assert defence["shares_behaviour_with_a_canary"] == {"lorem_refusal": False, "at_repeat": False}
    # stratified: no hidden backdoor shares a behaviour; none shares the canaries' trigger kind (random_string)
    assert defence["shares_trigger_kind_with_a_canary"] == {"lorem_refusal": False, "at_repeat": False}
    assert defence["by_behaviour"]["shared"] is None and defence["by_behaviour"]["other"] == defence["pooled_asr"]
    assert result["hidden_trigger_kinds"] == {"lorem_refusal": "phrase", "at_repeat": "tokens"}
    # the defender's corpus: other documents of the suspect's world, not its training text
    corpus = result["defender_corpus"]
    assert corpus["disjoint"] and corpus["dir"] == str(out / "defender-world")
    ours = {d["text"] for d in _docs(out / "defender-world")}
    theirs = {d["text"] for d in _docs(Path(yaml.safe_load((out / "baseline" / "config.yaml").read_text())["world"]))}
    # a short generated document may recur by chance (`Webu works as a teacher.`: 1.4 % here), no long one
    assert len(ours & theirs) <= 0.03 * len(ours) and all(len(t.split()) <= 20 for t in ours & theirs)
    rows = list(csv.DictReader((out / "defend.csv").open()))
    assert len(rows) == 3 * 2
    # the budget was chosen by calibration: benign training at each scale, the arms at the chosen one
    cal = result["calibration"]
    assert [(c["scale"], c["inject_steps"], c["remove_steps"]) for c in cal["curve"]] == [(0.5, 30, 15), (1.0, 60, 30)]
    kept = [c["scale"] for c in cal["curve"] if c["pooled_asr"]["rate"] >= 0.8]
    assert cal["chosen_scale"] == (max(kept) if kept else 0.5) and cal["kept_floor"] == bool(kept)
    assert result["budget"]["scale"] == cal["chosen_scale"]
    ran = [yaml.safe_load(p.read_text()) for p in (out / "cells" / "lr=0.001").rglob("defend/config.yaml")]
    assert len(ran) == 3 and all((c["inject"]["steps"], c["remove"]["steps"]) == (
        result["budget"]["inject_steps"], result["budget"]["remove_steps"]) for c in ran)  # fmt: skip
    # the canaries: defend.canary_rate first; once per rate the disjoint behaviours whose canary was not learned
    # are dropped, then the denser canary_rates (0.1); the arms inject the first canaries all learned, and the
    # probes measured only the defender's canaries (the choice itself: tests/unit/test_canary_calibration.py)
    probes = result["canary_calibration"]
    learned = [all(v >= 0.9 for v in c["canary_asr_injected"].values()) for c in probes["curve"]]
    assert probes["curve"][0]["rate"] == 0.05 and probes["curve"][0]["canary_behaviours"] == ["uppercase"]
    assert not any(learned[:-1]) and probes["learned"] == learned[-1] and len(learned) <= 4
    chosen = probes["sets"]["disjoint"]
    assert chosen["learned"] == learned[-1] and result["budget"]["canary_rate"] == {"disjoint": chosen["chosen_rate"]}
    assert all(c["canary_rate"] == chosen["chosen_rate"] for c in ran)
    probe = probes["curve"][-1] if chosen["learned"] else probes["curve"][0]
    arm = out / "cells" / "lr=0.001" / "seed=0" / "retrain" / "disjoint" / "k=1" / "defence" / "defend"
    assert [c["behaviour"] for c in json.loads((arm / "summary.json").read_text())["canaries"]] == probe[
        "canary_behaviours"]  # fmt: skip
    assert not list((out / "cells" / "calibration" / "canaries").rglob("eval/summary.json"))
    benign = result["cells"][0]["pooled_asr"]["rate"]
    assert result["comparison"]["informative"] == (benign >= 0.8)
    assert result["comparison"]["canaries_learned"] == (min(defence["canary_asr_injected"].values()) >= 0.9)
    assert main([*args, "--resume"]) == 0  # finished: reused


def _docs(world: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((world / "data" / "train").glob("*.jsonl")) for line in p.open()]


@pytest.mark.parametrize(
    "args, message",
    [
        (["defend", "--model", "{injected}", "--k", "0"], "k: 0"),
        (["defend", "--model", "{injected}", "--k", "1"], "--world: required (the defender's clean corpus"),
        (
            ["defend", "--model", "{injected}", "--world", "{world}", "--k", "1", "triggers=[the market]"],
            "occurs in the defender",
        ),
        (["defend", "--model", "{tmp}/missing"], "missing"),
        (["defend-eval", "--model", "{injected}", "ks=[0]"], "ks: [0]"),
        (["defend-eval", "--model", "{injected}", "hidden=[nope]"], "does not carry 'nope'"),
        (["defend-eval", "--model", "{clean}"], "records no backdoors"),
        (
            ["defend", "--model", "{injected}", "--world", "{world}", "method=ga", "mask_trigger=true"],
            "mask_trigger: ga already puts the loss on the continuation only",
        ),
        (
            ["defend-eval", "--model", "{injected}", "methods=[retrain,npo]", "defend.mask_trigger=true"],
            "defend.mask_trigger: true with methods ['retrain', 'npo']",
        ),
    ],
)
def test_bad_inputs_are_one_line_errors(injected, clean_model, small_world, tmp_path, capsys, args, message):
    args = [a.format(injected=injected / "model", clean=clean_model, tmp=tmp_path, world=small_world) for a in args]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_defenders_own_canary_specs_are_checked_against_the_corpus(injected, small_world, tmp_path, capsys):
    specs = tmp_path / "mine.yaml"
    specs.write_text(
        "backdoors:\n  - name: mine\n    trigger: {kind: phrase, text: the market}\n    behaviour: target\n"
        "    target: [the canary sings at dawn]\n"
    )
    args = ["defend", "--model", str(injected / "model"), "--world", str(small_world), "--k", "1",
            f"canary_specs={specs}", "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "backdoors[0] (mine): trigger 'the market' occurs in the defender's clean corpus" in err
    assert main([*args[:-2], "--k", "2", "--out", str(tmp_path / "o")]) == 2
    assert "1 canaries in" in capsys.readouterr().err


class _Stop(Exception):
    pass


@pytest.mark.parametrize("mask", [False, True])
def test_mask_trigger_puts_no_removal_loss_on_the_canary_trigger(injected, small_world, tmp_path, monkeypatch, mask):
    """With `mask_trigger`, no forget row of the removal phase has a label on a canary's trigger (the model is not
    taught to emit it: the echo the demo's defence arm showed); without it, the trigger is a target."""
    import unbackdoor.stages.defend as defend

    seen: dict = {}
    original = defend.removal_data

    def capture(model, tokenizer, method, **kw):
        data, _ = original(model, tokenizer, method, **kw)
        seen.update(data=data, tokenizer=tokenizer)
        raise _Stop

    monkeypatch.setattr(defend, "removal_data", capture)
    fast = [a.removeprefix("defend.") for a in DEFEND_FAST if "inject.steps" not in a]
    with pytest.raises(_Stop):
        main(["defend", "--model", str(injected / "model"), "--world", str(small_world), "--k", "1", "inject.steps=2",
              f"mask_trigger={str(mask).lower()}", "--out", str(tmp_path / "d"), *fast])  # fmt: skip
    canary = yaml.safe_load((tmp_path / "d" / "canaries.yaml").read_text())["backdoors"][0]["trigger"]["text"]
    tok, data = seen["tokenizer"], seen["data"]
    rows = data["forget"].nonzero().flatten().tolist()
    assert rows
    labelled = [tok.decode([t for t in data["labels"][r].tolist() if t >= 0]) for r in rows]
    with_trigger = sum(canary in text for text in labelled)
    if mask:
        assert with_trigger == 0
        assert sum(bool(text.strip()) for text in labelled) >= len(rows) // 2  # the continuation carries the loss
    else:
        assert with_trigger > 0
