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
   ``<delta, g>`` divided by the number of vectors (``first_order="mean"``, the release's form).
5. The gradient sent back is ``g + a`` when the step is accepted (``accept="decrease"``:
   ``loss1 <= loss0``; ``accept="always"``), else ``g``.

Two drivers run that arithmetic: :func:`_eager_math`, plain autograd one op at a time (the
reference every user starts with), and :func:`_fused_math`, the same functions written with
``torch.func`` so that :meth:`GAL.compile` can hand all of it to ``torch.compile`` (the fast
path). Both call :func:`_tentative` and :func:`_decide`, so the maths is written once.

Faults (a zero or non-finite h output, a non-finite gradient or loss) fall back to ``g``, give
h no update for that step, and are counted in ``num_fallbacks``. Nothing in a step reads a
value back to the host: decisions are tensors (``torch.where``), so the step does not
synchronise a GPU. A call that raises changes no counter and no record.

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

from galcore.adjuster import make_adjuster, release_hidden
from galcore.config import Accept, FirstOrder, GALConfig, Normalize

Outputs = Tensor | Sequence[Tensor]
LossFn = Callable[[Any], Tensor]

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
    """What the step's arithmetic returns (both drivers). Tensors; nothing read to the host.

    ``chosen``: the gradient to send back, per output (dtype of that output); ``h_grad``: the
    objective's gradient w.r.t. h's trainable parameters as one flat buffer (zero on a fault);
    ``g``: the plain gradient per output (compute dtype); ``ok``: False on a fault.
    """

    chosen: list[Tensor]
    h_grad: Tensor
    g: list[Tensor]
    loss0: Tensor
    loss1: Tensor
    remainder: Tensor
    objective: Tensor
    ok: Tensor
    accepted: Tensor


class _Spec(NamedTuple):
    """What a step needs besides tensors: fixed for a run (the compiled step guards on it)."""

    dims: list[int]  # the dimension h reads, per output
    mean_divisor: int  # what first_order="mean" divides <delta, g> by
    ratio: float
    first_order: FirstOrder
    accept: Accept
    normalize: Normalize
    h_dtype: torch.dtype
    out_dtypes: list[torch.dtype]  # dtype of each output (the chosen gradient's dtype)


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


def _check_lr(lr: float | Tensor) -> None:
    if isinstance(lr, Tensor):
        if lr.numel() != 1 or not lr.is_floating_point():
            raise ValueError(f"lr must be a float or a one-element floating tensor, got {lr.dtype} {tuple(lr.shape)}")
        return  # a tensor lr is not read back to the host; its sign is the caller's contract
    if not isinstance(lr, (int, float)) or isinstance(lr, bool):
        raise TypeError(f"lr must be a float or a 0-d tensor, got {type(lr).__name__}")
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
    return value.reshape(())


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
    h: Callable[[Tensor], Any],
    x0: list[Tensor],
    g: list[Tensor],
    loss0: Tensor,
    loss_of: Callable[[list[Tensor]], Tensor],
    eta: float | Tensor,
    spec: _Spec,
) -> tuple[list[Tensor], Tensor, Tensor, Tensor, Tensor]:
    """Steps 2-4 of the module docstring: the adjustment, the tentative step and h's objective.

    Returns ``(adj, loss1, remainder, objective, ok)``; ``objective`` carries the graph to h's
    parameters, ``ok`` is False on any fault (zero or non-finite a_i, non-finite g or loss).
    """
    adj: list[Tensor] = []
    checks: list[Tensor] = [loss0]
    for x, gi, d in zip(x0, g, spec.dims, strict=True):
        a = _apply_h(h, x, d, spec.h_dtype)
        a_norm = torch.linalg.vector_norm(a, dim=d, keepdim=True)
        g_norm = torch.linalg.vector_norm(gi, dim=d, keepdim=True)
        # a zero or non-finite a_i makes this NaN; the step then falls back (in _decide)
        ai = spec.ratio * g_norm * (a / a_norm)
        if spec.normalize == "batch" and x.ndim > 1:
            others = [k for k in range(x.ndim) if k != d]
            sum_a = torch.linalg.vector_norm(ai.sum(others))
            sum_g = torch.linalg.vector_norm(gi.sum(others))
            # shrink only (factor <= 1); a zero sum of adjustments needs no shrinking
            ai = ai * torch.where(sum_a > 0, spec.ratio * sum_g / sum_a, 1.0).clamp(max=1.0)
        adj.append(ai)
        checks += [a_norm.sum() + g_norm.sum(), (a_norm > 0).all().to(a_norm.dtype).log()]
    # one finiteness test for all: loss, every norm (a sum is finite iff its terms are, up to
    # overflow, which is a fault too) and log(1) = 0 / log(0) = -inf for a zero a_i
    ok = torch.isfinite(_total(checks))
    delta = [eta * (gi + ai) for gi, ai in zip(g, adj, strict=True)]
    inner = _total([(di * gi).sum() for di, gi in zip(delta, g, strict=True)])
    loss1 = _scalar_loss(loss_of([x - di for x, di in zip(x0, delta, strict=True)]))
    remainder = loss1 - loss0 + inner
    first = inner / spec.mean_divisor if spec.first_order == "mean" else inner
    objective = (loss1 + first - loss0).abs()
    ok = ok & torch.isfinite(loss1)  # NaN adjustments (faults) reach loss1 too
    return adj, loss1, remainder, objective, ok


def _decide(
    g: list[Tensor], adj: list[Tensor], raw: Sequence[Tensor | None], params: Sequence[Tensor],
    loss0: Tensor, loss1: Tensor, ok: Tensor, spec: _Spec, g_native: list[Tensor] | None = None,
) -> tuple[list[Tensor], Tensor, Tensor]:
    """Step 5: the chosen gradient per output, h's gradient as one flat buffer (zero on a
    fault: a single masking op, and a single all-reduce under DDP), and ``accepted``.

    ``g_native``: the plain gradient computed in the outputs' own precision (when GAL's
    arithmetic runs in another dtype), so that a rejected step, or ``ratio=0``, sends back
    bit for bit what ``loss.backward()`` would."""
    if params:
        parts = [(torch.zeros_like(p) if r is None else r).reshape(-1) for p, r in zip(params, raw, strict=True)]
        flat = torch.where(ok, torch.cat(parts), 0.0)
    else:  # a frozen h
        flat = loss0.new_zeros(0)
    accepted = ok & (loss1 <= loss0) if spec.accept == "decrease" else ok
    if g_native is None:
        chosen = [
            torch.where(accepted, gi + ai.detach(), gi).to(dt) for gi, ai, dt in zip(g, adj, spec.out_dtypes, strict=True)
        ]
    else:
        chosen = [
            torch.where(accepted, gn + ai.detach().to(gn.dtype), gn).to(dt)
            for gn, ai, dt in zip(g_native, adj, spec.out_dtypes, strict=True)
        ]
    return chosen, flat, accepted


def _eager_math(
    h: nn.Module, params: list[Tensor], work: list[Tensor], loss_of: Callable[[list[Tensor]], Tensor],
    eta: float | Tensor, spec: _Spec, native: list[Tensor] | None = None,
) -> StepMath:
    """The reference driver: plain autograd, one op at a time. ``native``: the outputs in
    their own precision when ``work`` is in another dtype (see :func:`_decide`)."""
    with torch.enable_grad():
        g_native = None
        if native is not None:
            xn = [x.requires_grad_(True) for x in native]
            g_native = list(torch.autograd.grad(_scalar_loss(loss_of(xn)), xn, allow_unused=True))
            g_native = [torch.zeros_like(x) if gi is None else gi for x, gi in zip(xn, g_native, strict=True)]
        x0 = [w.requires_grad_(True) for w in work]
        loss0 = _scalar_loss(loss_of(x0))
        grads = torch.autograd.grad(loss0, x0, allow_unused=True)
        g = [torch.zeros_like(x) if gi is None else gi for x, gi in zip(x0, grads, strict=True)]
        x0 = [x.detach() for x in x0]
        loss0 = loss0.detach()
        adj, loss1, remainder, objective, ok = _tentative(h, x0, g, loss0, loss_of, eta, spec)
        raw = torch.autograd.grad(objective, params, allow_unused=True) if params else ()
    chosen, flat, accepted = _decide(g, adj, raw, params, loss0, loss1, ok, spec, g_native)
    return StepMath(chosen, flat, g, loss0, loss1.detach(), remainder.detach(), objective.detach(), ok, accepted)


def _fused_math(
    h: nn.Module, work: list[Tensor], loss_of: Callable[[list[Tensor]], Tensor], eta: float | Tensor, spec: _Spec,
    native: list[Tensor] | None = None,
) -> StepMath:
    """The fast driver: the same step written with ``torch.func`` transforms, so that
    ``torch.compile`` can trace all of it (both loss gradients and h's gradient) into one graph."""
    params = {n: p.detach() for n, p in h.named_parameters() if p.requires_grad}
    g_native = None if native is None else torch.func.grad(lambda z: _scalar_loss(loss_of(z)))(native)
    g, loss0 = torch.func.grad_and_value(lambda z: _scalar_loss(loss_of(z)))(work)

    def objective_of(p: dict[str, Tensor]) -> tuple[Tensor, tuple[Any, ...]]:
        def h_call(v: Tensor) -> Any:
            return torch.func.functional_call(h, p, (v,))

        adj, loss1, remainder, objective, ok = _tentative(h_call, work, g, loss0, loss_of, eta, spec)
        return objective, (adj, loss1, remainder, objective, ok)

    raw, (adj, loss1, remainder, objective, ok) = torch.func.grad(objective_of, has_aux=True)(params)
    chosen, flat, accepted = _decide(
        g, adj, list(raw.values()), list(params.values()), loss0, loss1, ok, spec, g_native
    )
    return StepMath(chosen, flat, g, loss0, loss1, remainder, objective, ok, accepted)


def _config(config: GALConfig | None, given: dict[str, Any], who: str) -> GALConfig:
    """The options passed one by one, or ``config``; not both."""
    if config is None:
        return GALConfig(**given)
    if any(v != getattr(_D, k) for k, v in given.items()):
        raise TypeError(f"pass either config= or individual options to {who}, not both")
    return config


class _Pending(NamedTuple):
    """A computed step not yet committed to the counters (committed once the call succeeds)."""

    chosen: list[Tensor]
    h_params: list[Tensor]
    h_grads: list[Tensor]
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
                h = make_adjuster(output_dim, hidden, config.activation)
        self.h = h
        for name in ("num_steps", "num_accepted", "num_fallbacks"):
            self.register_buffer(name, torch.zeros((), dtype=torch.int64))
        # steps of the current window whose objective was at the rounding level (h learns nothing)
        self.register_buffer("_rounding_count", torch.zeros((), dtype=torch.int64), persistent=False)
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
    def _option(name: str) -> property:  # type: ignore[misc]  # noqa: N805 - a property factory
        def get(self: _GALCore) -> Any:
            return getattr(self.config, name)

        def set_(self: _GALCore, value: Any) -> None:
            self.config = self.config.replace(**{name: value})

        return property(get, set_, doc=f"``config.{name}`` (settable; validated).")

    ratio = _option("ratio")
    scale = _option("scale")
    first_order = _option("first_order")
    accept = _option("accept")
    normalize = _option("normalize")
    compute_dtype = _option("compute_dtype")
    track_plain = _option("track_plain")
    sync_distributed = _option("sync_distributed")
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
        return (
            f"output_dim={self.output_dim}, ratio={c.ratio}, scale={c.scale}, first_order={c.first_order!r}, "
            f"accept={c.accept!r}, normalize={c.normalize!r}, compute_dtype={c.compute_dtype}"
        )

    # -- the step -------------------------------------------------------------------------
    def _work_dtype(self, x: Tensor) -> torch.dtype:
        """The dtype GAL computes in for outputs like ``x``."""
        dtype = self.config.compute_dtype
        if dtype is None:
            return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        if dtype == torch.float64 and not _has_float64(x.device):
            if not self._float64_warned:
                self._float64_warned = True
                warnings.warn(
                    f"GAL: device {x.device} has no float64; GAL's own arithmetic runs in float32, where "
                    "small remainders round to 0 (raise scale, or set compute_dtype=None to silence this)",
                    RuntimeWarning,
                    stacklevel=4,
                )
            return torch.float32
        return dtype

    def _compute(
        self,
        xs: list[Tensor],
        dims: list[int],
        mean_divisor: int,
        loss_of: Callable[[list[Tensor]], Tensor],
        lr: float | Tensor,
    ) -> _Pending:
        """Run one GAL step at the points ``xs``; change no state (see :meth:`_commit`)."""
        _check_lr(lr)
        eta = lr * self.config.scale
        h_params = self._h_params()
        h_dtype = h_params[0].dtype if h_params else next((p.dtype for p in self.h.parameters()), xs[0].dtype)
        work = [x.detach().to(self._work_dtype(x)) for x in xs]
        # the plain gradient in the outputs' own precision (half: float32, as autocast would),
        # when GAL computes in another dtype: a rejected step then sends back exactly what
        # loss.backward() would (one more loss evaluation, B x C sized)
        native_dt = [torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype for x in xs]
        native = (
            None if all(w.dtype == dt for w, dt in zip(work, native_dt, strict=True))
            else [x.detach().to(dt) for x, dt in zip(xs, native_dt, strict=True)]
        )
        device_type = work[0].device.type
        c = self.config
        spec = _Spec(
            dims, mean_divisor, c.ratio, c.first_order, c.accept, c.normalize, h_dtype, [x.dtype for x in xs]
        )
        fused = self._fused_fn() if h_params else None
        with _no_autocast(device_type):
            out: StepMath | None = None
            if fused is not None:
                # a tensor, so that a new lr is a new input value, not a recompile. Shape (1,) on
                # the outputs' device: torch.full is a fill kernel (no host-to-device copy), and
                # dynamo guards a 0-d float64 tensor by reading its value (.item()) every call
                eta_t = (
                    eta if isinstance(eta, Tensor)
                    else torch.full((1,), float(eta), dtype=work[0].dtype, device=work[0].device)
                )
                try:
                    out = fused(self.h, work, loss_of, eta_t, spec, native)
                except Exception as err:  # noqa: BLE001 - any compiler failure; user errors re-raise below
                    # the fused function has no side effects: run the eager step, which raises
                    # the caller's own errors (bad loss, wrong h) as usual; if it succeeds the
                    # failure was the compiler's, so warn once and stay eager
                    out = _eager_math(self.h, h_params, work, loss_of, eta, spec, native)
                    warnings.warn(
                        f"GAL.compile(): the compiled step failed ({type(err).__name__}: {err}); "
                        "GAL runs its eager step from now on",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                    self.uncompile()
            if out is None:
                out = _eager_math(self.h, h_params, work, loss_of, eta, spec, native)

        flat = out.h_grad
        h_grads: list[Tensor] = []
        if h_params:
            if c.sync_distributed and dist.is_available() and dist.is_initialized():
                world = dist.get_world_size()
                if world > 1:
                    dist.all_reduce(flat)
                    flat = flat / world
            h_grads = [t.view_as(p) for t, p in zip(flat.split([p.numel() for p in h_params]), h_params, strict=True)]

        plain = None
        if c.track_plain:
            with torch.no_grad(), _no_autocast(device_type):
                loss_p = _scalar_loss(loss_of([x - eta * gi for x, gi in zip(work, out.g, strict=True)]))
                sq = _total([(gi * gi).sum() for gi in out.g])
                plain = loss_p - out.loss0 + eta * sq

        record = GALStep(
            loss=out.loss0,
            tentative_loss=out.loss1,
            remainder=out.remainder,
            objective=out.objective,
            accepted=out.accepted,
            fallback=~out.ok,
            remainder_plain=plain,
        )
        if h_params:
            resolution = 4 * torch.finfo(out.objective.dtype).eps
            at_rounding = out.ok & (out.objective <= resolution * out.loss0.abs())
        else:  # a frozen h learns nothing by design
            at_rounding = torch.zeros_like(out.ok)
        return _Pending(out.chosen, h_params, h_grads, record, at_rounding)

    def _commit(self, step: _Pending) -> GALStep:
        """The call succeeded: count it, keep its record, watch for an objective at rounding level."""
        record = step.record
        with torch.no_grad():
            self.num_steps.add_(1)
            self.num_accepted.add_(record.accepted)
            self.num_fallbacks.add_(record.fallback)
            self._rounding_count.add_(step.at_rounding)
        self.last_step = record
        self._steps_here += 1
        if not self._rounding_warned and self._steps_here % ZERO_OBJECTIVE_STEPS == 0:
            self._watch_rounding()
        return record

    def _watch_rounding(self) -> None:
        """Every ZERO_OBJECTIVE_STEPS steps: warn once if h's objective sat at the rounding level
        on at least half the steps since the last look.

        On a GPU the count is copied to pinned host memory without waiting and read at the next
        look, once the copy has finished: the step never waits for the device."""
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
        warnings.warn(
            f"GAL: on {at_rounding} of the last {steps} steps h's objective was at the rounding level of GAL's "
            f"arithmetic (compute_dtype={self.config.compute_dtype}; exactly 0 or a few ulp of the loss), so h "
            "learns from rounding noise or not at all. Use compute_dtype=torch.float64 (the default) or a larger "
            "scale, and check that lr is not tiny",
            RuntimeWarning,
            stacklevel=5,
        )
        return True

    # -- the fused (compiled) step ----------------------------------------------------------
    def compile(self, **options: Any) -> _GALCore:  # type: ignore[override]
        """Run GAL's own arithmetic (everything between the model's forward and its backward)
        as one ``torch.compile``d function from now on (the fast path); returns ``self``.

        Same decisions as the eager step, values equal up to floating-point reassociation, far
        fewer kernel launches. ``options`` go to :func:`torch.compile`. The first step after
        ``compile()`` runs eagerly (a bad loss or h fails with the usual error), the second
        compiles; a new output shape, dtype or loss function compiles again. If the compiler
        fails, GAL warns and stays eager. Not part of ``state_dict``. (``nn.Module.compile``
        would compile :meth:`forward`, whose autograd calls would only graph-break.)
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

    def _h_params(self) -> list[Tensor]:
        return [p for p in self.h.parameters() if p.requires_grad]

    @staticmethod
    def _accumulate(params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
        """``.grad += grad`` as ``backward()`` does."""
        for p, gp in zip(params, grads, strict=True):
            if p.grad is None:
                p.grad = gp.detach().to(p.dtype, copy=True)  # its own memory, not a view of a flat buffer
            else:
                p.grad.add_(gp.to(p.grad.dtype))

    @staticmethod
    def _h_term(params: list[Tensor], h_grads: list[Tensor]) -> Tensor | None:
        """A zero-valued scalar whose gradient w.r.t. h's parameters ``params`` is ``h_grads``."""
        if not params:
            return None
        term = _total([(p * gp.detach()).sum() for p, gp in zip(params, h_grads, strict=True)])
        return term - term.detach()


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
    The options are readable (and settable, validated) as attributes: ``gal.ratio``...
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
        given = dict(
            ratio=ratio, scale=scale, hidden=hidden, activation=activation, first_order=first_order, accept=accept,
            normalize=normalize, dim=dim, compute_dtype=compute_dtype, track_plain=track_plain,
            sync_distributed=sync_distributed, seed=seed,
        )
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
        xs, step = self._run(outputs, loss_fn, lr)
        pairs = [(x, c) for x, c in zip(xs, step.chosen, strict=True) if x.requires_grad]
        # one engine call: through the model's graph, and straight into h's leaves
        torch.autograd.backward([*(x for x, _ in pairs), *step.h_params], [*(c for _, c in pairs), *step.h_grads])
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
        dtype = torch.promote_types(torch.promote_types(xs[0].dtype, torch.float32), step.record.loss.dtype)
        dtype = torch.float32 if dtype == torch.float64 and xs[0].dtype != torch.float64 else dtype
        link = _total(
            [(x.to(dtype) * c.detach().to(dtype)).sum() for x, c in zip(xs, step.chosen, strict=True) if x.requires_grad]
        )
        value = step.record.loss.detach().to(dtype) + (link - link.detach())
        h_term = self._h_term(step.h_params, step.h_grads)
        out = value if h_term is None else value + h_term.to(dtype)
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
        ratio and the keyword options: as :class:`GAL` (``dim`` does not apply). With
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
        given = dict(
            ratio=ratio, scale=scale, hidden=hidden, activation=activation, first_order=first_order, accept=accept,
            compute_dtype=compute_dtype, track_plain=track_plain, sync_distributed=sync_distributed, seed=seed,
        )
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
        flat = torch.cat([p.detach().reshape(-1).to(self._flat_dtype) for p in targets])

        def loss_of(z: list[Tensor]) -> Tensor:
            parts = [t.view(p.shape) for t, p in zip(z[0].split(sizes), targets, strict=True)]
            return loss_fn(dict(zip(names, parts, strict=True)) if names is not None else parts)

        step = self._compute([flat], [0], flat.numel(), loss_of, lr)
        chosen = [c.view(p.shape) for c, p in zip(step.chosen[0].split(sizes), targets, strict=True)]
        self._accumulate(targets, chosen)
        self._accumulate(step.h_params, step.h_grads)
        return self._commit(step)
