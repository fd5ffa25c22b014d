"""Paired comparisons over seeds: confidence interval, power, equivalence, Holm and a verdict.

Every comparison in the notebooks pairs a treatment run with a control run on the same seed
(same initial weights and data order) and works on the per-seed differences
``d = treatment - control`` (n of them). scipy's t, noncentral t and Wilcoxon do the work:

- :func:`paired_ci`: mean of d with its Student-t confidence interval and paired t-test p-value.
- :func:`paired_power`: that test's power for a true mean difference.
- :func:`mde`: the smallest true mean difference a two-sided paired t-test at ``alpha`` detects
  with probability ``power`` (noncentral t), from the SD of d and n.
- :func:`seeds_needed`: the n at which that test reaches ``power`` for a given effect.
- :func:`tost`: two one-sided tests for equivalence within ``±margin``; :func:`tost_bound` the
  largest ``|end|`` of the ``1 - 2 alpha`` interval (TOST passes exactly when it is < margin).
- :func:`rank_test`: Wilcoxon signed-rank test with non-finite (diverged) values ranked worst.
- :func:`holm`: Holm's step-down adjustment of a family of p-values.
- :func:`compare_pairs`: every fact of one comparison and its verdict with the reason;
  :func:`holm_verdicts` re-decides a study's comparisons from Holm-adjusted p-values
  (:func:`decide_with` one comparison from a given adjusted p).
- :func:`verdict`: the verdict word alone, for a set of finite differences.

Degenerate data never yield a confident number: with no spread in d, :func:`tost`,
:func:`tost_bound`, :func:`mde` and :func:`seeds_needed` return NaN and the paired t-test's
p-value is NaN (the t statistic is undefined).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import optimize, stats

__all__ = [
    "VERDICTS", "Comparison", "PairedResult", "compare_pairs", "decide_with", "holm", "holm_verdicts", "mde", "paired_ci",
    "paired_power", "rank_test", "seeds_needed", "tost", "tost_bound", "verdict",
]

#: The only words a comparison's verdict may be (``treatment - control`` over paired seeds):
#:
#: - ``better`` / ``worse``: the test of "no difference" rejects at ``alpha`` (after Holm within
#:   the study, when decided by :func:`holm_verdicts`) and equivalence is not shown; the paired
#:   t-test, or Wilcoxon's signed-rank test when seeds diverged or d has no spread.
#: - ``equivalent``: the ``1 - 2 alpha`` t interval lies inside ``±margin`` (TOST), d has spread,
#:   no seed diverged and one test sample's worth of the metric (the resolution) is not larger
#:   than the margin. Takes precedence over better/worse: a difference the interval shows to be
#:   non-zero but inside the margin is negligible by the task's own margin (``ci_excludes_0``
#:   says so beside it).
#: - ``inconclusive``: neither; the comparison's ``reason`` says why (too few seeds, no spread,
#:   resolution above the margin, diverged seeds without a rank difference, interval too wide).
#: - ``identical``: the final weights are bit-identical on every seed, and finite.
#: - ``diverged``: both arms diverged (non-finite metric) on every seed, or their bit-identical
#:   weights are not finite (NaN weights hash alike): nothing is compared.
VERDICTS = ("better", "worse", "equivalent", "inconclusive", "identical", "diverged")


@dataclass(frozen=True)
class PairedResult:
    """Paired difference ``treatment - control`` over n seeds.

    ``low``/``high`` bound the ``level`` confidence interval of the mean difference
    (Student's t with n - 1 degrees of freedom); ``p_value`` is the paired t-test's
    (two-sided). With one seed the interval and p-value are NaN; with no spread in the
    differences the interval is the point ``mean_diff`` and the p-value NaN (no t statistic).
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


def _pair(control: Sequence[float], treatment: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(control, dtype=float)
    b = np.asarray(treatment, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"control and treatment must be 1-D and paired, got shapes {a.shape} and {b.shape}")
    return a, b


def paired_ci(control: Sequence[float], treatment: Sequence[float], level: float = 0.95) -> PairedResult:
    """Mean of ``treatment - control`` with its t confidence interval (pairs share a seed)."""
    a, b = _pair(control, treatment)
    if a.size == 0:
        raise ValueError("need at least one pair")
    _check_alpha(level, "level")
    d = b - a
    n = d.size
    mean = float(d.mean())
    if n < 2:
        low = high = p = float("nan")
    else:
        scale = float(max(np.max(np.abs(a)), np.max(np.abs(b)))) if np.all(np.isfinite(d)) else None
        sem = float(stats.sem(d))
        if sem == 0.0 or (math.isfinite(sem) and not _spread(d, scale)):  # no spread: no t statistic
            low = high = mean
            p = float("nan")
        else:
            low, high = (float(v) for v in stats.t.interval(level, n - 1, loc=mean, scale=sem))
            p = float(stats.ttest_rel(b, a).pvalue)
    return PairedResult(n, float(a.mean()), float(b.mean()), mean, low, high, p, level)


def paired_power(effect: float, sd_diff: float, n: int, alpha: float = 0.05) -> float:
    """Probability that a two-sided paired t-test at ``alpha`` on n pairs rejects 0 when the
    true mean difference is ``effect`` and the differences' SD is ``sd_diff`` (same units).

    ``P(|T| > t_{1-alpha/2, n-1})`` with T noncentral t, df ``n - 1``, noncentrality
    ``effect sqrt(n) / sd_diff``. NaN for n < 2 and for ``sd_diff == 0`` (no t test)."""
    _check_alpha(alpha)
    if n < 2 or not math.isfinite(sd_diff):
        return float("nan")
    if sd_diff < 0:
        raise ValueError(f"sd_diff must be >= 0, got {sd_diff}")
    if sd_diff == 0:
        return float("nan")
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

    ``inf`` for n < 2 (no test is possible); NaN when ``sd_diff`` is NaN or 0 (no spread: the
    seeds measured nothing about the noise, so no size can be claimed detectable)."""
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
        return float("nan")
    hi = sd_diff
    while paired_power(hi, sd_diff, n, alpha) < target:
        hi *= 2
    return float(optimize.brentq(lambda e: paired_power(e, sd_diff, n, alpha) - target, 0.0, hi, xtol=1e-12 * hi))


def seeds_needed(sd_diff: float, effect: float, power: float = 0.8, alpha: float = 0.05, max_n: int = 1_000_000) -> float:
    """The smallest number of paired seeds n >= 2 at which a two-sided paired t-test at
    ``alpha`` detects a true mean difference ``effect`` (units of the metric) with probability
    ``power``, given the differences' SD. NaN when ``sd_diff`` is NaN or 0 (no spread measured);
    ``inf`` beyond ``max_n``."""
    target = _check_power(power)
    _check_alpha(alpha)
    if not math.isfinite(effect) or effect == 0:
        raise ValueError(f"effect must be a finite non-zero difference, got {effect}")
    if not math.isfinite(sd_diff):
        return float("nan")
    if sd_diff < 0:
        raise ValueError(f"sd_diff must be >= 0, got {sd_diff}")
    if sd_diff == 0:
        return float("nan")
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


#: differences whose range is within this many float64 epsilons of the values' magnitude are
#: equal to rounding: "no spread"
_ROUNDING_EPS = 64


def _spread(d: np.ndarray, scale: float | None = None) -> bool:
    """Two or more finite differences that are not all equal to rounding (their range is
    larger than :data:`_ROUNDING_EPS` epsilons of ``scale``, default the largest ``|d|``)."""
    if d.size < 2 or not np.all(np.isfinite(d)):
        return False
    s = float(np.max(np.abs(d))) if scale is None else float(scale)
    return float(np.ptp(d)) > _ROUNDING_EPS * np.finfo(float).eps * s


def tost(diffs: Sequence[float], margin: float, alpha: float = 0.05) -> float:
    """Two one-sided t-tests of equivalence: the p-value for "the true mean difference lies
    inside ``(-margin, +margin)``" (the larger of the two one-sided p-values). Equivalence is
    shown at level ``alpha`` when it is below ``alpha``. NaN with fewer than 2 differences, with
    a non-finite one, or with no spread (a t test needs an SD: zero spread is no evidence of a
    small difference, e.g. a test set too coarse to tell the arms apart)."""
    d = _diffs(diffs)
    _check_alpha(alpha)
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    if d.size < 2 or not np.all(np.isfinite(d)) or not _spread(d):
        return float("nan")
    p_low = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
    p_high = stats.ttest_1samp(d, margin, alternative="less").pvalue
    return float(max(p_low, p_high))


def tost_bound(diffs: Sequence[float], alpha: float = 0.05) -> float:
    """The largest ``|end|`` of the ``1 - 2 alpha`` t interval of the mean difference: the
    smallest margin at which :func:`tost` passes at ``alpha`` (metric units). NaN under the same
    conditions as :func:`tost`."""
    d = _diffs(diffs)
    _check_alpha(alpha)
    if d.size < 2 or not np.all(np.isfinite(d)) or not _spread(d):
        return float("nan")
    low, high = stats.t.interval(1 - 2 * alpha, d.size - 1, loc=float(d.mean()), scale=float(stats.sem(d)))
    return float(max(abs(low), abs(high)))


def rank_test(control: Sequence[float], treatment: Sequence[float], lower_is_better: bool) -> tuple[float, int]:
    """Wilcoxon signed-rank test of ``treatment - control`` with every non-finite value ranked
    worst (above every finite value when ``lower_is_better``, below it otherwise), so a seed
    that diverged in one arm counts as the largest loss for that arm and one that diverged in
    both is a tie (dropped, as Wilcoxon drops zero differences).

    Returns ``(p, direction)``: the two-sided p-value (exact for small n without ties, from
    scipy) and the sign of ``W+ - W-`` (+1: treatment larger, -1: smaller, 0: balanced). NaN
    and 0 when every difference is zero."""
    a, b = _pair(control, treatment)
    both = np.concatenate([a, b])
    fin = both[np.isfinite(both)]
    lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 0.0)
    worst = hi + (hi - lo) + 1.0 if lower_is_better else lo - (hi - lo) - 1.0
    a = np.where(np.isfinite(a), a, worst)
    b = np.where(np.isfinite(b), b, worst)
    d = b - a
    nz = d[d != 0]
    if nz.size == 0:
        return float("nan"), 0
    ranks = stats.rankdata(np.abs(nz))
    w = float(ranks[nz > 0].sum() - ranks[nz < 0].sum())
    p = float(stats.wilcoxon(nz).pvalue)
    return p, int(np.sign(w))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment (family-wise error control) of a family of p-values.

    With the m finite p-values sorted ascending, ``p_(i) -> max_{j <= i} min(1, (m - j + 1) p_(j))``
    (1-based), returned in the input order. NaN entries (no test was made) stay NaN and do
    not count in m."""
    p = np.asarray(p_values, dtype=float).reshape(-1)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    q = p[ok]
    if q.size:
        if np.any((q < 0) | (q > 1)):
            raise ValueError(f"p_values must lie in [0, 1], got {q[(q < 0) | (q > 1)].tolist()}")
        order = np.argsort(q, kind="stable")
        m = q.size
        adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
        res = np.empty(m)
        res[order] = adj
        out[ok] = res
    return out


@dataclass(frozen=True)
class Comparison:
    """Every fact of one paired comparison ``treatment - control`` and its verdict.

    ``n``: paired seeds; ``n_diverged``: those with a non-finite metric in either arm. The
    means, ``low``/``high`` (``1 - alpha`` t interval), ``sd_diff``, ``tost_p`` and
    ``tost_bound`` are over the ``n - n_diverged`` finite pairs. ``test``: what made
    ``p_value`` (``"t"`` paired t-test, ``"wilcoxon"`` signed-rank with diverged values ranked
    worst, used when seeds diverged or d has no spread; ``""`` none); ``direction`` the sign of
    that test's effect (treatment - control). ``p_holm``: ``p_value`` after Holm within the study
    (equal to it until :func:`holm_verdicts` adjusts it). ``ci_excludes_0``: the t interval
    excludes 0. ``resolution``: one test sample's worth of the metric (NaN: unknown).
    ``verdict`` one of :data:`VERDICTS`, decided from ``p_holm``; ``reason`` says why in words.
    """

    n: int
    n_diverged: int
    mean_control: float
    mean_treatment: float
    mean_diff: float
    low: float
    high: float
    sd_diff: float
    test: str
    p_value: float
    p_holm: float
    direction: int
    ci_excludes_0: bool
    tost_p: float
    tost_bound: float
    margin: float
    resolution: float
    lower_is_better: bool
    identical: bool
    weights_finite: bool
    both_diverged_all: bool
    alpha: float
    verdict: str
    reason: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _num(v: float) -> str:
    return f"{v:.3g}"


def _decide(c: Comparison, p: float) -> tuple[str, str]:
    """The verdict and its reason for the facts in ``c`` with ``p`` the (adjusted) p-value."""
    if c.identical:
        if not c.weights_finite:
            return "diverged", "bit-identical final weights that are not finite (NaN weights hash alike)"
        return "identical", f"bit-identical final weights on all {c.n} seeds"
    if c.n == 0:
        return "inconclusive", "no paired seeds"
    if c.both_diverged_all:
        return "diverged", f"both arms diverged on all {c.n} seeds: nothing to compare"
    held = p < c.alpha if math.isfinite(p) else False
    side = "better" if (c.direction < 0) == c.lower_is_better else "worse"
    adj = "" if not math.isfinite(p) or p == c.p_value else f" (Holm-adjusted p {_num(p)}; raw {_num(c.p_value)})"
    if c.n_diverged:
        if held and c.direction != 0:
            return side, f"{c.n_diverged} of {c.n} seeds diverged; Wilcoxon signed-rank, diverged ranked worst{adj}"
        return "inconclusive", (f"{c.n_diverged} of {c.n} seeds diverged: no rank difference at alpha {c.alpha:g}{adj}; "
                                "equivalence is not claimed with diverged seeds")
    if c.n - c.n_diverged < 2:
        return "inconclusive", "one seed: no test"
    if not math.isfinite(c.sd_diff) or c.sd_diff == 0:
        if c.mean_diff == 0:
            return "inconclusive", (f"no spread: the difference is 0 on all {c.n} seeds, the weights not shown "
                                    "bit-identical (the metric does not resolve the arms)")
        if held and c.direction != 0:
            return side, f"no spread: the difference is {c.mean_diff:+.3g} on every seed; Wilcoxon signed-rank{adj}"
        return "inconclusive", (f"no spread: the difference is {c.mean_diff:+.3g} on every seed, too few seeds for a "
                                f"rank test at alpha {c.alpha:g}{adj}")
    coarse = math.isfinite(c.resolution) and math.isfinite(c.margin) and c.resolution > c.margin
    if math.isfinite(c.tost_p) and c.tost_p < c.alpha and not coarse:
        also = (f"; the {1 - c.alpha:.0%} interval excludes 0, a difference negligible by the margin"
                if c.ci_excludes_0 else "")
        return "equivalent", f"TOST: the {1 - 2 * c.alpha:.0%} interval lies within ±{_num(c.margin)}{also}"
    if held:
        return side, f"paired t-test{adj}"
    if coarse:
        return "inconclusive", (f"one test sample ({_num(c.resolution)}) exceeds the margin ({_num(c.margin)}): "
                                "equivalence cannot be shown")
    if not math.isfinite(c.margin):
        return "inconclusive", f"no difference shown{adj} and no margin for equivalence"
    if c.ci_excludes_0:
        return "inconclusive", (f"the {1 - c.alpha:.0%} interval excludes 0 but Holm-adjusted p {_num(p)} >= {c.alpha:g}, "
                                f"and the TOST bound {_num(c.tost_bound)} exceeds the margin {_num(c.margin)}")
    return "inconclusive", (f"no difference shown{adj}, and the TOST bound {_num(c.tost_bound)} exceeds the "
                            f"margin {_num(c.margin)}")


def compare_pairs(
    control: Sequence[float],
    treatment: Sequence[float],
    *,
    margin: float,
    lower_is_better: bool,
    resolution: float | None = None,
    identical: bool = False,
    weights_finite: bool = True,
    alpha: float = 0.05,
) -> Comparison:
    """Compare paired per-seed values of one metric (``treatment - control``): see
    :class:`Comparison` for the fields and :data:`VERDICTS` for the rules.

    ``margin``: the equivalence margin (metric units, > 0; NaN: none, so never equivalent);
    ``resolution``: one test sample's worth of the metric (e.g. ``100 / n_test`` points of test
    error; None: unknown); ``identical``: the final weights were bit-identical on every seed
    (the caller knows, e.g. from weight hashes), ``weights_finite`` whether they were finite.
    The verdict uses the raw p-value; :func:`holm_verdicts` re-decides a study's comparisons."""
    _check_alpha(alpha)
    a, b = _pair(control, treatment)
    margin = float(margin)
    if margin <= 0 or margin == math.inf:
        raise ValueError(f"margin must be a finite number > 0 or NaN (no margin), got {margin}")
    res = float("nan") if resolution is None else float(resolution)
    if math.isfinite(res) and res < 0:
        raise ValueError(f"resolution must be >= 0 (metric units), got {resolution}")
    fin = np.isfinite(a) & np.isfinite(b)
    n, n_div = int(a.size), int((~fin).sum())
    both_div = bool(n > 0 and not np.isfinite(a).any() and not np.isfinite(b).any())
    af, bf = a[fin], b[fin]
    d = bf - af
    nan = float("nan")
    if d.size:
        ci = paired_ci(af, bf, 1 - alpha)
        mean_c, mean_t, mean_d, low, high = ci.mean_control, ci.mean_treatment, ci.mean_diff, ci.low, ci.high
    else:
        mean_c = mean_t = mean_d = low = high = nan
    scale = float(max(np.max(np.abs(af)), np.max(np.abs(bf)))) if d.size else 0.0
    spread = _spread(d, scale)
    sd = (float(d.std(ddof=1)) if spread else 0.0) if d.size > 1 else nan
    if identical or both_div or n == 0:
        test, p, direction = "", nan, 0
    elif n_div or (d.size > 1 and not spread):
        test = "wilcoxon"
        p, direction = rank_test(a, b, lower_is_better)
    elif d.size > 1:
        test, p, direction = "t", ci.p_value, int(np.sign(mean_d))
    else:
        test, p, direction = "", nan, 0
    c = Comparison(
        n=n, n_diverged=n_div, mean_control=mean_c, mean_treatment=mean_t, mean_diff=mean_d, low=low, high=high,
        sd_diff=sd, test=test, p_value=p, p_holm=p, direction=direction,
        ci_excludes_0=bool(spread and (low > 0 or high < 0)),
        tost_p=tost(d, margin, alpha) if spread and math.isfinite(margin) else nan,
        tost_bound=tost_bound(d, alpha) if spread else nan,
        margin=margin, resolution=res, lower_is_better=bool(lower_is_better), identical=bool(identical),
        weights_finite=bool(weights_finite), both_diverged_all=both_div, alpha=alpha, verdict="", reason="",
    )
    word, why = _decide(c, p)
    return replace(c, verdict=word, reason=why)


def decide_with(c: Comparison, p_holm: float) -> Comparison:
    """``c`` with ``p_holm`` set and its verdict and reason re-decided from it."""
    c = replace(c, p_holm=float(p_holm))
    word, why = _decide(c, float(p_holm))
    return replace(c, verdict=word, reason=why)


def holm_verdicts(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """One study's comparisons with ``p_holm`` = Holm's adjustment of their ``p_value`` (over
    those that made a test) and each verdict re-decided from it (:func:`decide_with`). The
    caller leaves out of the family comparisons that repeat another's computation
    (bit-identical arms) and gives them their twin's ``p_holm``."""
    adj = holm([c.p_value for c in comparisons])
    return [decide_with(c, float(p)) for c, p in zip(comparisons, adj, strict=True)]


def verdict(diffs: Sequence[float], margin: float, lower_is_better: bool, identical: bool = False, alpha: float = 0.05,
            *, resolution: float | None = None) -> str:
    """The verdict word of :func:`compare_pairs` for the paired differences ``treatment -
    control`` alone (one comparison, no Holm). A non-finite difference cannot say which arm
    diverged: the verdict is then ``inconclusive`` (pass both arms to :func:`compare_pairs`)."""
    if identical:
        return "identical"
    d = _diffs(diffs)
    if not np.all(np.isfinite(d)):
        return "inconclusive"
    return compare_pairs(np.zeros_like(d), d, margin=margin, lower_is_better=lower_is_better,
                         resolution=resolution, alpha=alpha).verdict
