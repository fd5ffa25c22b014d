"""Paired comparisons of arms over seeds: :func:`compare` (one row per treatment arm: the
interval, the p-value Holm-adjusted within the study, the TOST bound, the smallest detectable
effect, the margin, a verdict with its reason, and which arm repeats another's computation;
columns in :data:`COMPARE_COLUMNS`, described in :func:`compare`) and :func:`paired_table`
(the interval alone). The rules behind each verdict: :mod:`galcore.experiments.harness.stats`;
one margin rule per metric: :mod:`galcore.experiments.harness.margins`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from galcore.experiments.harness import stats
from galcore.experiments.harness.stats import paired_ci

__all__ = ["COMPARE_COLUMNS", "HOW_TO_READ", "compare", "holm_family", "paired_table"]

#: the columns of :func:`compare`'s rows (after any ``by`` columns); see :func:`compare`
COMPARE_COLUMNS = [
    "arm", "control", "metric", "n", "n_diverged", "mean_control", "mean_treatment", "mean_diff", "low", "high",
    "test", "p_value", "p_holm", "ci_excludes_0", "tost_p", "tost_bound", "sd_diff", "mde", "margin", "resolution",
    "verdict", "reason", "same_as", "seeds_needed", "effect",
]


#: :func:`compare`'s columns and verdicts in words, for a report's "how to read" paragraph
HOW_TO_READ = (
    "Each row compares a treatment with its control on the same seeds, initial weights and data order. "
    "`mean_diff` is the mean paired difference treatment - control of `metric` over `n` seeds, `low`/`high` its "
    "95% t interval and `ci_excludes_0` whether it excludes 0; `n_diverged` counts seeds with a non-finite "
    "metric in either arm (then the means and the interval are over the other seeds, and the test is Wilcoxon's "
    "signed-rank with diverged runs ranked worst). `p_value` is the raw p of that test (`test`: t or wilcoxon), "
    "`p_holm` the same p Holm-adjusted within the study, and verdicts use `p_holm`. `tost_bound` is the largest "
    "end of the 90% interval in absolute value: two one-sided tests show equivalence when it is below `margin`. "
    "`mde` is the smallest true difference these seeds detect with 80% power. `verdict`: `equivalent` when "
    "`tost_bound` < `margin` (also when the interval excludes 0: a difference negligible by the margin), unless "
    "the differences have no spread, seeds diverged, or one test sample (`resolution`) exceeds the margin; "
    "else `better`/`worse` when `p_holm` < 0.05; `identical` when the final weights are bit-identical and finite "
    "on every seed; `diverged` when both arms diverged on every seed or their identical weights are not finite; "
    "otherwise `inconclusive`, with the `reason`. `same_as` names an earlier arm this one repeats bit for bit: "
    "the same computation, counted once."
)

def _hashes(frame: pd.DataFrame, seeds: pd.Index) -> tuple[str, ...] | None:
    """The final-weight hashes of ``seeds`` (in order), None where any is missing."""
    if "weights_hash" not in frame.columns or len(seeds) == 0:
        return None
    hs = tuple(frame.loc[seeds, "weights_hash"])
    return hs if all(isinstance(h, str) and h for h in hs) else None


def _finite_weights(frame: pd.DataFrame, seeds: pd.Index, metric: str) -> bool:
    """Whether the final weights on ``seeds`` are finite: the ``weights_finite`` column where
    finals have one, else whether the metric is finite on some seed (NaN weights give a
    non-finite loss)."""
    if "weights_finite" in frame.columns:
        return bool(frame.loc[seeds, "weights_finite"].astype(bool).all())
    return bool(np.isfinite(frame.loc[seeds, metric].to_numpy(dtype=float)).any())


def _compare_group(
    finals: pd.DataFrame, metric: str, control: str, margin: float, lower_is_better: bool, effect: float | None,
    level: float, power: float, resolution: float | None,
) -> list[tuple[dict[str, Any], stats.Comparison]]:
    base = finals[finals["arm"] == control].set_index("seed")
    if base.empty:
        raise ValueError(f"control={control!r} has no runs; arms: {', '.join(map(str, finals['arm'].unique()))}")
    alpha = 1 - level
    out: list[tuple[dict[str, Any], stats.Comparison]] = []
    seen: dict[tuple[tuple[Any, ...], tuple[str, ...]], str] = {}  # (seeds, hashes) -> first arm
    for arm, group in finals[finals["arm"] != control].groupby("arm", sort=False):
        treat = group.set_index("seed")
        common = base.index.intersection(treat.index)
        a = base.loc[common, metric].to_numpy(dtype=float)
        b = treat.loc[common, metric].to_numpy(dtype=float)
        hb, ht = _hashes(base, common), _hashes(treat, common)
        identical = hb is not None and hb == ht
        finite = _finite_weights(treat, common, metric) if identical else True
        c = stats.compare_pairs(a, b, margin=margin, lower_is_better=lower_is_better, resolution=resolution,
                                identical=identical, weights_finite=finite, alpha=alpha)
        same_as = ""
        if ht is not None:
            same_as = seen.setdefault((tuple(common), ht), str(arm))
            same_as = "" if same_as == str(arm) else same_as
        n_ok = c.n - c.n_diverged
        sd = c.sd_diff
        size = margin if effect is None else effect
        known = math.isfinite(sd) and sd > 0
        row = {
            "arm": arm, "control": control, "metric": metric, "same_as": same_as,
            "mde": stats.mde(sd, n_ok, power, alpha) if known else float("nan"),
            "seeds_needed": stats.seeds_needed(sd, size, power, alpha) if known and math.isfinite(size) else float("nan"),
            "effect": size,
        }
        out.append((row, c))
    return out


def _fill(row: dict[str, Any], c: stats.Comparison) -> dict[str, Any]:
    facts = c.as_dict()
    return {k: row[k] if k in row else facts[k] for k in COMPARE_COLUMNS}


def compare(
    finals: pd.DataFrame,
    metric: str,
    *,
    control: str = "standard",
    margin: float,
    lower_is_better: bool,
    effect: float | None = None,
    by: Sequence[str] = (),
    study: Sequence[str] | None = None,
    resolution: float | None = None,
    level: float = 0.95,
    power: float = 0.8,
) -> pd.DataFrame:
    """One row per treatment arm (per group of ``by`` columns): the paired comparison of
    ``metric`` with ``control`` over the seeds both have (:data:`COMPARE_COLUMNS`), decided by
    :func:`galcore.experiments.harness.stats.compare_pairs` and Holm within the study.

    Columns: ``n`` paired seeds, ``n_diverged`` those with a non-finite metric in either arm;
    ``mean_control``/``mean_treatment``/``mean_diff`` (treatment - control) and ``low``/``high``
    its ``level`` t interval, over the finite pairs; ``test`` the test behind ``p_value``
    (``t``, or ``wilcoxon`` with diverged runs ranked worst when seeds diverged or the
    differences have no spread; empty when none was made); ``p_holm`` that p-value
    Holm-adjusted within the study (every row of this call, or each group of the ``study``
    columns, a subset of ``by``; a row whose arm repeats another's computation is left out of
    the family and takes that arm's ``p_holm``); ``ci_excludes_0``; ``tost_p`` and
    ``tost_bound`` (the largest ``|end|`` of the ``1 - 2 (1 - level)`` interval: equivalence
    holds when it is below ``margin``); ``sd_diff`` the SD of the per-seed differences (0 when
    equal to rounding); ``mde`` the smallest true difference detectable with probability
    ``power`` at a two-sided ``1 - level`` test (NaN without spread); ``margin`` the
    equivalence margin (metric units, > 0; NaN: none, never equivalent); ``resolution`` one test
    sample's worth of the metric (e.g. ``margins.error_resolution(n_test)``; NaN: unknown);
    ``verdict`` one of :data:`galcore.experiments.harness.stats.VERDICTS` from ``p_holm``
    (``identical`` when the final weights are bit-identical on every seed, from
    ``weights_hash``; ``diverged`` when those weights are not finite, from a
    ``weights_finite`` column or else a metric that is nowhere finite) and ``reason`` in words;
    ``same_as`` the earlier treatment arm whose final weights this arm's equal on every seed
    (the same computation: report it once); ``seeds_needed`` the seeds for ``power`` at
    ``effect`` (default: the margin)."""
    if metric not in finals.columns:
        raise ValueError(f"metric={metric!r} is not a column of finals")
    try:
        margin = float(margin)
    except (TypeError, ValueError):
        raise TypeError(f"margin must be a number (metric units), got {margin!r}") from None
    if not math.isnan(margin) and (not math.isfinite(margin) or margin <= 0):
        raise ValueError(f"margin must be a finite number > 0 (metric units) or NaN (no margin), got {margin!r}")
    if effect is not None and (not math.isfinite(effect) or effect == 0):
        raise ValueError(f"effect must be a finite non-zero difference or None, got {effect!r}")
    if not isinstance(lower_is_better, bool):
        raise TypeError(f"lower_is_better must be True or False, got {lower_is_better!r}")
    if resolution is not None and not (math.isfinite(float(resolution)) and float(resolution) >= 0):
        raise ValueError(f"resolution must be a finite number >= 0 (metric units) or None, got {resolution!r}")
    missing = [c for c in by if c not in finals.columns]
    if missing:
        raise ValueError(f"by: columns {missing} are not in finals")
    study = list(study or ())
    if [c for c in study if c not in by]:
        raise ValueError(f"study: columns {[c for c in study if c not in by]} are not among by={list(by)}")
    rows: list[tuple[dict[str, Any], stats.Comparison]] = []
    groups = finals.groupby(list(by), sort=False) if by else [((), finals)]
    for keys, group in groups:
        keys = keys if isinstance(keys, tuple) else (keys,)
        for row, c in _compare_group(group, metric, control, margin, lower_is_better, effect, level, power, resolution):
            rows.append(({**dict(zip(by, keys, strict=True)), **row}, c))
    families: dict[tuple[Any, ...], list[int]] = {}
    for i, (row, _c) in enumerate(rows):
        families.setdefault(tuple(row[k] for k in study), []).append(i)
    decided = [c for _r, c in rows]
    for members in families.values():
        first = [i for i in members if not rows[i][0]["same_as"]]
        for i, c in zip(first, stats.holm_verdicts([rows[i][1] for i in first]), strict=True):
            decided[i] = c
        for i in members:
            if rows[i][0]["same_as"]:
                twin = next(j for j in first if rows[j][0]["arm"] == rows[i][0]["same_as"]
                            and all(rows[j][0][k] == rows[i][0][k] for k in by))
                decided[i] = stats.decide_with(rows[i][1], decided[twin].p_holm)
    out = [{**{k: r[k] for k in by}, **_fill(r, c)} for (r, _c), c in zip(rows, decided, strict=True)]
    return pd.DataFrame(out, columns=[*by, *COMPARE_COLUMNS])


def paired_table(finals: pd.DataFrame, metric: str, control: str = "standard", level: float = 0.95) -> pd.DataFrame:
    """For each arm other than ``control``: the paired difference ``arm - control`` of
    ``metric`` over seeds, with its confidence interval (:func:`galcore.experiments.harness.stats.paired_ci`).
    :func:`compare` adds the power, margin and verdict."""
    base = finals[finals["arm"] == control].set_index("seed")[metric]
    rows = []
    for arm, group in finals[finals["arm"] != control].groupby("arm", sort=False):
        treat = group.set_index("seed")[metric]
        common = base.index.intersection(treat.index)
        res = paired_ci(base.loc[common].to_numpy(), treat.loc[common].to_numpy(), level)
        rows.append({"arm": arm, "metric": metric, "control": control, **res.as_dict()})
    return pd.DataFrame(rows)


def holm_family(rows: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Rows of several :func:`compare` calls made one study (one Holm family): ``p_holm`` becomes
    Holm's adjustment of ``p_value`` over the rows that made a test and repeat no other arm
    (``same_as`` empty), and a ``better``/``worse`` verdict whose adjusted p is not below
    ``alpha`` becomes ``inconclusive`` (with the reason). Equivalence (TOST) is not adjusted, as
    in :func:`compare`. Returns a copy."""
    out = rows.copy()
    if out.empty or "p_value" not in out.columns:
        return out
    same = out["same_as"].fillna("").astype(str) != "" if "same_as" in out.columns else pd.Series(False, index=out.index)
    member = ~same & np.isfinite(out["p_value"].astype(float))
    out.loc[member, "p_holm"] = stats.holm(out.loc[member, "p_value"].astype(float).to_numpy())
    lost = member & out["verdict"].isin(["better", "worse"]) & ~(out["p_holm"].astype(float) < alpha)
    out.loc[lost, "verdict"] = "inconclusive"
    if "reason" in out.columns:
        out.loc[lost, "reason"] = [f"p = {p:.3g}, Holm-adjusted over {int(member.sum())} tests p = {q:.3g}: not significant"
                                   for p, q in zip(out.loc[lost, "p_value"], out.loc[lost, "p_holm"], strict=True)]
    return out
