"""What one run is: the data (:class:`Data`), the arm (:class:`TrainConfig`), an experiment's
ingredients (:class:`Setup`) and a finished run (:class:`RunResult`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pandas as pd
from torch import Tensor, nn

from galcore import __version__
from galcore.config import GALConfig
from galcore.experiments.harness.hashing import update_tensor
from galcore.experiments.harness.optim import OPTIMIZERS

__all__ = ["LOSSES", "TASKS", "Data", "RunResult", "Setup", "TrainConfig"]

Task = Literal["classification", "regression"]
TASKS = ("classification", "regression")
LOSSES = ("cross_entropy", "mse", "huber")


@dataclass(frozen=True)
class Data:
    """An in-memory dataset: ``x_*`` inputs (N, ...) float, ``y_*`` targets.

    Classification targets are int64 class indices (N,); regression targets are float
    (N, k). ``y_scale`` converts regression errors back to the target's original units
    (errors are reported in both). ``x_val``/``y_val`` (optional, together): a validation
    split evaluated every epoch (``val_*`` columns) and used by ``TrainConfig.select``.
    ``name`` is a label (cache file names); the cache keys on :meth:`fingerprint`.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_outputs: int
    y_scale: float = 1.0
    x_val: Tensor | None = None
    y_val: Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError("inputs and targets must have the same number of rows")
        if (self.x_val is None) != (self.y_val is None):
            raise ValueError("x_val and y_val: give both or neither")
        if self.x_val is not None and self.y_val is not None and len(self.x_val) != len(self.y_val):
            raise ValueError(f"x_val has {len(self.x_val)} rows but y_val has {len(self.y_val)}")
        if isinstance(self.num_outputs, bool) or not isinstance(self.num_outputs, int) or self.num_outputs < 1:
            raise ValueError(f"num_outputs must be a positive int, got {self.num_outputs!r}")

    @property
    def has_val(self) -> bool:
        return self.x_val is not None

    def fingerprint(self) -> str:
        """sha256 (hex) of every tensor (dtype, shape, bytes), ``num_outputs`` and ``y_scale``;
        not of ``name``. Recomputed on each call (tensors are mutable)."""
        digest = hashlib.sha256(f"{self.num_outputs}|{float(self.y_scale)!r}".encode())
        for name in ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val"):
            t = getattr(self, name)
            digest.update(name.encode())
            if t is not None:
                update_tensor(digest, t)
        return digest.hexdigest()


@dataclass(frozen=True)
class TrainConfig:
    """One training run (an arm at one seed). ``gal=None`` is the standard method; a GAL arm's
    options are a :class:`galcore.GALConfig` (a mapping, a yaml/json path or a config; converted
    by :meth:`GALConfig.from_any` here, so a misspelt option fails when the arm is built, before
    any model is touched) for :class:`galcore.GAL` (or :class:`galcore.ParamGAL` when
    ``space="parameter"``), built by :func:`galcore.build.build_gal`.

    ``model`` and ``data`` name what the caller builds (labels; the cache keys on the model
    and data themselves). ``milestones``: epochs at which lr is multiplied by 0.1 (the
    release's schedule). h's seed is ``10_000 + seed`` unless ``gal.seed`` is set.

    How h learns: ``h_optimizer=None`` and ``h_lr=None``: h joins the model's optimizer (the
    release's CIFAR code). ``h_optimizer`` names an optimizer of
    :func:`galcore.experiments.harness.optim.make_optimizer` (e.g. ``"adam"``) for h alone, with
    learning rate ``h_lr`` (default ``lr``; no schedule). ``h_lr`` alone means SGD with
    momentum 0.9 at that rate. ``frozen_h``: h keeps its random initial weights. ``placebo``: h is
    replaced by seeded noise (:class:`galcore.experiments.harness.controls.NoiseH`; the control arm).

    ``select``: a validation metric (``"val_loss"``, ``"val_error"``...; the data must have a
    validation split) whose best epoch is reported in ``RunResult.final`` (with
    ``best_epoch``); higher is better for names ending in ``accuracy``, lower otherwise.
    ``probe_every``: measure the parameter-space remainder of every k-th optimizer step.
    """

    model: str
    data: str
    task: Task = "classification"
    loss: str = "cross_entropy"
    optimizer: str = "momentum"
    lr: float = 0.05
    optimizer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    milestones: tuple[int, ...] = ()
    gal: GALConfig | None = None
    space: Literal["output", "parameter"] = "output"
    h_optimizer: str | None = None
    h_lr: float | None = None
    frozen_h: bool = False
    placebo: bool = False
    select: str | None = None
    probe_every: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.space not in ("output", "parameter"):
            raise ValueError(f"space must be 'output' or 'parameter', got {self.space!r}")
        if self.gal is not None and not isinstance(self.gal, GALConfig):
            object.__setattr__(self, "gal", GALConfig.from_any(self.gal))  # unknown options fail here
        if self.h_optimizer is not None and self.h_optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"h_optimizer must be None or one of {', '.join(OPTIMIZERS)}, got {self.h_optimizer!r}")
        if self.h_lr is not None and not (isinstance(self.h_lr, (int, float)) and self.h_lr > 0):
            raise ValueError(f"h_lr must be None or a number > 0, got {self.h_lr!r}")
        if not isinstance(self.frozen_h, bool):
            raise TypeError(f"frozen_h must be True or False, got {self.frozen_h!r}")
        if not isinstance(self.placebo, bool):
            raise TypeError(f"placebo must be True or False, got {self.placebo!r}")
        if self.placebo and self.gal is None:
            raise ValueError("placebo=True replaces GAL's h: give gal options too")
        if self.select is not None and not (isinstance(self.select, str) and self.select.startswith("val_")):
            raise ValueError(f"select must be None or a validation metric named 'val_...', got {self.select!r}")

    def key(self) -> str:
        """A stable hash of the configuration alone (galcore's version included)."""
        blob = json.dumps({**self.to_dict(), "version": __version__}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """Plain values (``gal`` as :meth:`GALConfig.to_dict`): what a run records and the key hashes."""
        return {**asdict(self), "gal": None if self.gal is None else self.gal.to_dict()}

    @property
    def arm(self) -> str:
        return "standard" if self.gal is None else "gal"


@dataclass(frozen=True)
class Setup:
    """An experiment's ingredients: the data, a model factory, the standard arm's config
    (``gal=None``; GAL arms are ``dataclasses.replace(base, gal={...})``) and the seeds."""

    data: Data
    model_fn: Callable[[], nn.Module]
    base: TrainConfig
    seeds: tuple[int, ...]


@dataclass
class RunResult:
    """A finished run.

    ``history``: one dict per epoch (``epoch``, ``epoch_time`` s, ``train_loss``, GAL's
    ``accept_rate``/``fallbacks``/``remainder_abs``..., ``test_*`` and ``val_*`` metrics).
    ``final``: the last epoch's row (or the ``select``-ed epoch's, with ``best_epoch``) plus
    ``mean_epoch_time``. ``seconds``: wall time; ``cpu_seconds``: this process's CPU time.
    ``weights_hash``: :func:`state_hash` of the final model (bit-identical runs share it).
    """

    config: dict[str, Any]
    history: list[dict[str, float]]
    final: dict[str, float]
    seconds: float
    probe: list[dict[str, float]] = field(default_factory=list)
    weights_hash: str = ""
    cpu_seconds: float = float("nan")

    def history_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.history)

