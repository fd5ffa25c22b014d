"""Notebook 05's dose-response against the placebo: does the effect of GAL's size r come from h?

Arms on the ablation setup (:func:`galcore.experiments.ablations.study.setup`), all paired with
``standard`` on the same seeds: for each r in :data:`DOSE_RATIOS`, ``r=<r> | gal`` (GAL with h
trained by its own Adam, the base of the factor study) and ``r=<r> | placebo`` (a seeded random
direction per sample with the same norm ``r ||g_i||`` and acceptance rule, no h:
:func:`galcore.experiments.harness.controls.placebo`).

:func:`slopes` pools every run into one regression of the paired difference
``d = arm - standard`` (same seed) on ``log10 r``, with an intercept and a slope per kind (GAL,
placebo): ``d = a_k + b_k log10(r) + e``. Standard errors are cluster-robust by seed (the runs of
one seed share its standard run), t intervals with (seeds - 1) degrees of freedom. The slope
difference ``b_gal - b_placebo`` is what h adds per decade of r.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from galcore.experiments.ablations.mechanism import diverged
from galcore.experiments.ablations.plan import OUT, Study, gal_arm, setup
from galcore.experiments.harness import controls, run_arms
from galcore.experiments.harness.profile import Profile, get_profile

__all__ = ["DOSE_RATIOS", "DOSE_SEEDS", "KINDS", "bound_study_arms", "dose_study", "dose_text", "paired", "run_dose", "show_dose_slopes", "slopes"]

#: the ratios of the dose-response (log-spaced, half decades)
DOSE_RATIOS: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1)
#: the kinds of treatment arm: GAL (h by its own Adam) and the placebo (no h)
KINDS: tuple[str, ...] = ("gal", "placebo")
#: seeds of the dose study per profile (runs are cheap; the slopes pool them)
DOSE_SEEDS: dict[str, int] = {"smoke": 3, "default": 16, "full": 32}


def _label(r: float, kind: str) -> str:
    return f"r={r:g} | {kind}"


def dose_study(profile: Profile | None = None) -> Study:
    """The arms: ``standard`` and, per r, ``r=<r> | gal`` and ``r=<r> | placebo``; the setup's seeds."""
    s = setup(profile)
    s = replace(s, seeds=tuple(range(DOSE_SEEDS[profile or get_profile()])))
    arms: dict[str, Any] = {"standard": s.base}
    for r in DOSE_RATIOS:
        gal = gal_arm(s.base, r, "own Adam")
        arms[_label(r, "gal")] = gal
        arms[_label(r, "placebo")] = controls.placebo(gal)
    return Study("placebo_dose", "Does the effect of the adjustment's size r come from h, or from any perturbation of "
                 "that size?", arms, "standard", s)


def run_dose(study: Study, *, cache: bool = True, progress: bool = True) -> pd.DataFrame:
    """Every arm x seed of ``study`` (:func:`galcore.experiments.harness.run_arms`): finals."""
    f, _ = run_arms(study.arms, study.setup.seeds, study.setup.data, study.setup.model_fn, cache=cache, progress=progress)
    return f


def paired(finals: pd.DataFrame, metric: str, num_outputs: int = 10) -> pd.DataFrame:
    """One row per treatment run: ``seed``, ``ratio``, ``kind``, ``d`` = its ``metric`` minus the
    standard run's of the same seed, and ``diverged`` (the treatment or its standard run diverged,
    :func:`galcore.experiments.ablations.mechanism.diverged`, or ``d`` is not finite)."""
    std = finals[finals["arm"] == "standard"].set_index("seed")
    rows = []
    for _, r in finals[finals["arm"] != "standard"].iterrows():
        ratio, kind = (p.strip() for p in str(r["arm"]).split("|"))
        if r["seed"] in std.index:
            b = std.loc[r["seed"]]
            d = float(r[metric]) - float(b[metric])
            bad = diverged(r.to_dict(), num_outputs) or diverged(b.to_dict(), num_outputs) or not math.isfinite(d)
            rows.append({"seed": r["seed"], "ratio": float(ratio.removeprefix("r=")), "kind": kind, "d": d, "diverged": bad})
    return pd.DataFrame(rows, columns=["seed", "ratio", "kind", "d", "diverged"])


def _cluster_ols(y: np.ndarray, x: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """OLS coefficients and their cluster-robust covariance (CR1: G/(G-1) (n-1)/(n-k)), and G."""
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    e = y - x @ beta
    bread = np.linalg.pinv(x.T @ x)
    meat = np.zeros((x.shape[1], x.shape[1]))
    labels = np.unique(groups)
    for g in labels:
        s = x[groups == g].T @ e[groups == g]
        meat += np.outer(s, s)
    n, k, big_g = len(y), x.shape[1], len(labels)
    scale = big_g / max(big_g - 1, 1) * (n - 1) / max(n - k, 1)
    return beta, scale * bread @ meat @ bread, big_g


def slopes(finals: pd.DataFrame, metric: str = "test_loss", level: float = 0.95) -> pd.DataFrame:
    """The pooled regression of the paired difference on ``log10 r`` (module docstring): rows
    ``gal``, ``placebo`` (each kind's slope per decade of r) and ``gal - placebo`` (the slope
    difference), with ``slope``, ``low``/``high`` (``level`` t interval, seeds - 1 df),
    ``p_value``, ``runs``, ``seeds`` and ``diverged_excluded`` (runs left out because they or
    their standard run diverged: a diverged run's metric is not a difference to average);
    ``metric`` column."""
    allp = paired(finals, metric)
    p = allp[~allp["diverged"]]
    cols = ["metric", "term", "slope", "low", "high", "p_value", "runs", "seeds", "diverged_excluded"]
    if p.empty or p["seed"].nunique() < 2:
        return pd.DataFrame(columns=cols)
    lr = np.log10(p["ratio"].to_numpy())
    is_gal = (p["kind"] == "gal").to_numpy(dtype=float)
    x = np.column_stack([1 - is_gal, is_gal, lr * (1 - is_gal), lr * is_gal])  # a_pl, a_gal, b_pl, b_gal
    beta, cov, g = _cluster_ols(p["d"].to_numpy(), x, p["seed"].to_numpy())
    t = sps.t.ppf(0.5 + level / 2, g - 1)
    rows = []
    for term, w in (("gal", [0, 0, 0, 1]), ("placebo", [0, 0, 1, 0]), ("gal - placebo", [0, 0, -1, 1])):
        w = np.array(w, dtype=float)
        est, se = float(w @ beta), float(math.sqrt(max(w @ cov @ w, 0.0)))
        pv = float(2 * sps.t.sf(abs(est / se), g - 1)) if se > 0 else float("nan")
        rows.append({"metric": metric, "term": term, "slope": est, "low": est - t * se, "high": est + t * se, "p_value": pv,
                     "runs": int(len(p) if term == "gal - placebo" else (p["kind"] == term).sum()), "seeds": g,
                     "diverged_excluded": int(allp["diverged"].sum() if term == "gal - placebo"
                                              else allp.loc[allp["kind"] == term, "diverged"].sum())})
    return pd.DataFrame(rows, columns=cols)


def show_dose_slopes(finals: pd.DataFrame, metric: str = "test_loss", folder: str = OUT) -> None:
    """The paired difference against r per kind: each run (dots), the mean per r with its 95%
    interval, and the pooled regression's line. Saved and shown."""
    import matplotlib.pyplot as plt

    from galcore.experiments.harness.plots import show

    p = paired(finals, metric)
    p = p[~p["diverged"]]
    s = slopes(finals, metric).set_index("term")
    fig, ax = plt.subplots(figsize=(5.8, 3.6))
    lr_all = np.log10(np.array(DOSE_RATIOS))
    for i, kind in enumerate(KINDS):
        sub = p[p["kind"] == kind]
        if sub.empty:
            continue
        shift = (i - 0.5) * 0.06
        ax.plot(np.log10(sub["ratio"]) + shift, sub["d"], ".", color=f"C{i}", alpha=0.35, ms=4)
        g = sub.groupby("ratio")["d"]
        mean, sem, n = g.mean(), g.sem(), g.count()
        half = sem * sps.t.ppf(0.975, np.maximum(n - 1, 1))
        ax.errorbar(np.log10(mean.index) + shift, mean.values, yerr=half.values, fmt="s", color=f"C{i}", capsize=3,
                    label=f"{kind}: slope {s.loc[kind, 'slope']:+.3g} per decade" if kind in s.index else kind)
        if kind in s.index:
            a = float((sub["d"] - s.loc[kind, "slope"] * np.log10(sub["ratio"])).mean())
            ax.plot(lr_all, a + s.loc[kind, "slope"] * lr_all, "-", color=f"C{i}", lw=1)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(lr_all)
    ax.set_xticklabels([f"{r:g}" for r in DOSE_RATIOS])
    ax.set_xlabel("ratio r")
    ax.set_ylabel(f"{metric}: arm - standard (same seed)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    show(fig, f"dose_slopes_{metric}", folder)


def dose_text(table: pd.DataFrame) -> str:
    """The slopes and their difference, in sentences computed from :func:`slopes` rows (any
    number of metrics)."""
    parts = []
    for metric, t in table.groupby("metric", sort=False):
        s = t.set_index("term")
        if "gal - placebo" not in s.index:
            continue
        d = s.loc["gal - placebo"]
        ci = lambda r: f"{r['slope']:+.3g} per decade of r [{r['low']:+.3g}, {r['high']:+.3g}]"
        excl = d["low"] > 0 or d["high"] < 0
        parts.append(f"{metric}: GAL {ci(s.loc['gal'])}, placebo {ci(s.loc['placebo'])}; the difference (what h adds) "
                     f"{ci(d)}, p = {d['p_value']:.2g}: " + ("the interval excludes 0, so h changes how r acts" if excl else
                     "the interval includes 0, so these runs cannot tell GAL's dose-response from the placebo's")
                     + f" ({int(d['runs'])} runs over {int(d['seeds'])} seeds, cluster-robust by seed"
                     + (f"; {int(d['diverged_excluded'])} diverged runs left out" if d["diverged_excluded"] else "") + ").")
    return " ".join(parts) if parts else "No dose-response slopes (too few seeds)."


# -- can h move? the gradient bound on the ablation setup -----------------------------------------
#: h's own SGD (momentum 0.9) in the bound study: the model's learning rate
H_SGD_LR = 0.05


def bound_study_arms(profile: Profile | None = None, ratios: tuple[float, ...] = (1e-3, 0.1)) -> dict[str, Any]:
    """GAL arms for :func:`galcore.experiments.ablations.mechanism.bound_arms` on the ablation
    setup: each ratio x first-order form (sum, mean) x how h is trained (the model's optimizer,
    its own Adam, its own SGD with momentum at :data:`H_SGD_LR`)."""
    s = setup(profile)
    arms: dict[str, Any] = {}
    for r in ratios:
        for form in ("sum", "mean"):
            for how, opts in (("model's optimizer", {}), ("own Adam", {}), ("own SGD", {"h_optimizer": "momentum", "h_lr": H_SGD_LR})):
                mode = "own Adam" if how == "own Adam" else "model's optimizer"
                arms[f"r={r:g} | {form} | {how}"] = gal_arm(s.base, r, mode, first_order=form, **opts)
    return arms
