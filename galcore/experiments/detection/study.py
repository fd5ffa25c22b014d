"""Notebook 03's comparison: the runs as the harness's ``finals`` (:func:`finals_frame`, one row
per arm and seed) and the paired comparison per metric (:func:`verdict_table`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["finals_frame", "verdict_table"]


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
    metric in ``margins`` (higher is better), concatenated; ``effect`` per metric sets the
    effect size for ``seeds_needed`` (default: the margin)."""
    import pandas as pd

    from galcore.experiments.harness import compare

    tables = [
        compare(finals, metric, margin=m, lower_is_better=False, effect=(effect or {}).get(metric), by=list(by))
        for metric, m in margins.items()
    ]
    return pd.concat(tables, ignore_index=True)


