"""Where a sweep's cells run: here (`local`), as SLURM jobs (`slurm`, through submitit), or elsewhere (`commands`).

Every sweep (`transfer`, `defend-eval`, `relearn`) writes each cell's arguments to `<cell>/cell.json` and its
command line to `<out>/commands/<phase>.txt`, one line per cell: `unbackdoor cell <cell>/cell.json` runs
that cell alone, from any directory (it changes to the sweep's working directory first), and is resumable like
every stage (a finished cell is a no-op). Then:

- `local` (default): the cells run in this process, or in `--workers N` processes (one GPU each when several are
  visible; `cells.run_cells`).
- `slurm`: the cells are submitted as one job array through submitit, each job running that cell's command line,
  with the resources of `launcher.*`; the settings are checked with `sbatch --test-only` before any work. The parent
  waits (it is light: a login node will do), resubmits a failed, cancelled, timed-out or preempted cell up to
  `launcher.retries` times (the cell resumes from its last checkpoint, if its training writes them), names each
  cell that keeps failing in one line with its log, and lets the others finish. Job ids are kept in
  `<out>/slurm/jobs.json`: a resumed parent waits for jobs still queued or running instead of submitting the cell
  twice. Job logs are in `<out>/slurm/`.
- `commands`: nothing runs; the sweep stops after writing the command lines (exit 0), for a lab with another
  scheduler (PBS, LSF, Kubernetes jobs). Run every line of the file (any order, any machine sharing the folder),
  then rerun the sweep with `--resume` to aggregate.

`launcher` and `workers` say how a sweep runs, not what it computes: a resume may change them (`RunDir.check`).

Run: `pytest tests/slurm` (a real single-node SLURM cluster), `pytest tests/integration/test_launcher.py`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unbackdoor.running.config import ConfigError, UserError
from unbackdoor.running.rundir import COMMANDS_DIR, JOBS_DIR, read_json, write_json, write_text

KINDS = ("local", "slurm", "commands")
CELL_FILE = "cell.json"  # a cell's arguments (what `unbackdoor cell` runs)
RESULT_FILE = "cell-result.json"  # written by `unbackdoor cell` when the cell is done: its timings
SLURM_DIR = JOBS_DIR  # <out>/slurm/: submitit's job files and logs, jobs.json (not in the sweep's DONE sizes)
# the cell function of every sweep (module, function): `unbackdoor cell` runs only these
CELL_FUNCTIONS = {
    "transfer": ("unbackdoor.stages.transfer", "run_cell"),
    "defend-eval": ("unbackdoor.stages.defend_eval", "run_cell"),
    "relearn": ("unbackdoor.stages.relearn", "run_cell"),
}
POLL_S = (2.0, 30.0)  # the parent looks for finished jobs every 2 s at first, every 30 s at most (one sacct each)
# PREEMPTED is final where the cluster cancels preempted jobs (a requeued one shows PENDING / REQUEUED): ended
UNFINISHED = ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "RESIZING", "SUSPENDED")


@dataclass
class LauncherConfig:
    kind: str = field(default="local", metadata={"choices": KINDS})  # local, slurm or commands (module doc)
    partition: str = ""  # slurm: the partition (empty: the cluster's default)
    account: str = ""  # slurm: the account charged (empty: the user's default)
    gpus_per_job: int = field(default=0, metadata={"min": 0, "max": 64})  # slurm: GPUs of each cell's job
    cpus_per_job: int = field(default=1, metadata={"min": 1, "max": 4096})  # slurm: CPUs (the cell's torch threads)
    mem_gb: int = field(default=0, metadata={"min": 0, "max": 65536})  # slurm: memory per job (0: the default)
    time_min: int = field(default=60, metadata={"min": 1, "max": 527040})  # slurm: each job's time limit
    max_parallel: int = field(default=0, metadata={"min": 0, "max": 100000})  # slurm: jobs at once (0: no limit)
    retries: int = field(default=2, metadata={"min": 0, "max": 100})  # slurm: resubmissions of a failing cell

    def check(self) -> None:
        """Before any work: `slurm` needs submitit and SLURM on this machine, and settings the cluster accepts
        (`sbatch --test-only`). Raises `UserError` naming the setting."""
        if self.kind != "slurm":
            return
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise UserError("launcher.kind: slurm needs submitit: pip install 'unbackdoor[slurm]'") from None
        if shutil.which("sbatch") is None or shutil.which("sacct") is None:
            raise UserError("launcher.kind: slurm, but this machine has no SLURM commands (sbatch, sacct) on its "
                            "PATH; run the sweep on a cluster's login node, or use launcher.kind local or "
                            "commands")  # fmt: skip
        acct = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True, check=False)
        if acct.returncode:  # without accounting the parent could never see a job end
            why = " ".join(acct.stderr.split())[:300] or "no reason given"
            raise UserError(f"launcher.kind: slurm needs job accounting (sacct is how jobs are followed): {why}")
        test = subprocess.run(["sbatch", "--test-only", *self.sbatch_flags(), "--wrap", "true"],
                              capture_output=True, text=True, check=False)  # fmt: skip
        if test.returncode:
            why = " ".join(line.strip() for line in test.stderr.splitlines() if line.strip()) or "no reason given"
            raise UserError(f"launcher: SLURM refuses the job settings ({self.describe()}): {why}")

    def sbatch_flags(self) -> list[str]:
        """The settings as sbatch flags (for `--test-only`; submitit writes the same into each job script)."""
        flags = [f"--time={self.time_min}", f"--cpus-per-task={self.cpus_per_job}"]
        flags += [f"--partition={self.partition}"] if self.partition else []
        flags += [f"--account={self.account}"] if self.account else []
        flags += [f"--gpus-per-node={self.gpus_per_job}"] if self.gpus_per_job else []
        flags += [f"--mem={self.mem_gb}G"] if self.mem_gb else []
        return flags

    def describe(self) -> str:
        return ", ".join(f"launcher.{k}={v}" for k, v in (("partition", self.partition or "(default)"),
                         ("account", self.account or "(default)"), ("time_min", self.time_min),
                         ("cpus_per_job", self.cpus_per_job), ("gpus_per_job", self.gpus_per_job),
                         ("mem_gb", self.mem_gb)))  # fmt: skip

    def validate(self) -> None:
        if self.kind != "slurm" and (self.partition or self.account):
            raise ConfigError(f"launcher.partition / launcher.account are SLURM settings; launcher.kind is "
                              f"{self.kind!r} (use --launcher slurm)")  # fmt: skip


class CellsPending(Exception):
    """`launcher.kind=commands`: the cells' command lines are written; nothing else to do until they have run."""


def cell_command(cell_file: Path) -> list[str]:
    """The command line that runs one cell: this installation's `unbackdoor cell <file>` (absolute paths)."""
    script = Path(sys.executable).parent / "unbackdoor"
    exe = [str(script)] if script.is_file() else [sys.executable, "-m", "unbackdoor"]
    return [*exe, "cell", str(Path(cell_file).absolute())]


def write_cells(sweep: str, out: Path, phase: str, cells: dict[Hashable, tuple[Path, tuple]]) -> dict[Hashable, Path]:
    """Write every cell's `cell.json` and the phase's commands file; returns key -> cell file."""
    files: dict[Hashable, Path] = {}
    for key, (where, args) in cells.items():
        where.mkdir(parents=True, exist_ok=True)
        write_json(where / CELL_FILE, {"sweep": sweep, "cwd": str(Path.cwd()), "args": list(args)})
        files[key] = where / CELL_FILE
    lines = [shlex.join(cell_command(f)) for f in files.values()]
    write_text(Path(out) / COMMANDS_DIR / f"{phase}.txt", "".join(f"{line}\n" for line in lines))
    return files


def run_cell_file(path: Path) -> dict[str, Any]:
    """`unbackdoor cell FILE`: run the cell FILE describes with this job's CPUs; writes its result file."""
    import importlib

    path = Path(path).absolute()
    if not path.is_file():
        raise UserError(f"cell: {str(path)!r} is not a cell file (a sweep writes <cell>/{CELL_FILE})")
    spec = read_json(path)
    if not isinstance(spec, dict) or spec.get("sweep") not in CELL_FUNCTIONS or not isinstance(spec.get("args"), list):
        raise UserError(f"cell: {str(path)!r} is not a cell file of {', '.join(CELL_FUNCTIONS)} "
                        "(keys sweep, cwd, args)")  # fmt: skip
    module, name = CELL_FUNCTIONS[spec["sweep"]]
    fn = getattr(importlib.import_module(module), name)
    os.chdir(spec.get("cwd") or path.parent)  # the sweep's paths may be relative to where it ran
    result = fn(*spec["args"], job_threads())
    write_json(path.parent / RESULT_FILE, result)
    return result


def job_threads() -> int:
    """CPU threads a cell may use: the job's CPUs (`SLURM_CPUS_PER_TASK`), else the CPUs this process may run on."""
    given = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_slurm(
    cfg: LauncherConfig,
    sweep: str,
    out: Path,
    files: dict[Hashable, Path],
    on_done: Callable[[Hashable, Any], None],
    label: Callable[[Hashable], str] = str,
) -> dict[Hashable, Any]:
    """Submit every cell as a job (one array), wait, resubmit failures; returns key -> the cell's result.

    A cell is done when its result file exists (`unbackdoor cell` writes it last); a job SLURM reports ended
    (sacct) twice in a row without that file failed (cancelled, timed out, out of memory, the cell's error).

    Raises:
        UserError: after every other cell has finished, one line per cell that failed `retries + 1` times.
    """
    import submitit
    from submitit.core.utils import CommandFunction

    folder = Path(out).absolute() / SLURM_DIR
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0)
    params: dict[str, Any] = {"time": cfg.time_min, "cpus_per_task": cfg.cpus_per_job,
                              "job_name": f"unbackdoor-{sweep}", "signal_delay_s": 30}  # fmt: skip
    optional = (("partition", cfg.partition), ("account", cfg.account), ("gpus_per_node", cfg.gpus_per_job),
                ("mem", f"{cfg.mem_gb}GB" if cfg.mem_gb else None),
                ("array_parallelism", cfg.max_parallel))  # fmt: skip
    executor.update_parameters(**params, **{k: v for k, v in optional if v})
    book_path = folder / "jobs.json"
    book: dict[str, Any] = read_json(book_path) if book_path.is_file() else {}
    tries = {key: 0 for key in files}
    active: dict[Hashable, Any] = {}
    # the book's keys: cell files relative to the sweep, so a parent resumed from another directory (or with --out
    # given another way) finds the jobs its predecessor submitted
    base = Path(out).absolute()
    entry = {key: Path(os.path.relpath(Path(f).absolute(), base)).as_posix() for key, f in files.items()}

    old = {key: book[entry[key]] for key in files if entry[key] in book}
    states = _states([b["job_id"] for b in old.values()])
    for key, b in old.items():  # a resumed parent: a dead parent's jobs SLURM still runs are waited for
        job_id = b["job_id"]
        if states.get(job_id, "").split(" ")[0] in UNFINISHED:
            active[key] = submitit.SlurmJob(folder=folder, job_id=job_id)
            tries[key] = int(b.get("try", 1))
            print(f"[slurm] {label(key)}: waiting for job {job_id} (submitted before this resume)", flush=True)

    def submit(keys: list[Hashable]) -> None:
        if not keys:
            return
        for key in keys:
            (files[key].parent / RESULT_FILE).unlink(missing_ok=True)
        try:
            with executor.batch():
                jobs = {key: executor.submit(CommandFunction(cell_command(files[key]))) for key in keys}
        except Exception as e:  # sbatch refused (settings changed on the cluster since the check, quota, ...)
            msg = " ".join(str(e).split())[:500]
            raise UserError(f"launcher: sbatch refused the {len(keys)} job(s) of {sweep}: {msg}") from None
        for key, job in jobs.items():
            tries[key] += 1
            active[key] = job
            book[entry[key]] = {"job_id": job.job_id, "try": tries[key]}
            print(f"[slurm] {label(key)}: job {job.job_id} (try {tries[key]})", flush=True)
        write_json(book_path, book)

    submit([k for k in files if k not in active])
    results: dict[Hashable, Any] = {}
    failed: dict[Hashable, str] = {}
    ended_once: set[Hashable] = set()  # seen ended without a result file at the last look (a shared disk may lag)
    started = time.monotonic()
    while active:
        time.sleep(min(POLL_S[1], max(POLL_S[0], (time.monotonic() - started) / 20)))
        states = _states([job.job_id for job in active.values()])
        retry: list[Hashable] = []
        for key, job in list(active.items()):
            result_file = files[key].parent / RESULT_FILE
            if result_file.is_file():
                del active[key]
                results[key] = read_json(result_file)
                on_done(key, results[key])
                continue
            state = states.get(job.job_id, "")
            if not state or state.split(" ")[0] in UNFINISHED:
                continue
            if key not in ended_once:
                ended_once.add(key)
                continue
            ended_once.discard(key)
            del active[key]
            if tries[key] <= cfg.retries:
                print(f"[slurm] {label(key)}: job {job.job_id} ended {state} without finishing; resubmitting",
                      flush=True)  # fmt: skip
                retry.append(key)
            else:
                failed[key] = (f"{label(key)}: job {job.job_id} ended {state} after {tries[key]} tries, log "
                               f"{job.paths.stderr}")  # fmt: skip
        submit(retry)
    if failed:
        raise UserError(f"{len(failed)} cell(s) of {sweep} kept failing (the others are done; fix and rerun with "
                        "--resume): " + "; ".join(failed.values()))  # fmt: skip
    return results


def _states(job_ids: list[str]) -> dict[str, str]:
    """Job id -> state from one sacct call (`COMPLETED`, `CANCELLED by 0`, `RUNNING`...); {} when sacct fails
    (the accounting daemon busy: the next look asks again). Array ranges are expanded by submitit's parser."""
    if not job_ids:
        return {}
    from submitit.slurm.slurm import SlurmInfoWatcher

    done = subprocess.run(["sacct", "-X", "--parsable2", "-o", "JobID,State", "-j", ",".join(map(str, job_ids))],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode:
        return {}
    return {job_id: info.get("State", "") for job_id, info in SlurmInfoWatcher().read_info(done.stdout).items()}
