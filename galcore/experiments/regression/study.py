"""Regression with and without GAL (notebook 04): data with a validation split, the arms, what
h receives, the margin, the verdicts and the computed conclusion.

Two tasks, both embedded (no download):

- ``rotated_digits`` (C = 2 outputs): scikit-learn's 8x8 digits, each rotated by a random
  angle t (uniform in ``[-max_angle, max_angle]`` degrees); the model predicts
  ``(cos t, sin t)``. With two outputs GAL's per-sample normalisation
  ``a_i = r |g_i| h(x_i) / |h(x_i)|`` keeps one degree of freedom, the direction of a_i, so the
  remainder objective has a gradient with respect to h's weights (:func:`h_probe` measures it).
- ``diabetes`` (C = 1 output): scikit-learn's diabetes table, the degenerate case. With one
  output ``h(x_i) / |h(x_i)|`` is a sign, whose derivative is 0: h receives no gradient, and
  GAL is a fixed random rescaling of each sample's gradient by ``1 + r`` or ``1 - r``.

Every split is made before training: train / validation (the epoch compared is the one with the
lowest validation loss, ``TrainConfig.select="val_loss"``) / test. Runs go through the one
harness (:func:`galcore.experiments.harness.run_arms`, comparisons by
:func:`galcore.experiments.harness.compare`, margins by
:func:`galcore.experiments.harness.margins.margin_for`). Controls beside GAL: ``gal_frozen``
(h kept at its random initialisation), ``placebo`` (a random direction per sample per step in
place of h) and, for SGD with momentum, ``lr_scaled`` (the standard arm at
``lr x (1 - r)``: the gradient-scale change GAL's adjustment could mimic). The placebo is the
harness's (:func:`galcore.experiments.harness.placebo.placebo_arm`). The words of the
conclusion: :mod:`.text`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pandas as pd
from torch import nn

from galcore.config import GALConfig
from galcore.experiments import harness
from galcore.experiments.harness import Setup, TrainConfig, margins
from galcore.experiments.harness.models import MLP, SmallCNN
from galcore.experiments.harness.placebo import placebo_arm
from galcore.experiments.harness.profile import Profile, choose
from galcore.experiments.regression.data import load

__all__ = [
    "ARMS",
    "COMPARISONS",
    "CONTROL_ARMS",
    "ETA",
    "H_LR",
    "H_OPTIMIZER",
    "LR",
    "OPTIMIZERS",
    "RATIO",
    "RELEASE_ERRORS",
    "RELEASE_RATIOS",
    "SUMMARY",
    "TAIL",
    "arms_for",
    "compare_task",
    "default_setup",
    "gal_config",
    "release_gains",
    "remainder_margin",
    "remainder_ratio",
    "run_task",
    "scale_for",
    "summary_table",
    "verdict_rows",
]

OPTIMIZERS = ("adam", "momentum")
#: the model's learning rate per optimizer (Adam's defaults otherwise; SGD with momentum 0.9)
LR: dict[str, float] = {"adam": 1e-3, "momentum": 0.01}

#: GAL's ratio r: each sample's adjustment has norm r |g_i|
RATIO = 0.1
#: the tentative step's size eta = lr * scale that h is trained on: scale = ETA / lr per
#: optimizer. h's objective is that step's remainder, which grows as eta^2 (exactly, for MSE):
#: at scale 1 its gradient is far below Adam's eps (h_probe measures both), so h's Adam would
#: barely move it. The model's update does not depend on scale (only a's direction does, through
#: what h learns); for MSE the tentative step overshoots only beyond eta = B * C.
ETA = 1.0
#: how h learns: its own Adam (scale-free steps, like the release's ImageNet code, which gives h
#: its own optimizer and learning rate ``gal_lr``)
H_OPTIMIZER = "adam"
H_LR = 1e-2
#: the arms: the standard method, GAL with h learning, GAL with h frozen at its random
#: initialisation (what GAL is when h learns nothing), the placebo (a random direction per sample
#: per step in place of h, same norm and acceptance rule) and, for SGD with momentum only,
#: ``lr_scaled`` (the standard arm at lr x (1 - r))
ARMS = ("standard", "gal", "gal_frozen", "placebo", "lr_scaled")
#: the controls GAL is compared with, in the conclusion's order
CONTROL_ARMS = ("standard", "placebo", "gal_frozen", "lr_scaled")
#: (treatment, control, metric) of every comparison. GAL - placebo is the estimand that isolates
#: h; GAL - lr_scaled asks whether GAL does more than a smaller learning rate would.
#: ``remainder_ratio`` is the mechanism: does the learned h make the adjusted step's remainder
#: smaller than a frozen random h (or random directions) does?
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("gal", "standard", "test_rmse"),
    ("gal_frozen", "standard", "test_rmse"),
    ("placebo", "standard", "test_rmse"),
    ("lr_scaled", "standard", "test_rmse"),
    ("gal", "placebo", "test_rmse"),
    ("gal", "gal_frozen", "test_rmse"),
    ("gal", "lr_scaled", "test_rmse"),
    ("gal", "gal_frozen", "remainder_ratio"),
    ("gal", "placebo", "remainder_ratio"),
)

#: GAL's ratio in the release, per setting (the paper and its release)
RELEASE_RATIOS: dict[str, float] = {"CIFAR-10": 1e-3, "CIFAR-100": 1e-2, "ImageNet": 1e-3}
#: the release's test errors (%), (standard, GAL), per dataset and optimizer (the paper and its release); ImageNet
#: top-1 / top-5 errors are 100 - accuracy
RELEASE_ERRORS: dict[tuple[str, str], tuple[float, float]] = {
    ("CIFAR-10", "SGD"): (1.86, 1.78),
    ("CIFAR-10", "Lookahead(SGD)"): (2.03, 1.89),
    ("CIFAR-10", "AdaBound"): (3.17, 3.03),
    ("CIFAR-100", "SGD"): (11.89, 11.26),
    ("CIFAR-100", "Lookahead(SGD)"): (11.72, 11.42),
    ("CIFAR-100", "AdaBound"): (14.45, 14.06),
    ("ImageNet", "RMSprop top-1"): (100 - 77.89, 100 - 78.04),
    ("ImageNet", "RMSprop top-5"): (100 - 93.91, 100 - 93.95),
}


# -- setup and arms -------------------------------------------------------------------------
def _mlp(in_features: int, outputs: int) -> nn.Module:
    return MLP(in_features, outputs, hidden=(64, 64))


def _cnn(size: int, outputs: int) -> nn.Module:
    return SmallCNN(in_channels=1, num_outputs=outputs, size=size)


def default_setup(profile: Profile | None = None, dataset: str = "diabetes") -> Setup:
    """The experiment for one dataset (default: the one-output ``diabetes``, the smallest): data,
    model factory, the standard arm's config (MSE,
    Adam at :data:`LR`, the epoch with the lowest validation loss reported) and the seeds
    (3 in smoke; 7 for ``rotated_digits`` and 10 for ``diabetes`` in default; 10 in full)."""
    data = load(dataset, profile)
    c = data.num_outputs
    if dataset == "rotated_digits":
        size = data.x_train.shape[-1]
        model_fn: Callable[[], nn.Module] = functools.partial(_cnn, size, c)
        model_name = f"smallcnn{size}-{c}"
        epochs, batch = choose(2, 20, 30, profile=profile), 64
    else:
        model_fn = functools.partial(_mlp, data.x_train.shape[1], c)
        model_name = f"mlp{data.x_train.shape[1]}-64-64-{c}"
        epochs, batch = choose(3, 30, 30, profile=profile), 32
    # the two-output task's runs cost about 10x the one-output task's: 7 seeds in default keep the
    # notebook's CPU time about where it was with 10 seeds and three arms (its test-RMSE mde at 8 seeds
    # was under half the margin; the placebo and lr x (1 - r) arms are where the added CPU goes)
    seeds = tuple(range(choose(3, 7 if dataset == "rotated_digits" else 10, 10, profile=profile)))
    base = TrainConfig(
        model=model_name, data=data.name, task="regression", loss="mse", optimizer="adam", lr=LR["adam"],
        epochs=epochs, batch_size=batch, seed=seeds[0], select="val_loss",
    )
    return Setup(data=data, model_fn=model_fn, base=base, seeds=seeds)


def scale_for(optimizer: str) -> float:
    """GAL's ``scale`` for ``optimizer``: ``ETA / LR[optimizer]`` (the tentative step is eta)."""
    if optimizer not in LR:
        raise ValueError(f"optimizer must be one of {', '.join(LR)}, got {optimizer!r}")
    return ETA / LR[optimizer]


def gal_config(ratio: float = RATIO, scale: float = 1.0, **kw: Any) -> GALConfig:
    """GAL's options in this notebook: ``ratio``, ``scale`` and ``track_plain=True`` (each step
    also records the remainder the plain step would have had, for the remainder ratio). The
    rest are GAL's defaults (release-shaped linear h, exact first-order term, accept only a
    step that does not raise the batch loss, float64 arithmetic)."""
    return GALConfig(ratio=ratio, scale=scale, track_plain=True, **kw)


def arms_for(setup: Setup, optimizer: str = "adam", gal: GALConfig | Mapping[str, Any] | None = None) -> dict[str, TrainConfig]:
    """:data:`ARMS` for one optimizer (lr from :data:`LR`; GAL's options ``gal``, default
    :func:`gal_config` with :func:`scale_for` the optimizer): ``standard``; ``gal`` (h trained by
    its own :data:`H_OPTIMIZER` at :data:`H_LR`); ``gal_frozen`` (h kept at its random
    initialisation, drawn exactly as in ``gal``); ``placebo`` (the harness's placebo of ``gal``:
    h a seeded random direction per sample per step, nothing trained); and for ``momentum``
    ``lr_scaled``, the standard arm at ``lr x (1 - r)``."""
    if optimizer not in LR:
        raise ValueError(f"optimizer must be one of {', '.join(LR)}, got {optimizer!r}")
    base = replace(setup.base, optimizer=optimizer, lr=LR[optimizer], gal=None)
    opts = gal_config(scale=scale_for(optimizer)) if gal is None else GALConfig.from_any(gal)
    arms = {
        "standard": base,
        "gal": replace(base, gal=opts, h_optimizer=H_OPTIMIZER, h_lr=H_LR),
        "gal_frozen": replace(base, gal=opts, frozen_h=True),
    }
    arms["placebo"] = placebo_arm(arms["gal"])
    if optimizer == "momentum":
        arms["lr_scaled"] = replace(base, lr=base.lr * (1 - opts.ratio))
    return arms


def _dataset_of(setup: Setup) -> str:
    """The dataset key: data names start with it and a dash."""
    return setup.data.name.split("-")[0]


#: the mechanism is compared over the last quarter of the epochs: h starts random and learns
#: during the run, so the ratio early on says little about what it has learned
TAIL = 0.25


def remainder_ratio(hists: pd.DataFrame, tail: float = TAIL) -> pd.Series:
    """Per GAL run (arm, seed and any grouping columns present), over its last ``tail`` fraction
    of epochs (at least the last one; ``tail=1``: all): the mean |remainder| of the adjusted step
    divided by the mean of the plain step's, on the same batches. 1 = the adjustment leaves the
    step's first-order error as it was; for MSE a random direction gives about ``1 + r^2`` and h
    pointing every a_i against g_i gives ``(1 - r)^2``."""
    if not 0 < tail <= 1:
        raise ValueError(f"tail must be in (0, 1], got {tail}")
    keys = [k for k in ("dataset", "optimizer", "arm", "seed") if k in hists.columns]
    h = hists.dropna(subset=["remainder_abs", "remainder_plain_abs"])
    last = h.groupby(keys, sort=False)["epoch"].transform("max")
    h = h[h["epoch"] > last - max(1, round(tail * last.max()))]
    g = h.groupby(keys, sort=False)
    return g["remainder_abs"].mean() / g["remainder_plain_abs"].mean()


def run_task(
    setup: Setup, optimizers: Sequence[str] = OPTIMIZERS, *, cache: bool = True, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every arm of :func:`arms_for` for every optimizer and seed of ``setup`` (same seeds,
    initial weights and batches for every arm), through :func:`harness.run_arms`.

    Returns ``(finals, histories)`` with ``dataset``, ``outputs`` and ``optimizer`` columns;
    ``finals`` (one row per run, metrics of the epoch with the lowest validation loss) also
    has, for GAL runs, ``remainder_ratio`` (:func:`remainder_ratio` over the last :data:`TAIL`
    of the epochs, what the comparisons use) and ``remainder_ratio_all`` (over every epoch)."""
    dataset = _dataset_of(setup)
    finals, hists = [], []
    for opt in optimizers:
        f, h = harness.run_arms(arms_for(setup, opt), setup.seeds, setup.data, setup.model_fn, cache=cache,
                                progress=progress)
        for df in (f, h):
            df.insert(0, "optimizer", opt)
            df.insert(0, "outputs", setup.data.num_outputs)
            df.insert(0, "dataset", dataset)
        finals.append(f)
        hists.append(h)
    fin, his = pd.concat(finals, ignore_index=True), pd.concat(hists, ignore_index=True)
    for name, tail in (("remainder_ratio", TAIL), ("remainder_ratio_all", 1.0)):
        ratio = remainder_ratio(his, tail).rename(name)
        fin = fin.join(ratio, on=list(ratio.index.names))
    return fin, his


# -- margins and verdicts --------------------------------------------------------------------
def release_gains() -> pd.DataFrame:
    """The release's results as relative gains: ``(standard - GAL) / standard`` of the test
    error, per dataset and optimizer (:data:`RELEASE_ERRORS`); context for the margin, whose
    rule (:func:`galcore.experiments.harness.margins.margin_test_rmse`) reads the CIFAR-10 SGD
    row's gain relatively."""
    rows = [{"dataset": d, "optimizer": o, "standard": s, "gal": g, "relative_gain": (s - g) / s}
            for (d, o), (s, g) in RELEASE_ERRORS.items()]
    return pd.DataFrame(rows)


def remainder_margin(ratio: float = RATIO) -> float:
    """The remainder ratio's margin: 5% of what a perfect h could take off a random h's ratio
    (``(1 + r^2) - (1 - r)^2 = 2r``), i.e. ``0.1 r`` (a ratio, no units)."""
    if not (math.isfinite(ratio) and 0 < ratio < 1):
        raise ValueError(f"ratio must be in (0, 1), got {ratio!r}")
    return 0.05 * 2 * ratio


#: the label the control arm takes inside :func:`compare_task`'s call of :func:`harness.compare`
_CONTROL = "__control__"
#: :func:`harness.compare`'s columns in the metric's units (scaled back from relative units)
_SCALED = ["mean_control", "mean_treatment", "mean_diff", "low", "high", "tost_bound", "sd_diff", "mde", "margin",
           "effect"]
_GROUP = ["dataset", "outputs", "optimizer"]


def compare_task(
    finals: pd.DataFrame, comparisons: Sequence[tuple[str, str, str]] = COMPARISONS, *, ratio: float = RATIO
) -> pd.DataFrame:
    """Every comparison (treatment, control, metric) per dataset and optimizer, by
    :func:`harness.compare` (its columns: the paired difference over seeds, Holm-adjusted
    ``p_holm``, ``tost_bound``, ``mde``, ``margin``, ``verdict`` with its ``reason``, ``same_as``,
    ``seeds_needed`` at the margin). Lower is better for every metric here.

    Margins: test RMSE by :func:`margins.margin_for` (4.3% of the control's mean test RMSE);
    the remainder ratio by :func:`remainder_margin` of ``ratio`` (GAL's r).

    **The study** (Holm's family) is one dataset and one metric: every comparison of that
    metric on that dataset, over optimizers and controls, is adjusted together (a row whose arm
    repeats another's computation, ``same_as``, is left out of the family). To make it one call
    of :func:`harness.compare` although each control has its own margin, test RMSE enters it
    divided by the control's mean (the margin is then the same 4.3% everywhere; the p-values, the
    verdicts and the seeds needed do not change under that scaling) and the columns in RMSE
    units are scaled back. Rows gain ``dataset``, ``outputs``, ``optimizer``, ``setting``
    (``"<arm> vs <control>"``) and ``counted`` (see :func:`verdict_rows`)."""
    metrics = list(dict.fromkeys(m for _t, _c, m in comparisons))
    out = []
    for metric in metrics:
        if metric not in finals.columns:
            continue
        frames, scale, margin_abs = [], {}, {}
        controls = list(dict.fromkeys(c for _t, c, m in comparisons if m == metric))
        for keys, group in finals.groupby(_GROUP, sort=False):
            present = set(group["arm"])
            for control in controls:
                treats = [t for t, c, m in comparisons if m == metric and c == control and t in present
                          and group.loc[group["arm"] == t, metric].notna().any()]
                ctl = group[group["arm"] == control]
                if ctl.empty or not treats or ctl[metric].isna().all():
                    continue
                if metric == "test_rmse":
                    m = margins.margin_for(metric, ctl)
                    base, margin = float(m.detail["base"]), float(m.value)
                else:
                    base, margin = 1.0, remainder_margin(ratio)
                sub = group[group["arm"].isin([control, *treats])].copy()
                sub["arm"] = sub["arm"].where(sub["arm"] != control, _CONTROL)
                sub["vs"] = control
                sub["_value"] = sub[metric] / base
                frames.append(sub)
                scale[(*keys, control)], margin_abs[(*keys, control)] = base, margin
        if not frames:
            continue
        rel = {margin_abs[k] / scale[k] for k in scale}
        if max(rel) - min(rel) > 1e-12 * max(rel):
            raise AssertionError(f"{metric}: the margins are not one fraction of their control's mean: {sorted(rel)}")
        t = harness.compare(pd.concat(frames, ignore_index=True), "_value", control=_CONTROL, margin=min(rel),
                            lower_is_better=True, by=[*_GROUP, "vs"], study=["dataset"])
        keys = list(zip(*(t[c] for c in [*_GROUP, "vs"]), strict=True))
        factor = pd.Series([scale[k] for k in keys], index=t.index)
        for col in _SCALED:
            t[col] = t[col] * factor
        t["margin"] = [margin_abs[k] for k in keys]
        t["metric"], t["control"] = metric, t.pop("vs")
        out.append(t)
    if not out:
        raise ValueError("no comparison could be made: finals lacks the arms of every comparison")
    table = pd.concat(out, ignore_index=True)
    # rows in the order of the settings in finals, then of ``comparisons``
    groups = {k: i for i, k in enumerate(dict.fromkeys(zip(*(finals[c] for c in _GROUP), strict=True)))}
    order = {(t, c, m): i for i, (t, c, m) in enumerate(comparisons)}
    table["_g"] = [groups[k] for k in zip(*(table[c] for c in _GROUP), strict=True)]
    table["_o"] = [order[k] for k in zip(table["arm"], table["control"], table["metric"], strict=True)]
    table = table.sort_values(["_g", "_o"], kind="stable").drop(columns=["_g", "_o"])
    table.insert(len(_GROUP), "setting", table["arm"] + " vs " + table["control"])
    table["counted"] = verdict_rows(table)
    return table.reset_index(drop=True)


def verdict_rows(table: pd.DataFrame) -> pd.Series:
    """Which rows of :func:`compare_task` count as verdicts: two or more outputs (with one, h's
    direction is a sign, ±g, and GAL only rescales each sample's gradient: shown, not counted),
    not repeating another arm's computation (``same_as``) and not ``identical`` (the same
    computation as the control)."""
    return (table["outputs"] > 1) & (table["same_as"].fillna("") == "") & (table["verdict"] != "identical")


#: summary.csv's columns (the descriptors, then :func:`harness.compare`'s, then ``counted``)
SUMMARY = [
    "dataset", "outputs", "optimizer", "setting", "arm", "control", "metric", "n", "n_diverged", "mean_control",
    "mean_treatment", "mean_diff", "low", "high", "test", "p_value", "p_holm", "ci_excludes_0", "tost_p", "tost_bound",
    "sd_diff", "mde", "margin", "resolution", "verdict", "reason", "same_as", "seeds_needed", "counted",
]


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`compare_task`'s rows with :data:`SUMMARY`'s columns, for ``summary.csv``."""
    return table[SUMMARY].reset_index(drop=True)
