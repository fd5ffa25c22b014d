"""Paired training runs, standard vs GAL, shared by the classification, regression and ablation
notebooks.

Fairness is built in: for one seed every arm starts from the same initial weights (the model
is built right after ``torch.manual_seed(seed)``), sees the same batches in the same order (a
generator seeded with ``seed``), and h is initialised inside a forked RNG so the global
random stream (dropout) is the same with or without GAL. The step itself reads nothing back to
the host; per-epoch numbers are converted once per epoch.

Runs are cached on disk (JSON) by a hash of their configuration, so a re-run is fast.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from galcore import __version__
from galcore.gal import GAL, GALStep, ParamGAL
from galcore.experiments.optim import current_lr, make_optimizer
from galcore.remainder import RemainderProbe
from galcore.experiments.results import results_dir
from galcore.experiments.stats import paired_ci

__all__ = [
    "Data",
    "RunResult",
    "Setup",
    "TrainConfig",
    "build_gal",
    "cache_path",
    "cached",
    "loss_function",
    "paired_table",
    "run",
    "read_cached",
    "run_arms",
    "train_loop",
    "write_cached",
]

Task = Literal["classification", "regression"]
LOSSES = ("cross_entropy", "mse", "huber")


@dataclass(frozen=True)
class Data:
    """An in-memory dataset: ``x_*`` inputs (N, ...) float, ``y_*`` targets.

    Classification targets are int64 class indices (N,); regression targets are float
    (N, k). ``y_scale`` converts regression errors back to the target's original units
    (errors are reported in both). ``name`` enters the cache key.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_outputs: int
    y_scale: float = 1.0

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError("inputs and targets must have the same number of rows")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``gal=None`` is the standard method; a dict is passed to
    :class:`galcore.GAL` (or :class:`galcore.ParamGAL` when ``space="parameter"``).

    ``model`` and ``data`` name what the caller builds; they only enter the cache key.
    ``milestones``: epochs at which lr is multiplied by 0.1 (the release's schedule).
    ``h_lr``: a separate SGD learning rate for h (``None``: h joins the model's optimizer).
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
    h_lr: float | None = None
    probe_every: int = 0
    device: str = "cpu"

    def key(self) -> str:
        """A stable hash of the configuration and of galcore's source code (a code change
        invalidates cached runs)."""
        blob = json.dumps({**asdict(self), "version": __version__, "code": _code_hash()}, sort_keys=True, default=str)
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
    """History (one dict per epoch) and final metrics of a run."""

    config: dict[str, Any]
    history: list[dict[str, float]]
    final: dict[str, float]
    seconds: float
    probe: list[dict[str, float]] = field(default_factory=list)

    def history_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.history)


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


def _json_default(value: Any) -> Any:
    return str(value) if isinstance(value, torch.dtype) else float(value)


@functools.lru_cache(maxsize=1)
def _code_hash() -> str:
    """Hash of the package's Python sources, part of every cache key."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def cache_path(cfg: TrainConfig) -> Path:
    """The cache file of a run: ``results/cache/<data>-<model>-<key>.json``."""
    return results_dir("cache") / f"{cfg.data}-{cfg.model}-{cfg.key()}.json"


def read_cached(cfg: TrainConfig) -> RunResult | None:
    """The cached result of ``cfg``, or ``None``."""
    path = cache_path(cfg)
    return RunResult(**json.loads(path.read_text())) if path.is_file() else None


def write_cached(cfg: TrainConfig, result: RunResult) -> Path:
    """Cache a run atomically (several processes may share the folder)."""
    path = cache_path(cfg)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(result), default=_json_default))
    tmp.replace(path)
    return path


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, cfg: TrainConfig, y_scale: float = 1.0, batch: int = 1024) -> dict[str, float]:
    """Test metrics: ``loss`` and ``accuracy``/``error`` (classification) or ``rmse``/``mae``
    (regression; also ``*_orig`` in the target's original units)."""
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
    res = {"test_loss": float(total) / n}
    if cfg.task == "classification":
        acc = float(correct) / n
        res.update(test_accuracy=acc, test_error=100.0 * (1 - acc))
    else:
        k = y[0].numel()
        rmse = (float(se) / (n * k)) ** 0.5
        mae = float(ae) / (n * k)
        res.update(test_rmse=rmse, test_mae=mae, test_rmse_orig=rmse * y_scale, test_mae_orig=mae * y_scale)
    return res


def build_gal(cfg: TrainConfig, model: nn.Module, num_outputs: int, device: torch.device) -> GAL | ParamGAL | None:
    if cfg.gal is None:
        return None
    kwargs = dict(cfg.gal)
    h_seed = kwargs.pop("h_seed", 10_000 + cfg.seed)
    frozen = kwargs.pop("frozen_h", False)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(h_seed)
        gal: GAL | ParamGAL = ParamGAL(model, **kwargs) if cfg.space == "parameter" else GAL(num_outputs, **kwargs)
    if frozen:  # the control: a random h that is never trained
        gal.h.requires_grad_(False)
    return gal.to(device)


def run(cfg: TrainConfig, data: Data, model_fn: Callable[[], nn.Module], *, cache: bool = True, progress: bool = False) -> RunResult:
    """Train one model under ``cfg`` and return its history; cached by ``cfg.key()``."""
    return cached(cfg, lambda: _train(cfg, data, model_fn, progress), cache)


def cached(cfg: TrainConfig, train: Callable[[], RunResult], cache: bool = True) -> RunResult:
    """``train()``'s result for ``cfg``, read from / written to the run cache when ``cache``."""
    if cache and (hit := read_cached(cfg)) is not None:
        return hit
    result = train()
    if cache:
        write_cached(cfg, result)
    return result


def _train(cfg: TrainConfig, data: Data, model_fn: Callable[[], nn.Module], progress: bool) -> RunResult:
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

    return train_loop(cfg, model_fn, data.num_outputs, batches, lambda m: evaluate(m, x_te, y_te, cfg, data.y_scale), progress)


def train_loop(
    cfg: TrainConfig,
    model_fn: Callable[[], nn.Module],
    num_outputs: int,
    batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
    evaluate_fn: Callable[[nn.Module], dict[str, float]],
    progress: bool = False,
) -> RunResult:
    """The training loop every run shares: seed, build the model (then GAL, in a forked RNG),
    the optimizer (h in it, or in its own SGD when ``cfg.h_lr``), the lr schedule and the probe;
    per epoch, one step per batch of ``batches(epoch)`` (tensors on the device) and a history
    row with ``evaluate_fn(model)``'s test metrics. Nothing in the step reads back to the host;
    the epoch's records are converted once per epoch."""
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = model_fn().to(device)
    gal = build_gal(cfg, model, num_outputs, device)
    params: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    h_opt = None
    if gal is not None and any(p.requires_grad for p in gal.parameters()):
        h_params = [p for p in gal.parameters() if p.requires_grad]
        if cfg.h_lr is None:
            params.append({"params": h_params})
        else:
            h_opt = torch.optim.SGD(h_params, lr=cfg.h_lr, momentum=0.9)
    opt = make_optimizer(cfg.optimizer, params, cfg.lr, **dict(cfg.optimizer_kwargs))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), 0.1) if cfg.milestones else None
    loss_fn = loss_function(cfg.loss)
    probe = RemainderProbe(model, every=cfg.probe_every, dtype=torch.float64) if cfg.probe_every else None

    history: list[dict[str, float]] = []
    start = time.perf_counter()
    epochs: Iterable[int] = range(cfg.epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc=f"{cfg.arm} seed {cfg.seed}", leave=False)
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
            else:
                if isinstance(gal, ParamGAL):
                    rec = gal.backward(
                        lambda p, xb=xb, yb=yb: loss_fn(functional_call(model, p, (xb.to(next(iter(p.values())).dtype),)), yb),
                        lr,
                    )
                else:
                    rec = gal.backward(model(xb), lambda o, yb=yb: loss_fn(o, yb), lr)
                records.append(rec)
                losses.append(rec.loss)
            if probe is not None:
                with probe.measure(lambda o, yb=yb: loss_fn(o, yb), xb):
                    opt.step()
            else:
                opt.step()
            if h_opt is not None:
                h_opt.step()
        if sched is not None:
            sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        row: dict[str, float] = {"epoch": epoch + 1, "epoch_time": time.perf_counter() - t0}
        row.update(_epoch_stats(losses, records))
        row.update(evaluate_fn(model))
        history.append(row)
    seconds = time.perf_counter() - start
    probe_rows = [{"call": i, **t.to_dict()} for i, t in probe.history] if probe is not None else []
    final = dict(history[-1])
    final["mean_epoch_time"] = sum(h["epoch_time"] for h in history) / len(history)
    return RunResult(asdict(cfg), history, final, seconds, probe_rows)


def _epoch_stats(losses: list[Tensor], records: list[GALStep]) -> dict[str, float]:
    """Mean training loss and, for GAL, acceptance rate, fallbacks and mean |remainder|."""
    row = {"train_loss": float(torch.stack(losses).double().mean())}
    if records:
        row["accept_rate"] = float(torch.stack([r.accepted for r in records]).float().mean())
        row["fallbacks"] = float(torch.stack([r.fallback for r in records]).sum())
        # a fallback step's remainder may be NaN (a NaN adjustment): left out of the mean
        row["remainder_abs"] = float(torch.stack([r.remainder.double() for r in records]).abs().nanmean())
        plain = [r.remainder_plain.double() for r in records if r.remainder_plain is not None]
        if plain:
            row["remainder_plain_abs"] = float(torch.stack(plain).abs().nanmean())
    return row


def run_arms(
    arms: Mapping[str, TrainConfig],
    seeds: Sequence[int],
    data: Data,
    model_fn: Callable[[], nn.Module],
    *,
    cache: bool = True,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every arm for every seed (seed overrides each config's).

    Returns ``(finals, histories)``: one row per (arm, seed) with final metrics, and one row
    per (arm, seed, epoch).
    """
    finals, hists = [], []
    jobs = [(name, seed) for seed in seeds for name in arms]
    iterator: Any = jobs
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(jobs, desc=f"{data.name}: runs")
    for name, seed in iterator:
        cfg = replace(arms[name], seed=seed)
        res = run(cfg, data, model_fn, cache=cache)
        finals.append({"arm": name, "seed": seed, **res.final, "seconds": res.seconds})
        for h in res.history:
            hists.append({"arm": name, "seed": seed, **h})
    return pd.DataFrame(finals), pd.DataFrame(hists)


def paired_table(finals: pd.DataFrame, metric: str, control: str = "standard", level: float = 0.95) -> pd.DataFrame:
    """For each arm other than ``control``: the paired difference ``arm - control`` of
    ``metric`` over seeds, with its confidence interval (:func:`galcore.experiments.stats.paired_ci`)."""
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


def cache_dir() -> Path:
    """Where :func:`run` caches finished runs."""
    return results_dir("cache")
