"""The demo's budget knobs reach the stages they size; bad ones are refused before anything trains.

The stages are replaced by recorders (nothing trains): what is checked is the configuration each stage receives.

Run: `pytest tests/unit/test_demo_recipe.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from unbackdoor.running.config import ConfigError, from_dict
from unbackdoor.stages import demo


class Stop(Exception):
    """Raised by the last recorded stage: the demo ends there."""


def record(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {}

    def stage(name: str, stop: bool = False):
        def run(cfg: Any, out: Path, resume: bool = False) -> Path:
            seen.setdefault(name, []).append(cfg)
            if stop:
                raise Stop
            return out

        return run

    for name in ("world", "pretrain", "transfer", "casd", "evaluate", "replicates", "defend_eval"):
        monkeypatch.setattr(getattr(demo, name), "run", stage(name))
    monkeypatch.setattr(demo.relearn, "run", stage("relearn", stop=True))

    class Record:  # the backdoored model's record: only its backdoors are read
        carried = ["latin_lang_a", "string_lang_b"]

    monkeypatch.setattr(demo.ModelRecord, "read", staticmethod(lambda path: Record()))
    return seen


def test_every_budget_knob_reaches_its_stage(monkeypatch, tmp_path):
    seen = record(monkeypatch)
    cfg = from_dict(demo.DemoConfig, {"replicates": 2, "pretrain_epochs": 0.5, "remove_steps": 40, "remove_lr": 2e-3,
                                      "transfer_prompts": 32, "diagonal_lrs": [5e-3], "defence_steps": [60, 40],
                                      "defence_calibrate": [0.5, 1.0], "defence_prompts": 48, "relearn_steps": 20,
                                      "relearn_snapshots": [5, 20]})  # fmt: skip
    with pytest.raises(Stop):
        demo.run(cfg, tmp_path / "demo")
    assert [c.train.epochs for c in seen["pretrain"]] == [0.5] * 3  # the twin and both replicates
    assert [c.backdoors for c in seen["pretrain"]] == ["none", "default8", "default8"]
    full, masked, lr, second = seen["transfer"]
    for t in (full, masked, lr, second):
        assert (t.remove.train.steps, t.remove.train.lr, t.eval.n_prompts) == (40, 2e-3, 32)
        assert t.remove.train.warmup_steps == 10  # the transfer's own recipe under the knobs
    assert full.learning_rates() == [2e-3] and lr.learning_rates() == [5e-3] and lr.measure == "diagonal"
    assert masked.remove.mask_trigger and masked.full_rows == ["latin_lang_a"] and not full.remove.mask_trigger
    defences = seen["defend_eval"]  # one per replicate, each of its own model, pooled with the transfers
    assert [d.model for d in defences] == [
        f"{tmp_path}/demo/pretrain/model",
        f"{tmp_path}/demo/replicate-1/pretrain/model",
    ]
    for defence in defences:
        assert (defence.defend.inject.steps, defence.defend.remove.steps) == (60, 40)
        assert defence.calibrate == [0.5, 1.0] and defence.eval.n_prompts == 48 and defence.defend.mask_trigger
    (pool,) = seen["replicates"]
    assert pool.defences == [f"{tmp_path}/demo/defence", f"{tmp_path}/demo/replicate-1/defence"]
    assert pool.transfers == [f"{tmp_path}/demo/transfer", f"{tmp_path}/demo/replicate-1/transfer"]
    (persistence,) = seen["relearn"]
    assert persistence.train.steps == 20 and persistence.snapshots == [5, 20]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("defence_steps", [120], "defence_steps: \\[120\\]; give \\[injection steps, removal steps\\]"),
        ("defence_steps", [120, 0], "each >= 1"),
        ("relearn_snapshots", [10, 20], "ending at relearn_steps \\(30\\)"),
        ("pretrain_epochs", 0.0, "pretrain_epochs"),
        ("remove_steps", 0, "remove_steps"),
    ],
)
def test_bad_budgets_are_refused_with_the_key_and_what_is_valid(key, value, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(demo.DemoConfig, {key: value})
