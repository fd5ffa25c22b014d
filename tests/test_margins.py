"""One margin rule per metric: the release's gain read two ways, NLL from the error-NLL slope,
regression's relative rule, and a test sample's resolution."""

from __future__ import annotations

import math

import numpy as np
import pytest

from galcore.experiments.harness import margins as M


def test_error_margin_is_the_stricter_reading_of_the_release_gain() -> None:
    assert M.ERROR_GAIN_POINTS == pytest.approx(0.08) and M.ERROR_GAIN_RELATIVE == pytest.approx(0.08 / 1.86)
    mnist = M.margin_test_error([5.3, 5.5])  # a 5.4% base: relative reading 0.232 points, absolute 0.08
    assert mnist.value == pytest.approx(0.08) and mnist.detail["relative"] == pytest.approx(0.043011 * 5.4, rel=1e-4)
    assert "absolute" in mnist.reason
    low = M.margin_test_error(1.0)  # below the anchor's base the relative reading is stricter
    assert low.value == pytest.approx(0.08 / 1.86) and "relative" in low.reason
    assert M.margin_test_error(1.86).value == pytest.approx(0.08)
    assert math.isnan(M.margin_test_error(float("nan")).value)
    assert set(M.RULES) == {"test_error", "test_loss", "test_rmse"} and "0.08" in M.RULES["test_error"]


def test_nll_margin_is_the_error_margin_carried_by_the_slope_across_seeds() -> None:
    rng = np.random.default_rng(0)
    err = rng.normal(5.4, 0.3, size=40)
    nll = 0.02 * err + 0.1 + rng.normal(0, 0.001, size=40)
    m = M.margin_test_loss(err, nll, 0.08)
    assert m.value == pytest.approx(0.02 * 0.08, rel=0.05) and m.units == "nats"
    assert m.detail["slope_low"] < 0.02 < m.detail["slope_high"] and m.detail["n"] == 40
    assert M.margin_test_loss(err, nll, M.margin_test_error(err)).value == pytest.approx(m.value)
    falling = M.margin_test_loss(err, -nll, 0.08)
    assert math.isnan(falling.value) and "does not rise" in falling.reason
    assert math.isnan(M.margin_test_loss([5.0, 5.0, 5.0], [0.1, 0.2, 0.3], 0.08).value)  # no error spread
    assert math.isnan(M.margin_test_loss([5.0, 5.1], [0.1, 0.2], 0.08).value)  # two seeds
    with pytest.raises(ValueError, match="pair"):
        M.margin_test_loss([1.0, 2.0, 3.0], [1.0, 2.0], 0.08)


def test_regression_margin_and_resolution() -> None:
    m = M.margin_test_rmse([50.0, 60.0])
    assert m.value == pytest.approx(55.0 * 0.08 / 1.86) and m.metric == "test_rmse"
    assert math.isnan(M.margin_test_rmse(0.0).value)
    assert M.error_resolution(450) == pytest.approx(0.2222, abs=1e-4) and M.error_resolution(20000) == 0.005
    with pytest.raises(ValueError, match="n_test"):
        M.error_resolution(0)


def test_margin_for_picks_the_rule_from_the_control_finals() -> None:
    import pandas as pd

    rng = np.random.default_rng(4)
    err = rng.normal(5.4, 0.3, size=12)
    control = pd.DataFrame({"test_error": err, "test_loss": 0.03 * err + rng.normal(0, 0.002, size=12)})
    assert M.margin_for("test_error", control).value == pytest.approx(0.08)
    assert M.margin_for("test_loss", control).value == pytest.approx(M.margin_test_loss(err, control["test_loss"], 0.08).value)
    assert M.margin_for("test_rmse", pd.DataFrame({"test_rmse": [2.0, 2.0]})).value == pytest.approx(2 * 0.08 / 1.86)
    with pytest.raises(ValueError, match="metric"):
        M.margin_for("test_map", control)
    with pytest.raises(ValueError, match="test_rmse"):
        M.margin_for("test_rmse", control)
