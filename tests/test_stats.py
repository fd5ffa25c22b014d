"""Power, minimum detectable effect, equivalence and verdicts of paired comparisons."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sstats

from galcore.experiments.harness.stats import (
    VERDICTS,
    compare_pairs,
    holm,
    holm_verdicts,
    mde,
    paired_power,
    rank_test,
    seeds_needed,
    tost,
    tost_bound,
    verdict,
)


def test_verdict_vocabulary_is_fixed() -> None:
    assert VERDICTS == ("better", "worse", "equivalent", "inconclusive", "identical", "diverged")


def test_verdict_direction_from_an_interval_that_excludes_zero() -> None:
    diffs = [-0.50, -0.45, -0.55, -0.48, -0.52]  # treatment lower on every seed
    assert verdict(diffs, margin=0.1, lower_is_better=True) == "better"
    assert verdict(diffs, margin=0.1, lower_is_better=False) == "worse"
    assert verdict([-d for d in diffs], margin=0.1, lower_is_better=True) == "worse"
    # a constant non-zero difference has no t statistic: Wilcoxon's exact p is 2 / 2^n
    assert verdict([0.2, 0.2, 0.2], margin=0.05, lower_is_better=False) == "inconclusive"  # p = 0.25
    assert verdict([0.2] * 8, margin=0.05, lower_is_better=False) == "better"  # p = 0.0078


def test_verdict_equivalent_inconclusive_identical() -> None:
    rng = np.random.default_rng(0)
    tight = rng.normal(0.0, 0.01, size=10)
    tight -= tight.mean()  # mean exactly 0: the interval contains 0
    assert verdict(tight, margin=0.1, lower_is_better=True) == "equivalent"
    wide = np.array([1.0, -1.2, 0.9, -0.8, 0.3])
    assert verdict(wide, margin=0.1, lower_is_better=True) == "inconclusive"
    assert verdict([0.0, 0.0, 0.0], margin=0.1, lower_is_better=True) == "inconclusive"  # no spread
    assert verdict([0.0, 0.0, 0.0], margin=0.1, lower_is_better=True, identical=True) == "identical"
    assert verdict([0.3], margin=0.1, lower_is_better=True) == "inconclusive"  # one seed: no test
    assert verdict([0.1, float("nan")], margin=0.1, lower_is_better=True) == "inconclusive"


def test_tost_is_the_larger_one_sided_p_value() -> None:
    d = np.array([0.02, -0.01, 0.03, 0.00, 0.01, -0.02])
    p = tost(d, 0.05)
    lo = sstats.ttest_1samp(d, -0.05, alternative="greater").pvalue
    hi = sstats.ttest_1samp(d, 0.05, alternative="less").pvalue
    assert p == pytest.approx(max(lo, hi)) and p < 0.05
    assert tost(d, 0.001) > 0.5
    assert math.isnan(tost([0.1], 0.5))
    assert tost_bound(d) == pytest.approx(max(abs(v) for v in sstats.t.interval(0.9, 5, d.mean(), sstats.sem(d))))
    assert (tost(d, tost_bound(d) * 1.001) < 0.05) and (tost(d, tost_bound(d) * 0.999) > 0.05)
    with pytest.raises(ValueError, match="margin"):
        tost(d, -1.0)


def test_mde_against_the_normal_approximation() -> None:
    # (z_0.975 + z_0.8) sd / sqrt(n): the limit for many seeds; t's heavier tails need more at small n
    z = sstats.norm.ppf(0.975) + sstats.norm.ppf(0.8)
    assert mde(1.0, 2000) == pytest.approx(z / math.sqrt(2000), rel=2e-3)
    assert mde(1.0, 10) > z / math.sqrt(10) * 1.05
    assert mde(2.0, 10) == pytest.approx(2 * mde(1.0, 10))
    assert paired_power(mde(1.0, 10), 1.0, 10) == pytest.approx(0.8, abs=1e-6)
    assert mde(1.0, 1) == math.inf and math.isnan(mde(float("nan"), 5))
    assert mde(1.0, 40) < mde(1.0, 10)
    with pytest.raises(ValueError, match="power"):
        mde(1.0, 10, power=1.5)
    with pytest.raises(ValueError, match="sd_diff"):
        mde(-1.0, 10)


def test_mde_has_the_stated_power_by_simulation() -> None:
    rng = np.random.default_rng(1234)
    n, sd, trials = 8, 0.7, 4000
    effect = mde(sd, n)
    samples = rng.normal(effect, sd, size=(trials, n))
    p = sstats.ttest_1samp(samples, 0.0, axis=1).pvalue
    assert np.mean(p < 0.05) == pytest.approx(0.8, abs=0.03)
    half = sstats.ttest_1samp(rng.normal(effect / 2, sd, size=(trials, n)), 0.0, axis=1).pvalue
    assert np.mean(half < 0.05) < 0.45


def test_seeds_needed_is_the_first_n_that_reaches_the_power() -> None:
    sd, effect = 0.5, 0.3
    n = seeds_needed(sd, effect)
    assert isinstance(n, int) and n > 2
    assert mde(sd, n) <= effect < mde(sd, n - 1)
    assert seeds_needed(1.0, 1.0) == 10 and seeds_needed(1.0, -1.0) == 10
    assert math.isnan(seeds_needed(float("nan"), 0.1))
    with pytest.raises(ValueError, match="effect"):
        seeds_needed(1.0, 0.0)


# -- verdicts that cannot mislead ------------------------------------------------------------------
def test_zero_spread_is_never_equivalent_and_gives_no_confident_number() -> None:
    zeros = np.zeros(16)
    assert math.isnan(tost(zeros, 0.08)) and math.isnan(tost_bound(zeros))  # not p = 0
    assert math.isnan(mde(0.0, 16)) and math.isnan(seeds_needed(0.0, 0.08)) and math.isnan(paired_power(0.1, 0.0, 16))
    c = compare_pairs(np.full(16, 2.0), np.full(16, 2.0), margin=0.08, lower_is_better=True)
    assert c.verdict == "inconclusive" and "no spread" in c.reason and math.isnan(c.p_value)
    assert (c.low, c.high, c.mean_diff) == (0.0, 0.0, 0.0)
    shift = compare_pairs(np.full(16, 2.0), np.full(16, 2.22), margin=0.5, lower_is_better=True)
    assert shift.verdict == "worse" and shift.test == "wilcoxon" and "no spread" in shift.reason
    assert shift.p_value == pytest.approx(sstats.wilcoxon(np.full(16, 0.22)).pvalue) and shift.p_value < 1e-3
    assert shift.sd_diff == 0.0 and math.isnan(shift.tost_bound)
    # differences equal up to rounding (2.22 - x for varied x) are no spread either
    x = np.linspace(1.0, 3.0, 16)
    assert compare_pairs(x, x + 0.1, margin=0.5, lower_is_better=True).reason.startswith("no spread")
    # bit-identical weights are identical; bit-identical NaN weights are not
    assert compare_pairs(zeros, zeros, margin=0.08, lower_is_better=True, identical=True).verdict == "identical"
    nan_w = compare_pairs(zeros, zeros, margin=0.08, lower_is_better=True, identical=True, weights_finite=False)
    assert nan_w.verdict == "diverged"


def test_a_test_sample_larger_than_the_margin_forbids_equivalence() -> None:
    rng = np.random.default_rng(3)
    control = rng.normal(2.0, 0.3, size=30)
    d = rng.normal(0.0, 0.02, size=30)
    d -= d.mean()
    fine = compare_pairs(control, control + d, margin=0.08, lower_is_better=True, resolution=0.05)
    assert fine.verdict == "equivalent" and fine.tost_bound < 0.08
    coarse = compare_pairs(control, control + d, margin=0.08, lower_is_better=True, resolution=100 / 450)
    assert coarse.verdict == "inconclusive" and "one test sample" in coarse.reason
    assert coarse.tost_p == fine.tost_p < 0.05  # the TOST itself passes: the resolution decides
    # a real difference is still found on a coarse metric
    big = compare_pairs(control, control + 1.0 + d, margin=0.08, lower_is_better=True, resolution=100 / 450)
    assert big.verdict == "worse"


def test_an_interval_that_excludes_zero_inside_the_margin_is_equivalent_and_says_both() -> None:
    rng = np.random.default_rng(5)
    d = 0.02 + rng.normal(0.0, 0.01, size=20)
    c = compare_pairs(np.zeros(20), d, margin=0.08, lower_is_better=True)
    assert c.ci_excludes_0 and c.low > 0 and c.p_value < 0.05
    assert c.verdict == "equivalent" and "excludes 0" in c.reason
    assert c.tost_bound == pytest.approx(tost_bound(d)) and c.tost_bound < 0.08 and c.tost_p < 0.05
    narrow = compare_pairs(np.zeros(20), d, margin=0.01, lower_is_better=True)
    assert narrow.verdict == "worse" and narrow.ci_excludes_0 and narrow.tost_p > 0.05


def test_holm_matches_a_hand_computation() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02, np.nan])
    np.testing.assert_allclose(holm([0.6, 0.9]), [1.0, 1.0])  # capped at 1
    assert holm([]).size == 0
    with pytest.raises(ValueError, match="p_values"):
        holm([1.5])


def test_holm_verdicts_decide_from_the_adjusted_p_and_keep_the_raw_one() -> None:
    rng = np.random.default_rng(11)
    base = rng.normal(5.0, 0.3, size=12)
    noise = rng.normal(0.0, 0.3, size=12)
    noise = (noise - noise.mean()) / noise.std(ddof=1) * 0.3
    t_crit = sstats.t.ppf(1 - 0.03 / 2, 11)  # a mean difference whose raw p is 0.03
    arm = compare_pairs(base, base + noise + t_crit * 0.3 / math.sqrt(12), margin=0.01, lower_is_better=True)
    assert arm.p_value == pytest.approx(0.03) and arm.verdict == "worse"
    out = holm_verdicts([arm, arm, arm])
    assert [c.p_holm for c in out] == pytest.approx([0.09] * 3) and all(c.p_value == pytest.approx(0.03) for c in out)
    assert {c.verdict for c in out} == {"inconclusive"} and "Holm" in out[0].reason
    assert holm_verdicts([arm])[0].verdict == "worse"


def test_diverged_seeds_are_counted_and_compared_by_ranks() -> None:
    rng = np.random.default_rng(2)
    control = rng.normal(5.0, 0.2, size=10)
    treat = control + rng.normal(0.0, 0.2, size=10)
    treat[[1, 4]] = np.nan
    c = compare_pairs(control, treat, margin=0.5, lower_is_better=True)
    assert c.n == 10 and c.n_diverged == 2 and c.test == "wilcoxon"
    assert c.verdict == "inconclusive" and "diverged" in c.reason  # never equivalent with diverged seeds
    assert np.isfinite([c.mean_diff, c.low, c.high]).all()  # the interval is over the 8 finite pairs
    assert c.mean_diff == pytest.approx(np.nanmean(treat - control))
    all_bad = compare_pairs(control, np.full(10, np.inf), margin=0.5, lower_is_better=True)
    assert all_bad.verdict == "worse" and all_bad.n_diverged == 10 and all_bad.p_value == pytest.approx(2 / 2**10)
    assert compare_pairs(control, np.full(10, np.nan), margin=0.5, lower_is_better=False).verdict == "worse"
    both = compare_pairs(np.full(10, np.nan), np.full(10, np.nan), margin=0.5, lower_is_better=True)
    assert both.verdict == "diverged" and math.isnan(both.p_value)
    p, direction = rank_test([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [np.nan, 2.5, 3.5, 4.5, 5.5, 6.5], lower_is_better=True)
    assert direction == 1 and p == pytest.approx(sstats.wilcoxon([20.0, 0.5, 0.5, 0.5, 0.5, 0.5]).pvalue)


def test_compare_pairs_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="paired"):
        compare_pairs([1.0, 2.0], [1.0], margin=0.1, lower_is_better=True)
    with pytest.raises(ValueError, match="margin"):
        compare_pairs([1.0, 2.0], [1.0, 2.0], margin=0.0, lower_is_better=True)
    with pytest.raises(ValueError, match="resolution"):
        compare_pairs([1.0, 2.0], [1.0, 2.0], margin=0.1, lower_is_better=True, resolution=-1)
    none = compare_pairs([1.0, 2.0, 3.0], [1.1, 1.9, 3.05], margin=float("nan"), lower_is_better=True)
    assert none.verdict == "inconclusive" and "no margin" in none.reason and math.isnan(none.tost_p)
