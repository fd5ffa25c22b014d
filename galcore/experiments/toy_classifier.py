"""A tiny classifier trained with output-space GAL, against a control whose h stays random.

The question it answers: does h actually *learn* to make the output-space remainder small, or
would any fixed direction of the same size do as well? The three arms share the data, the
model's initial weights, h's initial weights and the batch order for a given seed:

- ``"plain"``: the plain gradient (no GAL);
- ``"frozen"``: GAL with h frozen at its random initialisation (the control);
- ``"learned"``: GAL with h trained on the remainder objective, by its own Adam
  (``h_lr``, as the release's ImageNet code gives h its own learning rate) or, with
  ``h_lr=None``, by the model's SGD (the release's CIFAR code).

Data: 2-D interleaved spirals (``make_spirals``), generated from a seed, nothing downloaded.
GAL records every step (0-d tensors, converted once per run): acceptance, the remainder of the
adjusted tentative step and of the plain tentative step ``x - eta g`` (``track_plain``), in
float64 (``compute_dtype``) so that small remainders are not rounded away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from galcore.adjuster import make_adjuster, release_hidden
from galcore.gal import GAL

__all__ = ["ARMS", "ClassifierRun", "ClassifierSetting", "make_spirals", "run_classifier", "tiny_mlp"]

ARMS = ("plain", "frozen", "learned")


def make_spirals(n_per_class: int, classes: int = 4, noise: float = 0.15, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``classes`` interleaved 2-D spiral arms: inputs ``(N, 2)`` float32, labels ``(N,)`` int64,
    ``N = n_per_class * classes``; deterministic given ``seed``."""
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
    """Settings of the tiny-classifier experiment (SGD on cross-entropy, mini-batches).

    ``ratio`` and ``scale`` are GAL's; the tentative output step is ``lr * scale * (g + a)``
    with g the gradient of the batch-mean loss (so each sample's row of g carries a 1/batch).
    """

    steps: int = 300
    batch: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    ratio: float = 0.1
    scale: float = 64.0
    classes: int = 4
    width: int = 64
    n_per_class: int = 128
    noise: float = 0.3
    data_seed: int = 0
    hidden: tuple[int, ...] | None = None  # h's hidden widths; None: release_hidden(classes)
    h_lr: float | None = 1e-2  # h's own Adam learning rate; None: h in the model's SGD (CIFAR release)


@dataclass
class ClassifierRun:
    """One arm, one seed. Per-step arrays have length ``setting.steps``; GAL's are ``None`` for
    the plain arm."""

    arm: str
    seed: int
    setting: ClassifierSetting
    loss: np.ndarray
    test_loss: float
    test_acc: float
    accepted: np.ndarray | None = None
    remainder: np.ndarray | None = None
    remainder_plain: np.ndarray | None = None
    objective: np.ndarray | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def windows(self, values: np.ndarray, n: int) -> np.ndarray:
        """Means of ``values`` over ``n`` equal consecutive windows of steps."""
        return np.array([w.mean() for w in np.array_split(np.asarray(values, dtype=np.float64), n)])

    @property
    def acceptance_rate(self) -> float:
        return float("nan") if self.accepted is None else float(self.accepted.mean())


def _h_for(setting: ClassifierSetting, seed: int) -> nn.Module:
    hidden = release_hidden(setting.classes) if setting.hidden is None else setting.hidden
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(10_000 + seed)
        return make_adjuster(setting.classes, hidden)


def run_classifier(arm: str, seed: int, setting: ClassifierSetting | None = None) -> ClassifierRun:
    """Train the tiny MLP for ``setting.steps`` mini-batch steps in one arm (see the module).

    For a given seed every arm starts from the same model weights and h weights and sees the
    same batches. The global RNG is left as it was.
    """
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    s = setting or ClassifierSetting()
    X, y = make_spirals(s.n_per_class, s.classes, s.noise, seed=s.data_seed)
    Xt, yt = make_spirals(s.n_per_class, s.classes, s.noise, seed=s.data_seed + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tiny_mlp(s.classes, s.width)
    gal: GAL | None = None
    h_opt: torch.optim.Optimizer | None = None
    params = list(model.parameters())
    if arm != "plain":
        gal = GAL(s.classes, ratio=s.ratio, scale=s.scale, h=_h_for(s, seed), track_plain=True,
                  compute_dtype=torch.float64)
        if arm == "frozen":
            gal.h.requires_grad_(False)
        elif s.h_lr is None:
            params += list(gal.h.parameters())
        else:
            h_opt = torch.optim.Adam(gal.h.parameters(), lr=s.h_lr)
    opt = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum)
    gen = torch.Generator().manual_seed(seed)
    n = X.shape[0]
    order = torch.randperm(n, generator=gen)
    pos = 0
    losses: list[Tensor] = []
    recs: list[Tensor] = []
    for _ in range(s.steps):
        if pos + s.batch > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + s.batch]
        pos += s.batch
        xb, yb = X[idx], y[idx]
        opt.zero_grad(set_to_none=True)
        if h_opt is not None:
            h_opt.zero_grad(set_to_none=True)
        out = model(xb)
        if gal is None:
            loss = F.cross_entropy(out, yb)
            loss.backward()
            losses.append(loss.detach())
        else:
            rec = gal.backward(out, lambda o, yb=yb: F.cross_entropy(o, yb), s.lr)
            losses.append(rec.loss.to(torch.float32))
            assert rec.remainder_plain is not None
            recs.append(torch.stack([rec.accepted.double(), rec.remainder, rec.remainder_plain, rec.objective]))
        opt.step()
        if h_opt is not None:
            h_opt.step()
    with torch.no_grad():
        logits = model(Xt)
        test_loss = float(F.cross_entropy(logits, yt))
        test_acc = float((logits.argmax(1) == yt).float().mean())
    run = ClassifierRun(arm, seed, s, torch.stack(losses).numpy(), test_loss, test_acc)
    if recs:
        arr = torch.stack(recs).numpy()
        run.accepted = arr[:, 0] > 0.5
        run.remainder, run.remainder_plain, run.objective = arr[:, 1], arr[:, 2], arr[:, 3]
    return run
