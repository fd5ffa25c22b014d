"""Image classification with and without GAL: the setups, optimizers and GAL settings of
notebook 02 (also imported by the ablation notebook), the paired runs over optimizers, the
result table and its figures.

Profiles (:func:`galcore.experiments.get_profile`):

- ``smoke``: digits (320 training images), a narrow SmallCNN, 2 epochs, 2 seeds.
- ``default``: digits (1,347 / 450 images, 8 x 8), SmallCNN, 12 epochs, batch 64, lr x0.1 at
  epochs 6 and 9, 5 seeds. The whole notebook runs in minutes on 2 CPU cores.
- ``full``: CIFAR-10 / CIFAR-100 (torchvision), EfficientNet-B1 (ImageNet weights when they
  load), inputs resized to 224, flips, batch 320, 300 epochs, lr x0.1 at 100 and 200, the
  release's optimizers and GAL ratios, 3 seeds; read through a DataLoader
  (:mod:`galcore.experiments.fullscale`).

Use :func:`run_arms` / :func:`run_one` here rather than :mod:`galcore.experiments.harness`'s: they send a
paper-scale setup to the loader path and an in-memory one to :func:`galcore.experiments.harness.run`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from galcore.experiments.datasets import digits
from galcore.experiments.fullscale import LoaderData, cifar_data, efficientnet_b1_factory, train_loader_run
from galcore.experiments.models import ResNet8, SmallCNN
from galcore.experiments.profile import Profile, choose, get_profile
from galcore.experiments.harness import Data, RunResult, Setup, TrainConfig, paired_table, run

__all__ = [
    "GAL_SETTINGS",
    "OPTIMIZER_NAMES",
    "RELEASE_GAL",
    "RELEASE_OPTIMIZERS",
    "DIGITS_OPTIMIZERS",
    "default_setup",
    "default_setups",
    "diagnostic_arms",
    "diagnostic_settings",
    "full_setup",
    "gal_options",
    "gal_settings",
    "is_fullscale",
    "optimizer_config",
    "optimizer_settings",
    "overhead_per_seed",
    "paired_arms",
    "per_seed_table",
    "plot_acceptance",
    "plot_learning_curves",
    "plot_output_remainder",
    "plot_overhead",
    "plot_paired_differences",
    "plot_param_remainder",
    "probe_frame",
    "run_arms",
    "run_experiment",
    "run_one",
    "summary_table",
    "verdict",
]

#: The four optimizers of notebook 02 (the release's three, plus Adam), in display order.
OPTIMIZER_NAMES: tuple[str, ...] = ("SGD+momentum", "Lookahead(SGD)", "AdaBound", "Adam")

#: The release's CIFAR optimizers (GAL.md); Adam is not in the release (lr chosen for fine-tuning).
RELEASE_OPTIMIZERS: dict[str, dict[str, Any]] = {
    "SGD+momentum": {"optimizer": "momentum", "lr": 0.05, "optimizer_kwargs": {"weight_decay": 1e-5}},
    "Lookahead(SGD)": {
        "optimizer": "lookahead",
        "lr": 0.05,
        "optimizer_kwargs": {"k": 5, "alpha": 0.8, "weight_decay": 1e-5},
    },
    "AdaBound": {
        "optimizer": "adabound",
        "lr": 1e-3,
        "optimizer_kwargs": {"final_lr": 0.1, "gamma": 1e-3, "weight_decay": 5e-4},
    },
    "Adam": {"optimizer": "adam", "lr": 1e-4, "optimizer_kwargs": {}},
}

#: Digits (smoke/default): the release's settings, except the adaptive methods' lr (1e-3 leaves
#: the SmallCNN under-trained in 12 epochs; 3e-3 reaches ~98% test accuracy).
DIGITS_OPTIMIZERS: dict[str, dict[str, Any]] = {
    "SGD+momentum": RELEASE_OPTIMIZERS["SGD+momentum"],
    "Lookahead(SGD)": RELEASE_OPTIMIZERS["Lookahead(SGD)"],
    "AdaBound": {**RELEASE_OPTIMIZERS["AdaBound"], "lr": 3e-3},
    "Adam": {"optimizer": "adam", "lr": 3e-3, "optimizer_kwargs": {}},
}

#: GAL on the embedded data: the release's CIFAR-10 settings (10 classes: ratio 1e-3, scale 1,
#: h = 10 -> 100 -> 32 -> 16 -> 10 linear, accept only if the tentative loss does not
#: increase), with galcore's exact first-order term ("sum") and GAL's own arithmetic in
#: float64: in float32 the output-space remainder of a batch-mean loss (~1e-9..1e-7 here) is at
#: rounding level, so h would learn from rounding noise and the acceptance test would compare
#: two equal numbers. The model itself stays float32.
GAL_SETTINGS: dict[str, Any] = {
    "ratio": 1e-3,
    "scale": 1.0,
    "hidden": None,
    "activation": None,
    "first_order": "sum",
    "accept": "decrease",
    "compute_dtype": torch.float64,
}

#: GAL at paper scale: the release's form (mean first-order term), ratio by dataset; float64
#: GAL arithmetic as above (a B x C computation, negligible next to EfficientNet-B1).
RELEASE_GAL: dict[str, dict[str, Any]] = {
    "cifar10": {**GAL_SETTINGS, "ratio": 1e-3, "first_order": "mean"},
    "cifar100": {**GAL_SETTINGS, "ratio": 1e-2, "first_order": "mean"},
}

_DIGITS_PLAN: dict[str, dict[str, Any]] = {
    "smoke": {"n_train": 320, "width": 8, "epochs": 2, "batch_size": 64, "milestones": (), "seeds": (0, 1)},
    "default": {"n_train": None, "width": 16, "epochs": 12, "batch_size": 64, "milestones": (6, 9), "seeds": (0, 1, 2, 3, 4)},
}
FULL_SEEDS = (0, 1, 2)


# -- setups ------------------------------------------------------------------------------------
def _digits_data(n_train: int | None) -> Data:
    d = digits()
    if n_train is None or n_train >= len(d.x_train):
        return d
    return Data(f"{d.name}-n{n_train}", d.x_train[:n_train], d.y_train[:n_train], d.x_test, d.y_test, d.num_outputs)


def _digits_setup(plan: Mapping[str, Any], model: str) -> Setup:
    data = _digits_data(plan["n_train"])
    width = int(plan["width"])
    if model == "smallcnn":
        model_fn: Any = lambda: SmallCNN(1, data.num_outputs, 8, width)  # noqa: E731
    elif model == "resnet8":
        model_fn = lambda: ResNet8(1, data.num_outputs, width)  # noqa: E731
    else:
        raise ValueError(f"unknown model {model!r}; use 'smallcnn' or 'resnet8'")
    sgd = DIGITS_OPTIMIZERS["SGD+momentum"]
    base = TrainConfig(
        model=f"{model}-w{width}",
        data=data.name,
        optimizer=sgd["optimizer"],
        lr=sgd["lr"],
        optimizer_kwargs=dict(sgd["optimizer_kwargs"]),
        epochs=int(plan["epochs"]),
        batch_size=int(plan["batch_size"]),
        milestones=tuple(plan["milestones"]),
        device="cpu",
    )
    return Setup(data, model_fn, base, tuple(plan["seeds"]))


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

    ``data`` replaces the CIFAR download (e.g. :func:`galcore.experiments.fullscale.fake_cifar` in tests);
    its ``resize`` is then used as given. Raises ``FileNotFoundError`` with instructions when
    CIFAR is absent and cannot be downloaded.
    """
    if data is None:
        data = cifar_data(dataset, data_root, download=download, size=input_size, flip=True, num_workers=num_workers)
    model_fn, model_name = efficientnet_b1_factory(data.num_outputs, pretrained)
    sgd = RELEASE_OPTIMIZERS["SGD+momentum"]
    base = TrainConfig(
        model=model_name,
        data=data.name,
        optimizer=sgd["optimizer"],
        lr=sgd["lr"],
        optimizer_kwargs=dict(sgd["optimizer_kwargs"]),
        epochs=epochs,
        batch_size=batch_size,
        milestones=milestones,
        device=device,
    )
    return Setup(data, model_fn, base, tuple(seeds))  # type: ignore[arg-type]  # LoaderData: see run_arms


def default_setup(
    profile: Profile | None = None,
    *,
    dataset: str = "cifar10",
    data_root: str | None = None,
    download: bool = True,
    pretrained: bool = True,
    model: str = "smallcnn",
) -> Setup:
    """The classification setup for ``profile`` (default: the active one).

    smoke/default: digits and a SmallCNN (``model="resnet8"`` for the ResNet-style net);
    ``base`` is the standard arm with SGD+momentum. full: :func:`full_setup` for ``dataset``
    (``"cifar10"`` or ``"cifar100"``). Keyword arguments other than ``profile`` apply where
    they make sense (``dataset``, ``data_root``, ``download``, ``pretrained``: full only).
    """
    p = profile or get_profile()
    if p == "full":
        return full_setup(dataset, data_root=data_root, download=download, pretrained=pretrained)
    return _digits_setup(_DIGITS_PLAN[p], model)


def default_setups(profile: Profile | None = None, **kw: Any) -> list[Setup]:
    """Every setup notebook 02 runs: CIFAR-10 and CIFAR-100 in ``full``, else the digits one."""
    p = profile or get_profile()
    if p == "full":
        return [default_setup(p, dataset=d, **kw) for d in ("cifar10", "cifar100")]
    return [default_setup(p, **kw)]


def is_fullscale(setup: Setup) -> bool:
    """Whether the setup reads its data through a loader (paper scale)."""
    return isinstance(setup.data, LoaderData)


# -- settings ----------------------------------------------------------------------------------
def optimizer_settings(profile: Profile | Setup | None = None) -> dict[str, dict[str, Any]]:
    """``{display name: {"optimizer", "lr", "optimizer_kwargs"}}`` for a profile or a setup."""
    full = is_fullscale(profile) if isinstance(profile, Setup) else (profile or get_profile()) == "full"
    return RELEASE_OPTIMIZERS if full else DIGITS_OPTIMIZERS


def gal_settings(setup: Setup | None = None) -> dict[str, Any]:
    """GAL's keyword arguments for a setup: :data:`GAL_SETTINGS` for in-memory data, the
    release's (:data:`RELEASE_GAL`, by number of classes) at paper scale. A fresh dict."""
    if setup is not None and is_fullscale(setup):
        return dict(RELEASE_GAL["cifar10" if setup.data.num_outputs <= 10 else "cifar100"])
    return dict(GAL_SETTINGS)


def gal_options(profile: Profile | None = None) -> dict[str, Any]:
    """The GAL settings of the profile's (first) setup, without building it: :data:`GAL_SETTINGS`
    (smoke/default) or the release's CIFAR-10 ones (full). The ablation module reads this."""
    p = profile or get_profile()
    return dict(RELEASE_GAL["cifar10"] if p == "full" else GAL_SETTINGS)


def optimizer_config(setup: Setup, name: str) -> TrainConfig:
    """The setup's standard arm with the optimizer ``name`` (one of :data:`OPTIMIZER_NAMES`)."""
    settings = optimizer_settings(setup)
    if name not in settings:
        raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(settings)}")
    s = settings[name]
    return replace(setup.base, optimizer=s["optimizer"], lr=s["lr"], optimizer_kwargs=dict(s["optimizer_kwargs"]), gal=None)


def paired_arms(setup: Setup, name: str, gal: Mapping[str, Any] | None = None) -> dict[str, TrainConfig]:
    """``{"standard": cfg, "gal": cfg with GAL}`` for optimizer ``name``; ``gal`` overrides
    :func:`gal_settings` keys."""
    cfg = optimizer_config(setup, name)
    return {"standard": cfg, "gal": replace(cfg, gal={**gal_settings(setup), **(gal or {})})}


def diagnostic_settings(profile: Profile | None = None) -> dict[str, Any]:
    """Diagnostic runs (one seed): ``seed``, ``probe_every`` (parameter-space remainder every k
    optimizer steps) and ``epochs`` (``None``: as the main runs, so the diagnostic GAL run
    retraces the main one)."""
    return choose(
        smoke={"seed": 0, "probe_every": 3, "epochs": None},
        default={"seed": 0, "probe_every": 11, "epochs": None},
        full={"seed": 0, "probe_every": 200, "epochs": 3},
        profile=profile,
    )


def diagnostic_arms(setup: Setup, name: str, profile: Profile | None = None) -> dict[str, TrainConfig]:
    """Runs that measure what the main ones do not (the trajectories are the same as the main
    runs': the probe and ``track_plain`` change nothing in training):

    - ``standard+probe``: the standard arm, parameter-space remainder every k steps;
    - ``gal+probe``: GAL with ``track_plain`` (output-space remainder with and without the
      adjustment) and the probe;
    - ``gal-float32``: the same GAL in float32 arithmetic, to show what float32 resolves.
    """
    d = diagnostic_settings(profile)
    arms = paired_arms(setup, name)
    std, gal = arms["standard"], arms["gal"]
    if d["epochs"] is not None:
        std, gal = replace(std, epochs=d["epochs"]), replace(gal, epochs=d["epochs"])
    gal_cfg = dict(gal.gal or {})
    return {
        "standard+probe": replace(std, seed=d["seed"], probe_every=d["probe_every"]),
        "gal+probe": replace(gal, seed=d["seed"], probe_every=d["probe_every"], gal={**gal_cfg, "track_plain": True}),
        "gal-float32": replace(gal, seed=d["seed"], gal={**gal_cfg, "track_plain": True, "compute_dtype": None}),
    }


# -- running -----------------------------------------------------------------------------------
def run_one(cfg: TrainConfig, setup: Setup, *, cache: bool = True, progress: bool = False) -> RunResult:
    """One run of ``cfg`` on the setup's data, cached in ``results/cache`` (the file
    :func:`galcore.experiments.harness.run` uses). In-memory data goes through :func:`galcore.experiments.harness.run`
    ; a paper-scale setup through :func:`galcore.experiments.fullscale.train_loader_run`."""
    if is_fullscale(setup):
        return train_loader_run(cfg, setup.data, setup.model_fn, cache=cache, progress=progress)  # type: ignore[arg-type]
    return run(cfg, setup.data, setup.model_fn, cache=cache, progress=progress)


def run_arms(
    arms: Mapping[str, TrainConfig],
    setup: Setup,
    seeds: Sequence[int] | None = None,
    *,
    cache: bool = True,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every arm for every seed (default: the setup's; the seed overrides each config's),
    returning :func:`galcore.experiments.harness.run_arms`'s frames ``(finals, histories)``, for in-memory
    and paper-scale setups alike."""
    seeds = tuple(setup.seeds if seeds is None else seeds)
    jobs: Any = [(name, seed) for seed in seeds for name in arms]
    if progress:
        from tqdm.auto import tqdm

        jobs = tqdm(jobs, desc=f"{setup.data.name}: runs", leave=False)
    finals, hists = [], []
    for name, seed in jobs:
        res = run_one(replace(arms[name], seed=seed), setup, cache=cache)
        finals.append({"arm": name, "seed": seed, **res.final, "seconds": res.seconds})
        hists.extend({"arm": name, "seed": seed, **h} for h in res.history)
    return pd.DataFrame(finals), pd.DataFrame(hists)


def run_experiment(
    setups: Sequence[Setup], optimizers: Sequence[str] = OPTIMIZER_NAMES, *, cache: bool = True, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Standard vs GAL, paired per seed, for every setup and optimizer.

    Returns ``(finals, histories)`` as :func:`run_arms`, with ``data`` and ``optimizer`` columns.
    """
    finals, hists = [], []
    for setup in setups:
        for name in optimizers:
            f, h = run_arms(paired_arms(setup, name), setup, cache=cache, progress=progress)
            for frame, out in ((f, finals), (h, hists)):
                frame.insert(0, "optimizer", name)
                frame.insert(0, "data", setup.data.name)
                out.append(frame)
    return pd.concat(finals, ignore_index=True), pd.concat(hists, ignore_index=True)


# -- summaries ---------------------------------------------------------------------------------
def _t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, math.nan, math.nan
    sem = float(stats.sem(values))
    if sem == 0.0:
        return mean, mean, mean
    low, high = stats.t.interval(level, len(values) - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


def overhead_per_seed(hists: pd.DataFrame) -> pd.DataFrame:
    """Wall time per epoch, GAL / standard, per (data, optimizer, seed): median epoch time of
    each run (the first epoch left out when there are more, it holds warm-up costs)."""
    h = hists
    if h["epoch"].max() > 1:
        h = h[h["epoch"] > 1]
    med = h.groupby(["data", "optimizer", "seed", "arm"])["epoch_time"].median().unstack("arm")
    out = (med["gal"] / med["standard"]).rename("overhead_ratio").reset_index()
    return out


def verdict(metric: str, mean_diff: float, low: float, high: float) -> str:
    """``"improved"``, ``"worse"`` or ``"no significant difference"`` from the CI of GAL -
    standard (``metric`` ending in ``accuracy``: higher is better; else lower is better)."""
    if not (low > 0 or high < 0):
        return "no significant difference"
    better = mean_diff > 0 if metric.endswith("accuracy") else mean_diff < 0
    return "improved" if better else "worse"


def summary_table(
    finals: pd.DataFrame,
    hists: pd.DataFrame,
    metrics: Sequence[str] = ("test_accuracy", "test_error"),
    level: float = 0.95,
) -> pd.DataFrame:
    """One row per (data, optimizer, metric): the paired difference GAL - standard over seeds
    with its CI (:func:`galcore.experiments.harness.paired_table`), the verdict, the mean acceptance rate
    of the GAL runs and the wall-time overhead ratio per epoch (mean over seeds, t CI)."""
    over = overhead_per_seed(hists)
    acc_rate = hists[hists["arm"] == "gal"].groupby(["data", "optimizer"])["accept_rate"].mean()
    rows = []
    for (data, opt), group in finals.groupby(["data", "optimizer"], sort=False):
        ratios = over[(over["data"] == data) & (over["optimizer"] == opt)]["overhead_ratio"].to_numpy()
        o_mean, o_low, o_high = _t_interval(ratios, level)
        for metric in metrics:
            t = paired_table(group, metric, control="standard", level=level)
            for rec in t.to_dict("records"):
                rows.append(
                    {
                        "data": data,
                        "optimizer": opt,
                        **rec,
                        "verdict": verdict(metric, rec["mean_diff"], rec["low"], rec["high"]),
                        "accept_rate": float(acc_rate.get((data, opt), math.nan)),
                        "overhead_ratio": o_mean,
                        "overhead_low": o_low,
                        "overhead_high": o_high,
                    }
                )
    cols = [
        "data", "optimizer", "arm", "metric", "mean_control", "mean_treatment", "mean_diff", "low", "high",
        "p_value", "n", "level", "significant", "verdict", "accept_rate", "overhead_ratio", "overhead_low",
        "overhead_high", "control",
    ]  # fmt: skip
    return pd.DataFrame(rows)[cols]


def per_seed_table(finals: pd.DataFrame, metric: str = "test_accuracy") -> pd.DataFrame:
    """``metric`` per seed: columns standard, gal and diff (GAL - standard), one row per
    (data, optimizer, seed)."""
    wide = finals.pivot_table(index=["data", "optimizer", "seed"], columns="arm", values=metric, sort=False)
    wide = wide[["standard", "gal"]].copy()
    wide["diff"] = wide["gal"] - wide["standard"]
    wide.columns.name = None
    return wide.reset_index()


def probe_frame(results: Mapping[str, RunResult]) -> pd.DataFrame:
    """The parameter-space probe rows of several runs, one frame with a ``run`` column."""
    frames = [pd.DataFrame(r.probe).assign(run=name) for name, r in results.items() if r.probe]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# -- figures -----------------------------------------------------------------------------------
def _band(ax: Any, frame: pd.DataFrame, x: str, y: str, label: str, color: Any = None, level: float = 0.95) -> None:
    """Mean over seeds with a t confidence band."""
    g = frame.groupby(x)[y]
    mean = g.mean()
    n = g.count()
    sem = g.std(ddof=1) / np.sqrt(n)
    half = sem * stats.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1))
    (line,) = ax.plot(mean.index, mean.values, label=label, color=color)
    ax.fill_between(mean.index, (mean - half).values, (mean + half).values, alpha=0.25, color=line.get_color())


def plot_learning_curves(hists: pd.DataFrame, metric: str = "test_accuracy", data: str | None = None) -> Any:
    """One panel per optimizer: ``metric`` per epoch, standard and GAL, mean and 95% band over seeds."""
    import matplotlib.pyplot as plt

    h = hists if data is None else hists[hists["data"] == data]
    opts = list(dict.fromkeys(h["optimizer"]))
    fig, axes = plt.subplots(1, len(opts), figsize=(3.6 * len(opts), 3.2), sharey=True, squeeze=False)
    for ax, opt in zip(axes[0], opts, strict=True):
        for arm, color in (("standard", "C0"), ("gal", "C3")):
            _band(ax, h[(h["optimizer"] == opt) & (h["arm"] == arm)], "epoch", metric, arm, color)
        ax.set_title(opt)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel(metric)
    axes[0][0].legend()
    fig.tight_layout()
    return fig


def plot_paired_differences(finals: pd.DataFrame, table: pd.DataFrame, metric: str = "test_accuracy") -> Any:
    """Per optimizer (and data set): GAL - standard per seed (dots) and the mean with its CI."""
    import matplotlib.pyplot as plt

    ps = per_seed_table(finals, metric)
    t = table[table["metric"] == metric].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(t), 3.4))
    labels = []
    for i, row in t.iterrows():
        d = ps[(ps["data"] == row["data"]) & (ps["optimizer"] == row["optimizer"])]["diff"].to_numpy()
        jitter = np.linspace(-0.12, 0.12, len(d)) if len(d) > 1 else np.zeros(1)
        ax.scatter(i + jitter, d, s=14, color="0.5", zorder=2)
        ax.errorbar(
            [i], [row["mean_diff"]], yerr=[[row["mean_diff"] - row["low"]], [row["high"] - row["mean_diff"]]],
            fmt="o", color="C3", capsize=5, zorder=3,
        )  # fmt: skip
        labels.append(row["optimizer"] if t["data"].nunique() == 1 else f"{row['data']}\n{row['optimizer']}")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(t)), labels, rotation=15)
    ax.set_ylabel(f"GAL - standard, {metric}")
    ax.set_title("paired differences per seed (grey) and mean with 95% CI")
    fig.tight_layout()
    return fig


def plot_acceptance(hists: pd.DataFrame) -> Any:
    """Acceptance rate of the adjustment per epoch (GAL runs), mean and 95% band over seeds."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    g = hists[hists["arm"] == "gal"]
    for (data, opt), frame in g.groupby(["data", "optimizer"], sort=False):
        _band(ax, frame, "epoch", "accept_rate", opt if g["data"].nunique() == 1 else f"{data} {opt}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accepted steps (fraction)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_output_remainder(diag: pd.DataFrame) -> Any:
    """Mean |output-space remainder| per epoch, with (``remainder_abs``) and without
    (``remainder_plain_abs``) the adjustment; one panel per optimizer, float64 and float32."""
    import matplotlib.pyplot as plt

    opts = list(dict.fromkeys(diag["optimizer"]))
    fig, axes = plt.subplots(1, len(opts), figsize=(3.6 * len(opts), 3.2), squeeze=False)
    for ax, opt in zip(axes[0], opts, strict=True):
        for arm, style in (("gal+probe", "-"), ("gal-float32", ":")):
            f = diag[(diag["optimizer"] == opt) & (diag["run"] == arm)]
            tag = "float64" if arm == "gal+probe" else "float32"
            ax.plot(f["epoch"], f["remainder_plain_abs"], style, color="C0", lw=3.5, alpha=0.45, label=f"plain step ({tag})")
            ax.plot(f["epoch"], f["remainder_abs"], style, color="C3", lw=1.2, label=f"with adjustment ({tag})")
        ax.set_yscale("log")
        ax.set_title(opt)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("mean |remainder| per step")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_param_remainder(probes: pd.DataFrame) -> Any:
    """|r1| (whole Taylor remainder of the real optimizer step, parameter space) every k
    steps, standard vs GAL, one panel per optimizer."""
    import matplotlib.pyplot as plt

    opts = list(dict.fromkeys(probes["optimizer"]))
    fig, axes = plt.subplots(1, len(opts), figsize=(3.6 * len(opts), 3.2), squeeze=False)
    for ax, opt in zip(axes[0], opts, strict=True):
        for arm, color in (("standard+probe", "C0"), ("gal+probe", "C3")):
            f = probes[(probes["optimizer"] == opt) & (probes["run"] == arm)]
            ax.plot(f["call"], f["r1"].abs().clip(lower=1e-18), ".-", color=color, ms=3, label=arm.split("+")[0])
        ax.set_yscale("log")
        ax.set_title(opt)
        ax.set_xlabel("optimizer step")
    axes[0][0].set_ylabel("|r1| of the step")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_overhead(table: pd.DataFrame) -> Any:
    """Wall time per epoch, GAL / standard, per optimizer with its 95% CI."""
    import matplotlib.pyplot as plt

    t = table.drop_duplicates(["data", "optimizer"]).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(t), 3.2))
    err = np.vstack([t["overhead_ratio"] - t["overhead_low"], t["overhead_high"] - t["overhead_ratio"]])
    ax.bar(range(len(t)), t["overhead_ratio"], yerr=np.nan_to_num(err), capsize=4, color="C2")
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xticks(range(len(t)), t["optimizer"], rotation=15)
    ax.set_ylabel("epoch time, GAL / standard")
    fig.tight_layout()
    return fig
