"""Figures for the theory notebook (the 3D toy, the Taylor illustrations, the tiny classifier).

Every function returns a matplotlib ``Figure`` (or writes a GIF) and touches no global state
beyond creating that figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from galcore.experiments.harness.progress import progress
from galcore.experiments.theory.surface import START, ToyRun, local_minima, surface_grid
from galcore.experiments.theory.toy_taylor import TaylorGrid, TaylorLine

__all__ = [
    "animate_toy",
    "plot_classifier",
    "plot_remainder_vs_step",
    "plot_surface_3d",
    "plot_taylor_grid",
    "plot_taylor_line",
    "plot_toy_losses",
    "plot_toy_remainders",
    "plot_toy_trajectories",
]

PLAIN_COLOR, GAL_COLOR = "tab:blue", "tab:red"


def plot_surface_3d(lim: float = 1.5, n: int = 121) -> Figure:
    """The surface as a 3D plot, with the start point and the local minima inside the box."""
    X, Y, Z = surface_grid(lim, n)
    fig = plt.figure(figsize=(6.5, 5))
    ax = fig.add_subplot(111, projection="3d")
    ax.plot_surface(X, Y, Z, cmap="viridis", linewidth=0, antialiased=True, alpha=0.85)
    m = local_minima()
    m = m[(np.abs(m[:, 0]) <= lim) & (np.abs(m[:, 1]) <= lim)]
    ax.scatter(m[:, 0], m[:, 1], m[:, 2], color="white", edgecolor="k", s=30, depthshade=False, label="local minima")
    import torch

    from galcore.experiments.theory.surface import surface

    z0 = float(surface(torch.tensor(START, dtype=torch.float64)))
    ax.scatter([START[0]], [START[1]], [z0], color="red", s=40, depthshade=False, label="start (0.75, 1.0)")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("z")
    ax.view_init(elev=45, azim=-60)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("z(x, y) = -sin(x²)cos(3y²)exp(-(xy)²) - exp(-(x+y)²)", fontsize=9)
    return fig


def _contour(ax: Any, lim: float = 1.5, n: int = 201) -> None:
    X, Y, Z = surface_grid(lim, n)
    ax.contourf(X, Y, Z, levels=30, cmap="viridis", alpha=0.8)
    ax.contour(X, Y, Z, levels=30, colors="k", linewidths=0.2, alpha=0.5)
    m = local_minima()
    m = m[(np.abs(m[:, 0]) <= lim) & (np.abs(m[:, 1]) <= lim)]
    ax.scatter(m[:, 0], m[:, 1], marker="x", color="white", s=25, zorder=4)
    ax.scatter([START[0]], [START[1]], marker="o", color="yellow", edgecolor="k", s=30, zorder=5)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")


#: colour of each variant of a toy run (:attr:`ToyRun.label`)
VARIANT_COLORS = {"plain": PLAIN_COLOR, "GAL (mean)": GAL_COLOR, "GAL (sum)": "tab:purple"}
VARIANT_STYLES = {"plain": "-", "GAL (mean)": "--", "GAL (sum)": ":"}


def _panels(k: int, height: float) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, height), squeeze=False)
    return fig, axes[0]


def plot_toy_trajectories(runs: Mapping[str, Sequence[ToyRun]], lim: float = 1.5, n: int = 201) -> Figure:
    """One contour panel per optimizer with the trajectory of every variant (plain, GAL mean,
    GAL sum) and its end point.

    ``runs``: ``{optimizer label: [run, ...]}``; ``n``: contour grid points per side.
    """
    fig, axes = _panels(len(runs), 3.4)
    for ax, (label, group) in zip(axes, runs.items(), strict=True):
        _contour(ax, lim, n)
        for run in group:
            p, color = run.positions, VARIANT_COLORS.get(run.label, "k")
            ax.plot(p[:, 0], p[:, 1], VARIANT_STYLES.get(run.label, "-"), color=color, lw=1.3,
                    label=f"{run.label}: z={run.final_loss:.3f}")
            ax.scatter(p[-1, 0], p[-1, 1], color=color, edgecolor="k", s=30, zorder=6)
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=6.5, loc="lower left")
    fig.tight_layout()
    return fig


def plot_toy_losses(runs: Mapping[str, Sequence[ToyRun]]) -> Figure:
    """z per step for every variant, one panel per optimizer."""
    fig, axes = _panels(len(runs), 2.8)
    for ax, (label, group) in zip(axes, runs.items(), strict=True):
        for run in group:
            ax.plot(run.losses, VARIANT_STYLES.get(run.label, "-"), color=VARIANT_COLORS.get(run.label, "k"),
                    label=run.label)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("z")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_toy_remainders(runs: Mapping[str, Sequence[ToyRun]]) -> Figure:
    """|Taylor remainder r1| of every real step (float64), every variant, log scale."""
    fig, axes = _panels(len(runs), 2.8)
    for ax, (label, group) in zip(axes, runs.items(), strict=True):
        for run in group:
            if run.step_r1 is not None:
                ax.semilogy(np.abs(run.step_r1) + 1e-18, VARIANT_STYLES.get(run.label, "-"),
                            color=VARIANT_COLORS.get(run.label, "k"), lw=0.9, label=run.label)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("|remainder| of the real step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_taylor_line(line: TaylorLine, title: str = "") -> Figure:
    """True loss along a step against the first- and second-order Taylor models."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(line.ts, line.true, "k-", lw=2, label="true f(w + t d)")
    ax.plot(line.ts, line.first, "--", color="tab:orange", label="first order")
    ax.plot(line.ts, line.second, ":", color="tab:green", lw=2, label="second order")
    ax.fill_between(line.ts, line.first, line.true, color="tab:orange", alpha=0.15, label="remainder r1")
    ax.set_xlabel("t (step = t · d)")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_remainder_vs_step(etas: np.ndarray, r1: np.ndarray, r2: np.ndarray, slopes: Sequence[float] = ()) -> Figure:
    """|r1| and |r2| against the step size on log-log axes (slopes 2 and 3 expected)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    s = list(slopes) + [float("nan")] * (2 - len(slopes))
    ax.loglog(etas, np.abs(r1), "o-", label=f"|r1| (fitted slope {s[0]:.2f})")
    ax.loglog(etas, np.abs(r2), "s-", label=f"|r2| beyond 2nd order (slope {s[1]:.2f})")
    ax.set_xlabel("learning rate η (step = -η g)")
    ax.set_ylabel("|remainder|")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def plot_taylor_grid(grid: TaylorGrid, title: str = "") -> Figure:
    """Three panels: the true surface around w, the first-order remainder, the second-order one."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, data, name in (
        (axes[0], grid.true, "true f(w + d)"),
        (axes[1], grid.r1, "remainder of 1st-order model"),
        (axes[2], grid.r2, "remainder of 2nd-order model"),
    ):
        vmax = float(np.abs(data).max()) if name != "true f(w + d)" else None
        kw: dict[str, Any] = {"cmap": "RdBu_r", "vmin": -vmax, "vmax": vmax} if vmax else {"cmap": "viridis"}
        im = ax.pcolormesh(grid.DX, grid.DY, data, shading="auto", **kw)
        fig.colorbar(im, ax=ax, shrink=0.85)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("dx")
        ax.set_aspect("equal")
    axes[0].set_ylabel("dy")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_classifier(hists: pd.DataFrame) -> Figure:
    """Per epoch, mean over seeds (``hists`` from :func:`galcore.experiments.harness.run_arms`):
    GAL's acceptance rate, the relative remainder ``R / R_plain - 1`` of its tentative step, and
    every arm's test loss."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    colors = {"standard": PLAIN_COLOR, "gal frozen": "tab:gray", "gal learned": GAL_COLOR}
    for arm, grp in hists.groupby("arm", sort=False):
        per_epoch = grp.groupby("epoch").mean(numeric_only=True)
        c = colors.get(str(arm))
        if "remainder_abs" in per_epoch and per_epoch["remainder_abs"].notna().any():
            axes[0].plot(per_epoch.index, per_epoch["accept_rate"], "o-", ms=3, color=c, label=arm)
            rel = grp["remainder_abs"] / grp["remainder_plain_abs"] - 1.0
            axes[1].plot(per_epoch.index, rel.groupby(grp["epoch"]).mean(), "o-", ms=3, color=c, label=arm)
        axes[2].plot(per_epoch.index, per_epoch["test_loss"], "-", color=c, label=arm)
    axes[0].set_ylabel("acceptance rate")
    axes[0].set_ylim(-0.05, 1.05)
    axes[1].axhline(0, color="k", lw=0.6)
    axes[1].set_ylabel("R / R_plain - 1 (tentative step)")
    axes[2].set_ylabel("test loss")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def animate_toy(runs: Sequence[ToyRun], path: str | Path, frames: int = 60, fps: int = 12, lim: float = 1.5) -> Path:
    """Write a GIF of the runs' trajectories (e.g. plain and GAL) moving on the contour plot
    (matplotlib's PillowWriter), with a progress bar over the frames."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    if not runs:
        raise ValueError("runs: give at least one ToyRun to animate")
    path = Path(path)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    _contour(ax, lim)
    T = max(len(r.positions) for r in runs)
    idx = np.unique(np.linspace(0, T - 1, frames).round().astype(int))
    lines = []
    for run in runs:
        color = VARIANT_COLORS.get(run.label, "k")
        (ln,) = ax.plot([], [], VARIANT_STYLES.get(run.label, "-"), color=color, lw=1.5, label=run.label)
        (pt,) = ax.plot([], [], "o", color=color, mec="k", ms=6)
        lines.append((run, ln, pt))
    ax.legend(fontsize=8, loc="lower left")
    title = ax.set_title("")

    def update(i: int) -> list[Any]:
        arts: list[Any] = []
        for run, ln, pt in lines:
            j = min(i, len(run.positions) - 1)
            ln.set_data(run.positions[: j + 1, 0], run.positions[: j + 1, 1])
            pt.set_data([run.positions[j, 0]], [run.positions[j, 1]])
            arts += [ln, pt]
        title.set_text(f"{runs[0].setting.label}: step {i}")
        return [*arts, title]

    anim = FuncAnimation(fig, update, frames=list(idx), blit=False)
    bar = progress(total=len(idx), desc="GIF frames", unit="frame")
    try:
        anim.save(str(path), writer=PillowWriter(fps=fps), progress_callback=lambda i, n: bar.update(1))
    finally:
        bar.close()
        plt.close(fig)
    return path
