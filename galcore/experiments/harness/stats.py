"""Paired comparisons over seeds: confidence interval, power, equivalence and a verdict.

Every comparison in the notebooks pairs a treatment run with a control run on the same seed
(same initial weights and data order) and works on the per-seed differences
``d = treatment - control`` (n of them). scipy's t and noncentral t distributions do the work:

- :func:`paired_ci`: mean of d with its Student-t confidence interval and paired t-test p-value.
- :func:`paired_power`: that test's power for a true mean difference.
- :func:`mde`: the smallest true mean difference a two-sided paired t-test at ``alpha`` detects
  with probability ``power`` (noncentral t), from the SD of d and n.
- :func:`seeds_needed`: the n at which that test reaches ``power`` for a given effect.
- :func:`tost`: two one-sided tests for equivalence within ``±margin``.
- :func:`verdict`: one word of :data:`VERDICTS` for a set of differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, stats

__all__ = ["VERDICTS", "PairedResult", "mde", "paired_ci", "paired_power", "seeds_needed", "tost", "verdict"]

#: the only words a comparison's verdict may be
VERDICTS = ("better", "worse", "equivalent", "inconclusive", "identical")


@dataclass(frozen=True)
class PairedResult:
    """Paired difference ``treatment - control`` over n seeds.

    ``low``/``high`` bound the ``level`` confidence interval of the mean difference
    (Student's t with n - 1 degrees of freedom); ``p_value`` is the paired t-test's
    (two-sided). With one seed the interval and p-value are NaN.
    """

    n: int
    mean_control: float
    mean_treatment: float
    mean_diff: float
    low: float
    high: float
    p_value: float
    level: float = 0.95

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return bool(self.low > 0 or self.high < 0)

    def as_dict(self) -> dict[str, float | int | bool]:
        return {**asdict(self), "significant": self.significant}

    def __str__(self) -> str:
        return f"{self.mean_diff:+.4g} [{self.low:+.4g}, {self.high:+.4g}] (n={self.n}, p={self.p_value:.3g})"


def _diffs(values: Sequence[float], name: str = "diffs") -> np.ndarray:
    d = np.asarray(values, dtype=float)
    if d.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one paired difference per seed), got shape {d.shape}")
    return d


def _check_alpha(alpha: float, name: str = "alpha") -> float:
    if not 0 < alpha < 1:
        raise ValueError(f"{name} must be in (0, 1), got {alpha}")
    return float(alpha)


def paired_ci(control: Sequence[float], treatment: Sequence[float], level: float = 0.95) -> PairedResult:
    """Mean of ``treatment - control`` with its t confidence interval (pairs share a seed)."""
    a = np.asarray(control, dtype=float)
    b = np.asarray(treatment, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"control and treatment must be 1-D and paired, got shapes {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("need at least one pair")
    _check_alpha(level, "level")
    d = b - a
    n = d.size
    mean = float(d.mean())
    if n < 2:
        low = high = p = float("nan")
    else:
        sem = float(stats.sem(d))
        if sem == 0.0:
            low = high = mean
            p = 1.0 if mean == 0.0 else 0.0
        else:
            low, high = (float(v) for v in stats.t.interval(level, n - 1, loc=mean, scale=sem))
            p = float(stats.ttest_rel(b, a).pvalue)
    return PairedResult(n, float(a.mean()), float(b.mean()), mean, low, high, p, level)


def paired_power(effect: float, sd_diff: float, n: int, alpha: float = 0.05) -> float:
    """Probability that a two-sided paired t-test at ``alpha`` on n pairs rejects 0 when the
    true mean difference is ``effect`` and the differences' SD is ``sd_diff`` (same units).

    ``P(|T| > t_{1-alpha/2, n-1})`` with T noncentral t, df ``n - 1``, noncentrality
    ``effect sqrt(n) / sd_diff``. NaN for n < 2."""
    _check_alpha(alpha)
    if n < 2 or not math.isfinite(sd_diff):
        return float("nan")
    if sd_diff < 0:
        raise ValueError(f"sd_diff must be >= 0, got {sd_diff}")
    if sd_diff == 0:
        return 1.0 if effect != 0 else alpha
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n) / sd_diff
    # P(T > crit) + P(T < -crit), the second as P(-T > crit) with -T ~ nct(df, -nc): scipy's
    # cdf far in a tail can be NaN where the mirrored sf is a clean 0
    upper, lower = stats.nct.sf(crit, df, nc), stats.nct.sf(crit, df, -nc)
    return float(min(1.0, np.nan_to_num(upper) + np.nan_to_num(lower)))


def _check_power(target: float) -> float:
    if not 0 < target < 1:
        raise ValueError(f"power must be in (0, 1), got {target}")
    return float(target)


def mde(sd_diff: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """Minimum detectable effect: the smallest true mean paired difference (units of the
    metric, >= 0) that a two-sided paired t-test at ``alpha`` over ``n`` seeds detects with
    probability ``power``, given the differences' SD ``sd_diff``.

    ``inf`` for n < 2 (no test is possible), ``0`` when ``sd_diff == 0``, NaN when it is NaN."""
    target = _check_power(power)
    _check_alpha(alpha)
    if isinstance(n, bool) or int(n) != n:
        raise TypeError(f"n must be an int, got {n!r}")
    if not math.isfinite(sd_diff):
        return float("nan")
    if sd_diff < 0:
        raise ValueError(f"sd_diff must be >= 0, got {sd_diff}")
    if n < 2:
        return float("inf")
    if sd_diff == 0:
        return 0.0
    hi = sd_diff
    while paired_power(hi, sd_diff, n, alpha) < target:
        hi *= 2
    return float(optimize.brentq(lambda e: paired_power(e, sd_diff, n, alpha) - target, 0.0, hi, xtol=1e-12 * hi))


def seeds_needed(sd_diff: float, effect: float, power: float = 0.8, alpha: float = 0.05, max_n: int = 1_000_000) -> float:
    """The smallest number of paired seeds n >= 2 at which a two-sided paired t-test at
    ``alpha`` detects a true mean difference ``effect`` (units of the metric) with probability
    ``power``, given the differences' SD. NaN when ``sd_diff`` is NaN; ``inf`` beyond ``max_n``."""
    target = _check_power(power)
    _check_alpha(alpha)
    if not math.isfinite(effect) or effect == 0:
        raise ValueError(f"effect must be a finite non-zero difference, got {effect}")
    if not math.isfinite(sd_diff):
        return float("nan")
    if sd_diff < 0:
        raise ValueError(f"sd_diff must be >= 0, got {sd_diff}")
    if sd_diff == 0:
        return 2
    ok = lambda n: paired_power(abs(effect), sd_diff, n, alpha) >= target
    lo, hi = 2, 2
    while not ok(hi):
        lo, hi = hi, hi * 2
        if hi > max_n:
            return float("inf")
    while lo < hi:  # power rises with n: bisect for the first n that reaches the target
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def tost(diffs: Sequence[float], margin: float, alpha: float = 0.05) -> float:
    """Two one-sided t-tests of equivalence: the p-value for "the true mean difference lies
    inside ``(-margin, +margin)``" (the larger of the two one-sided p-values). Equivalence is
    shown at level ``alpha`` when it is below ``alpha``. NaN with fewer than 2 differences."""
    d = _diffs(diffs)
    _check_alpha(alpha)
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    if d.size < 2:
        return float("nan")
    if float(d.std(ddof=1)) == 0.0:  # no spread: the mean is known exactly
        return 0.0 if abs(float(d.mean())) < margin else 1.0
    p_low = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
    p_high = stats.ttest_1samp(d, margin, alternative="less").pvalue
    return float(max(p_low, p_high))


def verdict(diffs: Sequence[float], margin: float, lower_is_better: bool, identical: bool = False, alpha: float = 0.05) -> str:
    """One word of :data:`VERDICTS` for the paired differences ``treatment - control``:

    ``identical`` when the runs were bit-identical (the caller knows: final weights); else
    ``better``/``worse`` when the ``1 - alpha`` t interval of the mean excludes 0 (the sign and
    ``lower_is_better`` give the direction); else ``equivalent`` when :func:`tost` shows the
    mean within ``±margin`` at ``alpha``; else ``inconclusive`` (also with fewer than 2 seeds).
    """
    if identical:
        return "identical"
    d = _diffs(diffs)
    if d.size < 2 or not np.all(np.isfinite(d)):
        return "inconclusive"
    ci = paired_ci(np.zeros_like(d), d, 1 - _check_alpha(alpha))
    if ci.significant:
        lower = ci.mean_diff < 0
        return "better" if lower == bool(lower_is_better) else "worse"
    p = tost(d, margin, alpha)
    return "equivalent" if p < alpha else "inconclusive"
