"""Bootstrap CIs and paired comparisons."""

from __future__ import annotations

import numpy as np

from autarky.evals.stats import bootstrap_mean_ci, paired_comparison


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_more_items():
    rng = np.random.default_rng(0)
    small = bootstrap_mean_ci(rng.random(20) < 0.6)
    large = bootstrap_mean_ci(rng.random(2000) < 0.6)
    assert small.ci_low <= small.mean <= small.ci_high
    assert (large.ci_high - large.ci_low) < (small.ci_high - small.ci_low) / 4
    assert large.ci_low < 0.6 < large.ci_high
    assert bootstrap_mean_ci([1.0] * 5) == bootstrap_mean_ci([1.0] * 5)  # seeded
    assert bootstrap_mean_ci([1.0] * 5).ci_low == 1.0


def test_bootstrap_ci_coverage_is_about_95_percent():
    rng = np.random.default_rng(3)
    hits = 0
    for seed in range(200):
        ci = bootstrap_mean_ci(rng.random(60) < 0.3, rounds=500, seed=seed)
        hits += ci.ci_low <= 0.3 <= ci.ci_high
    assert 0.88 <= hits / 200 <= 0.99


def test_paired_comparison_detects_a_real_difference():
    rng = np.random.default_rng(1)
    b = (rng.random(200) < 0.4).astype(float)
    a = np.maximum(b, rng.random(200) < 0.3)  # a solves everything b does, and more
    result = paired_comparison(a, b)
    assert result.significant and result.mean_diff > 0 and result.losses == 0
    assert result.p_sign < 0.001 and result.p_bootstrap < 0.01
    assert "significant at 5%, a better" in result.sentence("a", "b")


def test_paired_comparison_of_equal_models_is_not_significant():
    rng = np.random.default_rng(2)
    a = (rng.random(100) < 0.5).astype(float)
    b = a.copy()
    flip = rng.choice(100, 10, replace=False)
    b[flip[:5]] = 1 - b[flip[:5]]
    a[flip[5:]] = 1 - a[flip[5:]]
    result = paired_comparison(a, b)
    assert not result.significant and result.p_sign > 0.2
    assert result.wins + result.losses + result.ties == 100
    assert "not significant" in result.sentence("a", "b")
