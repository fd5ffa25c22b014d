"""Notebook 02's figures: learning curves and acceptance rates, mean and 95% band over seeds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["plot_acceptance", "plot_learning_curves"]


def _band(ax: Any, frame: pd.DataFrame, x: str, y: str, label: str, color: Any = None, level: float = 0.95) -> None:
    """Mean over seeds with a t confidence band."""
    from scipy import stats as sps

    g = frame.groupby(x)[y]
    mean, n = g.mean(), g.count()
    half = g.std(ddof=1) / np.sqrt(n) * sps.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1))
    (line,) = ax.plot(mean.index, mean.values, label=label, color=color)
    ax.fill_between(mean.index, (mean - half).values, (mean + half).values, alpha=0.2, color=line.get_color())


def plot_learning_curves(hists: pd.DataFrame, data: str, metric: str = "test_error") -> Any:
    """One panel per optimizer: ``metric`` against passes over the training set, every arm,
    mean and 95% band over seeds."""
    import matplotlib.pyplot as plt

    h = hists[hists["data"] == data]
    opts = list(dict.fromkeys(h["optimizer"]))
    fig, axes = plt.subplots(1, len(opts), figsize=(3.8 * len(opts), 3.2), squeeze=False)
    for ax, opt in zip(axes[0], opts, strict=True):
        for i, arm in enumerate(dict.fromkeys(h["arm"])):
            _band(ax, h[(h["optimizer"] == opt) & (h["arm"] == arm)], "passes", metric, arm, f"C{i}")
        ax.set_title(f"{data}: {opt}")
        ax.set_xlabel("passes over the training set")
        if metric == "test_error":
            ax.set_yscale("log")
    axes[0][0].set_ylabel(metric + (" (%)" if metric.endswith("error") else ""))
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_acceptance(hists: pd.DataFrame) -> Any:
    """Acceptance rate of the adjustment per epoch, every GAL arm, mean and 95% band."""
    import matplotlib.pyplot as plt

    g = hists[hists["arm"] != "standard"].dropna(subset=["accept_rate"])
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for (data, opt, arm), frame in g.groupby(["data", "optimizer", "arm"], sort=False):
        _band(ax, frame, "passes", "accept_rate", f"{data} {opt} {arm}")
    ax.set_xlabel("passes over the training set")
    ax.set_ylabel("accepted steps (fraction)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig

