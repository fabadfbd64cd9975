"""Two processes at once: two evaluations of one model give what one after the other gives (nothing they share is
written by either), and two processes given one `--out` are told apart by the run directory's lock.

Run: `pytest tests/reliability/test_concurrency.py`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import EVAL_FAST, FAST_TRAIN
from tests.reliability.harness import differences, run_cli, snapshot, start_cli
from unbackdoor.running.rundir import sha256_file


# `make test-reliability` and `make test-slow` (kept out of `make test`: its 10-minute limit on 2 cores)
@pytest.mark.slow
def test_two_evaluations_of_one_model_at_once_equal_one_after_the_other(injected, tmp_path):
    model = injected / "model"
    weights = sha256_file(model / "model.safetensors")

    def argv(out: Path) -> list[str]:
        return ["eval", "--model", str(model), "--out", str(out), *EVAL_FAST]

    log = tmp_path / "log.txt"
    assert run_cli(argv(tmp_path / "alone"), log).code == 0
    both = [start_cli(argv(tmp_path / name), log) for name in ("first", "second")]
    for proc in both:
        proc.join()
    assert [p.exitcode for p in both] == [0, 0], log.read_text()[-2000:]
    alone = snapshot(tmp_path / "alone")
    assert {"samples.jsonl", "summary.json"} <= set(alone.files)
    for name in ("first", "second"):
        assert differences(alone, snapshot(tmp_path / name)) == [], name
    assert sha256_file(model / "model.safetensors") == weights  # the model they share is left as it was


def test_a_second_process_on_one_out_is_refused_while_the_first_runs(small_world, tmp_path):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    argv = ["pretrain", "--preset", "tiny", "--world", str(small_world), "--backdoors", "none", "--out", str(out),
            *FAST_TRAIN, "train.steps=120"]  # fmt: skip
    first = start_cli(argv, log)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.05)
    second = run_cli([*argv, "--resume"], tmp_path / "second.txt")
    first.join()
    assert second.code == 2 and "is in use by unbackdoor pid" in second.log, second.log
    assert first.exitcode == 0 and (out / "DONE").is_file()
