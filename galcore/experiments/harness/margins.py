"""One equivalence-margin rule per metric, written once (the README repeats :data:`RULES`).

A margin is the largest paired difference ``treatment - control`` that counts as negligible;
:func:`galcore.experiments.harness.stats.compare_pairs` calls two arms ``equivalent`` when the 90% t
interval of the mean difference lies inside ``±margin``. Every rule is anchored on the gain the
release reports for the setting the experiments reproduce: CIFAR-10, SGD, ``gal_ratio`` 1e-3,
test error 1.86% -> 1.78% (:data:`ANCHOR`), the smallest top-1 gain of its CIFAR rows.

- :func:`margin_test_error` (percentage points of test error): the stricter of the anchor's two
  readings, absolute (:data:`ERROR_GAIN_POINTS` = 0.08 points) and relative
  (:data:`ERROR_GAIN_RELATIVE` = 0.08 / 1.86 = 4.3% of the control's mean error). On every base
  above 1.86% (MNIST-1D about 5%, digits about 2%) that is the absolute 0.08 points.
- :func:`margin_test_loss` (nats per test sample): the test-error margin carried over by the
  error-NLL relation across the control's seeds: ``slope x error margin``, the slope of the
  least-squares line of NLL on test error over the control's seeds (nats per point).
- :func:`margin_test_rmse` (the RMSE's own units): the relative reading, 4.3% of the
  control's mean test RMSE (the release reports no regression numbers; a relative gain is the
  reading that carries over to another error metric, the absolute one has no RMSE units).
- :func:`error_resolution`: one test sample's worth of test error, ``100 / n_test`` points;
  equivalence on test error cannot be shown when it exceeds the margin.

:func:`margin_for` picks the rule by metric name from the control arm's per-seed finals.
Each rule returns a :class:`Margin`: its ``value`` (NaN when the rule cannot be applied, with
the ``reason``) and the numbers it came from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "ANCHOR",
    "ERROR_GAIN_POINTS",
    "ERROR_GAIN_RELATIVE",
    "RULES",
    "Margin",
    "error_resolution",
    "margin_for",
    "margin_test_error",
    "margin_test_loss",
    "margin_test_rmse",
]

#: the release's CIFAR-10 SGD row (EfficientNet-B1, gal_ratio 1e-3): test error %, standard and GAL
ANCHOR: tuple[float, float] = (1.86, 1.78)
#: the anchor's absolute reading: percentage points of test error (0.08)
ERROR_GAIN_POINTS: float = round(ANCHOR[0] - ANCHOR[1], 10)
#: the anchor's relative reading: a fraction of the control's error (0.08 / 1.86 = 0.043)
ERROR_GAIN_RELATIVE: float = ERROR_GAIN_POINTS / ANCHOR[0]

#: the rules in words, one per metric (the README's margin section prints these)
RULES: dict[str, str] = {
    "test_error": (
        f"test error (points): the release's CIFAR-10 SGD gain ({ANCHOR[0]:g}% -> {ANCHOR[1]:g}%) read two ways, "
        f"absolute {ERROR_GAIN_POINTS:g} points and relative {ERROR_GAIN_RELATIVE:.1%} of the control's mean error; "
        "the verdict uses the stricter (smaller) of the two, which is the absolute reading on any base above "
        f"{ANCHOR[0]:g}%. Equivalence is not claimed when one test sample (100 / n_test points) exceeds it."
    ),
    "test_loss": (
        "test NLL (nats per sample): the test-error margin times the slope of NLL on test error across the "
        "control's seeds (least squares), i.e. the NLL change that goes with an error change of one margin; "
        "no margin (never equivalent) when that slope is not positive or fewer than 3 seeds vary."
    ),
    "test_rmse": (
        f"regression RMSE (the RMSE's units): {ERROR_GAIN_RELATIVE:.1%} of the control's mean test RMSE, the "
        "release's gain in its relative reading (the release reports no regression numbers)."
    ),
}


@dataclass(frozen=True)
class Margin:
    """An equivalence margin: ``value`` in ``units`` (NaN: the rule does not apply, see
    ``reason``), the ``rule`` (:data:`RULES`' key) and the numbers it came from (``detail``)."""

    value: float
    metric: str
    units: str
    reason: str = ""
    detail: dict[str, float] = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)


def _mean(values: float | Sequence[float], name: str) -> float:
    v = np.asarray(values, dtype=float).reshape(-1)
    if v.size == 0:
        raise ValueError(f"{name} is empty")
    return float(v.mean())


def error_resolution(n_test: int) -> float:
    """One test sample's worth of test error: ``100 / n_test`` percentage points."""
    if isinstance(n_test, bool) or int(n_test) != n_test or n_test < 1:
        raise ValueError(f"n_test must be an int >= 1, got {n_test!r}")
    return 100.0 / int(n_test)


def margin_test_error(control_error: float | Sequence[float]) -> Margin:
    """The test-error margin in points for a control whose mean test error (percent; one value
    or its seeds) is ``control_error``: ``min(0.08, 0.043 x control)`` (:data:`RULES`)."""
    base = _mean(control_error, "control_error")
    rel = ERROR_GAIN_RELATIVE * base
    detail = {"absolute": ERROR_GAIN_POINTS, "relative": rel, "relative_fraction": ERROR_GAIN_RELATIVE, "base": base}
    if not math.isfinite(base) or base <= 0:
        return Margin(float("nan"), "test_error", "points", f"control's mean error {base!r} is not a positive number", detail)
    which = "absolute" if ERROR_GAIN_POINTS <= rel else "relative"
    return Margin(min(ERROR_GAIN_POINTS, rel), "test_error", "points", f"the {which} reading (the stricter)", detail)


def margin_test_loss(control_error: Sequence[float], control_nll: Sequence[float], error_margin: float | Margin) -> Margin:
    """The test-NLL margin (nats): ``slope x error_margin`` with ``slope`` the least-squares
    slope of NLL on test error (points) across the control's seeds (one value per seed in
    each). NaN when fewer than 3 finite seeds, no spread in error, or a slope that is not
    positive (then NLL does not follow error across seeds and no margin is derived)."""
    e = np.asarray(control_error, dtype=float).reshape(-1)
    y = np.asarray(control_nll, dtype=float).reshape(-1)
    if e.shape != y.shape:
        raise ValueError(f"control_error and control_nll must pair seed by seed, got {e.size} and {y.size} values")
    em = float(error_margin)
    if not (math.isfinite(em) and em > 0):
        return Margin(float("nan"), "test_loss", "nats", f"error margin {em!r} is not a positive number")
    ok = np.isfinite(e) & np.isfinite(y)
    e, y = e[ok], y[ok]
    if e.size < 3 or float(np.ptp(e)) == 0.0:
        return Margin(float("nan"), "test_loss", "nats", f"{e.size} finite seeds, error spread {np.ptp(e) if e.size else 0:g}: "
                      "too few to fit NLL on error", {"n": float(e.size)})
    fit = stats.linregress(e, y)
    half = float(stats.t.ppf(0.975, e.size - 2) * fit.stderr)
    detail = {"slope": float(fit.slope), "slope_low": float(fit.slope) - half, "slope_high": float(fit.slope) + half,
              "r": float(fit.rvalue), "n": float(e.size), "error_margin": em}
    if not fit.slope > 0:
        return Margin(float("nan"), "test_loss", "nats", f"NLL does not rise with error across the control's seeds "
                      f"(slope {fit.slope:.3g} nats/point)", detail)
    return Margin(float(fit.slope) * em, "test_loss", "nats",
                  f"slope {fit.slope:.3g} nats/point (r = {fit.rvalue:.2f}, {e.size} seeds) x {em:g} points", detail)


def margin_test_rmse(control_rmse: float | Sequence[float]) -> Margin:
    """The test-RMSE margin in the RMSE's own units: :data:`ERROR_GAIN_RELATIVE` (4.3%) of the
    control's mean test RMSE (one value or its seeds)."""
    base = _mean(control_rmse, "control_rmse")
    detail = {"relative_fraction": ERROR_GAIN_RELATIVE, "base": base}
    if not math.isfinite(base) or base <= 0:
        return Margin(float("nan"), "test_rmse", "RMSE units", f"control's mean RMSE {base!r} is not a positive number", detail)
    return Margin(ERROR_GAIN_RELATIVE * base, "test_rmse", "RMSE units", "the relative reading", detail)


def margin_for(metric: str, control: Any) -> Margin:
    """The margin of ``metric`` (``test_error``, ``test_loss``, ``test_rmse``) from the control
    arm's per-seed finals ``control`` (a DataFrame with that column; ``test_loss`` also needs
    ``test_error``). ``float(margin_for(...))`` is what :func:`galcore.experiments.harness.compare`
    takes."""
    if metric not in RULES:
        raise ValueError(f"metric={metric!r} has no margin rule; rules: {', '.join(RULES)}")
    need = ["test_error", "test_loss"] if metric == "test_loss" else [metric]
    missing = [c for c in need if c not in getattr(control, "columns", ())]
    if missing:
        raise ValueError(f"control lacks columns {missing} (pass the control arm's rows of finals)")
    if metric == "test_error":
        return margin_test_error(control["test_error"].to_numpy(dtype=float))
    if metric == "test_rmse":
        return margin_test_rmse(control["test_rmse"].to_numpy(dtype=float))
    err = control["test_error"].to_numpy(dtype=float)
    return margin_test_loss(err, control["test_loss"].to_numpy(dtype=float), margin_test_error(err))
