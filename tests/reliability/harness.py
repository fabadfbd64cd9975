"""The fault-injection harness: run a CLI command in a child process, trace its fault points, kill it at one of them,
resume it, and compare run directories file by file.

Children are forked from a forkserver that has imported the stages once (a fresh interpreter would spend ~5 s on
imports per run) and run with one CPU thread, so that an interrupted and an uninterrupted run are bitwise comparable.

Run: `pytest tests/reliability`.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unbackdoor.running import faults
from unbackdoor.running.rundir import is_timing

STAGES = ("corpus", "pretrain", "inject", "remove", "evaluate", "transfer", "defend_eval")
PRELOAD = ["unbackdoor.cli", *(f"unbackdoor.stages.{s}" for s in STAGES), "tests.reliability.harness"]
# What may differ between an interrupted and an uninterrupted run: clocks and durations (`rundir.is_timing`), and
# where it resumed from.
RESUME_KEYS = {"resumed_from_step"}
UNCOMPARED = {".lock", "meta.json"}  # the lock file; meta.json holds start/end times and the host only
_context = None


def _ctx():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _child(argv: list[str], env: dict[str, str], log: str) -> None:
    for key in (faults.TRACE, faults.KILL_AT):
        os.environ.pop(key, None)
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    import torch

    torch.set_num_threads(1)  # bitwise-reproducible reductions, whatever the parent used
    from unbackdoor.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@dataclass
class Outcome:
    code: int  # the exit code; -9 when the kill landed
    log: str  # what the child printed (stdout and stderr)


def start_cli(argv: list[str], log: Path, trace: Path | None = None, kill_at: int | None = None):
    """Start `unbackdoor <argv>` in a child (its output appended to `log`); returns the process."""
    env = {}
    if trace is not None:
        env[faults.TRACE] = str(trace)
    if kill_at is not None:
        env[faults.KILL_AT] = str(kill_at)
    proc = _ctx().Process(target=_child, args=(argv, env, str(log)))
    proc.start()
    return proc


def run_cli(argv: list[str], log: Path, trace: Path | None = None, kill_at: int | None = None) -> Outcome:
    """Run `unbackdoor <argv>` in a child; optionally trace its fault points or SIGKILL it at the `kill_at`-th."""
    start = log.stat().st_size if log.exists() else 0
    proc = start_cli(argv, log, trace, kill_at)
    proc.join()
    text = log.read_bytes()[start:].decode("utf-8", errors="replace") if log.exists() else ""
    return Outcome(proc.exitcode, text)


def read_trace(trace: Path) -> list[str]:
    """The fault points an uninterrupted run passed, in order (index i is point number i + 1)."""
    return [line.split("\t", 1)[1] for line in trace.read_text(encoding="utf-8").splitlines()]


def kill_points(names: list[str], n: int, seed: int) -> list[int]:
    """`n` distinct points (1-based) drawn with `seed`: one inside a save (a write before its rename, a model save,
    half a metrics line) when the run has one, one between a checkpoint's two renames when it has checkpoints, the
    others anywhere."""
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for wanted in (lambda name: name not in ("step", "checkpoint swap"), lambda name: name == "checkpoint swap"):
        among = [i + 1 for i, name in enumerate(names) if wanted(name) and i + 1 not in chosen]
        if among and len(chosen) < n:
            chosen.append(int(rng.choice(among)))
    rest = [i for i in range(1, len(names) + 1) if i not in chosen]
    chosen += [int(i) for i in rng.choice(rest, size=min(n - len(chosen), len(rest)), replace=False)]
    return sorted(chosen)


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not is_timing(k) and k not in RESUME_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


@dataclass
class Snapshot:
    files: dict[str, str] = field(default_factory=dict)  # relative path -> digest of its comparable content
    train_steps: dict[str, list[int]] = field(default_factory=dict)  # metrics.jsonl -> its training rows' steps
    parsed: dict[str, Any] = field(default_factory=dict)  # JSON / JSONL files, as compared (to say what differs)


def snapshot(root: Path, copied_from: Path | None = None) -> Snapshot:
    """Everything a run directory holds, minus timings and its own absolute path (and that of the run it was
    copied from mid-way, whose paths its finished parts record), as digests per file."""
    snap = Snapshot()
    prefix = [str(root.resolve())] + ([str(copied_from.resolve())] if copied_from else [])
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = str(path.relative_to(root))
        if path.name in UNCOMPARED:
            continue
        data = path.read_bytes()
        try:
            data = _comparable(path, rel, data, prefix, snap)
        except (json.JSONDecodeError, UnicodeDecodeError):
            snap.parsed[rel] = "<not JSON: a torn or damaged file>"
        snap.files[rel] = hashlib.sha256(data).hexdigest()
    return snap


def _comparable(path: Path, rel: str, data: bytes, prefix: list[str], snap: Snapshot) -> bytes:
    """A file's bytes with what may differ taken out (timings, the run's own path, a card's dates)."""
    if path.suffix in (".json", ".jsonl", ".yaml", ".md", ".txt", ".html", ".csv", "") or path.name == "DONE":
        text = data.decode("utf-8", errors="replace")
        for p in prefix:
            text = text.replace(p, "<run>")
        text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "<date>", text)  # a model card's history
        if path.name == "DONE" and text.strip():  # the files it lists (their sizes include timings)
            snap.parsed[rel] = sorted(json.loads(text)["sizes"])
            text = json.dumps(snap.parsed[rel])
        elif path.suffix == ".json":
            snap.parsed[rel] = _strip(json.loads(text))
            text = json.dumps(snap.parsed[rel], sort_keys=True)
        elif path.suffix == ".jsonl":
            rows = [_strip(json.loads(line)) for line in text.splitlines() if line.strip()]
            if path.name == "metrics.jsonl":  # a sweep's `cells` row says how many were left: a resume's own
                rows = [r for r in rows if r.get("event") != "cells"]
                snap.train_steps[rel] = [r["step"] for r in rows if r.get("event") == "train"]
            snap.parsed[rel] = rows
            text = "\n".join(json.dumps(r, sort_keys=True) for r in rows)
        data = text.encode()
    return data


def differences(a: Snapshot, b: Snapshot) -> list[str]:
    """What differs between two snapshots, one line per file (empty: identical)."""
    out = [f"only in the uninterrupted run: {p}" for p in sorted(set(a.files) - set(b.files))]
    out += [f"only in the resumed run: {p}" for p in sorted(set(b.files) - set(a.files))]
    out += [f"differs: {p}{_where(a.parsed.get(p), b.parsed.get(p))}" for p in sorted(set(a.files) & set(b.files))
            if a.files[p] != b.files[p]]  # fmt: skip
    return out


def _where(a: Any, b: Any, at: str = "") -> str:
    """The first place two parsed JSON values differ, e.g. ` at [3].loss: 4.68 != 4.65`."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _where(a.get(key), b.get(key), f"{at}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f" at {at}: {len(a)} items != {len(b)}"
        for n, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _where(x, y, f"{at}[{n}]")
    elif a is None and b is None:
        return ""
    return f" at {at}: {str(a)[:80]} != {str(b)[:80]}"


def one_row_per_step(snap: Snapshot) -> list[str]:
    """metrics.jsonl files whose training rows are not exactly 0, 1, ..., n-1 (a step logged twice or missing)."""
    return [f"{rel}: steps {steps[:8]}..." for rel, steps in snap.train_steps.items()
            if steps != list(range(len(steps)))]  # fmt: skip
