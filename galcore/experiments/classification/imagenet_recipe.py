"""The release's ImageNet recipe (``imagenet/train_gal.sh``), restated for torchvision: notebook
02's ``full`` setting for ImageNet.

What the release runs (8 GPUs x batch 100, timm): EfficientNet-B2 from scratch at 260 x 260,
90 epochs; RMSprop in TensorFlow's form (lr 0.016 for the global batch of 800, eps 1e-3 inside
the square root, alpha 0.9, momentum 0.9 with the lr inside the momentum buffer, mean square
initialised to 1), weight decay 1e-5 on weights (not on biases or norm parameters); lr warm-up
from 1e-6 over 3 epochs, then x0.97 every 2.4 epochs; dropout 0.3 before the classifier,
stochastic depth 0.2; label smoothing 0.1; RandAugment (magnitude 9), random erasing (p 0.2,
per-pixel noise), random resized crops and flips; an exponential moving average (EMA, decay
0.9999) of the weights and buffers, which is what is evaluated; mixed precision (AMP).
GAL: ``gal_ratio`` 1e-3, ``gal_scale`` 1e-3 (the tentative step uses 1e-3 x the current lr),
h = 1000 -> 512 -> 256 -> 1000 (linear, no activation), the release's first-order form
(``first_order="mean"``), and h in the same RMSprop in its own parameter groups with lr
``gal_lr`` 0.016, following the same schedule.

Here: :class:`ImageNetRecipe` holds those numbers (lr and ``gal_lr`` scaled linearly with the
global batch, ``lr = 0.016 * batch / 800``); :class:`RMSpropTF` is TensorFlow's RMSprop;
:func:`release_param_groups` builds the groups; :func:`release_lr_factor` the schedule;
:func:`recipe_run` trains one arm (``gal=False`` / ``True``) for one seed, with torchvision's
``efficientnet_b2`` (timm is not a dependency; torchvision's B2 has the same dropout 0.3 and
stochastic depth 0.2 by default), ``torch.optim.swa_utils.AveragedModel`` for the EMA, and
``torch.autocast`` + ``GradScaler`` on CUDA (GAL enters through :meth:`galcore.GAL.surrogate`,
which computes everything from the unscaled loss). Differences from the release: torchvision's
B2 (not timm's ``efficientnet_b2``: different padding and init details), RandAugment without
timm's magnitude noise (``mstd0.5``), one process (no distributed BN), GAL's float64 arithmetic.

Data: :func:`imagenet_data` (an ImageFolder tree ``train/`` and ``val/``) or
:func:`fake_imagenet` (torchvision ``FakeData``, offline, any size; the tests run the whole
recipe on it on a CPU). Cost: :func:`benchmark_recipe_step` measures images per second of the
real step on a device, :func:`gpu_hours` turns a measured throughput into the cost of a run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from galcore.gal import GAL

__all__ = [
    "IMAGENET_TRAIN_IMAGES",
    "IMAGENET_VAL_IMAGES",
    "ImageNetData",
    "ImageNetRecipe",
    "RMSpropTF",
    "RecipeResult",
    "benchmark_recipe_step",
    "efficientnet_b2_factory",
    "fake_imagenet",
    "gpu_hours",
    "imagenet_data",
    "recipe_run",
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

    def gal_options(self) -> dict[str, Any]:
        """The keyword arguments of :class:`galcore.GAL` for this recipe."""
        return {
            "ratio": self.gal_ratio,
            "scale": self.gal_scale,
            "hidden": tuple(self.gal_hidden),
            "activation": None,
            "first_order": self.gal_first_order,
            "accept": "decrease",
            "compute_dtype": self.gal_compute_dtype,
        }

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


# -- one run ------------------------------------------------------------------------------------
@dataclass
class RecipeResult:
    """A finished recipe run: ``history`` (one row per epoch), ``final`` (last row),
    ``seconds`` (wall), ``cpu_seconds``, and the settings it ran with."""

    recipe: dict[str, Any]
    gal: bool
    seed: int
    data: str
    history: list[dict[str, float]]
    final: dict[str, float]
    seconds: float
    cpu_seconds: float
    device: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def _evaluate(model: nn.Module, loader: DataLoader[Any], device: torch.device, amp: bool, prefix: str) -> dict[str, float]:
    model.eval()
    nll = torch.zeros((), device=device, dtype=torch.float64)
    top1 = torch.zeros((), device=device, dtype=torch.int64)
    top5 = torch.zeros((), device=device, dtype=torch.int64)
    n = 0
    for xb, yb in loader:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            out = model(xb)
        out = out.float()
        nll += F.cross_entropy(out, yb, reduction="sum").double()
        k = min(5, out.shape[1])
        pred = out.topk(k, dim=1).indices
        top1 += (pred[:, 0] == yb).sum()
        top5 += (pred == yb[:, None]).any(dim=1).sum()
        n += len(yb)
    return {f"{prefix}loss": float(nll) / n, f"{prefix}error": 100.0 * (1 - int(top1) / n),
            f"{prefix}top5_error": 100.0 * (1 - int(top5) / n)}


def _device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def _cache_file(recipe: ImageNetRecipe, data: ImageNetData, gal: bool, seed: int) -> Path:
    from galcore.experiments.harness.results import results_dir

    return results_dir("cache") / f"{data.name}-effb2-recipe-{recipe.key()}-{'gal' if gal else 'standard'}-s{seed}.json"


def recipe_run(
    recipe: ImageNetRecipe,
    data: ImageNetData,
    *,
    gal: bool,
    seed: int = 0,
    device: str = "auto",
    model_fn: Callable[[], nn.Module] | None = None,
    cache: bool = False,
    max_steps_per_epoch: int | None = None,
) -> RecipeResult:
    """Train one arm of the release's ImageNet recipe (``gal=True``: with GAL) for one seed.

    Fair pairing as in :mod:`galcore.experiments.harness.core`: the model is built right after
    ``torch.manual_seed(seed)``, h from its own generator (``GAL(seed=10_000 + seed)``), the
    batch order from a generator seeded with ``seed``. Each step: forward under autocast (CUDA
    with ``recipe.amp``), ``gal.surrogate(...)`` (or the plain loss) scaled and backpropagated,
    the RMSpropTF step, the EMA update. Per epoch: the schedule, then the EMA model's (and the
    raw model's, ``model_*`` columns) test NLL, top-1 and top-5 error (%).

    ``model_fn`` replaces EfficientNet-B2 (tests); ``max_steps_per_epoch`` truncates epochs
    (smoke checks). With ``cache`` the result is read from / written to ``results/cache``.
    """
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    path = _cache_file(recipe, data, gal, seed) if cache and model_fn is None and max_steps_per_epoch is None else None
    if path is not None and path.is_file():
        return RecipeResult(**json.loads(path.read_text()))
    dev = _device(device)
    amp = recipe.amp and dev.type == "cuda"
    torch.manual_seed(seed)
    model = (model_fn or efficientnet_b2_factory(data.num_classes, recipe))().to(dev)
    g = GAL(data.num_classes, seed=10_000 + seed, **recipe.gal_options()).to(dev) if gal else None
    opt = RMSpropTF(release_param_groups(model, g, recipe), lr=recipe.lr, alpha=recipe.alpha, eps=recipe.eps,
                    momentum=recipe.momentum)
    bases = [group["lr"] for group in opt.param_groups]
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_decay), use_buffers=True)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp)
    smooth = recipe.label_smoothing
    gen = torch.Generator().manual_seed(seed)
    pin = dev.type == "cuda"
    train_loader = DataLoader(data.train, batch_size=recipe.batch_size, shuffle=True, generator=gen, drop_last=True,
                              num_workers=recipe.num_workers if pin else 0, pin_memory=pin)
    test_loader = DataLoader(data.test, batch_size=recipe.eval_batch_size, num_workers=recipe.num_workers if pin else 0,
                             pin_memory=pin)
    if len(train_loader) == 0:
        raise ValueError(f"batch_size {recipe.batch_size} is larger than the training set ({len(data.train)} images)")  # type: ignore[arg-type]
    history: list[dict[str, float]] = []
    start, cpu0 = time.perf_counter(), time.process_time()
    for epoch in range(recipe.epochs):
        for group, base in zip(opt.param_groups, bases, strict=True):
            group["lr"] = base * release_lr_factor(epoch, recipe, base)
        model.train()
        losses, accepted = [], []
        t0 = time.perf_counter()
        for step, (xb, yb) in enumerate(train_loader):
            if max_steps_per_epoch is not None and step >= max_steps_per_epoch:
                break
            xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp):
                out = model(xb)

            def loss_fn(o: Tensor, yb: Tensor = yb) -> Tensor:
                return F.cross_entropy(o, yb, label_smoothing=smooth)

            if g is None:
                loss = loss_fn(out.float())
            else:  # GAL's arithmetic runs outside autocast, from the unscaled loss
                loss = g.surrogate(out, loss_fn, opt.param_groups[0]["lr"])
                accepted.append(g.last_step.accepted)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            ema.update_parameters(model)
            losses.append(loss.detach().float())
        row: dict[str, float] = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "epoch_time": time.perf_counter() - t0,
                                 "train_loss": float(torch.stack(losses).mean()) if losses else float("nan")}
        if accepted:
            row["accept_rate"] = float(torch.stack(accepted).float().mean())
        row.update(_evaluate(ema.module, test_loader, dev, amp, "test_"))
        row.update(_evaluate(model, test_loader, dev, amp, "model_test_"))
        history.append(row)
    res = RecipeResult(asdict(recipe), gal, seed, data.name, history, dict(history[-1]), time.perf_counter() - start,
                       time.process_time() - cpu0, str(dev))
    if path is not None:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(res)))
        tmp.replace(path)
    return res


# -- cost ---------------------------------------------------------------------------------------
def benchmark_recipe_step(
    recipe: ImageNetRecipe,
    *,
    gal: bool,
    num_classes: int = 1000,
    batch_size: int | None = None,
    steps: int = 10,
    warmup: int = 3,
    device: str = "auto",
    model_fn: Callable[[], nn.Module] | None = None,
) -> dict[str, float]:
    """Time the recipe's training step (forward under AMP, GAL surrogate or plain loss, scaled
    backward, RMSpropTF, EMA update) on random inputs of ``recipe.image_size`` on one device.

    Returns ``images_per_s``, ``step_ms`` and ``peak_mem_gib`` (CUDA; NaN elsewhere). Data
    loading is not included (the release reads JPEGs with 8 workers per GPU)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    dev = _device(device)
    amp = recipe.amp and dev.type == "cuda"
    b = batch_size or recipe.batch_size
    torch.manual_seed(0)
    model = (model_fn or efficientnet_b2_factory(num_classes, recipe))().to(dev).train()
    g = GAL(num_classes, seed=0, **recipe.gal_options()).to(dev) if gal else None
    opt = RMSpropTF(release_param_groups(model, g, recipe), lr=recipe.lr, alpha=recipe.alpha, eps=recipe.eps,
                    momentum=recipe.momentum)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_decay), use_buffers=True)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp)
    x = torch.randn(b, 3, recipe.image_size, recipe.image_size, device=dev)
    y = torch.randint(0, num_classes, (b,), device=dev)

    def loss_fn(o: Tensor) -> Tensor:
        return F.cross_entropy(o, y, label_smoothing=recipe.label_smoothing)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp):
            out = model(x)
        loss = loss_fn(out.float()) if g is None else g.surrogate(out, loss_fn, opt.param_groups[0]["lr"])
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        ema.update_parameters(model)

    from galcore.experiments.classification.fullscale import time_steps

    return time_steps(step, dev, b, warmup=warmup, steps=steps)


def gpu_hours(
    train_images_per_s: float,
    *,
    eval_images_per_s: float | None = None,
    epochs: int = 90,
    n_train: int = IMAGENET_TRAIN_IMAGES,
    n_val: int = IMAGENET_VAL_IMAGES,
    evals_per_epoch: int = 2,
    devices: int = 1,
) -> dict[str, float]:
    """Device-hours of one recipe run from measured throughputs (images per second on ONE
    device; nothing here is measured):

    ``train_h = epochs * n_train / train_images_per_s / 3600``;
    ``eval_h = epochs * evals_per_epoch * n_val / eval_images_per_s / 3600`` (the EMA and the raw
    model are evaluated every epoch; ``eval_images_per_s`` defaults to 3x the training rate,
    a forward pass without backward);
    ``device_hours = train_h + eval_h``; ``wall_hours = device_hours / devices`` (ideal scaling).
    """
    for name, v in (("train_images_per_s", train_images_per_s), ("epochs", epochs), ("devices", devices)):
        if not v > 0:
            raise ValueError(f"{name} must be > 0, got {v!r}")
    eval_rate = eval_images_per_s if eval_images_per_s is not None else 3.0 * train_images_per_s
    train_h = epochs * n_train / train_images_per_s / 3600
    eval_h = epochs * evals_per_epoch * n_val / eval_rate / 3600
    total = train_h + eval_h
    return {"train_hours": train_h, "eval_hours": eval_h, "device_hours": total, "wall_hours": total / devices}


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
