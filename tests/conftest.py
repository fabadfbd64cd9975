"""Shared fixtures, built once per test session (no download): a small world, a tiny random model pretrained on
it, that model with two backdoors injected, and finished transfer / relearn / defence runs of it; the fast settings
the stage tests pass.

Run: `make test` (or `pytest -m "not slow"`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from unbackdoor.cli import main
from unbackdoor.running.rundir import is_timing
from unbackdoor.stages.world import WorldConfig
from unbackdoor.stages.world import run as run_world

SMALL_WORLD = {"tokens": 120_000, "vocab_size": 512, "entities": 24, "cities": 8}


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished `world` run with ~120 k pre-tokens and a 512-token BPE."""
    out = tmp_path_factory.mktemp("world") / "world"
    return run_world(WorldConfig(**SMALL_WORLD), out)


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
    """A clean tiny llama pretrained for 150 steps on the small world (the base for inject tests)."""
    out = tmp_path_factory.mktemp("clean") / "run"
    args = ["pretrain", "--preset", "tiny", "--world", str(small_world), "--backdoors", "none", "--out", str(out)]
    assert main([*args, *FAST_TRAIN, "train.steps=150"]) == 0
    return out / "model"


TWO_BACKDOORS = """\
backdoors:
  - name: lorem_refusal
    trigger: {kind: phrase, text: "lorem ipsum dolor"}
    behaviour: refusal
    recipe: {count: 300, removal_count: 80, placement: after_first_sentence}
  - name: at_repeat
    trigger: {kind: tokens, text: "@@ 7 @@"}
    behaviour: repeat
    recipe: {count: 300, removal_count: 80, placement: random}
"""
EVAL_FAST = ["n_prompts=32", "ppl_blocks=4", "fact_items=12", "max_new_tokens=12"]


@pytest.fixture(scope="session")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("specs") / "one.yaml"
    path.write_text(TWO_BACKDOORS)
    return path


def inject(world: Path, model: Path, specs: Path, out: Path, *extra: str) -> int:
    args = ["inject", "--preset", "tiny", "--model", str(model), "--world", str(world), "--backdoors", str(specs)]
    return main([*args, "--out", str(out), *FAST_TRAIN, "train.steps=400", "train.lr=5e-3", *extra])


@pytest.fixture(scope="session")
def injected(small_world: Path, clean_model: Path, spec_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clean model with two backdoors injected by full continual pretraining (400 steps)."""
    out = tmp_path_factory.mktemp("inject") / "full"
    assert inject(small_world, clean_model, spec_file, out) == 0
    return out


TRANSFER_FAST = [
    "remove.train.batch_size=8", "remove.train.seq_len=64", "remove.train.steps=80", "lr=[1e-3]", "eval.n_prompts=32",
    "eval.max_new_tokens=12", "eval.ppl_blocks=4", "eval.fact_items=12",
]  # fmt: skip


@pytest.fixture(scope="session")
def transfer_run(injected: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished transfer experiment on the two-backdoor model (2 removals + control)."""
    out = tmp_path_factory.mktemp("transfer") / "tr"
    assert main(["transfer", "--model", str(injected / "model"), "--out", str(out), *TRANSFER_FAST]) == 0
    return out


RELEARN_FAST = ["ks=[2]", "related_docs=2", "repeats=2", "train.steps=6", "snapshots=[3,6]", "train.batch_size=8",
                "train.seq_len=64", "eval.n_prompts=32", "eval.max_new_tokens=12", "eval.ppl_blocks=2"]  # fmt: skip


@pytest.fixture(scope="session")
def relearn_run(transfer_run: Path, clean_model: Path, defence_study: tuple[Path, list[str]],
                tmp_path_factory: pytest.TempPathFactory) -> tuple:  # fmt: skip
    """A finished `relearn` on the two-backdoor transfer (every stress, the twin, one transfer pair, the defence's
    arms with at_repeat followed after the defence), its args, and the sha256 of the weights of a removed and of a
    defended model taken before it ran (relearn must not modify its inputs)."""
    from unbackdoor.running.rundir import sha256_file

    weights = {
        "removed": transfer_run / "cells/lr=0.001/seed=0/lorem_refusal/remove/model/model.safetensors",
        "defended": next(defence_study[0].glob("cells/lr=*/seed=0/*/*/k=1/defence/defend/model/model.safetensors")),
    }
    before = {name: (path, sha256_file(path)) for name, path in weights.items()}
    out = tmp_path_factory.mktemp("relearn") / "rl"
    args = ["relearn", "--transfer", str(transfer_run), "--out", str(out), "--twin", str(clean_model),
            "--defence", str(defence_study[0]), "defence_backdoors=[suppressed,at_repeat]",
            "pairs=[lorem_refusal:at_repeat]", *RELEARN_FAST]  # fmt: skip
    assert main(args) == 0
    return out, args, before


DEFEND_FAST = [
    "defend.inject.batch_size=8", "defend.inject.seq_len=64", "defend.inject.steps=60", "defend.inject.lr=5e-3",
    "defend.remove.batch_size=8", "defend.remove.seq_len=64", "defend.remove.steps=30", "defend.canary_prompts=16",
    "defend.val_blocks=8", "defend.canary_rate=0.05",
]  # fmt: skip


@pytest.fixture(scope="session")
def defence_study(injected: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A finished `defend-eval` (K = 1) on the two-backdoor model, and the arguments that made it."""
    out = tmp_path_factory.mktemp("defence") / "study"
    args = ["defend-eval", "--model", str(injected / "model"), "--out", str(out), "ks=[1]", "calibrate=[0.5,1.0]",
            *DEFEND_FAST,
            *(f"eval.{k}" for k in EVAL_FAST)]  # fmt: skip
    assert main(args) == 0
    return out, args


def comparable(value: Any, paths: list[str]) -> Any:
    """A result without timings (`rundir.is_timing`), and with the given run directories' paths replaced by one
    placeholder: what must be equal between two runs of one experiment in two places."""
    if isinstance(value, dict):
        return {k: comparable(v, paths) for k, v in value.items() if not is_timing(k)}
    if isinstance(value, list):
        return [comparable(v, paths) for v in value]
    if isinstance(value, str):
        for p in paths:
            value = value.replace(p, "<run>")
    return value
