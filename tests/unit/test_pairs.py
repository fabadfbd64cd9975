"""Inference on pair matrices (`measure.pairs`) and the paired tests and replicate intervals (`measure.stats`).

Run: `pytest tests/unit/test_pairs.py`.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest

from unbackdoor.measure.pairs import additive_fit, auroc, cluster_spearman
from unbackdoor.measure.stats import bh_qvalues, exact_mcnemar, mean_ci

NAMES = [f"b{k}" for k in range(8)]
PAIRS = [(i, j) for i, j in itertools.permutations(NAMES, 2)]


def test_exact_mcnemar_is_the_one_sided_binomial_tail():
    assert exact_mcnemar(0, 0) == 1.0
    assert exact_mcnemar(10, 0) == pytest.approx(0.5**10)
    assert exact_mcnemar(0, 10) == 1.0
    assert exact_mcnemar(5, 5) == pytest.approx(sum(math.comb(10, k) for k in range(5, 11)) / 2**10)
    with pytest.raises(ValueError):
        exact_mcnemar(-1, 3)


def test_bh_qvalues_are_monotone_adjusted_p_values():
    p = [0.01, 0.04, 0.03, 0.5]
    q = bh_qvalues(p)
    # sorted: 0.01 x 4/1, 0.03 x 4/2 = 0.06, 0.04 x 4/3 = 0.0533, 0.5; then the running minimum from the top
    assert q == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])
    assert all(qq >= pp for pp, qq in zip(p, q, strict=True)) and bh_qvalues([]) == []


def test_mean_ci_across_replicates_and_one_replicate_says_nothing():
    ci = mean_ci([0.1, 0.2, 0.3])
    assert ci["mean"] == pytest.approx(0.2) and ci["n"] == 3
    assert ci["lo"] == pytest.approx(0.2 - 4.302653 * 0.1 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) = 4.3027
    one = mean_ci([0.4, None])
    assert one == {"mean": 0.4, "lo": None, "hi": None, "n": 1}


def test_cluster_bootstrap_is_wider_than_treating_pairs_as_independent():
    # transfer driven by row effects: pairs sharing a row are correlated, which resampling pairs ignores
    rng = random.Random(0)
    row_effect = {n: rng.gauss(0, 1) for n in NAMES}
    y = {(i, j): row_effect[i] + rng.gauss(0, 0.3) for i, j in PAIRS}
    x = {(i, j): -row_effect[i] * 0.5 + rng.gauss(0, 1.0) for i, j in PAIRS}
    cluster = cluster_spearman(x, y, n_boot=500, seed=1)
    assert cluster["n"] == 56 and cluster["clusters"] == 8 and cluster["rho"] < 0
    from unbackdoor.measure.casd import spearman_ci

    naive = spearman_ci([x[p] for p in PAIRS], [y[p] for p in PAIRS], 500, 1)
    assert naive["rho"] == pytest.approx(cluster["rho"])
    assert cluster["hi"] - cluster["lo"] > naive["hi"] - naive["lo"]
    assert cluster_spearman({p: 1.0 for p in PAIRS}, y)["rho"] is None  # constant side: undefined


def test_auroc_counts_ties_half_and_needs_both_classes():
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.1, 0.2], [True, True]) is None


def test_additive_model_explains_a_row_plus_column_matrix_and_the_residual_relation():
    a = {n: k * 0.1 for k, n in enumerate(NAMES)}
    b = {n: (7 - k) * 0.05 for k, n in enumerate(NAMES)}
    rng = random.Random(2)
    interaction = {p: rng.gauss(0, 0.02) for p in PAIRS}
    y = {(i, j): a[i] + b[j] + interaction[(i, j)] for i, j in PAIRS}
    fit = additive_fit(y, x={p: v for p, v in interaction.items()})
    assert fit["n"] == 56 and fit["r2"] > 0.95
    assert fit["partial_rho"] > 0.8  # x is what the additive model leaves (less what row and column means absorb)
    assert additive_fit({("a", "b"): 1.0})["r2"] is None
