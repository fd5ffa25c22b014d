"""Notebook 05's plan: the setup, the arms of every study, their labels and margins.

See :mod:`galcore.experiments.ablations.study` for the studies in words."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import torch

from galcore.config import GALConfig
from galcore.experiments.harness import Data, Setup, TrainConfig
from galcore.experiments.harness.data import digits
from galcore.experiments.harness.models import MLP
from galcore.experiments.harness.profile import Profile, choose, get_profile

__all__ = ["H_MODES", "MARGIN_ERROR", "OUT", "RATIOS", "SHORT", "Study", "arm_table", "gal_arm", "label", "loss_margin", "setup", "space_setup", "split_label", "studies"]

_GAL_DEFAULTS = GALConfig()

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


def loss_margin(finals: pd.DataFrame, control: str = "standard") -> float:
    """The test-NLL equivalence margin: the one rule of
    :func:`galcore.experiments.harness.margins.margin_test_loss` (the test-error margin carried
    over by the error-NLL slope across ``control``'s seeds; NaN, so never `equivalent`, when
    NLL does not follow error there)."""
    from galcore.experiments.harness import margins

    c = finals[finals["arm"] == control].sort_values("seed")
    return float(margins.margin_test_loss(c["test_error"], c["test_loss"], MARGIN_ERROR))


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


