"""The canary calibration of `defend-eval` (`calibrate_canaries`): which canaries each behaviour set's arms inject,
with the probes' training stubbed out: a canary is "learned" by a made-up rule of behaviour and rate.

Run: `pytest tests/unit/test_canary_calibration.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from unbackdoor.stages import defend_eval
from unbackdoor.stages.defend_eval import DefendEvalConfig, calibrate_canaries

SOURCE_DEFAULTS = ["uppercase", "numbers"]  # what `defend` uses when given no behaviours


def learned(behaviour: str, rate: float) -> bool:
    """The stub's model: numbers and lang_a are learned at any rate, uppercase from 0.1 on, gibberish never."""
    return {"numbers": True, "lang_a": True, "uppercase": rate >= 0.1}.get(behaviour, False)


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """Stubs the probes' runs; returns the (phase, cell dirs) of every batch run."""
    batches: list[tuple[str, list[str]]] = []

    def run_cells(fn, jobs, workers, on_done, label, *, sweep, out, where, todo, launcher, phase):
        batches.append((phase, sorted(jobs)))
        return {}

    def summary(path: Path) -> dict[str, Any]:
        # .../calibration/canaries/scale=<s>/rate=<r>/<set>/<canary behaviours or ->/k=<K>/defend
        parts = path.parts
        rate, bset, which, k = float(parts[-5].split("=")[1]), parts[-4], parts[-3], int(parts[-2].split("=")[1])
        said = which.split("+") if which != "-" else [] if bset == "disjoint" else bset.split("+")
        said = said or SOURCE_DEFAULTS
        canaries = [{"name": f"canary{n}_{said[n % len(said)]}", "behaviour": said[n % len(said)]} for n in range(k)]
        asr = {c["name"]: {"rate": 1.0 if learned(c["behaviour"], rate) else 0.0} for c in canaries}
        return {"canaries": canaries, "canary_asr_injected": asr}

    monkeypatch.setattr(defend_eval, "run_cells", run_cells)
    monkeypatch.setattr(defend_eval, "_summary", summary)
    return batches


def calibrate(ks: list[int], sets: list[str], disjoint: list[str], tmp_path: Path) -> dict[str, Any]:
    cfg = DefendEvalConfig(ks=ks, behaviour_sets=sets, canary_rates=[0.05, 0.1])
    cfg.defend.canary_rate = 0.02
    return calibrate_canaries(cfg, tmp_path, ["h"], {"disjoint": {"behaviours": disjoint}}, 0.25, lambda **_: None)


def test_each_set_gets_its_own_canaries(probes, tmp_path):
    """The disjoint set drops the behaviour whose canary was not learned (at the same rate); a set the user named
    keeps its behaviours and goes to denser rates until they are learned."""
    got = calibrate([1, 2], ["disjoint", "uppercase+numbers"], ["uppercase", "numbers", "lang_a"], tmp_path)
    assert got["sets"]["disjoint"] == {"chosen_rate": 0.02, "chosen_behaviours": ["numbers", "lang_a"],
                                       "learned": True, "dropped": ["uppercase"]}  # fmt: skip
    assert got["sets"]["uppercase+numbers"] == {"chosen_rate": 0.1, "chosen_behaviours": None, "learned": True,
                                                "dropped": []}  # fmt: skip
    assert got["learned"] and got["rates_skipped"] == []
    # one batch per try, each set probed until it is done: 0.02 both; 0.02 disjoint (dropped) + 0.05; 0.1
    assert [phase for phase, _ in probes] == ["canaries-0", "canaries-1", "canaries-2"]
    assert [len(cells) for _, cells in probes] == [4, 4, 2]
    tries = [(c["try"], c["behaviours"], c["rate"], c["k"]) for c in got["curve"]]
    assert tries[:2] == [(0, "disjoint", 0.02, 1), (0, "disjoint", 0.02, 2)]
    assert tries[-2:] == [(2, "uppercase+numbers", 0.1, 1), (2, "uppercase+numbers", 0.1, 2)]


def test_rates_that_would_poison_too_much_are_skipped_and_a_set_never_learned_keeps_its_own(probes, tmp_path):
    """K = 4 canaries at 0.1 (and as many removal documents) would take 80 % of the injection sample: not tried.
    A set never learned runs at defend.canary_rate with its own behaviours and says so."""
    got = calibrate([1, 4], ["uppercase+numbers"], [], tmp_path)
    assert got["rates_skipped"] == [0.1]
    assert {c["rate"] for c in got["curve"]} == {0.02, 0.05}
    assert got["sets"]["uppercase+numbers"] == {"chosen_rate": 0.02, "chosen_behaviours": None, "learned": False,
                                                "dropped": []}  # fmt: skip
    assert not got["learned"]


def test_an_empty_disjoint_list_escalates_the_rate_and_nothing_is_dropped(probes, tmp_path):
    """No built-in behaviour is free of the hidden ones: the source's defaults are used, never dropped."""
    got = calibrate([2], ["disjoint"], [], tmp_path)
    assert got["sets"]["disjoint"] == {"chosen_rate": 0.1, "chosen_behaviours": [], "learned": True, "dropped": []}
    assert [c["rate"] for c in got["curve"]] == [0.02, 0.05, 0.1]


def test_dropping_never_empties_a_set(probes, tmp_path):
    """When no behaviour of the disjoint set is learned at a rate, none is dropped: the rate goes up instead."""
    got = calibrate([1], ["disjoint"], ["uppercase", "gibberish"], tmp_path)
    # K = 1 probes only the first behaviour: uppercase fails at 0.02 and is dropped, then gibberish fails too and
    # would leave nothing: the rate goes up (with gibberish), and so on; gibberish is never learned
    assert [(c["rate"], c["canary_behaviours"]) for c in got["curve"]] == [
        (0.02, ["uppercase"]), (0.02, ["gibberish"]), (0.05, ["gibberish"]), (0.1, ["gibberish"])]  # fmt: skip
    assert got["sets"]["disjoint"]["learned"] is False
    assert got["sets"]["disjoint"]["chosen_behaviours"] == ["uppercase", "gibberish"]
