"""The one harness: train arms x seeds fairly, cache runs, compare arms with a verdict.

- :func:`run` trains one :class:`TrainConfig` on in-memory :class:`Data` and returns a
  :class:`RunResult` (history per epoch, final metrics, a hash of the final weights).
- :func:`run_arms` runs every arm for every seed, with a progress bar, and returns the
  ``(finals, histories)`` DataFrames.
- :func:`compare` turns ``finals`` into one row per treatment arm: the paired difference with
  its interval, the smallest detectable effect, the equivalence margin and a verdict
  (:mod:`galcore.experiments.harness.stats`).

Fairness is built in. For one seed every arm starts from the same initial weights (the model
is built right after ``torch.manual_seed(seed)``) and sees the same batches in the same order
(a generator seeded with ``seed``). h is drawn from its own generator,
``GALConfig.seed = 10_000 + seed`` unless the GAL options set ``seed``, so the global random
stream (dropout) is the same with or without GAL. Nothing in the step reads back to the host;
per-epoch numbers are converted once per epoch.

The cache (``results/cache``, off unless ``cache=True``) is keyed by the whole config, the
data's fingerprint (its tensors), the model (initial weights, structure, its classes' source)
and the source of the code that decides training (the core, this file, ``optim.py``); editing
plots or reports leaves cached runs valid.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from galcore import __version__
from galcore.experiments.harness import controls, stats
from galcore.experiments.harness.optim import OPTIMIZERS, current_lr, make_optimizer
from galcore.experiments.harness.progress import progress as progress_bar
from galcore.experiments.harness.results import results_dir
from galcore.experiments.harness.stats import paired_ci
from galcore.gal import GAL, GALStep, ParamGAL
from galcore.remainder import RemainderProbe

__all__ = [
    "COMPARE_COLUMNS",
    "Data",
    "RunResult",
    "Setup",
    "StepHook",
    "TrainConfig",
    "build_gal",
    "cache_key",
    "cache_path",
    "cached",
    "code_files",
    "code_fingerprint",
    "compare",
    "evaluate",
    "loss_function",
    "model_fingerprint",
    "paired_table",
    "read_cached",
    "run",
    "run_arms",
    "state_hash",
    "train_loop",
    "write_cached",
]

Task = Literal["classification", "regression"]
TASKS = ("classification", "regression")
LOSSES = ("cross_entropy", "mse", "huber")
#: offset of h's seed from the run's seed (one rule for every GAL arm)
H_SEED_OFFSET = 10_000


# -- hashing ---------------------------------------------------------------------------------
def _update_tensor(digest: Any, t: Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes to ``digest``."""
    t = t.detach()
    digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        digest.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def state_hash(module: nn.Module | Mapping[str, Tensor]) -> str:
    """sha256 (hex) of a module's ``state_dict()`` (or of a mapping of tensors): names, dtypes,
    shapes and bytes. Equal hashes mean bit-identical weights and buffers."""
    state = module.state_dict() if isinstance(module, nn.Module) else module
    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        digest.update(name.encode())
        if isinstance(value, Tensor):
            _update_tensor(digest, value)
        else:  # extra state (e.g. GAL's options)
            digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    return digest.hexdigest()


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
                _update_tensor(digest, t)
        return digest.hexdigest()


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``gal=None`` is the standard method; a mapping of options is passed
    to :class:`galcore.GAL` (or :class:`galcore.ParamGAL` when ``space="parameter"``).

    ``model`` and ``data`` name what the caller builds (labels; the cache keys on the model
    and data themselves). ``milestones``: epochs at which lr is multiplied by 0.1 (the
    release's schedule). h's seed is ``10_000 + seed`` unless ``gal`` sets ``seed``.

    How h learns: ``h_optimizer=None`` and ``h_lr=None``: h joins the model's optimizer (the
    release's CIFAR code). ``h_optimizer`` names an optimizer of
    :func:`galcore.experiments.harness.optim.make_optimizer` (e.g. ``"adam"``) for h alone, with
    learning rate ``h_lr`` (default ``lr``; no schedule). ``h_lr`` alone means SGD with
    momentum 0.9 at that rate. ``frozen_h``: h keeps its random initial weights (also
    accepted as ``gal={"frozen_h": True}``).

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
    gal: Mapping[str, Any] | None = None
    space: Literal["output", "parameter"] = "output"
    h_optimizer: str | None = None
    h_lr: float | None = None
    frozen_h: bool = False
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
        if self.gal is not None and not isinstance(self.gal, Mapping):
            raise TypeError(f"gal must be a mapping of GAL options or None, got {type(self.gal).__name__}")
        if self.h_optimizer is not None and self.h_optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"h_optimizer must be None or one of {', '.join(OPTIMIZERS)}, got {self.h_optimizer!r}")
        if self.h_lr is not None and not (isinstance(self.h_lr, (int, float)) and self.h_lr > 0):
            raise ValueError(f"h_lr must be None or a number > 0, got {self.h_lr!r}")
        if not isinstance(self.frozen_h, bool):
            raise TypeError(f"frozen_h must be True or False, got {self.frozen_h!r}")
        if self.select is not None and not (isinstance(self.select, str) and self.select.startswith("val_")):
            raise ValueError(f"select must be None or a validation metric named 'val_...', got {self.select!r}")

    def key(self) -> str:
        """A stable hash of the configuration alone (galcore's version included)."""
        blob = json.dumps({**asdict(self), "version": __version__}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

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


# -- losses and metrics ----------------------------------------------------------------------
def _regression_loss(fn: Callable[..., Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    def loss(out: Tensor, target: Tensor) -> Tensor:
        # GAL may evaluate the loss in another dtype (compute_dtype): follow the outputs
        return fn(out, target.to(out.dtype))

    return loss


_LOSS_FNS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "mse": _regression_loss(F.mse_loss),
    "huber": _regression_loss(F.huber_loss),
}


def loss_function(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """``cross_entropy`` (logits, class indices), ``mse``, ``huber`` (delta 1): batch means.

    Regression targets are cast to the outputs' dtype (GAL's ``compute_dtype``)."""
    try:
        return _LOSS_FNS[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}") from None


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, cfg: TrainConfig, y_scale: float = 1.0, batch: int = 1024, prefix: str = "test"
) -> dict[str, float]:
    """Metrics of ``model`` on ``(x, y)``, named ``<prefix>_<metric>``: ``loss`` (the training
    criterion's batch mean; for classification the NLL) and ``accuracy`` (fraction) /
    ``error`` (percent), or for regression ``rmse``/``mae`` (standardised units) and
    ``rmse_orig``/``mae_orig`` (times ``y_scale``: the target's units)."""
    was_training = model.training
    model.eval()
    loss_fn = loss_function(cfg.loss)
    total = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    se = torch.zeros((), device=x.device)
    ae = torch.zeros((), device=x.device)
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        out = model(xb)
        total += loss_fn(out, yb) * len(xb)
        if cfg.task == "classification":
            correct += (out.argmax(dim=1) == yb).sum()
        else:
            err = out - yb
            se += (err**2).sum()
            ae += err.abs().sum()
    model.train(was_training)
    n = len(x)
    res = {f"{prefix}_loss": float(total) / n}
    if cfg.task == "classification":
        acc = float(correct) / n
        res.update({f"{prefix}_accuracy": acc, f"{prefix}_error": 100.0 * (1 - acc)})
    else:
        k = y[0].numel()
        rmse = (float(se) / (n * k)) ** 0.5
        mae = float(ae) / (n * k)
        res.update({f"{prefix}_rmse": rmse, f"{prefix}_mae": mae, f"{prefix}_rmse_orig": rmse * y_scale,
                    f"{prefix}_mae_orig": mae * y_scale})
    return res


# -- the cache key ---------------------------------------------------------------------------
_PACKAGE = Path(__file__).resolve().parents[2]  # galcore/


def code_files() -> list[Path]:
    """The sources whose text decides a training run, hashed into every cache key: the core
    (``galcore/*.py``, ``galcore/integrations/*.py``), this harness, ``optim.py`` and ``controls.py``. Plotting,
    reporting and notebook modules are not among them."""
    here = Path(__file__).resolve().parent
    core = sorted(_PACKAGE.glob("*.py")) + sorted((_PACKAGE / "integrations").glob("*.py"))
    return core + [here / "core.py", here / "optim.py", here / "controls.py"]


@functools.lru_cache(maxsize=1)
def _files_digest() -> str:
    digest = hashlib.sha256()
    for path in code_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _class_source(cls: type) -> str:
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):  # defined where no source is kept (an exec'd string)
        return f"<no source: {cls.__module__}.{cls.__qualname__}>"


def code_fingerprint(model: nn.Module | None = None) -> str:
    """sha256 (hex) of :func:`code_files` and, given a model, of the source of every
    ``nn.Module`` class in it outside torch (``inspect.getsource``), plus torch's version.
    A class without retrievable source (defined in a notebook cell) enters by name only: its
    structure and weights still key the run (:func:`model_fingerprint`), its code does not."""
    digest = hashlib.sha256(_files_digest().encode())
    digest.update(torch.__version__.encode())
    if model is not None:
        classes = {type(m) for m in model.modules()}
        for cls in sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
            digest.update(f"{cls.__module__}.{cls.__qualname__}".encode())
            if not cls.__module__.startswith("torch."):
                digest.update(_class_source(cls).encode())
    return digest.hexdigest()


_PLAIN = (bool, int, float, str, type(None))


def model_fingerprint(model: nn.Module) -> str:
    """sha256 (hex) of a freshly built model: its initial weights and buffers
    (:func:`state_hash`), its ``repr`` (layers and their settings, e.g. dropout p) and every
    module's public plain attributes (numbers, strings, tuples of them)."""
    digest = hashlib.sha256(state_hash(model).encode())
    digest.update(repr(model).encode())
    for name, m in model.named_modules():
        plain = {k: v for k, v in vars(m).items() if not k.startswith("_") and
                 (isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(isinstance(e, _PLAIN) for e in v)))}
        digest.update(f"{name}:{json.dumps(plain, sort_keys=True, default=str)}".encode())
    return digest.hexdigest()


def cache_key(cfg: TrainConfig, data: Data, model: nn.Module) -> str:
    """The cache key of a run: ``<cfg.key()>-<context>``, the context hashing the data's
    fingerprint, :func:`model_fingerprint` of the model built for ``cfg.seed`` and
    :func:`code_fingerprint` (the training code and the model's classes)."""
    context = hashlib.sha256(
        f"{data.fingerprint()}|{model_fingerprint(model)}|{code_fingerprint(model)}".encode()
    ).hexdigest()[:16]
    return f"{cfg.key()}-{context}"


def _config_only_key(cfg: TrainConfig) -> str:
    """The key of runs whose data cannot be hashed (loader-based): config and training code."""
    return f"{cfg.key()}-{code_fingerprint()[:16]}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]


def cache_path(cfg: TrainConfig, key: str | None = None) -> Path:
    """The cache file of a run: ``results/cache/<data>-<model>-<key>.json``.

    Without ``key``: the newest cached run of this config (on any data or model), or the path
    a config-only run would use when there is none — a hint for schedulers, not a lookup
    :func:`run` trusts."""
    folder = results_dir("cache")
    stem = f"{_safe(cfg.data)}-{_safe(cfg.model)}-"
    if key is not None:
        return folder / f"{stem}{key}.json"
    found = sorted(folder.glob(f"{glob_escape(stem)}{cfg.key()}-*.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else folder / f"{stem}{_config_only_key(cfg)}.json"


def glob_escape(text: str) -> str:
    """``text`` with glob metacharacters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return float(value)


def read_cached(cfg: TrainConfig, key: str | None = None) -> RunResult | None:
    """The cached result under ``key`` (default: the config-only key), or ``None``."""
    path = cache_path(cfg, key or _config_only_key(cfg))
    if not path.is_file():
        return None
    blob = json.loads(path.read_text())
    return RunResult(**{k: v for k, v in blob.items() if k in RunResult.__dataclass_fields__})


def write_cached(cfg: TrainConfig, result: RunResult, key: str | None = None) -> Path:
    """Cache a run atomically under ``key`` (default: the config-only key); several
    processes may share the folder."""
    path = cache_path(cfg, key or _config_only_key(cfg))
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(result), default=_json_default))
    tmp.replace(path)
    return path


def cached(cfg: TrainConfig, train: Callable[[], RunResult], cache: bool = False, *, key: str | None = None) -> RunResult:
    """``train()``'s result for ``cfg``, read from / written to the cache when ``cache``.

    ``key`` defaults to the config-only key (config and training code): for runs whose data
    and model cannot be hashed here (loaders); :func:`run` passes :func:`cache_key`."""
    if cache and (hit := read_cached(cfg, key)) is not None:
        return hit
    result = train()
    if cache:
        write_cached(cfg, result, key)
    return result


def cache_dir() -> Path:
    """Where :func:`run` caches finished runs."""
    return results_dir("cache")


# -- training --------------------------------------------------------------------------------
def _h_seed(cfg: TrainConfig, options: Mapping[str, Any]) -> int:
    """The one h-seeding rule: the GAL options' ``seed`` (or legacy ``h_seed``) if set, else
    ``10_000 + cfg.seed``."""
    for name in ("seed", "h_seed"):
        if options.get(name) is not None:
            return int(options[name])
    return H_SEED_OFFSET + cfg.seed


def build_gal(cfg: TrainConfig, model: nn.Module, num_outputs: int, device: torch.device) -> GAL | ParamGAL | None:
    """GAL (or ParamGAL) for ``cfg`` on ``device``, or ``None`` for the standard arm. h is drawn
    from its own generator (:func:`_h_seed`); a frozen h (``cfg.frozen_h`` or
    ``gal["frozen_h"]``) gets ``requires_grad=False``."""
    if cfg.gal is None:
        return None
    kwargs = dict(cfg.gal)
    frozen = bool(kwargs.pop("frozen_h", False)) or cfg.frozen_h
    kwargs.pop("h_seed", None)
    kwargs["seed"] = _h_seed(cfg, cfg.gal)
    h = controls.pop_h(kwargs, kwargs["seed"])  # the placebo control: seeded noise instead of h
    if h is not None:
        kwargs["h"] = h
    gal: GAL | ParamGAL = ParamGAL(model, **kwargs) if cfg.space == "parameter" else GAL(num_outputs, **kwargs)
    if frozen:  # the control: a random h that is never trained
        gal.h.requires_grad_(False)
    return gal.to(device)


def _optimizers(cfg: TrainConfig, model: nn.Module, gal: GAL | ParamGAL | None) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """The model's optimizer (with h in it unless h has its own) and h's own, if any."""
    groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    h_opt = None
    h_params = [p for p in gal.parameters() if p.requires_grad] if gal is not None else []
    if h_params:
        if cfg.h_optimizer is None and cfg.h_lr is None:
            groups.append({"params": h_params})
        else:
            h_opt = make_optimizer(cfg.h_optimizer or "momentum", h_params, cfg.h_lr if cfg.h_lr is not None else cfg.lr)
    return make_optimizer(cfg.optimizer, groups, cfg.lr, **dict(cfg.optimizer_kwargs)), h_opt


class StepHook:
    """Watches the output-space GAL steps of one :func:`run` (and may measure inside them);
    the default methods do nothing. A hook must not change what the step sends back to the
    model or h, so that a hooked run takes the same steps as a plain one (the final weights
    are bit-identical; :mod:`galcore.experiments.ablations.mechanism` is the example). ``key`` names
    what the hook records and enters the run's cache key."""

    key = ""

    def start(self, cfg: TrainConfig, model: nn.Module, gal: GAL | ParamGAL | None) -> None:
        """Called once, after the model, GAL and the optimizers are built."""

    def backward(self, gal: GAL, out: Tensor, loss_of: Callable[[Tensor], Tensor], lr: float) -> GALStep:
        """One step's ``gal.backward(out, loss_of, lr)`` (a hook may measure around it)."""
        return gal.backward(out, loss_of, lr)

    def after_step(self, model: nn.Module, xb: Tensor, out: Tensor, lr: float) -> None:
        """Called after the optimizers stepped, with the batch and its outputs before the step."""

    def end_epoch(self, row: dict[str, float], records: list[GALStep]) -> None:
        """Add the epoch's measurements to its history ``row``."""

    def end_run(self, final: dict[str, float]) -> None:
        """Add the run's measurements to its ``final`` metrics."""


def run(
    cfg: TrainConfig, data: Data, model_fn: Callable[[], nn.Module], *, cache: bool = False, progress: bool = False,
    hook: StepHook | None = None,
) -> RunResult:
    """Train one model under ``cfg`` on ``data`` (in memory) and return its result.

    ``model_fn()`` is called right after ``torch.manual_seed(cfg.seed)``. With ``cache`` the
    result is read from / written to ``results/cache`` under :func:`cache_key` (and the
    hook's ``key``). ``progress`` shows a bar over epochs. ``hook``: a :class:`StepHook`."""
    if cfg.select is not None and not data.has_val:
        raise ValueError(f"select={cfg.select!r} needs validation data: give Data x_val and y_val")
    torch.manual_seed(cfg.seed)
    model = model_fn()
    key = None
    if cache:
        key = cache_key(cfg, data, model) + (f"-{hook.key}" if hook is not None and hook.key else "")
    return cached(cfg, lambda: _train(cfg, data, model, progress, hook), cache, key=key)


def _train(cfg: TrainConfig, data: Data, model: nn.Module, progress: bool, hook: StepHook | None = None) -> RunResult:
    """In-memory data: batches are slices of a seeded permutation (no per-sample Python)."""
    device = _device(cfg.device)
    x_tr, y_tr = data.x_train.to(device), data.y_train.to(device)
    x_te, y_te = data.x_test.to(device), data.y_test.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(x_tr)

    def batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(n, generator=gen).to(device)
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            yield x_tr[idx], y_tr[idx]

    val_fn = None
    if data.x_val is not None and data.y_val is not None:
        x_va, y_va = data.x_val.to(device), data.y_val.to(device)
        val_fn = lambda m: evaluate(m, x_va, y_va, cfg, data.y_scale, prefix="val")
    return _fit(
        cfg, model, data.num_outputs, batches, lambda m: evaluate(m, x_te, y_te, cfg, data.y_scale), val_fn, progress,
        hook,
    )


def train_loop(
    cfg: TrainConfig,
    model_fn: Callable[[], nn.Module],
    num_outputs: int,
    batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
    evaluate_fn: Callable[[nn.Module], dict[str, float]],
    progress: bool = False,
    *,
    val_fn: Callable[[nn.Module], dict[str, float]] | None = None,
) -> RunResult:
    """The training loop every run shares, for any source of batches: seed, build the model,
    then :func:`_fit` (GAL, optimizers, schedule, probe; one step per batch of
    ``batches(epoch)``, tensors on the device; per epoch ``evaluate_fn(model)``'s test metrics
    and ``val_fn(model)``'s validation metrics)."""
    torch.manual_seed(cfg.seed)
    return _fit(cfg, model_fn(), num_outputs, batches, evaluate_fn, val_fn, progress)


def _best_epoch(history: list[dict[str, float]], metric: str) -> int:
    """Index of the best epoch by ``metric`` (max for ``*accuracy``, else min; NaN ignored)."""
    if metric not in history[0]:
        raise ValueError(f"select={metric!r} is not a recorded metric; recorded: {', '.join(sorted(history[0]))}")
    values = np.array([h[metric] for h in history], dtype=float)
    if not np.isfinite(values).any():
        return len(history) - 1
    values = np.where(np.isfinite(values), values, np.inf if not metric.endswith("accuracy") else -np.inf)
    return int(np.argmax(values) if metric.endswith("accuracy") else np.argmin(values))


def _fit(
    cfg: TrainConfig,
    model: nn.Module,
    num_outputs: int,
    batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
    evaluate_fn: Callable[[nn.Module], dict[str, float]],
    val_fn: Callable[[nn.Module], dict[str, float]] | None,
    progress: bool,
    hook: StepHook | None = None,
) -> RunResult:
    """Train ``model`` (just built after seeding) under ``cfg``. The recorded ``train_loss`` is
    the model-dtype loss of each batch's outputs for every arm (GAL's own float64 loss is not
    used), so arms that take the same steps record the same numbers."""
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    if cfg.select is not None and val_fn is None:
        raise ValueError(f"select={cfg.select!r} needs validation data")
    device = _device(cfg.device)
    model = model.to(device)
    gal = build_gal(cfg, model, num_outputs, device)
    opt, h_opt = _optimizers(cfg, model, gal)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), 0.1) if cfg.milestones else None
    loss_fn = loss_function(cfg.loss)
    probe = RemainderProbe(model, every=cfg.probe_every, dtype=torch.float64) if cfg.probe_every else None
    if hook is not None:
        if gal is None or isinstance(gal, ParamGAL):
            raise ValueError("a StepHook watches output-space GAL runs: give gal options and space='output'")
        hook.start(cfg, model, gal)

    history: list[dict[str, float]] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    epochs: Iterable[int] = range(cfg.epochs)
    if progress:
        epochs = progress_bar(epochs, total=cfg.epochs, desc=f"{cfg.arm} seed {cfg.seed}", unit="epoch", leave=False)
    for epoch in epochs:
        t0 = time.perf_counter()
        model.train()
        records: list[GALStep] = []
        losses: list[Tensor] = []
        for xb, yb in batches(epoch):
            opt.zero_grad(set_to_none=True)
            if h_opt is not None:
                h_opt.zero_grad(set_to_none=True)
            lr = current_lr(opt)
            if gal is None:
                loss = loss_fn(model(xb), yb)
                loss.backward()
                losses.append(loss.detach())
            elif isinstance(gal, ParamGAL):
                rec = gal.backward(
                    lambda p, xb=xb, yb=yb: loss_fn(functional_call(model, p, (xb.to(next(iter(p.values())).dtype),)), yb),
                    lr,
                )
                records.append(rec)
                losses.append(rec.loss)  # parameter space: the model ran in GAL's compute dtype
            else:
                out = model(xb)
                loss_of = lambda o, yb=yb: loss_fn(o, yb)
                rec = gal.backward(out, loss_of, lr) if hook is None else hook.backward(gal, out, loss_of, lr)
                records.append(rec)
                losses.append(loss_fn(out.detach(), yb))
            if probe is not None:
                with probe.measure(lambda o, yb=yb: loss_fn(o, yb), xb):
                    opt.step()
            else:
                opt.step()
            if h_opt is not None:
                h_opt.step()
            if hook is not None:
                hook.after_step(model, xb, out, lr)
        if sched is not None:
            sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        row: dict[str, float] = {"epoch": epoch + 1, "epoch_time": time.perf_counter() - t0}
        row.update(_epoch_stats(losses, records))
        if hook is not None:
            hook.end_epoch(row, records)
        row.update(evaluate_fn(model))
        if val_fn is not None:
            row.update(val_fn(model))
        history.append(row)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    probe_rows = [{"call": i, **t.to_dict()} for i, t in probe.history] if probe is not None else []
    best = _best_epoch(history, cfg.select) if cfg.select is not None else len(history) - 1
    final = dict(history[best])
    if cfg.select is not None:
        final["best_epoch"] = history[best]["epoch"]
    final["mean_epoch_time"] = sum(h["epoch_time"] for h in history) / len(history)
    if hook is not None:
        hook.end_run(final)
    return RunResult(asdict(cfg), history, final, seconds, probe_rows, state_hash(model), cpu)


def _epoch_stats(losses: list[Tensor], records: list[GALStep]) -> dict[str, float]:
    """Mean training loss and, for GAL, acceptance rate, fallbacks and mean |remainder|."""
    row = {"train_loss": float(torch.stack([v.double() for v in losses]).mean())}
    if records:
        row["accept_rate"] = float(torch.stack([r.accepted for r in records]).float().mean())
        row["fallbacks"] = float(torch.stack([r.fallback for r in records]).sum())
        # a fallback step's remainder may be NaN (a NaN adjustment): left out of the mean
        row["remainder_abs"] = float(torch.stack([r.remainder.double() for r in records]).abs().nanmean())
        plain = [r.remainder_plain.double() for r in records if r.remainder_plain is not None]
        if plain:
            row["remainder_plain_abs"] = float(torch.stack(plain).abs().nanmean())
    return row


# -- many runs -------------------------------------------------------------------------------
def run_arms(
    arms: Mapping[str, TrainConfig],
    seeds: Sequence[int],
    data: Data,
    model_fn: Callable[[], nn.Module],
    *,
    cache: bool = False,
    progress: bool = True,
    hook: Callable[[TrainConfig], StepHook | None] | None = None,
    runner: Callable[[TrainConfig, Any, Callable[[], nn.Module], bool], RunResult] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every arm for every seed (the seed overrides each config's), seed-major.

    Returns ``(finals, histories)``: one row per (arm, seed) with ``arm``, ``seed``, the final
    metrics, ``seconds``, ``cpu_seconds``, ``weights_hash`` (and ``accept_rate_mean``, the
    epochs' mean, for GAL arms); and one row per (arm, seed, epoch). ``progress`` shows runs
    done / total, the current arm and seed, elapsed and remaining
    (:mod:`galcore.experiments.harness.progress`). ``hook(cfg)`` gives each run's :class:`StepHook`
    (or ``None``). ``runner(cfg, data, model_fn, cache)`` trains one run instead of :func:`run`
    (data that is not in memory: :func:`galcore.experiments.classification.fullscale.train_loader_run`)."""
    if not arms:
        raise ValueError("arms: give at least one arm")
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    jobs = [(name, seed) for seed in seeds for name in arms]
    bar = progress_bar(total=len(jobs), desc=data.name, mode=None if progress else "off")
    finals, hists = [], []
    try:
        for name, seed in jobs:
            bar.set_postfix(arm=name, seed=seed, refresh=False)
            bar.update(0)  # redraw (rate-limited) so the running arm shows
            cfg = replace(arms[name], seed=seed)
            if runner is None:
                res = run(cfg, data, model_fn, cache=cache, hook=None if hook is None else hook(cfg))
            else:
                res = runner(cfg, data, model_fn, cache)
            row = {"arm": name, "seed": seed, **res.final, "seconds": res.seconds, "cpu_seconds": res.cpu_seconds,
                   "weights_hash": res.weights_hash}
            if res.history and "accept_rate" in res.history[0]:
                row["accept_rate_mean"] = float(np.mean([h["accept_rate"] for h in res.history]))
            finals.append(row)
            hists.extend({"arm": name, "seed": seed, **h} for h in res.history)
            bar.update(1)
    finally:
        bar.close()
    return pd.DataFrame(finals), pd.DataFrame(hists)


#: the columns of :func:`compare`'s rows (after any ``by`` columns)
COMPARE_COLUMNS = [
    "arm", "control", "metric", "n", "mean_control", "mean_treatment", "mean_diff", "low", "high", "p_value",
    "sd_diff", "mde", "margin", "verdict", "seeds_needed", "effect",
]


def _compare_group(
    finals: pd.DataFrame, metric: str, control: str, margin: float, lower_is_better: bool, effect: float | None,
    level: float, power: float,
) -> list[dict[str, Any]]:
    base = finals[finals["arm"] == control].set_index("seed")
    if base.empty:
        raise ValueError(f"control={control!r} has no runs; arms: {', '.join(map(str, finals['arm'].unique()))}")
    alpha = 1 - level
    rows = []
    for arm, group in finals[finals["arm"] != control].groupby("arm", sort=False):
        treat = group.set_index("seed")
        common = base.index.intersection(treat.index)
        a = base.loc[common, metric].to_numpy(dtype=float)
        b = treat.loc[common, metric].to_numpy(dtype=float)
        res = paired_ci(a, b, level)
        d = b - a
        sd = float(np.std(d, ddof=1)) if len(d) > 1 else float("nan")
        identical = bool(
            "weights_hash" in finals.columns and len(common) > 0
            and all(isinstance(h, str) and h for h in base.loc[common, "weights_hash"])
            and (base.loc[common, "weights_hash"].to_numpy() == treat.loc[common, "weights_hash"].to_numpy()).all()
        )
        size = margin if effect is None else effect
        rows.append({
            "arm": arm, "control": control, "metric": metric, "n": res.n, "mean_control": res.mean_control,
            "mean_treatment": res.mean_treatment, "mean_diff": res.mean_diff, "low": res.low, "high": res.high,
            "p_value": res.p_value, "sd_diff": sd, "mde": stats.mde(sd, res.n, power, alpha) if math.isfinite(sd) else float("nan"),
            "margin": margin, "verdict": stats.verdict(d, margin, lower_is_better, identical, alpha),
            "seeds_needed": stats.seeds_needed(sd, size, power, alpha) if size and math.isfinite(sd) else float("nan"),
            "effect": size,
        })
    return rows


def compare(
    finals: pd.DataFrame,
    metric: str,
    *,
    control: str = "standard",
    margin: float,
    lower_is_better: bool,
    effect: float | None = None,
    by: Sequence[str] = (),
    level: float = 0.95,
    power: float = 0.8,
) -> pd.DataFrame:
    """One row per treatment arm (per group of ``by`` columns): the paired comparison of
    ``metric`` with ``control`` over the seeds both have (:data:`COMPARE_COLUMNS`).

    ``mean_diff`` = treatment - control, ``low``/``high`` its ``level`` t interval,
    ``sd_diff`` the SD of the per-seed differences; ``mde`` the smallest true difference
    detectable with probability ``power`` at a two-sided ``1 - level`` test; ``margin`` the
    equivalence margin (metric units, > 0); ``verdict`` one of
    :data:`galcore.experiments.harness.stats.VERDICTS` (``identical`` when the final weights are
    bit-identical on every seed, from ``weights_hash``); ``seeds_needed`` the seeds for
    ``power`` at ``effect`` (default: the margin)."""
    if metric not in finals.columns:
        raise ValueError(f"metric={metric!r} is not a column of finals")
    try:
        margin = float(margin)
    except (TypeError, ValueError):
        raise TypeError(f"margin must be a number (metric units), got {margin!r}") from None
    if not math.isfinite(margin) or margin <= 0:
        raise ValueError(f"margin must be a finite number > 0 (metric units), got {margin!r}")
    if effect is not None and (not math.isfinite(effect) or effect == 0):
        raise ValueError(f"effect must be a finite non-zero difference or None, got {effect!r}")
    if not isinstance(lower_is_better, bool):
        raise TypeError(f"lower_is_better must be True or False, got {lower_is_better!r}")
    missing = [c for c in by if c not in finals.columns]
    if missing:
        raise ValueError(f"by: columns {missing} are not in finals")
    rows: list[dict[str, Any]] = []
    groups = finals.groupby(list(by), sort=False) if by else [((), finals)]
    for keys, group in groups:
        keys = keys if isinstance(keys, tuple) else (keys,)
        for row in _compare_group(group, metric, control, float(margin), lower_is_better, effect, level, power):
            rows.append({**dict(zip(by, keys, strict=True)), **row})
    return pd.DataFrame(rows, columns=[*by, *COMPARE_COLUMNS])


def paired_table(finals: pd.DataFrame, metric: str, control: str = "standard", level: float = 0.95) -> pd.DataFrame:
    """For each arm other than ``control``: the paired difference ``arm - control`` of
    ``metric`` over seeds, with its confidence interval (:func:`galcore.experiments.harness.stats.paired_ci`).
    :func:`compare` adds the power, margin and verdict."""
    base = finals[finals["arm"] == control].set_index("seed")[metric]
    rows = []
    for arm, group in finals[finals["arm"] != control].groupby("arm", sort=False):
        treat = group.set_index("seed")[metric]
        common = base.index.intersection(treat.index)
        res = paired_ci(base.loc[common].to_numpy(), treat.loc[common].to_numpy(), level)
        rows.append({"arm": arm, "metric": metric, "control": control, **res.as_dict()})
    return pd.DataFrame(rows)


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy (same initial weights for another arm)."""
    return copy.deepcopy(model)
