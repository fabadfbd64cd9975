"""Shared fixtures: a small world run directory built once per test session (no download, ~3 s).

Run: `make test` (or `pytest -m "not slow"`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from unbackdoor.stages.world import WorldConfig
from unbackdoor.stages.world import run as run_world

SMALL_WORLD = {"tokens": 120_000, "vocab_size": 512, "entities": 24, "cities": 8}


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished `world` run with ~120 k pre-tokens and a 512-token BPE."""
    out = tmp_path_factory.mktemp("world") / "world"
    return run_world(WorldConfig(**SMALL_WORLD), out)
