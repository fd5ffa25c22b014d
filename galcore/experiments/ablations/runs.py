"""Notebook 05's runs: every arm x seed of a study (traced), its verdicts, the tentative ray."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from galcore.experiments import harness
from galcore.experiments.ablations import mechanism
from galcore.experiments.ablations.plan import (
    MARGIN_ERROR,
    Study,
    loss_margin,
)
from galcore.experiments.harness import Data

__all__ = ["ray_table", "run_study", "verdicts"]


def run_study(study: Study, *, cache: bool = True, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run (or read from the cache) every arm of ``study`` on its seeds: output-space arms
    traced (:func:`galcore.experiments.ablations.mechanism.trace_arms`), parameter-space arms through
    :func:`galcore.experiments.harness.run_arms`. Returns ``(finals, histories)``."""
    s = study.setup
    traced = {k: v for k, v in study.arms.items() if v.space == "output"}
    plain = {k: v for k, v in study.arms.items() if v.space != "output"}
    finals, hists = mechanism.trace_arms(traced, s.seeds, s.data, s.model_fn, cache=cache, progress=progress)
    if plain:
        pf, ph = harness.run_arms(plain, s.seeds, s.data, s.model_fn, cache=cache, progress=progress)
        _add_step_counts(pf, ph, -(-len(s.data.x_train) // s.base.batch_size))
        pf["diverged"] = pf.apply(lambda row: float(mechanism.diverged(row, s.data.num_outputs)), axis=1)
        finals = pd.concat([finals, pf], ignore_index=True)
        hists = pd.concat([hists, ph], ignore_index=True)
    return finals, hists


def _add_step_counts(finals: pd.DataFrame, hists: pd.DataFrame, steps_per_epoch: int) -> None:
    """For runs of :func:`harness.run_arms` (no trace): ``rejected_rate``, ``fallback_rate``
    and ``remainder_ratio`` from their per-epoch history, as :func:`mechanism.trace` records
    them (in place)."""
    if "accept_rate" not in hists:
        return
    for i, row in finals.iterrows():
        h = hists[(hists["arm"] == row["arm"]) & (hists["seed"] == row["seed"])]
        if h["accept_rate"].isna().all():
            continue
        steps = steps_per_epoch * len(h)
        faults = float(h["fallbacks"].sum()) / steps
        finals.loc[i, "fallback_rate"] = faults
        finals.loc[i, "rejected_rate"] = 1.0 - float(h["accept_rate"].mean()) - faults
        if "remainder_plain_abs" in h:
            finals.loc[i, "remainder_ratio"] = float(h["remainder_abs"].mean() / h["remainder_plain_abs"].mean())


def verdicts(study: Study, finals: pd.DataFrame, *, margin_loss: float | None = None) -> pd.DataFrame:
    """Each comparison of ``study`` (:meth:`Study.comparisons`) on test NLL (margin
    :func:`loss_margin` of the study's control unless given) and test error (margin
    :data:`MARGIN_ERROR`): :func:`galcore.experiments.harness.compare`'s rows, with ``study``
    and ``setting`` (``"treatment vs control"``) columns first."""
    margin_loss = margin_loss if margin_loss is not None else loss_margin(finals, study.control)
    rows = []
    for metric, margin in (("test_loss", margin_loss), ("test_error", MARGIN_ERROR)):
        for arm, control in study.comparisons():
            sub = finals[finals["arm"].isin([arm, control])]
            rows.append(harness.compare(sub, metric, control=control, margin=margin, lower_is_better=True))
    out = pd.concat(rows, ignore_index=True)
    out.insert(0, "study", study.name)
    out.insert(1, "setting", out["arm"] + " vs " + out["control"])
    return out


def ray_table(models: Mapping[str, torch.nn.Module], data: Data, ratios: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0),
              lengths: Any = None, batch: int = 64) -> pd.DataFrame:
    """Where the loss rises along GAL's tentative ray x - t (g + a) (:func:`mechanism.tentative_ray`)
    on the first ``batch`` training images, for each model and ratio (h drawn with seed 10000):
    the fraction of step lengths t (default 33 values from 1e-2 to 1e6) at which the loss is
    above its value at t = 0, and the smallest such t (NaN: never)."""
    import torch.nn.functional as F

    from galcore.gal import GAL

    ts = np.logspace(-2, 6, 33) if lengths is None else np.asarray(lengths, dtype=float)
    x, y = data.x_train[:batch], data.y_train[:batch]
    rows = []
    for name, model in models.items():
        with torch.no_grad():
            out = model.eval()(x)
        for r in ratios:
            rise = mechanism.tentative_ray(GAL(data.num_outputs, ratio=r, seed=10_000), out,
                                           lambda o: F.cross_entropy(o, y), ts.tolist()).numpy()
            up = ts[rise > 0]
            rows.append({"model": name, "ratio r": r, "t with a rise": f"{int((rise > 0).sum())}/{len(ts)}",
                         "smallest such t": float(up.min()) if up.size else float("nan")})
    return pd.DataFrame(rows)

