"""Notebook 03's comparison: the runs as the harness's ``finals`` (:func:`finals_frame`, one row
per arm and seed) and the paired comparison per metric, Holm-adjusted over the study (:func:`verdict_table`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["finals_frame", "verdict_table"]

#: :func:`galcore.experiments.harness.compare`'s columns in the metric's units
_SCALED = ["mean_control", "mean_treatment", "mean_diff", "low", "high", "tost_bound", "sd_diff", "mde", "margin",
           "effect"]


def finals_frame(runs: Sequence[Mapping[str, Any]]) -> Any:
    """The runs as the harness's ``finals``: one row per run with ``arm`` (``standard`` /
    ``gal``), ``seed``, ``arch``, ``map50``, ``map50_95``, ``weights_hash``, ``cpu_s``,
    ``process_cpu_s`` and, for GAL, its acceptance rate and mean |remainder| (GAL's and plain)."""
    import numpy as np
    import pandas as pd

    rows = []
    for r in runs:
        row = {
            "arm": r["method"], "seed": r["seed"], "arch": r["arch"], "map50": r["map50"], "map50_95": r["map50_95"],
            "weights_hash": r.get("weights_hash", ""), "cpu_s": r.get("cpu_s", float("nan")),
            "process_cpu_s": r.get("process_cpu_s", float("nan")),
        }
        steps = r.get("gal_steps") or []
        if steps:
            row["accept_rate"] = float(np.mean([s["accepted"] for s in steps]))
            row["abs_remainder"] = float(np.mean([abs(s["remainder"]) for s in steps]))
            if "remainder_plain" in steps[0]:
                row["abs_remainder_plain"] = float(np.mean([abs(s["remainder_plain"]) for s in steps]))
        rows.append(row)
    return pd.DataFrame(rows)


def verdict_table(
    finals: Any, margins: Mapping[str, float], *, by: Sequence[str] = ("arch",), effect: Mapping[str, float] | None = None
) -> Any:
    """:func:`galcore.experiments.harness.compare` of ``gal`` against ``standard`` for each
    metric in ``margins`` (higher is better; margin in mAP units), one row per metric and group
    of ``by``, with every column of :data:`galcore.experiments.harness.COMPARE_COLUMNS`.
    ``effect`` per metric sets the effect size for ``seeds_needed`` (default: the margin).

    The study (Holm's family) is every row: all metrics and groups are adjusted together. To make
    that one call of ``compare`` although each metric has its own margin, each metric enters
    divided by its margin (margin 1 for all; p-values, verdicts and seeds needed do not change
    under that scaling) and the columns in mAP units are scaled back. mAP has no per-sample
    resolution (``resolution`` is NaN)."""
    import numpy as np
    import pandas as pd

    from galcore.experiments.harness import compare

    if not margins:
        raise ValueError("margins: give at least one metric's margin")
    missing = [m for m in margins if m not in finals.columns]
    if missing:
        raise ValueError(f"margins: metrics {missing} are not columns of finals")
    bad = {m: v for m, v in margins.items() if not (float(v) > 0 and np.isfinite(float(v)))}
    if bad:
        raise ValueError(f"margins must be finite numbers > 0 (mAP units), got {bad}")
    effect = dict(effect or {})
    keep = [c for c in ("arm", "seed", *by, "weights_hash") if c in finals.columns]
    long = pd.concat([finals[keep].assign(_metric=m, _value=finals[m] / float(margins[m])) for m in margins],
                     ignore_index=True)
    ratios = {m: effect.get(m, float(margins[m])) / float(margins[m]) for m in margins}
    if max(ratios.values()) - min(ratios.values()) > 1e-12 * max(abs(v) for v in ratios.values()):
        raise ValueError(f"effect: give every metric the same multiple of its margin (one study), got {ratios}")
    t = compare(long, "_value", margin=1.0, lower_is_better=False, effect=next(iter(ratios.values())),
                by=[*by, "_metric"])
    factor = t["_metric"].map(lambda m: float(margins[m]))
    for col in _SCALED:
        t[col] = t[col] * factor
    t["metric"] = t.pop("_metric")
    order = {m: i for i, m in enumerate(margins)}
    return t.sort_values("metric", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)
