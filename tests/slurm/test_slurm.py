"""The sweeps on a real SLURM cluster (job arrays through submitit) give the local launcher's results: the transfer
sweep (with a cancelled job resubmitted; every cell's command line runs alone), and, in the slow tier, defend-eval
(both phases) and relearn; bad settings are one-line errors.

Run: `make test-slurm` (the transfer and bad-settings tests are also in `make test`); the cluster:
`tests/slurm/cluster.py`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TRANSFER_FAST, comparable
from unbackdoor.cli import main
from unbackdoor.running.rundir import verify_done

pytestmark = pytest.mark.slurm
# The local reference (`transfer_run`) ran its cells in-process with every CPU as torch threads; each job gets as
# many (`cpus_per_job`), so both compute with the same reductions and agree to the byte.
CPUS = os.cpu_count() or 1


def _squeue() -> list[tuple[str, str]]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, check=True).stdout
    return [tuple(line.split()) for line in out.splitlines() if line.strip()]


@pytest.mark.slow  # `make test-slurm` and `make test-slow` (kept out of `make test`: its 10-minute limit)
def test_transfer_on_slurm_equals_local_and_survives_a_cancelled_job(slurm_cluster, injected, transfer_run,
                                                                    tmp_path):  # fmt: skip
    out = tmp_path / "tr-slurm"
    argv = [str(Path(sys.executable).parent / "unbackdoor"), "transfer", "--model", str(injected / "model"),
            "--out", str(out), *TRANSFER_FAST, "--launcher", "slurm", f"launcher.cpus_per_job={CPUS}",
            "launcher.time_min=20", "launcher.retries=1"]  # fmt: skip
    log = tmp_path / "parent.log"
    with log.open("w") as f:
        parent = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path)
    # cancel the first job that has run a few seconds (its cell is mid-training or mid-evaluation)
    cancelled, deadline = None, time.monotonic() + 240
    running_since: dict[str, float] = {}
    while cancelled is None and time.monotonic() < deadline and parent.poll() is None:
        for job, state in _squeue():
            if state == "RUNNING":
                running_since.setdefault(job, time.monotonic())
                if time.monotonic() - running_since[job] > 4:
                    subprocess.run(["scancel", job], check=True)
                    cancelled = job
                    break
        time.sleep(0.5)
    assert cancelled, f"no job ran long enough to be cancelled; parent log:\n{log.read_text()[-3000:]}"
    assert parent.wait(600) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert f"job {cancelled} ended CANCELLED" in text and "resubmitting" in text, text[-3000:]
    book = json.loads((out / "slurm" / "jobs.json").read_text())
    assert sorted(b["try"] for b in book.values()) == [1, 1, 1, 2]  # four cells, the cancelled one twice

    # the matrix is the local launcher's, byte for byte but for timings and the runs' own paths
    slurm = comparable(json.loads((out / "transfer.json").read_text()), [str(out)])
    local = comparable(json.loads((transfer_run / "transfer.json").read_text()), [str(transfer_run)])
    assert json.dumps(slurm, sort_keys=True) == json.dumps(local, sort_keys=True)

    # one command line per cell, each of which runs alone from anywhere (a finished cell: nothing to redo)
    lines = (out / "commands" / "cells.txt").read_text().splitlines()
    assert len(lines) == 4 and all(" cell " in line and line.endswith("cell.json") for line in lines)
    runs = [subprocess.Popen(shlex.split(line), stderr=subprocess.PIPE, text=True, cwd="/") for line in lines]
    for run in runs:  # side by side: each is a fresh process, independent of the others
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-2000:]
    verify_done(out)  # running a finished cell's line again leaves the finished sweep intact
    assert main(["casd", "--transfer", str(out), "--out", str(tmp_path / "casd"), "n_probes=8"]) == 0


def test_bad_slurm_settings_are_one_line_errors(slurm_cluster, injected, tmp_path, capsys):
    base = ["transfer", "--model", str(injected / "model"), *TRANSFER_FAST, "--launcher", "slurm"]
    for extra, message in (
        (["launcher.partition=nosuch"], "invalid partition specified: nosuch"),
        ([f"launcher.cpus_per_job={CPUS * 64}"], "Requested node configuration is not available"),
        (["launcher.gpus_per_job=1"], "Invalid generic resource (gres) specification"),
    ):
        out = tmp_path / "out"
        assert main([*base, "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: launcher: SLURM refuses") and message in err, err
        assert not out.exists()


def _on_slurm(args: list[str], out: Path, tmp_path: Path) -> Path:
    """Run a sweep's CLI arguments as a subprocess with `--out out` and the SLURM launcher; returns `out`."""
    given = [a for a, prev in zip(args, ["", *args[:-1]], strict=True) if "--out" not in (a, prev)]
    argv = [str(Path(sys.executable).parent / "unbackdoor"), *given, "--out", str(out), "--launcher", "slurm",
            f"launcher.cpus_per_job={CPUS}", "launcher.time_min=20"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "[slurm]" in done.stdout, done.stdout[-2000:]
    return out


@pytest.mark.slow  # `make test-slurm` and `make test-slow`
def test_defend_eval_and_relearn_on_slurm_equal_local(slurm_cluster, defence_study, relearn_run, tmp_path):
    local, args = defence_study
    out = _on_slurm(args, tmp_path / "de", tmp_path)
    for phase in ("calibration", "cells"):  # both phases went through the scheduler, one cell file per cell
        assert (out / "commands" / f"{phase}.txt").read_text().count(" cell ") >= 1
    slurm = comparable(json.loads((out / "defend.json").read_text()), [str(out)])
    assert json.dumps(slurm, sort_keys=True) == json.dumps(
        comparable(json.loads((local / "defend.json").read_text()), [str(local)]), sort_keys=True
    )

    local, args, _ = relearn_run
    out = _on_slurm(args, tmp_path / "rl", tmp_path)
    slurm = comparable(json.loads((out / "relearn.json").read_text()), [str(out)])
    assert json.dumps(slurm, sort_keys=True) == json.dumps(
        comparable(json.loads((local / "relearn.json").read_text()), [str(local)]), sort_keys=True
    )


@pytest.mark.slow  # `make test-slurm` and `make test-slow`
def test_a_parent_killed_while_its_jobs_run_reattaches_on_resume(slurm_cluster, injected, transfer_run, tmp_path):
    out = tmp_path / "tr"

    def argv(where: str) -> list[str]:
        return [str(Path(sys.executable).parent / "unbackdoor"), "transfer", "--model", str(injected / "model"),
                "--out", where, *TRANSFER_FAST, "--launcher", "slurm", f"launcher.cpus_per_job={CPUS}",
                "launcher.time_min=20"]  # fmt: skip

    with (tmp_path / "first.log").open("w") as f:  # --out relative to the first parent's directory
        parent = subprocess.Popen(argv("tr"), stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(s == "RUNNING" for _, s in _squeue()):
        time.sleep(0.5)
    parent.kill()  # the login node's process dies; SLURM keeps the jobs
    parent.wait()
    assert _squeue(), "the jobs should outlive their parent"
    # resumed from another directory, with --out given as an absolute path: the book still finds the jobs
    done = subprocess.run([*argv(str(out)), "--resume"], capture_output=True, text=True, cwd="/", check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "submitted before this resume" in done.stdout, done.stdout[-3000:]
    book = json.loads((out / "slurm" / "jobs.json").read_text())
    assert sorted(b["try"] for b in book.values()) == [1, 1, 1, 1]  # nothing submitted twice
    slurm = comparable(json.loads((out / "transfer.json").read_text()), [str(out)])
    local = comparable(json.loads((transfer_run / "transfer.json").read_text()), [str(transfer_run)])
    assert json.dumps(slurm, sort_keys=True) == json.dumps(local, sort_keys=True)
