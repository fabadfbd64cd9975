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


def test_killed_run_resumes_to_the_same_loss_curve(small_world, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: bitwise-reproducible reductions
    straight = tmp_path / "straight"
    subprocess.run(pretrain_cmd(small_world, straight), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(pretrain_cmd(small_world, killed), env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while last_step(killed) < KILL_AFTER and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "DONE").exists(), "the run finished before it could be killed"
    assert (killed / "checkpoint" / "state.json").is_file()
    assert last_step(killed) >= KILL_AFTER

    refused = subprocess.run(pretrain_cmd(small_world, killed), env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr

    subprocess.run([*pretrain_cmd(small_world, killed), "--resume"], check=True, env=env, capture_output=True)
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["resumed_from_step"] in (20, 40)
    a, b = losses(straight), losses(killed)
    assert sorted(a) == sorted(b) == list(range(STEPS))
    assert a == b
    assert (killed / "model" / "model.safetensors").read_bytes() == (
        straight / "model" / "model.safetensors"
    ).read_bytes()
