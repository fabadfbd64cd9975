"""Run directories: atomic writes, DONE last, refusal of an existing directory, resume and overwrite.

Run: `pytest tests/unit/test_rundir.py`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pytest
import torch

from unbackdoor.running.config import UserError
from unbackdoor.running.rundir import RunDir, atomic_path, read_jsonl, require_done, write_json


@dataclass
class Cfg:
    seed: int = 0


def test_finished_run_has_every_file(tmp_path):
    run = RunDir.open(tmp_path / "r", "demo", Cfg(), seed=0)
    run.log(step=1, loss=2.0)
    run.finish({"answer": 42})
    files = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert files == [".lock", "DONE", "config.yaml", "meta.json", "metrics.jsonl", "summary.json"]
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert {"git", "versions", "seed", "host", "started_at", "ended_at"} <= set(meta)
    assert meta["versions"]["torch"] == torch.__version__  # the pin (2.13.0) here, the image's torch on a GPU
    assert require_done(tmp_path / "r", "demo", "--x")["answer"] == 42


def test_existing_directory_is_refused_without_resume_or_overwrite(tmp_path):
    RunDir.open(tmp_path / "r", "demo", Cfg(), seed=0).finish({})
    with pytest.raises(UserError, match="already exists; pass --resume"):
        RunDir.open(tmp_path / "r", "demo", Cfg(), seed=0)
    assert RunDir.open(tmp_path / "r", "demo", Cfg(), seed=0, resume=True).done
    assert not RunDir.open(tmp_path / "r", "demo", Cfg(), seed=0, overwrite=True).done


def test_resume_refuses_another_config_or_stage(tmp_path):
    RunDir.open(tmp_path / "r", "demo", Cfg(seed=0), seed=0)
    with pytest.raises(UserError, match="config differs"):
        RunDir.open(tmp_path / "r", "demo", Cfg(seed=1), seed=1, resume=True)
    with pytest.raises(UserError, match="is a 'demo' run, not 'other'"):
        RunDir.open(tmp_path / "r", "other", Cfg(), seed=0, resume=True)


def test_require_done_explains_unfinished_and_foreign_directories(tmp_path):
    RunDir.open(tmp_path / "r", "demo", Cfg(), seed=0)
    with pytest.raises(UserError, match="unfinished"):
        require_done(tmp_path / "r", "demo", "--model")
    with pytest.raises(UserError, match="does not exist"):
        require_done(tmp_path / "missing", "demo", "--model")
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="not an unbackdoor run directory"):
        require_done(tmp_path / "plain", "demo", "--model")


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "x.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_worker_processes_of_a_multi_process_launch_write_nothing(tmp_path, monkeypatch):
    from unbackdoor.running.rundir import wait_done

    @dataclass
    class Cfg:
        x: int = 1

    monkeypatch.setenv("RANK", "1")
    run = RunDir.open(tmp_path / "run", "s", Cfg(), 0)
    assert not run.writes  # the stages pass this on to everything else that writes
    run.log(step=1)
    assert run.finish({"k": 1}) == tmp_path / "run"
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="did not finish"):
        wait_done(tmp_path / "run", timeout_s=0.1)
    monkeypatch.setenv("RANK", "0")
    RunDir.open(tmp_path / "run", "s", Cfg(), 0).finish({"k": 1})
    monkeypatch.setenv("RANK", "1")
    wait_done(tmp_path / "run", timeout_s=0.1)  # the main process finished: the worker reads it
    assert RunDir.check(tmp_path / "run", "s", Cfg())  # workers follow the main process's decision


def test_a_torn_last_line_is_dropped_and_any_other_bad_line_is_named(tmp_path, capsys):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2, "lo')
    assert read_jsonl(path) == [{"step": 0}, {"step": 1}]
    assert "dropped a torn last line" in capsys.readouterr().err
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(UserError, match=r"line 2: not a JSON object"):
        read_jsonl(path)
    path.write_bytes(b'{"a": "\xff"}\n')
    with pytest.raises(UserError, match="not UTF-8"):
        read_jsonl(path)


def test_a_second_process_is_refused_the_same_run_directory_and_a_killed_one_leaves_no_stale_lock(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    holder = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from dataclasses import dataclass\n"
        "from unbackdoor.running.rundir import RunDir\n"
        "@dataclass\n"
        "class Cfg:\n"
        "    seed: int = 0\n"
        f"RunDir.open(Path({str(tmp_path / 'r')!r}), 'demo', Cfg(), 0)\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"is in use by unbackdoor pid {proc.pid} on .*; wait for it to end"):
            RunDir.open(tmp_path / "r", "demo", Cfg(), 0, resume=True)
        with pytest.raises(UserError, match="is in use by"):  # --overwrite never replaces a live run either
            RunDir.open(tmp_path / "r", "demo", Cfg(), 0, overwrite=True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(0.1)
    run = RunDir.open(tmp_path / "r", "demo", Cfg(), 0, resume=True)  # the kernel released the dead one's lock
    assert run.path == tmp_path / "r" and (tmp_path / "r" / "config.yaml").is_file()


def test_done_records_sizes_a_damaged_file_is_named_and_a_rewritten_card_is_refreshed(tmp_path):
    from unbackdoor.running.rundir import refresh_size, verify_done, write_text

    run = RunDir.open(tmp_path / "r", "eval", Cfg(), seed=0)
    write_text(run.path / "model" / "README.md", "# card\n")
    write_text(run.path / "samples.jsonl", '{"a": 1}\n{"a": 2}\n')
    run.finish({"x": 1})
    verify_done(run.path)  # as it was left
    (run.path / "report").mkdir()
    (run.path / "report" / "index.html").write_text("written later")  # a report inside a finished run: not checked
    verify_done(run.path)
    write_text(run.path / "model" / "README.md", "# card\n\n## Measured ASR\n")  # `unbackdoor card`, on purpose
    with pytest.raises(UserError, match="README.md' has 24 bytes, 7 when its run finished"):
        verify_done(run.path)
    refresh_size(run.path / "model" / "README.md")
    verify_done(run.path)
    os.truncate(run.path / "samples.jsonl", 9)  # a damaged disk, a copy that stopped half-way
    with pytest.raises(UserError, match=r"samples.jsonl' has 9 bytes, 18 when its run finished: the finished run"):
        verify_done(run.path)
