"""Notebook 05's figures: dose-response, mechanism, verdicts (through ``harness.plots.show``)."""

from __future__ import annotations


import numpy as np
import pandas as pd

from galcore.experiments.ablations.plan import (
    H_MODES,
    OUT,
)
from galcore.experiments.ablations.views import _with_labels

__all__ = ["show_dose", "show_mechanism", "show_verdicts"]


def show_dose(finals: pd.DataFrame, folder: str = OUT) -> None:
    """Median test NLL and mean test error against r, one line per way h learns (normalize
    "batch" dashed when present), the standard method as a grey line. Saved and shown."""
    import matplotlib.pyplot as plt

    from galcore.experiments.harness.plots import show

    f = _with_labels(finals)
    std = f[f["arm"] == "standard"]
    gal = f[f["arm"] != "standard"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, col, agg, name in ((axes[0], "test_loss", "median", "test NLL (median over seeds)"),
                               (axes[1], "test_error", "mean", "test error % (mean over seeds)")):
        for i, h in enumerate(H_MODES):
            for norm, style in (("sample", "-o"), ("batch", "--s")):
                sub = gal[(gal["h"] == h) & (gal["normalize"] == norm)]
                if sub.empty:
                    continue
                y = sub.groupby("ratio")[col].agg(agg)
                ax.plot(y.index, y.values, style, color=f"C{i}", ms=4, label=f"{h}" + (" (batch)" if norm == "batch" else ""))
        ax.axhline(float(std[col].agg(agg)), color="0.5", lw=1, label="standard (r = 0)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("ratio r")
        ax.set_ylabel(name)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    show(fig, "dose_response" if "batch" not in set(gal["normalize"]) else "dose_response_batch", folder)


def show_mechanism(finals: pd.DataFrame, hists: pd.DataFrame, folder: str = OUT, normalize: str = "sample") -> None:
    """Left: the adjustment's share of the parameter step at the first step and of each
    epoch's net move, against r, beside the per-sample bound r. Middle: h's mean pairwise
    cosine per epoch. Right: coherence of the adjustment's and of the gradient's parameter
    steps per epoch (frozen h, normalised as ``normalize``)."""
    import matplotlib.pyplot as plt

    from galcore.experiments.harness.plots import show

    f = _with_labels(finals[finals["arm"] != "standard"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    for i, (col, marker, name) in enumerate((("pert_ratio_init", "o", "||J^T A|| / ||J^T G||, first step"),
                                             ("pert_ratio_mean", "^", "same, mean over training"),
                                             ("net_ratio_mean", "s", "net over an epoch, mean"))):
        for norm, ls in (("sample", "-"), ("batch", "--")):
            sub = f[(f["h"] == "frozen") & (f["normalize"] == norm)]
            if not sub.empty:
                y = sub.groupby("ratio")[col].mean()
                ax.plot(y.index, y.values, marker=marker, linestyle=ls, color=f"C{i}", ms=4,
                        label=name + (" (batch)" if norm == "batch" else ""))
    rs = np.array(sorted(f["ratio"].unique()))
    ax.plot(rs, rs, ":", color="k", label="r (the per-sample bound)")
    ax.set(xscale="log", yscale="log", xlabel="ratio r", ylabel="adjustment / gradient, parameter space")
    ax.legend(fontsize=6)
    h = _with_labels(hists[hists["arm"] != "standard"])
    h = h[(h["h"] == "frozen") & (h["normalize"] == normalize)]
    for i, (r, sub) in enumerate(h.groupby("ratio")):
        m = sub.groupby("epoch")[["h_cosine", "coherence_adj", "coherence_grad"]].mean()
        axes[1].plot(m.index, m["h_cosine"], "-o", color=f"C{i}", ms=3, label=f"r = {r:g}")
        axes[2].plot(m.index, m["coherence_adj"], "-o", color=f"C{i}", ms=3, label=f"adjustment, r = {r:g}")
        axes[2].plot(m.index, m["coherence_grad"], ":", color=f"C{i}")
    axes[1].set(xlabel="epoch", ylabel="mean pairwise cosine of h's outputs", ylim=(-0.05, 1.05))
    axes[1].legend(fontsize=7)
    axes[2].set(xlabel="epoch", ylabel="coherence over the epoch (dotted: gradient)", ylim=(0, 1.05))
    axes[2].legend(fontsize=6)
    fig.tight_layout()
    show(fig, "mechanism" if normalize == "sample" else f"mechanism_{normalize}", folder)


def show_verdicts(verdicts: pd.DataFrame, metric: str, name: str, folder: str = OUT) -> None:
    """A forest plot of ``metric``'s comparisons: one row per treatment, one panel per control
    (treatment - control, mean with its 95% interval, the margin shaded, the verdict written at
    the right). Symmetric-log x axis: diverged seeds make some differences huge."""
    import matplotlib.pyplot as plt

    from galcore.experiments.harness.plots import show

    v = verdicts[verdicts["metric"] == metric]
    controls = list(dict.fromkeys(v["control"]))
    arms = list(dict.fromkeys(v["arm"]))
    fig, axes = plt.subplots(1, len(controls), figsize=(4.2 * len(controls), 0.32 * len(arms) + 1.2), sharey=True,
                             squeeze=False)
    for ax, c in zip(axes[0], controls, strict=True):
        rows = v[v["control"] == c].set_index("arm")
        m = float(rows["margin"].iloc[0])
        ax.axvspan(-m, m, color="C2", alpha=0.15, lw=0)
        ax.axvline(0, color="k", lw=0.8)
        for i, arm in enumerate(arms):
            if arm not in rows.index:
                continue
            r = rows.loc[arm]
            ax.errorbar([r["mean_diff"]], [i], xerr=[[r["mean_diff"] - r["low"]], [r["high"] - r["mean_diff"]]],
                        fmt="s", color="C3" if r["verdict"] == "worse" else "C0", capsize=3, ms=4)
            ax.annotate(r["verdict"], (1.0, i), xycoords=("axes fraction", "data"), xytext=(4, 0),
                        textcoords="offset points", va="center", fontsize=7)
        ax.set_xscale("symlog", linthresh=m)
        top = float(np.nanmax(np.abs(rows[["low", "high"]].to_numpy(dtype=float)))) if len(rows) else m
        lo, hi = int(np.floor(np.log10(m))), int(np.ceil(np.log10(max(top, m))))
        decades = list(range(lo + 1, hi + 1, max(1, (hi - lo) // 3 + 1))) or [lo + 1]  # none inside the linear band
        ax.set_xticks([0.0] + [sign * 10.0**d for d in decades for sign in (-1, 1)])
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(f"vs {c}", fontsize=9)
        ax.set_xlabel(f"{metric}: treatment - control")
    axes[0][0].set_yticks(range(len(arms)))
    axes[0][0].set_yticklabels(arms, fontsize=8)
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    show(fig, f"{name}_{metric}", folder)


