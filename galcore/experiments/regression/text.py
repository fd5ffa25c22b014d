"""Notebook 04's conclusion in words, computed from :func:`.study.compare_task`'s verdicts
(Holm-adjusted within each dataset and metric) and :func:`.probe.h_probe`'s measurements: no
number in it is typed. Rows that do not count as verdicts (:func:`.study.verdict_rows`: one
output, or an arm that repeats another's computation) are shown, labelled, and left out of the
counts."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from galcore.experiments.harness import margins
from galcore.experiments.regression.study import RATIO, TAIL

__all__ = ["LABELS", "conclusion", "row_text"]

#: what each comparison asks, in words (keyed by ``setting``)
LABELS: dict[str, str] = {
    "gal vs standard": "GAL vs standard",
    "gal_frozen vs standard": "GAL with a frozen h vs standard",
    "placebo vs standard": "placebo (random directions, no h) vs standard",
    "lr_scaled vs standard": "standard at lr x (1 - r) vs standard",
    "gal vs placebo": "GAL vs placebo (the effect of h itself)",
    "gal vs gal_frozen": "learned vs frozen h",
    "gal vs lr_scaled": "GAL vs standard at lr x (1 - r)",
}


def _fmt(v: float) -> str:
    return "inf" if v == math.inf else "nan" if isinstance(v, float) and math.isnan(v) else f"{v:.3g}"


def _counts(verdicts: pd.Series) -> str:
    """``"2 equivalent, 1 inconclusive"``: how many rows have each verdict (``none`` if empty)."""
    return ", ".join(f"{n} {v}" for v, n in verdicts.value_counts().items()) or "none"


def row_text(r: pd.Series) -> str:
    """One comparison in words: verdict, difference and interval, Holm-adjusted p, the TOST
    bound against the margin, mde, and why when the verdict is not a decision."""
    what = LABELS.get(r["setting"], r["setting"]) if r["metric"] == "test_rmse" else (
        f"|remainder| ratio, {r['setting'].replace('gal vs ', 'learned h vs ')}")
    if r.get("same_as"):
        return (f"{what}: the same computation as `{r['same_as']}` (bit-identical final weights on every seed), "
                "reported once")
    text = (f"{what}: **{r['verdict']}** ({r['mean_control']:.4g} -> {r['mean_treatment']:.4g}, difference "
            f"{r['mean_diff']:+.3g} [{r['low']:+.3g}, {r['high']:+.3g}], p {_fmt(r['p_value'])}, Holm {_fmt(r['p_holm'])}, "
            f"TOST bound {_fmt(r['tost_bound'])} vs margin {_fmt(r['margin'])}, mde {_fmt(r['mde'])}, n {int(r['n'])}")
    if r["verdict"] == "equivalent" and bool(r["ci_excludes_0"]):
        text += "; the 95% interval excludes 0: a difference, negligible by the margin"
    if r["verdict"] == "inconclusive" and math.isfinite(r["seeds_needed"]):
        text += f"; about {_fmt(r['seeds_needed'])} seeds would resolve a margin-sized difference"
    return text + ")"


def _headline(rows: pd.DataFrame, question: str) -> str:
    if rows.empty:
        return ""
    named = rows["setting"].nunique() > 1  # name the comparison when the headline pools several
    per = "; ".join(f"{LABELS.get(s, s) + ', ' if named else ''}{d} / {o}: {v}"
                    for s, d, o, v in zip(rows["setting"], rows["dataset"], rows["optimizer"], rows["verdict"], strict=True))
    return f"**{question}** {_counts(rows['verdict'])} ({per})."


def conclusion(table: pd.DataFrame, probes: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """The notebook's conclusion from :func:`.study.compare_task`'s ``table`` (and the h probes,
    keyed by a label): a headline per question over the counted rows, the family sizes, the
    one-output case labelled and not counted, then every row's numbers per setting."""
    counted = table[table["counted"]]
    rmse = counted[counted["metric"] == "test_rmse"]
    mech = counted[counted["metric"] == "remainder_ratio"]
    rules = (
        f"Verdicts use p-values Holm-adjusted within each dataset and metric ({_families(table)}). Test RMSE's margin is "
        f"{margins.ERROR_GAIN_RELATIVE:.1%} of the control's mean test RMSE (the release's CIFAR-10 SGD gain, "
        f"{margins.ANCHOR[0]:g}% -> {margins.ANCHOR[1]:g}% test error, read as a relative gain); the remainder ratio's is "
        "5% of 2r, what a perfect h could take off a random one. Counted below: settings with two or more outputs, "
        "each computation once."
    )
    head = [
        rules,
        _headline(rmse[rmse["setting"] == "gal vs standard"], "Does GAL change test RMSE (GAL vs standard)?"),
        _headline(rmse[rmse["setting"] == "gal vs placebo"],
                  "Is it h (GAL vs the placebo, a random direction of the same norm through the same acceptance rule)?"),
        _headline(rmse[rmse["setting"] == "gal vs gal_frozen"], "Does learning h matter (learned vs frozen h)?"),
        _headline(rmse[rmse["setting"] == "gal vs lr_scaled"],
                  f"Does GAL do more than a learning rate scaled by (1 - r) = {1 - RATIO:g} (SGD with momentum)?"),
        _headline(rmse[rmse["setting"].isin(["placebo vs standard", "gal_frozen vs standard", "lr_scaled vs standard"])],
                  "The controls against standard:"),
        _headline(mech, f"Does the learned h shorten the adjusted step's remainder (last {100 * TAIL:g}% of the epochs)?"),
    ]
    if len(mech):
        head.append("For MSE the tentative step's remainder is exactly |delta|^2/(B·C), which h can lower only by pointing "
                    "a_i against g_i, i.e. by predicting the direction of the residual from the model's output alone.")
    single = table[table["outputs"] == 1]
    if len(single):
        same = single[single["same_as"].fillna("") != ""]
        ident = single[single["verdict"] == "identical"]
        bits = [(f"**One output (shown, not counted):** with one output h's direction is ±g, so GAL only rescales each "
                 f"sample's gradient by 1 ± r. Measured: {_counts(single[single['same_as'].fillna('') == '']['verdict'])}.")]
        if len(ident):
            bits.append("Bit-identical final weights on every seed: "
                        + ", ".join(f"{r.arm} and {r.control} ({r.dataset}, {r.optimizer}, {r.metric})"
                                    for r in ident.itertuples()) + ": the same computation, so h never changes.")
        lvf = single[(single["setting"] == "gal vs gal_frozen") & (single["metric"] == "test_rmse")
                     & (single["verdict"] != "identical")]
        for r in lvf.itertuples():
            bits.append(f"Learned vs frozen h ({r.dataset}, {r.optimizer}): **{r.verdict}** but not bit-identical "
                        f"(difference {r.mean_diff:+.2g} [{r.low:+.2g}, {r.high:+.2g}]): h's weights move by rounding "
                        "only, the gradient of a sign being zero (the h probe below measures it).")
        if len(same):
            bits.append("Reported once: " + ", ".join(f"{r.arm} = {r.same_as} (vs {r.control})" for r in same.itertuples())
                        + ".")
        head.append(" ".join(bits))
    lines = []
    for (ds, c, opt), g in table.groupby(["dataset", "outputs", "optimizer"], sort=False):
        note = "" if int(c) > 1 else " (not counted)"
        lines.append(f"- {ds} (C = {int(c)}), {opt}{note}: " + "; ".join(row_text(r) for _i, r in g.iterrows()) + ".")
    for label, p in (probes or {}).items():
        lines.append(
            f"- h in {label} (C = {int(p['outputs'])}): largest gradient norm {p['h_grad_max']:.2e} "
            f"(the model's median {p['model_grad_median']:.2e}), largest change of an h weight {p['h_drift']:.2e}."
        )
    return "\n\n".join(h for h in head if h) + "\n\n" + "\n".join(lines)


def _families(table: pd.DataFrame) -> str:
    """``"rotated_digits test_rmse: 9 tests, ..."``: the size of each Holm family (rows that made
    a test and do not repeat another arm's computation)."""
    made = table[(table["same_as"].fillna("") == "") & table["p_value"].notna()]
    sizes = made.groupby(["dataset", "metric"], sort=False).size()
    return ", ".join(f"{d} {m}: {n} test{'s' if n != 1 else ''}" for (d, m), n in sizes.items())
