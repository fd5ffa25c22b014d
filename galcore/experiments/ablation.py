"""Ablations of GAL: which of its settings matter, measured on paired seeds.

A :class:`Study` varies one factor of GAL (its ratio r, the tentative step's ``scale``, the
architecture of h, the acceptance rule, the first-order term, the space the adjustment lives
in, the optimizer underneath) on one setup (classification or regression) and compares every
setting with the study's control on the same seeds, initial weights and data order
(:func:`galcore.experiments.harness.run`, cached on disk by config hash). :func:`summarize` picks each
study's best setting and gives its paired difference from the control (95% CI over seeds) and
a plain sentence generated from those numbers. The cost study times a training step and
measures its peak memory, GAL vs standard, with :mod:`galcore.experiments.bench` (the step benchmark's code).

Setups come from :mod:`galcore.experiments.classification` / :mod:`galcore.experiments.regression`
(``default_setup(profile)``) when those modules exist, else from the small fallbacks below;
:data:`SETUP_MODULES` is the one line that switches. :data:`BUDGET` then caps epochs (and, in
``smoke``, the training rows) so that the whole notebook fits its profile's time.

Controls (what every other setting of a study is compared with):

=============  ===============================================  ===========================
study          settings                                         control
=============  ===============================================  ===========================
ratio          r = 0 (standard), 1e-4, 1e-3, 1e-2, 1e-1, 0.3   r = 0, the standard method
scale          0.1, 1, 10                                       1 (the release)
h              release linear stack, same + ReLU, one linear,   the frozen random h (is it the
               a fixed random h never trained                   learning that helps?)
accept         "decrease", "always"                             "decrease" (the release)
first_order    "mean", "sum"                                    "mean" (the release's form)
space          output, parameter (a tiny MLP, h 64-16)          output (the release's code)
optimizer-*    standard, GAL (per optimizer)                    standard
cost-*         standard, GAL                                    standard
=============  ===============================================  ===========================

Everything a study does not vary is the setup's GAL base (:func:`gal_base`): the shared
module's ``gal_options()`` (both have one: ratio 1e-3 for classification, 0.1 for regression,
GAL's arithmetic in float64), else ``ratio=1e-3`` (the CIFAR-10 release) and galcore's
defaults (``scale=1``, release h, ``first_order="sum"``, ``accept="decrease"``).

Profiles: ``smoke`` (nbval, about half a minute): 2 seeds, 1-2 epochs on a few hundred rows.
``default`` (the main job, minutes on 2 CPU cores): the setups as notebooks 02 and 04 run them,
5 seeds. ``full``: the same in-memory setups with 10 seeds (a paper-scale ablation would be
some 250 paper-scale runs per setup).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import inspect
import math
import os
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from scipy import stats as _sstats
from torch import nn

from galcore.experiments.bench import StepRunner, step_peak_bytes, time_steps
from galcore.experiments.datasets import digits
from galcore.gal import GAL
from galcore.experiments.models import MLP, SmallCNN
from galcore.experiments.optim import make_optimizer
from galcore.experiments.profile import Profile, choose, get_profile
from galcore.experiments.results import results_dir
from galcore.experiments.stats import PairedResult, paired_ci
from galcore.experiments.harness import Data, RunResult, Setup, TrainConfig, build_gal, cache_path, loss_function, run

__all__ = [
    "BUDGET",
    "GROUPS",
    "METRICS",
    "OPTIMIZER_ARMS",
    "SETUP_MODULES",
    "SUMMARY_COLUMNS",
    "LoadedSetup",
    "Metric",
    "Study",
    "arm_table",
    "build_studies",
    "canonical_gal",
    "default_studies",
    "describe",
    "describe_arms",
    "flatten_config",
    "format_summary",
    "gal_base",
    "load_setup",
    "measure_cost",
    "pending_jobs",
    "plot_group",
    "prefetch",
    "report_group",
    "run_all",
    "run_cached",
    "run_study",
    "same_values",
    "save_summary",
    "shared_optimizers",
    "summarize",
    "summarize_finals",
    "summary_table",
]

Task = Literal["classification", "regression"]
TASKS: tuple[Task, ...] = ("classification", "regression")
OUT = "05_ablations"

#: Where the shared setups live (``default_setup(profile=None) -> Setup``); a ``None`` value,
#: or a module that does not exist, uses this module's fallback. Switching is this one line.
SETUP_MODULES: dict[str, str | None] = {"classification": "galcore.experiments.classification", "regression": "galcore.experiments.regression"}

#: Applied to whichever setup is used: at most ``epochs`` epochs and ``max_train`` training
#: rows (None: the setup's), exactly ``seeds`` seeds (the setup's first ones, else 0..n-1).
BUDGET: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "classification": {"epochs": 1, "max_train": 256, "seeds": 2},
        "regression": {"epochs": 2, "max_train": 128, "seeds": 2},
    },
    "default": {
        "classification": {"epochs": None, "max_train": None, "seeds": 5},
        "regression": {"epochs": None, "max_train": None, "seeds": 5},
    },
    "full": {
        "classification": {"epochs": None, "max_train": None, "seeds": 10},
        "regression": {"epochs": None, "max_train": None, "seeds": 10},
    },
}

#: GAL's constructor defaults (read from its signature) and training's extra keys, used to
#: compare configs.
GAL_DEFAULTS: dict[str, Any] = {
    **{
        name: p.default
        for name, p in inspect.signature(GAL.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty and name not in ("dim", "h", "sync_distributed")
    },
    "frozen_h": False,
    "h_seed": None,
}


@dataclass(frozen=True)
class Metric:
    """A compared column: its axis label, its name in a sentence, the unit of a difference,
    and whether lower (``"min"``) or higher (``"max"``) is better."""

    column: str
    label: str
    noun: str
    unit: str
    goal: Literal["min", "max"] = "min"


#: The metric of each task's studies and of the cost studies.
METRICS: dict[str, Metric] = {
    "classification": Metric("test_error", "test error (%)", "test error", "percentage points"),
    "regression": Metric("test_rmse_orig", "test RMSE (target units)", "test RMSE", "target units"),
    "step_ms": Metric("step_ms", "time per step (ms)", "time per step", "ms"),
    "step_peak_mb": Metric("step_peak_mb", "peak memory of a step (MB)", "peak memory of a step", "MB"),
}

#: Study groups in notebook order: (key, heading, why).
GROUPS: list[tuple[str, str, str]] = [
    ("ratio", "1. Magnitude ratio r", "r sets the adjustment's norm relative to the gradient's; r = 0 is plain training."),
    ("scale", "2. Scale of the tentative step", "The tentative step uses lr x scale; it decides which remainder h learns to cancel."),
    ("h", "3. Architecture of h", "Is it the learning of h that helps, or just a perturbation of the gradient? A fixed random h is the control."),
    ("accept", "4. Acceptance rule", "The release uses the adjusted gradient only when the tentative loss did not increase."),
    ("first_order", "5. First-order term", "The exact Taylor term sums <delta, g> over the batch; the release averages it."),
    ("space", "6. Output space vs parameter space", "The release adjusts the logits' gradient (classification) or the parameters' (3D toy)."),
    ("optimizers", "7. Optimizers", "GAL only changes the gradient; does its effect depend on the optimizer that uses it?"),
    ("cost", "8. Cost", "What GAL costs per training step, in time and in memory."),
]


# -- setups ---------------------------------------------------------------------------------
def _fallback_classification(profile: Profile | None = None) -> Setup:
    """Digits (1,347 train / 450 test, 8x8) with :class:`galcore.experiments.models.SmallCNN`, SGD with
    momentum 0.9, lr 0.05, batch 64 (epochs and seeds from :data:`BUDGET`)."""
    data = digits()
    base = TrainConfig(model="smallcnn16-10", data=data.name, optimizer="momentum", lr=0.05, epochs=8, batch_size=64)
    return Setup(data=data, model_fn=SmallCNN, base=base, seeds=(0, 1, 2, 3, 4))


def _diabetes() -> Data:
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    bunch = load_diabetes(scaled=False)
    x = torch.tensor(bunch.data, dtype=torch.float32)
    y = torch.tensor(bunch.target, dtype=torch.float32).reshape(-1, 1)
    tr, te = (torch.as_tensor(i) for i in train_test_split(np.arange(len(y)), test_size=0.25, random_state=0))
    xm, xs = x[tr].mean(0, keepdim=True), x[tr].std(0, keepdim=True)
    ym, ys = y[tr].mean(), y[tr].std()
    return Data("diabetes-0.25-0", (x[tr] - xm) / xs, (y[tr] - ym) / ys, (x[te] - xm) / xs, (y[te] - ym) / ys, 1, float(ys))


def _fallback_regression(profile: Profile | None = None) -> Setup:
    """Diabetes (bundled) with an MLP 10-64-64-1, MSE, SGD with momentum, lr 0.01, batch 32."""
    data = _diabetes()
    base = TrainConfig(
        model="mlp10-64-64-1", data=data.name, task="regression", loss="mse", optimizer="momentum", lr=0.01, epochs=25, batch_size=32
    )
    return Setup(data=data, model_fn=lambda: MLP(10, 1, hidden=(64, 64)), base=base, seeds=(0, 1, 2, 3, 4))


_FALLBACKS: dict[str, Callable[[Profile | None], Setup]] = {
    "classification": _fallback_classification,
    "regression": _fallback_regression,
}


def _shared_module(task: str) -> ModuleType | None:
    name = SETUP_MODULES.get(task)
    if not name or importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


def _subset(data: Data, max_train: int | None) -> Data:
    """The first ``max_train`` training rows of a fixed permutation (test set unchanged)."""
    if max_train is None or max_train >= len(data.x_train):
        return data
    idx = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(1234))[:max_train]
    return replace(data, name=f"{data.name}-sub{max_train}", x_train=data.x_train[idx], y_train=data.y_train[idx])


@dataclass(frozen=True)
class LoadedSetup:
    """A setup as the ablations use it: sized by :data:`BUDGET`, with its GAL base and origin."""

    task: Task
    setup: Setup
    gal: Mapping[str, Any]
    source: str
    optimizers: Mapping[str, tuple[float, Mapping[str, Any]]] = field(default_factory=dict)


def shared_optimizers(module: ModuleType | None, setup: Setup) -> dict[str, tuple[float, dict[str, Any]]]:
    """``{optimizer name: (lr, kwargs)}`` that the shared setup module tuned for its setup
    (classification: ``optimizer_settings(setup)``; regression: ``LR[dataset]``)."""
    out: dict[str, tuple[float, dict[str, Any]]] = {}
    if module is None:
        return out
    fn = getattr(module, "optimizer_settings", None)
    if callable(fn):
        for s in fn(setup).values():
            out[str(s["optimizer"])] = (float(s["lr"]), dict(s.get("optimizer_kwargs", {})))
    table = getattr(module, "LR", None)
    dataset = setup.data.name.split("-")[0]
    if isinstance(table, Mapping) and isinstance(table.get(dataset), Mapping):
        for name, lr in table[dataset].items():
            out.setdefault(str(name), (float(lr), {}))
    return out


def gal_base(task: str, module: ModuleType | None = None, profile: Profile | None = None) -> dict[str, Any]:
    """The GAL options held fixed while a study varies one: the shared module's
    ``gal_options()`` (without ``track_plain``, a diagnostic) when it has one, else
    ``{"ratio": 1e-3}`` (the CIFAR-10 release; everything else galcore's defaults)."""
    fn = getattr(module, "gal_options", None) if module is not None else None
    if callable(fn):
        opts = dict(fn(profile=profile) if "profile" in inspect.signature(fn).parameters else fn())
        opts.pop("track_plain", None)
        opts.setdefault("ratio", GAL_DEFAULTS["ratio"])
        return canonical_gal(opts)
    return {"ratio": 1e-3}


def load_setup(task: Task, profile: Profile | None = None) -> LoadedSetup:
    """The ``task`` setup (shared module if present, else the fallback), capped by :data:`BUDGET`."""
    p = profile or get_profile()
    # full: the in-memory (default) setups with more seeds and epochs; a paper-scale ablation
    # would be some 250 paper-scale runs per setup.
    sp: Profile = "default" if p == "full" else p
    module = _shared_module(task)
    if module is not None and callable(getattr(module, "default_setup", None)):
        setup = module.default_setup(profile=sp)
        source = module.__name__
    else:
        setup = _FALLBACKS[task](sp)
        source = f"{__name__} fallback"
    budget = BUDGET[p][task]
    data = _subset(setup.data, budget["max_train"])
    epochs = setup.base.epochs if budget["epochs"] is None else min(setup.base.epochs, budget["epochs"])
    base = replace(setup.base, gal=None, data=data.name, epochs=epochs)
    seeds = tuple(setup.seeds[: budget["seeds"]]) if len(setup.seeds) >= budget["seeds"] else tuple(range(budget["seeds"]))
    sized = Setup(data=data, model_fn=setup.model_fn, base=base, seeds=seeds)
    return LoadedSetup(task, sized, gal_base(task, module, sp), source, shared_optimizers(module, setup))


# -- studies --------------------------------------------------------------------------------
def canonical_gal(opts: Mapping[str, Any]) -> dict[str, Any]:
    """GAL options with ``ratio`` always present and every other key at its default dropped,
    so equal settings give equal dicts (and share the run cache)."""
    out = {"ratio": float(opts.get("ratio", GAL_DEFAULTS["ratio"]))}
    for k, v in opts.items():
        if k == "ratio":
            continue
        if k in GAL_DEFAULTS and _same(v, GAL_DEFAULTS[k]):
            continue
        out[k] = tuple(v) if isinstance(v, list) else v
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return tuple(a) == tuple(b)
    return bool(a == b) if type(a) is type(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float))) else False


def flatten_config(cfg: TrainConfig) -> dict[str, Any]:
    """A config as flat comparable fields (``seed`` left out). GAL options appear as
    ``gal.<name>`` with their defaults filled in; the standard method is GAL with ``ratio=0``
    (what it is mathematically), so a study over r differs only in ``gal.ratio``."""
    d = asdict(cfg)
    d.pop("seed")
    gal = d.pop("gal")
    opts = {**GAL_DEFAULTS, **(gal if gal is not None else {"ratio": 0.0})}
    for k, v in opts.items():
        d[f"gal.{k}"] = tuple(v) if isinstance(v, list) else (str(v) if isinstance(v, torch.dtype) else v)
    d["optimizer_kwargs"] = tuple(sorted(dict(d["optimizer_kwargs"]).items()))
    d["milestones"] = tuple(d["milestones"])
    return d


@dataclass(frozen=True)
class Study:
    """One factor of GAL on one setup.

    Attributes:
        key: unique name, ``"<name>:<task>"``.
        group: which study group it belongs to (:data:`GROUPS`).
        title: what varies, in words (``"ratio r"``).
        factor: the config fields that vary (``"gal.ratio"``; ``flatten_config`` names).
        task: ``"classification"`` or ``"regression"``.
        arms: ``{label: TrainConfig}`` in display order; they differ only in ``factor``.
        control: the label every other arm is compared with.
        setup: data, model factory and seeds.
        metric: the finals' column compared (lower is better unless ``goal == "max"``).
        reference: an optional extra arm shown for context (e.g. the standard method in the
            space study) that is neither a setting of the factor nor a candidate for best.
        meaning: phrases completing the sentence when the best setting is significantly
            better than the control (``better``), when it is not (``none``; other settings
            may still be significantly worse, which the sentence lists), when every setting
            gives exactly the control's result (``identical``, default ``none``) and when the
            closest alternative is significantly worse than the control (``worse``);
            ``{best}``, ``{control}``, ``{compared}``, ``{pct}``, ``{ratio}``, ``{metric}`` are
            filled in.
        kind: ``"train"`` (training runs) or ``"cost"`` (a step's time and memory).
    """

    key: str
    group: str
    title: str
    factor: tuple[str, ...]
    task: Task
    arms: Mapping[str, TrainConfig]
    control: str
    setup: Setup
    metric: str
    reference: tuple[str, TrainConfig] | None = None
    meaning: Mapping[str, str] = field(default_factory=dict)
    kind: Literal["train", "cost"] = "train"

    @property
    def info(self) -> Metric:
        """The compared metric's label, unit and goal."""
        if self.metric in METRICS:
            return METRICS[self.metric]
        m = METRICS[self.task]
        return m if m.column == self.metric else Metric(self.metric, self.metric, self.metric, "")

    @property
    def goal(self) -> str:
        return self.info.goal

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.setup.seeds)

    def all_arms(self) -> dict[str, TrainConfig]:
        out = dict(self.arms)
        if self.reference is not None:
            out[self.reference[0]] = self.reference[1]
        return out


def _tiny_setup(loaded: LoadedSetup) -> tuple[Setup, dict[str, Any]]:
    """Study 6's model: an MLP small enough for ParamGAL (h reads all its parameters).

    Classification: 64 -> 8 -> 10 (610 parameters); regression: d -> 16 -> k (193 for
    diabetes). Same data, optimizer, lr, epochs and seeds as the setup. Both spaces use h with
    hidden widths (64, 16) and the setup's GAL base otherwise, without ``compute_dtype``."""
    s = loaded.setup
    d_in = int(s.data.x_train[0].numel())
    k = s.data.num_outputs
    width = 8 if loaded.task == "classification" else 16
    model_fn = _TinyMLP(d_in, k, width)
    base = replace(s.base, model=f"tinymlp{d_in}-{width}-{k}")
    # compute_dtype is left out: ParamGAL would cast the parameters to it while training feeds
    # float32 inputs to functional_call (a dtype mismatch); both arms use the same options.
    opts = {k: v for k, v in loaded.gal.items() if k != "compute_dtype"}
    return Setup(data=s.data, model_fn=model_fn, base=base, seeds=s.seeds), canonical_gal({**opts, "hidden": (64, 16)})


@dataclass(frozen=True)
class _TinyMLP:
    """A picklable model factory: ``MLP(d_in, k, hidden=(width,))``."""

    d_in: int
    k: int
    width: int

    def __call__(self) -> nn.Module:
        return MLP(self.d_in, self.k, hidden=(self.width,))

    def num_parameters(self) -> int:
        return self.d_in * self.width + self.width + self.width * self.k + self.k


#: Optimizers of study 7: label -> galcore name. Their lr and keywords come from the shared
#: setup module where it tuned that optimizer (:func:`shared_optimizers`), else from
#: :func:`_optimizer_config`'s defaults.
OPTIMIZER_ARMS: dict[str, str] = {
    "SGD": "sgd",
    "SGD+momentum": "momentum",
    "Adam": "adam",
    "RMSprop": "rmsprop",
    "Lookahead(SGD)": "lookahead",
}


def _optimizer_config(base: TrainConfig, name: str, tuned: Mapping[str, tuple[float, Mapping[str, Any]]]) -> TrainConfig:
    """The standard arm with optimizer ``name``: the setup's own config for its optimizer,
    the shared module's tuned lr/kwargs where it has them, else: SGD at twice the base lr
    (no momentum), Adam and RMSprop at 1e-3, Lookahead (k 5, alpha 0.8, the release's) over
    the base SGD+momentum; the base's weight decay is kept for the SGD family."""
    if name == base.optimizer:
        return base
    wd = {k: v for k, v in dict(base.optimizer_kwargs).items() if k == "weight_decay"}
    if name in tuned:
        lr, kw = tuned[name]
        return replace(base, optimizer=name, lr=float(lr), optimizer_kwargs=dict(kw))
    defaults: dict[str, tuple[float, dict[str, Any]]] = {
        "sgd": (2 * base.lr, wd),
        "momentum": (base.lr, wd),
        "adam": (1e-3, {}),
        "rmsprop": (1e-3, {}),
        "lookahead": (base.lr, {"k": 5, "alpha": 0.8, **wd}),
    }
    lr, kw = defaults[name]
    return replace(base, optimizer=name, lr=float(lr), optimizer_kwargs=kw)


def _fmt_r(v: float) -> str:
    return "r=0 (standard)" if v == 0 else f"r={v:g}"


def build_studies(loaded: Iterable[LoadedSetup]) -> list[Study]:
    """Every study for every loaded setup, in :data:`GROUPS` order then setup order."""
    by_group: dict[str, list[Study]] = {g: [] for g, _, _ in GROUPS}
    for ls in loaded:
        s, task, g0 = ls.setup, ls.task, dict(ls.gal)
        base = s.base

        def gal(**kw: Any) -> TrainConfig:
            return replace(base, gal=canonical_gal({**g0, **kw}))

        metric = METRICS[task].column
        ratios = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 0.3)
        by_group["ratio"].append(Study(
            f"ratio:{task}", "ratio", "ratio r", ("gal.ratio",), task,
            {_fmt_r(r): (base if r == 0 else gal(ratio=r)) for r in ratios}, _fmt_r(0.0), s, metric,
            meaning={"better": "GAL with r = {best} beats the standard method here",
                     "none": "no ratio tried makes GAL measurably better than the standard method",
                     "worse": "every ratio tried is worse than the standard method"},
        ))
        scales = (0.1, 1.0, 10.0)
        by_group["scale"].append(Study(
            f"scale:{task}", "scale", "scale of the tentative step", ("gal.scale",), task,
            {f"scale={v:g}": gal(scale=v) for v in scales}, "scale=1", s, metric, reference=("standard (ref.)", base),
            meaning={"better": "the tentative step's size matters: {best} beats the release's scale 1",
                     "none": "no scale tried is measurably better than the release's scale 1",
                     "identical": "the tentative step's scale does not change the {metric} at all here",
                     "worse": "the release's scale 1 beats the other scales tried"},
        ))
        h_arms = {
            "linear stack (release)": gal(),
            "same sizes + ReLU": gal(activation="relu"),
            "single linear layer": gal(hidden=()),
            "fixed random h": gal(frozen_h=True),
        }
        by_group["h"].append(Study(
            f"h:{task}", "h", "architecture of h", ("gal.hidden", "gal.activation", "gal.frozen_h"), task,
            h_arms, "fixed random h", s, metric, reference=("standard (ref.)", base),
            meaning={"better": "training h helps beyond a fixed random direction",
                     "none": "a trained h is not measurably better than a fixed random one, so any effect is not from learning h",
                     "worse": "a fixed random h beats every trained h"},
        ))
        by_group["accept"].append(Study(
            f"accept:{task}", "accept", "acceptance rule", ("gal.accept",), task,
            {"decrease (release)": gal(accept="decrease"), "always": gal(accept="always")}, "decrease (release)", s, metric,
            reference=("standard (ref.)", base),
            meaning={"better": "always using the adjusted gradient beats the release's rule",
                     "none": "the acceptance rule makes no measurable difference",
                     "identical": "the acceptance rule does not change the {metric} at all here",
                     "worse": "the release's rule beats always using the adjusted gradient"},
        ))
        by_group["first_order"].append(Study(
            f"first_order:{task}", "first_order", "first-order term", ("gal.first_order",), task,
            {"mean (release)": gal(first_order="mean"), "sum (exact)": gal(first_order="sum")}, "mean (release)", s, metric,
            reference=("standard (ref.)", base),
            meaning={"better": "the exact Taylor term beats the release's form",
                     "none": "the form of the first-order term makes no measurable difference",
                     "identical": "the form of the first-order term does not change the {metric} at all here",
                     "worse": "the release's form beats the exact Taylor term"},
        ))
        tiny, tiny_gal = _tiny_setup(ls)
        tb = tiny.base
        by_group["space"].append(Study(
            f"space:{task}", "space", "space of the adjustment", ("space",), task,
            {"output": replace(tb, gal=tiny_gal), "parameter": replace(tb, gal=tiny_gal, space="parameter")}, "output", tiny, metric,
            reference=("standard (ref.)", tb),
            meaning={"better": "adjusting the parameters' gradient beats adjusting the outputs' here",
                     "none": "where the adjustment is applied makes no measurable difference on this model",
                     "worse": "the output-space adjustment (the release's classification code) beats parameter space"},
        ))
        for label, name in OPTIMIZER_ARMS.items():
            ob = _optimizer_config(base, name, ls.optimizers)
            by_group["optimizers"].append(Study(
                f"optimizer-{name}:{task}", "optimizers", f"GAL under {label}", ("gal.ratio",), task,
                {"standard": ob, "GAL": replace(ob, gal=canonical_gal(g0))}, "standard", s, metric,
                meaning={"better": f"GAL improves training with {label}",
                         "none": f"GAL makes no measurable difference with {label}",
                         "worse": f"GAL hurts training with {label}"},
            ))
        cost_arms = {"standard": base, "GAL": replace(base, gal=canonical_gal(g0))}
        for m, worse in (("step_ms", "a GAL step takes {ratio} times as long as a standard one"),
                         ("step_peak_mb", "a GAL step allocates {pct} more tensor memory at its peak")):
            by_group["cost"].append(Study(
                f"cost-{m}:{task}", "cost", METRICS[m].noun, ("gal.ratio",), task, cost_arms, "standard", s, m,
                meaning={"better": "GAL is not more expensive here (unexpected; check the measurement)",
                         "none": "GAL's extra cost is below what this measurement resolves",
                         "worse": worse},
                kind="cost",
            ))
    return [st for g, _, _ in GROUPS for st in by_group[g]]


def default_studies(profile: Profile | None = None, tasks: Sequence[Task] = TASKS) -> tuple[list[Study], list[LoadedSetup]]:
    """Load the setups for ``tasks`` and build every study on them."""
    loaded = [load_setup(t, profile) for t in tasks]
    return build_studies(loaded), loaded


# -- running --------------------------------------------------------------------------------
def run_cached(cfg: TrainConfig, data: Data, model_fn: Callable[[], nn.Module], *, cache: bool = True) -> RunResult:
    """:func:`galcore.experiments.harness.run` (cached by config and code hash)."""
    return run(cfg, data, model_fn, cache=cache)


def run_study(study: Study, *, cache: bool = True) -> pd.DataFrame:
    """Every arm (and the reference) for every seed; one row per (arm, seed) with the final
    metrics, ``seconds`` and, for GAL arms, ``accept_rate_mean`` (over epochs)."""
    if study.kind == "cost":
        return measure_cost(study)
    rows = []
    for seed in study.seeds:
        for label, cfg in study.all_arms().items():
            res = run_cached(replace(cfg, seed=seed), study.setup.data, study.setup.model_fn, cache=cache)
            row = {"arm": label, "seed": seed, **res.final, "seconds": res.seconds}
            if res.history and "accept_rate" in res.history[0]:
                row["accept_rate_mean"] = float(np.mean([h["accept_rate"] for h in res.history]))
            rows.append(row)
    return pd.DataFrame(rows)


# Parallel pre-computation: worker processes fill the run cache; the notebook then reads it.
_WORKER: dict[str, Any] = {}


def _worker_init(profile: str, tasks: tuple[str, ...]) -> None:
    torch.set_num_threads(1)
    studies, _ = default_studies(profile, tasks)  # type: ignore[arg-type]
    _WORKER["studies"] = {s.key: s for s in studies}


def _worker_run(study_key: str, arm: str, seed: int, key: str) -> bool:
    """Run one job if the worker's own copy of the study has that exact config (``key``);
    otherwise leave it to the caller's process (returns False)."""
    st = _WORKER["studies"].get(study_key)
    if st is None or arm not in st.all_arms():
        return False
    cfg = replace(st.all_arms()[arm], seed=seed)
    if cfg.key() != key:
        return False
    run_cached(cfg, st.setup.data, st.setup.model_fn)
    return True


def pending_jobs(studies: Sequence[Study]) -> list[tuple[str, str, int]]:
    """``(study key, arm, seed)`` of every training run not yet in the cache, one per config."""
    seen: set[Path] = set()
    jobs = []
    for st in studies:
        if st.kind != "train":
            continue
        for seed in st.seeds:
            for label, cfg in st.all_arms().items():
                path = cache_path(replace(cfg, seed=seed))
                if path in seen or path.is_file():
                    continue
                seen.add(path)
                jobs.append((st.key, label, seed))
    return jobs


def prefetch(studies: Sequence[Study], workers: int, profile: Profile | None = None, progress: bool = False) -> int:
    """Run the uncached training runs of ``studies`` in ``workers`` processes (one thread each;
    ``spawn``, so safe next to a notebook's torch). A worker rebuilds the default studies of
    ``profile`` (a model factory need not pickle) and runs only jobs whose config it finds
    there unchanged; anything else is left for :func:`run_study`. Returns how many runs the
    workers made."""
    jobs = pending_jobs(studies)
    if workers <= 1 or len(jobs) < 2:
        return 0
    import concurrent.futures as cf
    import multiprocessing as mp

    tasks = tuple(dict.fromkeys(s.task for s in studies))
    p = profile or get_profile()
    # GAL runs first: they are the longest
    jobs.sort(key=lambda j: 0 if _find(studies, j[0]).all_arms()[j[1]].gal is not None else 1)
    done = 0
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init, initargs=(p, tasks)) as pool:
        futures = []
        for key, arm, seed in jobs:
            cfg = replace(_find(studies, key).all_arms()[arm], seed=seed)
            futures.append(pool.submit(_worker_run, key, arm, seed, cfg.key()))
        for f in cf.as_completed(futures):
            done += int(f.result())
            if progress and done and done % 25 == 0:
                print(f"  {done}/{len(jobs)} runs", file=sys.stderr, flush=True)
    return done


def _find(studies: Sequence[Study], key: str) -> Study:
    return next(s for s in studies if s.key == key)


def run_all(
    studies: Sequence[Study], *, workers: int | None = None, profile: Profile | None = None, progress: bool = False
) -> dict[str, pd.DataFrame]:
    """Finals of every study (``{study key: finals}``). Uncached training runs are first
    computed by ``workers`` processes (default: 1 in smoke, else up to 2); the cost studies
    run afterwards, alone, so that their timings are not disturbed by training.

    Everything runs with one torch thread (the models are tiny: more threads only spin), in
    the workers and here alike, so a run gives the same numbers wherever it ran; the
    caller's thread count is restored on return."""
    if workers is None:
        workers = choose(1, min(2, os.cpu_count() or 1), profile=profile)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prefetch(studies, workers, profile, progress)
        out: dict[str, pd.DataFrame] = {}
        cost_cache: dict[str, pd.DataFrame] = {}
        for st in studies:
            if st.kind == "cost":
                if st.task not in cost_cache:
                    cost_cache[st.task] = measure_cost(st, profile=profile)
                out[st.key] = cost_cache[st.task]
            else:
                out[st.key] = run_study(st)
    finally:
        torch.set_num_threads(threads)
    return out


# -- cost -----------------------------------------------------------------------------------
def _cost_runner(cfg: TrainConfig, model: nn.Module, num_outputs: int, device: torch.device) -> StepRunner:
    """One arm of the cost study: the setup's model, loss and optimizer; a GAL arm builds GAL
    exactly as training does."""
    if cfg.space == "parameter":
        raise ValueError("the cost study times output-space GAL only")
    gal = build_gal(cfg, model, num_outputs, device)
    params = [*model.parameters(), *(p for p in (gal.parameters() if gal is not None else ()) if p.requires_grad)]
    opt = make_optimizer(cfg.optimizer, params, cfg.lr, **dict(cfg.optimizer_kwargs))
    return StepRunner(model, gal, loss_function(cfg.loss), opt)  # type: ignore[arg-type]


@contextlib.contextmanager
def _quiet_stderr_fd() -> Any:
    """Send file descriptor 2 to /dev/null for the duration (torch's profiler backend logs
    every start and stop there, which a notebook kernel would show)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def measure_cost(
    study: Study,
    *,
    steps: int | None = None,
    warmup: int | None = None,
    block: int | None = None,
    profile: Profile | None = None,
) -> pd.DataFrame:
    """Time per step and peak memory of one step, standard vs GAL, once per seed.

    For each seed both arms start from the same weights and cycle through the same 4 batches
    of the setup's training data; after ``warmup`` steps each, ``steps`` steps per arm are
    timed one by one in blocks of ``block``, in ABBA order (which arm goes first alternates),
    and the median is kept. Peak memory: tensor bytes allocated during one step above what was
    live at its start (the benchmark's ``step_peak_bytes``: a profiler trace on CPU,
    ``max_memory_allocated`` on CUDA). Returns one row per (arm, seed): ``step_ms``,
    ``step_peak_mb``, ``persistent_mb`` (parameters, gradients, optimizer state, h), ``timer``
    (whose code timed it) and ``threads`` (torch's CPU threads).
    """
    p = profile or get_profile()
    steps = steps if steps is not None else choose(6, 60, 200, profile=p)
    warmup = warmup if warmup is not None else choose(2, 10, 20, profile=p)
    block = block if block is not None else choose(2, 10, 10, profile=p)
    timer = "galcore.experiments.bench"
    cfgs = dict(study.arms)
    setup = study.setup
    device = torch.device(setup.base.device if setup.base.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for seed in study.seeds:
        torch.manual_seed(seed)
        base_model = setup.model_fn().to(device)
        gen = torch.Generator().manual_seed(seed)
        bs = setup.base.batch_size
        order = torch.randperm(len(setup.data.x_train), generator=gen)
        batches = [
            (setup.data.x_train[order[i * bs : (i + 1) * bs]].to(device), setup.data.y_train[order[i * bs : (i + 1) * bs]].to(device))
            for i in range(4)
        ]
        runners = {a: _cost_runner(replace(c, seed=seed), copy.deepcopy(base_model), setup.data.num_outputs, device) for a, c in cfgs.items()}
        for r in runners.values():
            r.model.train()
        names = list(runners)
        for _ in range(warmup):
            for a in names:
                time_steps(runners[a], batches, 1, 0, device)
        times: dict[str, list[float]] = {a: [] for a in names}
        done, rnd = 0, 0
        while done < steps:
            n = min(block, steps - done)
            for a in names if rnd % 2 == 0 else names[::-1]:
                times[a].extend(time_steps(runners[a], batches, n, done, device))
            done += n
            rnd += 1
        for a in names:
            with _quiet_stderr_fd():
                peak = step_peak_bytes(runners[a], *batches[0], device)
            rows.append({
                "arm": a,
                "seed": seed,
                "step_ms": 1e3 * statistics.median(times[a]),
                "step_peak_mb": math.nan if peak is None else peak / 2**20,
                "persistent_mb": runners[a].persistent_bytes() / 2**20,
                "timer": timer,
                "threads": torch.get_num_threads(),
            })
    return pd.DataFrame(rows)


# -- summary --------------------------------------------------------------------------------
def _values(finals: pd.DataFrame, arm: str, metric: str) -> pd.Series:
    return finals[finals["arm"] == arm].set_index("seed")[metric].sort_index()


def _paired(finals: pd.DataFrame, control: str, arm: str, metric: str) -> PairedResult:
    a, b = _values(finals, control, metric), _values(finals, arm, metric)
    common = a.index.intersection(b.index)
    return paired_ci(a.loc[common].to_numpy(), b.loc[common].to_numpy())


def _g(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3g}"


def _sg(v: float) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    return f"{v:+.3g}"


def summarize_finals(
    finals: pd.DataFrame,
    *,
    arms: Sequence[str],
    control: str,
    metric: str,
    goal: str = "min",
    title: str = "",
    task: str = "",
    metric_label: str | None = None,
    unit: str = "",
    meaning: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The best of ``arms`` by mean ``metric`` and its paired difference from ``control``.

    When the control itself is best, the difference reported is that of the closest
    alternative (``compared``), so the row still says how far the nearest other setting is.
    ``significantly_worse`` lists the other settings whose CI lies entirely on the worse side
    of the control, with their mean differences.
    ``p_adjusted`` is the p-value times the number of alternatives (Bonferroni: the best was
    picked after looking). Returns a dict with the columns of :func:`summary_table`."""
    if control not in arms:
        raise ValueError(f"control {control!r} is not one of the arms {list(arms)}")
    if len(arms) < 2:
        raise ValueError("a study needs at least two arms")
    sign = 1.0 if goal == "min" else -1.0
    means = {a: float(_values(finals, a, metric).mean()) for a in arms}
    # ties go to the control (a setting must beat it to be "best"), then to the listed order
    order = sorted(arms, key=lambda a: (sign * means[a], a != control, list(arms).index(a)))
    best = order[0]
    compared = best if best != control else order[1]
    res = _paired(finals, control, compared, metric)
    k = len(arms) - 1
    p_adj = min(1.0, res.p_value * k) if not math.isnan(res.p_value) else math.nan
    others = [a for a in arms if a != control]
    identical = all(same_values(finals, a, control, metric) for a in others)
    worse_arms = []  # settings other than the one compared that are significantly worse than the control
    for a in others:
        if a == compared:
            continue
        r = _paired(finals, control, a, metric)
        if r.significant and sign * r.mean_diff > 0:
            worse_arms.append(f"{a} ({_sg(r.mean_diff)}{' ' + unit if unit else ''})")
    improved = res.significant and sign * res.mean_diff < 0
    worse = res.significant and sign * res.mean_diff > 0
    outcome = "identical" if identical else "better" if improved else "worse" if worse else "none"
    row = {
        "study": title,
        "task": task,
        "factor": title,
        "best": best,
        "control": control,
        "compared": compared,
        "metric": metric,
        "mean_best": means[best],
        "mean_control": res.mean_control,
        "mean_treatment": res.mean_treatment,
        "mean_diff": res.mean_diff,
        "low": res.low,
        "high": res.high,
        "p_value": res.p_value,
        "p_adjusted": p_adj,
        "n": res.n,
        "significant": res.significant,
        "outcome": outcome,
        "compared_identical": same_values(finals, compared, control, metric),
        "significantly_worse": ", ".join(worse_arms),
    }
    row["sentence"] = describe(row, k=k, metric_label=metric_label or metric, unit=unit, goal=goal, meaning=meaning or {})
    return row


def same_values(finals: pd.DataFrame, a: str, b: str, metric: str) -> bool:
    """Equal on every seed (to 1e-9 relative: a difference of rounding, not of training)."""
    x, y = _values(finals, a, metric), _values(finals, b, metric)
    common = x.index.intersection(y.index)
    return bool(np.allclose(x.loc[common].to_numpy(float), y.loc[common].to_numpy(float), rtol=1e-9, atol=1e-12))


def describe(row: Mapping[str, Any], *, k: int, metric_label: str, unit: str, goal: str, meaning: Mapping[str, str]) -> str:
    """One plain sentence from a summary row: what was best, by how much, how sure, what it means.

    Significance is the 95% CI excluding zero (as everywhere in galcore). When a picked best
    is significant only before correcting for having picked it from ``k`` alternatives, the
    sentence says so."""
    best, control, compared = row["best"], row["control"], row["compared"]
    diff, low, high, n, p = row["mean_diff"], row["low"], row["high"], row["n"], row["p_value"]
    u = f" {unit}" if unit else ""
    pct = 100 * abs(diff) / abs(row["mean_control"]) if row["mean_control"] else math.nan
    ratio = row["mean_treatment"] / row["mean_control"] if row["mean_control"] else math.nan
    fill = {"best": best, "control": control, "compared": compared, "pct": f"{pct:.2g}%", "ratio": f"{ratio:.2g}", "metric": metric_label}
    key = str(row["outcome"])
    means = meaning.get(key, meaning.get("none", "") if key == "identical" else "").format(**fill)
    what = f"{row['factor']}" + (f" ({row['task']})" if row.get("task") else "")
    ci = f"95% CI {_sg(low)} to {_sg(high)}{u}, p = {_g(p)}, n = {n} seeds"
    lower = "lower" if diff < 0 else "higher"
    if row["outcome"] == "identical":
        s = f"{what}: every setting gave exactly the same {metric_label} as {control} on all {n} seeds"
    elif row["outcome"] == "better":
        s = f"{what}: {best} was best, with {_g(abs(diff))}{u} {lower} {metric_label} than {control} ({ci})"
        if k > 1 and not math.isnan(row["p_adjusted"]) and row["p_adjusted"] >= 0.05:
            s += f"; as the best of {k} settings it does not survive a Bonferroni correction (p = {_g(row['p_adjusted'])})"
    elif row["outcome"] == "worse":
        s = (
            f"{what}: the control {control} was best; the closest alternative, {compared}, had "
            f"{_g(abs(diff))}{u} {lower} {metric_label} ({ci}), a significant difference"
        )
    elif best != control:
        s = (
            f"{what}: {best} had the best mean {metric_label} ({_g(row['mean_best'])} vs {_g(row['mean_control'])} for "
            f"{control}), but the difference is not significant ({_sg(diff)}{u}, {ci})"
        )
    elif row.get("compared_identical"):
        s = f"{what}: no setting beat the control {control}; the closest, {compared}, gave exactly the same {metric_label} on all {n} seeds"
    else:
        s = (
            f"{what}: no setting beat the control {control}; the closest, {compared}, differed by "
            f"{_sg(diff)}{u} ({ci}), not significant"
        )
    if means:
        s += f": {means}"
    if row.get("significantly_worse"):
        also = "Also significantly worse" if row["outcome"] == "worse" else f"Significantly worse than {control}"
        s += f". {also}: {row['significantly_worse']}"
    return s[0].upper() + s[1:] + "."


def summarize(study: Study, finals: pd.DataFrame) -> dict[str, Any]:
    """:func:`summarize_finals` for a study (its arms, control, metric and phrases)."""
    row = summarize_finals(
        finals, arms=list(study.arms), control=study.control, metric=study.metric, goal=study.goal,
        title=study.title, task=study.task, metric_label=study.info.noun, unit=study.info.unit, meaning=study.meaning,
    )
    row["study"] = study.key
    row["group"] = study.group
    row["setting"] = f"{study.key}: {row['compared']} vs {study.control}"
    return row


#: Column order of the summary CSV (the first nine are the shared summary columns).
SUMMARY_COLUMNS = [
    "study", "factor", "best", "mean_diff", "low", "high", "p_value", "n", "sentence",
    "group", "task", "control", "compared", "metric", "mean_best", "mean_control", "mean_treatment",
    "p_adjusted", "significant", "outcome", "compared_identical", "significantly_worse", "setting",
]


def summary_table(studies: Sequence[Study], finals: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per study (see :data:`SUMMARY_COLUMNS`)."""
    rows = [summarize(st, finals[st.key]) for st in studies]
    return pd.DataFrame(rows)[SUMMARY_COLUMNS]


def _t_interval(x: np.ndarray) -> tuple[float, float]:
    if len(x) < 2:
        return math.nan, math.nan
    sem = float(_sstats.sem(x))
    if sem == 0:
        return float(x.mean()), float(x.mean())
    lo, hi = _sstats.t.interval(0.95, len(x) - 1, loc=float(x.mean()), scale=sem)
    return float(lo), float(hi)


def arm_table(study: Study, finals: pd.DataFrame) -> pd.DataFrame:
    """Per arm: mean of the metric with its 95% t interval over seeds, and the paired
    difference from the control with its 95% CI and p-value (the control's row has 0); also
    the mean test loss (a continuous check when the metric is a count, like test error), the
    acceptance rate of GAL arms and, in the cost study, the persistent memory."""
    rows = []
    for label in study.all_arms():
        v = _values(finals, label, study.metric).to_numpy(dtype=float)
        lo, hi = _t_interval(v)
        role = "control" if label == study.control else "reference" if study.reference and label == study.reference[0] else "setting"
        row: dict[str, Any] = {"arm": label, "role": role, "n": len(v), "mean": float(v.mean()), "mean_low": lo, "mean_high": hi}
        if label == study.control:
            row.update(diff=0.0, diff_low=0.0, diff_high=0.0, p_value=math.nan)
        else:
            r = _paired(finals, study.control, label, study.metric)
            row.update(diff=r.mean_diff, diff_low=r.low, diff_high=r.high, p_value=r.p_value)
        sub = finals[finals["arm"] == label]
        for extra in ("test_loss", "accept_rate_mean", "persistent_mb"):
            if extra in sub and sub[extra].notna().any():
                row[extra] = float(sub[extra].mean())
        rows.append(row)
    return pd.DataFrame(rows)


# -- plots ----------------------------------------------------------------------------------
def plot_group(group: str, studies: Sequence[Study], finals: Mapping[str, pd.DataFrame]) -> Any:
    """One column per (setup, metric) of the group's studies. Top: each arm's metric per seed
    (grey lines join a seed's runs) and its mean with the 95% interval. Bottom: the paired
    difference from the study's control with its 95% CI (green: significantly better, red:
    significantly worse, grey: not significant)."""
    import matplotlib.pyplot as plt

    sts = [s for s in studies if s.group == group]
    if not sts:
        raise ValueError(f"no studies in group {group!r}")
    columns = list(dict.fromkeys((s.task, s.metric) for s in sts))
    fig, axes = plt.subplots(2, len(columns), figsize=(max(5.0, 4.2 * len(columns)) + 0.8, 7.0), squeeze=False)
    for col, (task, metric) in enumerate(columns):
        group_sts = [s for s in sts if s.task == task and s.metric == metric]
        top, bottom = axes[0, col], axes[1, col]
        x = 0
        ticks, labels = [], []
        dticks, dlabels = [], []
        multi = len(group_sts) > 1
        for s in group_sts:
            f = finals[s.key]
            xs = {}
            for label in s.all_arms():
                xs[label] = x
                v = _values(f, label, s.metric).to_numpy(dtype=float)
                lo, hi = _t_interval(v)
                color = "tab:blue" if label == s.control else "tab:gray" if s.reference and label == s.reference[0] else "tab:orange"
                err = None if math.isnan(lo) else [[v.mean() - lo], [hi - v.mean()]]
                top.errorbar([x], [v.mean()], yerr=err, fmt="o", color=color, capsize=4, zorder=3)
                short = s.title.replace("GAL under ", "") if multi else ""
                ticks.append(x)
                labels.append(f"{short}: {label}" if multi else label)
                if label != s.control:
                    r = _paired(f, s.control, label, s.metric)
                    good = r.significant and (r.mean_diff < 0) == (s.goal == "min")
                    c = "tab:green" if good else "tab:red" if r.significant else "tab:gray"
                    derr = None if math.isnan(r.low) else [[r.mean_diff - r.low], [r.high - r.mean_diff]]
                    bottom.errorbar([x], [r.mean_diff], yerr=derr, fmt="s", color=c, capsize=4)
                    dticks.append(x)
                    dlabels.append((short if len(s.arms) == 2 else f"{short}: {label}") if multi else label)
                x += 1
            wide = f.pivot_table(index="seed", columns="arm", values=s.metric)
            cols = [a for a in s.all_arms() if a in wide.columns]
            for _, seed_row in wide[cols].iterrows():
                top.plot([xs[a] for a in cols], seed_row.to_numpy(), color="0.75", lw=0.7, zorder=1)
            x += 0.5 if multi else 0
        rot = 40 if len(ticks) > 4 or sum(len(t) for t in labels) > 60 else 0
        top.set_xticks(ticks, labels, rotation=rot, ha="right" if rot else "center", rotation_mode="anchor", fontsize=8)
        top.set_ylabel(group_sts[0].info.label)
        ctrl = group_sts[0].control if not multi else "each study's control"
        top.set_title(f"{task}: mean and 95% CI (blue: {ctrl})", fontsize=9)
        bottom.axhline(0.0, color="k", lw=0.8)
        rot = 40 if len(dticks) > 4 or sum(len(t) for t in dlabels) > 45 else 0
        bottom.set_xticks(dticks, dlabels, rotation=rot, ha="right" if rot else "center", rotation_mode="anchor", fontsize=8)
        bottom.set_ylabel(f"difference vs control ({group_sts[0].info.unit})")
        bottom.set_title(f"{task}: paired difference vs {ctrl}, 95% CI", fontsize=9)
    title = next((t for g, t, _ in GROUPS if g == group), group)
    fig.suptitle(f"{title} ({len(sts[0].seeds)} seeds, paired)")
    fig.tight_layout()
    return fig


# -- notebook helpers -------------------------------------------------------------------------
def _verdict(row: Mapping[str, Any]) -> str:
    if row["outcome"] == "none" and row.get("compared_identical"):
        return f"{row['compared']} identical to the control"
    return {
        "identical": "identical on every seed",
        "better": f"{row['best']} better",
        "worse": f"{row['control']} (control) better",
        "none": "no significant difference",
    }[str(row["outcome"])]


def format_summary(summary: pd.DataFrame, studies: Sequence[Study]) -> str:
    """The summary as a markdown table: study, setup, best setting, effect of ``compared``
    vs the control with its 95% CI, p, verdict, and the settings significantly worse than
    the control."""
    by_key = {s.key: s for s in studies}
    lines = [
        "| study | setup | best | compared vs control | difference (95% CI) | p | verdict | significantly worse than the control |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in summary.iterrows():
        st = by_key[r["study"]]
        u = st.info.unit
        effect = f"{_sg(r['mean_diff'])} [{_sg(r['low'])}, {_sg(r['high'])}] {u}"
        lines.append(
            f"| {st.title} | {st.task} | {r['best']} | {r['compared']} vs {r['control']} | {effect} | {_g(r['p_value'])} | "
            f"{_verdict(r)} | {r['significantly_worse'] or '-'} |"
        )
    return "\n".join(lines)


def describe_arms(study: Study) -> str:
    """The arms of a study and what they share, in one line (for the notebook)."""
    s = study.setup
    c = study.arms[study.control]
    n_params = sum(p.numel() for p in s.model_fn().parameters())
    arms = ", ".join(("**" + a + "** (control)") if a == study.control else a for a in study.arms)
    ref = f"; reference: {study.reference[0]}" if study.reference else ""
    kw = f" {dict(c.optimizer_kwargs)}" if c.optimizer_kwargs else ""
    return (
        f"{study.task}: {arms}{ref} · model {c.model} ({n_params} parameters), {c.optimizer} lr {c.lr:g}{kw}, "
        f"{c.epochs} epochs, batch {c.batch_size}, seeds {list(s.seeds)}"
    )


def report_group(
    group: str, studies: Sequence[Study], finals: Mapping[str, pd.DataFrame], summary: pd.DataFrame, *, save: bool = True
) -> tuple[Any, dict[str, pd.DataFrame], list[str]]:
    """A group's figure, its per-study arm tables and its summary sentences; with ``save``,
    the figure goes to ``results/05_ablations/<group>.png`` (returned as its path: showing
    the saved PNG avoids drawing the figure twice) and the tables to ``<study>.csv``
    (``:`` replaced by ``_``); without, the figure itself is returned."""
    import matplotlib.pyplot as plt

    from galcore.experiments.results import save_table

    sts = [s for s in studies if s.group == group]
    fig = plot_group(group, sts, finals)
    tables = {s.key: arm_table(s, finals[s.key]) for s in sts}
    sentences = [str(summary.loc[summary["study"] == s.key, "sentence"].item()) for s in sts]
    if not save:
        return fig, tables, sentences
    path = results_dir(OUT) / f"{group}.png"
    fig.savefig(path, dpi=100)  # laid out by tight_layout already
    plt.close(fig)
    for key, t in tables.items():
        save_table(t, key.replace(":", "_"), OUT)
    return path, tables, sentences


def save_summary(summary: pd.DataFrame) -> Path:
    """``results/05_ablations/summary.csv`` (the columns of :data:`SUMMARY_COLUMNS`; it also
    has the columns :mod:`galcore.experiments.report` reads: ``setting``, ``metric``, ``mean_control``,
    ``mean_treatment``, ``mean_diff``, ``low``, ``high``, ``p_value``, ``n``)."""
    from galcore.experiments.results import save_table

    return save_table(summary, "summary", OUT)
