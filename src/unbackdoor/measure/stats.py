"""Rates with intervals: the share of prompts that show a behaviour, and its Wilson score interval.

Run: `pytest tests/unit/test_evaluation.py`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Rate:
    """k successes out of n, with a Wilson score interval."""

    k: int
    n: int
    rate: float
    lo: float
    hi: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wilson(k: int, n: int, z: float = 1.959964) -> Rate:
    """Wilson score interval for a binomial proportion (95 % by default).

    Args:
        k: successes.
        n: trials (0 gives the uninformative interval [0, 1]).
        z: normal quantile.

    Returns:
        `Rate(k, n, k / n, lo, hi)`.
    """
    if n == 0:
        return Rate(0, 0, float("nan"), 0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Rate(k, n, p, max(0.0, centre - half), min(1.0, centre + half))


def attack_success(verdicts: list[bool]) -> Rate:
    """ASR (or any behaviour rate) of a list of judge verdicts."""
    return wilson(sum(verdicts), len(verdicts))
