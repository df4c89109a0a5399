"""Uncertainty for eval scores: bootstrap CIs of a mean, and paired comparisons of two models on the same items.

A paired comparison states which test gives its p-value (`PairedComparison.test`):
- pass/fail items (every score 0 or 1 for both models): McNemar's test on the discordant items, b = items only A
  passed, c = items only B passed. With b + c < `MCNEMAR_EXACT_BELOW` (25, the usual rule of thumb) it is the exact
  two-sided binomial test of min(b, c) in b + c trials at 1/2 (`mcnemar-exact`, the same as a sign test); otherwise
  the chi-square statistic with Edwards' continuity correction, (|b − c| − 1)² / (b + c) on one degree of freedom
  (`mcnemar-chi2-cc`; |b − c| ≤ 1 gives 0, i.e. p = 1);
- any other scores (partial credit such as the slides suite): a paired bootstrap of the mean difference
  (`paired-bootstrap`): items resampled with replacement, two-sided p = twice the share of resampled means on the
  far side of zero, counted with add-one, (k + 1) / (rounds + 1), so that it is never 0.
The CI of the difference is always the percentile paired bootstrap (items resampled with replacement, seeded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, chi2

BOOTSTRAP_ROUNDS = 2000
MCNEMAR_EXACT_BELOW = 25  # discordant pairs: fewer → exact binomial, else chi-square with continuity correction
ALPHA = 0.05


@dataclass(frozen=True)
class MeanCI:
    mean: float
    ci_low: float
    ci_high: float
    n: int


def bootstrap_mean_ci(values: list[float] | np.ndarray, rounds: int = BOOTSTRAP_ROUNDS, confidence: float = 0.95,
                      seed: int = 0) -> MeanCI:
    """Percentile bootstrap CI of the mean (items resampled with replacement)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return MeanCI(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(rounds, x.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return MeanCI(float(x.mean()), float(low), float(high), int(x.size))


@dataclass(frozen=True)
class McNemar:
    test: str  # "mcnemar-exact" or "mcnemar-chi2-cc"
    statistic: float | None  # the chi-square statistic; None for the exact test
    p_value: float


def mcnemar(b: int, c: int) -> McNemar:
    """McNemar's test from the discordant counts (b: only A passed, c: only B passed); two-sided."""
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be non-negative")
    n = b + c
    if n == 0:
        return McNemar("mcnemar-exact", None, 1.0)
    if n < MCNEMAR_EXACT_BELOW:
        return McNemar("mcnemar-exact", None, float(binomtest(min(b, c), n, 0.5).pvalue))
    statistic = max(0, abs(b - c) - 1) ** 2 / n
    return McNemar("mcnemar-chi2-cc", float(statistic), float(chi2.sf(statistic, df=1)))


@dataclass(frozen=True)
class BootstrapDiff:
    ci_low: float
    ci_high: float
    p_value: float  # two-sided


def paired_bootstrap(diffs: list[float] | np.ndarray, rounds: int = BOOTSTRAP_ROUNDS, confidence: float = 0.95,
                     seed: int = 0) -> BootstrapDiff:
    """Percentile CI and two-sided p of the mean of per-item differences (items resampled with replacement)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        return BootstrapDiff(0.0, 0.0, 1.0)
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, d.size, size=(rounds, d.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    mean = d.mean()
    far_side = int(np.sum(boot <= 0) if mean > 0 else np.sum(boot >= 0))
    # Add-one: with no resample across zero the p-value is below 2/(rounds+1), not zero.
    p = 1.0 if mean == 0 else min(1.0, 2 * (far_side + 1) / (rounds + 1))
    return BootstrapDiff(float(low), float(high), p)


@dataclass(frozen=True)
class PairedComparison:
    n: int
    mean_diff: float  # mean(a - b)
    ci_low: float  # paired-bootstrap 95% CI of mean_diff
    ci_high: float
    p_bootstrap: float  # two-sided paired-bootstrap p (computed for every comparison)
    wins: int  # items where a scored higher (for pass/fail: McNemar's b)
    losses: int  # (McNemar's c)
    ties: int
    p_sign: float  # two-sided exact sign test on non-tied items
    significant: bool  # p_value < alpha
    test: str = "paired-bootstrap"  # which test gives p_value: mcnemar-exact, mcnemar-chi2-cc, paired-bootstrap
    p_value: float = 1.0
    statistic: float | None = None  # McNemar's chi-square, when that is the test
    alpha: float = ALPHA

    def test_phrase(self) -> str:
        if self.test == "mcnemar-exact":
            return (f"McNemar exact binomial (the sign test on the {self.wins + self.losses} discordant items, "
                    f"{self.wins}-{self.losses})")
        if self.test == "mcnemar-chi2-cc":
            return (f"McNemar chi-square with continuity correction, χ²={self.statistic:.3g} on "
                    f"{self.wins}-{self.losses} discordant items (sign test p={self.p_sign:.3g})")
        return (f"paired bootstrap (sign test {self.wins}-{self.losses}-{self.ties}, p={self.p_sign:.3g})")

    def sentence(self, a: str, b: str) -> str:
        if self.n == 0:
            return f"{a} and {b} share no items; nothing to compare"
        verdict = "significant" if self.significant else "not significant"
        better = a if self.mean_diff > 0 else b
        return (f"{a} − {b} = {self.mean_diff:+.3f} over {self.n} items (95% CI {self.ci_low:+.3f} … "
                f"{self.ci_high:+.3f}); {self.test_phrase()}: p={self.p_value:.3g}, {verdict} at "
                f"{self.alpha:.0%}" + (f", {better} better" if self.significant else ""))


def is_pass_fail(*scores: np.ndarray) -> bool:
    return all(bool(np.isin(s, (0.0, 1.0)).all()) for s in scores)


def paired_comparison(a: list[float] | np.ndarray, b: list[float] | np.ndarray, rounds: int = BOOTSTRAP_ROUNDS,
                      seed: int = 0, alpha: float = ALPHA) -> PairedComparison:
    """Compare two models on the same items (a[i] and b[i] are the same item): McNemar when every score is pass/fail,
    the paired bootstrap otherwise (see the module docstring)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError("paired scores must have the same length (the same items in the same order)")
    n = int(x.size)
    if n == 0:
        return PairedComparison(0, 0.0, 0.0, 0.0, 1.0, 0, 0, 0, 1.0, False, alpha=alpha)
    d = x - y
    boot = paired_bootstrap(d, rounds=rounds, seed=seed)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    p_sign = binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
    if is_pass_fail(x, y):
        result = mcnemar(wins, losses)
        test, statistic, p = result.test, result.statistic, result.p_value
    else:
        test, statistic, p = "paired-bootstrap", None, boot.p_value
    return PairedComparison(n, float(d.mean()), boot.ci_low, boot.ci_high, boot.p_value, wins, losses,
                            n - wins - losses, float(p_sign), bool(p < alpha), test, float(p), statistic, alpha)
