"""`--launcher commands`: a sweep writes one command line per unfinished cell and stops; the lines run alone (from
any directory), and `--resume` with the local launcher aggregates them into the same matrix.

Run: `pytest tests/integration/test_launcher.py` (the SLURM launcher: tests/slurm).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess

from tests.conftest import TRANSFER_FAST, comparable
from unbackdoor.cli import main
from unbackdoor.running.launcher import CELL_FILE, RESULT_FILE


def test_commands_launcher_writes_cells_another_scheduler_runs(injected, transfer_run, tmp_path, capsys):
    out = tmp_path / "tr"
    shutil.copytree(transfer_run, out)
    cell = out / "cells" / "lr=0.001" / "seed=0" / "at_repeat"
    shutil.rmtree(cell / "eval")  # a sweep with one cell left to measure
    (out / "DONE").unlink()
    args = ["transfer", "--model", str(injected / "model"), "--out", str(out), *TRANSFER_FAST, "--resume"]

    assert main([*args, "--launcher", "commands"]) == 0
    said = capsys.readouterr().out
    assert f"1 of 4 cell(s) of transfer to run ({cell})" in said and "rerun this command with --resume" in said, said
    lines = (out / "commands" / "cells.txt").read_text().splitlines()  # every cell (a finished one returns at once)
    assert len(lines) == 4 and not (out / "DONE").exists()
    (line,) = [x for x in lines if x.endswith(str(cell / CELL_FILE))]
    assert not (cell / "eval").exists()  # nothing ran

    done = subprocess.run(shlex.split(line), capture_output=True, text=True, cwd="/", check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (cell / "eval" / "DONE").is_file()
    assert set(json.loads((cell / RESULT_FILE).read_text())) == {"remove_s", "eval_s"}

    assert main(args) == 0  # the local launcher now: `launcher` says how cells run, a resume may change it
    result = comparable(json.loads((out / "transfer.json").read_text()), [str(out)])
    assert result == comparable(json.loads((transfer_run / "transfer.json").read_text()), [str(transfer_run)])


def test_a_cell_file_that_is_not_one_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / CELL_FILE
    bad.write_text(json.dumps({"sweep": "rm -rf", "args": []}))
    assert main(["cell", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a cell file of transfer, defend-eval, relearn" in err
    assert main(["cell", str(tmp_path / "nothere.json")]) == 2
    assert "is not a cell file" in capsys.readouterr().err
