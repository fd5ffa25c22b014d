"""Gradient adjustment learning (GAL): the adjustment network h, the remainder objective and
the acceptance rule, in output space (:class:`GAL`) and in parameter space (:class:`ParamGAL`).

One GAL step on a point x (a batch of model outputs, or a parameter vector) with loss L
(``galcore/reference.py`` states the same step in 30 plain lines; the tests hold this code to it):

1. ``loss0 = L(x)`` and ``g = dL/dx`` on a detached copy of x, in ``compute_dtype``.
2. ``a = h(x)`` on every vector along ``dim``, rescaled to ``ratio * ||g_i|| * a_i / ||a_i||``
   (with ``normalize="batch"`` also shrunk so that ``||sum_i a_i|| <= ratio ||sum_i g_i||``).
3. Tentative step ``delta = eta * (g + a)`` with ``eta = lr * scale``; ``loss1 = L(x - delta)``.
4. h is trained to make the step's first-order model exact: its gradient is that of
   ``|loss1 + <delta, g> - loss0|`` (``first_order="sum"``, the exact Taylor term) or with
   ``<delta, g>`` divided by the batch size B (``first_order="mean"``, the release's form).
5. The gradient sent back is ``g + a`` when the step is accepted (``accept="decrease"``:
   ``loss1 <= loss0``; ``accept="always"``), else ``g``.

The arithmetic is in :mod:`galcore.step` (an eager driver, plain autograd, and a fused one that
:meth:`GAL.compile` hands to ``torch.compile``); the rounding-level watch in :mod:`galcore.watch`.
This module holds the modules: options, counters, state, and the wiring of one call.

Faults (a zero or non-finite h output, a non-finite gradient or loss) fall back to ``g``, give
h no update for that step, and are counted in ``num_fallbacks``. Nothing in a step reads a
value back to the host (decisions are tensors), and a call that raises changes no counter and
no ``.grad`` of h.

Why ``"sum"`` is the default: L is already the batch mean, so ``L(x - delta) - L(x)`` is
matched to first order by ``<g, delta>`` summed over the whole batch; the release's mean over
the batch divides that term by B, so its "remainder" is not the Taylor remainder. ``"mean"`` is
kept to reproduce the release.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from galcore.adjuster import LinearStack, make_adjuster, release_hidden
from galcore.config import UNSET, GALConfig, documented, options_config
from galcore.state import StateMixin
from galcore.step import GALStep, LossOf, Spec, StepMath, scalar_loss, total
from galcore.step import eager_math as _eager_math  # module globals: benchmarks/step_profile.py patches them
from galcore.step import fused_math as _fused_math
from galcore.watch import ZERO_OBJECTIVE_STEPS, RoundingWatch

Outputs = Tensor | Sequence[Tensor]
LossFn = Callable[[Any], Tensor]

__all__ = ["GAL", "ZERO_OBJECTIVE_STEPS", "GALStep"]

#: the options that shape h (or what h reads): fixed at construction
READ_ONLY = ("hidden", "activation", "seed", "dim")


def _as_list(outputs: Outputs) -> tuple[list[Tensor], Callable[[list[Tensor]], Any]]:
    """Flatten a tensor or a list/tuple of tensors; return the list and a function rebuilding it."""
    if isinstance(outputs, Tensor):
        return [outputs], lambda xs: xs[0]
    if not isinstance(outputs, (list, tuple)) or not outputs or not all(isinstance(o, Tensor) for o in outputs):
        raise TypeError(f"outputs must be a tensor or a non-empty list/tuple of tensors, got {type(outputs).__name__}")
    kind = type(outputs)
    return list(outputs), (lambda xs: kind(xs)) if kind in (tuple, list) else (lambda xs: kind(*xs))  # namedtuple


def _check_lr(lr: float | Tensor) -> None:
    if isinstance(lr, Tensor):
        if lr.numel() != 1 or not lr.is_floating_point():
            raise ValueError(f"lr must be a float or a one-element floating tensor, got {lr.dtype} {tuple(lr.shape)}")
        return  # a tensor lr is not read back to the host; its sign is the caller's contract
    if not isinstance(lr, (int, float)) or isinstance(lr, bool):
        raise TypeError(f"lr must be a float or a one-element floating tensor, got {type(lr).__name__}")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr}")


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """Leave an active autocast region for GAL's own arithmetic; a no-op when none is active."""
    try:
        active = torch.is_autocast_enabled(device_type)
    except (RuntimeError, TypeError):  # device types without autocast support
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False) if active else contextlib.nullcontext()


@functools.cache
def _probe_float64(device_type: str) -> bool:
    try:
        torch.zeros(1, dtype=torch.float64, device=device_type)
    except (RuntimeError, TypeError):
        return False
    return True


def _has_float64(device: torch.device) -> bool:
    """Whether ``device`` computes in float64 (MPS does not). Probed once per device type."""
    return device.type in ("cpu", "cuda", "meta") or _probe_float64(device.type)


def _half_up(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _Pending(NamedTuple):
    """A computed step, committed once the call succeeds. ``backward(roots, grads)`` applies it in one
    call: the chosen gradient into the model and, unless ``keep`` collects it, h's into h."""

    roots: list[Tensor]
    grads: list[Tensor | None]
    value: Tensor  # the loss
    objective: Tensor | None  # with its graph to h, when h has trainable parameters (a root too)
    record: GALStep
    at_rounding: Tensor  # bool: h's objective was at the rounding level (h learns nothing)
    params: list[Tensor]  # h's trainable parameters
    keep: list[Tensor] | None  # h's gradient, added to params' .grad by _commit (deferred calls)


class _GALCore(StateMixin):
    """h, the options, the counters and the step itself; subclasses say what x is. The options are
    properties made from :class:`GALConfig`'s fields (settable and validated, except ``READ_ONLY``)."""

    num_steps: Tensor
    num_accepted: Tensor
    num_fallbacks: Tensor

    def __init__(self, output_dim: int, config: GALConfig, h: nn.Module | None) -> None:
        super().__init__()
        if isinstance(output_dim, bool) or not isinstance(output_dim, int) or output_dim < 1:
            raise ValueError(f"output_dim must be a positive int, got {output_dim!r}")
        if h is not None and not isinstance(h, nn.Module):
            raise TypeError(f"h must be an nn.Module mapping (..., C) to (..., C), got {type(h).__name__}")
        self.output_dim = output_dim
        self.config = config
        self._built_h = h is None  # hidden and activation describe h
        if h is None:
            with torch.random.fork_rng(devices=[], enabled=config.seed is not None):
                if config.seed is not None:
                    torch.manual_seed(config.seed)
                h = LinearStack(*make_adjuster(output_dim, self._widths(config), config.activation))
        self.h = h
        for name in ("num_steps", "num_accepted", "num_fallbacks"):
            self.register_buffer(name, torch.zeros((), dtype=torch.int64))
        # steps of the current window whose objective was at the rounding level (h learns nothing)
        self.register_buffer("_rounding_count", torch.zeros((), dtype=torch.int64), persistent=False)
        self.register_buffer("_one", torch.ones((), dtype=torch.int64), persistent=False)  # num_steps' increment
        self._watch = RoundingWatch()
        self._float64_warned = False
        self._steps_here = 0  # completed steps in this process (a Python int: no device read)
        self.last_step: GALStep | None = None
        # set by compile(): torch.compile's options, and the compiled step (built on first use)
        self._compile_options: dict[str, Any] | None = None
        self._compiled: Callable[..., StepMath] | None = None

    def _widths(self, config: GALConfig) -> tuple[int, ...]:
        return release_hidden(self.output_dim) if config.hidden is None else config.hidden

    @property
    def acceptance_rate(self) -> Tensor:
        """Fraction of steps whose adjusted gradient was used (0-d float tensor)."""
        return self.num_accepted.float() / self.num_steps.clamp_min(1).float()

    def extra_repr(self) -> str:
        return ", ".join([f"output_dim={self.output_dim}", *(f"{f.name}={getattr(self.config, f.name)!r}"
                                                              for f in fields(GALConfig))])

    # -- the step -------------------------------------------------------------------------
    def _work_dtype(self, x: Tensor) -> torch.dtype:
        """The dtype GAL computes in for points like ``x``."""
        dtype = self.config.compute_dtype
        if dtype is None:
            return _half_up(x.dtype)
        if dtype == torch.float64 and not _has_float64(x.device):
            if not self._float64_warned:
                self._float64_warned = True
                msg = (f"device {x.device} has no float64; GAL's own arithmetic runs in float32, where small "
                       "remainders round to 0 (raise scale, or set compute_dtype=None to silence this)")
                warnings.warn(f"GAL: {msg}", RuntimeWarning, stacklevel=4)
            return torch.float32
        return dtype

    def _compute(self, xs: list[Tensor], dims: list[int], mean_divisor: int, loss_of: LossOf, lr: float | Tensor,
                 defer: bool) -> _Pending:
        """Run one GAL step at the points ``xs``; change no state (see :meth:`_commit`). ``defer``:
        h's gradient is collected for :meth:`_commit` instead of accumulated by the backward call."""
        _check_lr(lr)
        c, h = self.config, self.h
        eta = lr * c.scale
        params = ([h.flat] if h.flat.requires_grad else []) if isinstance(h, LinearStack) else \
            [p for p in h.parameters() if p.requires_grad]
        work = [x.detach().to(self._work_dtype(x)) for x in xs]
        # the outputs' own precision (half: float32): when GAL computes in another, the plain gradient
        # comes from the loss at the outputs, in the final backward call, exactly as loss.backward()'s
        native_dt = [_half_up(x.dtype) for x in xs]
        native = any(w.dtype != dt for w, dt in zip(work, native_dt, strict=True))
        stack = isinstance(h, LinearStack) and bool(params)  # h's parts in the compute dtype
        h_dtype = work[0].dtype if stack else (params[0] if params else next(h.parameters(), xs[0])).dtype
        grad_dt = native_dt if native else [x.dtype for x in xs]
        spec = Spec(dims, mean_divisor, c.ratio, c.first_order, c.accept, c.normalize, h_dtype, grad_dt, native, stack)
        world = dist.get_world_size() if c.sync_distributed and dist.is_available() and dist.is_initialized() else 1
        keep: list[Tensor] | None = [] if defer and params else None
        with _no_autocast(work[0].device.type):
            out = self._fused(h, params, work, loss_of, eta, spec, world, keep) if params else None
            if out is None:
                out = _eager_math(h, params, work, loss_of, eta, spec, world, keep)
            roots: list[Tensor] = []
            grads: list[Tensor | None] = []
            points, value = xs, out.loss0
            if native and out.h_grad is None:  # eager: the loss at the outputs, whose gradient the final call adds
                with torch.enable_grad():
                    points = [x.to(dt) for x, dt in zip(xs, native_dt, strict=True)]
                    value = scalar_loss(loss_of(points))
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
                parts = [h_grad] if len(params) == 1 else h_grad.split_with_sizes([p.numel() for p in params])
                parts = [t.view_as(p) for t, p in zip(parts, params, strict=True)]
                if keep is not None:
                    keep += parts
                else:
                    roots += params
                    grads += parts
            elif out.objective.requires_grad:  # eager: through the gate
                objective = out.objective
                roots.append(objective)
                grads.append(None)
            plain = None
            if c.track_plain:
                with torch.no_grad():
                    loss_p = scalar_loss(loss_of([x - eta * gi for x, gi in zip(work, out.g, strict=True)]))
                    plain = loss_p - out.loss0 + eta * total([(gi * gi).sum() for gi in out.g])
        record = GALStep(out.loss0, out.loss1, out.remainder, out.objective.detach(), out.accepted, out.fallback, plain)
        # a frozen h learns nothing by design: never at the rounding level
        at_rounding = out.at_rounding if params else torch.zeros_like(out.accepted)
        return _Pending(roots, grads, value.detach(), objective, record, at_rounding, params, keep)

    def _fused(self, h: nn.Module, params: list[Tensor], work: list[Tensor], loss_of: LossOf, eta: float | Tensor,
               spec: Spec, world: int, keep: list[Tensor] | None) -> StepMath | None:
        """The compiled step, or ``None`` to run the eager one (not compiled, or its first step)."""
        fused = self._fused_fn()
        if fused is None:
            return None
        # lr as a tensor input (a new lr is no recompile); shape (1,) on the outputs' device: a
        # fill kernel, and dynamo would guard a 0-d float64 tensor by reading it (.item())
        eta_t = eta if isinstance(eta, Tensor) else torch.full((1,), float(eta), dtype=work[0].dtype, device=work[0].device)
        try:
            out = fused(h, [p.detach() for p in params], work, loss_of, eta_t, spec)  # no outer graph
        except Exception as err:  # noqa: BLE001 - any compiler failure; user errors re-raise below
            # no side effects: the eager step raises the caller's own errors (bad loss, wrong h);
            # if it succeeds the failure was the compiler's, so warn once and stay eager
            out = _eager_math(h, params, work, loss_of, eta, spec, world, keep)
            msg = f"the compiled step failed ({type(err).__name__}: {err}); GAL runs its eager step from now on"
            warnings.warn(f"GAL.compile(): {msg}", RuntimeWarning, stacklevel=5)
            self.uncompile()
            return out
        if "reduce-overhead" in str(self._compile_options.get("mode")):  # CUDA graphs reuse their output memory
            out = StepMath(*(v.clone() if isinstance(v, Tensor) else [t.clone() for t in v] if isinstance(v, list)
                             else v for v in out))
        return out

    def _commit(self, step: _Pending) -> GALStep:
        """The call succeeded: add h's kept gradient, count the step, keep its record, watch for an
        objective at the rounding level."""
        for p, g in zip(step.params, step.keep or (), strict=False):
            p.grad = g if p.grad is None else p.grad.add_(g)
        record = step.record
        counts = [self.num_steps, self.num_accepted, self.num_fallbacks, self._rounding_count]
        torch._foreach_add_(counts, [self._one, record.accepted, record.fallback, step.at_rounding])
        self.__dict__["last_step"] = record  # plain attributes (not nn.Module.__setattr__: hot path)
        self.__dict__["_steps_here"] = self._steps_here + 1
        if self._watch.due(self._steps_here):
            self._watch.look(self._rounding_count, self._steps_here, self.config.compute_dtype)
        return record

    # -- the fused (compiled) step ----------------------------------------------------------
    def compile(self, **options: Any) -> _GALCore:  # type: ignore[override]
        """Run GAL's own arithmetic (everything between the model's forward and its backward)
        as one ``torch.compile``d function from now on (the fast path); returns ``self``.

        Same decisions as the eager step, values equal up to floating-point reassociation, far
        fewer kernel launches. ``options`` go to :func:`torch.compile` (``mode="reduce-overhead"``:
        CUDA graphs, as nothing in the step reads back to the host). The first step after
        ``compile()`` runs eagerly (a bad loss or h fails with the usual error), the second
        compiles; a new output shape, dtype or loss function compiles again. If the compiler
        fails, GAL warns and stays eager. An h without trainable parameters always runs eagerly
        (nothing to fuse for it). Not part of ``state_dict``.
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
        return {**self.__dict__, "_compiled": None}  # rebuilt on the next step; compiled code does not pickle


def _option(name: str) -> property:
    def get(self: _GALCore) -> Any:
        return getattr(self.config, name)

    def set_(self: _GALCore, value: Any) -> None:
        if name in READ_ONLY:
            raise AttributeError(f"{name} is fixed at construction (it shapes h); build a new GAL to change it")
        self.config = self.config.replace(**{name: value})

    return property(get, set_, doc=f"``config.{name}`` ({'read-only' if name in READ_ONLY else 'settable; validated'}).")


for _f in fields(GALConfig):
    setattr(_GALCore, _f.name, _option(_f.name))
del _f


@documented("output_dim")
class GAL(_GALCore):
    """Gradient adjustment learning on a model's outputs: ``GAL(output_dim, ratio, **options)``.

    Args:
        output_dim: size C of the vectors h reads (number of logits, targets or channels).
        ratio: the first option, positional or by name (see below).
        **options: keyword options, the fields of :class:`galcore.GALConfig` (below), validated
            by it: a misspelt one fails with its "unknown GAL option" message.
        h: a module to use as h instead of the release's linear stack (maps (..., C) to (..., C)),
            parameter-free too (e.g. a random direction: a placebo; nothing to train).
        config: a :class:`galcore.GALConfig` to take every option from instead (then pass
            no other option).

    Outputs may be one tensor or a list/tuple of tensors (multi-scale heads); ``loss_fn``
    receives the same structure. Counters ``num_steps``, ``num_accepted`` and
    ``num_fallbacks`` are buffers and, with h and the options, part of ``state_dict()``.
    The options are attributes: ``gal.ratio = 0.01`` (validated); ``hidden``, ``activation``,
    ``seed`` and ``dim`` are read-only.
    """

    def __init__(self, output_dim: int, ratio: float = UNSET, *, h: nn.Module | None = None,
                 config: GALConfig | None = None, **options: Any) -> None:
        super().__init__(output_dim, options_config(config, ratio, options, "GAL"), h)

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

    def _run(self, outputs: Outputs, loss_fn: LossFn, lr: float | Tensor, defer: bool) -> tuple[list[Tensor], _Pending]:
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable: outputs -> scalar loss")
        xs, dims, batch, rebuild = self._prepare(outputs)
        if not any(x.requires_grad for x in xs):  # as loss.backward() would
            raise RuntimeError(
                "outputs do not require grad (no graph to the model's parameters): call GAL on the model's "
                "outputs with autograd enabled; loss.backward() would fail the same way"
            )
        return xs, self._compute(xs, dims, batch, lambda z: loss_fn(rebuild(z)), lr, defer)

    def backward(self, outputs: Outputs, loss_fn: LossFn, lr: float | Tensor) -> GALStep:
        """Like ``loss_fn(outputs).backward()``, with GAL's chosen gradient at the outputs.

        Accumulates the chosen output gradient into the model's ``.grad`` (through
        ``outputs``' graph) and, once that succeeded, the remainder objective's gradient into h's.

        Args:
            outputs: model outputs with their graph, a tensor or a list/tuple of tensors.
            loss_fn: ``outputs -> scalar loss`` (e.g. ``lambda o: F.cross_entropy(o, y)``).
            lr: the optimizer's current learning rate (float > 0 or one-element tensor).
        Returns:
            A :class:`GALStep` of 0-d tensors.
        """
        _, step = self._run(outputs, loss_fn, lr, defer=True)
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
        xs, step = self._run(outputs, loss_fn, lr, defer=False)
        dtype = torch.float64 if xs[0].dtype == torch.float64 else torch.float32
        terms = [r if g is None else (r.to(dtype) * g.to(dtype)).sum() for r, g in zip(step.roots, step.grads, strict=True)]
        if step.objective is not None:  # NaN on a faulty step: keep it out of the value
            terms[-1] = torch.where(step.record.fallback, 0.0, step.objective)
        link = total([t.to(dtype) for t in terms])
        out = step.value.to(dtype) + (link - link.detach())
        self._commit(step)
        return out

    forward = surrogate


def __getattr__(name: str) -> Any:
    """``galcore.gal.ParamGAL``: it lives in :mod:`galcore.param` (built on :class:`_GALCore`)."""
    if name == "ParamGAL":
        from galcore.param import ParamGAL

        return ParamGAL
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
