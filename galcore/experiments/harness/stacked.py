"""Many seeds of one arm in one process: parameters stacked over a seed dimension S.

Each seed is the run the sequential harness (:func:`galcore.experiments.harness.run`) trains:
its own initial weights (``torch.manual_seed(seed)`` then ``model_fn()``), its own data order
(a generator seeded with ``seed``: one ``randperm`` per epoch, batches are its slices), its own
h (drawn by ``galcore.build.build_gal``: seed ``10_000 + seed`` unless ``gal.seed`` is set)
and its own acceptance decision per step. Only the arithmetic is shared: the model runs once on
a (S, B, ...) batch with (S, ...) weights, and the optimizer steps the stacked tensors (every
optimizer of ``optim.OPTIMIZERS`` updates elementwise, so seed s's slice takes seed s's step).

API (what the notebooks and the main job call):

- :func:`run_stacked(cfg, seeds, data, model_fn) <run_stacked>` -> one
  :class:`~galcore.experiments.harness.config.RunResult` per seed, in order, as ``harness.run``
  returns (``config``, ``history``, ``final``, ``weights_hash``).
- :func:`run_arms_stacked(arms, seeds, data, model_fn, stack=32) <run_arms_stacked>` ->
  ``(finals, histories)``, the DataFrames of ``harness.run_arms`` with the same columns
  (``arm``, ``seed``, the final metrics, ``seconds``, ``cpu_seconds``, ``weights_hash``,
  ``accept_rate_mean``), rows seed-major; each arm's seeds run ``stack`` at a time.

Arms are ``TrainConfig``s as for ``harness.run_arms``: ``standard`` (``gal=None``), GAL (either
``first_order``; h in the model's optimizer or its own via ``h_optimizer``/``h_lr``; ``frozen_h``),
the placebo (:func:`galcore.experiments.harness.placebo.placebo_arm`: h a seeded random
direction, rescaled and accepted the same way, nothing trained) and zero (``gal.ratio=0``).

Engines (:mod:`galcore.experiments.harness.stacked_nets`): ``"unfold"`` writes ``Conv1d`` as
unfold (im2col) + batched matmul and ``Linear`` as batched matmul (models made of
``Conv1d``/``ReLU``/``Flatten``/``Linear``, such as ``MNIST1DCNN``); ``"vmap"`` is
``torch.func.vmap`` over ``functional_call`` (any model without dropout or batch norm);
``"auto"`` takes unfold where it applies.

Scope: classification with ``cross_entropy``, output-space GAL with ``normalize="sample"``; no
``StepHook``, probe or ``select`` (each raises), no cache.

Equal within rounding, not bit for bit: the batched kernels sum in another order. Short runs
agree with the sequential ones to ~1e-7 (tests/test_stacked.py); training amplifies that like
any rounding-level perturbation, and over notebook 02's whole MNIST-1D recipe (1,200 steps) a
seed's stacked and sequential runs end as far apart as two seeds' paired difference (up to 0.4
points of test error, measured on 4 seeds). So compare arms run the same way (all stacked, or
all sequential), never a stacked arm against a sequential one: the weights hashes that detect
identical arms are only comparable within one way.
``seconds``, ``cpu_seconds`` and ``epoch_time`` are the stack's time divided by its seeds.
GAL's warning about an objective at the rounding level is not raised here.

Shapes: S seeds, B batch, C outputs. Losses are batch means per seed, shape (S,).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from galcore.adjuster import LinearStack
from galcore.experiments.harness.config import Data, RunResult, TrainConfig
from galcore.experiments.harness.hashing import state_hash
from galcore.experiments.harness.optim import current_lr, make_optimizer
from galcore.experiments.harness.placebo import RandomDirection, is_placebo, placebo_h
from galcore.experiments.harness.progress import progress as progress_bar
from galcore.experiments.harness.stacked_nets import ENGINES, StackedH, StackedModel
from galcore.experiments.harness.train import build_gal, device_of

__all__ = ["run_arms_stacked", "run_stacked"]


def _check(cfg: TrainConfig, engine: str) -> None:
    """What a stacked run supports; anything else raises, naming the option."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if cfg.task != "classification" or cfg.loss != "cross_entropy":
        raise ValueError(f"stacked runs support task='classification' with loss='cross_entropy', got {cfg.task!r}/{cfg.loss!r}")
    if cfg.space != "output":
        raise ValueError(f"stacked runs support space='output' only, got space={cfg.space!r}")
    for name, bad in (("select", cfg.select is not None), ("probe_every", bool(cfg.probe_every))):
        if bad:
            raise ValueError(f"stacked runs do not support {name}={getattr(cfg, name)!r}; use harness.run_arms")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    gc = cfg.gal
    if gc is not None:
        if gc.normalize != "sample":
            raise ValueError(f"stacked runs support gal normalize='sample' only, got {gc.normalize!r}")
        if gc.track_plain:
            raise ValueError("stacked runs do not support gal track_plain=True")
        if gc.dim not in (-1, 1):
            raise ValueError(f"stacked runs read logits (B, C): gal dim must be -1 or 1, got {gc.dim}")


def _ce(out: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy batch mean per seed: (S, B, C), (S, B) -> (S,)."""
    s, b, c = out.shape
    return F.cross_entropy(out.reshape(s * b, c), y.reshape(s * b), reduction="none").view(s, b).mean(1)


class _GALStep:
    """GAL's output-space step for S seeds at once (``gal._tentative`` and ``gal._decide``, batched)."""

    def __init__(self, cfg: TrainConfig, hs: list[nn.Module] | None, placebos: list[RandomDirection] | None,
                 out_dtype: torch.dtype) -> None:
        c = cfg.gal
        assert c is not None
        self.ratio, self.scale, self.first_order, self.accept = c.ratio, c.scale, c.first_order, c.accept
        work = c.compute_dtype if c.compute_dtype is not None else (
            torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype)
        self.work = work
        self.native = work != out_dtype
        self.placebos = placebos
        self.h: StackedH | None = None
        self.h_dtype = out_dtype  # GAL calls an h without parameters in the outputs' dtype
        if hs is not None:
            trainable = all(p.requires_grad for h in hs for p in h.parameters())
            if not all(isinstance(h, LinearStack) for h in hs):
                raise ValueError("stacked runs need h to be GAL's LinearStack (hidden/activation options are fine)")
            self.h = StackedH(hs, trainable)  # type: ignore[arg-type]
            # a trainable h computes in GAL's dtype; a frozen one in its own (float32), as GAL does
            self.h_dtype = work if trainable else hs[0].flat.dtype

    def adjustment(self, x0: Tensor) -> tuple[Tensor, Tensor | None]:
        """h's raw direction a (S, B, C) in the work dtype, and h's parameters as a leaf in
        GAL's dtype (for h's gradient), or None when nothing trains."""
        xm = torch.nan_to_num(x0, nan=0.0, posinf=0.0, neginf=0.0)
        if self.placebos is not None:  # no parameters: GAL calls h in the outputs' dtype
            a = torch.stack([p.draw(xm.shape[1:], self.h_dtype, xm.device) for p in self.placebos])
            return a.to(x0.dtype), None
        assert self.h is not None
        leaf = None
        if self.h.flat.requires_grad:
            leaf = self.h.flat.detach().to(self.h_dtype).requires_grad_(True)
            parts = self.h.parts(leaf)
        else:
            parts = self.h.parts(self.h.flat.detach())
        return self.h(parts, xm.to(self.h_dtype)).to(x0.dtype), leaf

    def __call__(self, out: Tensor, y: Tensor, lr: float) -> dict[str, Tensor]:
        """One step: fills ``out``'s graph with the chosen gradient (the model) and h's ``.grad``;
        returns per-seed (S,) ``loss`` (outputs' dtype), ``accepted``, ``fallback``, ``remainder``."""
        eta = lr * self.scale
        x0 = out.detach().to(self.work).requires_grad_(True)
        with torch.enable_grad():
            loss0 = _ce(x0, y)
            (g,) = torch.autograd.grad(loss0.sum(), x0)
            loss0, x0 = loss0.detach(), x0.detach()
            a, leaf = self.adjustment(x0)
            g_norm = torch.linalg.vector_norm(g, dim=-1, keepdim=True)
            a = a * (self.ratio * g_norm / torch.linalg.vector_norm(a, dim=-1, keepdim=True))
            delta = torch.add(eta * g, a, alpha=eta)
            inner = (delta * g).sum((1, 2))
            loss1 = _ce(x0 - delta, y)
            weight = 1 / out.shape[1] if self.first_order == "mean" else 1
            signed = torch.add(loss1, inner, alpha=weight) - loss0
            remainder = signed.detach() if weight == 1 else torch.add(signed.detach(), inner.detach(), alpha=1 - weight)
            objective = signed.abs()
            ok = torch.isfinite(objective)
            if leaf is not None:
                assert self.h is not None
                (h_grad,) = torch.autograd.grad(objective.sum(), leaf)
                h_grad = torch.where(ok.unsqueeze(1), h_grad, 0.0)
                self.h.flat.grad = h_grad.to(self.h.flat.dtype)
        accepted = ok & (loss1.detach() <= loss0) if self.accept == "decrease" else ok
        sent = torch.where(accepted.view(-1, 1, 1), a.detach(), 0.0)
        if self.native:  # the plain gradient from the loss at the outputs, in their dtype, plus a
            value = _ce(out, y)
            torch.autograd.backward([value.sum(), out], [None, sent.to(out.dtype)])
            loss = value.detach()
        else:
            torch.autograd.backward([out], [(g + sent).to(out.dtype)])
            loss = _ce(out.detach(), y)
        return {"loss": loss, "accepted": accepted, "fallback": ~ok, "remainder": remainder}


# -- the loop ----------------------------------------------------------------------------------
@torch.no_grad()
def _evaluate(model: StackedModel, x: Tensor, y: Tensor, s: int, batch: int = 1024) -> list[dict[str, float]]:
    """``harness.evaluate``'s test metrics per seed (chunks of ``batch`` rows, the same sums)."""
    total = torch.zeros(s, device=x.device)
    correct = torch.zeros(s, device=x.device)
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        out = model(xb.unsqueeze(0).expand(s, *xb.shape))
        ys = yb.unsqueeze(0).expand(s, -1)
        total += _ce(out, ys) * len(xb)
        correct += (out.argmax(dim=-1) == ys).sum(1)
    n = len(x)
    rows = []
    for t, c in zip(total.tolist(), correct.tolist(), strict=True):
        acc = c / n
        rows.append({"test_loss": t / n, "test_accuracy": acc, "test_error": 100.0 * (1 - acc)})
    return rows


def run_stacked(
    cfg: TrainConfig, seeds: Sequence[int], data: Data, model_fn: Callable[[], nn.Module], *, engine: str = "auto",
) -> list[RunResult]:
    """Train ``cfg`` for every seed of ``seeds`` in one stack (the seed overrides ``cfg.seed``);
    one :class:`RunResult` per seed, in order, shaped like ``harness.run``'s (``config``,
    ``history``, ``final``, ``weights_hash``; ``seconds``/``cpu_seconds`` are the stack's / S).
    ``engine``: ``"auto"``, ``"unfold"`` or ``"vmap"`` (see the module docstring)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    _check(cfg, engine)
    device = device_of(cfg.device)
    cfgs = [replace(cfg, seed=s) for s in seeds]
    models, hs = [], []
    for c in cfgs:  # as harness.run: seed, build the model, then GAL (h from its own generator)
        torch.manual_seed(c.seed)
        m = model_fn().to(device)
        models.append(m)
        if c.gal is not None and not is_placebo(c):
            gal = build_gal(c, m, data.num_outputs, device)
            assert gal is not None
            hs.append(gal.h)
    s = len(seeds)
    stacked = StackedModel(models, engine, data.x_train[:4].to(device))
    step = None
    if cfg.gal is not None:
        placebos = [placebo_h(c) for c in cfgs] if is_placebo(cfg) else None
        out_dtype = next(models[0].parameters()).dtype
        step = _GALStep(cfg, hs or None, placebos, out_dtype)

    groups: list[dict[str, Any]] = [{"params": [stacked.params[n] for n in stacked.names]}]
    h_opt = None
    if step is not None and step.h is not None and step.h.flat.requires_grad:
        if cfg.h_optimizer is None and cfg.h_lr is None:
            groups.append({"params": [step.h.flat]})
        else:
            h_opt = make_optimizer(cfg.h_optimizer or "momentum", [step.h.flat], cfg.h_lr if cfg.h_lr is not None else cfg.lr)
    opt = make_optimizer(cfg.optimizer, groups, cfg.lr, **dict(cfg.optimizer_kwargs))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), 0.1) if cfg.milestones else None

    x_tr, y_tr = data.x_train.to(device), data.y_train.to(device)
    x_te, y_te = data.x_test.to(device), data.y_test.to(device)
    gens = [torch.Generator().manual_seed(c.seed) for c in cfgs]
    n = len(x_tr)
    histories: list[list[dict[str, float]]] = [[] for _ in seeds]
    start, cpu_start = time.perf_counter(), time.process_time()
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        order = torch.stack([torch.randperm(n, generator=gen) for gen in gens]).to(device)  # (S, n)
        losses, records = [], []
        for i in range(0, n, cfg.batch_size):
            idx = order[:, i : i + cfg.batch_size]
            xb, yb = x_tr[idx], y_tr[idx]  # (S, B, ...), (S, B)
            opt.zero_grad(set_to_none=True)
            if h_opt is not None:
                h_opt.zero_grad(set_to_none=True)
            out = stacked(xb)
            if step is None:
                loss = _ce(out, yb)
                loss.sum().backward()
                losses.append(loss.detach())
            else:
                rec = step(out, yb, current_lr(opt))
                losses.append(rec["loss"])
                records.append(rec)
            opt.step()
            if h_opt is not None:
                h_opt.step()
        if sched is not None:
            sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_time = (time.perf_counter() - t0) / s
        stats = {"train_loss": torch.stack(losses).double().mean(0)}
        if records:
            stats["accept_rate"] = torch.stack([r["accepted"] for r in records]).float().mean(0)
            stats["fallbacks"] = torch.stack([r["fallback"] for r in records]).sum(0).float()
            stats["remainder_abs"] = torch.stack([r["remainder"] for r in records]).double().abs().nanmean(0)
        columns = {k: v.tolist() for k, v in stats.items()}
        tests = _evaluate(stacked, x_te, y_te, s)
        for j in range(s):
            row = {"epoch": epoch + 1, "epoch_time": epoch_time, **{k: float(v[j]) for k, v in columns.items()}}
            row.update(tests[j])
            histories[j].append(row)
    seconds, cpu = (time.perf_counter() - start) / s, (time.process_time() - cpu_start) / s
    stacked.write_back(models)
    results = []
    for c, m, hist in zip(cfgs, models, histories, strict=True):
        final = dict(hist[-1])
        final["mean_epoch_time"] = sum(h["epoch_time"] for h in hist) / len(hist)
        final["weights_finite"] = all(bool(torch.isfinite(t).all()) for t in m.state_dict().values()
                                      if isinstance(t, torch.Tensor) and t.is_floating_point())
        results.append(RunResult(c.to_dict(), hist, final, seconds, [], state_hash(m), cpu))
    return results


def run_arms_stacked(
    arms: Mapping[str, TrainConfig], seeds: Sequence[int], data: Data, model_fn: Callable[[], nn.Module], *,
    stack: int = 32, engine: str = "auto", progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``harness.run_arms`` with each arm's seeds trained ``stack`` at a time by
    :func:`run_stacked`: the same ``(finals, histories)`` columns, rows seed-major."""
    if not arms:
        raise ValueError("arms: give at least one arm")
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    if isinstance(stack, bool) or not isinstance(stack, int) or stack < 1:
        raise ValueError(f"stack must be an int >= 1, got {stack!r}")
    for name, cfg in arms.items():
        try:
            _check(cfg, engine)
        except (TypeError, ValueError) as err:
            raise type(err)(f"arm {name!r}: {err}") from None
    chunks = [list(seeds[i : i + stack]) for i in range(0, len(seeds), stack)]
    bar = progress_bar(total=len(chunks) * len(arms), desc=f"{data.name} stacked", mode=None if progress else "off")
    rows: dict[tuple[str, int], tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    try:
        for chunk in chunks:
            for name, cfg in arms.items():
                bar.set_postfix(arm=name, seeds=f"{chunk[0]}-{chunk[-1]}", refresh=False)
                bar.update(0)
                for seed, res in zip(chunk, run_stacked(cfg, chunk, data, model_fn, engine=engine), strict=True):
                    row = {"arm": name, "seed": seed, **res.final, "seconds": res.seconds, "cpu_seconds": res.cpu_seconds,
                           "weights_hash": res.weights_hash}
                    row["weights_finite"] = bool(res.final["weights_finite"])
                    if "accept_rate" in res.history[0]:
                        row["accept_rate_mean"] = float(np.mean([h["accept_rate"] for h in res.history]))
                    rows[name, seed] = (row, [{"arm": name, "seed": seed, **h} for h in res.history])
                bar.update(1)
    finally:
        bar.close()
    order = [(name, seed) for seed in seeds for name in arms]
    finals = pd.DataFrame([rows[k][0] for k in order])
    histories = pd.DataFrame([h for k in order for h in rows[k][1]])
    return finals, histories
