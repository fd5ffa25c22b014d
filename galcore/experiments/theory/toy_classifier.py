"""A tiny classifier trained with output-space GAL, against a control whose h stays random.

The question it answers: does h actually *learn* to make the output-space remainder small, or
would any fixed direction of the same size do as well? It runs on the one harness
(:func:`galcore.experiments.harness.run_arms`), which gives every arm of a seed the same model
weights, the same h weights (GAL's seed ``10_000 + seed``) and the same batch order. The arms
(:func:`classifier_arms`):

- ``"standard"``: the plain gradient;
- ``"gal learned"``: GAL with h trained on the remainder objective by its own Adam (``h_lr``,
  as the release's ImageNet code gives h its own learning rate);
- ``"gal frozen"``: GAL with h frozen at its random initialisation (the control).

Data: 2-D interleaved spirals (:func:`make_spirals`), generated from a seed, nothing downloaded.
GAL records per epoch, in float64, the mean |remainder| of its adjusted tentative step
(``remainder_abs``) and of the plain tentative step ``x - eta g`` (``remainder_plain_abs``,
from ``track_plain``); :func:`late_remainder_ratio` condenses them into one number per run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from galcore.experiments.harness import H_SEED_OFFSET, Data, TrainConfig

__all__ = [
    "ARMS",
    "ClassifierSetting",
    "batch_perturbation",
    "classifier_arms",
    "classifier_data",
    "late_remainder_ratio",
    "make_spirals",
    "tiny_mlp",
]

ARMS = ("standard", "gal learned", "gal frozen")


def make_spirals(n_per_class: int, classes: int = 4, noise: float = 0.15, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``classes`` interleaved 2-D spiral arms: inputs ``(N, 2)`` float32, labels ``(N,)`` int64,
    ``N = n_per_class * classes``; deterministic given ``seed``."""
    if n_per_class < 1 or classes < 2:
        raise ValueError(f"n_per_class must be >= 1 and classes >= 2, got {n_per_class} and {classes}")
    g = torch.Generator().manual_seed(seed)
    r = torch.linspace(0.15, 1.0, n_per_class).repeat(classes)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    theta = labels * (2 * math.pi / classes) + 3.0 * r + noise * torch.randn(r.shape, generator=g)
    X = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
    return X.float(), labels


def tiny_mlp(classes: int = 4, width: int = 64) -> nn.Sequential:
    """``2 -> width -> width -> classes`` MLP with tanh."""
    return nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, classes))


@dataclass(frozen=True)
class ClassifierSetting:
    """Settings of the tiny-classifier experiment (SGD with momentum 0.9 on cross-entropy).

    ``ratio`` and ``scale`` are GAL's: the tentative output step is ``lr * scale * (g + a)``
    with g the gradient of the batch-mean loss (each sample's row of g carries a 1/batch, hence
    a scale of the batch size). ``h_lr``: h's own Adam learning rate in the learned arm.
    """

    epochs: int = 38
    batch: int = 64
    lr: float = 0.1
    ratio: float = 0.1
    scale: float = 64.0
    classes: int = 4
    n_per_class: int = 128
    noise: float = 0.3
    data_seed: int = 0
    h_lr: float = 1e-2


def classifier_data(setting: ClassifierSetting | None = None) -> Data:
    """Training spirals from ``data_seed`` and a test set of the same size from ``data_seed + 1``."""
    s = setting or ClassifierSetting()
    X, y = make_spirals(s.n_per_class, s.classes, s.noise, seed=s.data_seed)
    Xt, yt = make_spirals(s.n_per_class, s.classes, s.noise, seed=s.data_seed + 1)
    return Data("spirals", X, y, Xt, yt, num_outputs=s.classes)


def classifier_arms(setting: ClassifierSetting | None = None, **overrides: object) -> dict[str, TrainConfig]:
    """The three arms (:data:`ARMS`) as harness configs; ``overrides`` replace fields of the
    setting (e.g. ``epochs=4``). Every arm has the same optimizer, lr, epochs and batch; the
    two GAL arms the same GAL options, ``track_plain`` on."""
    s = replace(setting or ClassifierSetting(), **overrides)  # type: ignore[arg-type]
    base = TrainConfig(model="tiny_mlp", data="spirals", optimizer="momentum", lr=s.lr, epochs=s.epochs,
                       batch_size=s.batch)
    gal = {"ratio": s.ratio, "scale": s.scale, "track_plain": True}
    return {
        "standard": base,
        "gal learned": replace(base, gal=gal, h_optimizer="adam", h_lr=s.h_lr),
        "gal frozen": replace(base, gal=gal, frozen_h=True),
    }


def late_remainder_ratio(hists: pd.DataFrame, last: float = 0.5) -> pd.DataFrame:
    """Per GAL run (``arm``, ``seed``): the mean over the last ``last`` fraction of epochs of
    ``remainder_abs / remainder_plain_abs - 1`` (below 0: the adjusted tentative step's
    first-order model was more accurate than the plain step's). Columns ``arm``, ``seed``,
    ``late_remainder_ratio``; runs without GAL records are left out."""
    if not 0 < last <= 1:
        raise ValueError(f"last must be in (0, 1], got {last}")
    need = {"arm", "seed", "epoch", "remainder_abs", "remainder_plain_abs"}
    missing = need - set(hists.columns)
    if missing:
        raise ValueError(f"hists lacks columns {sorted(missing)} (run GAL with track_plain=True)")
    rows = []
    for (arm, seed), grp in hists.dropna(subset=["remainder_abs", "remainder_plain_abs"]).groupby(["arm", "seed"], sort=False):
        grp = grp.sort_values("epoch")
        tail = grp.iloc[len(grp) - max(1, round(last * len(grp))):]
        ratio = tail["remainder_abs"].to_numpy() / tail["remainder_plain_abs"].to_numpy() - 1.0
        rows.append({"arm": arm, "seed": seed, "late_remainder_ratio": float(np.mean(ratio))})
    return pd.DataFrame(rows, columns=["arm", "seed", "late_remainder_ratio"])


def batch_perturbation(setting: ClassifierSetting | None = None, seed: int = 0, ratio: float | None = None) -> dict[str, float]:
    """How much GAL's per-sample bound lets the step on the model's parameters change, at
    initialisation, for one training batch (the model and h as :func:`classifier_arms` draws
    them for ``seed``).

    With per-sample gradients ``g_i`` of the batch-mean loss at the logits and adjustments
    ``a_i = r |g_i| h(x_i) / |h(x_i)|``, it backpropagates both through the model and returns
    ``param_ratio = |J^T a| / (r |J^T g|)`` (the adjustment's share of the parameter step, in
    units of r: 1 would mean the per-sample bound holds for the batch), ``output_ratio = |sum_i
    a_i| / (r |sum_i g_i|)`` and ``cosine``, the mean pairwise cosine of h's directions.
    """
    from galcore.adjuster import make_adjuster, release_hidden

    s = setting or ClassifierSetting()
    r = s.ratio if ratio is None else float(ratio)
    if r <= 0:
        raise ValueError(f"ratio must be > 0, got {r}")
    data = classifier_data(s)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_train), generator=gen)[: s.batch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tiny_mlp(s.classes)
        torch.manual_seed(H_SEED_OFFSET + seed)  # the harness's h seed
        h = make_adjuster(s.classes, release_hidden(s.classes))
    logits = model(data.x_train[idx])
    x0 = logits.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(x0, data.y_train[idx]), x0)
    with torch.no_grad():
        d = h(x0)
        u = d / d.norm(dim=1, keepdim=True)
        a = r * g.norm(dim=1, keepdim=True) * u
    params = list(model.parameters())
    jg = torch.autograd.grad(logits, params, g, retain_graph=True)
    ja = torch.autograd.grad(logits, params, a)
    norm = lambda ts: float(torch.sqrt(sum((t * t).sum() for t in ts)))
    cos = u @ u.T
    n = len(u)
    return {
        "param_ratio": norm(ja) / (r * norm(jg)),
        "output_ratio": float(a.sum(0).norm() / (r * g.sum(0).norm())),
        "cosine": float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1))),
    }
