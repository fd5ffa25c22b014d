"""Notebook 04's figures: rotated digits with their target direction, learning curves, the
remainder ratio of learned vs frozen h. Each returns a matplotlib figure."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

__all__ = ["plot_curves", "plot_examples", "plot_remainder_ratio"]


def plot_examples(x: Tensor, angles: Tensor, n: int = 8) -> Any:
    """The first ``n`` rotated digits (x (N, 1, s, s), angles (N,) degrees), each titled with its
    angle and with the target direction ``(cos t, sin t)`` drawn as an arrow. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(1.3 * n, 1.7))
    for i, ax in enumerate(np.atleast_1d(axes)):
        s = x.shape[-1]
        ax.imshow(x[i, 0], cmap="gray_r")
        t = math.radians(float(angles[i]))
        c = (s - 1) / 2
        ax.annotate("", xy=(c + 0.45 * s * math.cos(t), c - 0.45 * s * math.sin(t)), xytext=(c, c),
                    arrowprops={"arrowstyle": "->", "color": "tab:red", "lw": 1.5})
        ax.set_title(f"{float(angles[i]):+.0f}°", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


_COLORS = {"standard": "tab:blue", "gal": "tab:red", "gal_frozen": "tab:gray"}


def plot_curves(hists: pd.DataFrame, finals: pd.DataFrame, metric: str = "test_rmse") -> Any:
    """One panel per (dataset, optimizer): ``metric`` per epoch, mean over seeds, per arm, with
    each arm's mean selected epoch (lowest validation loss) marked. Returns the figure."""
    import matplotlib.pyplot as plt

    groups = list(hists.groupby(["dataset", "optimizer"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.1), squeeze=False)
    for ax, ((ds, opt), g) in zip(axes.flat, groups, strict=True):
        for arm, color in _COLORS.items():
            m = g[g["arm"] == arm].groupby("epoch")[metric].mean()
            if m.empty:
                continue
            ax.plot(m.index, m.to_numpy(), color=color, label=arm)
            sel = finals[(finals["dataset"] == ds) & (finals["optimizer"] == opt) & (finals["arm"] == arm)]
            if "best_epoch" in sel and len(sel):
                e = round(float(sel["best_epoch"].mean()))
                ax.plot([e], [m.loc[e]], "o", color=color, ms=5)
        ax.set_title(f"{ds} / {opt}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_remainder_ratio(hists: pd.DataFrame) -> Any:
    """Per (dataset, optimizer): epoch mean |remainder| of the adjusted step over the plain
    step's, mean over seeds, learned h vs frozen h. Returns the figure."""
    import matplotlib.pyplot as plt

    gal = hists[hists["arm"].isin(["gal", "gal_frozen"])].dropna(subset=["remainder_abs", "remainder_plain_abs"])
    groups = list(gal.groupby(["dataset", "optimizer"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.1), squeeze=False)
    for ax, ((ds, opt), g) in zip(axes.flat, groups, strict=True):
        for arm in ("gal", "gal_frozen"):
            a = g[g["arm"] == arm]
            ratio = (a["remainder_abs"] / a["remainder_plain_abs"]).groupby(a["epoch"]).mean()
            ax.plot(ratio.index, ratio.to_numpy(), color=_COLORS[arm], label=arm)
        ax.axhline(1.0, color="k", lw=0.7)
        ax.set_title(f"{ds} / {opt}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("|R adjusted| / |R plain|")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
