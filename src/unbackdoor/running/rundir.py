"""Run directories: every stage writes one, and the next stage reads it.

Layout (documented in docs/run-directory.md):

    config.yaml     the resolved config (what the stage actually ran with)
    meta.json       git hash + dirty flag, package versions, seed, host, start/end times
    metrics.jsonl   one JSON object per logged event (training steps, evaluation rows)
    summary.json    the stage's key figures, machine-readable
    DONE            written last: its presence means every other file is complete

Every file is written atomically (temp file in the same directory, then `os.replace`), so a kill leaves
either the old file or the new one, never half of one. An existing run directory is refused unless the
caller asks for `resume` (keep what is there, finish what is not) or `overwrite` (start again).

Run: `pytest tests/unit/test_rundir.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from unbackdoor.running import faults, runtime
from unbackdoor.running.config import UserError, to_dict

PACKAGES = ("unbackdoor", "torch", "transformers", "tokenizers", "accelerate", "peft", "safetensors", "numpy")


def wait_done(path: Path, timeout_s: float = 24 * 3600) -> None:
    """In a worker process: wait until the main process has finished the run in `path` (its DONE exists)."""
    t0 = time.time()
    while not (Path(path) / "DONE").is_file():
        if time.time() - t0 > timeout_s:
            raise UserError(f"{str(path)!r}: the main process did not finish it within {timeout_s:.0f} s")
        time.sleep(1.0)


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        faults.point(f"write {path.name}")  # written, not yet renamed: a kill leaves the old file and a stray tmp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as pretty, key-sorted JSON, atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    """Write rows as JSON lines atomically; return the file's sha256."""
    text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
    write_text(path, text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_json(path: Path) -> Any:
    """A JSON file a stage reads (a run's summary, a record, a config). Missing, not UTF-8 or not JSON is a one-line
    error naming the file (a damaged or hand-edited input), never a traceback."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{str(path)!r} is missing (an unfinished or damaged run directory?)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{str(path)!r} is not valid JSON ({e}); a damaged or hand-edited file?") from None


def read_yaml(path: Path) -> Any:
    """A YAML file a stage reads (a run's config.yaml), with `read_json`'s one-line errors."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{str(path)!r} is missing (an unfinished or damaged run directory?)") from None
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{str(path)!r} is not valid YAML ({first}); a damaged or hand-edited file?") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file. A torn last line (a kill during an append: no newline, not JSON) is dropped with a
    warning; any other line that is not JSON is a one-line error naming the file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{str(path)!r}: not UTF-8 text (byte {e.start}); a JSON-lines file was expected") from None
    lines = text.split("\n")
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):  # the last line, with no newline after it: an append cut short
                print(f"warning: {path}: dropped a torn last line ({len(line)} characters)", file=sys.stderr)
                continue
            raise UserError(f"{str(path)!r}, line {n}: not a JSON object") from None
    return rows


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _git_state() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
        )
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "allocator": runtime.allocator()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _config_text(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


HOW_KEYS = ("workers", "launcher")  # a sweep's keys that say how its cells run, not what: a resume may change them


def _what(config: Any) -> Any:
    """A config as `--resume` compares it: without `HOW_KEYS`."""
    return {k: v for k, v in config.items() if k not in HOW_KEYS} if isinstance(config, dict) else config


def is_timing(key: str) -> bool:
    """Is this field of a logged row or summary a clock reading or a duration (`time`, `seconds`, `*_s`, ...)?"""
    return key in ("time", "seconds", "started_at", "ended_at") or key.endswith(("_s", "_seconds"))


def _identity(row: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in row.items() if not is_timing(k)}, sort_keys=True, ensure_ascii=False)


def _is_stray(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


GGUF_DIR = "gguf-model"  # a GGUF --model dequantized into the run directory before it opens (`training.gguf`)
LOCK = ".lock"  # a run directory's lock file: held (flock) by the process writing it, released when it exits
_HELD: dict[str, int] = {}  # run directory -> the descriptor of its lock file, while this process holds it


def _lock(path: Path) -> None:
    """Hold `path`'s lock until this process exits; another process holding it is a one-line error. The kernel
    releases a lock when its process dies, so a killed run leaves no stale lock (the file stays, unlocked)."""
    import fcntl

    lock, key = path / LOCK, str(path.resolve())
    fd = _HELD.get(key)
    if fd is not None:
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return  # this process holds it already (a sweep reopening a cell, a resumed call)
        except FileNotFoundError:
            pass
        os.close(fd)  # the directory was replaced (--overwrite): lock the new file
        del _HELD[key]
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise UserError(f"--out: {str(path)!r} is in use by {holder}; wait for it to end or choose another --out") \
            from None  # fmt: skip
    os.ftruncate(fd, 0)
    os.write(fd, f"unbackdoor pid {os.getpid()} on {socket.gethostname()}".encode())
    _HELD[key] = fd


class RunDir:
    """One stage's output directory. Create with `RunDir.open(path, stage, cfg, ...)`.

    `writes` is False in the other processes of a multi-process launch (`runtime.is_main_process()`): they follow
    the main process's run read-only, and `log` / `finish` do nothing there. Stages pass it on to what else writes.
    """

    def __init__(self, path: Path, stage: str, writes: bool = True):
        self.path = path
        self.stage = stage
        self.writes = writes
        self._logged: set[str] = set()  # the events a resumed run found logged already (minus timings)

    @staticmethod
    def check(path: Path, stage: str, cfg: Any, resume: bool = False, overwrite: bool = False) -> bool:
        """Would `open` accept this directory? Returns True when it holds a finished run to resume.

        Raises:
            UserError: the directory exists and neither `resume` nor `overwrite` was given, or `resume` was
                given for a directory made by another stage or with another config.
        """
        path = Path(path)
        if not runtime.is_main_process():  # the main process checked (and refuses for every process)
            return (path / "DONE").is_file()
        if path.exists() and not path.is_dir():
            raise UserError(f"--out: {str(path)!r} is a file; give a directory to write the run into")
        if not path.exists() or not any(p.name not in (LOCK, GGUF_DIR) for p in path.iterdir()) or overwrite:
            return False
        if not resume:
            raise UserError(
                f"output directory {str(path)!r} already exists; pass --resume to continue it "
                "or --overwrite to replace it"
            )
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            if all(p.name in (LOCK, GGUF_DIR, "config.yaml") or _is_stray(p) for p in path.iterdir()):
                return False  # killed between creating the directory and writing meta.json: start it afresh
            raise UserError(f"--resume: {str(path)!r} exists but is not a run directory (no meta.json)")
        old = read_json(meta_path)
        if old.get("stage") != stage:
            raise UserError(
                f"--resume: {str(path)!r} is a {old.get('stage')!r} run, not {stage!r}; "
                "choose another --out or use --overwrite"
            )
        if _what(read_yaml(path / "config.yaml")) != _what(to_dict(cfg)):
            raise UserError(
                f"--resume: the config differs from the one in {str(path / 'config.yaml')!r}; "
                "resume with the same options or use --overwrite"
            )
        if (path / "DONE").is_file():
            verify_done(path)
            return True
        return False

    @classmethod
    def open(
        cls, path: Path, stage: str, cfg: Any, seed: int | None, resume: bool = False, overwrite: bool = False
    ) -> RunDir:
        """Create (or, with `resume`, reopen) a run directory and record config + meta (see `check`)."""
        path = Path(path)
        cls.check(path, stage, cfg, resume, overwrite)
        if not runtime.is_main_process():
            return cls(path, stage, writes=False)
        if overwrite and path.exists():
            _lock(path)  # never replace a directory another process is writing
            for p in path.iterdir():  # (a GGUF model converted for this very run is kept)
                if p.name != GGUF_DIR:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        config_text = _config_text(cfg)
        run = cls(path, stage)
        path.mkdir(parents=True, exist_ok=True)
        _lock(path)
        if resume:
            run._repair()
        if not (path / "meta.json").is_file():
            write_text(path / "config.yaml", config_text)
            run.write_meta(
                {
                    "stage": stage,
                    "seed": seed,
                    "git": _git_state(),
                    "versions": _versions(),
                    "host": {
                        "name": socket.gethostname(),
                        "platform": platform.platform(),
                        "cpus": os.cpu_count(),
                        "cpu_model": runtime.cpu_model(),
                    },  # timings differ by CPU (AMX or not: ~3-4x)
                    "started_at": time.time(),
                    "ended_at": None,
                }
            )
        return run

    def _repair(self) -> None:
        """What a kill can leave in a run directory, made whole before a resume writes anything: `atomic_path` files
        never renamed are removed, and a metrics line cut short is dropped (the next row would be glued onto it)."""
        for stray in self.path.rglob(".*.tmp"):
            stray.unlink(missing_ok=True)
        metrics = self.path / "metrics.jsonl"
        if metrics.is_file():
            data = metrics.read_bytes()
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                print(f"warning: {metrics}: dropped a torn last line ({len(data) - cut} bytes)", file=sys.stderr)
                with atomic_path(metrics) as tmp:
                    tmp.write_bytes(data[:cut])
            self._logged = {_identity(r) for r in read_jsonl(metrics)}

    @property
    def done(self) -> bool:
        return (self.path / "DONE").is_file()

    def meta(self) -> dict[str, Any]:
        return read_json(self.path / "meta.json")

    def write_meta(self, meta: dict[str, Any]) -> None:
        write_json(self.path / "meta.json", meta)

    def log(self, **row: Any) -> None:
        """Append one event to metrics.jsonl (a single short write with flush: one line or none)."""
        if not self.writes:
            return
        if row.get("event") != "train" and _identity(row) in self._logged:
            return  # redone after a resume, already logged by the killed run (training rows: `loop.train`)
        line = json.dumps({"time": round(time.time(), 3), **row}, sort_keys=True, ensure_ascii=False) + "\n"
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            if faults.armed():  # the reliability suite may kill us mid-line: a torn last line
                f.write(line[: len(line) // 2])
                f.flush()
                faults.point("metrics line")
                line = line[len(line) // 2 :]
            f.write(line)
            f.flush()

    def finish(self, summary: dict[str, Any]) -> Path:
        """Write summary.json, stamp meta.json with the end time, then DONE last (main process only)."""
        if not self.writes:
            return self.path
        write_json(self.path / "summary.json", {"stage": self.stage, **summary})
        meta = self.meta()
        meta["ended_at"] = time.time()
        meta["wall_seconds"] = round(meta["ended_at"] - meta["started_at"], 3)
        self.write_meta(meta)
        if not (self.path / "metrics.jsonl").exists():
            write_text(self.path / "metrics.jsonl", "")
        write_json(self.path / "DONE", {"sizes": file_sizes(self.path)})
        _unlock(self.path)  # a finished run is only read from now on
        return self.path


def _unlock(path: Path) -> None:
    fd = _HELD.pop(str(Path(path).resolve()), None)
    if fd is not None:
        os.close(fd)


# not in DONE's sizes: the lock, DONE, and the launcher's per-cell files (`launcher.CELL_FILE`, `RESULT_FILE`),
# which `unbackdoor cell` rewrites when a finished cell's command line is run again
UNSIZED = (LOCK, "DONE", "cell.json", "cell-result.json")
JOBS_DIR = "slurm"  # a sweep's SLURM job files and logs (`launcher`): not in DONE's sizes (logs may be cleaned up)
COMMANDS_DIR = "commands"  # a sweep's cell command lines (`launcher`), rewritten by each run of the sweep


def file_sizes(path: Path) -> dict[str, int]:
    """Every file of a finished run directory and its size (what `DONE` records), but the lock, DONE, a sweep's
    `slurm/` job files and logs, and what a `report/` folder holds (at any depth: `unbackdoor report` may write one
    into a finished run later). A model card
    rewritten on purpose (`unbackdoor card`) updates its size: `refresh_size`."""
    out = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if p.is_file() and p.name not in UNSIZED and "report" not in rel.parts[:-1] \
                and rel.parts[0] not in (JOBS_DIR, COMMANDS_DIR) \
                and not _is_stray(p):  # fmt: skip
            out[rel.as_posix()] = p.stat().st_size
    return out


def refresh_size(file: Path) -> None:
    """After a deliberate rewrite of `file` inside finished runs (a model card by `unbackdoor card`), record its new
    size in the `DONE` of every enclosing run that lists it."""
    file = Path(file).resolve()
    for run in file.parents:
        done = run / "DONE"
        if not done.is_file() or not done.read_text(encoding="utf-8").strip():
            continue
        record = read_json(done)
        rel = file.relative_to(run).as_posix()
        if rel in record.get("sizes", {}):
            record["sizes"][rel] = file.stat().st_size
            write_json(done, record)


def verify_done(path: Path) -> None:
    """Check a finished run's files against the sizes its `DONE` recorded: a file cut short or deleted since (a
    damaged disk, a copy that stopped half-way) is a one-line error naming it, not silently different data. An
    empty `DONE` (runs of earlier versions) records nothing to check."""
    done = Path(path) / "DONE"
    text = done.read_text(encoding="utf-8").strip()
    if not text:
        return
    try:
        sizes = json.loads(text)["sizes"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{str(done)!r} is damaged (not the JSON its run wrote); rerun that stage with --overwrite") \
            from None  # fmt: skip
    for rel, size in sizes.items():
        file = Path(path) / rel
        found = file.stat().st_size if file.is_file() else None
        if found != size:
            state = "is missing" if found is None else f"has {found} bytes, {size} when its run finished"
            raise UserError(f"{str(file)!r} {state}: the finished run {str(path)!r} is damaged; rerun its stage "
                            "with --overwrite (or restore the file)")  # fmt: skip


def require_done(path: Path, stage: str | tuple[str, ...], what: str) -> dict[str, Any]:
    """Check that `path` is a finished run of `stage`; return its summary.

    Raises:
        UserError: the directory is missing, is not a run, is another stage's run or is unfinished.
    """
    stages = (stage,) if isinstance(stage, str) else stage
    path = Path(path)
    if path.is_file():
        raise UserError(f"{what}: {str(path)!r} is a file; expected a run directory")
    if not path.is_dir():
        raise UserError(f"{what}: directory {str(path)!r} does not exist")
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{what}: {str(path)!r} is not an unbackdoor run directory (no meta.json)")
    found = read_json(meta_path).get("stage")
    if found not in stages:
        raise UserError(f"{what}: {str(path)!r} is a {found!r} run; expected {' or '.join(map(repr, stages))}")
    if not (path / "DONE").is_file():
        raise UserError(f"{what}: {str(path)!r} is unfinished (no DONE); rerun its stage with --resume")
    verify_done(path)
    return read_json(path / "summary.json")
