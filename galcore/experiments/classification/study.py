"""Image classification with and without GAL (notebook 02): the benchmarks, their optimizers,
GAL arms and seeds per profile, the comparison table with verdicts, the conclusion text and the
figures. Training and statistics are :mod:`galcore.experiments.harness.core`'s (``run_arms``,
``compare``); paper-scale data goes through :mod:`galcore.experiments.classification.fullscale`.

Benchmarks (:func:`benchmarks`):

- **MNIST-1D** (Greydanus 2020; :func:`galcore.experiments.harness.data.mnist1d`, generated
  offline): the paper's 4,000 training signals and a large generated test set (20,000) so that
  test-set sampling noise stays well below release-sized effects; the paper's 1-D CNN
  (:class:`galcore.experiments.classification.mnist1d_models.MNIST1DCNN`). Batch 100 (the paper's), 30 passes
  over the training set, lr x0.1 after passes 20 and 25. The training set is presented as
  ``passes`` stacked copies per harness epoch (:func:`stack_passes`; shuffled together), so the
  large test set is evaluated every 5 passes rather than every pass (its evaluation would
  otherwise cost as much as the training).
- **digits** (scikit-learn's 8 x 8 images, 1,347 / 450): :class:`galcore.experiments.harness.models.SmallCNN`,
  12 epochs, batch 64, lr x0.1 at epochs 6 and 9: small and fast, the smoke profile's data; the
  release's four optimizers (SGD+momentum, Lookahead(SGD), AdaBound; and Adam) outside smoke.
- ``full`` adds the release's CIFAR-10/100 setting (EfficientNet-B1, :func:`full_setup`) and,
  when ImageNet is present (``$GALCORE_IMAGENET``), the release's ImageNet recipe
  (:mod:`galcore.experiments.classification.imagenet_recipe`).

GAL arms per optimizer (at most two): ``gal``, the release's CIFAR-10 setting (ratio 1e-3,
scale 1, the release's linear h, accept on decrease; h in the model's optimizer), and, for
SGD+momentum, ``gal+h_adam``: the same with h trained by its own Adam (lr :data:`H_ADAM_LR`).
An adaptive optimizer rescales h's tiny remainder gradient, so h learns (with the model's SGD
it does not move; notebook 05 measures both), as the release's ImageNet recipe gives h its own
``gal_lr``. Adam (and AdaBound) already adapt h's step inside the model's optimizer, so they run
``gal`` only (:data:`ADAPTIVE_ARMS`); so does Lookahead(SGD), on digits, for budget.

Verdicts: :func:`compare_table` calls :func:`galcore.experiments.harness.core.compare` for test
error (margin :data:`MARGIN_ERROR` = 0.08 points, the release's smallest gain) and test NLL
(margin :data:`NLL_MARGIN_REL` x the standard arm's mean NLL).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from galcore.experiments.classification.fullscale import (
    LoaderData,
    cifar_data,
    efficientnet_b1_factory,
    run_loader_arms,
)
from galcore.experiments.classification.imagenet_recipe import ImageNetData, ImageNetRecipe, recipe_run
from galcore.experiments.classification.mnist1d_models import BASELINE_ACCURACY, BASELINE_RECIPE, MNIST1DCNN, MNIST1DMLP
from galcore.experiments.harness import stats
from galcore.experiments.harness.core import Data, Setup, TrainConfig, compare, run_arms
from galcore.experiments.harness.data import digits, mnist1d
from galcore.experiments.harness.models import ResNet8, SmallCNN
from galcore.experiments.harness.profile import Profile, get_profile

__all__ = [
    "ADAPTIVE_ARMS",
    "ARMS",
    "GAL_SETTINGS",
    "H_ADAM_LR",
    "MARGIN_ERROR",
    "NLL_MARGIN_REL",
    "OPTIMIZER_NAMES",
    "RELEASE_GAINS",
    "RELEASE_GAL",
    "RELEASE_OPTIMIZERS",
    "TARGET_MDE",
    "Benchmark",
    "arms_for",
    "baseline_check",
    "benchmarks",
    "compare_table",
    "conclusion_text",
    "default_setup",
    "default_setups",
    "findings_text",
    "full_setup",
    "gal_options",
    "gal_settings",
    "imagenet_root",
    "is_fullscale",
    "mnist1d_plan",
    "mnist1d_setup",
    "optimizer_config",
    "optimizer_settings",
    "overhead_table",
    "paired_arms",
    "paper_benchmarks",
    "plot_acceptance",
    "plot_learning_curves",
    "run_benchmark",
    "run_imagenet",
    "scope_text",
    "sizing_table",
    "stack_passes",
    "summary_frame",
]

#: optimizer display names, in order (the release's three, then Adam)
OPTIMIZER_NAMES: tuple[str, ...] = ("SGD+momentum", "Lookahead(SGD)", "AdaBound", "Adam")

#: The release's CIFAR optimizers (the paper and its release); Adam is not in the release (lr chosen for fine-tuning).
RELEASE_OPTIMIZERS: dict[str, dict[str, Any]] = {
    "SGD+momentum": {"optimizer": "momentum", "lr": 0.05, "optimizer_kwargs": {"weight_decay": 1e-5}},
    "Lookahead(SGD)": {"optimizer": "lookahead", "lr": 0.05, "optimizer_kwargs": {"k": 5, "alpha": 0.8, "weight_decay": 1e-5}},
    "AdaBound": {"optimizer": "adabound", "lr": 1e-3, "optimizer_kwargs": {"final_lr": 0.1, "gamma": 1e-3, "weight_decay": 5e-4}},
    "Adam": {"optimizer": "adam", "lr": 1e-4, "optimizer_kwargs": {}},
}

#: Digits: the release's settings, except the adaptive methods' lr (1e-3 leaves the SmallCNN
#: under-trained in 12 epochs; 3e-3 reaches ~98% test accuracy).
DIGITS_OPTIMIZERS: dict[str, dict[str, Any]] = {
    "SGD+momentum": RELEASE_OPTIMIZERS["SGD+momentum"],
    "Lookahead(SGD)": RELEASE_OPTIMIZERS["Lookahead(SGD)"],
    "AdaBound": {**RELEASE_OPTIMIZERS["AdaBound"], "lr": 3e-3},
    "Adam": {"optimizer": "adam", "lr": 3e-3, "optimizer_kwargs": {}},
}

#: MNIST-1D (batch 100, as the MNIST-1D paper): Adam at the paper's lr 1e-2; SGD with momentum
#: 0.9 at lr 0.1 (reaches the paper's CNN accuracy in 30 passes; lr 0.2 at batch 200 diverged on
#: some seeds). No weight decay (the paper's).
MNIST1D_OPTIMIZERS: dict[str, dict[str, Any]] = {
    "SGD+momentum": {"optimizer": "momentum", "lr": 0.1, "optimizer_kwargs": {}},
    "Adam": {"optimizer": "adam", "lr": 1e-2, "optimizer_kwargs": {}},
}

#: GAL on the in-memory benchmarks: the release's CIFAR-10 settings (ratio 1e-3, scale 1, the
#: release's linear h for 10 outputs, accept only if the tentative loss does not increase),
#: galcore's exact first-order term ("sum") and float64 GAL arithmetic (the model stays float32).
GAL_SETTINGS: dict[str, Any] = {
    "ratio": 1e-3,
    "scale": 1.0,
    "hidden": None,
    "activation": None,
    "first_order": "sum",
    "accept": "decrease",
    "compute_dtype": torch.float64,
}

#: GAL at paper scale: the release's form (mean first-order term), ratio by dataset.
RELEASE_GAL: dict[str, dict[str, Any]] = {
    "cifar10": {**GAL_SETTINGS, "ratio": 1e-3, "first_order": "mean"},
    "cifar100": {**GAL_SETTINGS, "ratio": 1e-2, "first_order": "mean"},
}

#: h's own optimizer in the ``gal+h_adam`` arm: Adam at its default lr.
H_ADAM_LR = 1e-3
#: the arms of every optimizer, control first
ARMS: tuple[str, ...] = ("standard", "gal", "gal+h_adam")
#: the arms of an optimizer that already adapts h's step (Adam): h learns inside the model's
#: optimizer, so a second arm with h in its own Adam would repeat the first
ADAPTIVE_ARMS: tuple[str, ...] = ("standard", "gal")

#: equivalence margin for test error (percentage points): the release's smallest gain
#: (CIFAR-10, SGD: 1.86% -> 1.78%)
MARGIN_ERROR = 0.08
#: the release's gains in classification error, smallest and largest (points; the paper)
RELEASE_GAINS: tuple[float, float] = (0.08, 0.63)
#: equivalence margin for test NLL, relative to the standard arm's mean NLL
NLL_MARGIN_REL = 0.01
#: the mde (points of test error) the default profile is sized to reach for SGD on MNIST-1D
TARGET_MDE = 0.3

_DIGITS_PLAN: dict[str, dict[str, Any]] = {
    "smoke": {"n_train": 320, "width": 8, "epochs": 2, "batch_size": 64, "milestones": (), "seeds": (0, 1, 2)},
    "default": {"n_train": None, "width": 16, "epochs": 12, "batch_size": 64, "milestones": (6, 9), "seeds": (0, 1, 2, 3, 4)},
}
#: MNIST-1D per profile. ``passes``: passes over the training set per harness epoch.
#: Seeds: sized from a pilot (5 seeds, paired SD of test error GAL - standard: SGD 0.22, Adam
#: 0.83 points) so that SGD's mde reaches :data:`TARGET_MDE`; the notebook prints the mde reached.
_MNIST1D_PLAN: dict[str, dict[str, Any]] = {
    "smoke": {"n_train": 1000, "n_test": 1000, "passes": 1, "epochs": 2, "milestones": (), "batch_size": 100,
              "seeds": {"SGD+momentum": 3, "Adam": 3}},
    "default": {"n_train": 4000, "n_test": 20000, "passes": 5, "epochs": 6, "milestones": (4, 5), "batch_size": 100,
                "seeds": {"SGD+momentum": 16, "Adam": 8}},
    "full": {"n_train": 4000, "n_test": 50000, "passes": 5, "epochs": 6, "milestones": (4, 5), "batch_size": 100,
             "seeds": {"SGD+momentum": 40, "Adam": 100}},
}
#: digits optimizers per profile
_DIGITS_OPTIMIZERS_USED: dict[str, tuple[str, ...]] = {
    "smoke": ("SGD+momentum", "Adam"),
    "default": OPTIMIZER_NAMES,
    "full": OPTIMIZER_NAMES,
}
FULL_SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Benchmark:
    """One data set's comparison: the setup (data, model factory, the standard SGD arm's
    config, all seeds), the optimizers compared (display name -> settings), the seeds and the
    arms per optimizer (arms default to :data:`ARMS`). ``passes``: passes over the training set
    per harness epoch."""

    name: str
    setup: Setup
    optimizers: Mapping[str, Mapping[str, Any]]
    seeds: Mapping[str, tuple[int, ...]]
    arms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    passes: int = 1
    notes: Mapping[str, Any] = field(default_factory=dict)

    def arms_of(self, optimizer: str) -> tuple[str, ...]:
        """The arms run for ``optimizer`` (default :data:`ARMS`)."""
        return tuple(self.arms.get(optimizer, ARMS))

    @property
    def data_name(self) -> str:
        return str(self.setup.data.name)


# -- data and setups -----------------------------------------------------------------------------
def _first(data: Data, n_train: int | None) -> Data:
    """``data`` with only its first ``n_train`` training rows (named ``-n{n_train}``); unchanged
    when ``n_train`` is None or not smaller than the training set."""
    if n_train is None or n_train >= len(data.x_train):
        return data
    return replace(data, name=f"{data.name}-n{n_train}", x_train=data.x_train[:n_train], y_train=data.y_train[:n_train])


def _digits_setup(plan: Mapping[str, Any], model: str) -> Setup:
    data = _first(digits(), plan["n_train"])
    width = int(plan["width"])
    if model == "smallcnn":
        model_fn: Any = lambda: SmallCNN(1, data.num_outputs, 8, width)
    elif model == "resnet8":
        model_fn = lambda: ResNet8(1, data.num_outputs, width)
    else:
        raise ValueError(f"unknown model {model!r}; use 'smallcnn' or 'resnet8'")
    sgd = DIGITS_OPTIMIZERS["SGD+momentum"]
    base = TrainConfig(
        model=f"{model}-w{width}", data=data.name, optimizer=sgd["optimizer"], lr=sgd["lr"],
        optimizer_kwargs=dict(sgd["optimizer_kwargs"]), epochs=int(plan["epochs"]), batch_size=int(plan["batch_size"]),
        milestones=tuple(plan["milestones"]), device="cpu",
    )  # fmt: skip
    return Setup(data, model_fn, base, tuple(plan["seeds"]))


def stack_passes(data: Data, passes: int) -> Data:
    """``data`` with its training set repeated ``passes`` times (one harness epoch = that many
    passes, shuffled together); the test set unchanged."""
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes must be an int >= 1, got {passes!r}")
    if passes == 1:
        return data
    reps = (passes,) + (1,) * (data.x_train.dim() - 1)
    return replace(data, name=f"{data.name}-x{passes}", x_train=data.x_train.repeat(*reps),
                   y_train=data.y_train.repeat(passes))


def mnist1d_plan(profile: Profile | None = None) -> dict[str, Any]:
    """MNIST-1D's sizes for ``profile`` (a copy): ``n_train``, ``n_test``, ``passes`` per
    harness epoch, ``epochs``, ``milestones`` (epochs), ``batch_size``, ``seeds`` per optimizer."""
    plan = _MNIST1D_PLAN[profile or get_profile()]
    return {**plan, "seeds": dict(plan["seeds"])}


def mnist1d_setup(profile: Profile | None = None) -> Setup:
    """MNIST-1D for ``profile``: the data (training set stacked ``passes`` times), the paper's
    CNN, the standard SGD arm, and the largest seed set of the plan."""
    p = profile or get_profile()
    plan = _MNIST1D_PLAN[p]
    data = stack_passes(_first(mnist1d(4000, plan["n_test"]), plan["n_train"]), int(plan["passes"]))
    sgd = MNIST1D_OPTIMIZERS["SGD+momentum"]
    base = TrainConfig(
        model="mnist1d-cnn25", data=data.name, optimizer=sgd["optimizer"], lr=sgd["lr"], optimizer_kwargs=dict(sgd["optimizer_kwargs"]),
        epochs=int(plan["epochs"]), batch_size=int(plan["batch_size"]), milestones=tuple(plan["milestones"]), device="cpu",
    )  # fmt: skip
    seeds = tuple(range(max(plan["seeds"].values())))
    return Setup(data, MNIST1DCNN, base, seeds)


def full_setup(
    dataset: str = "cifar10",
    *,
    data_root: str | None = None,
    download: bool = True,
    pretrained: bool = True,
    data: LoaderData | None = None,
    input_size: int = 224,
    batch_size: int = 320,
    epochs: int = 300,
    milestones: tuple[int, ...] = (100, 200),
    seeds: Sequence[int] = FULL_SEEDS,
    num_workers: int = 8,
    device: str = "auto",
) -> Setup:
    """The release's CIFAR experiment: EfficientNet-B1, inputs resized to ``input_size``,
    flips, ``batch_size`` 320, 300 epochs, lr x0.1 at 100 and 200, SGD+momentum as the base.

    ``data`` replaces the CIFAR download (e.g. :func:`galcore.experiments.classification.fullscale.fake_cifar`
    in tests). Raises ``FileNotFoundError`` with instructions when CIFAR is absent and cannot
    be downloaded."""
    if data is None:
        data = cifar_data(dataset, data_root, download=download, size=input_size, flip=True, num_workers=num_workers)
    model_fn, model_name = efficientnet_b1_factory(data.num_outputs, pretrained)
    sgd = RELEASE_OPTIMIZERS["SGD+momentum"]
    base = TrainConfig(
        model=model_name, data=data.name, optimizer=sgd["optimizer"], lr=sgd["lr"], optimizer_kwargs=dict(sgd["optimizer_kwargs"]),
        epochs=epochs, batch_size=batch_size, milestones=milestones, device=device,
    )  # fmt: skip
    return Setup(data, model_fn, base, tuple(seeds))  # type: ignore[arg-type]  # LoaderData: see run_benchmark


def default_setup(
    profile: Profile | None = None,
    *,
    dataset: str = "cifar10",
    data_root: str | None = None,
    download: bool = True,
    pretrained: bool = True,
    model: str = "smallcnn",
) -> Setup:
    """The digits setup for ``profile`` (smoke/default; the ablation notebook's classification
    task), or :func:`full_setup` for ``dataset`` in ``full``. ``model="resnet8"`` for the
    ResNet-style net on digits."""
    p = profile or get_profile()
    if p == "full":
        return full_setup(dataset, data_root=data_root, download=download, pretrained=pretrained)
    return _digits_setup(_DIGITS_PLAN[p], model)


def default_setups(profile: Profile | None = None, **kw: Any) -> list[Setup]:
    """CIFAR-10 and CIFAR-100 in ``full``, else the digits setup."""
    p = profile or get_profile()
    if p == "full":
        return [default_setup(p, dataset=d, **kw) for d in ("cifar10", "cifar100")]
    return [default_setup(p, **kw)]


def is_fullscale(setup: Setup) -> bool:
    """Whether the setup reads its data through a loader (paper scale)."""
    return isinstance(setup.data, LoaderData)


def benchmarks(profile: Profile | None = None) -> list[Benchmark]:
    """The in-memory benchmarks of notebook 02 for ``profile``: MNIST-1D, then digits."""
    p = profile or get_profile()
    m_plan = _MNIST1D_PLAN[p]
    out = [Benchmark(
        "mnist1d", mnist1d_setup(p), {k: MNIST1D_OPTIMIZERS[k] for k in m_plan["seeds"]},
        {k: tuple(range(n)) for k, n in m_plan["seeds"].items()}, arms={"Adam": ADAPTIVE_ARMS}, passes=int(m_plan["passes"]),
        notes={"n_train": m_plan["n_train"], "n_test": m_plan["n_test"]},
    )]  # fmt: skip
    d_setup = _digits_setup(_DIGITS_PLAN["smoke" if p == "smoke" else "default"], "smallcnn")
    d_seeds = d_setup.seeds if p != "full" else tuple(range(10))
    names = _DIGITS_OPTIMIZERS_USED[p]
    out.append(Benchmark("digits", replace(d_setup, seeds=d_seeds), {k: DIGITS_OPTIMIZERS[k] for k in names},
                         {k: tuple(d_seeds) for k in names}, arms={k: ADAPTIVE_ARMS for k in names if k != "SGD+momentum"},
                         notes={"n_train": len(d_setup.data.x_train), "n_test": len(d_setup.data.x_test)}))
    return out


def paper_benchmarks(**kw: Any) -> list[Benchmark]:
    """The release's CIFAR-10 and CIFAR-100 settings (:func:`full_setup`; keyword arguments go
    to it), the release's three optimizers, ``standard`` and ``gal`` arms. Raises
    ``FileNotFoundError`` (with instructions) when CIFAR is absent and cannot be downloaded."""
    names = ("SGD+momentum", "Lookahead(SGD)", "AdaBound")
    out = []
    for ds in ("cifar10", "cifar100"):
        s = full_setup(ds, **kw)
        out.append(Benchmark(ds, s, {k: RELEASE_OPTIMIZERS[k] for k in names}, {k: tuple(s.seeds) for k in names},
                             arms={k: ("standard", "gal") for k in names}, notes={"n_train": len(s.data.train), "n_test": len(s.data.test)}))  # type: ignore[union-attr]
    return out


def run_imagenet(recipe: ImageNetRecipe, data: ImageNetData, *, seeds: Sequence[int] = (0,), cache: bool = True,
                 device: str = "auto", **kw: Any) -> pd.DataFrame:
    """The release's ImageNet recipe, ``standard`` and ``gal`` arms per seed
    (:func:`galcore.experiments.classification.imagenet_recipe.recipe_run`), as ``finals`` rows (``data``
    "imagenet", ``optimizer`` "RMSpropTF"; test metrics of the EMA model; ``test_top5_error``)."""
    rows = []
    for seed in seeds:
        for arm in ("standard", "gal"):
            r = recipe_run(recipe, data, gal=arm == "gal", seed=seed, device=device, cache=cache, **kw)
            row = {"data": "imagenet", "optimizer": "RMSpropTF", "arm": arm, "seed": seed, **r.final,
                   "seconds": r.seconds, "cpu_seconds": r.cpu_seconds}
            if "accept_rate" in r.final:
                row["accept_rate_mean"] = float(np.mean([h["accept_rate"] for h in r.history]))
            rows.append(row)
    return pd.DataFrame(rows)


# -- settings ------------------------------------------------------------------------------------
def optimizer_settings(profile: Profile | Setup | None = None) -> dict[str, dict[str, Any]]:
    """``{display name: {"optimizer", "lr", "optimizer_kwargs"}}`` for a profile's digits setup
    (the release's CIFAR ones in ``full``) or for a setup."""
    if isinstance(profile, Setup):
        if is_fullscale(profile):
            return RELEASE_OPTIMIZERS
        return MNIST1D_OPTIMIZERS if str(profile.data.name).startswith("mnist1d") else DIGITS_OPTIMIZERS
    return RELEASE_OPTIMIZERS if (profile or get_profile()) == "full" else DIGITS_OPTIMIZERS


def gal_settings(setup: Setup | None = None) -> dict[str, Any]:
    """GAL's keyword arguments for a setup: :data:`GAL_SETTINGS` for in-memory data, the
    release's (:data:`RELEASE_GAL`, by number of classes) at paper scale. A fresh dict."""
    if setup is not None and is_fullscale(setup):
        return dict(RELEASE_GAL["cifar10" if setup.data.num_outputs <= 10 else "cifar100"])
    return dict(GAL_SETTINGS)


def gal_options(profile: Profile | None = None) -> dict[str, Any]:
    """The GAL settings of the profile's :func:`default_setup` without building it (the
    ablation module reads this)."""
    p = profile or get_profile()
    return dict(RELEASE_GAL["cifar10"] if p == "full" else GAL_SETTINGS)


def optimizer_config(setup: Setup, name: str, settings: Mapping[str, Mapping[str, Any]] | None = None) -> TrainConfig:
    """The setup's standard arm with the optimizer ``name`` (from ``settings``, default
    :func:`optimizer_settings` of the setup)."""
    table = settings if settings is not None else optimizer_settings(setup)
    if name not in table:
        raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(table)}")
    s = table[name]
    return replace(setup.base, optimizer=s["optimizer"], lr=s["lr"], optimizer_kwargs=dict(s["optimizer_kwargs"]), gal=None)


def paired_arms(setup: Setup, name: str, gal: Mapping[str, Any] | None = None) -> dict[str, TrainConfig]:
    """``{"standard": cfg, "gal": cfg with GAL}`` for optimizer ``name``; ``gal`` overrides
    :func:`gal_settings` keys."""
    cfg = optimizer_config(setup, name)
    return {"standard": cfg, "gal": replace(cfg, gal={**gal_settings(setup), **(gal or {})})}


def arms_for(bench: Benchmark, name: str) -> dict[str, TrainConfig]:
    """The benchmark's arms for optimizer ``name`` (:meth:`Benchmark.arms_of`): ``standard``;
    ``gal`` (h in the model's optimizer); ``gal+h_adam`` (h in its own Adam, lr :data:`H_ADAM_LR`)."""
    cfg = optimizer_config(bench.setup, name, bench.optimizers)
    gal = gal_settings(bench.setup)
    every = {
        "standard": cfg,
        "gal": replace(cfg, gal=gal),
        "gal+h_adam": replace(cfg, gal=gal, h_optimizer="adam", h_lr=H_ADAM_LR),
    }
    arms = bench.arms_of(name)
    unknown = [a for a in arms if a not in every]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; use {', '.join(every)}")
    return {a: every[a] for a in arms}


# -- running -------------------------------------------------------------------------------------
def run_benchmark(bench: Benchmark, *, cache: bool = True, progress: bool = True,
                  optimizers: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every arm x seed of every optimizer of ``bench`` (harness ``run_arms``; loader data
    through :func:`galcore.experiments.classification.fullscale.run_loader_arms`). Returns ``(finals,
    histories)`` with ``data`` and ``optimizer`` columns first, and ``passes`` (passes over the
    training set) in the histories."""
    finals, hists = [], []
    for name in optimizers or list(bench.optimizers):
        arms = arms_for(bench, name)
        seeds = bench.seeds[name]
        if is_fullscale(bench.setup):
            f, h = run_loader_arms(arms, seeds, bench.setup.data, bench.setup.model_fn, cache=cache, progress=progress)  # type: ignore[arg-type]
        else:
            f, h = run_arms(arms, seeds, bench.setup.data, bench.setup.model_fn, cache=cache, progress=progress)
        h["passes"] = h["epoch"] * bench.passes
        for frame, out in ((f, finals), (h, hists)):
            frame.insert(0, "optimizer", name)
            frame.insert(0, "data", bench.name)
            out.append(frame)
    return pd.concat(finals, ignore_index=True), pd.concat(hists, ignore_index=True)


# -- comparisons ---------------------------------------------------------------------------------
def _seeds_needed(sd: float, effect: float) -> float:
    """:func:`stats.seeds_needed` at 80% power, NaN where the paired SD is not finite."""
    return stats.seeds_needed(sd, effect) if math.isfinite(sd) else math.nan


def compare_table(finals: pd.DataFrame, *, margin_error: float = MARGIN_ERROR, nll_margin_rel: float = NLL_MARGIN_REL,
                  effect: float = RELEASE_GAINS[0]) -> pd.DataFrame:
    """:func:`galcore.experiments.harness.core.compare` per (data, optimizer) for ``test_error``
    (points; margin ``margin_error``; ``seeds_needed`` at ``effect``) and ``test_loss`` (NLL;
    margin ``nll_margin_rel`` x the standard arm's mean NLL; ``seeds_needed`` at that margin),
    both lower-is-better. Adds ``seeds_needed_large`` (test error: seeds for the release's
    largest gain) and ``outputs`` (10)."""
    rows = []
    for (data, opt), group in finals.groupby(["data", "optimizer"], sort=False):
        err = compare(group, "test_error", margin=margin_error, lower_is_better=True, effect=effect)
        err["seeds_needed_large"] = [_seeds_needed(s, RELEASE_GAINS[1]) for s in err["sd_diff"]]
        nll_margin = nll_margin_rel * float(group.loc[group["arm"] == "standard", "test_loss"].mean())
        nll = compare(group, "test_loss", margin=nll_margin, lower_is_better=True)
        for t in (err, nll):
            t.insert(0, "optimizer", opt)
            t.insert(0, "data", data)
            rows.append(t)
    out = pd.concat(rows, ignore_index=True)
    out["outputs"] = 10
    return out


def overhead_table(finals: pd.DataFrame) -> pd.DataFrame:
    """CPU seconds per run, each GAL arm / its standard run of the same seed: mean over seeds,
    per (data, optimizer, arm). Cached runs keep the timings of the machine that ran them."""
    key = ["data", "optimizer", "seed"]
    base = finals[finals["arm"] == "standard"].set_index(key)["cpu_seconds"]
    rows = []
    for (data, opt, arm), g in finals[finals["arm"] != "standard"].groupby(["data", "optimizer", "arm"], sort=False):
        r = g.set_index(key)["cpu_seconds"] / base.reindex(g.set_index(key).index)
        rows.append({"data": data, "optimizer": opt, "arm": arm, "cpu_ratio": float(r.mean()), "n": int(r.notna().sum())})
    return pd.DataFrame(rows)


def sizing_table(table: pd.DataFrame, target_mde: float = TARGET_MDE) -> pd.DataFrame:
    """Per test-error row: the paired SD, the mde reached, whether it meets ``target_mde``, and
    the seeds a study would need for ``target_mde`` and for the release's smallest and largest
    gains (80% power, two-sided 5%)."""
    t = table[table["metric"] == "test_error"]
    rows = []
    for r in t.itertuples():
        sd = float(r.sd_diff)
        rows.append({"data": r.data, "optimizer": r.optimizer, "arm": r.arm, "n": r.n, "sd_diff": sd, "mde": r.mde,
                     "meets_target": bool(r.mde <= target_mde), f"seeds_for_mde_{target_mde:g}": _seeds_needed(sd, target_mde),
                     f"seeds_for_{RELEASE_GAINS[0]:g}": _seeds_needed(sd, RELEASE_GAINS[0]),
                     f"seeds_for_{RELEASE_GAINS[1]:g}": _seeds_needed(sd, RELEASE_GAINS[1])})
    return pd.DataFrame(rows)


def summary_frame(table: pd.DataFrame, finals: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``results/02_classification/summary.csv``: descriptors, the report's
    columns, the acceptance rate of the GAL arm and its CPU-time ratio to standard."""
    over = overhead_table(finals)
    acc = finals.groupby(["data", "optimizer", "arm"], sort=False)["accept_rate_mean"].mean().rename("accept_rate")
    out = table.merge(acc.reset_index(), on=["data", "optimizer", "arm"], how="left")
    out = out.merge(over[["data", "optimizer", "arm", "cpu_ratio"]].rename(columns={"cpu_ratio": "overhead_ratio"}),
                    on=["data", "optimizer", "arm"], how="left")
    cols = ["data", "optimizer", "arm", "metric", "mean_control", "mean_treatment", "mean_diff", "low", "high", "p_value", "n",
            "sd_diff", "mde", "margin", "verdict", "seeds_needed", "outputs", "accept_rate", "overhead_ratio"]
    return out[[c for c in cols if c in out.columns]]


_ARM_TEXT = {"gal": "GAL (release CIFAR-10 setting, h in the model's optimizer)",
             "gal+h_adam": "GAL with h in its own Adam"}
_METRIC_TEXT = {"test_error": ("test error", "points"), "test_loss": ("test NLL", "nats")}


def _fmt(v: float, unit: str) -> str:
    return f"{v:+.2f} {unit}" if unit == "points" else f"{v:+.4f}"


def conclusion_text(table: pd.DataFrame, *, target_mde: float = TARGET_MDE) -> str:
    """Markdown sentences computed from ``table`` (:func:`compare_table`): per data set and
    optimizer, each GAL arm's verdict on test error and NLL with the interval, the mde, the
    margin, and what the data can and cannot say."""
    lines: list[str] = []
    for (data, opt), g in table.groupby(["data", "optimizer"], sort=False):
        parts = []
        for arm, ga in g.groupby("arm", sort=False):
            bits = []
            for r in ga.itertuples():
                name, unit = _METRIC_TEXT.get(r.metric, (r.metric, ""))
                what = {
                    "better": f"**better** ({name} {_fmt(r.mean_diff, unit)}, 95% CI [{_fmt(r.low, unit)}, {_fmt(r.high, unit)}])",
                    "worse": f"**worse** ({name} {_fmt(r.mean_diff, unit)}, 95% CI [{_fmt(r.low, unit)}, {_fmt(r.high, unit)}])",
                    "equivalent": f"**equivalent** within ±{r.margin:.3g} ({name} {_fmt(r.mean_diff, unit)}, "
                                  f"95% CI [{_fmt(r.low, unit)}, {_fmt(r.high, unit)}])",
                    "identical": f"**identical** ({name}: bit-identical final weights on every seed)",
                    "inconclusive": f"**inconclusive** ({name} {_fmt(r.mean_diff, unit)}, 95% CI [{_fmt(r.low, unit)}, {_fmt(r.high, unit)}]; "
                                    f"the smallest detectable difference is {r.mde:.3g}, the margin ±{r.margin:.3g})",
                }[r.verdict]
                bits.append(what)
            err = ga[ga["metric"] == "test_error"]
            can = ""
            if len(err):
                e = err.iloc[0]
                if math.isfinite(e["mde"]):
                    if e["mde"] <= RELEASE_GAINS[0]:
                        can = f" With mde {e['mde']:.2f} points these seeds can see even the release's smallest gain ({RELEASE_GAINS[0]:g})."
                    elif e["mde"] <= RELEASE_GAINS[1]:
                        can = (f" With mde {e['mde']:.2f} points these {int(e['n'])} seeds can see a gain of the release's largest size "
                               f"({RELEASE_GAINS[1]:g}) but not its smallest ({RELEASE_GAINS[0]:g}; that needs ~{e['seeds_needed']:.0f} seeds).")
                    else:
                        can = (f" With mde {e['mde']:.2f} points these {int(e['n'])} seeds cannot see release-sized gains "
                               f"({RELEASE_GAINS[0]:g}-{RELEASE_GAINS[1]:g} points); the largest would need "
                               f"~{e['seeds_needed_large']:.0f} seeds, the smallest ~{e['seeds_needed']:.0f}.")
                if e["verdict"] in ("inconclusive", "equivalent") and math.isfinite(e["low"]) and math.isfinite(e["high"]):
                    can += (f" The 95% interval rules out a gain (lower error) larger than {max(-e['low'], 0.0):.2f} points "
                            f"and a loss larger than {max(e['high'], 0.0):.2f}")
                    can += (f": gains of the release's largest size ({RELEASE_GAINS[1]:g}) are excluded here."
                            if -e["low"] < RELEASE_GAINS[1] else ".")
            parts.append(f"  - {_ARM_TEXT.get(arm, arm)}: " + "; ".join(bits) + "." + can)
        n = int(g["n"].max())
        lines.append(f"- **{data}, {opt}** ({n} paired seeds):\n" + "\n".join(parts))
    return "\n".join(lines)


def findings_text(table: pd.DataFrame) -> str:
    """A few computed lines for the top of the notebook: per data set and optimizer, each GAL
    arm's verdict on test error (difference and mde, points) and on test NLL."""
    lines = []
    for (data, opt), g in table.groupby(["data", "optimizer"], sort=False):
        bits = []
        for arm, ga in g.groupby("arm", sort=False):
            e = ga[ga["metric"] == "test_error"]
            nll = ga[ga["metric"] == "test_loss"]
            s = f"`{arm}`"
            if len(e):
                r = e.iloc[0]
                s += f" error **{r['verdict']}** ({r['mean_diff']:+.2f} points, mde {r['mde']:.2f})"
            if len(nll):
                s += f", NLL **{nll.iloc[0]['verdict']}**"
            bits.append(s)
        n = int(g["n"].max())
        lines.append(f"- **{data}, {opt}** ({n} seeds): " + "; ".join(bits) + ".")
    return f"GAL − standard, paired over seeds (margin {MARGIN_ERROR:g} points of error):\n\n" + "\n".join(lines)


def scope_text(table: pd.DataFrame) -> str:
    """What the data sets compared in ``table`` can and cannot speak to."""
    paper = sorted({d for d in table["data"] if d in ("cifar10", "cifar100", "imagenet")})
    small = sorted({d for d in table["data"] if d not in ("cifar10", "cifar100", "imagenet")})
    text = (f"The in-memory benchmarks ({', '.join(small)}) use small models trained from scratch for minutes; "
            "they test GAL's claim in that regime only.")
    if paper:
        text += f" The release's paper-scale settings ran on: {', '.join(paper)}."
    else:
        text += (" They neither confirm nor refute the release's CIFAR and ImageNet numbers (EfficientNets, hundreds of "
                 "epochs), which need the `full` profile with the data and a GPU.")
    return text


# -- the MNIST-1D paper's baselines --------------------------------------------------------------
_BASELINE_PLAN = {"smoke": {"epochs": 2, "checked": False}, "default": {"epochs": None, "checked": True},
                  "full": {"epochs": None, "checked": True}}


def baseline_check(profile: Profile | None = None, *, cache: bool = True, progress: bool = True,
                   sigmas: float = 3.0, models: Sequence[str] = ("cnn", "mlp"), epochs: int | None = None) -> pd.DataFrame:
    """The MNIST-1D paper's CNN and MLP, trained with its recipe (Adam lr 1e-2, batch 100,
    6,000 steps = 150 epochs of 4,000; seed 0) on its default data (4,000 / 1,000, seed 42).

    One row per model: ``paper_accuracy``, ``accuracy`` measured, ``tolerance`` = ``sigmas``
    binomial standard errors of the paper's accuracy on 1,000 test signals (the test set's own
    sampling noise), ``within`` (|measured - paper| <= tolerance). In ``smoke`` the recipe is
    cut to 2 epochs and ``checked`` is False (``within`` is then not a check). ``models``: which
    of ``"cnn"``, ``"mlp"`` to train; ``epochs`` overrides the recipe's length (a cheaper check)."""
    p = profile or get_profile()
    plan = _BASELINE_PLAN[p]
    data = mnist1d(4000, 1000)
    n_test = len(data.x_test)
    epochs = epochs or plan["epochs"] or int(BASELINE_RECIPE["steps"]) * int(BASELINE_RECIPE["batch_size"]) // len(data.x_train)
    base = TrainConfig(model="", data=data.name, optimizer="adam", lr=float(BASELINE_RECIPE["lr"]),
                       optimizer_kwargs={"weight_decay": float(BASELINE_RECIPE["weight_decay"])},
                       epochs=epochs, batch_size=int(BASELINE_RECIPE["batch_size"]), seed=0)
    arms = {"cnn": replace(base, model="mnist1d-cnn25"), "mlp": replace(base, model="mnist1d-mlp100")}
    rows = []
    factories = {"cnn": MNIST1DCNN, "mlp": MNIST1DMLP}
    unknown = [m for m in models if m not in factories]
    if unknown:
        raise ValueError(f"models: unknown {unknown}; use 'cnn' and/or 'mlp'")
    for name in models:
        fn = factories[name]
        f, _ = run_arms({name: arms[name]}, (0,), data, fn, cache=cache, progress=progress)
        acc = float(f["test_accuracy"].iloc[0])
        paper = BASELINE_ACCURACY[name]
        tol = sigmas * math.sqrt(paper * (1 - paper) / n_test)
        rows.append({"model": name, "paper_accuracy": paper, "accuracy": acc, "tolerance": tol,
                     "within": bool(abs(acc - paper) <= tol), "checked": plan["checked"], "epochs": epochs,
                     "steps": epochs * math.ceil(len(data.x_train) / base.batch_size), "n_test": n_test})
    return pd.DataFrame(rows)


# -- figures -------------------------------------------------------------------------------------
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


def imagenet_root() -> str | None:
    """``$GALCORE_IMAGENET`` (an ImageFolder tree with ``train/`` and ``val/``) or None."""
    return os.environ.get("GALCORE_IMAGENET") or None


