"""Kill a pretraining run mid-way (SIGKILL), resume it, and compare with an uninterrupted run step by step.

Run: `pytest tests/integration/test_train_resume.py`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.conftest import FAST_TRAIN

STEPS, EVERY, KILL_AFTER = 60, 20, 30


def pretrain_cmd(world: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "unbackdoor", "pretrain", "--preset", "tiny", "--world", str(world), "--out", str(out),
        *FAST_TRAIN, f"train.steps={STEPS}", f"train.checkpoint_every={EVERY}", *extra,
    ]  # fmt: skip


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r.get("event") == "train"}


def last_step(run: Path) -> int:
    try:
        return max(losses(run), default=-1)
    except (FileNotFoundError, json.JSONDecodeError):
        return -1


def kill_after(world: Path, out: Path, step: int, env: dict[str, str]) -> None:
    proc = subprocess.Popen(pretrain_cmd(world, out), env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while last_step(out) < step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "DONE").exists(), "the run finished before it could be killed"
    assert last_step(out) >= step


def train_rows(run: Path) -> list[int]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r.get("event") == "train"]


def test_killed_run_resumes_to_the_same_loss_curve(small_world, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: bitwise-reproducible reductions
    straight = tmp_path / "straight"
    subprocess.run(pretrain_cmd(small_world, straight), check=True, env=env, capture_output=True)
    weights = (straight / "model" / "model.safetensors").read_bytes()

    killed = tmp_path / "killed"
    kill_after(small_world, killed, KILL_AFTER, env)
    assert (killed / "checkpoint" / "state.json").is_file()
    refused = subprocess.run(pretrain_cmd(small_world, killed), env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    # a kill inside the checkpoint swap: the complete new copy is still `.partial`, no `checkpoint/` is left
    (killed / "checkpoint").rename(killed / "checkpoint.partial")

    done = subprocess.run([*pretrain_cmd(small_world, killed), "--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "recovered the checkpoint from checkpoint.partial" in done.stderr
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["resumed_from_step"] in (20, 40)  # from the recovered copy, not from step 0
    a, b = losses(straight), losses(killed)
    assert sorted(a) == sorted(b) == list(range(STEPS)) and train_rows(killed) == list(range(STEPS))
    assert a == b
    assert (killed / "model" / "model.safetensors").read_bytes() == weights

    # killed before its first checkpoint: it restarts from step 0 and metrics.jsonl still has one row per step
    early = tmp_path / "early"
    kill_after(small_world, early, 5, env)
    assert not (early / "checkpoint").exists()
    with open(early / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"event": "train", "step": 9, "lo')  # and the kill tore the last line in two
    done = subprocess.run([*pretrain_cmd(small_world, early), "--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "dropped a torn last line" in done.stderr
    assert train_rows(early) == list(range(STEPS)) and losses(early) == a
    assert (early / "model" / "model.safetensors").read_bytes() == weights
