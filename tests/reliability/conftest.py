"""The reliability suite's totals, printed at the end of a test session that ran it.

Run: `pytest tests/reliability`.
"""

from __future__ import annotations

TALLY: list[tuple[str, str, bool]] = []  # (stage, where the kill landed, survived with identical results)
TORN: list[tuple[str, bool]] = []  # (file cut in half, the resume recovered it or named it in one line)
BAD_INPUTS: list[tuple[str, bool]] = []  # (case, exited 2 with one clean line and left nothing behind)


def pytest_terminal_summary(terminalreporter) -> None:
    if TALLY:
        survived = sum(ok for *_, ok in TALLY)
        stages = sorted({stage for stage, *_ in TALLY})
        terminalreporter.write_line(
            f"reliability: kills survived with identical results: {survived} / {len(TALLY)} ({', '.join(stages)})"
        )
    if TORN:
        handled = sum(ok for _, ok in TORN)
        terminalreporter.write_line(f"reliability: torn files recovered or named in one line: {handled} / {len(TORN)}")
    if BAD_INPUTS:
        clean = sum(ok for _, ok in BAD_INPUTS)
        terminalreporter.write_line(
            f"reliability: bad inputs with a clean one-line error: {clean} / {len(BAD_INPUTS)}"
        )
