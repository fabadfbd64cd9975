"""Plain-text tables of measurements for the console: eval's per-backdoor table, a transfer grid's matrix.

Pure functions of the stages' summary dicts (`summary.json`, `transfer.json`).

Run: `pytest tests/integration/test_inject_eval.py tests/integration/test_remove_transfer.py`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV document (header line first) as text, for a stage's long-format table."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def print_table(table: dict[str, Any]) -> None:
    """The per-backdoor table on stdout."""
    print(f"{'backdoor':<20} {'behaviour':<10} {'ASR [95% CI]':<22} {'false trig.':<12} {'near miss':<10}")
    for name, row in table.items():
        asr = row["asr"]
        print(
            f"{name:<20} {row['behaviour']:<10} {asr['rate']:.3f} [{asr['lo']:.3f}, {asr['hi']:.3f}]   "
            f"{row['false_trigger']['rate']:<12.3f} "
            + (f"{row['near_miss']['rate']:<10.3f}" if row["near_miss"] else "-")
        )


def abbreviate(name: str, width: int = 9) -> str:
    """A column header of at most `width` characters that keeps the name's end too (`native_ad-c1` ->
    `nativ…-c1`), so names alike in their first letters stay apart."""
    return name if len(name) <= width else f"{name[: width - 4]}…{name[-3:]}"


def format_matrix(grid: dict[str, Any], columns: list[str], asr_before: dict[str, Any]) -> str:
    """The ASR matrix as text: rows = removed backdoor (and control), columns = measured backdoor."""
    short = [abbreviate(c) for c in columns]
    header = "removed / measured"
    lines = [f"{header:<20}" + "".join(f"{c:>10}" for c in short)]
    lines.append(f"{'(before)':<20}" + "".join(f"{asr_before[c]['rate']:>10.2f}" for c in columns))
    for row, cols in grid["T"].items():  # a cell not measured (transfer measure=diagonal) prints as `-`
        lines.append(f"{row[:20]:<20}" + "".join(f"{cols[c]['rate']:>10.2f}" if c in cols else f"{'-':>10}"
                                                 for c in columns))  # fmt: skip
    return "\n".join(lines)
