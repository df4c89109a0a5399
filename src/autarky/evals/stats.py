"""Uncertainty for eval scores: bootstrap CIs of a mean, and paired comparisons of two models on the same items."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

BOOTSTRAP_ROUNDS = 2000


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
class PairedComparison:
    n: int
    mean_diff: float  # mean(a - b)
    ci_low: float
    ci_high: float
    p_bootstrap: float  # two-sided
    wins: int  # items where a scored higher
    losses: int
    ties: int
    p_sign: float  # two-sided exact sign test on non-tied items
    significant: bool  # the paired-bootstrap 95% CI of the difference excludes 0

    def sentence(self, a: str, b: str) -> str:
        if self.n == 0:
            return f"{a} and {b} share no items; nothing to compare"
        verdict = "significant" if self.significant else "not significant"
        better = a if self.mean_diff > 0 else b
        return (f"{a} − {b} = {self.mean_diff:+.3f} (95% CI {self.ci_low:+.3f} … {self.ci_high:+.3f}, paired bootstrap "
                f"p={self.p_bootstrap:.3g}; sign test {self.wins}-{self.losses}-{self.ties}, p={self.p_sign:.3g}): "
                f"{verdict} at 5%" + (f", {better} better" if self.significant else ""))


def paired_comparison(a: list[float] | np.ndarray, b: list[float] | np.ndarray, rounds: int = BOOTSTRAP_ROUNDS,
                      seed: int = 0) -> PairedComparison:
    """Compare two models on the same items (a[i] and b[i] are the same item)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError("paired scores must have the same length (the same items in the same order)")
    n = int(x.size)
    if n == 0:
        return PairedComparison(0, 0.0, 0.0, 0.0, 1.0, 0, 0, 0, 1.0, False)
    d = x - y
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, n, size=(rounds, n))].mean(axis=1)
    low, high = np.quantile(boot, [0.025, 0.975])
    # Two-sided bootstrap p: how often the resampled mean falls on the other side of zero, doubled.
    p_boot = 1.0 if d.mean() == 0 else min(1.0, 2 * float(np.mean(boot <= 0) if d.mean() > 0 else np.mean(boot >= 0)))
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    p_sign = binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
    significant = bool(low > 0 or high < 0)
    return PairedComparison(n, float(d.mean()), float(low), float(high), p_boot, wins, losses, n - wins - losses,
                            float(p_sign), significant)
