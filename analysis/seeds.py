"""Is a method better than its baseline over calibration seeds? A paired test, not "mean beyond one std".

Each seed gives one pair (the method's and the baseline's perplexity on the same calibration and evaluation
windows). :func:`paired_over_seeds` reports

- the mean of the per-seed ratios and its 95% interval (Student's t over the ratios);
- ``p_t``: the two-sided paired t-test on the differences (``scipy.stats.ttest_rel``);
- ``p_exact``: the two-sided exact sign-flip permutation test of the mean difference over all ``2^n``
  flips (``scipy.stats.permutation_test``, paired samples). It assumes nothing about the distribution,
  and with ``n`` seeds it can never go below ``2 / 2^n``: 0.25 for three seeds, so three seeds can
  never show a difference at 5% without the t-test's normality assumption;
- ``verdict``: ``better`` / ``worse`` when ``p_t < 0.05`` (the t interval of the ratio then excludes 1),
  ``tie`` otherwise, ``–`` with fewer than two seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05


@dataclass(frozen=True)
class SeedTest:
    n: int
    ratio: float  # mean of the per-seed ratios
    ratio_low: float  # its 95% interval (NaN with fewer than two seeds)
    ratio_high: float
    p_t: float  # paired t-test on the differences, two-sided
    p_exact: float  # exact sign-flip permutation test, two-sided
    ratios: tuple[float, ...]  # per seed, in the order given

    @property
    def verdict(self) -> str:
        if self.n < 2 or math.isnan(self.p_t):
            return "–"
        if self.p_t >= ALPHA:
            return "tie"
        return "better" if self.ratio < 1 else "worse"


def paired_over_seeds(values, baseline) -> SeedTest:
    """The paired statistics of the module docstring; ``values`` and ``baseline``: per seed, aligned (pairs
    with a NaN on either side are left out)."""
    x, y = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    n = len(x)
    ratios = x / y
    if n == 0:
        return SeedTest(0, math.nan, math.nan, math.nan, math.nan, math.nan, ())
    mean = float(ratios.mean())
    if n < 2:
        return SeedTest(n, mean, math.nan, math.nan, math.nan, math.nan, tuple(map(float, ratios)))
    sem = float(ratios.std(ddof=1) / math.sqrt(n))
    low, high = ((mean, mean) if sem == 0 else stats.t.interval(1 - ALPHA, n - 1, loc=mean, scale=sem))
    d = x - y
    p_t = float(stats.ttest_rel(x, y).pvalue) if d.std(ddof=1) > 0 else (1.0 if not d.any() else 0.0)
    p_exact = float(stats.permutation_test((x, y), lambda a, b: np.mean(a - b), permutation_type="samples",
                                           n_resamples=np.inf, alternative="two-sided").pvalue)
    return SeedTest(n, mean, float(low), float(high), p_t, p_exact, tuple(map(float, ratios)))
