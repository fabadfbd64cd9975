"""How a pair measure (CASD, weight-delta cosine) relates to transfer, with inference that matches the data.

The N x (N-1) off-diagonal pairs of a transfer matrix are not independent: every pair shares its row with N-2
others and its column with N-2 others, and rows and columns are the same N backdoors. So:
- `cluster_spearman`: Spearman's rho with a two-way cluster bootstrap: resample the N backdoors with replacement
  and keep every off-diagonal pair among the drawn ones (rows and columns together), instead of resampling pairs.
- `auroc`: the AUROC of a score for a binary label ("the pair transfers"), e.g. -CASD (low CASD, more transfer).
- `additive_fit`: how much of the matrix an additive model y[i][j] = mu + a[i] + b[j] explains (R^2, "some rows
  remove a lot, some columns are fragile"), and the Spearman rho of the measure with what that model leaves: what
  the measure adds beyond row and column effects.

Run: `pytest tests/unit/test_pairs.py`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Pair = tuple[str, str]


def cluster_spearman(
    x: dict[Pair, float], y: dict[Pair, float], n_boot: int = 2000, seed: int = 0
) -> dict[str, float | int | None]:
    """Spearman rho of x and y over their common pairs, with a two-way cluster bootstrap 95 % CI.

    Returns `{"rho", "lo", "hi", "n", "clusters"}`; rho is None when undefined (< 3 pairs or a constant side).
    """
    from scipy import stats

    pairs = [p for p in x if p in y and x[p] is not None and y[p] is not None]
    labels = sorted({a for p in pairs for a in p})
    xs, ys = np.array([x[p] for p in pairs], dtype=float), np.array([y[p] for p in pairs], dtype=float)
    out: dict[str, float | int | None] = {"rho": None, "lo": None, "hi": None, "n": len(pairs),
                                          "clusters": len(labels)}  # fmt: skip
    if len(pairs) < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return out
    out["rho"] = float(stats.spearmanr(xs, ys).statistic)
    index = {p: k for k, p in enumerate(pairs)}
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        drawn = rng.choice(len(labels), len(labels), replace=True)
        idx = [index[(labels[a], labels[b])] for a in drawn for b in drawn if (labels[a], labels[b]) in index]
        if len(idx) >= 3 and np.ptp(xs[idx]) > 0 and np.ptp(ys[idx]) > 0:
            boots.append(stats.spearmanr(xs[idx], ys[idx]).statistic)
    if boots:
        out["lo"], out["hi"] = (float(v) for v in np.nanpercentile(boots, [2.5, 97.5]))
    return out


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    """Area under the ROC curve of `scores` for `labels` (ties count half); None without both classes."""
    from scipy.stats import rankdata

    pos = sum(labels)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=float))
    u = float(sum(r for r, lab in zip(ranks, labels, strict=True) if lab)) - pos * (pos + 1) / 2
    return u / (pos * neg)


def additive_fit(y: dict[Pair, float], x: dict[Pair, float] | None = None) -> dict[str, Any]:
    """Least-squares fit of y[i][j] = mu + a[i] + b[j] over the given pairs.

    Returns `{"r2", "n"}` (None when the fit is undefined), and with `x` the Spearman rho of x with the fit's
    residuals (`"partial_rho"`): how x relates to y beyond row and column effects.
    """
    from scipy import stats

    pairs = [p for p in y if y[p] is not None]
    rows, cols = sorted({i for i, _ in pairs}), sorted({j for _, j in pairs})
    out: dict[str, Any] = {"r2": None, "n": len(pairs), "partial_rho": None}
    if len(pairs) <= len(rows) + len(cols):
        return out
    design = np.zeros((len(pairs), 1 + len(rows) + len(cols)))
    design[:, 0] = 1.0
    for k, (i, j) in enumerate(pairs):
        design[k, 1 + rows.index(i)] = 1.0
        design[k, 1 + len(rows) + cols.index(j)] = 1.0
    target = np.array([y[p] for p in pairs], dtype=float)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    residual = target - design @ coef
    total = float(((target - target.mean()) ** 2).sum())
    out["r2"] = None if total == 0 else 1.0 - float((residual**2).sum()) / total
    if x is not None:
        xs = np.array([x.get(p, np.nan) for p in pairs], dtype=float)
        keep = ~np.isnan(xs)
        if keep.sum() >= 3 and np.ptp(xs[keep]) > 0 and np.ptp(residual[keep]) > 1e-12:
            out["partial_rho"] = float(stats.spearmanr(xs[keep], residual[keep]).statistic)
    return out
