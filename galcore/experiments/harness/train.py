"""The one training loop and what it needs: losses and metrics, GAL and the optimizers for an
arm, the :class:`StepHook` extension point, :func:`run` (in-memory data), :func:`train_loop`
(any source of batches, e.g. a DataLoader) and :func:`run_arms` (arms x seeds).

Fairness is built in. For one seed every arm starts from the same initial weights (the model
is built right after ``torch.manual_seed(seed)``) and sees the same batches in the same order
(a generator seeded with ``seed``). h is drawn from its own generator
(:func:`galcore.build.build_gal`: ``GALConfig.seed``, else ``10_000 + seed``), so the global
random stream (dropout) is the same with or without GAL. Nothing in the step reads back to
the host; per-epoch numbers are converted once per epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from galcore import build
from galcore.experiments.harness.cache import cache_key, cached
from galcore.experiments.harness.config import LOSSES, Data, RunResult, TrainConfig
from galcore.experiments.harness.hashing import state_hash
from galcore.experiments.harness.optim import current_lr, make_optimizer
from galcore.experiments.harness.placebo import placebo_h
from galcore.experiments.harness.progress import progress as progress_bar
from galcore.gal import GAL, GALStep, ParamGAL
from galcore.remainder import RemainderProbe

__all__ = ["StepHook", "build_gal", "device_of", "evaluate", "fit", "loss_function", "optimizers", "run", "run_arms",
           "train_loop"]


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


def device_of(name: str) -> torch.device:
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



def build_gal(cfg: TrainConfig, model: nn.Module, num_outputs: int, device: torch.device) -> GAL | ParamGAL | None:
    """GAL (or ParamGAL over ``model`` when ``cfg.space="parameter"``) for the arm ``cfg`` on
    ``device``, or ``None`` for the standard arm: :func:`galcore.build.build_gal` with the run's
    seed (h from its own generator) and ``cfg.frozen_h``."""
    if cfg.gal is None:
        return None
    where = {"model": model} if cfg.space == "parameter" else {"output_dim": num_outputs}
    h = placebo_h(cfg)  # the placebo arm: a seeded random direction instead of h
    return build.build_gal(cfg.gal, run_seed=cfg.seed, frozen=cfg.frozen_h, device=device, h=h, **where)


def optimizers(cfg: TrainConfig, model: nn.Module, gal: GAL | ParamGAL | None) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
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
    device = device_of(cfg.device)
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
    return fit(
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
    hook: StepHook | None = None,
) -> RunResult:
    """The training loop every run shares, for any source of batches (a DataLoader's, say):
    seed, build the model, then :func:`fit` (GAL, optimizers, schedule, probe, ``hook``; one
    step per batch of ``batches(epoch)``, tensors on the device; per epoch
    ``evaluate_fn(model)``'s test metrics and ``val_fn(model)``'s validation metrics)."""
    torch.manual_seed(cfg.seed)
    return fit(cfg, model_fn(), num_outputs, batches, evaluate_fn, val_fn, progress, hook)


def _best_epoch(history: list[dict[str, float]], metric: str) -> int:
    """Index of the best epoch by ``metric`` (max for ``*accuracy``, else min; NaN ignored)."""
    if metric not in history[0]:
        raise ValueError(f"select={metric!r} is not a recorded metric; recorded: {', '.join(sorted(history[0]))}")
    values = np.array([h[metric] for h in history], dtype=float)
    if not np.isfinite(values).any():
        return len(history) - 1
    values = np.where(np.isfinite(values), values, np.inf if not metric.endswith("accuracy") else -np.inf)
    return int(np.argmax(values) if metric.endswith("accuracy") else np.argmin(values))


def fit(
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
    device = device_of(cfg.device)
    model = model.to(device)
    gal = build_gal(cfg, model, num_outputs, device)
    opt, h_opt = optimizers(cfg, model, gal)
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
    return RunResult(cfg.to_dict(), history, final, seconds, probe_rows, state_hash(model), cpu)


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


def run_arms(
    arms: Mapping[str, TrainConfig],
    seeds: Sequence[int],
    data: Data,
    model_fn: Callable[[], nn.Module],
    *,
    cache: bool = False,
    progress: bool = True,
    runner: Callable[[TrainConfig, Any, Callable[[], nn.Module], bool], RunResult] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every arm for every seed (the seed overrides each config's), seed-major.

    Returns ``(finals, histories)``: one row per (arm, seed) with ``arm``, ``seed``, the final
    metrics, ``seconds``, ``cpu_seconds``, ``weights_hash`` (and ``accept_rate_mean``, the
    epochs' mean, for GAL arms); and one row per (arm, seed, epoch). ``progress`` shows runs
    done / total, the current arm and seed, elapsed and remaining
    (:mod:`galcore.experiments.harness.progress`). The one extension point: ``runner(cfg, data,
    model_fn, cache)`` trains one run instead of :func:`run` (a run with a :class:`StepHook`:
    ``lambda cfg, d, m, c: run(cfg, d, m, cache=c, hook=...)``; data that is not in memory:
    :func:`galcore.experiments.classification.fullscale.train_loader_run`)."""
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
            res = run(cfg, data, model_fn, cache=cache) if runner is None else runner(cfg, data, model_fn, cache)
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
