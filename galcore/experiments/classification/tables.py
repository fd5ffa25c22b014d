"""Notebook 02's tables: the paired comparisons with verdicts (GAL - standard, GAL - placebo),
the sample-size calculation from a pilot's paired SD, the null distribution of one run pair,
the cost per arm, and the rows of ``summary.csv``. The statistics are
:mod:`galcore.experiments.harness.stats`' and :func:`galcore.experiments.harness.compare`'s."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from galcore.experiments.classification.plan import MARGIN_ERROR, RELEASE_GAINS, TARGET_MDE
from galcore.experiments.harness.compare import holm_family
from galcore.experiments.harness import compare, controls, stats

__all__ = ["ESTIMANDS", "compare_table", "merged_arms", "null_pair", "overhead_table", "power_table", "sizing_table",
           "summary_frame", "tost_power", "tost_seeds"]


# -- comparisons ---------------------------------------------------------------------------------
#: the estimands of every (data, optimizer): (treatment, control); GAL - placebo isolates h
ESTIMANDS: tuple[tuple[str, str], ...] = (
    ("gal", "standard"), ("gal", "placebo"), ("gal_sum", "standard"), ("gal_sum", "placebo"),
    ("placebo", "standard"), ("zero", "standard"),
)


def _seeds_needed(sd: float, effect: float) -> float:
    """:func:`stats.seeds_needed` at 80% power, NaN where the paired SD is not finite."""
    return stats.seeds_needed(sd, effect) if math.isfinite(sd) else math.nan


def merged_arms(finals: pd.DataFrame) -> tuple[pd.DataFrame, dict[tuple[Any, ...], list[str]]]:
    """``finals`` with arms that are the same computation as ``standard`` (bit-identical final
    weights on every seed they ran, per data set and optimizer) reported once
    (:func:`galcore.experiments.harness.controls.merge_identical`), and which were merged."""
    return controls.merge_identical(finals, by=("data", "optimizer"), keep=("standard", "gal", "placebo"))


def compare_table(finals: pd.DataFrame, *, margin_error: float = MARGIN_ERROR, nll_margin_rel: float | None = None,
                  effect: float = RELEASE_GAINS[0], estimands: Sequence[tuple[str, str]] = ESTIMANDS) -> pd.DataFrame:
    """:func:`galcore.experiments.harness.compare` per (data, optimizer) and estimand
    ``(treatment, control)`` of ``estimands`` whose arms both ran (after :func:`merged_arms`:
    an arm identical to standard is not compared again), for ``test_error`` (points; margin
    ``margin_error``; ``seeds_needed`` at ``effect``) and ``test_loss`` (NLL; margin from
    :func:`galcore.experiments.harness.margins.margin_test_loss`, the error margin carried over by
    the error-NLL slope across the standard arm's seeds, or ``nll_margin_rel`` x its mean NLL when
    given), both lower-is-better; test error's ``resolution`` is one test sample. Holm-adjusted
    within each (data, optimizer) study (:func:`holm_family`). Adds ``estimand``
    (``"gal - placebo"``), ``seeds_needed_large`` (test error, the release's largest gain) and
    ``outputs`` (10). ``table.attrs["merged"]``: the merged arms."""
    from galcore.experiments.harness import margins
    from galcore.experiments.harness.data import test_size_of

    kept, merged = merged_arms(finals)
    rows = []
    for (data, opt), group in kept.groupby(["data", "optimizer"], sort=False):
        present = set(group["arm"])
        control_rows = group[group["arm"] == "standard"].sort_values("seed")
        n_test = test_size_of(str(data))
        resolution = margins.error_resolution(n_test) if n_test else None
        if nll_margin_rel is None:  # the one rule: NLL margin from the error-NLL slope across the control's seeds
            nll_margin = float(margins.margin_test_loss(control_rows["test_error"], control_rows["test_loss"], margin_error))
        else:
            nll_margin = nll_margin_rel * float(control_rows["test_loss"].mean())
        family = []
        for metric, margin, eff in (("test_error", margin_error, effect), ("test_loss", nll_margin, None)):
            for arm, control in estimands:
                if arm not in present or control not in present:
                    continue
                sub = group[group["arm"].isin([arm, control])]
                t = compare(sub, metric, control=control, margin=margin, lower_is_better=True, effect=eff,
                            resolution=resolution if metric == "test_error" else None)
                if metric == "test_error":
                    t["seeds_needed_large"] = [_seeds_needed(v, RELEASE_GAINS[1]) for v in t["sd_diff"]]
                t.insert(0, "estimand", f"{arm} - {control}")
                t.insert(0, "optimizer", opt)
                t.insert(0, "data", data)
                family.append(t)
        if family:
            rows.append(holm_family(pd.concat(family, ignore_index=True)))
    from galcore.experiments.harness import COMPARE_COLUMNS

    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["data", "optimizer", "estimand", *COMPARE_COLUMNS])
    out["outputs"] = 10
    out.attrs["merged"] = merged
    return out


# -- power -----------------------------------------------------------------------------------------
def tost_power(sd: float, n: int, margin: float, alpha: float = 0.05) -> float:
    """Power of two one-sided paired t-tests at ``alpha`` (each) to show equivalence within
    ``±margin`` over ``n`` seeds when the true difference is 0 and the differences' SD is
    ``sd``: ``1 - 2 P(T < t_{1-alpha, n-1})`` with T noncentral t (df n - 1, noncentrality
    ``margin sqrt(n) / sd``), floored at 0 (the usual bound; exact as the two tests separate)."""
    from scipy import stats as sps

    if n < 2 or not math.isfinite(sd) or sd <= 0:
        return float("nan")
    df = n - 1
    miss = sps.nct.cdf(sps.t.ppf(1 - alpha, df), df, margin * math.sqrt(n) / sd)
    return float(max(0.0, 1 - 2 * miss))


def tost_seeds(sd: float, margin: float, power: float = 0.8, alpha: float = 0.05, max_n: int = 100_000) -> float:
    """The fewest paired seeds at which :func:`tost_power` reaches ``power``."""
    if not math.isfinite(sd) or sd <= 0:
        return float("nan")
    n = 2
    while tost_power(sd, n, margin, alpha) < power:
        n = n * 2 if n < 64 else n + max(1, n // 16)
        if n > max_n:
            return float("inf")
    lo = max(2, n // 2)
    while lo < n:  # bisect down to the first n that reaches the power
        mid = (lo + n) // 2
        if tost_power(sd, mid, margin, alpha) >= power:
            n = mid
        else:
            lo = mid + 1
    return float(n)


def power_table(table: pd.DataFrame, targets: dict[str, float], margin: float = MARGIN_ERROR, power: float = 0.8,
                planned: dict[tuple[str, str], int] | None = None) -> pd.DataFrame:
    """The sample-size calculation per test-error row of ``table`` (a pilot's or the run's
    :func:`compare_table`): the paired SD measured on ``n`` seeds, the mde at ``n``
    (:func:`stats.mde`), the seeds for :func:`tost_power` ``power`` at ``margin``, the seeds
    for an mde of the optimizer's target (``targets[optimizer]``; :func:`stats.seeds_needed`),
    and, given ``planned[(data, optimizer)]`` seeds, the mde and TOST power they give."""
    rows = []
    for r in table[table["metric"] == "test_error"].itertuples():
        sd = float(r.sd_diff)
        target = float(targets.get(r.optimizer, margin))
        row = {"data": r.data, "optimizer": r.optimizer, "estimand": r.estimand, "n": int(r.n), "sd_diff": sd,
               "mde": float(r.mde), "tost_power": tost_power(sd, int(r.n), margin), "target_mde": target,
               f"seeds_tost_{power:.0%}": tost_seeds(sd, margin, power), "seeds_for_target_mde": _seeds_needed(sd, target)}
        if planned is not None and (r.data, r.optimizer) in planned:
            k = int(planned[(r.data, r.optimizer)])
            row.update({"planned_n": k, "planned_mde": stats.mde(sd, k) if math.isfinite(sd) else math.nan,
                        "planned_tost_power": tost_power(sd, k, margin)})
        rows.append(row)
    return pd.DataFrame(rows)


def null_pair(finals: pd.DataFrame, margin: float = MARGIN_ERROR, metric: str = "test_error",
              nulls: Sequence[str] = ("placebo", "zero")) -> pd.DataFrame:
    """How one run pair falls when nothing but noise separates the arms: per (data, optimizer),
    from the per-seed differences ``null arm - standard`` (arms of ``nulls`` that ran and are
    not bit-identical to standard), the fraction of single pairs at or below ``-margin`` (a
    "gain" the size of the release's smallest), measured and under a normal law with the
    measured SD (``Phi(-margin / sd)``). The context for the release's single runs."""
    from scipy import stats as sps

    kept, _ = merged_arms(finals)
    rows = []
    for (data, opt), g in kept.groupby(["data", "optimizer"], sort=False):
        base = g[g["arm"] == "standard"].set_index("seed")[metric]
        for arm in nulls:
            t = g[g["arm"] == arm].set_index("seed")[metric]
            common = base.index.intersection(t.index)
            if len(common) < 2:
                continue
            d = (t.loc[common] - base.loc[common]).to_numpy(dtype=float)
            d = d[np.isfinite(d)]
            sd = float(np.std(d, ddof=1)) if len(d) > 1 else math.nan
            rows.append({"data": data, "optimizer": opt, "null": f"{arm} - standard", "n": len(d), "sd_diff": sd,
                         "margin": margin, "share_at_or_below": float(np.mean(d <= -margin)),
                         "normal_share": float(sps.norm.cdf(-margin / sd)) if sd > 0 else math.nan})
    return pd.DataFrame(rows)


def overhead_table(finals: pd.DataFrame) -> pd.DataFrame:
    """CPU seconds per run per (data, optimizer, arm): the mean ``cpu_s`` and the ratio to the
    standard run of the same seed (``cpu_ratio``, mean over seeds). Cached runs keep the
    timings of the machine that ran them."""
    key = ["data", "optimizer", "seed"]
    base = finals[finals["arm"] == "standard"].set_index(key)["cpu_seconds"]
    rows = []
    for (data, opt, arm), g in finals.groupby(["data", "optimizer", "arm"], sort=False):
        r = g.set_index(key)["cpu_seconds"] / base.reindex(g.set_index(key).index)
        rows.append({"data": data, "optimizer": opt, "arm": arm, "cpu_s": float(g["cpu_seconds"].mean()),
                     "cpu_ratio": float(r.mean()), "n": len(g)})
    return pd.DataFrame(rows)


def sizing_table(table: pd.DataFrame, targets: dict[str, float] | None = None) -> pd.DataFrame:
    """Per test-error row: the paired SD, the mde reached, whether it meets the optimizer's
    target (``targets``, default :data:`TARGET_MDE` for every optimizer), and the seeds a study
    would need for that target and for the release's smallest and largest gains (80% power,
    two-sided 5%)."""
    t = table[table["metric"] == "test_error"]
    rows = []
    for r in t.itertuples():
        sd = float(r.sd_diff)
        target = float((targets or {}).get(r.optimizer, TARGET_MDE))
        rows.append({"data": r.data, "optimizer": r.optimizer, "estimand": r.estimand, "n": r.n, "sd_diff": sd,
                     "mde": r.mde, "target_mde": target, "meets_target": bool(r.mde <= target),
                     "seeds_for_target": _seeds_needed(sd, target),
                     f"seeds_for_{RELEASE_GAINS[0]:g}": _seeds_needed(sd, RELEASE_GAINS[0]),
                     f"seeds_for_{RELEASE_GAINS[1]:g}": _seeds_needed(sd, RELEASE_GAINS[1])})
    return pd.DataFrame(rows)


def summary_frame(table: pd.DataFrame, finals: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``results/02_classification/summary.csv``: descriptors (``arm`` is the
    estimand, e.g. ``"gal - placebo"``; ``treatment`` and ``control`` its arms), the report's
    columns, the treatment arm's acceptance rate and its CPU-time ratio to standard."""
    over = overhead_table(finals)
    acc = finals.groupby(["data", "optimizer", "arm"], sort=False)["accept_rate_mean"].mean().rename("accept_rate")
    out = table.merge(acc.reset_index(), on=["data", "optimizer", "arm"], how="left")
    out = out.merge(over[["data", "optimizer", "arm", "cpu_ratio"]].rename(columns={"cpu_ratio": "overhead_ratio"}),
                    on=["data", "optimizer", "arm"], how="left")
    out = out.rename(columns={"arm": "treatment"})
    out["arm"] = out["estimand"]  # the report's descriptor: which comparison the row is ("gal - placebo")
    cols = ["data", "optimizer", "arm", "treatment", "control", "metric", "mean_control", "mean_treatment", "mean_diff", "low",
            "high", "p_value", "n", "sd_diff", "mde", "margin", "verdict", "seeds_needed", "outputs", "accept_rate",
            "overhead_ratio"]
    return out[[c for c in cols if c in out.columns]]
