"""Figures for the notebooks: saved as PNG and shown inline, whatever the matplotlib backend.

:func:`show` is how every notebook figure leaves the code: it writes
``results/<folder>/<name>.png`` and, inside a Jupyter kernel, displays that same PNG as the
cell's output (so an executed notebook contains its figures even under a non-interactive
backend), then closes the figure. :func:`paired_differences` draws a comparison table's
per-seed differences with their interval, the equivalence margin and the verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from galcore.experiments.harness.progress import in_kernel
from galcore.experiments.harness.results import save_figure

__all__ = ["paired_differences", "show"]


def show(fig: Any, name: str, folder: str, *, dpi: int = 120) -> Path:
    """Save ``fig`` as ``results/<folder>/<name>.png``, display that PNG inline when running
    in a kernel, close the figure, and return the file's path."""
    import matplotlib.pyplot as plt

    path = save_figure(fig, name, folder, dpi=dpi)
    try:
        if in_kernel():
            from IPython.display import Image, display

            display(Image(data=path.read_bytes(), format="png"))
    finally:
        plt.close(fig)
    return path


def paired_differences(
    finals: pd.DataFrame,
    table: pd.DataFrame,
    metric: str,
    *,
    control: str = "standard",
    unit: str = "",
    ax: Any = None,
) -> Any:
    """Per-seed differences ``arm - control`` of ``metric`` (dots), their mean and interval
    (bar, from ``table``: :func:`galcore.experiments.harness.compare`'s rows), the band
    ``±margin`` and each row's verdict under its arm. Returns the figure."""
    import matplotlib.pyplot as plt

    missing = {"arm", "mean_diff", "low", "high", "margin", "verdict"} - set(table.columns)
    if missing:
        raise ValueError(f"table lacks columns {sorted(missing)}: pass harness.compare's output")
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.2 + 1.3 * max(len(table), 1), 3.2))
    else:
        fig = ax.figure
    base = finals[finals["arm"] == control].set_index("seed")[metric]
    arms: Sequence[str] = list(table["arm"])
    for i, (_, row) in enumerate(table.iterrows()):
        treat = finals[finals["arm"] == row["arm"]].set_index("seed")[metric]
        common = base.index.intersection(treat.index)
        d = (treat.loc[common] - base.loc[common]).to_numpy(dtype=float)
        jitter = np.linspace(-0.12, 0.12, len(d)) if len(d) > 1 else np.zeros(len(d))
        ax.plot(i + jitter, d, "o", color="0.6", ms=3.5, zorder=2)
        err = np.array([[row["mean_diff"] - row["low"]], [row["high"] - row["mean_diff"]]])
        ax.errorbar([i], [row["mean_diff"]], yerr=np.nan_to_num(err), fmt="s", color="C0", capsize=4, zorder=3)
        m = row["margin"]
        if np.isfinite(m) and m > 0:
            ax.fill_between([i - 0.35, i + 0.35], -m, m, color="C2", alpha=0.15, lw=0, zorder=1)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels([f"{a}\n{v}" for a, v in zip(arms, table["verdict"], strict=True)])
    ax.set_xlim(-0.6, len(arms) - 0.4)
    ax.set_ylabel(f"{metric}: arm - {control}" + (f" ({unit})" if unit else ""))
    fig.tight_layout()
    return fig
