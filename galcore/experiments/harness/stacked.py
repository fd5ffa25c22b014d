"""Many seeds of one arm in one process: parameters stacked over a seed dimension S.

Each seed is the run the sequential harness (:func:`galcore.experiments.harness.run`) trains:
its own initial weights (``torch.manual_seed(seed)`` then ``model_fn()``), its own data order
(a generator seeded with ``seed``: one ``randperm`` per epoch, batches are its slices), its own
h (drawn by ``build_gal``: ``GALConfig.seed = 10_000 + seed`` unless the options set ``seed``)
and its own acceptance decision per step. Only the arithmetic is shared: the model runs once on
a (S, B, ...) batch with (S, ...) weights, and the optimizer steps the stacked tensors (every
optimizer of ``optim.OPTIMIZERS`` updates elementwise, so seed s's slice takes seed s's step).

API:

- :func:`run_stacked(cfg, seeds, data, model_fn) <run_stacked>` -> one
  :class:`~galcore.experiments.harness.RunResult` per seed (history, final, ``weights_hash``).
- :func:`run_arms_stacked(arms, seeds, data, model_fn, stack=32) <run_arms_stacked>` ->
  ``(finals, histories)`` with the columns of ``harness.run_arms`` (``arm``, ``seed``, the final
  metrics, ``seconds``, ``cpu_seconds``, ``weights_hash``, ``accept_rate_mean``); seeds run in
  stacks of ``stack``.
- :func:`placebo_arm(cfg) <placebo_arm>`: the control arm, GAL's step with h replaced by
  :class:`RandomDirection` (a standard-normal direction per sample per step from a generator
  seeded like h; rescaled to ``ratio * ||g_i||``, the same acceptance rule, nothing trained).
  Spelled ``gal={..., "placebo": True}``. ``zero``: ``replace(cfg, gal={..., "ratio": 0.0})``.
- :func:`sequential_run`: the sequential run of any of these arms through the harness's own
  loop (a ``runner=`` for ``harness.run_arms``); the tests hold the stacked runs to it.

Engines: ``"unfold"`` writes ``Conv1d`` as unfold + batched matmul and ``Linear`` as batched
matmul (models made of ``Conv1d``/``ReLU``/``Flatten``/``Linear``, such as ``MNIST1DCNN``);
``"vmap"`` is ``torch.func.vmap`` over ``functional_call`` (any model without dropout or batch
norm); ``"auto"`` takes unfold where it applies.

Scope: classification with ``cross_entropy``, output-space GAL with ``normalize="sample"``; no
``StepHook``, probe, cache or ``select`` (each raises). Results equal the sequential runs within
rounding, not bit for bit: the batched kernels sum in another order (tests/test_stacked.py).
``seconds``, ``cpu_seconds`` and ``epoch_time`` are the stack's time divided by its seeds.
GAL's warning about an objective at the rounding level is not raised here.

Shapes: S seeds, B batch, C outputs. Losses are batch means per seed, shape (S,).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from galcore.adjuster import COLLAPSE_CPU, COLLAPSE_OTHER, LinearStack
from galcore.config import GALConfig
from galcore.experiments.harness.core import Data, RunResult, TrainConfig, _h_seed, build_gal, run, state_hash
from galcore.experiments.harness.optim import current_lr, make_optimizer
from galcore.experiments.harness.progress import progress as progress_bar

__all__ = ["RandomDirection", "is_placebo", "placebo_arm", "run_arms_stacked", "run_stacked", "sequential_run"]

ENGINES = ("auto", "unfold", "vmap")


# -- the placebo -----------------------------------------------------------------------------
class RandomDirection(nn.Module):
    """The placebo's h: ``forward(x)`` returns a standard-normal tensor shaped like ``x`` (its
    dtype and device) from its own generator seeded ``seed`` (made on the first call), one fresh
    draw per call. No parameters: GAL then trains nothing, and rescales the draw per sample."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = int(seed)
        self._gen: torch.Generator | None = None

    def draw(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        if self._gen is None:
            self._gen = torch.Generator(device=device).manual_seed(self.seed)
        return torch.randn(tuple(shape), generator=self._gen, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        return self.draw(x.shape, x.dtype, x.device)

    def extra_repr(self) -> str:
        return f"seed={self.seed}"


def is_placebo(cfg: TrainConfig) -> bool:
    """Whether ``cfg`` is a placebo arm (``gal={..., "placebo": True}``)."""
    return cfg.gal is not None and bool(cfg.gal.get("placebo", False))


def placebo_arm(cfg: TrainConfig) -> TrainConfig:
    """The placebo control of a GAL arm: the same options, h replaced by :class:`RandomDirection`."""
    if cfg.gal is None:
        raise ValueError("placebo_arm: cfg.gal is None; give a GAL arm (its ratio, scale and acceptance rule)")
    return replace(cfg, gal={**cfg.gal, "placebo": True})


def _gal_options(cfg: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in (cfg.gal or {}).items() if k != "placebo"}


def sequential_run(cfg: TrainConfig, data: Data, model_fn: Callable[[], nn.Module], cache: bool = False) -> RunResult:
    """One seed through the harness's own loop (``harness.run``); a placebo arm runs as GAL with
    ``h=RandomDirection(h's seed)``. Signature of ``harness.run_arms``'s ``runner``."""
    if not is_placebo(cfg):
        return run(cfg, data, model_fn, cache=cache)
    options = _gal_options(cfg)
    options.pop("frozen_h", None)
    h = RandomDirection(_h_seed(cfg, options))
    res = run(replace(cfg, gal={**options, "h": h}), data, model_fn, cache=False)
    res.config = asdict(cfg)
    return res


# -- the arm, parsed once ----------------------------------------------------------------------
def _check(cfg: TrainConfig, engine: str) -> None:
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
    if cfg.gal is not None:
        options = _gal_options(cfg)
        options.pop("frozen_h", None)
        options.pop("h_seed", None)
        gc = GALConfig(**options)  # GALConfig's own message for a misspelt or bad option
        if gc.normalize != "sample":
            raise ValueError(f"stacked runs support normalize='sample' only, got {gc.normalize!r}")
        if gc.track_plain:
            raise ValueError("stacked runs do not support track_plain=True")
        if gc.dim not in (-1, 1):
            raise ValueError(f"stacked runs read logits (B, C): dim must be -1 or 1, got {gc.dim}")


def _gal_config(cfg: TrainConfig) -> GALConfig:
    options = _gal_options(cfg)
    for k in ("frozen_h", "h_seed", "seed"):
        options.pop(k, None)
    return GALConfig(**options)


# -- the model, stacked ----------------------------------------------------------------------
def _unfold_plan(model: nn.Module, probe: Tensor) -> list[tuple[str, str, nn.Module]] | None:
    """``[(kind, parameter prefix, module)]`` when ``model``'s leaf modules, in order, are a chain
    of Conv1d / ReLU / Flatten / Linear and that chain computes ``model(probe)`` (e.g.
    ``MNIST1DCNN``, an ``nn.Sequential``); else ``None``."""
    plan: list[tuple[str, str, nn.Module]] = []
    for prefix, m in model.named_modules():
        if next(m.children(), None) is not None:
            continue
        if type(m) is nn.Conv1d and m.groups == 1 and m.dilation == (1,) and m.padding_mode == "zeros" \
                and isinstance(m.padding, tuple) and m.bias is not None:
            plan.append(("conv", prefix, m))
        elif type(m) is nn.Linear and m.bias is not None:
            plan.append(("linear", prefix, m))
        elif type(m) is nn.ReLU:
            plan.append(("relu", prefix, m))
        elif type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim == -1:
            plan.append(("flatten", prefix, m))
        else:
            return None
    if not plan:
        return None
    with torch.no_grad():  # the chain must be what forward computes (a model could reorder its children)
        try:
            want = model(probe)
            got = _unfold_forward(plan, {n: p.unsqueeze(0) for n, p in model.named_parameters()}, probe.unsqueeze(0))[0]
        except (RuntimeError, ValueError, IndexError):
            return None
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
            return None
    return plan


class _Im2col(torch.autograd.Function):
    """im2col of a channels-last 1-D batch: (S, B, L, C) -> (S, B, L', k C), column block j holding
    tap j (zero padding ``pad``, stride ``step``). Its backward adds the k blocks back into one
    buffer: several times cheaper than ``Tensor.unfold``'s, and cheaper than pad + cat."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, k: int, step: int, pad: int) -> Tensor:
        s, b, length, c = z.shape
        out_len = (length + 2 * pad - k) // step + 1
        u = z.new_zeros(s, b, out_len, k * c)
        spans = []
        for j in range(k):  # output positions l whose input step*l + j - pad lies inside [0, length)
            lo, hi = max(0, -(-(pad - j) // step)), min(out_len - 1, (length - 1 + pad - j) // step)
            spans.append((lo, hi, step * lo + j - pad, step * hi + j - pad))
            u[:, :, lo : hi + 1, j * c : (j + 1) * c] = z[:, :, spans[-1][2] : spans[-1][3] + 1 : step]
        ctx.spans, ctx.shape, ctx.step = spans, z.shape, step
        return u

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        gz = grad.new_zeros(ctx.shape)
        c = ctx.shape[-1]
        for j, (lo, hi, first, last) in enumerate(ctx.spans):
            gz[:, :, first : last + 1 : ctx.step] += grad[:, :, lo : hi + 1, j * c : (j + 1) * c]
        return gz, None, None, None


def _unfold_forward(plan: list[tuple[str, str, nn.Module]], p: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """The chain on a (S, B, ...) batch with (S, ...) weights: Conv1d in channels-last layout
    (S, B, L, C) as im2col + ``baddbmm``, Linear as ``baddbmm``. Returns (S, B, out).

    im2col is :class:`_Im2col`; after Flatten the next Linear's weight is permuted to the
    channels-last order instead of transposing the activations."""
    s, b = x.shape[:2]
    z = x.unsqueeze(2) if x.ndim == 3 and plan[0][0] == "conv" else x  # MNIST1DCNN accepts (B, L)
    last = False  # z is (S, B, L, C)
    flat: tuple[int, int] | None = None  # (C, L) of a channels-last flatten, for the next Linear
    for kind, prefix, m in plan:
        if kind == "conv":
            if z.ndim != 4:
                raise ValueError(f"Conv1d needs (B, C, L) inputs, got {tuple(z.shape[1:])}")
            if not last:
                z, last = z.transpose(2, 3), True
            w, bias = p[f"{prefix}.weight"], p[f"{prefix}.bias"]
            c_out, c_in, k = w.shape[1:]
            pad, step = m.padding[0], m.stride[0]
            u = _Im2col.apply(z, k, step, pad)  # (S, B, L', k C_in)
            length = u.shape[2]
            wk = w.permute(0, 3, 2, 1).reshape(s, k * c_in, c_out)  # rows (tap, channel), as u's columns
            z = torch.baddbmm(bias.unsqueeze(1), u.view(s, b * length, k * c_in), wk).view(s, b, length, c_out)
        elif kind == "relu":
            z = torch.relu(z)
        elif kind == "flatten":
            if last:
                flat, last = (z.shape[3], z.shape[2]), False
            z = z.reshape(s, b, -1)
        else:
            w = p[f"{prefix}.weight"]
            if flat is not None:  # PyTorch flattens (C, L); z holds (L, C)
                w, flat = w.view(s, w.shape[1], *flat).transpose(2, 3).reshape(s, w.shape[1], -1), None
            z = torch.baddbmm(p[f"{prefix}.bias"].unsqueeze(1), z, w.transpose(1, 2))
    return z


class _Stacked:
    """S models as (S, ...) leaf tensors named like ``model.named_parameters()``."""

    def __init__(self, models: list[nn.Module], engine: str, probe: Tensor) -> None:
        base = models[0]
        for m in base.modules():
            if isinstance(m, (nn.Dropout, nn.modules.batchnorm._BatchNorm)):
                raise ValueError(f"stacked runs need a model without dropout or batch norm; {type(m).__name__} found")
        self.base = base
        self.names = [n for n, _ in base.named_parameters()]
        self.params = {n: torch.stack([m.get_parameter(n).detach() for m in models]).requires_grad_(True) for n in self.names}
        self.buffers = {n: torch.stack([m.get_buffer(n).detach() for m in models]) for n, _ in base.named_buffers()}
        plan = _unfold_plan(base, probe) if engine in ("auto", "unfold") and not self.buffers else None
        if engine == "unfold" and plan is None:
            raise ValueError(f"engine='unfold' needs a chain of Conv1d/ReLU/Flatten/Linear, got {type(base).__name__}")
        self.plan = plan
        self.engine = "unfold" if plan is not None else "vmap"

    def __call__(self, x: Tensor) -> Tensor:
        """(S, B, ...) inputs -> (S, B, C) outputs."""
        if self.plan is not None:
            return _unfold_forward(self.plan, self.params, x)
        fn = lambda p, bufs, xs: functional_call(self.base, (p, bufs), (xs,))
        return vmap(fn)(self.params, self.buffers, x)

    def write_back(self, models: list[nn.Module]) -> None:
        with torch.no_grad():
            for i, m in enumerate(models):
                for n in self.names:
                    m.get_parameter(n).copy_(self.params[n][i])


# -- h, stacked --------------------------------------------------------------------------------
class _StackedH:
    """The S seeds' h (the release's LinearStack, each its own ``flat``) as one (S, P) leaf."""

    def __init__(self, hs: list[LinearStack], trainable: bool) -> None:
        self.layers = list(hs[0])
        self.dims = [(m.in_features, m.out_features) for m in self.layers if isinstance(m, nn.Linear)]
        self.affine = len(self.dims) == len(self.layers)
        self.flat = torch.stack([h.flat.detach() for h in hs]).requires_grad_(trainable)

    def parts(self, flat: Tensor) -> list[Tensor]:
        s = flat.shape[0]
        parts = list(flat.split_with_sizes([n for i, o in self.dims for n in (i * o, o)], dim=1))
        parts[0::2] = [w.reshape(s, i, o) for w, (i, o) in zip(parts[0::2], self.dims, strict=True)]
        parts[1::2] = [b.reshape(s, 1, o) for b, (_, o) in zip(parts[1::2], self.dims, strict=True)]
        return parts

    def __call__(self, parts: list[Tensor], x: Tensor) -> Tensor:
        """h_s on (S, R, C): ``LinearStack.forward``'s arithmetic with its rule for multiplying out."""
        rows, c_in = x.shape[1], self.dims[0][0]
        saved = rows * (sum(i * o for i, o in self.dims) - c_in * self.dims[-1][1])
        saved -= sum(c_in * i * o for i, o in self.dims[1:])
        if self.affine and saved > (COLLAPSE_CPU if x.device.type == "cpu" else COLLAPSE_OTHER):
            m, c = parts[0], parts[1]
            for w, b in zip(parts[2::2], parts[3::2], strict=True):
                m, c = torch.bmm(m, w), torch.baddbmm(b, c, w)
            return torch.baddbmm(c, x, m)
        weights, z = iter(parts), x
        for module in self.layers:
            if isinstance(module, nn.Linear):
                w, b = next(weights), next(weights)
                z = torch.baddbmm(b, z, w)
            else:
                z = module(z)
        return z


def _ce(out: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy batch mean per seed: (S, B, C), (S, B) -> (S,)."""
    s, b, c = out.shape
    return F.cross_entropy(out.reshape(s * b, c), y.reshape(s * b), reduction="none").view(s, b).mean(1)


class _GALStep:
    """GAL's output-space step for S seeds at once (``gal._tentative`` and ``gal._decide``, batched)."""

    def __init__(self, cfg: TrainConfig, hs: list[nn.Module] | None, placebos: list[RandomDirection] | None,
                 out_dtype: torch.dtype) -> None:
        c = _gal_config(cfg)
        self.ratio, self.scale, self.first_order, self.accept = c.ratio, c.scale, c.first_order, c.accept
        work = c.compute_dtype if c.compute_dtype is not None else (
            torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype)
        self.work = work
        self.native = work != out_dtype
        self.placebos = placebos
        self.h: _StackedH | None = None
        self.h_dtype = out_dtype  # GAL calls an h without parameters in the outputs' dtype
        if hs is not None:
            trainable = all(p.requires_grad for h in hs for p in h.parameters())
            if not all(isinstance(h, LinearStack) for h in hs):
                raise ValueError("stacked runs need h to be GAL's LinearStack (hidden/activation options are fine)")
            self.h = _StackedH(hs, trainable)  # type: ignore[arg-type]
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
def _evaluate(model: _Stacked, x: Tensor, y: Tensor, s: int, batch: int = 1024) -> list[dict[str, float]]:
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
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    cfgs = [replace(cfg, seed=s) for s in seeds]
    models, hs = [], []
    for c in cfgs:  # as harness.run: seed, build the model, then GAL (h from its own generator)
        torch.manual_seed(c.seed)
        m = model_fn().to(device)
        models.append(m)
        if c.gal is not None and not is_placebo(c):
            gal = build_gal(replace(c, gal=_gal_options(c)), m, data.num_outputs, device)
            assert gal is not None
            hs.append(gal.h)
    s = len(seeds)
    stacked = _Stacked(models, engine, data.x_train[:4].to(device))
    step = None
    if cfg.gal is not None:
        placebos = [RandomDirection(_h_seed(c, _gal_options(c))) for c in cfgs] if is_placebo(cfg) else None
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
        results.append(RunResult(asdict(c), hist, final, seconds, [], state_hash(m), cpu))
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
