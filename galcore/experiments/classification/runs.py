"""Notebook 02's runs: every arm x seed of a benchmark, the MNIST-1D paper's baselines, the
release's ImageNet recipe, and h's gradient bound measured on the MNIST-1D arms."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from galcore.experiments.ablations import mechanism
from galcore.experiments.classification.fullscale import run_loader_arms
from galcore.experiments.classification.imagenet_recipe import ImageNetData, ImageNetRecipe, recipe_run
from galcore.experiments.classification.mnist1d_models import BASELINE_ACCURACY, BASELINE_RECIPE, MNIST1DCNN, MNIST1DMLP
from galcore.experiments.classification.plan import Benchmark, arms_for, is_fullscale
from galcore.experiments.harness import TrainConfig, run_arms
from galcore.experiments.harness.data import mnist1d
from galcore.experiments.harness.profile import Profile, get_profile

__all__ = ["STACK", "baseline_check", "bound_runs", "imagenet_root", "run_benchmark", "run_imagenet"]

#: seeds trained together in a stacked run (per seed, 128 ran slower than 32 on a CPU: cache)
STACK = 32


# -- running -------------------------------------------------------------------------------------
def run_benchmark(bench: Benchmark, *, cache: bool = True, progress: bool = True,
                  optimizers: Sequence[str] | None = None, stacked: bool | None = None,
                  stack: int = STACK) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every arm x seed of every optimizer of ``bench`` (each arm on :meth:`Benchmark.seeds_of`;
    harness ``run_arms``; loader data
    through :func:`galcore.experiments.classification.fullscale.run_loader_arms`). Returns ``(finals,
    histories)`` with ``data`` and ``optimizer`` columns first, and ``passes`` (passes over the
    training set) in the histories. ``stacked`` (default: the benchmark's ``notes["stacked"]``):
    train every arm's seeds ``stack`` at a time in one process
    (:func:`galcore.experiments.harness.stacked.run_arms_stacked`; no cache), all arms of the
    benchmark the same way, so that paired differences and identical-weight checks compare runs
    of one kind."""
    use_stacked = bool(bench.notes.get("stacked", False)) if stacked is None else bool(stacked)
    finals, hists = [], []
    for name in optimizers or list(bench.optimizers):
        arms = arms_for(bench, name)
        groups: dict[tuple[int, ...], dict[str, TrainConfig]] = {}
        for arm, cfg in arms.items():  # arms on the same seeds run together, seed-major
            groups.setdefault(bench.seeds_of(name, arm), {})[arm] = cfg
        fs, hs = [], []
        for seeds, group in groups.items():
            if is_fullscale(bench.setup):
                f, h = run_loader_arms(group, seeds, bench.setup.data, bench.setup.model_fn, cache=cache, progress=progress)  # type: ignore[arg-type]
            elif use_stacked:
                from galcore.experiments.harness.stacked import run_arms_stacked

                f, h = run_arms_stacked(group, seeds, bench.setup.data, bench.setup.model_fn, stack=stack, progress=progress)
            else:
                f, h = run_arms(group, seeds, bench.setup.data, bench.setup.model_fn, cache=cache, progress=progress)
            fs.append(f)
            hs.append(h)
        f, h = pd.concat(fs, ignore_index=True), pd.concat(hs, ignore_index=True)
        h["passes"] = h["epoch"] * bench.passes
        for frame, out in ((f, finals), (h, hists)):
            frame.insert(0, "optimizer", name)
            frame.insert(0, "data", bench.name)
            out.append(frame)
    return pd.concat(finals, ignore_index=True), pd.concat(hists, ignore_index=True)


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


def imagenet_root() -> str | None:
    """``$GALCORE_IMAGENET`` (an ImageFolder tree with ``train/`` and ``val/``) or None."""
    return os.environ.get("GALCORE_IMAGENET") or None



def bound_runs(bench: Benchmark, *, seeds: int | None = None, every: int = 10, cache: bool = True,
               progress: bool = True) -> pd.DataFrame:
    """h's gradient against its derived bound, and h's drift, per way of training h
    (:func:`galcore.experiments.ablations.mechanism.bound_arms`): SGD+momentum's
    :data:`~galcore.experiments.classification.plan.BOUND_ARMS` (h in the model's SGD in both
    first-order forms, in its own Adam, in its own SGD) and Adam's ``gal`` (h in the model's
    Adam), on the first ``seeds`` seeds (default: the plan's ``bound_seeds``). One row per run,
    with ``optimizer`` first."""
    from galcore.experiments.classification.plan import BOUND_ARMS

    k = int(seeds if seeds is not None else bench.notes.get("bound_seeds", 2))
    rows = []
    for name, arms in (("SGD+momentum", BOUND_ARMS), ("Adam", ("gal",))):
        if name not in bench.optimizers:
            continue
        cfgs = arms_for(bench, name, arms)
        f = mechanism.bound_arms(cfgs, bench.seeds[name][:k], bench.setup.data, bench.setup.model_fn, every=every,
                                 cache=cache, progress=progress)
        f.insert(0, "optimizer", name)
        rows.append(f)
    return pd.concat(rows, ignore_index=True)
