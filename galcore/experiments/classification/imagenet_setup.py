"""The release's ImageNet recipe, its parts: the settings (:class:`ImageNetRecipe`), TensorFlow's
RMSprop (:class:`RMSpropTF`), the parameter groups and the lr schedule, EfficientNet-B2 and the
data (an ImageFolder tree or ``FakeData``). :mod:`.imagenet_recipe` trains and times it."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from galcore.config import GALConfig

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGENET_TRAIN_IMAGES",
    "IMAGENET_VAL_IMAGES",
    "ImageNetData",
    "ImageNetRecipe",
    "RMSpropTF",
    "efficientnet_b2_factory",
    "fake_imagenet",
    "imagenet_data",
    "recipe_table",
    "release_lr_factor",
    "release_param_groups",
    "small_recipe",
]

IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_VAL_IMAGES = 50_000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageNetRecipe:
    """The release's ImageNet settings (``imagenet/train_gal.sh``). Units: lr per step,
    epochs of the training set, ``batch_size`` global (all devices together)."""

    epochs: int = 90
    batch_size: int = 800
    base_lr: float = 0.016
    base_batch: int = 800
    eps: float = 1e-3
    alpha: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 1e-5
    warmup_epochs: int = 3
    warmup_lr: float = 1e-6
    decay_epochs: float = 2.4
    decay_rate: float = 0.97
    ema_decay: float = 0.9999
    label_smoothing: float = 0.1
    image_size: int = 260
    randaugment_magnitude: int = 9
    erase_prob: float = 0.2
    dropout: float = 0.3
    stochastic_depth: float = 0.2
    amp: bool = True
    gal_ratio: float = 1e-3
    gal_scale: float = 1e-3
    gal_hidden: tuple[int, ...] = (512, 256)
    gal_base_lr: float = 0.016
    gal_first_order: str = "mean"
    gal_compute_dtype: str = "float64"
    eval_batch_size: int = 250
    num_workers: int = 8

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "base_batch", "image_size", "eval_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("base_lr", "eps", "gal_base_lr", "gal_scale", "decay_epochs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("alpha", "momentum", "ema_decay", "erase_prob", "dropout", "stochastic_depth", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.gal_ratio < 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError("gal_ratio, weight_decay and warmup_epochs must be >= 0")

    @property
    def lr(self) -> float:
        """The model's peak lr: ``base_lr`` scaled linearly from ``base_batch`` to ``batch_size``."""
        return self.base_lr * self.batch_size / self.base_batch

    @property
    def gal_lr(self) -> float:
        """h's peak lr (the release's ``gal_lr``), scaled like :attr:`lr`."""
        return self.gal_base_lr * self.batch_size / self.base_batch

    def gal_config(self) -> GALConfig:
        """GAL's options for this recipe (h's seed is the run's: :func:`galcore.build.build_gal`)."""
        return GALConfig(ratio=self.gal_ratio, scale=self.gal_scale, hidden=tuple(self.gal_hidden), activation=None,
                         first_order=self.gal_first_order, accept="decrease", compute_dtype=self.gal_compute_dtype)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


class RMSpropTF(torch.optim.Optimizer):
    """RMSprop as TensorFlow (and the release, through timm) computes it, per parameter p with
    gradient g (plus ``weight_decay * p``, L2 form; a group may carry ``decay_mask``, one 0/1
    tensor per parameter, to decay only part of a flat parameter such as h's):

    ``v <- v + (1 - alpha) (g^2 - v)`` (v starts at 1, not 0);
    ``buf <- momentum * buf + lr * g / sqrt(v + eps)``; ``p <- p - buf``
    (without momentum: ``p <- p - lr * g / sqrt(v + eps)``). eps sits inside the square root.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        alpha: float = 0.9,
        eps: float = 1e-10,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        if not eps >= 0 or not weight_decay >= 0 or not momentum >= 0:
            raise ValueError(f"eps, weight_decay and momentum must be >= 0, got {eps}, {weight_decay}, {momentum}")
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, alpha, eps, wd, mom = group["lr"], group["alpha"], group["eps"], group["weight_decay"], group["momentum"]
            masks = group.get("decay_mask") or [None] * len(group["params"])
            for p, mask in zip(group["params"], masks):
                if p.grad is None:
                    continue
                g = p.grad
                if wd:
                    g = g.add(p if mask is None else p * mask, alpha=wd)
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p)
                    if mom > 0:
                        state["momentum_buffer"] = torch.zeros_like(p)
                v = state["square_avg"]
                v.add_(g * g - v, alpha=1 - alpha)
                denom = (v + eps).sqrt_()
                if mom > 0:
                    buf = state["momentum_buffer"]
                    buf.mul_(mom).addcdiv_(g, denom, value=lr)
                    p.sub_(buf)
                else:
                    p.addcdiv_(g, denom, value=-lr)
        return loss


def _split_decay(module: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """(weights with decay, biases and 1-d parameters without), trainable ones only."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return decay, no_decay


def release_param_groups(model: nn.Module, gal: nn.Module | None, recipe: ImageNetRecipe) -> list[dict[str, Any]]:
    """The optimizer's groups as the release builds them: the model's weights (decay) and its
    biases/norm parameters (no decay) at ``recipe.lr``; h's weights with decay and its biases
    without, at ``recipe.gal_lr`` (only for a GAL run): h is one flat parameter, so its group
    carries a ``decay_mask`` (1 on weights, 0 on biases) for :class:`RMSpropTF`. Empty groups are
    left out."""
    decay, no_decay = _split_decay(model)
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay, "lr": recipe.lr, "name": "model"},
        {"params": no_decay, "weight_decay": 0.0, "lr": recipe.lr, "name": "model_no_decay"},
    ]
    if gal is not None:
        flat = gal.h.flat
        mask = torch.zeros_like(flat, requires_grad=False)
        for i, part in enumerate(gal.h.parts(mask)):
            part.fill_(1.0 if i % 2 == 0 else 0.0)  # [W0.T, b0, W1.T, b1, ...]
        groups.append({"params": [flat], "weight_decay": recipe.weight_decay, "decay_mask": [mask],
                       "lr": recipe.gal_lr, "name": "h"})
    return [g for g in groups if g["params"]]


def release_lr_factor(epoch: int, recipe: ImageNetRecipe, base_lr: float) -> float:
    """lr(epoch) / ``base_lr`` of the release's step schedule (timm's ``StepLRScheduler``, set
    once per epoch): linear warm-up from ``warmup_lr`` over ``warmup_epochs``, then
    ``decay_rate ** floor(epoch / decay_epochs)``."""
    if epoch < recipe.warmup_epochs:
        return (recipe.warmup_lr + epoch * (base_lr - recipe.warmup_lr) / recipe.warmup_epochs) / base_lr
    return float(recipe.decay_rate ** math.floor(epoch / recipe.decay_epochs))


def efficientnet_b2_factory(num_classes: int, recipe: ImageNetRecipe) -> Callable[[], nn.Module]:
    """torchvision's EfficientNet-B2, from scratch, with the recipe's dropout and stochastic
    depth and ``num_classes`` outputs. Input (B, 3, H, W); output (B, num_classes)."""
    from torchvision.models import efficientnet_b2

    def model_fn() -> nn.Module:
        return efficientnet_b2(weights=None, num_classes=num_classes, dropout=recipe.dropout,
                               stochastic_depth_prob=recipe.stochastic_depth)

    return model_fn


# -- data ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageNetData:
    """Training and evaluation sets, items ``(image (3, S, S) float, label int)``; ``name``
    identifies the data and its preprocessing in the cache."""

    name: str
    train: Dataset[Any]
    test: Dataset[Any]
    num_classes: int


def _transforms(recipe: ImageNetRecipe, train: bool) -> Any:
    from torchvision import transforms as T

    s = recipe.image_size
    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if not train:  # timm's eval: resize to s / 0.875 (bicubic), centre crop s
        return T.Compose([T.Resize(math.floor(s / 0.875), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(s), *norm])
    return T.Compose([
        T.RandomResizedCrop(s, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.RandAugment(num_ops=2, magnitude=recipe.randaugment_magnitude),
        *norm,
        T.RandomErasing(p=recipe.erase_prob, value="random"),
    ])  # fmt: skip


def imagenet_data(root: str | os.PathLike[str], recipe: ImageNetRecipe | None = None) -> ImageNetData:
    """ImageNet (ILSVRC-2012) from an ImageFolder tree ``root/train/<wnid>/*.JPEG`` and
    ``root/val/<wnid>/*.JPEG`` (the release's layout), with the recipe's transforms.

    Raises ``FileNotFoundError`` naming what is missing."""
    from torchvision import datasets

    recipe = recipe or ImageNetRecipe()
    root = Path(root)
    missing = [str(root / d) for d in ("train", "val") if not (root / d).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"ImageNet: {', '.join(missing)} not found. Put ILSVRC-2012 as ImageFolder trees "
            f"{root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG (the release's layout) and pass root=..."
        )
    train = datasets.ImageFolder(str(root / "train"), transform=_transforms(recipe, True))
    test = datasets.ImageFolder(str(root / "val"), transform=_transforms(recipe, False))
    return ImageNetData(f"imagenet-{recipe.image_size}", train, test, len(train.classes))


def fake_imagenet(n_train: int = 8, n_test: int = 4, num_classes: int = 10, recipe: ImageNetRecipe | None = None,
                  *, seed: int = 0) -> ImageNetData:
    """Random images (torchvision ``FakeData``, ``recipe.image_size`` square) through the
    recipe's transforms: the whole ``full`` path offline, at any size."""
    from torchvision import datasets

    recipe = recipe or ImageNetRecipe()
    shape = (3, recipe.image_size, recipe.image_size)
    train = datasets.FakeData(n_train, shape, num_classes, transform=_transforms(recipe, True), random_offset=seed)
    test = datasets.FakeData(n_test, shape, num_classes, transform=_transforms(recipe, False), random_offset=seed + n_train)
    return ImageNetData(f"fakeimagenet{num_classes}-{n_train}-{n_test}-{recipe.image_size}-{seed}", train, test, num_classes)



def recipe_table(recipe: ImageNetRecipe) -> list[Mapping[str, Any]]:
    """The recipe as rows ``{setting, value}`` for display (derived lrs included)."""
    rows: list[Mapping[str, Any]] = [{"setting": k, "value": v} for k, v in asdict(recipe).items()]
    rows += [{"setting": "lr (scaled to batch)", "value": recipe.lr}, {"setting": "gal_lr (scaled to batch)", "value": recipe.gal_lr}]
    return rows


def small_recipe(**changes: Any) -> ImageNetRecipe:
    """A tiny recipe for CPU checks (2 epochs, batch 4, 32 px, 1-epoch warm-up, no workers)."""
    base = {"epochs": 2, "batch_size": 4, "image_size": 32, "warmup_epochs": 1, "decay_epochs": 1.0, "eval_batch_size": 4,
            "num_workers": 0}
    return replace(ImageNetRecipe(), **{**base, **changes})
