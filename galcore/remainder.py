"""Remainder diagnostics: how far a real step is from its first-order prediction.

For a loss f, a point w and a step d (so the new point is ``w + d``):

- ``first_order = <grad f(w), d>``
- ``r1 = f(w + d) - f(w) - first_order``   (the whole Taylor remainder)
- ``second_order = 0.5 * d^T H(w) d``       (Hessian-vector product by ``torch.func``)
- ``r2 = r1 - second_order``                (what is left beyond second order)

On a quadratic ``r1 == second_order`` and ``r2 == 0``. :func:`remainder_terms` works on any
function of a tensor or a pytree of tensors; :class:`RemainderProbe` measures the real
optimizer step of a model on a batch without changing the training trajectory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, jvp, vjp
from torch.utils._pytree import tree_map

__all__ = ["RemainderProbe", "RemainderTerms", "output_remainder", "remainder_terms"]


@dataclass(frozen=True)
class RemainderTerms:
    """Terms of the Taylor expansion of one step (0-d tensors, no host sync)."""

    loss_before: Tensor
    loss_after: Tensor
    first_order: Tensor
    second_order: Tensor
    r1: Tensor
    r2: Tensor

    def to_dict(self) -> dict[str, float]:
        """Python floats (reads the values to the host)."""
        return {f.name: float(getattr(self, f.name).detach().cpu()) for f in fields(self)}


def _dot(a: Any, b: Any) -> Tensor:
    la = [t for t in torch.utils._pytree.tree_leaves(a)]
    lb = [t for t in torch.utils._pytree.tree_leaves(b)]
    return torch.stack([(x * y).sum() for x, y in zip(la, lb, strict=True)]).sum()


def remainder_terms(f: Callable[[Any], Tensor], w: Any, d: Any) -> RemainderTerms:
    """Taylor terms of the step ``w -> w + d`` for a scalar function ``f``.

    Args:
        f: maps ``w`` (a tensor or a pytree of tensors, e.g. a dict of parameters) to a
            0-d tensor.
        w: the point before the step.
        d: the step, same structure and shapes as ``w``.
    """
    w = tree_map(lambda t: t.detach(), w)
    d = tree_map(lambda t: t.detach(), d)
    gv = grad_and_value(f)
    try:
        (g, loss0), (hd, first) = jvp(gv, (w,), (d,))  # forward-over-reverse
    except (RuntimeError, NotImplementedError):  # an op without forward-mode AD
        (g, loss0), pull = vjp(gv, w)
        first = _dot(g, d)
        # reverse-over-reverse: H d = d/dw <grad f(w), d>
        (hd,) = vjp(lambda x: _dot(torch.func.grad(f)(x), d), w)[1](torch.ones_like(first))
        del pull
    with torch.no_grad():
        w1 = tree_map(lambda a, b: a + b, w, d)
        loss1 = f(w1).detach()
    first = first.detach()
    second = 0.5 * _dot(d, hd).detach()
    r1 = loss1 - loss0.detach() - first
    return RemainderTerms(loss0.detach(), loss1, first, second, r1, r1 - second)


def output_remainder(loss_fn: Callable[[Tensor], Tensor], x: Tensor, delta: Tensor) -> Tensor:
    """Remainder of the output-space step ``x -> x - delta``: ``L(x - delta) - L(x) + <g, delta>``.

    The sign convention of a descent step (GAL's tentative step). 0-d tensor.
    """
    x0 = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss0 = loss_fn(x0)
        (g,) = torch.autograd.grad(loss0, x0)
    with torch.no_grad():
        return (loss_fn(x.detach() - delta) - loss0.detach() + (g * delta).sum()).detach()


@contextlib.contextmanager
def _batch_stats_frozen(model: nn.Module) -> Iterator[None]:
    """Batch-norm layers use batch statistics as in training but do not update running ones."""
    changed = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            m.track_running_stats = False
            changed.append(m)
    try:
        yield
    finally:
        for m in changed:
            m.track_running_stats = True


class RemainderProbe:
    """Measures the parameter-space remainder of real optimizer steps, every ``every`` calls.

    Usage, inside any loop (the measured step is the optimizer's own)::

        probe = RemainderProbe(model, every=10)
        ...
        with probe.measure(lambda out: F.cross_entropy(out, y), x):
            opt.step()
        # probe.history: list of (call index, RemainderTerms)

    The loss is re-evaluated functionally (``torch.func.functional_call``) at the weights
    before and after the step on the same batch; the model, its buffers (batch-norm running
    statistics) and the global RNG are left untouched, so the training trajectory is the
    same with or without the probe. Dropout masks are the same for every evaluation of one
    measurement (a fixed seed inside a forked RNG).

    Args:
        model: the module being trained.
        every: measure one call in ``every``.
        dtype: evaluate in this dtype (e.g. ``torch.float64`` for small remainders); ``None``
            keeps the model's.
    """

    def __init__(self, model: nn.Module, every: int = 1, dtype: torch.dtype | None = None) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.model = model
        self.every = int(every)
        self.dtype = dtype
        self.calls = 0
        self.history: list[tuple[int, RemainderTerms]] = []

    def _cast(self, t: Tensor) -> Tensor:
        return t.to(self.dtype) if self.dtype is not None and t.is_floating_point() else t

    @contextlib.contextmanager
    def measure(self, loss_fn: Callable[[Any], Tensor], *inputs: Any) -> Iterator[None]:
        """Context around one optimizer step; records its remainder when this call is due."""
        index = self.calls
        self.calls += 1
        if index % self.every != 0:
            yield
            return
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        params = dict(self.model.named_parameters())
        before = {n: params[n].detach().clone() for n in names}
        yield
        after = {n: params[n].detach() for n in names}
        self.history.append((index, self.terms(loss_fn, before, after, *inputs)))

    def terms(self, loss_fn: Callable[[Any], Tensor], before: dict[str, Tensor], after: dict[str, Tensor], *inputs: Any) -> RemainderTerms:
        """Remainder terms of the step ``before -> after`` (dicts of parameter tensors)."""
        model = self.model
        frozen = {n: self._cast(p.detach()) for n, p in model.named_parameters() if n not in before}
        buffers = {n: self._cast(b.detach().clone()) for n, b in model.named_buffers()}
        cast_inputs = tuple(self._cast(x) if isinstance(x, Tensor) else x for x in inputs)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(self.calls)))
        devices = [p.device for p in before.values() if p.device.type == "cuda"]

        def f(w: dict[str, Tensor]) -> Tensor:
            torch.manual_seed(seed)
            out = functional_call(model, {**w, **frozen, **buffers}, cast_inputs)
            return loss_fn(out)

        w0 = {n: self._cast(t) for n, t in before.items()}
        d = {n: self._cast(after[n]) - w0[n] for n in before}
        with torch.random.fork_rng(devices=devices), _batch_stats_frozen(model):
            return remainder_terms(f, w0, d)
