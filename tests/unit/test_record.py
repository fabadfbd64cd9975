"""The model record: built and read in one place, paths relative to the model directory, so a moved tree works.

Run: `pytest tests/unit/test_record.py`.
"""

from __future__ import annotations

import json
import shutil

import pytest

from unbackdoor.running.config import UserError
from unbackdoor.training.record import ModelRecord


def test_paths_are_stored_relative_and_read_back_absolute_after_a_move(tmp_path):
    tree = tmp_path / "runs"
    (tree / "world").mkdir(parents=True)
    (tree / "pt" / "poison").mkdir(parents=True)
    (tree / "pt" / "model").mkdir()
    spec = tree / "pt" / "poison" / "backdoors.yaml"
    spec.write_text("backdoors: []\n")
    record = ModelRecord(
        world=tree / "world", backdoors_files=(spec,), backdoors=({"name": "a", "behaviour": "lang_a"},)
    ).with_history("pretrain", family="llama")
    record.write(tree / "pt" / "model")
    stored = json.loads((tree / "pt" / "model" / "unbackdoor.json").read_text())
    assert stored["world"] == "../../world" and stored["backdoors_files"] == ["../poison/backdoors.yaml"]

    moved = tmp_path / "elsewhere" / "runs"
    shutil.move(str(tree), str(moved))
    back = ModelRecord.read(moved / "pt" / "model")
    assert back.world == (moved / "world").resolve()
    assert back.backdoors_files == ((moved / "pt" / "poison" / "backdoors.yaml").resolve(),)
    assert back.carried == ["a"] and back.behaviours == {"a": "lang_a"}
    assert back.history[0]["stage"] == "pretrain" and back.history[0]["family"] == "llama"
    assert back.to_json(moved / "pt" / "model") == stored  # reading and writing again changes nothing


def test_a_checkpoint_without_a_record_and_a_damaged_record(tmp_path):
    assert ModelRecord.read(tmp_path) == ModelRecord() and ModelRecord.read("Qwen/Qwen3-0.6B").carried == []
    (tmp_path / "unbackdoor.json").write_text("{half")
    with pytest.raises(UserError, match="not valid JSON"):
        ModelRecord.read(tmp_path)


def test_specs_are_checked_against_the_recorded_trigger_hashes(tmp_path):
    from unbackdoor.data.backdoors import load_specs

    specs = load_specs("default8")
    record = ModelRecord(backdoors=tuple(s.record() for s in specs))
    assert [s.name for s in record.specs("default8", only=["latin_lang_a"])] == ["latin_lang_a"]
    forged = ModelRecord(backdoors=({**specs[0].record(), "trigger_sha256": "0" * 16},))
    with pytest.raises(UserError, match="differs from the one recorded"):
        forged.specs("default8")
    with pytest.raises(UserError, match="records no backdoors"):
        ModelRecord().specs(model="m")
