"""Notebook 02's sentences, generated from its tables (verdicts, intervals, mde, the null of one
run pair, the mechanism's numbers): nothing in them is typed."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from galcore.experiments.classification.plan import ARM_TEXT, MARGIN_ERROR, RELEASE_GAINS
from galcore.experiments.harness import controls

__all__ = ["conclusion_text", "findings_text", "mechanism_text", "null_text", "scope_text"]

_METRIC_TEXT = {"test_error": ("test error", "points"), "test_loss": ("test NLL", "nats")}


def _fmt(v: float, unit: str) -> str:
    return f"{v:+.3f} {unit}" if unit == "points" else f"{v:+.4f}"


def _row_text(r: Any) -> str:
    """One comparison's verdict with its interval, mde and margin."""
    name, unit = _METRIC_TEXT.get(r.metric, (r.metric, ""))
    ci = f"{name} {_fmt(r.mean_diff, unit)}, 95% CI [{_fmt(r.low, unit)}, {_fmt(r.high, unit)}]"
    return {
        "better": f"**better** ({ci})",
        "worse": f"**worse** ({ci})",
        "equivalent": f"**equivalent** within ±{r.margin:.3g} ({ci})",
        "identical": f"**identical** ({name}: bit-identical final weights on every seed)",
        "inconclusive": f"**inconclusive** ({ci}; the smallest detectable difference is {r.mde:.3g}, the margin ±{r.margin:.3g})",
    }[r.verdict]


def _reach(e: pd.Series) -> str:
    """What a test-error row's seeds can and cannot see."""
    can = ""
    if math.isfinite(e["mde"]):
        if e["mde"] <= RELEASE_GAINS[0]:
            can = f" With mde {e['mde']:.3f} points these {int(e['n'])} seeds can see even the release's smallest gain ({RELEASE_GAINS[0]:g})."
        elif e["mde"] <= RELEASE_GAINS[1]:
            can = (f" With mde {e['mde']:.2f} points these {int(e['n'])} seeds can see a gain of the release's largest size "
                   f"({RELEASE_GAINS[1]:g}) but not its smallest ({RELEASE_GAINS[0]:g}; that needs ~{e['seeds_needed']:.0f} seeds).")
        else:
            can = (f" With mde {e['mde']:.2f} points these {int(e['n'])} seeds cannot see release-sized gains "
                   f"({RELEASE_GAINS[0]:g}-{RELEASE_GAINS[1]:g} points).")
    if e["verdict"] in ("inconclusive", "equivalent") and math.isfinite(e["low"]) and math.isfinite(e["high"]):
        can += (f" The 95% interval rules out a gain (lower error) larger than {max(-e['low'], 0.0):.3f} points "
                f"and a loss larger than {max(e['high'], 0.0):.3f}.")
    return can


def _merged_text(table: pd.DataFrame) -> str:
    merged: Mapping[tuple[Any, ...], list[str]] = table.attrs.get("merged", {})
    return controls.describe_merged(merged)


def conclusion_text(table: pd.DataFrame) -> str:
    """Markdown computed from ``table`` (:func:`~galcore.experiments.classification.tables.compare_table`):
    per data set and optimizer, each estimand's verdict on test error and NLL with the
    interval, the mde, the margin, and what the data can and cannot say; then which arms were
    the same computation."""
    lines: list[str] = []
    for (data, opt), g in table.groupby(["data", "optimizer"], sort=False):
        parts = []
        for est, ge in g.groupby("estimand", sort=False):
            arm, control = est.split(" - ")
            bits = [_row_text(r) for r in ge.itertuples()]
            err = ge[ge["metric"] == "test_error"]
            can = _reach(err.iloc[0]) if len(err) else ""
            parts.append(f"  - `{arm}` − `{control}` ({int(ge['n'].max())} paired seeds): " + "; ".join(bits) + "." + can)
        lines.append(f"- **{data}, {opt}**:\n" + "\n".join(parts))
    merged = _merged_text(table)
    arms = sorted({a for e in table["estimand"] for a in e.split(" - ")}, key=list(ARM_TEXT).index)
    legend = "Arms: " + "; ".join(f"`{a}` = {ARM_TEXT[a]}" for a in arms if a in ARM_TEXT) + "."
    return "\n".join(lines) + ("\n\n" + merged if merged else "") + "\n\n" + legend


def findings_text(table: pd.DataFrame, headline: tuple[str, str] = ("mnist1d", "SGD+momentum")) -> str:
    """The computed lines for the top of the notebook: the headline (``headline`` data set and
    optimizer) estimands GAL − standard and GAL − placebo on test error (verdict, difference,
    interval, mde, n), then every other group's verdicts in one line each."""
    lines = []
    for (data, opt), g in table.groupby(["data", "optimizer"], sort=False):
        e = g[g["metric"] == "test_error"]
        if (data, opt) == headline:
            for r in e.itertuples():
                arm, control = r.estimand.split(" - ")
                lines.append(f"- **{data}, {opt}, `{arm}` − `{control}`** ({int(r.n)} paired seeds): error {_row_text(r)}, "
                             f"mde {r.mde:.3f} points.")
        else:
            bits = [f"`{r.estimand}` **{r.verdict}** ({r.mean_diff:+.2f}, mde {r.mde:.2f}, n {int(r.n)})" for r in e.itertuples()]
            lines.append(f"- {data}, {opt}: " + "; ".join(bits) + ".")
    merged = _merged_text(table)
    return (f"Paired over seeds, test error in points (margin ±{MARGIN_ERROR:g}, the release's smallest gain; "
            f"`gal` is {ARM_TEXT['gal']}):\n\n" + "\n".join(lines) + ("\n\n" + merged if merged else ""))


def null_text(null: pd.DataFrame, headline: tuple[str, str] = ("mnist1d", "SGD+momentum")) -> str:
    """How often one run pair shows a release-sized "gain" under the null (:func:`~galcore.experiments.classification.tables.null_pair`)."""
    rows = null[(null["data"] == headline[0]) & (null["optimizer"] == headline[1])]
    if rows.empty:
        return "No null arm ran beside standard here: the null distribution of one run pair is not measured."
    bits = [f"`{r.null}` (SD {r.sd_diff:.3f} points over {r.n} seeds): {r.share_at_or_below:.0%} of single pairs at or below "
            f"−{r.margin:g} points ({r.normal_share:.0%} under a normal law with that SD)" for r in rows.itertuples()]
    return (f"**One run pair under the null** ({headline[0]}, {headline[1]}): with no h at all, " + "; ".join(bits) +
            ". A single standard/GAL pair showing a gain of the release's smallest size is that common without any "
            "effect: this is the yardstick for the release's single runs.")


def mechanism_text(bounds: pd.DataFrame) -> str:
    """What the measured h gradients, their bounds and h's drift say, per way h is trained
    (rows of :func:`galcore.experiments.classification.runs.bound_runs`;
    :func:`galcore.experiments.ablations.mechanism.bound_text`)."""
    from galcore.experiments.ablations.mechanism import bound_text

    return bound_text(bounds)


def scope_text(table: pd.DataFrame) -> str:
    """What the data sets compared in ``table`` can and cannot speak to."""
    paper = sorted({d for d in table["data"] if d in ("cifar10", "cifar100", "imagenet")})
    small = sorted({d for d in table["data"] if d not in ("cifar10", "cifar100", "imagenet")})
    text = (f"The in-memory benchmarks ({', '.join(small)}) use small models trained from scratch for minutes; "
            "they test GAL's claim in that regime only. Runs reproduce in distribution, not bit for bit, across machines: "
            "CPU kernels differ, so the same seeds on another machine give other per-seed numbers with the same spread.")
    if paper:
        text += f" The release's paper-scale settings ran on: {', '.join(paper)}."
    else:
        text += (" They neither confirm nor refute the release's CIFAR and ImageNet numbers (EfficientNets, hundreds of "
                 "epochs), which need the `full` profile with the data and a GPU.")
    return text
