"""Fixtures for stage tests: a tiny random model saved from config (no download) on the small test world.

Run: `pytest tests/integration`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from unbackdoor.cli import main

# A model small enough to train a few dozen steps in seconds; `train.*` keys shrink the tiny preset.
FAST_TRAIN = [
    "train.batch_size=8",
    "train.seq_len=64",
    "train.warmup_steps=2",
    "train.log_every=1",
    "val_blocks=8",
]


@pytest.fixture(scope="session")
def clean_model(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean tiny llama pretrained for 30 steps on the small world (the base for inject tests)."""
    out = tmp_path_factory.mktemp("clean") / "run"
    args = ["pretrain", "--preset", "tiny", "--world", str(small_world), "--backdoors", "none", "--out", str(out)]
    assert main([*args, *FAST_TRAIN, "train.steps=30"]) == 0
    return out / "model"
