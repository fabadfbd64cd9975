"""Rates with intervals (Wilson), paired exact tests against a control (McNemar), Benjamini-Hochberg q-values and
means with t intervals across replicates.

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
    # clamped to contain p: in floating point, centre + half can round to just below 1 when k = n (n = 128)
    return Rate(k, n, p, min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def attack_success(verdicts: list[bool]) -> Rate:
    """ASR (or any behaviour rate) of a list of judge verdicts."""
    return wilson(sum(verdicts), len(verdicts))


# ---- paired tests, multiple testing, intervals across replicates ------------------------------------------------
Q_LEVEL = 0.05  # a pair "transfers" when its q-value (clean rate above the reference row's) is below this
ONE_REPLICATE = "1 replicate: between-model variance unknown"  # said wherever a figure rests on one trained model


def exact_mcnemar(gain: int, loss: int) -> float:
    """One-sided exact McNemar test on paired binary outcomes (the same prompts under two models).

    Args:
        gain: prompts with the outcome under the treated model and not under the reference (e.g. clean after
            removing i, not clean after the control).
        loss: prompts with the outcome under the reference only.

    Returns:
        P(X >= gain) for X ~ Binomial(gain + loss, 1/2): the chance of so many gains among the discordant prompts
        if the two models were exchangeable. 1.0 when no prompt is discordant.
    """
    from scipy.stats import binomtest

    if gain < 0 or loss < 0:
        raise ValueError(f"gain {gain} and loss {loss} must be counts")
    if gain + loss == 0:
        return 1.0
    return float(binomtest(gain, gain + loss, 0.5, alternative="greater").pvalue)


def bh_qvalues(pvalues: list[float]) -> list[float]:
    """Benjamini-Hochberg q-values (adjusted p-values, same order), for a family of tests (scipy.stats)."""
    from scipy.stats import false_discovery_control

    if not pvalues:
        return []
    return [float(q) for q in false_discovery_control(pvalues, method="bh")]


def mean_ci(values: list[float], level: float = 0.95) -> dict[str, float | int | None]:
    """Mean with a Student-t interval across independent units (replicates): `{"mean", "lo", "hi", "n"}`.

    With fewer than two values the interval is None (one replicate says nothing about between-model variance).
    """
    from scipy import stats

    xs = [float(v) for v in values if v is not None and not math.isnan(v)]
    n = len(xs)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    mean = sum(xs) / n
    if n < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": n}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


def format_mean_ci(ci: dict[str, Any], digits: int = 2, rate: bool = False) -> str:
    """A `mean_ci` result as text: `+0.10 [-0.02, +0.22]`, or why there is no interval (one replicate), or n/a.

    `rate`: the mean of rates, unsigned, its interval clipped to [0, 1] (`0.26 [0.00, 0.55]`)."""
    if ci["mean"] is None:
        return "n/a"
    sign = "" if rate else "+"
    if ci["lo"] is None:
        return f"{ci['mean']:{sign}.{digits}f} ({ONE_REPLICATE})"
    lo, hi = (max(0.0, ci["lo"]), min(1.0, ci["hi"])) if rate else (ci["lo"], ci["hi"])
    return f"{ci['mean']:{sign}.{digits}f} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"
