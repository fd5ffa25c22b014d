"""Gradient adjustment learning (GAL): the adjustment network h, the remainder objective and
the acceptance rule, in output space (:class:`GAL`) and in parameter space (:class:`ParamGAL`).

One GAL step on a point x (a batch of model outputs, or a parameter vector) with loss L:

1. ``loss0 = L(x)`` and ``g = dL/dx`` on a detached copy of x.
2. ``a = h(x)`` on every vector along ``dim``, rescaled to ``ratio * ||g_i|| * a_i / ||a_i||``.
3. Tentative step ``delta = eta * (g + a)`` with ``eta = lr * scale``; ``loss1 = L(x - delta)``.
4. h is trained to make the step's first-order model exact: its gradient is that of
   ``|loss1 + <delta, g> - loss0|`` (``first_order="sum"``, the exact Taylor term) or with
   ``<delta, g>`` divided by the batch size (``first_order="mean"``, the release's form).
5. The gradient sent back is ``g + a`` when the step is accepted (``accept="decrease"``:
   ``loss1 <= loss0``; ``accept="always"``), else ``g``.

Faults (a zero or non-finite h output, a non-finite gradient or loss) fall back to ``g``, give
h no update for that step, and are counted in ``num_fallbacks``. Nothing in a step reads a
value back to the host: decisions are tensors (``torch.where``), so the step does not
synchronise a GPU.

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
from typing import Any, Literal, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from galcore.adjuster import ActivationSpec, make_adjuster, release_hidden

Outputs = Tensor | Sequence[Tensor]
LossFn = Callable[[Any], Tensor]
FirstOrder = Literal["sum", "mean"]
Accept = Literal["decrease", "always"]

__all__ = ["GAL", "GALStep", "ParamGAL"]


@dataclass(frozen=True)
class GALStep:
    """What one GAL step did. Every field is a 0-d tensor on the outputs' device (no host sync).

    Attributes:
        loss: ``L(x)``, the loss at the outputs (the value ``loss.backward()`` would see).
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
    raise TypeError(
        f"outputs must be a tensor or a non-empty list/tuple of tensors, got {type(outputs).__name__}"
    )


def _check_lr(lr: float | Tensor) -> None:
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"lr must be a scalar, got a tensor of shape {tuple(lr.shape)}")
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


class _Spec(NamedTuple):
    """What a step needs besides tensors: fixed for a run (the compiled step guards on it)."""

    dims: list[int]  # the dimension h reads, per output
    batch: int  # B, for first_order="mean"
    ratio: float
    first_order: FirstOrder
    accept: Accept
    h_dtype: torch.dtype
    out_dtypes: list[torch.dtype]  # dtype of each output (the chosen gradient's dtype)


# (chosen, flat h-gradient, g, loss0, loss1, remainder, objective, ok, accepted)
_MathOut = tuple[list[Tensor], Tensor, list[Tensor], Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


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
        adj.append(spec.ratio * g_norm * (a / a_norm))
        checks += [a_norm.sum() + g_norm.sum(), (a_norm > 0).all().to(a_norm.dtype).log()]
    # one finiteness test for all: loss, every norm (a sum is finite iff its terms are, up to
    # overflow, which is a fault too) and log(1) = 0 / log(0) = -inf for a zero a_i
    ok = torch.isfinite(_total(checks))
    delta = [eta * (gi + ai) for gi, ai in zip(g, adj, strict=True)]
    inner = _total([(di * gi).sum() for di, gi in zip(delta, g, strict=True)])
    loss1 = _scalar_loss(loss_of([x - di for x, di in zip(x0, delta, strict=True)]))
    remainder = loss1 - loss0 + inner
    first = inner / spec.batch if spec.first_order == "mean" else inner
    objective = (loss1 + first - loss0).abs()
    ok = ok & torch.isfinite(loss1)  # NaN adjustments (faults) reach loss1 too
    return adj, loss1, remainder, objective, ok


def _decide(
    g: list[Tensor], adj: list[Tensor], raw: Sequence[Tensor | None], params: Sequence[Tensor],
    loss0: Tensor, loss1: Tensor, ok: Tensor, spec: _Spec,
) -> tuple[list[Tensor], Tensor, Tensor]:
    """Step 5: the chosen gradient per output, h's gradient as one flat buffer (zero on a
    fault: a single masking op, and a single all-reduce under DDP), and ``accepted``."""
    if params:
        parts = [(torch.zeros_like(p) if r is None else r).reshape(-1) for p, r in zip(params, raw, strict=True)]
        flat = torch.where(ok, torch.cat(parts), 0.0)
    else:  # a frozen h
        flat = loss0.new_zeros(0)
    accepted = ok & (loss1 <= loss0) if spec.accept == "decrease" else ok
    chosen = [
        torch.where(accepted, gi + ai.detach(), gi).to(dt) for gi, ai, dt in zip(g, adj, spec.out_dtypes, strict=True)
    ]
    return chosen, flat, accepted


def _eager_math(
    h: nn.Module, params: list[Tensor], work: list[Tensor], loss_of: Callable[[list[Tensor]], Tensor],
    eta: float | Tensor, spec: _Spec,
) -> _MathOut:
    """The reference step: plain autograd, one op at a time."""
    with torch.enable_grad():
        x0 = [w.requires_grad_(True) for w in work]
        loss0 = _scalar_loss(loss_of(x0))
        grads = torch.autograd.grad(loss0, x0, allow_unused=True)
        g = [torch.zeros_like(x) if gi is None else gi for x, gi in zip(x0, grads, strict=True)]
        x0 = [x.detach() for x in x0]
        loss0 = loss0.detach()
        adj, loss1, remainder, objective, ok = _tentative(h, x0, g, loss0, loss_of, eta, spec)
        raw = torch.autograd.grad(objective, params, allow_unused=True) if params else ()
    chosen, flat, accepted = _decide(g, adj, raw, params, loss0, loss1, ok, spec)
    return chosen, flat, g, loss0, loss1.detach(), remainder.detach(), objective.detach(), ok, accepted


def _fused_math(
    h: nn.Module, work: list[Tensor], loss_of: Callable[[list[Tensor]], Tensor], eta: float | Tensor, spec: _Spec
) -> _MathOut:
    """The same step written with ``torch.func`` transforms, so that ``torch.compile`` can
    trace all of it (both loss gradients and h's gradient) into one graph."""
    params = {n: p.detach() for n, p in h.named_parameters() if p.requires_grad}
    g, loss0 = torch.func.grad_and_value(lambda z: _scalar_loss(loss_of(z)))(work)

    def objective_of(p: dict[str, Tensor]) -> tuple[Tensor, tuple[Any, ...]]:
        def h_call(v: Tensor) -> Any:
            return torch.func.functional_call(h, p, (v,))

        adj, loss1, remainder, objective, ok = _tentative(h_call, work, g, loss0, loss_of, eta, spec)
        return objective, (adj, loss1, remainder, objective, ok)

    raw, (adj, loss1, remainder, objective, ok) = torch.func.grad(objective_of, has_aux=True)(params)
    chosen, flat, accepted = _decide(g, adj, list(raw.values()), list(params.values()), loss0, loss1, ok, spec)
    return chosen, flat, g, loss0, loss1, remainder, objective, ok, accepted


class _GALCore(nn.Module):
    """h, the counters and the step itself; subclasses say what x is (outputs or parameters)."""

    num_steps: Tensor
    num_accepted: Tensor
    num_fallbacks: Tensor

    def __init__(
        self,
        output_dim: int,
        ratio: float,
        scale: float,
        hidden: Sequence[int] | None,
        activation: ActivationSpec,
        first_order: FirstOrder,
        accept: Accept,
        h: nn.Module | None,
        track_plain: bool,
        sync_distributed: bool,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(output_dim, int) or output_dim < 1:
            raise ValueError(f"output_dim must be a positive int, got {output_dim!r}")
        if not math.isfinite(ratio) or ratio < 0:
            raise ValueError(f"ratio must be a finite number >= 0, got {ratio}")
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a finite number > 0, got {scale}")
        if first_order not in ("sum", "mean"):
            raise ValueError(f"first_order must be 'sum' or 'mean', got {first_order!r}")
        if accept not in ("decrease", "always"):
            raise ValueError(f"accept must be 'decrease' or 'always', got {accept!r}")
        self.output_dim = output_dim
        self.ratio = float(ratio)
        self.scale = float(scale)
        self.first_order: FirstOrder = first_order
        self.accept: Accept = accept
        self.track_plain = bool(track_plain)
        self.sync_distributed = bool(sync_distributed)
        if compute_dtype is not None and not compute_dtype.is_floating_point:
            raise TypeError(f"compute_dtype must be a floating dtype, got {compute_dtype}")
        self.compute_dtype = compute_dtype
        self.h = h if h is not None else make_adjuster(
            output_dim, release_hidden(output_dim) if hidden is None else hidden, activation
        )
        for name in ("num_steps", "num_accepted", "num_fallbacks"):
            self.register_buffer(name, torch.zeros((), dtype=torch.int64))
        self.last_step: GALStep | None = None
        # set by compile(): torch.compile's options, and the compiled step (built on first use)
        self._compile_options: dict[str, Any] | None = None
        self._compiled: Callable[..., _MathOut] | None = None

    # -- state ----------------------------------------------------------------------------
    _CONFIG = ("ratio", "scale", "first_order", "accept", "track_plain")

    def get_extra_state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._CONFIG}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        for k in self._CONFIG:
            if k in state:
                setattr(self, k, state[k])

    @property
    def acceptance_rate(self) -> Tensor:
        """Fraction of steps whose adjusted gradient was used (0-d float tensor)."""
        return self.num_accepted.float() / self.num_steps.clamp_min(1).float()

    def extra_repr(self) -> str:
        return (
            f"output_dim={self.output_dim}, ratio={self.ratio}, scale={self.scale}, "
            f"first_order={self.first_order!r}, accept={self.accept!r}"
        )

    # -- the step -------------------------------------------------------------------------
    def _work_copy(self, x: Tensor) -> Tensor:
        """The detached copy GAL computes on: ``compute_dtype`` if set, else half -> float32."""
        if self.compute_dtype is not None:
            return x.detach().to(self.compute_dtype)
        return x.detach().float() if x.dtype in (torch.float16, torch.bfloat16) else x.detach()

    def _step(
        self,
        xs: list[Tensor],
        dims: list[int],
        batch: int,
        loss_of: Callable[[list[Tensor]], Tensor],
        lr: float | Tensor,
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], GALStep]:
        """Run one GAL step at the points ``xs``.

        Returns the chosen gradient for each x (dtype of x), h's trainable parameters, their
        gradients (already zero on a fault), and the record.
        """
        _check_lr(lr)
        eta = lr * self.scale
        h_params = self._h_params()
        h_dtype = h_params[0].dtype if h_params else next((p.dtype for p in self.h.parameters()), xs[0].dtype)
        work = [self._work_copy(x) for x in xs]
        device_type = work[0].device.type
        spec = _Spec(dims, batch, self.ratio, self.first_order, self.accept, h_dtype, [x.dtype for x in xs])
        fused = self._fused_fn() if h_params else None
        with _no_autocast(device_type):
            out: _MathOut | None = None
            if fused is not None:
                # a tensor, so that a new lr is a new input value, not a recompile. Shape (1,) on
                # the outputs' device: torch.full is a fill kernel (no host-to-device copy), and
                # dynamo guards a 0-d float64 tensor by reading its value (.item()) every call
                eta_t = (
                    eta if isinstance(eta, Tensor)
                    else torch.full((1,), float(eta), dtype=work[0].dtype, device=work[0].device)
                )
                try:
                    out = fused(self.h, work, loss_of, eta_t, spec)
                except Exception as err:  # noqa: BLE001 - any compiler failure; user errors re-raise below
                    # the fused function has no side effects: run the eager step, which raises
                    # the caller's own errors (bad loss, wrong h) as usual; if it succeeds the
                    # failure was the compiler's, so warn once and stay eager
                    out = _eager_math(self.h, h_params, work, loss_of, eta, spec)
                    warnings.warn(
                        f"GAL.compile(): the compiled step failed ({type(err).__name__}: {err}); "
                        "GAL runs its eager step from now on",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                    self.uncompile()
            if out is None:
                out = _eager_math(self.h, h_params, work, loss_of, eta, spec)
        chosen, flat, g, loss0, loss1, remainder, objective, ok, accepted = out

        h_grads: list[Tensor] = []
        if h_params:
            if self.sync_distributed and dist.is_available() and dist.is_initialized():
                world = dist.get_world_size()
                if world > 1:
                    dist.all_reduce(flat)
                    flat = flat / world
            h_grads = [t.view_as(p) for t, p in zip(flat.split([p.numel() for p in h_params]), h_params, strict=True)]

        plain = None
        if self.track_plain:
            with torch.no_grad(), _no_autocast(device_type):
                loss_p = _scalar_loss(loss_of([x - eta * gi for x, gi in zip(work, g, strict=True)]))
                sq = _total([(gi * gi).sum() for gi in g])
                plain = loss_p - loss0 + eta * sq

        with torch.no_grad():
            self.num_steps.add_(1)
            self.num_accepted.add_(accepted)
            self.num_fallbacks.add_(~ok)
        record = GALStep(
            loss=loss0,
            tentative_loss=loss1,
            remainder=remainder,
            objective=objective,
            accepted=accepted,
            fallback=~ok,
            remainder_plain=plain,
        )
        self.last_step = record
        return chosen, h_params, h_grads, record

    # -- the fused (compiled) step ----------------------------------------------------------
    def compile(self, **options: Any) -> _GALCore:  # type: ignore[override]
        """Run GAL's own arithmetic (everything between the model's forward and its backward)
        as one function compiled with ``torch.compile`` from now on; returns ``self``.

        The result is the same step as the eager one (same decisions; values equal up to
        floating-point reassociation), with far fewer kernel launches and Python dispatches:
        on small models this roughly halves GAL's per-step overhead (see
        ``benchmarks/step_overhead.py``). The first step compiles (seconds to a minute on a
        CPU); a new output shape, dtype or loss function compiles again (dynamo's usual
        caching and limits). ``options`` go to :func:`torch.compile` (``mode``, ``backend``,
        ``dynamic``, ...). The first step after ``compile()`` runs eagerly, so that a bad loss
        or h fails with the usual error; compiling happens on the second. If the compiler
        fails, GAL warns and runs eagerly from then on. ``uncompile()`` returns to the eager
        step. Not part of ``state_dict`` (a runtime choice, like ``torch.compile`` itself).

        Note: ``nn.Module.compile`` would compile :meth:`forward`; GAL's forward is
        :meth:`surrogate`, whose autograd calls would only graph-break, so this method
        compiles the step's arithmetic instead.
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

    def _fused_fn(self) -> Callable[..., _MathOut] | None:
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
        return state

    def _h_params(self) -> list[Tensor]:
        return [p for p in self.h.parameters() if p.requires_grad]

    @staticmethod
    def _accumulate_h(h_params: list[Tensor], h_grads: list[Tensor]) -> None:
        for p, gp in zip(h_params, h_grads, strict=True):
            if p.grad is None:
                p.grad = gp.detach()  # a fresh tensor of this step: no copy needed
            else:
                p.grad.add_(gp)

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
        ratio: r, the adjustment's norm relative to the gradient's, per vector (``>= 0``;
            ``0`` is plain training).
        scale: multiplier on the optimizer's lr for the tentative step (``eta = lr * scale``).
        hidden: h's hidden widths; ``None`` takes the release's widths for this C
            (:func:`galcore.release_hidden`).
        activation: between h's linear layers; ``None`` (the release) or ``"relu"``,
            ``"gelu"``, ``"tanh"``, ``"silu"`` or a module factory.
        first_order: ``"sum"`` (exact Taylor term, default) or ``"mean"`` (the release).
        accept: ``"decrease"`` (use ``g + a`` only if the tentative loss did not increase;
            the release) or ``"always"``.
        dim: the dimension of the outputs that h reads (``-1`` for logits (B, C); ``1`` for
            dense maps (B, C, H, W)).
        h: a module to use as h instead of the linear stack (maps (..., C) to (..., C)).
        track_plain: also measure the remainder of the plain tentative step (one more
            evaluation of the loss, no graph) in :attr:`GALStep.remainder_plain`.
        sync_distributed: when ``torch.distributed`` is initialised, average h's gradient
            over ranks so h stays identical everywhere (turn off if you wrap GAL in DDP).
        compute_dtype: dtype of GAL's own computation (the loss at x and at the tentative
            point). ``None``: the outputs' dtype, with float16/bfloat16 promoted to float32.
            ``torch.float64`` resolves remainders that float32 rounds away (they are of
            order ``(lr * |g|)^2``, often below 1e-7 in output space).

    Outputs may be one tensor or a list/tuple of tensors (multi-scale heads); ``loss_fn``
    receives the same structure. Counters ``num_steps``, ``num_accepted`` and
    ``num_fallbacks`` are buffers and, with h and the options, part of ``state_dict()``.
    """

    def __init__(
        self,
        output_dim: int,
        ratio: float = 1e-3,
        scale: float = 1.0,
        hidden: Sequence[int] | None = None,
        activation: ActivationSpec = None,
        first_order: FirstOrder = "sum",
        accept: Accept = "decrease",
        dim: int = -1,
        *,
        h: nn.Module | None = None,
        track_plain: bool = False,
        sync_distributed: bool = True,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            output_dim, ratio, scale, hidden, activation, first_order, accept, h, track_plain, sync_distributed,
            compute_dtype,
        )
        self.dim = int(dim)

    def _prepare(self, outputs: Outputs) -> tuple[list[Tensor], list[int], int, Callable[[list[Tensor]], Any]]:
        xs, rebuild = _as_list(outputs)
        dims = []
        for i, x in enumerate(xs):
            if not x.is_floating_point():
                raise TypeError(f"outputs[{i}] must be floating point (logits, regression values), got {x.dtype}")
            if x.ndim == 0:
                raise ValueError(f"outputs[{i}] is a 0-d tensor; GAL needs at least one dimension")
            if not -x.ndim <= self.dim < x.ndim:
                raise ValueError(f"dim={self.dim} is out of range for outputs[{i}] of shape {tuple(x.shape)}")
            d = self.dim % x.ndim
            if x.shape[d] != self.output_dim:
                raise ValueError(
                    f"h reads vectors of size output_dim={self.output_dim} along dim={self.dim}, but "
                    f"outputs[{i}] has shape {tuple(x.shape)} (size {x.shape[d]} there)"
                )
            dims.append(d)
        batch = xs[0].shape[0] if xs[0].ndim > 1 else 1
        return xs, dims, batch, rebuild

    def _run(
        self, outputs: Outputs, loss_fn: LossFn, lr: float | Tensor
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor], GALStep]:
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable: outputs -> scalar loss")
        xs, dims, batch, rebuild = self._prepare(outputs)
        chosen, h_params, h_grads, record = self._step(xs, dims, batch, lambda z: loss_fn(rebuild(z)), lr)
        return xs, chosen, h_params, h_grads, record

    def backward(self, outputs: Outputs, loss_fn: LossFn, lr: float | Tensor) -> GALStep:
        """Like ``loss_fn(outputs).backward()``, with GAL's chosen gradient at the outputs.

        Accumulates the chosen output gradient into the model's ``.grad`` (through
        ``outputs``' graph) and the remainder objective's gradient into h's ``.grad``.

        Args:
            outputs: model outputs with their graph, a tensor or a list/tuple of tensors.
            loss_fn: ``outputs -> scalar loss`` (e.g. ``lambda o: F.cross_entropy(o, y)``).
            lr: the optimizer's current learning rate (float > 0 or 0-d tensor).
        Returns:
            A :class:`GALStep` of 0-d tensors.
        """
        xs, chosen, h_params, h_grads, record = self._run(outputs, loss_fn, lr)
        # one engine call: through the model's graph, and straight into h's leaves
        torch.autograd.backward([*xs, *h_params], [*chosen, *h_grads])
        return record

    def surrogate(self, outputs: Outputs, loss_fn: LossFn, lr: float | Tensor) -> Tensor:
        """A scalar to call ``.backward()`` on in any trainer (AMP scaler, accumulation, DDP).

        Its value is ``loss_fn(outputs)``; its gradient w.r.t. ``outputs`` is GAL's chosen
        gradient and w.r.t. h's parameters the remainder objective's gradient. Everything
        GAL computes uses the unscaled loss, so ``scaler.scale(s).backward()`` scales the
        chosen gradient exactly as it would scale the plain one. The step's record is in
        :attr:`last_step`.
        """
        xs, chosen, h_params, h_grads, record = self._run(outputs, loss_fn, lr)
        link = _total([(x * c.detach()).sum() for x, c in zip(xs, chosen, strict=True)])
        value = record.loss.to(link.dtype) + (link - link.detach())
        h_term = self._h_term(h_params, h_grads)
        return value if h_term is None else value + h_term.to(value.dtype)

    forward = surrogate


class ParamGAL(_GALCore):
    """GAL in parameter space (the release's 3D toy): h reads the flattened parameters and
    adjusts the parameter gradient. Affordable only for small models (h is P x P-sized).

    Args:
        params: an ``nn.Module`` (``loss_fn`` then receives ``{name: tensor}``, ready for
            ``torch.func.functional_call``) or an iterable of tensors (``loss_fn`` receives a
            list shaped like them).
        Other arguments as in :class:`GAL`.
    """

    def __init__(
        self,
        params: nn.Module | Iterable[Tensor],
        ratio: float = 1e-3,
        scale: float = 1.0,
        hidden: Sequence[int] | None = None,
        activation: ActivationSpec = None,
        first_order: FirstOrder = "sum",
        accept: Accept = "decrease",
        *,
        h: nn.Module | None = None,
        track_plain: bool = False,
        sync_distributed: bool = True,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        if isinstance(params, nn.Module):
            named = [(n, p) for n, p in params.named_parameters() if p.requires_grad]
            names: list[str] | None = [n for n, _ in named]
            plist = [p for _, p in named]
        else:
            names, plist = None, list(params)
        if not plist:
            raise ValueError("ParamGAL needs at least one parameter")
        size = sum(p.numel() for p in plist)
        super().__init__(
            size, ratio, scale, hidden, activation, first_order, accept, h, track_plain, sync_distributed, compute_dtype
        )
        # plain attributes: the model's parameters must not become GAL's parameters
        object.__setattr__(self, "_targets", plist)
        object.__setattr__(self, "_names", names)

    def backward(self, loss_fn: LossFn, lr: float | Tensor) -> GALStep:
        """One GAL step on the parameters: sets (accumulates) their ``.grad`` to the chosen
        gradient and h's ``.grad`` to the objective's gradient. ``loss_fn`` maps parameters
        (dict or list, see the class) to a scalar loss."""
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable: parameters -> scalar loss")
        targets: list[Tensor] = self._targets  # type: ignore[has-type]
        names: list[str] | None = self._names  # type: ignore[has-type]
        sizes = [p.numel() for p in targets]
        flat = torch.cat([p.detach().reshape(-1) for p in targets])

        def loss_of(z: list[Tensor]) -> Tensor:
            parts = [t.view_as(p) for t, p in zip(z[0].split(sizes), targets, strict=True)]
            return loss_fn(dict(zip(names, parts, strict=True)) if names is not None else parts)

        chosen, h_params, h_grads, record = self._step([flat], [0], 1, loss_of, lr)
        for p, c in zip(targets, chosen[0].split(sizes), strict=True):
            c = c.view_as(p)
            if p.grad is None:
                p.grad = c.clone()
            else:
                p.grad.add_(c)
        self._accumulate_h(h_params, h_grads)
        return record
