"""Power, minimum detectable effect, equivalence and verdicts of paired comparisons."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sstats

from galcore.experiments.harness.stats import VERDICTS, mde, paired_power, seeds_needed, tost, verdict


def test_verdict_vocabulary_is_fixed() -> None:
    assert VERDICTS == ("better", "worse", "equivalent", "inconclusive", "identical")


def test_verdict_direction_from_an_interval_that_excludes_zero() -> None:
    diffs = [-0.50, -0.45, -0.55, -0.48, -0.52]  # treatment lower on every seed
    assert verdict(diffs, margin=0.1, lower_is_better=True) == "better"
    assert verdict(diffs, margin=0.1, lower_is_better=False) == "worse"
    assert verdict([-d for d in diffs], margin=0.1, lower_is_better=True) == "worse"
    # a constant non-zero difference: the interval is the point itself
    assert verdict([0.2, 0.2, 0.2], margin=0.05, lower_is_better=False) == "better"


def test_verdict_equivalent_inconclusive_identical() -> None:
    rng = np.random.default_rng(0)
    tight = rng.normal(0.0, 0.01, size=10)
    tight -= tight.mean()  # mean exactly 0: the interval contains 0
    assert verdict(tight, margin=0.1, lower_is_better=True) == "equivalent"
    wide = np.array([1.0, -1.2, 0.9, -0.8, 0.3])
    assert verdict(wide, margin=0.1, lower_is_better=True) == "inconclusive"
    assert verdict([0.0, 0.0, 0.0], margin=0.1, lower_is_better=True) == "equivalent"
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
    with pytest.raises(ValueError, match="margin"):
        tost(d, -1.0)


def test_mde_against_the_normal_approximation() -> None:
    # (z_0.975 + z_0.8) sd / sqrt(n): the limit for many seeds; t's heavier tails need more at small n
    z = sstats.norm.ppf(0.975) + sstats.norm.ppf(0.8)
    assert mde(1.0, 2000) == pytest.approx(z / math.sqrt(2000), rel=2e-3)
    assert mde(1.0, 10) > z / math.sqrt(10) * 1.05
    assert mde(2.0, 10) == pytest.approx(2 * mde(1.0, 10))
    assert paired_power(mde(1.0, 10), 1.0, 10) == pytest.approx(0.8, abs=1e-6)
    assert mde(1.0, 1) == math.inf and mde(0.0, 5) == 0.0 and math.isnan(mde(float("nan"), 5))
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
    assert seeds_needed(0.0, 0.1) == 2 and math.isnan(seeds_needed(float("nan"), 0.1))
    with pytest.raises(ValueError, match="effect"):
        seeds_needed(1.0, 0.0)
