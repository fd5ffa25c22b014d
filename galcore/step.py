"""The arithmetic of one GAL step, as functions of tensors: what both drivers run.

x is a list of points (model outputs, or one flat parameter vector), each read by h along
``spec.dims[i]``; g the loss's gradient there; all in GAL's compute dtype.

- :func:`tentative`: steps 2-4 of ``galcore/gal.py``'s docstring: h's rescaled adjustment
  ``a`` (shaped like x), the tentative loss, the remainder and h's objective.
- :func:`decide`: step 5: acceptance, the gradient sent back, the fault flag.
- :class:`GALStep`: the public record of a step.
- :func:`eager_math` (plain autograd; h's gradient flows through :class:`Gate` in the step's
  final backward call) and :func:`fused_math` (``torch.func``, traced whole by
  ``torch.compile``): the two drivers, calling the two functions above.

Nothing here reads a value back to the host or changes a module's state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from galcore.config import Accept, FirstOrder, Normalize

LossOf = Callable[[list[Tensor]], Tensor]


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
        return {f.name: float(v.detach().float().cpu()) for f in fields(self) if (v := getattr(self, f.name)) is not None}


class Spec(NamedTuple):
    """What a step needs besides tensors: fixed for a run (the compiled step guards on it)."""

    dims: list[int]  # the dimension h reads, per point
    mean_divisor: int  # what first_order="mean" divides <delta, g> by
    ratio: float
    first_order: FirstOrder
    accept: Accept
    normalize: Normalize
    h_dtype: torch.dtype  # dtype h computes in
    grad_dtypes: list[torch.dtype]  # dtype of each gradient sent back
    native: bool  # GAL computes in another dtype than the outputs' (see StepMath.grads)
    stack: bool  # h is a LinearStack with a trainable flat parameter


class StepMath(NamedTuple):
    """What a driver returns. ``grads``: per point, ``g + sent`` (``sent``: ``a`` if accepted, else
    0), or ``sent`` alone when ``spec.native`` in eager (the final backward call adds
    ``loss.backward()``'s own). ``objective``: with its graph to h (eager); ``h_grad``: h's
    gradient, flat and masked (compiled only)."""

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


def total(terms: list[Tensor]) -> Tensor:
    """Sum of 0-d tensors (no stack for a single one)."""
    return terms[0] if len(terms) == 1 else torch.stack(terms).sum()


def scalar_loss(value: Any) -> Tensor:
    """``value`` as a 0-d floating tensor, or a clear error."""
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


def apply_h(h: Callable[[Tensor], Any], x: Tensor, dim: int, h_dtype: torch.dtype) -> Tensor:
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


def tentative(
    h: Callable[[Tensor], Any], x0: list[Tensor], g: list[Tensor], loss0: Tensor, loss_of: LossOf,
    eta: float | Tensor, spec: Spec,
) -> tuple[list[Tensor], Tensor, Tensor, Tensor, Tensor]:
    """Steps 2-4: ``(adj, loss1, remainder, objective, ok)``; ``objective`` carries the graph to
    h. ``ok``, one finiteness test of the objective, covers every fault: a zero or non-finite
    a_i is NaN (0/0, inf/inf), hence so is ``<delta, g>`` (NaN * 0 is NaN); a non-finite g,
    loss0 or loss1 reaches it directly."""
    adj: list[Tensor] = []
    for x, gi, d in zip(x0, g, spec.dims, strict=True):
        a = apply_h(h, x, d, spec.h_dtype)
        g_norm = torch.linalg.vector_norm(gi, dim=d, keepdim=True)
        ai = a * (spec.ratio * g_norm / torch.linalg.vector_norm(a, dim=d, keepdim=True))
        if spec.normalize == "batch" and x.ndim > 1:
            others = [k for k in range(x.ndim) if k != d]
            sum_a = torch.linalg.vector_norm(ai.sum(others))
            sum_g = torch.linalg.vector_norm(gi.sum(others))
            # shrink only (factor <= 1); a zero sum needs no shrinking. The denominator is safe:
            # torch.where's discarded branch is differentiated too, and 0/0 there is NaN
            positive = sum_a > 0
            factor = spec.ratio * sum_g / torch.where(positive, sum_a, 1.0)
            ai = ai * torch.where(positive, factor, 1.0).clamp(max=1.0)
        adj.append(ai)
    delta = [torch.add(eta * gi, ai, alpha=eta) if isinstance(eta, float) else eta * (gi + ai)  # float: one node
             for gi, ai in zip(g, adj, strict=True)]
    inner = total([(di * gi).sum() for di, gi in zip(delta, g, strict=True)])
    loss1 = scalar_loss(loss_of([x - di for x, di in zip(x0, delta, strict=True)]))
    weight = 1 / spec.mean_divisor if spec.first_order == "mean" else 1  # of <delta, g> in the objective
    signed = torch.add(loss1, inner, alpha=weight) - loss0
    remainder = signed.detach() if weight == 1 else torch.add(signed.detach(), inner.detach(), alpha=1 - weight)
    objective = signed.abs()
    return adj, loss1, remainder, objective, torch.isfinite(objective)


def decide(g: list[Tensor], adj: list[Tensor], loss0: Tensor, loss1: Tensor, objective: Tensor, ok: Tensor,
           spec: Spec) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
    """Step 5: ``(grads, accepted, at_rounding, fallback)`` (see :class:`StepMath`). ``g + 0``
    is ``g``: a rejected step, or ``ratio=0``, sends back bit for bit what ``loss.backward()``
    would, in g's memory layout (h's output along a moved ``dim`` has other strides)."""
    accepted = ok & (loss1 <= loss0) if spec.accept == "decrease" else ok
    sent = [torch.where(accepted, ai.detach(), 0.0) for ai in adj]
    if not spec.native:
        sent = [gi + s for gi, s in zip(g, sent, strict=True)]
    grads = [s if s.dtype == dt and s.stride() == gi.stride() else torch.empty_like(gi, dtype=dt).copy_(s)
             for gi, s, dt in zip(g, sent, spec.grad_dtypes, strict=True)]
    at_rounding = ok & (objective <= 4 * torch.finfo(objective.dtype).eps * loss0.abs())
    return grads, accepted, at_rounding, ~ok


def h_call(h: nn.Module, gated: Sequence[Tensor], spec: Spec) -> Callable[[Tensor], Any]:
    """h with its trainable parameters replaced by ``gated`` (a LinearStack's parts, or the parameters)."""
    if spec.stack:
        return lambda v: h(v, parts=gated)
    if not gated:
        return h
    names = [n for n, p in h.named_parameters() if p.requires_grad]
    return lambda v: torch.func.functional_call(h, dict(zip(names, gated, strict=True)), (v,))


class Gate(torch.autograd.Function):
    """h's trainable parameters as ``views(params)`` (a :class:`LinearStack`'s parts in GAL's compute
    dtype, else the parameters), without graph nodes. Its backward (in the final backward call) zeroes
    h's gradient on a faulty step and averages it over DDP ranks in one all-reduce.
    ``box``: ``[fallback, world, keep]``; with ``keep`` a list, the gradient is appended there
    (added to ``.grad`` by the caller once the whole backward call succeeded) instead of returned."""

    @staticmethod
    def forward(ctx: Any, box: list[Any], views: Callable[..., Sequence[Tensor]], *params: Tensor) -> tuple[Tensor, ...]:
        ctx.box, ctx.params = box, [(p.shape, p.dtype) for p in params]
        return tuple(views(params))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        fallback, world, keep = ctx.box
        flat = torch.where(fallback, 0.0, torch.cat([t.reshape(-1) for t in grads]))
        if world > 1:
            dist.all_reduce(flat)
            flat = flat / world
        parts = [flat] if len(ctx.params) == 1 else flat.split_with_sizes([s.numel() for s, _ in ctx.params])
        out = [t.view(shape).to(dtype) for t, (shape, dtype) in zip(parts, ctx.params, strict=True)]
        if keep is not None:
            keep.extend(out)
            return (None, None, *(None for _ in out))
        return (None, None, *out)


def eager_math(h: nn.Module, params: list[Tensor], work: list[Tensor], loss_of: LossOf, eta: float | Tensor,
               spec: Spec, world: int, keep: list[Tensor] | None = None) -> StepMath:
    """The reference driver: plain autograd. h's gradient is left to the final backward call
    (into ``keep`` when given, see :class:`Gate`)."""
    box: list[Any] = [None, world, keep]
    views = (lambda ps: h.parts(ps[0].detach().to(spec.h_dtype))) if spec.stack else (lambda ps: [p.detach() for p in ps])
    gated = Gate.apply(box, views, *params) if params else ()
    with torch.enable_grad():
        x0 = [w.requires_grad_(True) for w in work]
        loss0 = scalar_loss(loss_of(x0))
        grads = torch.autograd.grad(loss0, x0, allow_unused=True)
        g = [torch.zeros_like(x) if gi is None else gi for x, gi in zip(x0, grads, strict=True)]
        loss0 = loss0.detach()
        x0 = [x.detach() for x in x0]
        adj, loss1, remainder, objective, ok = tentative(h_call(h, gated, spec), x0, g, loss0, loss_of, eta, spec)
    sent, accepted, at_rounding, fallback = decide(g, adj, loss0, loss1, objective, ok, spec)
    box[0] = fallback
    return StepMath(sent, g, loss0, loss1.detach(), remainder, objective, accepted, at_rounding, fallback, None)


def fused_math(h: nn.Module, params: list[Tensor], work: list[Tensor], loss_of: LossOf, eta: float | Tensor,
               spec: Spec) -> StepMath:
    """The fast driver: the plain gradient and h's with ``torch.func``, so that ``torch.compile``
    traces all of the step into one graph."""
    g, loss0 = torch.func.grad_and_value(lambda z: scalar_loss(loss_of(z)))(work)

    def objective_of(ps: list[Tensor]) -> tuple[Tensor, tuple[Any, ...]]:
        views = h.parts(ps[0].to(spec.h_dtype)) if spec.stack else ps
        out = tentative(h_call(h, views, spec), work, g, loss0, loss_of, eta, spec)
        return out[3], out

    raw, (adj, loss1, remainder, objective, ok) = torch.func.grad(objective_of, has_aux=True)(params)
    sent, accepted, at_rounding, fallback = decide(g, adj, loss0, loss1, objective, ok, spec)
    if spec.native:  # the plain gradient in the outputs' precision too: sent = g_native + sent
        g_native = torch.func.grad(lambda z: scalar_loss(loss_of(z)))([w.to(s.dtype) for w, s in zip(work, sent)])
        sent = [gn + s for gn, s in zip(g_native, sent, strict=True)]
    h_grad = torch.where(fallback, 0.0, raw[0].reshape(-1) if len(raw) == 1 else torch.cat([r.reshape(-1) for r in raw]))
    return StepMath(sent, g, loss0, loss1, remainder, objective, accepted, at_rounding, fallback, h_grad)
