"""Paired comparisons of GAL against the standard method over seeds (scipy's t distribution)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

__all__ = ["PairedResult", "paired_ci"]


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


def paired_ci(control: Sequence[float], treatment: Sequence[float], level: float = 0.95) -> PairedResult:
    """Mean of ``treatment - control`` with its t confidence interval (pairs share a seed)."""
    a = np.asarray(control, dtype=float)
    b = np.asarray(treatment, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"control and treatment must be 1-D and paired, got shapes {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("need at least one pair")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
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
