"""Bootstrap CIs and paired comparisons."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_mcnemar_exact_for_few_discordant_items_matches_the_binomial_test():
    from scipy.stats import binomtest

    from autarky.evals.stats import mcnemar

    result = mcnemar(10, 2)
    assert result.test == "mcnemar-exact" and result.statistic is None
    assert result.p_value == pytest.approx(binomtest(2, 12, 0.5).pvalue, rel=1e-12)
    assert result.p_value == pytest.approx(0.03857421875, rel=1e-9)  # 2 * (1 + 12 + 66) / 4096
    assert mcnemar(2, 10).p_value == result.p_value  # two-sided: symmetric in b and c
    assert mcnemar(0, 0).p_value == 1.0 and mcnemar(5, 5).p_value == 1.0


def test_mcnemar_chi_square_with_continuity_correction_on_a_textbook_table():
    from scipy.stats import chi2

    from autarky.evals.stats import MCNEMAR_EXACT_BELOW, mcnemar

    # The worked example on Wikipedia's "McNemar's test" page: b = 121, c = 59.
    result = mcnemar(121, 59)
    assert result.test == "mcnemar-chi2-cc"
    assert result.statistic == pytest.approx((abs(121 - 59) - 1) ** 2 / 180) == pytest.approx(20.672, abs=1e-3)
    assert result.p_value == pytest.approx(chi2.sf(3721 / 180, 1)) and result.p_value < 1e-5
    # The switch from exact to chi-square is at MCNEMAR_EXACT_BELOW discordant items.
    assert mcnemar(MCNEMAR_EXACT_BELOW - 1, 0).test == "mcnemar-exact"
    assert mcnemar(MCNEMAR_EXACT_BELOW, 0).test == "mcnemar-chi2-cc"
    assert mcnemar(13, 12).p_value == 1.0  # |b - c| - 1 = 0


def test_paired_comparison_uses_mcnemar_on_pass_fail_items():
    # 10 items only a passes, 2 only b passes, 88 ties: McNemar exact, p as above.
    a = np.array([1.0] * 10 + [0.0] * 2 + [1.0] * 40 + [0.0] * 48)
    b = np.array([0.0] * 10 + [1.0] * 2 + [1.0] * 40 + [0.0] * 48)
    result = paired_comparison(a, b)
    assert result.test == "mcnemar-exact" and (result.wins, result.losses, result.ties) == (10, 2, 88)
    assert result.p_value == pytest.approx(0.03857421875) and result.significant
    assert result.mean_diff == pytest.approx(0.08) and result.ci_low < 0.08 < result.ci_high
    assert "McNemar exact" in result.sentence("a", "b") and "p=0.0386" in result.sentence("a", "b")
    assert not paired_comparison(a, b, alpha=0.01).significant


def test_paired_bootstrap_ci_covers_the_true_difference_on_partial_scores():
    from autarky.evals.stats import paired_bootstrap

    rng = np.random.default_rng(7)
    quality = rng.random(300)
    b = np.clip(quality + rng.normal(0, 0.1, 300), 0, 1).round(2)
    a = np.clip(b + 0.05 + rng.normal(0, 0.1, 300), 0, 1).round(2)  # a is better by about 0.05
    result = paired_comparison(a, b)
    truth = float(np.mean(a - b))
    assert result.test == "paired-bootstrap" and result.p_value == result.p_bootstrap
    assert result.ci_low < truth < result.ci_high and result.ci_low > 0 and result.p_value < 0.01
    assert paired_comparison(a, b) == result  # seeded
    # Coverage on fresh samples: the 95% CI holds the population difference (0.05 before clipping) about 95% of runs.
    hits = 0
    for seed in range(100):
        d = np.random.default_rng(seed).normal(0.05, 0.2, 80)
        boot = paired_bootstrap(d, rounds=500, seed=seed)
        hits += boot.ci_low <= 0.05 <= boot.ci_high
    assert 88 <= hits <= 99
    # No difference at all: p = 1.
    assert paired_comparison(b, b).p_value == 1.0
