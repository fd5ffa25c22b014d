"""Notebook 05's sentences, computed from its finals and verdicts (every number measured), and
the conclusion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from galcore.experiments.ablations.plan import (
    OUT,
    SHORT,
    split_label,
)
from galcore.experiments.ablations.views import _count, _with_labels

__all__ = ["accept_text", "base_text", "batch_text", "conclusion", "dose_text", "factors_text", "mechanism_text", "save_conclusion", "space_text"]


# -- computed text -----------------------------------------------------------------------------
def _g(x: float) -> str:
    """A number for prose: 3 significant digits."""
    return f"{x:.3g}"


def _span(values: pd.Series) -> str:
    lo, hi = float(values.min()), float(values.max())
    return _g(lo) if _g(lo) == _g(hi) else f"{_g(lo)}-{_g(hi)}"


def mechanism_text(finals: pd.DataFrame) -> str:
    """The dose-response's mechanism measurements in words (per-sample arms); each reading is
    stated only when the numbers support it."""
    f = _with_labels(finals[finals["arm"] != "standard"])
    f = f[f["normalize"] == "sample"]
    by_r = f.groupby("ratio")
    cos0 = float(f["h_cosine_init"].mean())
    k0 = f["pert_ratio_init"] / f["ratio"]
    coh_a, coh_g = float(f["coherence_adj_mean"].mean()), float(f["coherence_grad_mean"].mean())
    net = by_r["net_ratio_mean"].mean()
    healthy = f[(f["ratio"] <= 0.1) & (f["diverged"] == 0)]
    gain = float(healthy["output_gain_mean"].median()) if not healthy.empty else float("nan")
    lines = [
        f"- **h's directions.** At the first step the mean pairwise cosine of h's outputs over the batch is {cos0:.3g}"
        + (" (h points nearly every sample the same way)" if cos0 > 0.9 else "") + "; over training, by r: "
        + ", ".join(f"{r:g}: {v:.3g}" for r, v in by_r["h_cosine_mean"].mean().items()) + ".",
        f"- **The batch's sum.** At the first step the adjustment's part of the parameter step is {_span(k0)} x r "
        f"times the plain gradient's (||J^T A|| / ||J^T G||; the per-sample bound is r)"
        + (": the samples' adjustments add up while their gradients partly cancel" if k0.min() > 1.5 else "")
        + f". Over training: {_span(f['pert_ratio_mean'] / f['ratio'])} x r.",
        f"- **Across steps.** Over an epoch the adjustment's steps have coherence {coh_a:.3g} (1 = all in one "
        f"direction), the gradient's {coh_g:.3g}"
        + ("; the adjustment keeps its direction from step to step, the gradient does not" if coh_a > coh_g + 0.1 else "")
        + ". The adjustment's share of an epoch's net move, by r: " + ", ".join(f"{r:g}: {v:.3g}" for r, v in net.items())
        + ".",
        "- **Diverged seeds** (test loss not finite, or accuracy at most twice chance), by r: "
        + ", ".join(f"{r:g}: {c}" for r, c in by_r["diverged"].agg(_count).items()) + ".",
        f"- **The tentative step.** The outputs' real move per step is {gain:.3g} times GAL's tentative step lr g "
        f"(median over runs with r <= 0.1 that did not diverge)"
        + (", so h learns from a step far smaller than the one training takes" if gain > 10 else "")
        + f"; |R_gal|/|R_plain| {_span(healthy['remainder_ratio'])}; lowest acceptance "
        f"{f['accept_rate_mean'].min():.3g}.",
    ]
    own, same = f[f["h"] == "own Adam"], f[f["h"] == "model's optimizer"]
    if not own.empty and not same.empty:
        d, w = same["h_drift"], same["decay_drift"]
        only_decay = bool(((d - w).abs() <= 1e-3 * w.abs()).all())
        rms = float(own["h_grad_rms_mean"].max())
        lines.append(
            f"- **How h learns.** In the model's optimizer h drifts {_span(d)} (weight decay alone: {_span(w)})"
            + ("; it moves only as weight decay moves it" if only_decay else "")
            + f"; its gradient has RMS {_span(same['h_grad_rms_mean'])}. With its own Adam it drifts "
            + ", ".join(f"{r:g}: {v:.3g}" for r, v in own.groupby("ratio")["h_drift"].mean().items())
            + f" (by r), from gradients of RMS up to {rms:.3g}"
            + (", below Adam's eps (1e-8): Adam's step is then close to lr g / eps, proportional to the gradient"
               if rms < 1e-8 else "") + ".")
    return "\n".join(lines)


def _verdict_of(verdicts: pd.DataFrame, arm: str, control: str, metric: str = "test_loss") -> pd.Series:
    rows = verdicts[(verdicts["arm"] == arm) & (verdicts["control"] == control) & (verdicts["metric"] == metric)]
    if rows.empty:
        raise KeyError(f"no comparison {arm!r} vs {control!r} on {metric}")
    return rows.iloc[0]


def _diff(row: pd.Series, unit: str = "") -> str:
    """``verdict (diff [low, high]{unit}, mde m)`` for prose."""
    if row["verdict"] == "identical":
        return "identical (bit-identical final weights on every seed)"
    return (f"{row['verdict']} ({row['mean_diff']:+.3g} [{row['low']:+.3g}, {row['high']:+.3g}]{unit}, "
            f"mde {row['mde']:.3g})")


def _largest_equivalent(verdicts: pd.DataFrame, metric: str = "test_loss") -> float:
    """The largest r such that every arm with ratio <= r is equivalent (or identical) to the
    standard method on ``metric``; 0 when none is."""
    v = verdicts[(verdicts["control"] == "standard") & (verdicts["metric"] == metric)].copy()
    v["ratio"] = [split_label(a)["ratio"] for a in v["arm"]]
    best = 0.0
    for r in sorted(v["ratio"].unique()):
        if v.loc[v["ratio"] <= r, "verdict"].isin(["equivalent", "identical"]).all():
            best = r
        else:
            break
    return best


def dose_text(finals: pd.DataFrame, verdicts: pd.DataFrame) -> str:
    """What the dose-response says, computed from its finals and verdicts."""
    f = _with_labels(finals[finals["arm"] != "standard"])
    r_eq = _largest_equivalent(verdicts)
    v = verdicts[(verdicts["control"] == "standard")].copy()
    v["ratio"] = [split_label(a)["ratio"] for a in v["arm"]]
    worse = v[v["verdict"] == "worse"]
    first_worse = float(worse["ratio"].min()) if not worse.empty else float("nan")
    top = float(f["ratio"].max())
    div = f[f["ratio"] == top].groupby("h", sort=False)["diverged"].agg(_count)
    err_top = v[(v["ratio"] == top) & (v["metric"] == "test_error")].set_index("arm")["mean_diff"]
    mde_eq = v[(v["ratio"] <= r_eq) & (v["metric"] == "test_loss")]["mde"]
    parts = [
        f"Up to r = {r_eq:g} every way of learning h is equivalent to the standard method on test NLL (margin "
        f"{verdicts.loc[verdicts['metric'] == 'test_loss', 'margin'].iloc[0]:.3g}; mde {_span(mde_eq)})"
        if r_eq > 0 else "No ratio is equivalent to the standard method on test NLL",
    ]
    if np.isfinite(first_worse):
        arms = ", ".join(f"{split_label(a)['h']} {_diff(row)}" for a, row in
                         worse[worse["ratio"] == first_worse].set_index("arm").iterrows() if row["metric"] == "test_loss")
        parts.append(f"the first significantly worse arms are at r = {first_worse:g}" + (f" (test NLL: {arms})" if arms else ""))
    parts.append(f"at r = {top:g}: diverged seeds " + ", ".join(f"{h} {c}" for h, c in div.items())
                 + f"; test error minus the standard method's {_span(err_top)} points (by way of learning h)")
    return "; ".join(parts) + "."


def batch_text(finals: pd.DataFrame, verdicts: pd.DataFrame) -> str:
    """What ``normalize="batch"`` changes, computed."""
    f = _with_labels(finals[finals["arm"] != "standard"])
    by = f.groupby(["normalize", "ratio"])
    pert = (f["pert_ratio_init"] / f["ratio"]).groupby(f["normalize"]).mean()
    net = (f["net_ratio_mean"] / f["ratio"]).groupby(f["normalize"]).mean()
    coh = by["coherence_adj_mean"].mean()
    div = by["diverged"].agg(_count)
    rs = sorted(f["ratio"].unique())
    small = [r for r in rs if r < 0.1]
    vs_sample = verdicts[verdicts["control"] != "standard"].copy()
    vs_sample["ratio"] = [split_label(a)["ratio"] for a in vs_sample["arm"]]
    eq = vs_sample[(vs_sample["ratio"].isin(small)) & (vs_sample["metric"] == "test_loss")]["verdict"].value_counts()
    lines = [
        (f"- At the first step the batch bound cuts the adjustment's parameter-space share from {pert['sample']:.3g} r "
        f"to {pert['batch']:.3g} r, and its share of an epoch's net move from {net['sample']:.3g} r to "
        f"{net['batch']:.3g} r (means over arms)."),
        "- Diverged seeds, per-sample -> batch: " + "; ".join(
            f"r = {r:g}: {div[('sample', r)]} -> {div[('batch', r)]}" for r in rs if r >= 0.1) + ".",
        _collapse_line(div, coh, rs[-1]),
        "- At r < 0.1 (the cost): against the same arm with per-sample normalisation, test NLL verdicts "
        + ", ".join(f"{k} x{n}" for k, n in eq.items()) + ".",
    ]
    return "\n".join(lines)


def _collapse_line(div: pd.Series, coh: pd.Series, r: float) -> str:
    """Whether the batch bound removed divergence at the largest r, with the coherence that
    explains why not when it did not."""
    if div[("batch", r)].startswith("0/"):
        return f"- With the batch bound no seed diverges at r = {r:g}."
    return (f"- The batch bound does not remove the collapse at r = {r:g} ({div[('batch', r)]} seeds diverge): the "
            f"adjustment's coherence over an epoch is {coh[('batch', r)]:.3g} with the bound and "
            f"{coh[('sample', r)]:.3g} without, so its share of the net move builds up across steps although each "
            f"step is bounded.")


def accept_text(finals: pd.DataFrame, verdicts: pd.DataFrame) -> str:
    """Where the acceptance rule acts, computed: which arms had rejected steps (tentative loss
    rose) and what the rule changed there."""
    gal = finals[finals["rejected_rate"].notna()] if "rejected_rate" in finals else finals.iloc[:0]
    rejected = gal.groupby("arm", sort=False)["rejected_rate"].max()
    faults = gal.groupby("arm", sort=False)["fallback_rate"].max()
    div = finals.groupby("arm", sort=False)["diverged"].agg(_count)
    pairs = verdicts[verdicts["arm"].str.endswith("always") & (verdicts["metric"] == "test_error")]
    ident = pairs[pairs["verdict"] == "identical"]
    lines = [(f"- No tentative step was rejected on any seed in {int((rejected == 0).sum())} of {len(rejected)} GAL arms; "
             f"`always` vs `decrease` is identical (bit-identical weights) in {len(ident)} of {len(pairs)} pairs.")]
    acted = rejected[rejected > 0]
    if not acted.empty:
        lines.append("- Steps were rejected only in: " + "; ".join(
            f"{a} (up to {v:.3g} of the steps; faults up to {faults[a]:.3g}; diverged {div[a]})" for a, v in acted.items())
            + ".")
    other = pairs[pairs["verdict"] != "identical"]

    def all_diverged(arm: str) -> bool:
        done, _, n = str(div.get(arm, "")).partition("/")
        return bool(n) and done == n

    if not other.empty:
        lines.append("- Where the rule acted, `always` against `decrease` on test error: " + "; ".join(
            f"{r['arm']}: " + ("both arms diverged on every seed, so their equal test errors say nothing"
                               if all_diverged(r["arm"]) and all_diverged(r["control"]) else _diff(r, " points"))
            for _, r in other.iterrows()) + ".")
    return "\n".join(lines)


def factors_text(finals: pd.DataFrame, verdicts: pd.DataFrame, base: str = "base: r=0.1, own Adam") -> str:
    """The factor study in a few lines: which settings change the base's test NLL (and how,
    against the base and against the standard method), which are identical, and the
    mechanism's numbers of the ones that help (h's pairwise cosine, the adjustment's net share)."""
    nll = verdicts[verdicts["metric"] == "test_loss"]
    vs_base = nll[nll["control"] == base].set_index("arm")
    vs_std = nll[nll["control"] == "standard"].set_index("arm")
    mech = finals.groupby("arm", sort=False)[["h_cosine_mean", "net_ratio_mean", "h_drift"]].mean()

    def listed(verdict: str) -> str:
        arms = vs_base.index[vs_base["verdict"] == verdict]
        return ", ".join(f"{a} ({vs_base.loc[a, 'mean_diff']:+.3g}, mde {vs_base.loc[a, 'mde']:.3g})" for a in arms) or "none"

    better = list(vs_base.index[vs_base["verdict"] == "better"])
    n_std = int((vs_std.index != base).sum())
    better_std = int((vs_std.loc[vs_std.index != base, "verdict"] == "better").sum())
    lines = [
        f"- The base against the standard method, test NLL: {_diff(vs_std.loc[base])}.",
        f"- Better than the base on test NLL: {listed('better')}. Worse: {listed('worse')}.",
        (f"- Identical to the base (bit-identical weights on every seed): "
        f"{', '.join(vs_base.index[vs_base['verdict'] == 'identical']) or 'none'}."),
        f"- Inconclusive against the base: {listed('inconclusive')}.",
    ]
    if better:
        cos_b, net_b = mech.loc[better, "h_cosine_mean"], mech.loc[better, "net_ratio_mean"]
        spread = bool((cos_b < mech.loc[base, "h_cosine_mean"]).all() and (net_b < mech.loc[base, "net_ratio_mean"]).all())
        lines.append(
            f"- The better settings' h: mean pairwise cosine over training {_span(cos_b)} (base "
            f"{mech.loc[base, 'h_cosine_mean']:.3g}); the adjustment's share of an epoch's net move {_span(net_b)} (base "
            f"{mech.loc[base, 'net_ratio_mean']:.3g})"
            + (": each spreads h's directions and shrinks the adjustment's accumulated push, the mechanism of the "
               "base's damage" if spread else "") + ".")
        lines.append("- Those settings against the standard method, test NLL: "
                     + "; ".join(f"{a}: {_diff(vs_std.loc[a])}" for a in better)
                     + f". Of the {n_std} arms compared with the standard method here, {better_std} came out `better`; "
                     f"with no effect anywhere about {0.025 * n_std:.2g} would by chance (5% two-sided, one side), so a "
                     f"single `better` needs a replication before it counts.")
    mean_arm = "first_order=mean"
    if SHORT in vs_std.index and mean_arm in vs_std.index and "adj_grad_cosine_mean" in finals:
        cos = finals.groupby("arm")["adj_grad_cosine_mean"].mean()
        lines.append(
            f"- first_order=\"mean\" divides the first-order term of h's objective by the batch size, so the objective "
            f"is mostly |<delta, g>|, which an adjustment against the gradient lowers. Mean cosine between a sample's "
            f"adjustment and its gradient: {cos[mean_arm]:.3g} (base {cos[base]:.3g})"
            + (", i.e. h learned to shorten each sample's step" if cos[mean_arm] < -0.5 else "")
            + f". The standard method with every step shortened by r ({SHORT}) against the standard method: "
            f"{_diff(vs_std.loc[SHORT])}; first_order=mean against it: {_diff(_verdict_of(verdicts, mean_arm, SHORT))}.")
    return "\n".join(lines)


def space_text(verdicts: pd.DataFrame) -> str:
    """The output- vs parameter-space comparisons, one line each, computed."""
    rows = verdicts[verdicts["metric"] == "test_loss"]
    return "\n".join(f"- {r['arm']} vs {r['control']}: test NLL {_diff(r)}, test error "
                     f"{_diff(_verdict_of(verdicts, r['arm'], r['control'], 'test_error'), ' points')}."
                     for _, r in rows.iterrows())



def conclusion(results: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]]) -> str:
    """The notebook's findings as markdown, every number and verdict computed from ``results``
    (``{study: (finals, verdicts)}`` for dose, batch, accept, factors, space)."""
    dose_f, dose_v = results["dose"]
    parts = ["**Dose-response.** " + dose_text(dose_f, dose_v),
             "**The mechanism** (dose-response arms, per-sample normalisation):\n" + mechanism_text(dose_f)]
    if "batch" in results:
        parts.append("**normalize=\"batch\".**\n" + batch_text(*results["batch"]))
    if "accept" in results:
        parts.append("**The acceptance rule.**\n" + accept_text(*results["accept"]))
    if "factors" in results:
        parts.append("**The other factors, at r = 0.1 with h trained by its own Adam** (verdicts against that base):\n"
                     + factors_text(*results["factors"]))
    if "space" in results:
        parts.append("**Output vs parameter space** (MLP 64-8-10):\n" + space_text(results["space"][1]))
    n = len(dose_f.loc[dose_f["arm"] == "standard"])
    parts.append(f"_{n} seeds per arm; `mde` is the smallest paired difference those seeds detect with 80% power; "
                 f"a verdict of `inconclusive` with an mde above the margin means more seeds, not no effect._")
    return "\n\n".join(parts)


def save_conclusion(text: str, folder: str = OUT) -> Any:
    """Write ``text`` to ``results/<folder>/conclusion.md``; returns the path."""
    from galcore.experiments.harness.results import results_dir

    path = results_dir(folder) / "conclusion.md"
    path.write_text(text + "\n")
    return path


def base_text(dose_finals: pd.DataFrame, dose_verdicts: pd.DataFrame, arm: str = "r=0.1 | own Adam") -> str:
    """The factor study's base as the dose-response measured it: its verdict against the
    standard method, h's drift against weight decay's, its diverged seeds."""
    row = _verdict_of(dose_verdicts, arm, "standard")
    f = dose_finals[dose_finals["arm"] == arm]
    return (f"In the dose-response, {arm} against the standard method on test NLL: {_diff(row)}; h's drift "
            f"{f['h_drift'].mean():.3g} (weight decay alone: {f['decay_drift'].mean():.3g}); diverged seeds "
            f"{_count(f['diverged'])}.")

