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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from galcore.experiments import harness
from galcore.experiments.harness import Data, RunResult, TrainConfig
from galcore.experiments.harness.optim import make_optimizer
from galcore.gal import GAL

__all__ = ["CE_CURVATURE", "DIAGNOSTICS", "GradientBound", "bound_arms", "bound_text", "decay_drift", "diverged", "h_gradient_bound", "pairwise_cosine", "tentative_ray", "trace", "trace_arms"]

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
    if cfg.frozen_h or cfg.gal is None or not h0:
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
    """``||now - start|| / ||start||`` over all tensors; NaN when there are none (no h weights)."""
    if not start:
        return float("nan")
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


class Tracer(harness.StepHook):
    """The measurements of :func:`trace` as a :class:`~galcore.experiments.harness.StepHook`:
    the harness trains as always; every ``every``-th step the GAL step is taken apart (same
    gradients into the model and h) and measured."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.key = f"trace{every}-{_SOURCE}"
        self.step = self.accepted = self.faults = 0
        self.first: dict[str, float] = {}
        self.ep = _EpochTrace()
        self.g: Tensor | None = None

    def start(self, cfg: TrainConfig, model: nn.Module, gal: Any) -> None:
        self.cfg, self.gal = cfg, gal
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.h_params = list(gal.h.parameters())
        self.h0 = [p.detach().clone() for p in self.h_params]

    def backward(self, gal: GAL, out: Tensor, loss_of: Callable[[Tensor], Tensor], lr: float) -> Any:
        if self.step % self.every != 0:
            self.g = None
            return gal.backward(out, loss_of, lr)
        ep = self.ep
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
        jg = torch.autograd.grad(out, self.params, g, retain_graph=True)
        out.backward(chosen)  # exactly what gal.backward(out, ...) sends through the model
        jc = _flat([p.grad for p in self.params])
        jg_flat = _flat(jg)
        ep.add_vectors(jc - jg_flat, jg_flat)
        if self.h_params:  # a parameter-free h (the placebo's noise) is not called again: its stream would move
            with torch.no_grad():
                ep.rows["h_cosine"].append(pairwise_cosine(gal.h(out.detach().to(self.h_params[0].dtype))))
        self.g = g
        return rec

    def after_step(self, model: nn.Module, xb: Tensor, out: Tensor, lr: float) -> None:
        if self.g is not None:
            with torch.no_grad():
                self.ep.rows["output_gain"].append(float((model(xb) - out.detach()).norm() / (lr * self.g.norm())))
            if self.step == 0:
                self.first = {"pert_ratio_init": self.ep.rows["pert_ratio"][0], "h_cosine_init": (self.ep.rows["h_cosine"] or [float("nan")])[0]}
        self.step += 1

    def end_epoch(self, row: dict[str, float], records: list[Any]) -> None:
        self.accepted += int(torch.stack([r.accepted for r in records]).sum())
        self.faults += int(torch.stack([r.fallback for r in records]).sum())
        row.update(self.ep.summary())
        row["h_drift"] = _drift(self.h_params, self.h0)
        self.ep = _EpochTrace()

    def end_run(self, final: dict[str, float]) -> None:
        step = self.step
        final.update(self.first)
        final["steps"] = step
        final["rejected_rate"] = (step - self.accepted - self.faults) / step  # tentative loss rose: plain gradient
        final["fallback_rate"] = self.faults / step  # a fault (non-finite or zero h output, loss, gradient)
        final["decay_drift"] = decay_drift(self.cfg, self.h0, step)


_SOURCE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def _traced(cfg: TrainConfig) -> TrainConfig:
    """The config a traced run trains: ``track_plain`` on (it measures, it does not change the step)."""
    if cfg.space != "output" or cfg.gal is None:
        raise ValueError("trace measures output-space GAL runs: give a config with gal options and space='output'")
    return cfg if cfg.gal.track_plain else replace(cfg, gal=cfg.gal.replace(track_plain=True))


def _summarise(res: RunResult, num_outputs: int) -> RunResult:
    """Run-level means of the per-epoch diagnostics, the remainder ratio and divergence."""
    final, history = res.final, res.history
    for name in (*DIAGNOSTICS, "coherence_adj", "coherence_grad", "net_ratio"):
        final[f"{name}_mean"] = _nanmean([h.get(name, float("nan")) for h in history])
    r_gal = _nanmean([h["remainder_abs"] for h in history])
    r_plain = _nanmean([h.get("remainder_plain_abs", float("nan")) for h in history])
    final["remainder_ratio"] = float(r_gal / r_plain) if r_plain > 0 else float("nan")
    final["diverged"] = float(diverged(final, num_outputs))
    return res


def _check_every(every: Any) -> None:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")


def trace(cfg: TrainConfig, data: Data, model_fn: Callable[[], nn.Module], *, every: int = 4, cache: bool = False,
          progress: bool = False) -> RunResult:
    """Train ``cfg`` with :func:`galcore.experiments.harness.run` and measure GAL's adjustment
    every ``every``-th step (module docstring; a :class:`Tracer` hook). ``track_plain`` is
    switched on. Cached like the harness's runs (the key adds this module's source and ``every``)."""
    _check_every(every)
    res = harness.run(_traced(cfg), data, model_fn, cache=cache, progress=progress, hook=Tracer(every))
    return _summarise(res, data.num_outputs)


def trace_arms(
    arms: Mapping[str, TrainConfig], seeds: Sequence[int], data: Data, model_fn: Callable[[], nn.Module], *,
    every: int = 4, cache: bool = False, progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`galcore.experiments.harness.run_arms` with every GAL arm traced (:func:`trace`;
    ``gal=None`` arms run plainly). Returns ``(finals, histories)`` with run_arms' columns plus
    the diagnostics and ``diverged``."""
    _check_every(every)
    if not arms or not seeds:
        raise ValueError("arms and seeds: give at least one of each")
    arms = {k: (_traced(v) if v.gal is not None else v) for k, v in arms.items()}

    def one(cfg: TrainConfig, d: Data, m: Callable[[], nn.Module], c: bool) -> RunResult:
        return trace(cfg, d, m, every=every, cache=c) if cfg.gal is not None else harness.run(cfg, d, m, cache=c)

    finals, hists = harness.run_arms(arms, seeds, data, model_fn, cache=cache, progress=progress, runner=one)
    finals["diverged"] = finals.apply(lambda row: float(diverged(row, data.num_outputs)), axis=1)
    return finals, hists


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


# -- h's gradient: the bound, derived, against what the run measures ----------------------------
#: the largest eigenvalue of softmax cross-entropy's Hessian w.r.t. one sample's logits
#: (diag(p) - p p^T has eigenvalues in [0, 1/2])
CE_CURVATURE = 0.5


def _stack_jacobian_fro(h: nn.Module, x: Tensor) -> Tensor:
    """Per row of ``x`` (B, C): the Frobenius norm of the Jacobian of h's output w.r.t. all of
    h's weights and biases, for the release's h (a :class:`galcore.adjuster.LinearStack` without
    activations), in float64. Row convention ``z_k = z_{k-1} W_k + b_k``: layer k contributes
    ``(||z_{k-1}||^2 + 1) ||W_{k+1} ... W_L||_F^2``. An upper bound of the Jacobian's operator norm."""
    parts = [p.detach().double() for p in h.parts(h.flat)]  # type: ignore[operator]
    ws, bs = parts[0::2], parts[1::2]
    z = [x.double()]
    for w, b in zip(ws[:-1], bs[:-1], strict=True):
        z.append(z[-1] @ w + b)
    total = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    after = torch.eye(ws[-1].shape[1], dtype=torch.float64, device=x.device)
    for k in range(len(ws) - 1, -1, -1):
        total += (z[k].pow(2).sum(1) + 1) * after.pow(2).sum()
        after = ws[k] @ after
    return total.sqrt()


def h_gradient_bound(g_norm: Tensor, h_norm: Tensor, jac: Tensor, ratio: float, eta: float, batch: int,
                     first_order: str, curvature: float = CE_CURVATURE) -> Tensor:
    """Upper bound of ``||d objective / d theta_h||`` for one GAL step (a 0-d float64 tensor).

    Per sample, with g_i the gradient of the batch-mean loss w.r.t. output i, h_i h's raw output,
    a_i = r ||g_i|| h_i / ||h_i|| and the tentative step delta_i = eta (g_i + a_i):
    ``d a_i / d h_i`` has norm ``r ||g_i|| / ||h_i||``; the signed remainder S = L(x - delta) - L(x)
    + w <delta, g> has ``d S / d a_i = eta (w g_i - grad_i L(x - delta))``, and
    ``||grad_i L(x - delta) - g_i|| <= (curvature / B) ||delta_i||`` (L is a batch mean of
    per-sample losses whose Hessian is at most ``curvature``). Hence

    - ``first_order="sum"`` (w = 1): ``||dS/da_i|| <= eta^2 (1 + r) curvature ||g_i|| / B``: h's
      gradient is second order, ``~ r eta^2 ||g_i||^2 / B``;
    - ``"mean"`` (w = 1/B): ``||dS/da_i|| <= eta ||g_i|| (1 - 1/B + eta (1 + r) curvature / B)``:
      first order, ``~ r eta ||g_i||^2`` (the first-order term no longer cancels).

    Summed over the batch through h's Jacobian (``jac``: per-sample norms, e.g.
    :func:`_stack_jacobian_fro`). ``g_norm``, ``h_norm``, ``jac``: (B,) float64."""
    if first_order == "sum":
        ds = eta**2 * (1 + ratio) * curvature * g_norm / batch
    elif first_order == "mean":
        ds = eta * g_norm * (1 - 1 / batch + eta * (1 + ratio) * curvature / batch)
    else:
        raise ValueError(f"first_order must be 'sum' or 'mean', got {first_order!r}")
    return (jac * ratio * g_norm / h_norm * ds).sum()


class GradientBound(harness.StepHook):
    """Every ``every``-th step of a run whose h is the release's linear stack: h's measured
    gradient norm (``||grad theta_h||`` after the step's backward; NaN for a frozen h) beside the
    bound of :func:`h_gradient_bound` for both first-order forms, from the step's own ``g_i``,
    ``h_i``, lr and batch size. Per run (``final``): ``h_grad_norm``, ``bound_sum``,
    ``bound_mean`` (means over the measured steps), ``bound_ok`` (measured <= the bound of the
    run's own form on every measured step), ``h_drift`` (``||theta_T - theta_0|| / ||theta_0||``)
    and ``sgd_drift_bound``: the drift that SGD with momentum m at the run's learning rates could
    reach at most with gradients at the bound (``sum_t lr_t |bound_t| / (1 - m) / ||theta_0||``,
    with the unmeasured steps at the measured mean; for h in an SGD optimizer; weight decay apart:
    ``decay_drift`` is what the optimizer's weight decay alone does to h). Measuring does not
    change the step (h is a deterministic function; the bound is computed beside it)."""

    def __init__(self, every: int = 10) -> None:
        _check_every(every)
        self.every = every
        self.key = f"bound{every}-{_SOURCE}"

    def start(self, cfg: TrainConfig, model: nn.Module, gal: Any) -> None:
        from galcore.adjuster import LinearStack

        if not isinstance(gal.h, LinearStack) or not gal.h._affine:
            raise ValueError("GradientBound needs the release's h (a linear stack without activations)")
        self.cfg, self.gal, self.step, self.lr_sum = cfg, gal, 0, 0.0
        self.theta0 = gal.h.flat.detach().clone()
        self.rows: list[tuple[float, float, float, float]] = []
        self.momentum = float(dict(cfg.optimizer_kwargs).get("momentum", 0.9)) if cfg.optimizer in ("momentum", "lookahead") else 0.0
        if cfg.h_optimizer is not None or cfg.h_lr is not None:
            self.momentum = 0.9 if (cfg.h_optimizer or "momentum") in ("momentum", "lookahead") else 0.0

    def backward(self, gal: GAL, out: Tensor, loss_of: Callable[[Tensor], Tensor], lr: float) -> Any:
        eta = float(lr) * gal.scale
        self.lr_sum += float(lr)
        if self.step % self.every:
            self.step += 1
            return gal.backward(out, loss_of, lr)
        x = out.detach().double().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_of(x), x)
        with torch.no_grad():
            hx = gal.h(x.detach().to(gal.h.flat.dtype)).double()
            jac = _stack_jacobian_fro(gal.h, x.detach())
        g_norm, h_norm = g.norm(dim=1), hx.norm(dim=1)
        b = len(x)
        bounds = [float(h_gradient_bound(g_norm, h_norm, jac, gal.ratio, eta, b, f)) for f in ("sum", "mean")]
        rec = gal.backward(out, loss_of, lr)
        grad = gal.h.flat.grad
        self.rows.append((float(grad.double().norm()) if grad is not None else float("nan"), *bounds, float(lr)))
        self.step += 1
        return rec

    def end_run(self, final: dict[str, float]) -> None:
        m = np.array(self.rows, dtype=float)
        theta = self.gal.h.flat.detach()
        own = 1 if self.gal.first_order == "sum" else 2
        final["h_grad_norm"] = float(np.nanmean(m[:, 0])) if np.isfinite(m[:, 0]).any() else float("nan")
        final["bound_sum"], final["bound_mean"] = float(m[:, 1].mean()), float(m[:, 2].mean())
        final["bound_ok"] = float(bool(np.all(~np.isfinite(m[:, 0]) | (m[:, 0] <= m[:, own] * (1 + 1e-9)))))
        final["h_drift"] = _drift([theta], [self.theta0])
        per_lr = float((m[:, own] / m[:, 3]).mean())  # bound per unit lr (it grows with eta)
        final["sgd_drift_bound"] = self.lr_sum * per_lr * float(m[:, 3].mean()) / (1 - self.momentum) / float(self.theta0.double().norm())
        final["bound_steps"] = float(len(m))
        final["decay_drift"] = decay_drift(self.cfg, [self.theta0], self.step)


def bound_arms(arms: Mapping[str, TrainConfig], seeds: Sequence[int], data: Data, model_fn: Callable[[], nn.Module], *,
               every: int = 10, cache: bool = False, progress: bool = True) -> pd.DataFrame:
    """:class:`GradientBound` on every arm (GAL arms with the release's h) and seed: one row per
    run with ``arm``, ``seed``, the first-order form, how h is trained, the measured gradient and
    drift, and the bounds."""
    _check_every(every)
    def one(cfg: TrainConfig, d: Data, m: Callable[[], nn.Module], c: bool) -> RunResult:
        return harness.run(cfg, d, m, cache=c, hook=GradientBound(every))

    f, _ = harness.run_arms(arms, seeds, data, model_fn, cache=cache, progress=progress, runner=one)
    f.insert(1, "first_order", f["arm"].map(lambda a: arms[a].gal.first_order))  # type: ignore[union-attr]
    f.insert(2, "h_trained_by", f["arm"].map(lambda a: "frozen" if arms[a].frozen_h else (
        f"own {arms[a].h_optimizer or 'momentum'} lr {arms[a].h_lr:g}" if arms[a].h_optimizer or arms[a].h_lr
        else f"model's {arms[a].optimizer} lr {arms[a].lr:g}")))
    return f


def bound_text(bounds: pd.DataFrame, group: Sequence[str] = ("optimizer",)) -> str:
    """What the measured h gradients, their bounds and h's drift say, per way h is trained:
    sentences computed from :func:`bound_arms` rows (with the ``group`` columns, e.g.
    ``optimizer``, in front). Says whether the bound held on every measured step, the ratio of
    the mean form's bound to the sum form's, and which ways of training h moved it."""
    keys = [*group, "arm", "first_order", "h_trained_by"]
    g = bounds.groupby(keys, sort=False).agg(
        grad=("h_grad_norm", "mean"), b_sum=("bound_sum", "mean"), b_mean=("bound_mean", "mean"),
        drift=("h_drift", "mean"), sgd_bound=("sgd_drift_bound", "mean"), decay=("decay_drift", "mean"), ok=("bound_ok", "min"),
        n=("seed", "count"))
    lines = []
    for key, r in g.iterrows():
        *where, arm, form, how = key
        own = r["b_sum"] if form == "sum" else r["b_mean"]
        at = ", ".join(map(str, where)) + ", " if where else ""
        lines.append(f"- `{arm}` ({at}first_order=\"{form}\", h in {how}): measured ||grad h|| {r['grad']:.2g} "
                     f"(bound {own:.2g}; {'below it on every measured step' if r['ok'] else 'ABOVE it on some step'}), "
                     f"h's relative drift over the run {r['drift']:.2g}"
                     + (f" (SGD at the bound could move it at most {r['sgd_bound']:.2g} from its gradient; "
                        if "adam" not in how.lower() else " (")
                     + f"weight decay alone {r['decay']:.2g})"
                     + f"; {int(r['n'])} seed(s).")
    ratio = float((g["b_mean"] / g["b_sum"]).median())
    moved = g["drift"]
    verdict = (f"The mean form's bound is {ratio:.3g} times the sum form's: averaging <delta, g> over the batch leaves a "
               "first-order term in h's objective (it no longer cancels), so its gradient scales with lr, the sum form's "
               "with lr².")
    learned = moved - g["decay"]  # what the gradient moved, beyond weight decay
    small = moved[learned < 1e-3]
    big = moved[learned >= 1e-3]
    verdict += (f" Beyond what weight decay alone does, h's weights moved by less than 1e-3 of their norm in {len(small)} of "
                f"{len(moved)} ways of training it"
                + (f"; by {big.min():.2g} to {big.max():.2g} in " + ", ".join(f"`{k[-3]}` (h in {k[-1]})" for k in big.index)
                   if len(big) else ""))
    verdict += "."
    if len(big) == 0:
        verdict += (" With every way of training h here, h stays at its random initialisation: GAL's adjustment is the "
                    "direction of h's initial random map of the outputs (what a frozen h gives), not a learned one, so no "
                    "learning of h can produce a difference, and GAL ≈ placebo is what to expect unless that fixed "
                    "direction itself matters.")
    else:
        verdict += (" Where h stays at its initialisation, no learning of h can produce a difference (GAL ≈ placebo is "
                    "what to expect); where it moves, GAL − placebo measures what that learning changes.")
    return "\n".join(lines) + "\n\n" + verdict
