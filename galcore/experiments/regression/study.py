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
:func:`galcore.experiments.harness.compare`).
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
from galcore.experiments.harness import Setup, TrainConfig
from galcore.experiments.harness.models import MLP, SmallCNN
from galcore.experiments.harness.profile import Profile, choose
from galcore.experiments.regression.data import load

__all__ = [
    "ARMS",
    "COMPARISONS",
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
    "conclusion",
    "default_setup",
    "gal_config",
    "margin_for",
    "margin_fraction",
    "release_gains",
    "remainder_ratio",
    "run_task",
    "scale_for",
    "summary_table",
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
#: the arms: the standard method, GAL with h learning, and GAL with h frozen at its random
#: initialisation (what GAL is when h learns nothing)
ARMS = ("standard", "gal", "gal_frozen")
#: (treatment, control, metric) of every comparison; ``remainder_ratio`` is the mechanism:
#: does the learned h make the adjusted step's remainder smaller than a random h does?
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("gal", "standard", "test_rmse"),
    ("gal_frozen", "standard", "test_rmse"),
    ("gal", "gal_frozen", "test_rmse"),
    ("gal", "gal_frozen", "remainder_ratio"),
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
    (3 in smoke, 10 in default and full)."""
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
    seeds = tuple(range(choose(3, 10, 10, profile=profile)))
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
    initialisation, drawn exactly as in ``gal``)."""
    if optimizer not in LR:
        raise ValueError(f"optimizer must be one of {', '.join(LR)}, got {optimizer!r}")
    base = replace(setup.base, optimizer=optimizer, lr=LR[optimizer], gal=None)
    opts = gal_config(scale=scale_for(optimizer)) if gal is None else GALConfig.from_any(gal)
    return {
        "standard": base,
        "gal": replace(base, gal=opts, h_optimizer=H_OPTIMIZER, h_lr=H_LR),
        "gal_frozen": replace(base, gal=opts, frozen_h=True),
    }


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


# -- margins, verdicts, conclusion ------------------------------------------------------------
def release_gains() -> pd.DataFrame:
    """The release's results as relative gains: ``(standard - GAL) / standard`` of the test
    error, per dataset and optimizer (:data:`RELEASE_ERRORS`)."""
    rows = [{"dataset": d, "optimizer": o, "standard": s, "gal": g, "relative_gain": (s - g) / s}
            for (d, o), (s, g) in RELEASE_ERRORS.items()]
    return pd.DataFrame(rows)


def margin_fraction(dataset_prefix: str = "CIFAR") -> float:
    """The equivalence margin as a fraction of the standard arm's error: the smallest relative
    gain the release reports on the datasets starting with ``dataset_prefix`` (CIFAR: the
    small-model, small-image setting closest to these tasks). A difference smaller than every
    gain the release reports there counts as negligible."""
    gains = release_gains()
    sel = gains[gains["dataset"].str.startswith(dataset_prefix)]
    if sel.empty:
        raise ValueError(f"no release result for datasets starting with {dataset_prefix!r}")
    return float(sel["relative_gain"].min())


def margin_for(metric: str, control_mean: float, ratio: float = RATIO) -> float:
    """The margin of ``metric``: :func:`margin_fraction` of the control's mean error, or for the
    remainder ratio 5% of what a perfect h could take off a random h's ratio (``(1 + r^2) -
    (1 - r)^2 = 2r``), i.e. ``0.1 r``."""
    if metric == "remainder_ratio":
        return 0.05 * 2 * ratio
    return margin_fraction() * abs(control_mean)


def compare_task(
    finals: pd.DataFrame, comparisons: Sequence[tuple[str, str, str]] = COMPARISONS, *, ratio: float = RATIO
) -> pd.DataFrame:
    """Every comparison (treatment, control, metric) per dataset and optimizer, by
    :func:`harness.compare`: the paired difference over seeds, ``mde``, ``margin``
    (:func:`margin_for`), ``verdict``, ``seeds_needed`` at the margin. Lower is better for every
    metric here; ``ratio`` is GAL's r (it sizes the remainder ratio's margin). Rows gain
    ``dataset``, ``outputs``, ``optimizer`` and ``setting``."""
    rows = []
    for (ds, c, opt), group in finals.groupby(["dataset", "outputs", "optimizer"], sort=False):
        for arm, control, metric in comparisons:
            sub = group[group["arm"].isin([arm, control])]
            if metric not in sub.columns or sub.loc[sub["arm"] == arm, metric].isna().all():
                continue
            if (sub["arm"] == control).sum() == 0 or (sub["arm"] == arm).sum() == 0:
                continue
            margin = margin_for(metric, float(sub.loc[sub["arm"] == control, metric].mean()), ratio)
            t = harness.compare(sub, metric, control=control, margin=margin, lower_is_better=True)
            t.insert(0, "setting", f"{arm} vs {control}")
            t.insert(0, "optimizer", opt)
            t.insert(0, "outputs", int(c))
            t.insert(0, "dataset", ds)
            rows.append(t)
    if not rows:
        raise ValueError("no comparison could be made: finals lacks the arms of every comparison")
    return pd.concat(rows, ignore_index=True)


#: summary.csv's columns (report.SUMMARY_COLUMNS with the descriptors first)
SUMMARY = [
    "dataset", "outputs", "optimizer", "setting", "arm", "control", "metric", "mean_control", "mean_treatment",
    "mean_diff", "low", "high", "p_value", "n", "sd_diff", "mde", "margin", "verdict", "seeds_needed",
]


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`compare_task`'s rows with :data:`SUMMARY`'s columns, for ``summary.csv``."""
    return table[SUMMARY].reset_index(drop=True)


def _fmt(v: float) -> str:
    return "inf" if v == math.inf else f"{v:.3g}"


def _counts(verdicts: pd.Series) -> str:
    """``"2 equivalent, 1 inconclusive"``: how many rows have each verdict."""
    return ", ".join(f"{n} {v}" for v, n in verdicts.value_counts().items())


_ROW_TEXT: dict[tuple[str, str], Callable[[pd.Series], str]] = {
    ("gal vs standard", "test_rmse"): lambda r: (
        f"GAL vs standard: **{r['verdict']}** (test RMSE {r['mean_control']:.4f} -> {r['mean_treatment']:.4f}, "
        f"difference {r['mean_diff']:+.4f}, 95% CI [{r['low']:+.4f}, {r['high']:+.4f}]; mde {_fmt(r['mde'])}, "
        f"margin {_fmt(r['margin'])}; {_fmt(r['seeds_needed'])} seeds would detect a margin-sized difference, "
        f"{int(r['n'])} were run)"
    ),
    ("gal_frozen vs standard", "test_rmse"): lambda r: (
        f"GAL with a frozen h vs standard: **{r['verdict']}** (difference {r['mean_diff']:+.4f}, mde {_fmt(r['mde'])})"
    ),
    ("gal vs gal_frozen", "test_rmse"): lambda r: (
        f"learned vs frozen h: **{r['verdict']}** (difference {r['mean_diff']:+.4f}, mde {_fmt(r['mde'])})"
    ),
    ("gal vs gal_frozen", "remainder_ratio"): lambda r: (
        f"|remainder| of the adjusted step over the plain one (last {100 * TAIL:g}% of the epochs), learned vs "
        f"frozen h: **{r['verdict']}** "
        f"({r['mean_control']:.3f} -> {r['mean_treatment']:.3f}, mde {_fmt(r['mde'])}, margin {_fmt(r['margin'])})"
    ),
}
"""Per (setting, metric) row of :func:`compare_task`: the conclusion's words for it, in this order."""


def conclusion(table: pd.DataFrame, probes: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """The notebook's conclusion, computed from :func:`compare_task`'s verdicts (and
    :func:`h_probe`'s measurements, keyed by a label): a headline per question, then per dataset
    and optimizer the numbers behind each verdict, with what this many seeds can resolve."""
    rmse = table[(table["setting"] == "gal vs standard") & (table["metric"] == "test_rmse")]
    mech = table[(table["setting"] == "gal vs gal_frozen") & (table["metric"] == "remainder_ratio")]
    multi, single = rmse[rmse["outputs"] > 1], rmse[rmse["outputs"] == 1]
    head = []
    if len(multi):
        head.append(
            f"**GAL vs standard, test RMSE with {', '.join(sorted({str(int(c)) for c in multi['outputs']}))} outputs** "
            f"(at the epoch with the lowest validation loss), {len(multi)} settings: {_counts(multi['verdict'])}. "
            + ("Where equivalent, GAL's effect lies within ±margin, a difference smaller than every gain the release "
               f"reports on CIFAR ({100 * margin_fraction():.2f}% of the error and up). "
               if (multi["verdict"] == "equivalent").any() else "")
            + ("Where inconclusive, the smallest detectable difference (mde) is larger than the margin: more seeds are "
               "needed (`seeds_needed`). " if (multi["verdict"] == "inconclusive").any() else "")
        )
    m_multi = mech[mech["outputs"] > 1]
    if len(m_multi):
        better = m_multi["verdict"] == "better"
        lvf = table[(table["setting"] == "gal vs gal_frozen") & (table["metric"] == "test_rmse") & (table["outputs"] > 1)]
        moved = any(p["outputs"] > 1 and p["h_grad_max"] > 0 and p["h_drift"] > 0 for p in (probes or {}).values())
        why = ("For MSE that remainder is exactly |delta|^2/(B·C), which h can lower only by pointing a_i against g_i, "
               "i.e. by predicting the direction of the residual from the model's output alone; doing so shortens the "
               "model's step by at most a fraction r. ")
        rmse_lvf = f"On test RMSE, learned vs frozen h: {_counts(lvf['verdict'])}. " if len(lvf) else ""
        if better.all():
            found = ("The learned h lowers the remainder in every setting (by "
                     f"{', '.join(f'{-d:.3f}' for d in m_multi['mean_diff'])} of the plain step's). ")
        elif better.any():
            found = "The learned h lowers the remainder in some settings only (the list below). "
        else:
            found = (("h receives a gradient and its weights move (below), but " if moved else "")
                     + "in no setting is the adjusted step's remainder shown to be smaller with the learned h than "
                     "with a random one. ")
        head.append(
            "**Does the learned h shorten the step's remainder, compared with a frozen random h** (last "
            f"{100 * TAIL:g}% of the epochs)? {_counts(m_multi['verdict'])}. " + found + rmse_lvf + why
        )
    if len(single):
        frozen = table[(table["setting"] == "gal vs gal_frozen") & (table["metric"] == "test_rmse") & (table["outputs"] == 1)]
        head.append(
            f"**One output:** GAL vs standard {_counts(single['verdict'])}; learned vs frozen h {_counts(frozen['verdict'])}"
            + (": h never changes (its gradient is that of a sign, zero), so GAL is a fixed random rescaling of each "
               "sample's gradient by 1 ± r. " if len(frozen) and (frozen["verdict"] == "identical").all() else ". ")
        )
    lines = []
    for (ds, c, opt), g in table.groupby(["dataset", "outputs", "optimizer"], sort=False):
        g = g.set_index(["setting", "metric"])
        parts = [fmt(g.loc[key]) for key, fmt in _ROW_TEXT.items() if key in g.index]
        lines.append(f"- {ds} (C = {int(c)}), {opt}: " + "; ".join(parts) + ".")
    for label, p in (probes or {}).items():
        lines.append(
            f"- h in {label} (C = {int(p['outputs'])}): largest gradient norm {p['h_grad_max']:.2e} "
            f"(the model's median {p['model_grad_median']:.2e}), largest change of an h weight {p['h_drift']:.2e}."
        )
    return "\n\n".join(h.strip() for h in head) + "\n\n" + "\n".join(lines)


