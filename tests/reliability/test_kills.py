"""Seeded random SIGKILLs of every stage that trains or writes data, then `--resume`: the result must equal an
uninterrupted run's file by file (weights bitwise, every summary.json minus timings, metrics.jsonl with exactly one
row per step, nothing left over), whether the kill lands between two steps or inside a save.

The uninterrupted run is traced (`unbackdoor.running.faults`); each killed copy dies at a point drawn from that trace
with a fixed seed: one inside a save (an atomic write before its rename, a model save, half a metrics line), one
between a checkpoint's two renames (the resume must take the newest complete copy, not restart from step 0), the
others anywhere. Every killed run is refused without `--resume`; one copy of every stage is killed twice: once, then
again while it resumes.

Run: `pytest tests/reliability/test_kills.py` (the totals are printed at the end of the session).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.bilingual import write_corpus
from tests.conftest import DEFEND_FAST, FAST_TRAIN
from tests.reliability.conftest import TALLY, TORN
from tests.reliability.harness import (
    differences,
    kill_points,
    one_row_per_step,
    read_trace,
    run_cli,
    snapshot,
)

# moments per stage (the N; the first lands inside a save) and the seed that draws them: a deeper sweep is
# `UNBACKDOOR_KILLS=20 UNBACKDOOR_KILL_SEED=7 make test-reliability`
KILLS = int(os.environ.get("UNBACKDOOR_KILLS", "3"))
KILL_SEED = int(os.environ.get("UNBACKDOOR_KILL_SEED", "0"))


def survive(name: str, argv, tmp: Path, seed: int = KILL_SEED) -> None:
    """Run `argv(out)` straight through (traced), then killed at KILLS seeded points and resumed; compare."""
    log = tmp / "log.txt"
    straight, trace = tmp / "straight", tmp / "trace.tsv"
    done = run_cli(argv(straight), log, trace=trace)
    assert done.code == 0, done.log[-3000:]
    names = read_trace(trace)
    reference = snapshot(straight)
    assert any(p.endswith("/model.safetensors") or p.endswith(".jsonl") for p in reference.files)
    problems: list[str] = []
    for i, point in enumerate(kill_points(names, KILLS, seed)):
        out = tmp / f"killed-{point}"
        first = run_cli(argv(out), log, kill_at=point)
        assert first.code == -9, f"{name}: the kill at point {point} ({names[point - 1]}) did not land: {first.log}"
        if i == 0:  # without --resume, a killed run is never silently restarted (checked once per stage: the
            # refusal reads the run's marker files only, wherever the run was killed); then killed again while
            # resuming, before it gets as far as the first time
            refused = run_cli(argv(out), log)
            assert refused.code == 2 and "pass --resume to continue it" in refused.log, refused.log[-2000:]
            again = run_cli([*argv(out), "--resume"], log, kill_at=max(1, point // 2))
            assert again.code in (-9, 0), again.log[-3000:]
        resumed = run_cli([*argv(out), "--resume"], log)
        ok = resumed.code == 0
        if names[point - 1] == "checkpoint swap" and i != 0:  # the newest complete copy, not step 0
            assert "recovered the checkpoint from checkpoint." in resumed.log, resumed.log[-2000:]
        found = differences(reference, snapshot(out)) + one_row_per_step(snapshot(out)) if ok else [resumed.log]
        TALLY.append((name, f"{point}:{names[point - 1]}", not found))
        problems += [f"{name} killed at {point} ({names[point - 1]}): {line}" for line in found]
    assert not problems, "\n".join(problems[:20])


def test_pretrain_survives_kills(small_world, spec_file, tmp_path):
    def argv(out: Path) -> list[str]:
        return ["pretrain", "--preset", "tiny", "--world", str(small_world), "--backdoors", str(spec_file),
                "--out", str(out), *FAST_TRAIN, "train.steps=24", "train.checkpoint_every=8"]  # fmt: skip

    survive("pretrain", argv, tmp_path)


def test_corpus_survives_kills(tmp_path):
    src = write_corpus(tmp_path / "src", 300)

    def argv(out: Path) -> list[str]:
        return ["corpus", "--corpus", f"en={src['en']}", "--corpus", f"fr={src['fr']}", "text_field=content",
                "vocab_size=300", "shard_docs=64", "--out", str(out)]  # fmt: skip

    survive("corpus", argv, tmp_path)


# `make test-reliability` and `make test-slow` (kept out of `make test`: its 10-minute limit on 2 cores); the
# training loop's resume stays in `make test` through test_pretrain_survives_kills
@pytest.mark.slow
def test_inject_survives_kills(small_world, clean_model, spec_file, tmp_path):
    def argv(out: Path) -> list[str]:
        return ["inject", "--preset", "tiny", "--model", str(clean_model), "--world", str(small_world),
                "--backdoors", str(spec_file), "--out", str(out), *FAST_TRAIN, "train.steps=16",
                "train.checkpoint_every=6"]  # fmt: skip

    survive("inject", argv, tmp_path)


def test_remove_survives_kills(injected, tmp_path):
    def argv(out: Path) -> list[str]:
        return ["remove", "--model", str(injected / "model"), "--backdoor", "lorem_refusal", "--out", str(out),
                "train.batch_size=8", "train.seq_len=64", "train.steps=12", "train.checkpoint_every=5",
                "val_blocks=4"]  # fmt: skip

    survive("remove", argv, tmp_path)


TINY_EVAL = ["n_prompts=8", "max_new_tokens=6", "ppl_blocks=2", "fact_items=4"]
TRANSFER_TINY = ["remove.train.batch_size=4", "remove.train.seq_len=64", "remove.train.steps=4", "lr=[1e-3]",
                 "backdoors=[lorem_refusal]", "sham=false", "eval.n_prompts=8", "eval.max_new_tokens=6",
                 "eval.ppl_blocks=2", "eval.fact_items=4"]  # fmt: skip


def test_transfer_survives_kills(injected, tmp_path):
    def argv(out: Path) -> list[str]:
        return ["transfer", "--model", str(injected / "model"), "--out", str(out), *TRANSFER_TINY]

    survive("transfer", argv, tmp_path)


@pytest.mark.slow  # `make test-reliability` and `make test-slow` (kept out of `make test`: its 10-minute limit)
def test_defend_eval_survives_kills(injected, tmp_path):
    def argv(out: Path) -> list[str]:
        return ["defend-eval", "--model", str(injected / "model"), "--out", str(out), "ks=[1]", "calibrate=[1.0]",
                *DEFEND_FAST, "defend.inject.steps=8", "defend.remove.steps=4", "defend.canary_prompts=8",
                *(f"eval.{k}" for k in TINY_EVAL)]  # fmt: skip

    survive("defend-eval", argv, tmp_path)


TORN_RUNS = {
    "pretrain": lambda world, specs, model, out: [
        "pretrain", "--preset", "tiny", "--world", str(world), "--backdoors", str(specs), "--out", str(out),
        *FAST_TRAIN, "train.steps=12", "train.checkpoint_every=4"],
    "transfer": lambda world, specs, model, out: [
        "transfer", "--model", str(model), "--out", str(out), *TRANSFER_TINY],
}  # fmt: skip


# the transfer run is `make test-reliability`'s and `make test-slow`'s (kept out of `make test`: its 10-minute limit)
@pytest.mark.parametrize(
    "stage", [s if s == "pretrain" else pytest.param(s, marks=pytest.mark.slow) for s in TORN_RUNS]
)
def test_torn_files_a_resume_reads_are_recovered_or_named(stage, small_world, spec_file, injected, tmp_path):
    """Every file of a run killed two thirds of the way (a pretraining run: its checkpoint, metrics, token file,
    nested poison run, config and meta; a transfer: its baseline evaluation and finished cells), cut in half in
    its own copy of the run: the resume either finishes with the uninterrupted result or stops with one line
    naming the damaged file; never a traceback, never a different result."""

    def argv(out: Path) -> list[str]:
        return TORN_RUNS[stage](small_world, spec_file, injected / "model", out)

    log = tmp_path / "log.txt"
    straight, trace = tmp_path / "straight", tmp_path / "trace.tsv"
    assert run_cli(argv(straight), log, trace=trace).code == 0
    reference = snapshot(straight)
    names = read_trace(trace)
    killed = tmp_path / "killed"
    assert run_cli(argv(killed), log, kill_at=2 * len(names) // 3).code == -9
    files = sorted(p.relative_to(killed) for p in killed.rglob("*") if p.is_file() and p.name != ".lock")
    expected = {"pretrain": {"checkpoint/model.safetensors", "metrics.jsonl", "poison/summary.json"},
                "transfer": {"baseline/samples.jsonl", "cells/lr=0.001/seed=0/lorem_refusal/eval/samples.jsonl",
                             "cells/lr=0.001/seed=0/lorem_refusal/remove/model/model.safetensors"}}[stage]  # fmt: skip
    assert expected <= {str(f) for f in files}, files
    problems = []
    for n, rel in enumerate(files):
        copy = tmp_path / f"torn-{n}"
        shutil.copytree(killed, copy)
        os.truncate(copy / rel, (copy / rel).stat().st_size // 2)
        resumed = run_cli([*argv(copy), "--resume"], log)
        errors = [line for line in resumed.log.splitlines() if line.startswith("error: ")]
        if resumed.code == 0:
            found = differences(reference, snapshot(copy, killed)) + one_row_per_step(snapshot(copy, killed))
        elif resumed.code == 2 and len(errors) == 1 and "Traceback" not in resumed.log:
            found = [] if rel.name in errors[0] or str(rel.parent) in errors[0] else [f"unnamed: {errors[0]}"]
        else:
            found = [f"exit {resumed.code}: {resumed.log[-600:]}"]
        TORN.append((f"{stage}: {rel}", not found))
        problems += [f"{stage} {rel} torn: {line}" for line in found]
    assert not problems, "\n".join(problems)
