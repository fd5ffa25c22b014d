"""How GAL's adjustment acts on training, measured step by step.

:func:`trace` trains one :class:`~galcore.experiments.harness.TrainConfig` exactly as
:func:`galcore.experiments.harness.run` does (same model, h, optimizers, batches: the final
weights are bit-identical, a test holds it to that) and, every ``every``-th step, also measures:

- ``pert_ratio``: ``||J^T A|| / ||J^T G||``, the parameter-space norm of the adjustment's part
  of the step against the plain gradient's. ``J`` is the Jacobian of the batch's outputs
  (B x C) w.r.t. the model's parameters, ``G`` the plain output gradient (B x C), ``A`` the
  adjustment GAL sent back (``chosen - G``: zero on a rejected step). Per sample the
  adjustment has norm ``r |g_i|``; this ratio says what it is for the batch's step.
- ``h_cosine``: the mean pairwise cosine between h's outputs ``h(x_i)`` over the batch (1: h
  points every sample the same way, so the adjustments add up over the batch).
- ``adj_grad_cosine``: the mean over samples of the cosine between a sample's adjustment
  ``A_i`` and its gradient ``g_i`` (-1: h learned to shorten every sample's step; about 0: a
  direction unrelated to the gradient).
- ``h_grad_rms``: the root mean square of the gradient h's parameters receive from the
  remainder objective (NaN for a frozen h). Adam divides by ``sqrt(v) + eps`` (eps 1e-8):
  far below eps its step is ``lr g / eps``, proportional to the gradient, not normalised.
- ``output_gain``: ``||f(x; w_new) - f(x; w_old)|| / ||lr G||`` on the batch after the optimizer
  step: how much larger the outputs' real move is than GAL's tentative step ``lr (g + a)``
  at ``scale = 1``.

The run's ``final`` counts ``rejected_rate`` (steps whose tentative loss rose, so the plain
gradient was sent) apart from ``fallback_rate`` (steps with a fault: a non-finite or zero h
output, loss or gradient).

Per epoch it adds ``coherence_adj``/``coherence_grad`` (``||sum_t v_t|| / sum_t ||v_t||`` of
the measured steps' parameter-space vectors: 1 when every step points the same way, about
``1/sqrt(T)`` for unrelated directions) and ``net_ratio`` (``||sum_t J^T A_t|| /
||sum_t J^T G_t||``: the adjustment's share of the epoch's net move), and ``h_drift``
(``||theta_h - theta_h(0)|| / ||theta_h(0)||``). The run's ``final`` also has ``decay_drift``:
the drift weight decay alone would give h's weights under h's optimizer for the same number
of steps (zero gradient), the yardstick for "h learned something".

All runs here are output-space GAL on in-memory data (:class:`~galcore.experiments.harness.Data`).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from galcore.experiments import harness
from galcore.experiments.harness import Data, RunResult, TrainConfig
from galcore.experiments.optim import current_lr, make_optimizer
from galcore.experiments.progress import progress as progress_bar
from galcore.gal import GAL

__all__ = ["DIAGNOSTICS", "decay_drift", "diverged", "pairwise_cosine", "tentative_ray", "trace", "trace_arms"]

#: per-step diagnostics averaged into each epoch's row (see the module docstring)
DIAGNOSTICS = ("pert_ratio", "h_cosine", "adj_grad_cosine", "output_gain", "h_grad_rms")


def pairwise_cosine(v: Tensor) -> float:
    """Mean cosine over the B(B-1)/2 pairs of rows of ``v`` (B, C); NaN for B < 2."""
    b = v.shape[0]
    if b < 2:
        return float("nan")
    u = v / v.norm(dim=1, keepdim=True)
    return float(((u @ u.T).sum() - u.pow(2).sum()) / (b * (b - 1)))


def diverged(final: Mapping[str, float], num_outputs: int) -> bool:
    """A run diverged when its test loss is not finite or its test accuracy is at most twice
    chance (``2 / num_outputs``; test error >= 80% for 10 classes)."""
    loss = final.get("test_loss", float("nan"))
    return not math.isfinite(loss) or final.get("test_accuracy", 1.0) <= 2.0 / num_outputs


def decay_drift(cfg: TrainConfig, h0: Sequence[Tensor], steps: int) -> float:
    """Relative drift ``||theta - theta_0|| / ||theta_0||`` of h's weights after ``steps``
    optimizer steps with zero gradient: what h's optimizer (the model's, with its weight
    decay, or h's own) does to h without any learning signal. 0 for a frozen h."""
    if cfg.frozen_h or cfg.gal is None or cfg.gal.get("frozen_h") or not h0:
        return 0.0
    params = [p.detach().clone().requires_grad_(True) for p in h0]
    if cfg.h_optimizer is None and cfg.h_lr is None:
        opt = make_optimizer(cfg.optimizer, params, cfg.lr, **dict(cfg.optimizer_kwargs))
    else:
        opt = make_optimizer(cfg.h_optimizer or "momentum", params, cfg.h_lr if cfg.h_lr is not None else cfg.lr)
    for _ in range(steps):
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
    return _drift(params, h0)


def _flat(ts: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in ts])


def _drift(now: Sequence[Tensor], start: Sequence[Tensor]) -> float:
    a, b = _flat(now), _flat(start)
    return float((a - b).norm() / b.norm())


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN when there are none), without numpy's warning."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _coherence(total: Tensor | None, norm_sum: float) -> float:
    return float(total.norm()) / norm_sum if total is not None and norm_sum > 0 else float("nan")


class _EpochTrace:
    """Sums over one epoch's measured steps (parameter-space vectors as flat float64)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[float]] = {k: [] for k in DIAGNOSTICS}
        self.sum_adj: Tensor | None = None
        self.sum_grad: Tensor | None = None
        self.norm_adj = 0.0
        self.norm_grad = 0.0

    def add_vectors(self, adj: Tensor, grad: Tensor) -> None:
        self.sum_adj = adj.clone() if self.sum_adj is None else self.sum_adj + adj
        self.sum_grad = grad.clone() if self.sum_grad is None else self.sum_grad + grad
        self.norm_adj += float(adj.norm())
        self.norm_grad += float(grad.norm())
        self.rows["pert_ratio"].append(float(adj.norm() / grad.norm()))

    def summary(self) -> dict[str, float]:
        out = {k: _nanmean(v) for k, v in self.rows.items()}
        out["coherence_adj"] = _coherence(self.sum_adj, self.norm_adj)
        out["coherence_grad"] = _coherence(self.sum_grad, self.norm_grad)
        if self.sum_adj is not None and self.sum_grad is not None:
            out["net_ratio"] = float(self.sum_adj.norm() / self.sum_grad.norm())
        return out


def _measured_step(
    model: nn.Module, params: list[Tensor], gal: GAL, out: Tensor, loss_of: Callable[[Tensor], Tensor], lr: float,
    ep: _EpochTrace,
) -> Any:
    """``gal.backward(out, loss_of, lr)`` (same gradients into the model and h), measuring the
    batch's ``pert_ratio``, ``h_cosine`` and recording the vectors for the epoch's sums.
    Returns the step's record and the plain output gradient (for ``output_gain``)."""
    leaf = out.detach().requires_grad_(True)
    rec = gal.backward(leaf, loss_of, lr)  # h's gradient accumulates as in gal.backward(out, ...)
    chosen = leaf.grad
    hg = [p.grad for p in gal.h.parameters() if p.grad is not None]
    ep.rows["h_grad_rms"].append(float(_flat(hg).pow(2).mean().sqrt()) if hg else float("nan"))
    x32 = out.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_of(x32), x32)  # the plain gradient in the model's dtype
    adj = chosen - g
    norms = adj.norm(dim=1) * g.norm(dim=1)
    cos = (adj * g).sum(1)[norms > 0] / norms[norms > 0]
    ep.rows["adj_grad_cosine"].append(float(cos.mean()) if cos.numel() else float("nan"))
    jg = torch.autograd.grad(out, params, g, retain_graph=True)
    out.backward(chosen)  # exactly what gal.backward(out, ...) sends through the model
    jc = _flat([p.grad for p in params])
    jg_flat = _flat(jg)
    ep.add_vectors(jc - jg_flat, jg_flat)
    with torch.no_grad():
        ep.rows["h_cosine"].append(pairwise_cosine(gal.h(out.detach().to(next(gal.h.parameters()).dtype))))
    return rec, g


def _train_traced(cfg: TrainConfig, data: Data, model: nn.Module, every: int, progress: bool) -> RunResult:
    """Mirror of the harness's training loop (same order of every random and optimizer
    operation) with the measurements of :func:`trace`."""
    if cfg.space != "output" or cfg.gal is None:
        raise ValueError("trace measures output-space GAL runs: give a config with gal options and space='output'")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    device = harness._device(cfg.device)
    model = model.to(device)
    gal = harness.build_gal(cfg, model, data.num_outputs, device)
    assert isinstance(gal, GAL)
    opt, h_opt = harness._optimizers(cfg, model, gal)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), 0.1) if cfg.milestones else None
    loss_fn = harness.loss_function(cfg.loss)
    params = [p for p in model.parameters() if p.requires_grad]
    h_params = list(gal.h.parameters())
    h0 = [p.detach().clone() for p in h_params]
    x_tr, y_tr = data.x_train.to(device), data.y_train.to(device)
    x_te, y_te = data.x_test.to(device), data.y_test.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(x_tr)

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(n, generator=gen).to(device)
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            yield x_tr[idx], y_tr[idx]

    history: list[dict[str, float]] = []
    first: dict[str, float] = {}
    step = accepted = faults = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    epochs: Any = range(cfg.epochs)
    if progress:
        epochs = progress_bar(epochs, total=cfg.epochs, desc=f"trace seed {cfg.seed}", unit="epoch", leave=False)
    for epoch in epochs:
        t0 = time.perf_counter()
        model.train()
        ep = _EpochTrace()
        records, losses = [], []
        for xb, yb in batches():
            opt.zero_grad(set_to_none=True)
            if h_opt is not None:
                h_opt.zero_grad(set_to_none=True)
            lr = current_lr(opt)
            out = model(xb)
            loss_of = lambda o, yb=yb: loss_fn(o, yb)
            measure = step % every == 0
            if measure:
                rec, g = _measured_step(model, params, gal, out, loss_of, lr, ep)
            else:
                rec = gal.backward(out, loss_of, lr)
            records.append(rec)
            losses.append(loss_fn(out.detach(), yb))
            opt.step()
            if h_opt is not None:
                h_opt.step()
            if measure:
                with torch.no_grad():
                    ep.rows["output_gain"].append(float((model(xb) - out.detach()).norm() / (lr * g.norm())))
                if step == 0:
                    first = {"pert_ratio_init": ep.rows["pert_ratio"][0], "h_cosine_init": ep.rows["h_cosine"][0]}
            step += 1
        if sched is not None:
            sched.step()
        row: dict[str, float] = {"epoch": epoch + 1, "epoch_time": time.perf_counter() - t0}
        row.update(harness._epoch_stats(losses, records))
        accepted += int(torch.stack([r.accepted for r in records]).sum())
        faults += int(torch.stack([r.fallback for r in records]).sum())
        row.update(ep.summary())
        row["h_drift"] = _drift(h_params, h0)
        row.update(harness.evaluate(model, x_te, y_te, cfg, data.y_scale))
        history.append(row)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    final = dict(history[-1])
    final["mean_epoch_time"] = sum(h["epoch_time"] for h in history) / len(history)
    final.update(first)
    final["steps"] = step
    final["rejected_rate"] = (step - accepted - faults) / step  # tentative loss rose: plain gradient sent
    final["fallback_rate"] = faults / step  # a fault (non-finite or zero h output, loss, gradient)
    final["decay_drift"] = decay_drift(cfg, h0, step)
    for name in (*DIAGNOSTICS, "coherence_adj", "coherence_grad", "net_ratio"):
        final[f"{name}_mean"] = _nanmean([h.get(name, float("nan")) for h in history])
    r_gal = _nanmean([h["remainder_abs"] for h in history])
    r_plain = _nanmean([h.get("remainder_plain_abs", float("nan")) for h in history])
    final["remainder_ratio"] = float(r_gal / r_plain) if r_plain > 0 else float("nan")
    final["diverged"] = float(diverged(final, data.num_outputs))
    return RunResult(asdict(cfg), history, final, seconds, [], harness.state_hash(model), cpu)


_SOURCE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def trace(cfg: TrainConfig, data: Data, model_fn: Callable[[], nn.Module], *, every: int = 4, cache: bool = False,
          progress: bool = False) -> RunResult:
    """Train ``cfg`` as :func:`galcore.experiments.harness.run` does and measure GAL's
    adjustment every ``every``-th step (module docstring). ``track_plain`` is switched on (it
    measures, it does not change the step). Cached like the harness's runs (key: the harness's
    key of the run, this module's source and ``every``)."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    if cfg.gal is not None and not cfg.gal.get("track_plain", False):
        cfg = replace(cfg, gal={**cfg.gal, "track_plain": True})
    torch.manual_seed(cfg.seed)
    model = model_fn()
    key = f"trace{every}-{_SOURCE}-{harness.cache_key(cfg, data, model)}" if cache else None
    return harness.cached(cfg, lambda: _train_traced(cfg, data, model, every, progress), cache, key=key)


def trace_arms(
    arms: Mapping[str, TrainConfig], seeds: Sequence[int], data: Data, model_fn: Callable[[], nn.Module], *,
    every: int = 4, cache: bool = False, progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`trace` every GAL arm for every seed (``gal=None`` arms run through
    :func:`galcore.experiments.harness.run`), seed-major. Returns ``(finals, histories)`` with
    the columns of :func:`galcore.experiments.harness.run_arms` plus the diagnostics."""
    if not arms or not seeds:
        raise ValueError("arms and seeds: give at least one of each")
    jobs = [(name, seed) for seed in seeds for name in arms]
    bar = progress_bar(total=len(jobs), desc=f"{data.name}: traced runs", mode=None if progress else "off")
    finals, hists = [], []
    try:
        for name, seed in jobs:
            bar.set_postfix(arm=name, seed=seed, refresh=False)
            bar.update(0)
            cfg = replace(arms[name], seed=seed)
            res = trace(cfg, data, model_fn, every=every, cache=cache) if cfg.gal is not None else harness.run(
                cfg, data, model_fn, cache=cache)
            row = {"arm": name, "seed": seed, **res.final, "seconds": res.seconds, "cpu_seconds": res.cpu_seconds,
                   "weights_hash": res.weights_hash}
            if cfg.gal is None:
                row["diverged"] = float(diverged(res.final, data.num_outputs))
            else:
                row["accept_rate_mean"] = float(np.mean([h["accept_rate"] for h in res.history]))
            finals.append(row)
            hists.extend({"arm": name, "seed": seed, **h} for h in res.history)
            bar.update(1)
    finally:
        bar.close()
    return pd.DataFrame(finals), pd.DataFrame(hists)


def tentative_ray(gal: GAL, outputs: Tensor, loss_fn: Callable[[Tensor], Tensor], lengths: Sequence[float]) -> Tensor:
    """``L(x - t (g + a)) - L(x)`` for each ``t`` in ``lengths``: the loss along GAL's tentative
    ray at the outputs ``x`` (B, C), with the adjustment ``a`` the one ``gal`` proposes there
    (computed on a copy of ``gal``, so ``gal`` and its h are left untouched). In float64.
    GAL's tentative step is the point ``t = lr * scale``; a positive value there is a rejection."""
    import copy

    probe = copy.deepcopy(gal)
    probe.accept = "always"
    leaf = outputs.detach().double().requires_grad_(True)
    probe.backward(leaf, loss_fn, 1.0)
    direction = leaf.grad  # g + a
    x = outputs.detach().double()
    with torch.no_grad():
        base = loss_fn(x)
        return torch.stack([loss_fn(x - t * direction) - base for t in lengths])
