"""Paired comparisons of arms over seeds: :func:`compare` (interval, smallest detectable
effect, equivalence margin, verdict) and :func:`paired_table` (the interval alone)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from galcore.experiments.harness import stats
from galcore.experiments.harness.stats import paired_ci

__all__ = ["COMPARE_COLUMNS", "compare", "paired_table"]

#: the columns of :func:`compare`'s rows (after any ``by`` columns)
COMPARE_COLUMNS = [
    "arm", "control", "metric", "n", "mean_control", "mean_treatment", "mean_diff", "low", "high", "p_value",
    "sd_diff", "mde", "margin", "verdict", "seeds_needed", "effect",
]


def _compare_group(
    finals: pd.DataFrame, metric: str, control: str, margin: float, lower_is_better: bool, effect: float | None,
    level: float, power: float,
) -> list[dict[str, Any]]:
    base = finals[finals["arm"] == control].set_index("seed")
    if base.empty:
        raise ValueError(f"control={control!r} has no runs; arms: {', '.join(map(str, finals['arm'].unique()))}")
    alpha = 1 - level
    rows = []
    for arm, group in finals[finals["arm"] != control].groupby("arm", sort=False):
        treat = group.set_index("seed")
        common = base.index.intersection(treat.index)
        a = base.loc[common, metric].to_numpy(dtype=float)
        b = treat.loc[common, metric].to_numpy(dtype=float)
        res = paired_ci(a, b, level)
        d = b - a
        sd = float(np.std(d, ddof=1)) if len(d) > 1 else float("nan")
        identical = bool(
            "weights_hash" in finals.columns and len(common) > 0
            and all(isinstance(h, str) and h for h in base.loc[common, "weights_hash"])
            and (base.loc[common, "weights_hash"].to_numpy() == treat.loc[common, "weights_hash"].to_numpy()).all()
        )
        size = margin if effect is None else effect
        rows.append({
            "arm": arm, "control": control, "metric": metric, "n": res.n, "mean_control": res.mean_control,
            "mean_treatment": res.mean_treatment, "mean_diff": res.mean_diff, "low": res.low, "high": res.high,
            "p_value": res.p_value, "sd_diff": sd, "mde": stats.mde(sd, res.n, power, alpha) if math.isfinite(sd) else float("nan"),
            "margin": margin, "verdict": stats.verdict(d, margin, lower_is_better, identical, alpha),
            "seeds_needed": stats.seeds_needed(sd, size, power, alpha) if size and math.isfinite(sd) else float("nan"),
            "effect": size,
        })
    return rows


def compare(
    finals: pd.DataFrame,
    metric: str,
    *,
    control: str = "standard",
    margin: float,
    lower_is_better: bool,
    effect: float | None = None,
    by: Sequence[str] = (),
    level: float = 0.95,
    power: float = 0.8,
) -> pd.DataFrame:
    """One row per treatment arm (per group of ``by`` columns): the paired comparison of
    ``metric`` with ``control`` over the seeds both have (:data:`COMPARE_COLUMNS`).

    ``mean_diff`` = treatment - control, ``low``/``high`` its ``level`` t interval,
    ``sd_diff`` the SD of the per-seed differences; ``mde`` the smallest true difference
    detectable with probability ``power`` at a two-sided ``1 - level`` test; ``margin`` the
    equivalence margin (metric units, > 0); ``verdict`` one of
    :data:`galcore.experiments.harness.stats.VERDICTS` (``identical`` when the final weights are
    bit-identical on every seed, from ``weights_hash``); ``seeds_needed`` the seeds for
    ``power`` at ``effect`` (default: the margin)."""
    if metric not in finals.columns:
        raise ValueError(f"metric={metric!r} is not a column of finals")
    try:
        margin = float(margin)
    except (TypeError, ValueError):
        raise TypeError(f"margin must be a number (metric units), got {margin!r}") from None
    if not math.isfinite(margin) or margin <= 0:
        raise ValueError(f"margin must be a finite number > 0 (metric units), got {margin!r}")
    if effect is not None and (not math.isfinite(effect) or effect == 0):
        raise ValueError(f"effect must be a finite non-zero difference or None, got {effect!r}")
    if not isinstance(lower_is_better, bool):
        raise TypeError(f"lower_is_better must be True or False, got {lower_is_better!r}")
    missing = [c for c in by if c not in finals.columns]
    if missing:
        raise ValueError(f"by: columns {missing} are not in finals")
    rows: list[dict[str, Any]] = []
    groups = finals.groupby(list(by), sort=False) if by else [((), finals)]
    for keys, group in groups:
        keys = keys if isinstance(keys, tuple) else (keys,)
        for row in _compare_group(group, metric, control, float(margin), lower_is_better, effect, level, power):
            rows.append({**dict(zip(by, keys, strict=True)), **row})
    return pd.DataFrame(rows, columns=[*by, *COMPARE_COLUMNS])


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
