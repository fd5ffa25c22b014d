"""The theory notebook's figures draw what they are given (one line per run and variant)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from galcore.experiments.theory import toy_plots
from galcore.experiments.theory.surface import run_toy

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def runs() -> dict[str, list]:
    return {"GD": [run_toy("gd", steps=4, **kw) for kw in ({"gal": False}, {"first_order": "mean"}, {"first_order": "sum"})]}


def test_trajectory_loss_and_remainder_panels_have_one_line_per_variant(runs: dict[str, list]) -> None:
    for fn in (toy_plots.plot_toy_trajectories, toy_plots.plot_toy_losses, toy_plots.plot_toy_remainders):
        fig = fn(runs) if fn is not toy_plots.plot_toy_trajectories else fn(runs, n=21)
        ax = fig.axes[0]
        labels = [line.get_label() for line in ax.get_lines()]
        assert sum(any(v in lab for v in ("plain", "GAL (mean)", "GAL (sum)")) for lab in labels) == 3
        plt.close(fig)
    fig = toy_plots.plot_toy_trajectories(runs, n=21)
    xy = fig.axes[0].get_lines()[0].get_xydata()
    np.testing.assert_allclose(xy, runs["GD"][0].positions)
    plt.close(fig)


def test_animation_writes_a_gif(runs: dict[str, list], tmp_path: Path) -> None:
    path = toy_plots.animate_toy(runs["GD"], tmp_path / "toy.gif", frames=3)
    assert path.read_bytes()[:6] in (b"GIF87a", b"GIF89a")
    with pytest.raises(ValueError, match="runs"):
        toy_plots.animate_toy([], tmp_path / "none.gif")


def test_classifier_panels_follow_the_history() -> None:
    hists = pd.DataFrame({
        "arm": ["standard"] * 2 + ["gal learned"] * 2,
        "seed": [0] * 4,
        "epoch": [1, 2, 1, 2],
        "test_loss": [1.0, 0.5, 0.9, 0.4],
        "accept_rate": [np.nan, np.nan, 1.0, 0.5],
        "remainder_abs": [np.nan, np.nan, 1.0, 3.0],
        "remainder_plain_abs": [np.nan, np.nan, 2.0, 2.0],
    })
    fig = toy_plots.plot_classifier(hists)
    acc, rel, loss = fig.axes
    assert len(acc.get_lines()) == 1 and len(loss.get_lines()) == 2
    np.testing.assert_allclose(rel.get_lines()[0].get_ydata(), [-0.5, 0.5])
    plt.close(fig)
