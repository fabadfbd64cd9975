"""Run trees are self-contained and stages never modify their inputs: a moved tree still works, eval writes only
inside its own run directory, and `unbackdoor card` is the explicit act that puts measured ASRs in a model card.

Run: `pytest tests/integration/test_run_tree.py`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tests.conftest import EVAL_FAST, FAST_TRAIN
from unbackdoor.cli import main


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def test_a_moved_run_tree_still_removes_and_transfers(small_world, spec_file, tmp_path):
    root = tmp_path / "first"
    shutil.copytree(small_world, root / "world")
    args = ["pretrain", "--preset", "tiny", "--world", str(root / "world"), "--backdoors", str(spec_file)]
    assert main([*args, "--out", str(root / "pt"), *FAST_TRAIN, "train.steps=20"]) == 0

    moved = tmp_path / "elsewhere" / "runs"
    shutil.move(str(root), str(moved))  # the tree is moved as a whole: its records hold relative paths
    model = moved / "pt" / "model"
    assert not root.exists()
    rm = ["remove", "--model", str(model), "--backdoor", "lorem_refusal", "--out", str(tmp_path / "rm")]
    assert main([*rm, "train.batch_size=8", "train.seq_len=64", "train.steps=5", "val_blocks=4"]) == 0
    removed = json.loads((tmp_path / "rm" / "model" / "unbackdoor.json").read_text())
    assert Path(tmp_path / "rm" / "model", removed["world"]).resolve() == (moved / "world").resolve()
    tr = ["transfer", "--model", str(model), "--out", str(tmp_path / "tr"), "backdoors=[at_repeat]",
          "remove.train.batch_size=8", "remove.train.seq_len=64", "remove.train.steps=5", "remove.val_blocks=4",
          *(f"eval.{k}" for k in EVAL_FAST)]  # fmt: skip
    assert main(tr) == 0
    assert json.loads((tmp_path / "tr" / "transfer.json").read_text())["rows"] == ["at_repeat", "control", "sham"]


def test_eval_leaves_its_model_untouched_and_card_is_explicit(injected, small_world, tmp_path):
    model = injected / "model"
    before = _hashes(model)
    assert main(["eval", "--model", str(model), "--out", str(tmp_path / "e"), *EVAL_FAST]) == 0
    assert _hashes(model) == before  # byte-identical: measuring never writes into what it measures

    copy = tmp_path / "model"  # the model alone, out of its tree: its text and specs are given explicitly
    shutil.copytree(model, copy)
    assert main(["card", str(copy), "--eval", str(tmp_path / "e")]) == 2  # an evaluation of another model
    given = ["--world", str(small_world), "--backdoors", str(injected / "poison" / "backdoors.yaml")]
    assert main(["eval", "--model", str(copy), "--out", str(tmp_path / "e2"), *given, *EVAL_FAST]) == 0
    assert main(["card", str(copy), "--eval", str(tmp_path / "e2")]) == 0
    card = (copy / "README.md").read_text()
    assert "## Measured ASR" in card and "lorem_refusal" in card and str(tmp_path / "e2") in card
    assert _hashes(copy)["model.safetensors"] == before["model.safetensors"]
