"""Notebook 03's verdict lines, computed from :func:`.study.verdict_table` (Holm-adjusted over
the study) and the runs: the standard arm's level, each comparison in words, and what the study
can resolve (a pilot when its smallest detectable difference exceeds the margin). No number in
it is typed."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["is_pilot", "pilot_text", "verdict_lines"]


def _g(v: float) -> str:
    return "nan" if isinstance(v, float) and math.isnan(v) else f"{v:.3g}"


def is_pilot(table: Any) -> bool:
    """Whether the study is a pilot: some comparison's mde (80% power) is not below its margin
    (or unknown), so a margin-sized effect could go unseen."""
    return bool((~(table["mde"] < table["margin"])).any())


def pilot_text(table: Any, profile: str) -> str:
    """One sentence on what these seeds resolve: the mde of each comparison against its margin,
    the seeds a margin-sized difference would need, and whether that makes the study a pilot."""
    parts = []
    for r in table.itertuples():
        if math.isfinite(r.mde):
            need = f"; about {_g(r.seeds_needed)} would detect a margin-sized difference" if math.isfinite(
                r.seeds_needed) else ""
            parts.append(f"{r.arch} {r.metric}: mde {_g(r.mde)} against margin {_g(r.margin)} ({int(r.n)} seeds{need})")
        else:
            parts.append(f"{r.arch} {r.metric}: mde unknown ({int(r.n)} seeds, differences without spread) against "
                         f"margin {_g(r.margin)}")
    if is_pilot(table):
        head = (f"**A pilot, not a test of a margin-sized effect** (profile `{profile}`): the smallest difference these "
                "seeds detect with 80% power exceeds the margin, or is unknown")
    else:
        head = f"**Powered for the margin** (profile `{profile}`): every mde is below its margin"
    return head + ": " + "; ".join(parts) + "."


def verdict_lines(table: Any, finals: Any, *, target: float, epochs: int) -> list[str]:
    """Markdown bullets: per architecture the standard arm's mAP50 against ``target``, then each
    comparison of ``table`` (GAL - standard, its interval, raw and Holm-adjusted p, TOST bound
    against the margin, mde, the verdict and its reason)."""
    lines = []
    std = finals[finals["arm"] == "standard"]
    for arch in dict.fromkeys(table["arch"]):
        s = std[std["arch"] == arch]
        reached = "reaches" if s["map50"].mean() >= target else "does not reach"
        lines.append(f"- **{arch}, standard arm**: mAP50 {s['map50'].mean():.3f} (seeds {s['map50'].min():.3f}-"
                     f"{s['map50'].max():.3f}, {int((s['map50'] >= target).sum())} of {len(s)} at {target:g} or more), "
                     f"mAP50-95 {s['map50_95'].mean():.3f} after {epochs} epochs: on average it {reached} the {target:g} "
                     "this study aims for.")
        for r in table[table["arch"] == arch].itertuples():
            lines.append(f"- **{arch} {r.metric}** over {r.n} seeds: GAL - standard = {r.mean_diff:+.4f} "
                         f"[{r.low:+.4f}, {r.high:+.4f}], p {_g(r.p_value)} (Holm {_g(r.p_holm)}), TOST bound "
                         f"{_g(r.tost_bound)} against the margin ±{r.margin:g}: **{r.verdict}** ({r.reason}). The smallest "
                         f"difference these seeds detect (80% power) is {_g(r.mde)}.")
    return lines
