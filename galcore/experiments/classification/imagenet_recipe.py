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

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from galcore.build import build_gal
from galcore.experiments.classification.imagenet_setup import (
    IMAGENET_TRAIN_IMAGES,
    IMAGENET_VAL_IMAGES,
    ImageNetData,
    ImageNetRecipe,
    RMSpropTF,
    efficientnet_b2_factory,
    fake_imagenet,
    imagenet_data,
    recipe_table,
    release_lr_factor,
    release_param_groups,
    small_recipe,
)
from galcore.experiments.harness.bench import throughput
from galcore.experiments.harness.train import device_of

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

    Fair pairing as in :mod:`galcore.experiments.harness`: the model is built right after
    ``torch.manual_seed(seed)``, h from its own generator (:func:`galcore.build.build_gal`), the
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
    dev = device_of(device)
    amp = recipe.amp and dev.type == "cuda"
    torch.manual_seed(seed)
    model = (model_fn or efficientnet_b2_factory(data.num_classes, recipe))().to(dev)
    g = build_gal(recipe.gal_config(), output_dim=data.num_classes, run_seed=seed, device=dev) if gal else None
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

    dev = device_of(device)
    amp = recipe.amp and dev.type == "cuda"
    b = batch_size or recipe.batch_size
    torch.manual_seed(0)
    model = (model_fn or efficientnet_b2_factory(num_classes, recipe))().to(dev).train()
    g = build_gal(recipe.gal_config(), output_dim=num_classes, run_seed=0, device=dev) if gal else None
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

    return throughput(step, dev, b, warmup=warmup, steps=steps)


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
