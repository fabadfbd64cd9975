"""Fault points for the reliability suite: named moments at which a test may kill this process (SIGKILL).

Every place where a kill could leave something a resume must cope with calls `point(name)`: after each training
step, inside checkpoint and model saves (between their writes and renames), before an atomic write's rename, in the
middle of a metrics line. With neither variable below set, `point` returns at once and nothing else changes.

    UNBACKDOOR_FAULT_TRACE=path   append "<n>\t<name>" to `path` for every point passed (n counts from 1)
    UNBACKDOOR_KILL_AT=n          SIGKILL this process at the n-th point it passes

`tests/reliability/` traces an uninterrupted run, kills copies of it at seeded random points of that trace,
resumes them and compares the results.

Run: `pytest tests/reliability`.
"""

from __future__ import annotations

import os
import signal

TRACE, KILL_AT = "UNBACKDOOR_FAULT_TRACE", "UNBACKDOOR_KILL_AT"
_passed = 0  # points passed by this process since it started (or since `reset`)


def armed() -> bool:
    """Is a test tracing or killing this process?"""
    return TRACE in os.environ or KILL_AT in os.environ


def point(name: str) -> None:
    """A moment a kill may land on: traced and, at the chosen count, the process dies here without cleanup."""
    global _passed
    if not armed():
        return
    _passed += 1
    trace = os.environ.get(TRACE)
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(f"{_passed}\t{name}\n")
    if os.environ.get(KILL_AT) == str(_passed):
        os.kill(os.getpid(), signal.SIGKILL)


def reset() -> None:
    """Start counting again (a test process that runs several stages one after the other)."""
    global _passed
    _passed = 0
