"""Paper-scale classification (CIFAR-10/100, EfficientNet-B1) through a ``DataLoader``.

:func:`galcore.experiments.harness.run` keeps a whole dataset on the device, which suits the embedded
data. CIFAR at the release's input size does not fit that way (50,000 images resized to
224 x 224 are 30 GB), so this module trains from a :class:`torch.utils.data.Dataset` instead,
with the same rules as :mod:`galcore.experiments.harness`:

- the model is built right after ``torch.manual_seed(cfg.seed)`` (same initial weights in every
  arm), h from its own generator (:func:`galcore.build.build_gal`), so dropout and
  stochastic depth see the same random stream with or without GAL;
- the batch order comes from a ``torch.Generator`` seeded with ``cfg.seed``;
- augmentation (random horizontal flip) and the resize to the release's input size run on the
  device, per batch, from their own generator seeded with ``cfg.seed``: same flips in every
  arm, no CPU bottleneck from resizing 32 x 32 images to 224 x 224 in loader workers;
- nothing in the step reads back to the host; per-epoch numbers are converted once per epoch;
- runs are cached like :func:`galcore.experiments.harness.run` (same folder, same key).

Data: :func:`cifar_data` (torchvision; downloads when asked and possible, else a clear error),
:func:`fake_cifar` (random CIFAR-shaped images, offline, for tests). Model:
:func:`efficientnet_b1_factory` (torchvision; ImageNet weights when they can be loaded, else
from scratch, said in the output). :func:`benchmark_step` times one training step, standard vs
GAL (images per second, peak device memory).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from galcore.experiments import harness
from galcore.experiments.harness import RunResult, TrainConfig, build_gal, cached, device_of, loss_function, train_loop
from galcore.experiments.harness.bench import throughput
from galcore.experiments.harness.optim import current_lr, make_optimizer
from galcore.experiments.harness.results import repo_root
from galcore.gal import GAL

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DeviceAugment",
    "LoaderData",
    "benchmark_step",
    "cifar_data",
    "data_root",
    "efficientnet_b1_factory",
    "evaluate_loader",
    "fake_cifar",
    "run_loader_arms",
    "train_loader_run",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}


@dataclass(frozen=True)
class LoaderData:
    """A dataset read through a ``DataLoader``: items ``(image (C, H, W) float, label int)``.

    ``resize``: the side the device resizes every batch to (bilinear; ``None`` keeps the
    stored size). ``flip``: random horizontal flips of training batches (on the device).
    ``name`` enters the cache key, so it must say what the data and its preprocessing are.
    """

    name: str
    train: Dataset[Any]
    test: Dataset[Any]
    num_outputs: int
    resize: int | None = None
    flip: bool = False
    num_workers: int = 0
    eval_batch_size: int = 256


class DeviceAugment:
    """Per-batch flip (training only) and resize on the batch's device, from a seeded generator.

    Input (B, C, H, W) float; output (B, C, s, s) with ``s = size`` (or unchanged).
    """

    def __init__(self, size: int | None, flip: bool, seed: int, device: torch.device) -> None:
        self.size = size
        self.flip = flip
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, x: Tensor, train: bool) -> Tensor:
        if train and self.flip:
            mask = torch.rand(x.shape[0], device=x.device, generator=self.gen) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(-1), x)
        if self.size is not None and x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Where datasets live: ``root`` if given, else ``$GALCORE_DATA``, else ``data/`` in the
    repository (git-ignored), else ``./data``."""
    if root is not None:
        return Path(root)
    env = os.environ.get("GALCORE_DATA")
    if env:
        return Path(env)
    return (repo_root() or Path.cwd()) / "data"


def _normalize_transform() -> Any:
    from torchvision import transforms

    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def cifar_data(
    dataset: str = "cifar10",
    root: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    size: int | None = 224,
    flip: bool = True,
    num_workers: int = 8,
    eval_batch_size: int = 500,
) -> LoaderData:
    """CIFAR-10 or CIFAR-100 through torchvision, as the release prepares it: resized to
    ``size`` (224), random horizontal flips, nothing else. Normalised with ImageNet's mean and
    std (the model is ImageNet-pretrained). Images stay 32 x 32 in the loader; the device
    resizes each batch.

    Raises:
        FileNotFoundError: the data is not under ``root`` and could not be downloaded (or
            ``download=False``), with what to do about it.
    """
    from torchvision import datasets

    key = dataset.lower().replace("-", "")
    if key not in CIFAR_CLASSES:
        raise ValueError(f"unknown dataset {dataset!r}; use 'cifar10' or 'cifar100'")
    cls = datasets.CIFAR10 if key == "cifar10" else datasets.CIFAR100
    folder = data_root(root)
    tf = _normalize_transform()
    try:
        if download:
            folder.mkdir(parents=True, exist_ok=True)
        train = cls(str(folder), train=True, download=download, transform=tf)
        test = cls(str(folder), train=False, download=download, transform=tf)
    except (RuntimeError, OSError) as e:  # URLError is an OSError
        archive = "cifar-10-python.tar.gz" if key == "cifar10" else "cifar-100-python.tar.gz"
        raise FileNotFoundError(
            f"{dataset}: the data is not under {folder} and could not be "
            f"{'downloaded' if download else 'loaded (download=False)'} ({type(e).__name__}: {e}). "
            f"On a machine with internet, run galcore.experiments.classification.fullscale.cifar_data({key!r}, {str(folder)!r}) once, "
            f"or copy {archive} (or its extracted folder) from https://www.cs.toronto.edu/~kriz/cifar.html "
            f"into {folder}/. Set the folder with data_root=... or $GALCORE_DATA."
        ) from e
    name = f"{key}-{size or 32}{'-flip' if flip else ''}"
    return LoaderData(name, train, test, CIFAR_CLASSES[key], size, flip, num_workers, eval_batch_size)


def fake_cifar(
    n_train: int = 16,
    n_test: int = 8,
    num_classes: int = 10,
    *,
    size: int | None = 32,
    flip: bool = True,
    image_size: int = 32,
    seed: int = 0,
) -> LoaderData:
    """Random CIFAR-shaped images (torchvision ``FakeData``, 3 x 32 x 32) with the CIFAR
    transforms: the full-profile path, offline, in seconds."""
    from torchvision import datasets

    tf = _normalize_transform()
    shape = (3, image_size, image_size)
    train = datasets.FakeData(n_train, shape, num_classes, transform=tf, random_offset=seed)
    test = datasets.FakeData(n_test, shape, num_classes, transform=tf, random_offset=seed + n_train)
    return LoaderData(f"fakecifar{num_classes}-{n_train}-{n_test}-{size}-{seed}", train, test, num_classes, size, flip)


def efficientnet_b1_factory(num_classes: int, pretrained: bool = True, *, verbose: bool = True) -> tuple[Callable[[], nn.Module], str]:
    """EfficientNet-B1 (torchvision) with a fresh ``num_classes`` head.

    With ``pretrained`` the ImageNet weights (``IMAGENET1K_V1``) are loaded once here (from the
    torch hub cache, or downloaded where possible); when they cannot be, the model trains from
    scratch and this is printed. Returns ``(model_fn, model_name)``; the name (for the cache
    key) says which. ``model_fn`` builds a new model on every call; the head's initialisation
    follows the global seed, so the harness gives every arm the same weights.
    """
    from torchvision.models import EfficientNet_B1_Weights, efficientnet_b1

    state: dict[str, Tensor] | None = None
    name = "efficientnet_b1-scratch"
    if pretrained:
        weights = EfficientNet_B1_Weights.IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False)
            name = "efficientnet_b1-imagenet1k_v1"
            if verbose:
                print("EfficientNet-B1: ImageNet weights (torchvision IMAGENET1K_V1) loaded; fine-tuning them.")
        except Exception as e:  # noqa: BLE001 - any failure to fetch or read the weights
            if verbose:
                print(
                    f"EfficientNet-B1: could not load the ImageNet weights ({type(e).__name__}: {e}); "
                    "training FROM SCRATCH, so results are not comparable with the release's."
                )
    elif verbose:
        print("EfficientNet-B1: pretrained=False, training from scratch.")

    def model_fn() -> nn.Module:
        model = efficientnet_b1()
        if state is not None:
            model.load_state_dict(state)
        head = model.classifier[1]
        assert isinstance(head, nn.Linear)
        model.classifier[1] = nn.Linear(head.in_features, num_classes)
        return model

    return model_fn, name


def _loader(data: LoaderData, train: bool, batch_size: int, seed: int, device: torch.device) -> DataLoader[Any]:
    return DataLoader(
        data.train if train else data.test,
        batch_size=batch_size,
        shuffle=train,
        generator=torch.Generator().manual_seed(seed) if train else None,
        num_workers=data.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=train and data.num_workers > 0,
        drop_last=False,
    )


@torch.no_grad()
def evaluate_loader(model: nn.Module, data: LoaderData, cfg: TrainConfig, device: torch.device, augment: DeviceAugment | None = None) -> dict[str, float]:
    """Test loss, accuracy and error (%) over ``data.test`` (classification)."""
    was_training = model.training
    model.eval()
    loss_fn = loss_function(cfg.loss)
    total = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    n = 0
    for xb, yb in _loader(data, False, data.eval_batch_size, 0, device):
        xb = xb.to(device, non_blocking=True)
        yb = yb.to(device, non_blocking=True)
        if augment is not None:
            xb = augment(xb, train=False)
        out = model(xb)
        total += loss_fn(out, yb).double() * len(xb)
        correct += (out.argmax(dim=1) == yb).sum()
        n += len(xb)
    model.train(was_training)
    acc = int(correct) / n
    return {"test_loss": float(total) / n, "test_accuracy": acc, "test_error": 100.0 * (1 - acc)}


def train_loader_run(
    cfg: TrainConfig,
    data: LoaderData,
    model_fn: Callable[[], nn.Module],
    *,
    cache: bool = True,
    progress: bool = False,
) -> RunResult:
    """Train one classifier under ``cfg`` from ``data``'s loaders; cached by ``cfg.key()``.

    The counterpart of :func:`galcore.experiments.harness.run` for datasets that do not fit in memory
    (same history columns, same fairness rules; see the module's docstring).
    """
    if cfg.task != "classification":
        raise ValueError("train_loader_run trains classifiers (cfg.task='classification')")
    if cfg.data != data.name:
        raise ValueError(f"cfg.data={cfg.data!r} does not name this data ({data.name!r}); the cache key would lie")
    return cached(cfg, lambda: _train_loader(cfg, data, model_fn, progress), cache)


def _train_loader(cfg: TrainConfig, data: LoaderData, model_fn: Callable[[], nn.Module], progress: bool) -> RunResult:
    if cfg.space == "parameter":
        raise ValueError("space='parameter' is for small models; use galcore.experiments.harness.run")
    device = device_of(cfg.device)
    augment = DeviceAugment(data.resize, data.flip, cfg.seed, device)
    train_loader = _loader(data, True, cfg.batch_size, cfg.seed, device)

    def batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        for xb, yb in train_loader:
            yield augment(xb.to(device, non_blocking=True), train=True), yb.to(device, non_blocking=True)

    return train_loop(cfg, model_fn, data.num_outputs, batches, lambda m: evaluate_loader(m, data, cfg, device, augment), progress)


def run_loader_arms(
    arms: Mapping[str, TrainConfig],
    seeds: Sequence[int],
    data: LoaderData,
    model_fn: Callable[[], nn.Module],
    *,
    cache: bool = False,
    progress: bool = True,
) -> tuple[Any, Any]:
    """:func:`galcore.experiments.harness.run_arms` for loader data: every arm for every seed
    (seed-major) through :func:`train_loader_run`, the same ``(finals, histories)`` frames."""
    return harness.run_arms(
        arms, seeds, data, model_fn, cache=cache, progress=progress,  # type: ignore[arg-type]
        runner=lambda cfg, d, m, c: train_loader_run(cfg, d, m, cache=c),
    )


def benchmark_step(
    model_fn: Callable[[], nn.Module],
    num_classes: int,
    gal: dict[str, Any] | None,
    *,
    batch_size: int = 320,
    size: int = 224,
    steps: int = 10,
    warmup: int = 3,
    optimizer: str = "momentum",
    lr: float = 0.05,
    device: str = "auto",
    seed: int = 0,
) -> dict[str, float]:
    """Time the full-profile training step (forward, GAL or plain backward, optimizer step)
    on random CIFAR-shaped inputs resized to ``size`` on the device.

    Returns ``images_per_s``, ``step_ms`` and ``peak_mem_gib`` (CUDA only, else NaN).
    """
    dev = device_of(device)
    torch.manual_seed(seed)
    model = model_fn().to(dev).train()
    cfg = TrainConfig(model="bench", data="bench", gal=gal, seed=seed)
    g = build_gal(cfg, model, num_classes, dev)
    params: list[Any] = list(model.parameters()) + ([p for p in g.parameters() if p.requires_grad] if g is not None else [])
    opt = make_optimizer(optimizer, params, lr)
    x32 = torch.randn(batch_size, 3, 32, 32, device=dev)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)
    augment = DeviceAugment(size, True, seed, dev)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        xb = augment(x32, train=True)
        if g is None:
            F.cross_entropy(model(xb), y).backward()
        else:
            assert isinstance(g, GAL)
            g.backward(model(xb), lambda o: F.cross_entropy(o, y), current_lr(opt))
        opt.step()

    return throughput(step, dev, batch_size, warmup=warmup, steps=steps)

