"""Gradient adjustment learning (GAL): the adjustment network h, the remainder objective and
the acceptance rule, in output space (:class:`GAL`) and in parameter space (:class:`ParamGAL`).

One GAL step on a point x (a batch of model outputs, or a parameter vector) with loss L
(``galcore/reference.py`` states the same step in 30 plain lines; the tests hold this file to it):

1. ``loss0 = L(x)`` and ``g = dL/dx`` on a detached copy of x, in ``compute_dtype``.
2. ``a = h(x)`` on every vector along ``dim``, rescaled to ``ratio * ||g_i|| * a_i / ||a_i||``
   (with ``normalize="batch"`` also shrunk so that ``||sum_i a_i|| <= ratio ||sum_i g_i||``).
3. Tentative step ``delta = eta * (g + a)`` with ``eta = lr * scale``; ``loss1 = L(x - delta)``.
4. h is trained to make the step's first-order model exact: its gradient is that of
   ``|loss1 + <delta, g> - loss0|`` (``first_order="sum"``, the exact Taylor term) or with
   ``<delta, g>`` divided by the batch size B (``first_order="mean"``, the release's form).
5. The gradient sent back is ``g + a`` when the step is accepted (``accept="decrease"``:
   ``loss1 <= loss0``; ``accept="always"``), else ``g``.

Two drivers run that arithmetic: :func:`_eager_math`, plain autograd (the reference every
user starts with; h's gradient flows through :class:`_Gate` in the step's one final backward
call), and :func:`_fused_math`, the same functions with ``torch.func`` so that
:meth:`GAL.compile` hands all of it to ``torch.compile`` (the fast path). Both call
:func:`_tentative` and :func:`_decide`, so the maths is written once.

Faults (a zero or non-finite h output, a non-finite gradient or loss) fall back to ``g``, give
h no update for that step, and are counted in ``num_fallbacks``. Nothing in a step reads a
value back to the host (decisions are tensors), and a call that raises changes no counter.

Why ``"sum"`` is the default: L is already the batch mean, so ``L(x - delta) - L(x)`` is
matched to first order by ``<g, delta>`` summed over the whole batch; the release's mean over
the batch divides that term by B, so its "remainder" is not the Taylor remainder. ``"mean"`` is
kept to reproduce the release.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from galcore.adjuster import LinearStack, make_adjuster, release_hidden
from galcore.config import Accept, FirstOrder, GALConfig, Normalize

Outputs = Tensor | Sequence[Tensor]
LossFn = Callable[[Any], Tensor]
LossOf = Callable[[list[Tensor]], Tensor]

__all__ = ["GAL", "GALStep", "ParamGAL"]

_D = GALConfig()  # the defaults, written once (config.py)

#: GAL warns once when, over a window of this many steps, h's objective sat at the rounding
#: level of GAL's arithmetic (``<= 4 eps |loss|``, exactly 0 included) on at least half of them
ZERO_OBJECTIVE_STEPS = 50


@dataclass(frozen=True)
class GALStep:
    """What one GAL step did. Every field is a 0-d tensor on the outputs' device (no host sync).

    Attributes:
        loss: ``L(x)``, the loss at the outputs (the value ``loss.backward()`` would see),
            in ``compute_dtype``.
        tentative_loss: ``L(x - eta (g + a))``, the loss after the adjusted tentative step.
        remainder: the Taylor remainder of that step, ``loss1 - loss0 + <g, delta>`` (sum form).
        objective: what h minimised, ``|remainder|`` in the chosen ``first_order`` form.
        accepted: bool, whether the adjusted gradient ``g + a`` was sent back.
        fallback: bool, whether a fault forced the plain gradient and skipped h's update.
        remainder_plain: the remainder of the plain tentative step ``x - eta g`` when
            ``track_plain=True``, else ``None``.
    """

    loss: Tensor
    tentative_loss: Tensor
    remainder: Tensor
    objective: Tensor
    accepted: Tensor
    fallback: Tensor
    remainder_plain: Tensor | None = None

    def to_dict(self) -> dict[str, float]:
        """Python floats for logging. This reads values to the host (a sync): call it off the hot path."""
        out: dict[str, float] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = float(v.detach().float().cpu())
        return out


class StepMath(NamedTuple):
    """What the step's arithmetic returns. ``grads``: per output, ``g + sent`` (``sent``: ``a`` if
    accepted, else 0), or ``sent`` alone when ``spec.native`` in eager (the final backward call adds
    ``loss.backward()``'s own). ``objective``: with its graph to h (eager); ``h_grad``: compiled only."""

    grads: list[Tensor]
    g: list[Tensor]
    loss0: Tensor
    loss1: Tensor
    remainder: Tensor
    objective: Tensor
    accepted: Tensor
    at_rounding: Tensor  # bool: h's objective is at the rounding level of the arithmetic
    fallback: Tensor
    h_grad: Tensor | None


class _Spec(NamedTuple):
    """What a step needs besides tensors: fixed for a run (the compiled step guards on it)."""

    dims: list[int]  # the dimension h reads, per output
    mean_divisor: int  # what first_order="mean" divides <delta, g> by
    ratio: float
    first_order: FirstOrder
    accept: Accept
    normalize: Normalize
    h_dtype: torch.dtype  # dtype h computes in
    grad_dtypes: list[torch.dtype]  # dtype of each gradient sent back
    native: bool  # GAL computes in another dtype than the outputs' (see StepMath.grads)
    stack: bool  # h is a LinearStack with a trainable flat parameter


def _as_list(outputs: Outputs) -> tuple[list[Tensor], Callable[[list[Tensor]], Any]]:
    """Flatten a tensor or a list/tuple of tensors; return the list and a function rebuilding it."""
    if isinstance(outputs, Tensor):
        return [outputs], lambda xs: xs[0]
    if isinstance(outputs, (list, tuple)) and len(outputs) > 0:
        if not all(isinstance(o, Tensor) for o in outputs):
            raise TypeError("outputs must be a tensor or a non-empty list/tuple of tensors")
        kind = type(outputs)
        if kind is tuple or kind is list:
            return list(outputs), (lambda xs: kind(xs))
        return list(outputs), (lambda xs: kind(*xs))  # namedtuple
    raise TypeError(f"outputs must be a tensor or a non-empty list/tuple of tensors, got {type(outputs).__name__}")


def _clone(v: Any) -> Any:
    return v.clone() if isinstance(v, Tensor) else [_clone(t) for t in v] if isinstance(v, list) else v


def _check_lr(lr: float | Tensor) -> None:
    if isinstance(lr, Tensor):
        if lr.numel() != 1 or not lr.is_floating_point():
            raise ValueError(f"lr must be a float or a one-element floating tensor, got {lr.dtype} {tuple(lr.shape)}")
        return  # a tensor lr is not read back to the host; its sign is the caller's contract
    if not isinstance(lr, (int, float)) or isinstance(lr, bool):
        raise TypeError(f"lr must be a float or a one-element floating tensor, got {type(lr).__name__}")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr}")


def _total(terms: list[Tensor]) -> Tensor:
    """Sum of 0-d tensors (no stack for a single one)."""
    return terms[0] if len(terms) == 1 else torch.stack(terms).sum()


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """Leave an active autocast region for GAL's own arithmetic; a no-op when none is active."""
    try:
        active = torch.is_autocast_enabled(device_type)
    except (RuntimeError, TypeError):  # device types without autocast support
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False) if active else contextlib.nullcontext()


def _scalar_loss(value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"loss_fn must return a tensor, got {type(value).__name__}")
    if value.numel() != 1:
        raise ValueError(
            f"loss_fn must return a scalar loss, got a tensor of shape {tuple(value.shape)}; "
            "reduce it (mean or sum) before returning"
        )
    if not value.is_floating_point():
        raise TypeError(f"loss_fn must return a floating-point loss, got {value.dtype}")
    return value if value.ndim == 0 else value.reshape(())


def _require_graph(xs: list[Tensor]) -> None:
    """Raise as ``loss.backward()`` would when no output carries a graph to the model."""
    if not any(x.requires_grad for x in xs):
        raise RuntimeError(
            "outputs do not require grad (no graph to the model's parameters): call GAL on the model's "
            "outputs with autograd enabled; loss.backward() would fail the same way"
        )


_FLOAT64_OK: dict[str, bool] = {}


def _has_float64(device: torch.device) -> bool:
    """Whether ``device`` computes in float64 (MPS does not). Probed once per device type."""
    if device.type in ("cpu", "cuda", "meta"):
        return True
    if device.type not in _FLOAT64_OK:
        try:
            torch.zeros(1, dtype=torch.float64, device=device)
            _FLOAT64_OK[device.type] = True
        except (RuntimeError, TypeError):
            _FLOAT64_OK[device.type] = False
    return _FLOAT64_OK[device.type]


def _apply_h(h: Callable[[Tensor], Any], x: Tensor, dim: int, h_dtype: torch.dtype) -> Tensor:
    """h on every vector of x along ``dim`` (non-finite entries read as 0); shaped like x."""
    last = dim == x.ndim - 1
    xm = torch.nan_to_num(x if last else x.movedim(dim, -1), nan=0.0, posinf=0.0, neginf=0.0)
    a = h(xm if xm.dtype == h_dtype else xm.to(h_dtype))
    if not isinstance(a, Tensor) or a.shape != xm.shape:
        got = tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__
        raise ValueError(
            f"h must map vectors of size {xm.shape[-1]} to the same size; it turned input of shape "
            f"{tuple(xm.shape)} into {got}"
        )
    a = a if a.dtype == x.dtype else a.to(x.dtype)
    return a if last else a.movedim(-1, dim)


def _tentative(
    h: Callable[[Tensor], Any], x0: list[Tensor], g: list[Tensor], loss0: Tensor, loss_of: LossOf,
    eta: float | Tensor, spec: _Spec,
) -> tuple[list[Tensor], Tensor, Tensor, Tensor, Tensor]:
    """Steps 2-4: ``(adj, loss1, remainder, objective, ok)``; ``objective`` carries the graph to
    h. ``ok``, one finiteness test of the objective, covers every fault: a zero or non-finite
    a_i is NaN (0/0, inf/inf), hence so is ``<delta, g>`` (NaN * 0 is NaN); a non-finite g,
    loss0 or loss1 reaches it directly."""
    adj: list[Tensor] = []
    for x, gi, d in zip(x0, g, spec.dims, strict=True):
        a = _apply_h(h, x, d, spec.h_dtype)
        g_norm = torch.linalg.vector_norm(gi, dim=d, keepdim=True)
        ai = a * (spec.ratio * g_norm / torch.linalg.vector_norm(a, dim=d, keepdim=True))
        if spec.normalize == "batch" and x.ndim > 1:
            others = [k for k in range(x.ndim) if k != d]
            sum_a = torch.linalg.vector_norm(ai.sum(others))
            sum_g = torch.linalg.vector_norm(gi.sum(others))
            # shrink only (factor <= 1); a zero sum of adjustments needs no shrinking
            ai = ai * torch.where(sum_a > 0, spec.ratio * sum_g / sum_a, 1.0).clamp(max=1.0)
        adj.append(ai)
    delta = [torch.add(eta * gi, ai, alpha=eta) if isinstance(eta, float) else eta * (gi + ai)  # float: one node
             for gi, ai in zip(g, adj, strict=True)]
    inner = _total([(di * gi).sum() for di, gi in zip(delta, g, strict=True)])
    loss1 = _scalar_loss(loss_of([x - di for x, di in zip(x0, delta, strict=True)]))
    weight = 1 / spec.mean_divisor if spec.first_order == "mean" else 1  # of <delta, g> in the objective
    signed = torch.add(loss1, inner, alpha=weight) - loss0
    remainder = signed.detach() if weight == 1 else torch.add(signed.detach(), inner.detach(), alpha=1 - weight)
    objective = signed.abs()
    return adj, loss1, remainder, objective, torch.isfinite(objective)


def _decide(g: list[Tensor], adj: list[Tensor], loss0: Tensor, loss1: Tensor, objective: Tensor, ok: Tensor,
            spec: _Spec) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
    """Step 5: ``(grads, accepted, at_rounding, fallback)`` (see :class:`StepMath`). ``g + 0``
    is ``g``: a rejected step, or ``ratio=0``, sends back bit for bit what ``loss.backward()`` would."""
    accepted = ok & (loss1 <= loss0) if spec.accept == "decrease" else ok
    sent = [torch.where(accepted, ai.detach(), 0.0) for ai in adj]
    if spec.native:
        grads = [s.to(dt) for s, dt in zip(sent, spec.grad_dtypes, strict=True)]
    else:
        grads = [(gi + s).to(dt) for gi, s, dt in zip(g, sent, spec.grad_dtypes, strict=True)]
    at_rounding = ok & (objective <= 4 * torch.finfo(objective.dtype).eps * loss0.abs())
    return grads, accepted, at_rounding, ~ok


def _h_call(h: nn.Module, gated: Sequence[Tensor], spec: _Spec) -> Callable[[Tensor], Any]:
    """h with its trainable parameters replaced by ``gated`` (a LinearStack's parts, or the parameters)."""
    if spec.stack:
        return lambda v: h(v, parts=gated)
    if not gated:
        return h
    names = [n for n, p in h.named_parameters() if p.requires_grad]
    return lambda v: torch.func.functional_call(h, dict(zip(names, gated, strict=True)), (v,))


def _eager_math(h: nn.Module, params: list[Tensor], work: list[Tensor], loss_of: LossOf, eta: float | Tensor,
                spec: _Spec, world: int) -> StepMath:
    """The reference driver: plain autograd. h's gradient is left to the final backward call."""
    box: list[Any] = [None, world]
    views = (lambda ps: h.parts(ps[0].detach().to(spec.h_dtype))) if spec.stack else (lambda ps: [p.detach() for p in ps])
    gated = _Gate.apply(box, views, *params) if params else ()
    with torch.enable_grad():
        x0 = [w.requires_grad_(True) for w in work]
        loss0 = _scalar_loss(loss_of(x0))
        grads = torch.autograd.grad(loss0, x0, allow_unused=True)
        g = [torch.zeros_like(x) if gi is None else gi for x, gi in zip(x0, grads, strict=True)]
        loss0 = loss0.detach()
        x0 = [x.detach() for x in x0]
        adj, loss1, remainder, objective, ok = _tentative(_h_call(h, gated, spec), x0, g, loss0, loss_of, eta, spec)
    sent, accepted, at_rounding, fallback = _decide(g, adj, loss0, loss1, objective, ok, spec)
    box[0] = fallback
    return StepMath(sent, g, loss0, loss1.detach(), remainder, objective, accepted, at_rounding, fallback, None)


def _fused_math(h: nn.Module, params: list[Tensor], work: list[Tensor], loss_of: LossOf, eta: float | Tensor,
                spec: _Spec) -> StepMath:
    """The fast driver: the plain gradient and h's with ``torch.func``, so that ``torch.compile``
    traces all of the step into one graph."""
    g, loss0 = torch.func.grad_and_value(lambda z: _scalar_loss(loss_of(z)))(work)

    def objective_of(ps: list[Tensor]) -> tuple[Tensor, tuple[Any, ...]]:
        views = h.parts(ps[0].to(spec.h_dtype)) if spec.stack else ps
        out = _tentative(_h_call(h, views, spec), work, g, loss0, loss_of, eta, spec)
        return out[3], out

    raw, (adj, loss1, remainder, objective, ok) = torch.func.grad(objective_of, has_aux=True)(params)
    sent, accepted, at_rounding, fallback = _decide(g, adj, loss0, loss1, objective, ok, spec)
    if spec.native:  # the plain gradient in the outputs' precision too: sent = g_native + sent
        g_native = torch.func.grad(lambda z: _scalar_loss(loss_of(z)))([w.to(s.dtype) for w, s in zip(work, sent)])
        sent = [gn + s for gn, s in zip(g_native, sent, strict=True)]
    h_grad = torch.where(fallback, 0.0, raw[0].reshape(-1) if len(raw) == 1 else torch.cat([r.reshape(-1) for r in raw]))
    return StepMath(sent, g, loss0, loss1, remainder, objective, accepted, at_rounding, fallback, h_grad)


class _Gate(torch.autograd.Function):
    """h's trainable parameters as ``views(params)`` (a :class:`LinearStack`'s parts in GAL's compute
    dtype, else the parameters), without graph nodes. Its backward (in the final backward call) zeroes
    h's gradient on a faulty step and averages it over DDP ranks in one all-reduce. ``box``: ``[fallback, world]``."""

    @staticmethod
    def forward(ctx: Any, box: list[Any], views: Callable[..., Sequence[Tensor]], *params: Tensor) -> tuple[Tensor, ...]:
        ctx.box, ctx.params = box, [(p.shape, p.dtype) for p in params]
        return tuple(views(params))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        fallback, world = ctx.box
        flat = torch.where(fallback, 0.0, torch.cat([t.reshape(-1) for t in grads]))
        if world > 1:
            dist.all_reduce(flat)
            flat = flat / world
        if len(ctx.params) == 1:  # a LinearStack's flat parameter
            return None, None, flat.to(ctx.params[0][1])
        parts = flat.split_with_sizes([shape.numel() for shape, _ in ctx.params])
        return None, None, *(t.view(shape).to(dtype) for t, (shape, dtype) in zip(parts, ctx.params, strict=True))


def _config(config: GALConfig | None, given: dict[str, Any], who: str) -> GALConfig:
    """The options passed one by one, or ``config``; not both."""
    if config is None:
        return GALConfig(**given)
    if both := [k for k, v in given.items() if v != getattr(_D, k)]:
        raise TypeError(f"pass either config= or individual options to {who}, not both: got {', '.join(both)}")
    return config


class _Pending(NamedTuple):
    """A computed step, committed to the counters once the call succeeds. ``backward(roots, grads)``
    applies it in one call: the chosen gradient into the model, h's into h. ``value``: the loss."""

    roots: list[Tensor]
    grads: list[Tensor | None]
    value: Tensor
    objective: Tensor | None  # with its graph to h, when h has trainable parameters (a root too)
    record: GALStep
    at_rounding: Tensor  # bool: h's objective was at the rounding level (h learns nothing)


class _GALCore(nn.Module):
    """h, the options, the counters and the step itself; subclasses say what x is."""

    num_steps: Tensor
    num_accepted: Tensor
    num_fallbacks: Tensor

    def __init__(self, output_dim: int, config: GALConfig, h: nn.Module | None) -> None:
        super().__init__()
        if isinstance(output_dim, bool) or not isinstance(output_dim, int) or output_dim < 1:
            raise ValueError(f"output_dim must be a positive int, got {output_dim!r}")
        if not isinstance(config, GALConfig):
            raise TypeError(f"config must be a GALConfig, got {type(config).__name__}")
        if h is not None and not isinstance(h, nn.Module):
            raise TypeError(f"h must be an nn.Module mapping (..., C) to (..., C), got {type(h).__name__}")
        self.output_dim = output_dim
        self.config = config
        if h is None:
            hidden = release_hidden(output_dim) if config.hidden is None else config.hidden
            with torch.random.fork_rng(devices=[], enabled=config.seed is not None):
                if config.seed is not None:
                    torch.manual_seed(config.seed)
                h = LinearStack(*make_adjuster(output_dim, hidden, config.activation))
        self.h = h
        for name in ("num_steps", "num_accepted", "num_fallbacks"):
            self.register_buffer(name, torch.zeros((), dtype=torch.int64))
        # steps of the current window whose objective was at the rounding level (h learns nothing)
        self.register_buffer("_rounding_count", torch.zeros((), dtype=torch.int64), persistent=False)
        self.register_buffer("_one", torch.ones((), dtype=torch.int64), persistent=False)  # num_steps' increment
        self._rounding_pending: tuple[Tensor, Any, int] | None = None
        self._window_start = 0
        self._rounding_warned = False
        self._float64_warned = False
        self._steps_here = 0  # completed steps in this process (a Python int: no device read)
        self.last_step: GALStep | None = None
        # set by compile(): torch.compile's options, and the compiled step (built on first use)
        self._compile_options: dict[str, Any] | None = None
        self._compiled: Callable[..., StepMath] | None = None

    # -- options (read from, and written through, the validated config) ---------------------
    def _option(name: str, settable: bool = True) -> property:  # type: ignore[misc]  # noqa: N805 - a property factory
        def get(self: _GALCore) -> Any:
            return getattr(self.config, name)

        def set_(self: _GALCore, value: Any) -> None:
            if not settable:
                raise AttributeError(f"{name} is fixed at construction (it shapes h); build a new GAL to change it")
            self.config = self.config.replace(**{name: value})

        return property(get, set_, doc=f"``config.{name}`` ({'settable; validated' if settable else 'read-only'}).")

    ratio = _option("ratio")
    scale = _option("scale")
    first_order = _option("first_order")
    accept = _option("accept")
    normalize = _option("normalize")
    compute_dtype = _option("compute_dtype")
    track_plain = _option("track_plain")
    sync_distributed = _option("sync_distributed")
    hidden, activation, seed = _option("hidden", False), _option("activation", False), _option("seed", False)
    del _option

    # -- state ----------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        """Options travel with h's weights and the counters in ``state_dict()``."""
        return {"config": self.config.to_dict(), "output_dim": self.output_dim}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if "config" not in state:  # galcore 0.1: the options at the top level
            state = {"config": {k: v for k, v in state.items() if k in GALConfig.__dataclass_fields__}}
        if state.get("output_dim", self.output_dim) != self.output_dim:
            raise ValueError(f"state_dict is for output_dim={state['output_dim']}, this GAL has {self.output_dim}")
        self.config = GALConfig.from_any(state["config"])

    @property
    def acceptance_rate(self) -> Tensor:
        """Fraction of steps whose adjusted gradient was used (0-d float tensor)."""
        return self.num_accepted.float() / self.num_steps.clamp_min(1).float()

    def extra_repr(self) -> str:
        c = self.config
        return (f"output_dim={self.output_dim}, ratio={c.ratio}, scale={c.scale}, first_order={c.first_order!r}, "
                f"accept={c.accept!r}, normalize={c.normalize!r}, compute_dtype={c.compute_dtype}")

    # -- the step -------------------------------------------------------------------------
    def _work_dtype(self, x: Tensor) -> torch.dtype:
        """The dtype GAL computes in for outputs like ``x``."""
        dtype = self.config.compute_dtype
        if dtype is None:
            return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        if dtype == torch.float64 and not _has_float64(x.device):
            if not self._float64_warned:
                self._float64_warned = True
                msg = (f"device {x.device} has no float64; GAL's own arithmetic runs in float32, where small "
                       "remainders round to 0 (raise scale, or set compute_dtype=None to silence this)")
                warnings.warn(f"GAL: {msg}", RuntimeWarning, stacklevel=4)
            return torch.float32
        return dtype

    def _compute(self, xs: list[Tensor], dims: list[int], mean_divisor: int, loss_of: LossOf, lr: float | Tensor) -> _Pending:
        """Run one GAL step at the points ``xs``; change no state (see :meth:`_commit`)."""
        _check_lr(lr)
        c, h = self.config, self.h
        eta = lr * c.scale
        if isinstance(h, LinearStack):
            params = [h.flat] if h.flat.requires_grad else []
        else:
            params = [p for p in h.parameters() if p.requires_grad]
        work = [x.detach().to(self._work_dtype(x)) for x in xs]
        # the outputs' own precision (half: float32): when GAL computes in another, the plain gradient
        # comes from the loss at the outputs, in the final backward call, exactly as loss.backward()'s
        native_dt = [torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype for x in xs]
        native = any(w.dtype != dt for w, dt in zip(work, native_dt, strict=True))
        stack = isinstance(h, LinearStack) and bool(params)  # h's parts in the compute dtype
        h_dtype = work[0].dtype if stack else (params[0] if params else next(h.parameters(), xs[0])).dtype
        grad_dt = native_dt if native else [x.dtype for x in xs]
        spec = _Spec(dims, mean_divisor, c.ratio, c.first_order, c.accept, c.normalize, h_dtype, grad_dt, native, stack)
        world = dist.get_world_size() if c.sync_distributed and dist.is_available() and dist.is_initialized() else 1
        fused = self._fused_fn() if params else None
        with _no_autocast(work[0].device.type):
            out: StepMath | None = None
            if fused is not None:
                # lr as a tensor input (a new lr is no recompile); shape (1,) on the outputs' device: a
                # fill kernel, and dynamo would guard a 0-d float64 tensor by reading it (.item())
                eta_t = eta if isinstance(eta, Tensor) else torch.full((1,), float(eta), dtype=work[0].dtype, device=work[0].device)
                try:
                    out = fused(h, [p.detach() for p in params], work, loss_of, eta_t, spec)  # no outer graph
                    if "reduce-overhead" in str(self._compile_options.get("mode")):  # CUDA graphs reuse
                        out = StepMath(*(_clone(v) for v in out))  # their output memory on the next step
                except Exception as err:  # noqa: BLE001 - any compiler failure; user errors re-raise below
                    # no side effects: the eager step raises the caller's own errors (bad loss, wrong h);
                    # if it succeeds the failure was the compiler's, so warn once and stay eager
                    out = _eager_math(h, params, work, loss_of, eta, spec, world)
                    msg = f"the compiled step failed ({type(err).__name__}: {err}); GAL runs its eager step from now on"
                    warnings.warn(f"GAL.compile(): {msg}", RuntimeWarning, stacklevel=4)
                    self.uncompile()
            if out is None:
                out = _eager_math(h, params, work, loss_of, eta, spec, world)
            roots: list[Tensor] = []
            grads: list[Tensor | None] = []
            points, value = xs, out.loss0
            if native and out.h_grad is None:  # eager: the loss at the outputs, whose gradient the final call adds
                with torch.enable_grad():
                    points = [x.to(dt) for x, dt in zip(xs, native_dt, strict=True)]
                    value = _scalar_loss(loss_of(points))
                if value.requires_grad:
                    roots, grads = [value], [None]
            roots += [x for x in points if x.requires_grad]
            grads += [s.to(x.dtype) for x, s in zip(points, out.grads, strict=True) if x.requires_grad]
            objective = None
            if out.h_grad is not None:  # compiled: h's gradient is a tensor, masked already
                h_grad = out.h_grad
                if world > 1:
                    dist.all_reduce(h_grad)
                    h_grad = h_grad / world
                roots += params
                parts = [h_grad] if len(params) == 1 else h_grad.split_with_sizes([p.numel() for p in params])
                grads += [t.view_as(p) for t, p in zip(parts, params, strict=True)]
            elif out.objective.requires_grad:  # eager: through _Gate
                objective = out.objective
                roots.append(objective)
                grads.append(None)

            plain = None
            if c.track_plain:
                with torch.no_grad():
                    loss_p = _scalar_loss(loss_of([x - eta * gi for x, gi in zip(work, out.g, strict=True)]))
                    sq = _total([(gi * gi).sum() for gi in out.g])
                    plain = loss_p - out.loss0 + eta * sq

        record = GALStep(out.loss0, out.loss1, out.remainder, out.objective.detach(), out.accepted, out.fallback, plain)
        # a frozen h learns nothing by design: never at the rounding level
        at_rounding = out.at_rounding if params else torch.zeros_like(out.accepted)
        return _Pending(roots, grads, value.detach(), objective, record, at_rounding)

    def _commit(self, step: _Pending) -> GALStep:
        """The call succeeded: count it, keep its record, watch for an objective at rounding level."""
        record = step.record
        counts = [self.num_steps, self.num_accepted, self.num_fallbacks, self._rounding_count]
        torch._foreach_add_(counts, [self._one, record.accepted, record.fallback, step.at_rounding])
        self.__dict__["last_step"] = record  # plain attributes (not nn.Module.__setattr__: hot path)
        self.__dict__["_steps_here"] = self._steps_here + 1
        if not self._rounding_warned and self._steps_here % ZERO_OBJECTIVE_STEPS == 0:
            self._watch_rounding()
        return record

    def _watch_rounding(self) -> None:
        """Every ZERO_OBJECTIVE_STEPS steps: warn once if h's objective sat at the rounding level on at
        least half the steps since the last look. On a GPU the count is copied to pinned host memory
        without waiting and read at the next look, once copied: the step never waits for the device."""
        if self._rounding_pending is not None:
            host, event, n = self._rounding_pending
            if event is not None and not event.query():
                return  # not copied yet: look again next time
            self._rounding_pending = None
            if self._judge_rounding(int(host), n):
                return
        count = self._rounding_count
        n = self._steps_here - self._window_start
        self._window_start = self._steps_here
        if count.device.type == "cpu":  # no device to wait for: judge it now
            value = count.clone()
            count.zero_()
            self._judge_rounding(int(value), n)
        elif count.device.type == "cuda":
            host = torch.empty((), dtype=count.dtype, pin_memory=True)
            host.copy_(count, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            count.zero_()
            self._rounding_pending = (host, event, n)
        else:  # meta and other devices: nothing to read
            count.zero_()

    def _judge_rounding(self, at_rounding: int, steps: int) -> bool:
        if steps < 1 or 2 * at_rounding < steps:
            return False
        self._rounding_warned = True
        msg = (f"on {at_rounding} of the last {steps} steps h's objective was at the rounding level of GAL's "
               f"arithmetic (compute_dtype={self.config.compute_dtype}; exactly 0 or a few ulp of the loss), so h learns "
               "from rounding noise or not at all. Use compute_dtype=torch.float64 (the default) or a larger scale, "
               "and check that lr is not tiny")
        warnings.warn(f"GAL: {msg}", RuntimeWarning, stacklevel=5)
        return True

    # -- the fused (compiled) step ----------------------------------------------------------
    def compile(self, **options: Any) -> _GALCore:  # type: ignore[override]
        """Run GAL's own arithmetic (everything between the model's forward and its backward)
        as one ``torch.compile``d function from now on (the fast path); returns ``self``.

        Same decisions as the eager step, values equal up to floating-point reassociation, far
        fewer kernel launches. ``options`` go to :func:`torch.compile` (``mode="reduce-overhead"``:
        CUDA graphs, as nothing in the step reads back to the host). The first step after
        ``compile()`` runs eagerly (a bad loss or h fails with the usual error), the second
        compiles; a new output shape, dtype or loss function compiles again. If the compiler
        fails, GAL warns and stays eager. Not part of ``state_dict``.
        """
        self._compile_options = dict(options)
        self._compiled = None
        return self

    def uncompile(self) -> _GALCore:
        """Go back to the eager (reference) step; returns ``self``."""
        self._compile_options = None
        self._compiled = None
        return self

    @property
    def is_compiled(self) -> bool:
        """Whether steps run through :meth:`compile`'s fused function."""
        return self._compile_options is not None

    def _fused_fn(self) -> Callable[..., StepMath] | None:
        options = self._compile_options
        if options is None:
            return None
        if self._compiled is None:
            # the first step after compile() runs eagerly: it checks the loss and h with the
            # usual errors, outside the compiler (an exception raised while dynamo traces a
            # torch.func transform can leave dynamo unable to trace the next call)
            self._compiled = torch.compile(_fused_math, **options)
            return None
        return self._compiled

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"] = None  # rebuilt on the next step; compiled code does not pickle
        state["_rounding_pending"] = None
        return state


class GAL(_GALCore):
    """Gradient adjustment learning on a model's outputs.

    Args:
        output_dim: size C of the vectors h reads (number of logits, targets or channels).
        ratio: r >= 0, the adjustment's norm relative to the gradient's, per vector (``0`` is
            plain training, bit for bit).
        scale, hidden, activation, first_order, accept, normalize, dim, compute_dtype,
        track_plain, sync_distributed, seed: keyword-only, see :class:`galcore.GALConfig`
        (the one list of GAL's options, with their defaults and checks).
        h: a module to use as h instead of the release's linear stack (maps (..., C) to (..., C)).
        config: a :class:`galcore.GALConfig` to take every option from instead (then pass
            no other option).

    Outputs may be one tensor or a list/tuple of tensors (multi-scale heads); ``loss_fn``
    receives the same structure. Counters ``num_steps``, ``num_accepted`` and
    ``num_fallbacks`` are buffers and, with h and the options, part of ``state_dict()``.
    The options are attributes: ``gal.ratio = 0.01`` (validated); ``hidden``, ``activation``,
    ``seed`` and ``dim`` are read-only (they shape h).
    """

    def __init__(
        self,
        output_dim: int,
        ratio: float = _D.ratio,
        *,
        scale: float = _D.scale,
        hidden: Sequence[int] | None = _D.hidden,
        activation: str | None = _D.activation,
        first_order: FirstOrder = _D.first_order,
        accept: Accept = _D.accept,
        normalize: Normalize = _D.normalize,
        dim: int = _D.dim,
        compute_dtype: torch.dtype | str | None = _D.compute_dtype,
        track_plain: bool = _D.track_plain,
        sync_distributed: bool = _D.sync_distributed,
        seed: int | None = _D.seed,
        h: nn.Module | None = None,
        config: GALConfig | None = None,
    ) -> None:
        given = dict(ratio=ratio, scale=scale, hidden=hidden, activation=activation, first_order=first_order,
                     accept=accept, normalize=normalize, dim=dim, compute_dtype=compute_dtype, track_plain=track_plain,
                     sync_distributed=sync_distributed, seed=seed)
        super().__init__(output_dim, _config(config, given, "GAL"), h)

    @property
    def dim(self) -> int:
        """``config.dim``: the dimension of the outputs that h reads."""
        return self.config.dim

    def _prepare(self, outputs: Outputs) -> tuple[list[Tensor], list[int], int, Callable[[list[Tensor]], Any]]:
        xs, rebuild = _as_list(outputs)
        dim = self.config.dim
        dims = []
        for i, x in enumerate(xs):
            if not x.is_floating_point():
                raise TypeError(f"outputs[{i}] must be floating point (logits, regression values), got {x.dtype}")
            if x.ndim == 0:
                raise ValueError(f"outputs[{i}] is a 0-d tensor; GAL needs at least one dimension")
            if not -x.ndim <= dim < x.ndim:
                raise ValueError(f"dim={dim} is out of range for outputs[{i}] of shape {tuple(x.shape)}")
            d = dim % x.ndim
            if x.shape[d] != self.output_dim:
                raise ValueError(
                    f"h reads vectors of size output_dim={self.output_dim} along dim={dim}, but "
                    f"outputs[{i}] has shape {tuple(x.shape)} (size {x.shape[d]} there)"
                )
            dims.append(d)
        batch = xs[0].shape[0] if xs[0].ndim > 1 else 1
        return xs, dims, max(batch, 1), rebuild

    def _run(self, outputs: Outputs, loss_fn: LossFn, lr: float | Tensor) -> tuple[list[Tensor], _Pending]:
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable: outputs -> scalar loss")
        xs, dims, batch, rebuild = self._prepare(outputs)
        _require_graph(xs)
        return xs, self._compute(xs, dims, batch, lambda z: loss_fn(rebuild(z)), lr)

    def backward(self, outputs: Outputs, loss_fn: LossFn, lr: float | Tensor) -> GALStep:
        """Like ``loss_fn(outputs).backward()``, with GAL's chosen gradient at the outputs.

        Accumulates the chosen output gradient into the model's ``.grad`` (through
        ``outputs``' graph) and the remainder objective's gradient into h's ``.grad``.

        Args:
            outputs: model outputs with their graph, a tensor or a list/tuple of tensors.
            loss_fn: ``outputs -> scalar loss`` (e.g. ``lambda o: F.cross_entropy(o, y)``).
            lr: the optimizer's current learning rate (float > 0 or one-element tensor).
        Returns:
            A :class:`GALStep` of 0-d tensors.
        """
        _, step = self._run(outputs, loss_fn, lr)
        torch.autograd.backward(step.roots, step.grads)  # one engine call: the model and h
        return self._commit(step)

    def surrogate(self, outputs: Outputs, loss_fn: LossFn, lr: float | Tensor) -> Tensor:
        """A scalar to call ``.backward()`` on in any trainer (AMP scaler, accumulation, DDP, Lightning).

        Its value is ``loss_fn(outputs)`` (float32 at least: half-precision outputs do not round
        it); its gradient w.r.t. ``outputs`` is GAL's chosen gradient and w.r.t. h's parameters
        the remainder objective's gradient. Everything GAL computes uses the unscaled loss, so
        ``scaler.scale(s).backward()`` scales the chosen gradient exactly as it would scale the
        plain one. The step's record is in :attr:`last_step`.
        """
        xs, step = self._run(outputs, loss_fn, lr)
        dtype = torch.float64 if xs[0].dtype == torch.float64 else torch.float32
        terms = [r if g is None else (r.to(dtype) * g.to(dtype)).sum() for r, g in zip(step.roots, step.grads, strict=True)]
        if step.objective is not None:  # NaN on a faulty step: keep it out of the value
            terms[-1] = torch.where(step.record.fallback, 0.0, step.objective)
        link = _total([t.to(dtype) for t in terms])
        out = step.value.to(dtype) + (link - link.detach())
        self._commit(step)
        return out

    forward = surrogate


class ParamGAL(_GALCore):
    """GAL in parameter space (the release's 3D toy): h reads the flattened parameters and
    adjusts the parameter gradient. Affordable only for small models (h is P x P-sized).

    Args:
        params: an ``nn.Module`` (``loss_fn`` then receives ``{name: tensor}``, ready for
            ``torch.func.functional_call``) or an iterable of floating tensors (``loss_fn``
            receives a list shaped like them). Mixed dtypes are computed in ``compute_dtype``
            (or their promoted dtype) and each gradient is returned in its tensor's dtype.
        ratio and the keyword options: as :class:`GAL` (``dim`` and ``normalize`` do not apply). With
            ``first_order="mean"`` the first-order term is averaged over the vector's P
            elements, as the release's toy does.
    """

    def __init__(
        self,
        params: nn.Module | Iterable[Tensor],
        ratio: float = _D.ratio,
        *,
        scale: float = _D.scale,
        hidden: Sequence[int] | None = _D.hidden,
        activation: str | None = _D.activation,
        first_order: FirstOrder = _D.first_order,
        accept: Accept = _D.accept,
        compute_dtype: torch.dtype | str | None = _D.compute_dtype,
        track_plain: bool = _D.track_plain,
        sync_distributed: bool = _D.sync_distributed,
        seed: int | None = _D.seed,
        h: nn.Module | None = None,
        config: GALConfig | None = None,
    ) -> None:
        if isinstance(params, nn.Module):
            named = [(n, p) for n, p in params.named_parameters() if p.requires_grad]
            names: list[str] | None = [n for n, _ in named]
            plist = [p for _, p in named]
        elif isinstance(params, Tensor):
            names, plist = None, [params]
        else:
            names, plist = None, list(params)
        if not plist:
            raise ValueError("params: ParamGAL needs at least one parameter")
        for i, p in enumerate(plist):
            if not isinstance(p, Tensor) or not p.is_floating_point():
                got = p.dtype if isinstance(p, Tensor) else type(p).__name__
                raise TypeError(f"params[{i}] must be a floating-point tensor, got {got}")
        if len({p.device for p in plist}) > 1:
            raise ValueError(f"params must be on one device, got {sorted({str(p.device) for p in plist})}")
        given = dict(ratio=ratio, scale=scale, hidden=hidden, activation=activation, first_order=first_order,
                     accept=accept, compute_dtype=compute_dtype, track_plain=track_plain, sync_distributed=sync_distributed,
                     seed=seed)
        config = _config(config, given, "ParamGAL")
        size = sum(p.numel() for p in plist)
        super().__init__(size, config, h)
        # plain attributes: the model's parameters must not become GAL's parameters
        object.__setattr__(self, "_targets", plist)
        object.__setattr__(self, "_names", names)
        dtype = plist[0].dtype
        for p in plist[1:]:
            dtype = torch.promote_types(dtype, p.dtype)
        object.__setattr__(self, "_flat_dtype", dtype)

    def backward(self, loss_fn: LossFn, lr: float | Tensor) -> GALStep:
        """One GAL step on the parameters: accumulates the chosen gradient into their ``.grad``
        and the objective's gradient into h's ``.grad``. ``loss_fn`` maps parameters (dict or
        list, see the class; in GAL's compute dtype) to a scalar loss."""
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable: parameters -> scalar loss")
        targets: list[Tensor] = self._targets  # type: ignore[has-type]
        names: list[str] | None = self._names  # type: ignore[has-type]
        sizes = [p.numel() for p in targets]
        flat = torch.cat([p.detach().reshape(-1).to(self._flat_dtype) for p in targets]).requires_grad_(True)

        def loss_of(z: list[Tensor]) -> Tensor:
            parts = [t.view(p.shape) for t, p in zip(z[0].split(sizes), targets, strict=True)]
            return loss_fn(dict(zip(names, parts, strict=True)) if names is not None else parts)

        step = self._compute([flat], [0], flat.numel(), loss_of, lr)
        torch.autograd.backward(step.roots, step.grads)  # into flat.grad and h
        grad = torch.zeros_like(flat) if flat.grad is None else flat.grad
        for p, gp in zip(targets, grad.split(sizes), strict=True):  # .grad += gp, as backward() does
            p.grad = gp.view(p.shape).to(p.dtype, copy=True) if p.grad is None else p.grad.add_(gp.view(p.shape))
        return self._commit(step)
