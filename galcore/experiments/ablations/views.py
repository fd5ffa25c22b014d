"""Notebook 05's tables: the setup, results, mechanism and verdict views, and ``summary.csv``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from galcore.adjuster import release_hidden
from galcore.experiments.ablations.plan import (
    MARGIN_ERROR,
    OUT,
    split_label,
)
from galcore.experiments.harness import Setup

__all__ = ["VERDICT_COLUMNS", "mechanism_view", "results_view", "save_summary", "setup_table", "summary_frame", "verdict_view"]


def _count(values: pd.Series) -> str:
    return f"{int(values.sum())}/{len(values)}"


def setup_table(s: Setup) -> pd.DataFrame:
    """The setup in one row per item (values read from ``s``)."""
    model = s.model_fn()
    b = s.base
    items = {
        "data": f"{s.data.name}: {len(s.data.x_train)} train / {len(s.data.x_test)} test, {s.data.num_outputs} classes",
        "model": f"{b.model} ({sum(p.numel() for p in model.parameters())} parameters)",
        "optimizer": f"{b.optimizer} lr {b.lr:g} {dict(b.optimizer_kwargs)}, batch {b.batch_size}, {b.epochs} epochs",
        "seeds": f"{len(s.seeds)} ({', '.join(map(str, s.seeds))})",
        "h": "the release's linear stack " + "-".join(map(str, (10, *release_hidden(10), 10))) + ", seed 10000 + seed",
        "margins": f"test error {MARGIN_ERROR} points; test NLL: that margin times the error-NLL slope across the standard seeds",
    }
    return pd.DataFrame({"": list(items), "value": list(items.values())}).set_index("")


def _with_labels(finals: pd.DataFrame) -> pd.DataFrame:
    parts = pd.DataFrame([split_label(a) for a in finals["arm"]], index=finals.index)
    return pd.concat([finals, parts], axis=1)


def results_view(finals: pd.DataFrame) -> pd.DataFrame:
    """One row per arm: test NLL (median over seeds: a diverged seed makes the mean
    meaningless) and test error (mean), acceptance (mean), the highest fractions of rejected
    steps and of fault fallbacks over seeds, |R_gal|/|R_plain|, h's
    drift beside the drift weight decay alone would give, the RMS of h's gradient, and the
    diverged seeds (k/n). Columns a study did not record are left out."""
    g = finals.groupby("arm", sort=False)
    cols = {
        "test NLL (median)": ("test_loss", "median"), "test error %": ("test_error", "mean"),
        "accepted": ("accept_rate_mean", "mean"), "rejected (highest)": ("rejected_rate", "max"),
        "faults (highest)": ("fallback_rate", "max"),
        "|R_gal|/|R_plain|": ("remainder_ratio", "mean"), "h drift": ("h_drift", "mean"),
        "decay-only drift": ("decay_drift", "mean"), "h grad RMS": ("h_grad_rms_mean", "mean"),
    }
    out = pd.DataFrame({name: g[col].agg(how) for name, (col, how) in cols.items() if col in finals.columns})
    out["diverged"] = g["diverged"].agg(_count)
    return out


def mechanism_view(finals: pd.DataFrame) -> pd.DataFrame:
    """Per arm (means over seeds): the perturbation ratio at the first step and over training
    (also divided by r), h's pairwise cosine, the coherence of the adjustment's and the
    gradient's parameter-space parts over an epoch, their net ratio, the output gain and the
    RMS of h's gradient."""
    f = _with_labels(finals[finals["arm"] != "standard"])
    g = f.groupby("arm", sort=False)
    r = g["ratio"].first()
    return pd.DataFrame({
        "r": r,
        "pert ratio, step 1": g["pert_ratio_init"].mean(),
        "  / r": g["pert_ratio_init"].mean() / r,
        "pert ratio, training": g["pert_ratio_mean"].mean(),
        "h cosine, step 1": g["h_cosine_init"].mean(),
        "h cosine, training": g["h_cosine_mean"].mean(),
        "coherence adj": g["coherence_adj_mean"].mean(),
        "coherence grad": g["coherence_grad_mean"].mean(),
        "net ratio": g["net_ratio_mean"].mean(),
        "net ratio / r": g["net_ratio_mean"].mean() / r,
        "output gain (median)": g["output_gain_mean"].median(),
        "h grad RMS": g["h_grad_rms_mean"].mean(),
    })


VERDICT_COLUMNS = ["setting", "metric", "n", "mean_control", "mean_diff", "low", "high", "mde", "margin", "verdict",
                   "seeds_needed"]


def verdict_view(verdicts: pd.DataFrame) -> pd.DataFrame:
    """The verdict rows with the columns a reader needs, test NLL rows first."""
    v = verdicts[VERDICT_COLUMNS].copy()
    return v.sort_values("metric", kind="stable", key=lambda m: m != "test_loss").reset_index(drop=True)


def _headline(study: str, v: pd.DataFrame) -> pd.DataFrame:
    """The comparisons summary.csv keeps: each study's headline (the notebook shows all)."""
    if study == "dose":
        return v[v["control"] == "standard"]
    if study == "batch":
        return v[v["control"] != "standard"]
    return v


def summary_frame(results: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]], outputs: int = 10) -> pd.DataFrame:
    """summary.csv's rows: each study's headline comparisons (dose: vs the standard method;
    batch: vs the same arm normalised per sample; the others: all) with the harness's compare
    columns, ``outputs`` (C) and the treatment's mean acceptance and diverged seeds."""
    frames = []
    for study, (finals, verdicts) in results.items():
        v = _headline(study, verdicts).copy()
        acc = finals.groupby("arm")["accept_rate_mean"].mean() if "accept_rate_mean" in finals else pd.Series(dtype=float)
        div = finals.groupby("arm")["diverged"].agg(_count)
        v["outputs"] = outputs
        v["accept_rate"] = v["arm"].map(acc)
        v["diverged"] = v["arm"].map(div)
        frames.append(v)
    return pd.concat(frames, ignore_index=True)


def save_summary(results: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]], folder: str = OUT) -> Any:
    """Write :func:`summary_frame` to ``results/<folder>/summary.csv``; returns the path."""
    from galcore.experiments.harness.results import save_table

    return save_table(summary_frame(results), "summary", folder)


