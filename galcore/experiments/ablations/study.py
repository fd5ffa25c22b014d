"""Notebook 05's studies: what each of GAL's settings does to training, and where it acts.

One small, fast setup (:func:`setup`: scikit-learn's digits, an MLP 64-64-10, SGD with
momentum 0.9, lr 0.05 and weight decay 1e-5 as in the release's CIFAR runs) carries every
study, so many seeds fit a CPU budget. A :class:`Study` is a set of arms
(:class:`~galcore.experiments.harness.TrainConfig`) with one control; its arms run on the same
seeds (paired: same initial weights, batches and h), output-space GAL arms through
:func:`galcore.experiments.ablations.mechanism.trace` (the harness's run plus the measurements of the
mechanism), parameter-space arms through :func:`galcore.experiments.harness.run_arms`.

Studies (:func:`studies`):

- ``dose``: ratio r x how h learns (frozen, in the model's optimizer, its own Adam), r = 0
  (the standard method) as control.
- ``batch``: the same grid with ``normalize="batch"``; compared with the standard method and
  with the same arm under the per-sample normalisation.
- ``accept``: the acceptance rule at large learning rates (plain SGD up to lr 1) and at ratios
  where tentative steps can be rejected.
- ``factors``: scale, first-order term, acceptance rule, h's architecture and how h learns, one
  at a time around an active base (r = 0.1, h trained by its own Adam).
- ``space``: output vs parameter space on a model small enough for :class:`galcore.ParamGAL`.

:func:`verdicts` compares arms with :func:`galcore.experiments.harness.compare` on test NLL and
test error (margins in :data:`MARGIN_ERROR` and :func:`loss_margin`). The rest of the module is
the notebook's views: tables (``*_view``, :func:`arm_table`), figures (``show_*``, through
:func:`galcore.experiments.harness.plots.show`), the text of the findings (``*_text``,
:func:`conclusion`: every number and verdict computed, each reading stated only when the
numbers support it) and the files (:func:`save_summary`, :func:`save_conclusion`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from galcore.adjuster import release_hidden
from galcore.config import GALConfig
from galcore.experiments import harness
from galcore.experiments.ablations import mechanism
from galcore.experiments.harness import Data, Setup, TrainConfig
from galcore.experiments.harness.data import digits
from galcore.experiments.harness.models import MLP
from galcore.experiments.harness.profile import Profile, choose, get_profile

_GAL_DEFAULTS = GALConfig()

__all__ = [
    "H_MODES", "MARGIN_ERROR", "MARGIN_LOSS_FRACTION", "OUT", "RATIOS", "SHORT", "Study", "accept_text", "arm_table",
    "base_text", "batch_text", "conclusion", "dose_text", "factors_text", "gal_arm", "label", "loss_margin",
    "mechanism_text", "mechanism_view", "ray_table", "results_view", "run_study", "save_conclusion", "save_summary",
    "setup", "setup_table", "show_dose", "show_mechanism", "show_verdicts", "space_setup", "space_text",
    "split_label", "studies", "summary_frame", "verdict_view", "verdicts",
]

OUT = "05_ablations"
#: the dose-response ratios (r = 0, the standard method, is the control)
RATIOS = (1e-3, 1e-2, 3e-2, 0.1, 0.3)
#: how h learns: frozen (random, never trained), in the model's optimizer (the release's CIFAR
#: code), or by its own Adam with its own lr (the release's ImageNet gal_lr idea)
H_MODES: dict[str, dict[str, Any]] = {
    "frozen": {"frozen_h": True},
    "model's optimizer": {},
    "own Adam": {"h_optimizer": "adam", "h_lr": 1e-3},
}
#: equivalence margin on test error (percentage points): the release's smallest reported gain
#: (CIFAR-10, SGD: 1.86% -> 1.78%)
MARGIN_ERROR = 0.08
#: equivalence margin on test NLL, as a fraction of the standard method's mean test NLL
MARGIN_LOSS_FRACTION = 0.05


def loss_margin(finals: pd.DataFrame, control: str = "standard") -> float:
    """The test-NLL equivalence margin: :data:`MARGIN_LOSS_FRACTION` of ``control``'s mean."""
    return MARGIN_LOSS_FRACTION * float(finals.loc[finals["arm"] == control, "test_loss"].mean())


# -- the setup --------------------------------------------------------------------------------
def _subset(data: Data, n: int) -> Data:
    idx = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(1234))[:n]
    return replace(data, name=f"{data.name}-sub{n}", x_train=data.x_train[idx], y_train=data.y_train[idx])


def setup(profile: Profile | None = None) -> Setup:
    """Digits (1,347 train / 450 test images, 8x8, standardised), an MLP 64-64-10, SGD with
    momentum 0.9, lr 0.05, weight decay 1e-5, batch 64; 10 epochs and 8 seeds (``smoke``:
    256 training images, 2 epochs, 3 seeds; ``full``: 16 seeds)."""
    p = profile or get_profile()
    data = digits()
    if p == "smoke":
        data = _subset(data, 256)
    base = TrainConfig(model="mlp64-64-10", data=data.name, optimizer="momentum", lr=0.05,
                       optimizer_kwargs={"weight_decay": 1e-5}, epochs=choose(2, 10, profile=p), batch_size=64)
    seeds = tuple(range(choose(3, 8, 16, profile=p)))  # 3: the fewest for which compare reports an mde
    return Setup(data=data, model_fn=lambda: MLP(64, 10, hidden=(64,)), base=base, seeds=seeds)


def space_setup(profile: Profile | None = None) -> Setup:
    """:func:`setup` with an MLP 64-8-10 (610 parameters), small enough for ParamGAL's h."""
    s = setup(profile)
    return replace(s, model_fn=lambda: MLP(64, 10, hidden=(8,)), base=replace(s.base, model="mlp64-8-10"))


def gal_arm(base: TrainConfig, ratio: float, h: str = "own Adam", **options: Any) -> TrainConfig:
    """A GAL arm: ``base`` with GAL at ``ratio``, h learning as ``H_MODES[h]``, other GAL
    ``options`` (``normalize``, ``scale``...); keys of TrainConfig (``lr``, ``space``,
    ``h_lr``...) among ``options`` go to the config."""
    if h not in H_MODES:
        raise ValueError(f"h must be one of {', '.join(map(repr, H_MODES))}, got {h!r}")
    fields = set(TrainConfig.__dataclass_fields__)
    train = {k: v for k, v in options.items() if k in fields}
    # options at GAL's defaults are left out, so that equal settings share one config (and cache)
    gal = {k: v for k, v in options.items() if k not in fields and getattr(_GAL_DEFAULTS, k, object()) != v}
    return replace(base, gal={"ratio": ratio, **gal}, **{**H_MODES[h], **train})


# -- studies ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Study:
    """Arms compared on the same seeds.

    ``arms``: ``{label: TrainConfig}``; ``control``: the label most arms are compared with;
    ``setup``: data, model and seeds; ``question``: what the study asks, in a line;
    ``pairs``: the comparisons ``(treatment, control)`` (default: every arm vs ``control``)."""

    name: str
    question: str
    arms: Mapping[str, TrainConfig]
    control: str
    setup: Setup
    pairs: tuple[tuple[str, str], ...] = ()

    def comparisons(self) -> list[tuple[str, str]]:
        if self.pairs:
            return list(self.pairs)
        return [(a, self.control) for a in self.arms if a != self.control]


#: the factor study's reference arm: the standard method at lr x (1 - r)
SHORT = "standard, lr x (1 - r)"


def label(r: float, h: str, normalize: str = "sample") -> str:
    """An arm of the dose-response grid: ``"r=0.1 | own Adam"`` (``" | batch"`` appended for
    ``normalize="batch"``)."""
    return f"r={r:g} | {h}" + (" | batch" if normalize == "batch" else "")


def split_label(name: str) -> dict[str, Any]:
    """Inverse of :func:`label`: ``{"ratio", "h", "normalize"}`` (``standard``: ratio 0)."""
    if name == "standard":
        return {"ratio": 0.0, "h": "standard", "normalize": "sample"}
    parts = [p.strip() for p in name.split("|")]
    return {"ratio": float(parts[0].removeprefix("r=")), "h": parts[1], "normalize": parts[2] if len(parts) > 2 else "sample"}


def studies(profile: Profile | None = None) -> dict[str, Study]:
    """The notebook's studies (module docstring), sized for ``profile``."""
    s = setup(profile)
    base = s.base
    grid = [(r, h) for r in RATIOS for h in H_MODES]
    dose = {"standard": base, **{label(r, h): gal_arm(base, r, h) for r, h in grid}}
    dose_pairs = [(a, "standard") for a in dose if a != "standard"]
    dose_pairs += [(label(r, h), label(r, "frozen")) for r, h in grid if h != "frozen"]
    batch = {"standard": base, **{label(r, h, n): gal_arm(base, r, h, normalize=n) for r, h in grid
                                  for n in ("sample", "batch")}}
    batch_pairs = [(label(r, h, "batch"), "standard") for r, h in grid]
    batch_pairs += [(label(r, h, "batch"), label(r, h)) for r, h in grid]

    sgd = replace(base, optimizer="sgd", optimizer_kwargs={})
    accept: dict[str, TrainConfig] = {}
    accept_pairs: list[tuple[str, str]] = []
    for lr in (0.1, 0.3, 1.0):
        std, dec, alw = (f"sgd lr={lr:g} | {x}" for x in ("standard", "r=0.1 | decrease", "r=0.1 | always"))
        accept[std] = replace(sgd, lr=lr)
        accept[dec] = gal_arm(sgd, 0.1, lr=lr)
        accept[alw] = gal_arm(sgd, 0.1, lr=lr, accept="always")
        accept_pairs += [(dec, std), (alw, dec)]
    for r in (1.0, 3.0):
        dec, alw = (f"momentum lr=0.05 | r={r:g} | {x}" for x in ("decrease", "always"))
        accept[dec] = gal_arm(base, r)
        accept[alw] = gal_arm(base, r, accept="always")
        accept_pairs.append((alw, dec))

    b = "base: r=0.1, own Adam"
    factors = {
        "standard": base,
        b: gal_arm(base, 0.1),
        **{f"scale={sc:g}": gal_arm(base, 0.1, scale=sc) for sc in (1e-3, 100.0, 1000.0)},
        "first_order=mean": gal_arm(base, 0.1, first_order="mean"),
        "accept=always": gal_arm(base, 0.1, accept="always"),
        "h with ReLU": gal_arm(base, 0.1, activation="relu"),
        "h one linear layer": gal_arm(base, 0.1, hidden=()),
        "h frozen": gal_arm(base, 0.1, "frozen"),
        "h in model's optimizer": gal_arm(base, 0.1, "model's optimizer"),
        **{f"h Adam lr={lr:g}": gal_arm(base, 0.1, h_lr=lr) for lr in (1e-4, 1e-2)},
        "normalize=batch": gal_arm(base, 0.1, normalize="batch"),
        # a reference, not a setting of GAL: the standard method with every step shortened by
        # r, what an h that learned a_i = -r g_i would do
        SHORT: replace(base, lr=base.lr * (1 - 0.1)),
    }
    others = [a for a in factors if a not in ("standard", b, SHORT)]
    factor_pairs = [(b, "standard")] + [(a, b) for a in others] + [(a, "standard") for a in others]
    factor_pairs += [(SHORT, "standard"), ("first_order=mean", SHORT)]

    t = space_setup(profile)
    small = {"hidden": (64, 16), "track_plain": True}  # ParamGAL's h reads all 610 parameters
    space: dict[str, TrainConfig] = {"standard": t.base}
    space_pairs: list[tuple[str, str]] = []
    for r in (0.01, 0.1):
        out, par = f"output space, r={r:g}", f"parameter space, r={r:g}"
        space[out] = gal_arm(t.base, r, **small)
        space[par] = gal_arm(t.base, r, space="parameter", **small)
        space_pairs += [(out, "standard"), (par, "standard"), (par, out)]
    for where in ("output", "parameter"):
        frozen = f"{where} space, r=0.1, frozen h"
        space[frozen] = gal_arm(t.base, 0.1, "frozen", space=where, **small)
        space_pairs.append((f"{where} space, r=0.1", frozen))

    return {
        "dose": Study("dose", "What does the adjustment's size r do, for each way h learns?", dose, "standard", s,
                      tuple(dose_pairs)),
        "batch": Study("batch", "Does bounding the batch's summed adjustment (normalize='batch') remove the collapse "
                       "at large r, and what does it cost at small r?", batch, "standard", s, tuple(batch_pairs)),
        "accept": Study("accept", "Are tentative steps ever rejected, so that the acceptance rule acts?", accept,
                        "sgd lr=0.1 | standard", s, tuple(accept_pairs)),
        "factors": Study("factors", "Around an active base (r = 0.1, h trained by its own Adam), what does each "
                         "setting change?", factors, b, s, tuple(factor_pairs)),
        "space": Study("space", "Adjusting the outputs' gradient or the parameters' gradient?", space, "standard", t,
                       tuple(space_pairs)),
    }


def arm_table(study: Study) -> pd.DataFrame:
    """One row per arm: the settings that matter (GAL's options, how h learns, the optimizer)."""
    rows = []
    for label, cfg in study.arms.items():
        g = cfg.gal.to_dict() if cfg.gal is not None else {}
        learns = "-" if cfg.gal is None else ("frozen" if cfg.frozen_h else (
            "model's optimizer" if cfg.h_optimizer is None and cfg.h_lr is None else f"{cfg.h_optimizer} lr {cfg.h_lr:g}"))
        rows.append({
            "arm": label, "control": "yes" if label == study.control else "",
            "optimizer": f"{cfg.optimizer} lr {cfg.lr:g}", "space": cfg.space if cfg.gal is not None else "-",
            "ratio r": g.get("ratio", 0.0), "h learns": learns, "normalize": g.get("normalize", "sample") if g else "-",
            "scale": g.get("scale", 1.0) if g else "-", "first_order": g.get("first_order", "sum") if g else "-",
            "accept": g.get("accept", "decrease") if g else "-",
            "h widths": "-" if not g else str(g.get("hidden", "release")) + (f" {g['activation']}" if "activation" in g else ""),
        })
    df = pd.DataFrame(rows)
    varying = [c for c in df.columns if c in ("arm", "control") or df[c].astype(str).nunique() > 1]
    return df[varying]


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
        "margins": f"test error {MARGIN_ERROR} points; test NLL {MARGIN_LOSS_FRACTION:.0%} of the standard method's",
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


def show_dose(finals: pd.DataFrame, folder: str = OUT) -> Any:
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
    return show(fig, "dose_response" if "batch" not in set(gal["normalize"]) else "dose_response_batch", folder)


def show_mechanism(finals: pd.DataFrame, hists: pd.DataFrame, folder: str = OUT, normalize: str = "sample") -> Any:
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
    return show(fig, "mechanism" if normalize == "sample" else f"mechanism_{normalize}", folder)


def show_verdicts(verdicts: pd.DataFrame, metric: str, name: str, folder: str = OUT) -> Any:
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
    return show(fig, f"{name}_{metric}", folder)


# -- computed text -----------------------------------------------------------------------------
def _g(x: float) -> str:
    """A number for prose: 3 significant digits."""
    return f"{x:.3g}"


def _span(values: pd.Series) -> str:
    lo, hi = float(values.min()), float(values.max())
    return _g(lo) if _g(lo) == _g(hi) else f"{_g(lo)}-{_g(hi)}"


def mechanism_text(finals: pd.DataFrame) -> str:
    """The dose-response's mechanism measurements in words (per-sample arms); each reading is
    stated only when the numbers support it."""
    f = _with_labels(finals[finals["arm"] != "standard"])
    f = f[f["normalize"] == "sample"]
    by_r = f.groupby("ratio")
    cos0 = float(f["h_cosine_init"].mean())
    k0 = f["pert_ratio_init"] / f["ratio"]
    coh_a, coh_g = float(f["coherence_adj_mean"].mean()), float(f["coherence_grad_mean"].mean())
    net = by_r["net_ratio_mean"].mean()
    healthy = f[(f["ratio"] <= 0.1) & (f["diverged"] == 0)]
    gain = float(healthy["output_gain_mean"].median()) if not healthy.empty else float("nan")
    lines = [
        f"- **h's directions.** At the first step the mean pairwise cosine of h's outputs over the batch is {cos0:.3g}"
        + (" (h points nearly every sample the same way)" if cos0 > 0.9 else "") + "; over training, by r: "
        + ", ".join(f"{r:g}: {v:.3g}" for r, v in by_r["h_cosine_mean"].mean().items()) + ".",
        f"- **The batch's sum.** At the first step the adjustment's part of the parameter step is {_span(k0)} x r "
        f"times the plain gradient's (||J^T A|| / ||J^T G||; the per-sample bound is r)"
        + (": the samples' adjustments add up while their gradients partly cancel" if k0.min() > 1.5 else "")
        + f". Over training: {_span(f['pert_ratio_mean'] / f['ratio'])} x r.",
        f"- **Across steps.** Over an epoch the adjustment's steps have coherence {coh_a:.3g} (1 = all in one "
        f"direction), the gradient's {coh_g:.3g}"
        + ("; the adjustment keeps its direction from step to step, the gradient does not" if coh_a > coh_g + 0.1 else "")
        + ". The adjustment's share of an epoch's net move, by r: " + ", ".join(f"{r:g}: {v:.3g}" for r, v in net.items())
        + ".",
        "- **Diverged seeds** (test loss not finite, or accuracy at most twice chance), by r: "
        + ", ".join(f"{r:g}: {c}" for r, c in by_r["diverged"].agg(_count).items()) + ".",
        f"- **The tentative step.** The outputs' real move per step is {gain:.3g} times GAL's tentative step lr g "
        f"(median over runs with r <= 0.1 that did not diverge)"
        + (", so h learns from a step far smaller than the one training takes" if gain > 10 else "")
        + f"; |R_gal|/|R_plain| {_span(healthy['remainder_ratio'])}; lowest acceptance "
        f"{f['accept_rate_mean'].min():.3g}.",
    ]
    own, same = f[f["h"] == "own Adam"], f[f["h"] == "model's optimizer"]
    if not own.empty and not same.empty:
        d, w = same["h_drift"], same["decay_drift"]
        only_decay = bool(((d - w).abs() <= 1e-3 * w.abs()).all())
        rms = float(own["h_grad_rms_mean"].max())
        lines.append(
            f"- **How h learns.** In the model's optimizer h drifts {_span(d)} (weight decay alone: {_span(w)})"
            + ("; it moves only as weight decay moves it" if only_decay else "")
            + f"; its gradient has RMS {_span(same['h_grad_rms_mean'])}. With its own Adam it drifts "
            + ", ".join(f"{r:g}: {v:.3g}" for r, v in own.groupby("ratio")["h_drift"].mean().items())
            + f" (by r), from gradients of RMS up to {rms:.3g}"
            + (", below Adam's eps (1e-8): Adam's step is then close to lr g / eps, proportional to the gradient"
               if rms < 1e-8 else "") + ".")
    return "\n".join(lines)


def _verdict_of(verdicts: pd.DataFrame, arm: str, control: str, metric: str = "test_loss") -> pd.Series:
    rows = verdicts[(verdicts["arm"] == arm) & (verdicts["control"] == control) & (verdicts["metric"] == metric)]
    if rows.empty:
        raise KeyError(f"no comparison {arm!r} vs {control!r} on {metric}")
    return rows.iloc[0]


def _diff(row: pd.Series, unit: str = "") -> str:
    """``verdict (diff [low, high]{unit}, mde m)`` for prose."""
    if row["verdict"] == "identical":
        return "identical (bit-identical final weights on every seed)"
    return (f"{row['verdict']} ({row['mean_diff']:+.3g} [{row['low']:+.3g}, {row['high']:+.3g}]{unit}, "
            f"mde {row['mde']:.3g})")


def _largest_equivalent(verdicts: pd.DataFrame, metric: str = "test_loss") -> float:
    """The largest r such that every arm with ratio <= r is equivalent (or identical) to the
    standard method on ``metric``; 0 when none is."""
    v = verdicts[(verdicts["control"] == "standard") & (verdicts["metric"] == metric)].copy()
    v["ratio"] = [split_label(a)["ratio"] for a in v["arm"]]
    best = 0.0
    for r in sorted(v["ratio"].unique()):
        if v.loc[v["ratio"] <= r, "verdict"].isin(["equivalent", "identical"]).all():
            best = r
        else:
            break
    return best


def dose_text(finals: pd.DataFrame, verdicts: pd.DataFrame) -> str:
    """What the dose-response says, computed from its finals and verdicts."""
    f = _with_labels(finals[finals["arm"] != "standard"])
    r_eq = _largest_equivalent(verdicts)
    v = verdicts[(verdicts["control"] == "standard")].copy()
    v["ratio"] = [split_label(a)["ratio"] for a in v["arm"]]
    worse = v[v["verdict"] == "worse"]
    first_worse = float(worse["ratio"].min()) if not worse.empty else float("nan")
    top = float(f["ratio"].max())
    div = f[f["ratio"] == top].groupby("h", sort=False)["diverged"].agg(_count)
    err_top = v[(v["ratio"] == top) & (v["metric"] == "test_error")].set_index("arm")["mean_diff"]
    mde_eq = v[(v["ratio"] <= r_eq) & (v["metric"] == "test_loss")]["mde"]
    parts = [
        f"Up to r = {r_eq:g} every way of learning h is equivalent to the standard method on test NLL (margin "
        f"{verdicts.loc[verdicts['metric'] == 'test_loss', 'margin'].iloc[0]:.3g}; mde {_span(mde_eq)})"
        if r_eq > 0 else "No ratio is equivalent to the standard method on test NLL",
    ]
    if np.isfinite(first_worse):
        arms = ", ".join(f"{split_label(a)['h']} {_diff(row)}" for a, row in
                         worse[worse["ratio"] == first_worse].set_index("arm").iterrows() if row["metric"] == "test_loss")
        parts.append(f"the first significantly worse arms are at r = {first_worse:g}" + (f" (test NLL: {arms})" if arms else ""))
    parts.append(f"at r = {top:g}: diverged seeds " + ", ".join(f"{h} {c}" for h, c in div.items())
                 + f"; test error minus the standard method's {_span(err_top)} points (by way of learning h)")
    return "; ".join(parts) + "."


def batch_text(finals: pd.DataFrame, verdicts: pd.DataFrame) -> str:
    """What ``normalize="batch"`` changes, computed."""
    f = _with_labels(finals[finals["arm"] != "standard"])
    by = f.groupby(["normalize", "ratio"])
    pert = (f["pert_ratio_init"] / f["ratio"]).groupby(f["normalize"]).mean()
    net = (f["net_ratio_mean"] / f["ratio"]).groupby(f["normalize"]).mean()
    coh = by["coherence_adj_mean"].mean()
    div = by["diverged"].agg(_count)
    rs = sorted(f["ratio"].unique())
    small = [r for r in rs if r < 0.1]
    vs_sample = verdicts[verdicts["control"] != "standard"].copy()
    vs_sample["ratio"] = [split_label(a)["ratio"] for a in vs_sample["arm"]]
    eq = vs_sample[(vs_sample["ratio"].isin(small)) & (vs_sample["metric"] == "test_loss")]["verdict"].value_counts()
    lines = [
        (f"- At the first step the batch bound cuts the adjustment's parameter-space share from {pert['sample']:.3g} r "
        f"to {pert['batch']:.3g} r, and its share of an epoch's net move from {net['sample']:.3g} r to "
        f"{net['batch']:.3g} r (means over arms)."),
        "- Diverged seeds, per-sample -> batch: " + "; ".join(
            f"r = {r:g}: {div[('sample', r)]} -> {div[('batch', r)]}" for r in rs if r >= 0.1) + ".",
        _collapse_line(div, coh, rs[-1]),
        "- At r < 0.1 (the cost): against the same arm with per-sample normalisation, test NLL verdicts "
        + ", ".join(f"{k} x{n}" for k, n in eq.items()) + ".",
    ]
    return "\n".join(lines)


def _collapse_line(div: pd.Series, coh: pd.Series, r: float) -> str:
    """Whether the batch bound removed divergence at the largest r, with the coherence that
    explains why not when it did not."""
    if div[("batch", r)].startswith("0/"):
        return f"- With the batch bound no seed diverges at r = {r:g}."
    return (f"- The batch bound does not remove the collapse at r = {r:g} ({div[('batch', r)]} seeds diverge): the "
            f"adjustment's coherence over an epoch is {coh[('batch', r)]:.3g} with the bound and "
            f"{coh[('sample', r)]:.3g} without, so its share of the net move builds up across steps although each "
            f"step is bounded.")


def accept_text(finals: pd.DataFrame, verdicts: pd.DataFrame) -> str:
    """Where the acceptance rule acts, computed: which arms had rejected steps (tentative loss
    rose) and what the rule changed there."""
    gal = finals[finals["rejected_rate"].notna()] if "rejected_rate" in finals else finals.iloc[:0]
    rejected = gal.groupby("arm", sort=False)["rejected_rate"].max()
    faults = gal.groupby("arm", sort=False)["fallback_rate"].max()
    div = finals.groupby("arm", sort=False)["diverged"].agg(_count)
    pairs = verdicts[verdicts["arm"].str.endswith("always") & (verdicts["metric"] == "test_error")]
    ident = pairs[pairs["verdict"] == "identical"]
    lines = [(f"- No tentative step was rejected on any seed in {int((rejected == 0).sum())} of {len(rejected)} GAL arms; "
             f"`always` vs `decrease` is identical (bit-identical weights) in {len(ident)} of {len(pairs)} pairs.")]
    acted = rejected[rejected > 0]
    if not acted.empty:
        lines.append("- Steps were rejected only in: " + "; ".join(
            f"{a} (up to {v:.3g} of the steps; faults up to {faults[a]:.3g}; diverged {div[a]})" for a, v in acted.items())
            + ".")
    other = pairs[pairs["verdict"] != "identical"]

    def all_diverged(arm: str) -> bool:
        done, _, n = str(div.get(arm, "")).partition("/")
        return bool(n) and done == n

    if not other.empty:
        lines.append("- Where the rule acted, `always` against `decrease` on test error: " + "; ".join(
            f"{r['arm']}: " + ("both arms diverged on every seed, so their equal test errors say nothing"
                               if all_diverged(r["arm"]) and all_diverged(r["control"]) else _diff(r, " points"))
            for _, r in other.iterrows()) + ".")
    return "\n".join(lines)


def factors_text(finals: pd.DataFrame, verdicts: pd.DataFrame, base: str = "base: r=0.1, own Adam") -> str:
    """The factor study in a few lines: which settings change the base's test NLL (and how,
    against the base and against the standard method), which are identical, and the
    mechanism's numbers of the ones that help (h's pairwise cosine, the adjustment's net share)."""
    nll = verdicts[verdicts["metric"] == "test_loss"]
    vs_base = nll[nll["control"] == base].set_index("arm")
    vs_std = nll[nll["control"] == "standard"].set_index("arm")
    mech = finals.groupby("arm", sort=False)[["h_cosine_mean", "net_ratio_mean", "h_drift"]].mean()

    def listed(verdict: str) -> str:
        arms = vs_base.index[vs_base["verdict"] == verdict]
        return ", ".join(f"{a} ({vs_base.loc[a, 'mean_diff']:+.3g}, mde {vs_base.loc[a, 'mde']:.3g})" for a in arms) or "none"

    better = list(vs_base.index[vs_base["verdict"] == "better"])
    n_std = int((vs_std.index != base).sum())
    better_std = int((vs_std.loc[vs_std.index != base, "verdict"] == "better").sum())
    lines = [
        f"- The base against the standard method, test NLL: {_diff(vs_std.loc[base])}.",
        f"- Better than the base on test NLL: {listed('better')}. Worse: {listed('worse')}.",
        (f"- Identical to the base (bit-identical weights on every seed): "
        f"{', '.join(vs_base.index[vs_base['verdict'] == 'identical']) or 'none'}."),
        f"- Inconclusive against the base: {listed('inconclusive')}.",
    ]
    if better:
        cos_b, net_b = mech.loc[better, "h_cosine_mean"], mech.loc[better, "net_ratio_mean"]
        spread = bool((cos_b < mech.loc[base, "h_cosine_mean"]).all() and (net_b < mech.loc[base, "net_ratio_mean"]).all())
        lines.append(
            f"- The better settings' h: mean pairwise cosine over training {_span(cos_b)} (base "
            f"{mech.loc[base, 'h_cosine_mean']:.3g}); the adjustment's share of an epoch's net move {_span(net_b)} (base "
            f"{mech.loc[base, 'net_ratio_mean']:.3g})"
            + (": each spreads h's directions and shrinks the adjustment's accumulated push, the mechanism of the "
               "base's damage" if spread else "") + ".")
        lines.append("- Those settings against the standard method, test NLL: "
                     + "; ".join(f"{a}: {_diff(vs_std.loc[a])}" for a in better)
                     + f". Of the {n_std} arms compared with the standard method here, {better_std} came out `better`; "
                     f"with no effect anywhere about {0.025 * n_std:.2g} would by chance (5% two-sided, one side), so a "
                     f"single `better` needs a replication before it counts.")
    mean_arm = "first_order=mean"
    if SHORT in vs_std.index and mean_arm in vs_std.index and "adj_grad_cosine_mean" in finals:
        cos = finals.groupby("arm")["adj_grad_cosine_mean"].mean()
        lines.append(
            f"- first_order=\"mean\" divides the first-order term of h's objective by the batch size, so the objective "
            f"is mostly |<delta, g>|, which an adjustment against the gradient lowers. Mean cosine between a sample's "
            f"adjustment and its gradient: {cos[mean_arm]:.3g} (base {cos[base]:.3g})"
            + (", i.e. h learned to shorten each sample's step" if cos[mean_arm] < -0.5 else "")
            + f". The standard method with every step shortened by r ({SHORT}) against the standard method: "
            f"{_diff(vs_std.loc[SHORT])}; first_order=mean against it: {_diff(_verdict_of(verdicts, mean_arm, SHORT))}.")
    return "\n".join(lines)


def space_text(verdicts: pd.DataFrame) -> str:
    """The output- vs parameter-space comparisons, one line each, computed."""
    rows = verdicts[verdicts["metric"] == "test_loss"]
    return "\n".join(f"- {r['arm']} vs {r['control']}: test NLL {_diff(r)}, test error "
                     f"{_diff(_verdict_of(verdicts, r['arm'], r['control'], 'test_error'), ' points')}."
                     for _, r in rows.iterrows())


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


def conclusion(results: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]]) -> str:
    """The notebook's findings as markdown, every number and verdict computed from ``results``
    (``{study: (finals, verdicts)}`` for dose, batch, accept, factors, space)."""
    dose_f, dose_v = results["dose"]
    parts = ["**Dose-response.** " + dose_text(dose_f, dose_v),
             "**The mechanism** (dose-response arms, per-sample normalisation):\n" + mechanism_text(dose_f)]
    if "batch" in results:
        parts.append("**normalize=\"batch\".**\n" + batch_text(*results["batch"]))
    if "accept" in results:
        parts.append("**The acceptance rule.**\n" + accept_text(*results["accept"]))
    if "factors" in results:
        parts.append("**The other factors, at r = 0.1 with h trained by its own Adam** (verdicts against that base):\n"
                     + factors_text(*results["factors"]))
    if "space" in results:
        parts.append("**Output vs parameter space** (MLP 64-8-10):\n" + space_text(results["space"][1]))
    n = len(dose_f.loc[dose_f["arm"] == "standard"])
    parts.append(f"_{n} seeds per arm; `mde` is the smallest paired difference those seeds detect with 80% power; "
                 f"a verdict of `inconclusive` with an mde above the margin means more seeds, not no effect._")
    return "\n\n".join(parts)


def save_conclusion(text: str, folder: str = OUT) -> Any:
    """Write ``text`` to ``results/<folder>/conclusion.md``; returns the path."""
    from galcore.experiments.harness.results import results_dir

    path = results_dir(folder) / "conclusion.md"
    path.write_text(text + "\n")
    return path


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


def base_text(dose_finals: pd.DataFrame, dose_verdicts: pd.DataFrame, arm: str = "r=0.1 | own Adam") -> str:
    """The factor study's base as the dose-response measured it: its verdict against the
    standard method, h's drift against weight decay's, its diverged seeds."""
    row = _verdict_of(dose_verdicts, arm, "standard")
    f = dose_finals[dose_finals["arm"] == arm]
    return (f"In the dose-response, {arm} against the standard method on test NLL: {_diff(row)}; h's drift "
            f"{f['h_drift'].mean():.3g} (weight decay alone: {f['decay_drift'].mean():.3g}); diverged seeds "
            f"{_count(f['diverged'])}.")
