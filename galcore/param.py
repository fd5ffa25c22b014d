"""GAL in parameter space (:class:`ParamGAL`): h reads the flattened parameters and adjusts the
parameter gradient, as the release's 3D toy does."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from galcore.config import UNSET, GALConfig, documented, options_config
from galcore.gal import LossFn, _GALCore, _Pending
from galcore.step import GALStep

__all__ = ["ParamGAL"]


@documented("params")
class ParamGAL(_GALCore):
    """GAL in parameter space (the release's 3D toy): h reads the flattened parameters and
    adjusts the parameter gradient. Affordable only for small models (h is P x P-sized).

    Args:
        params: an ``nn.Module`` (``loss_fn`` then receives ``{name: tensor}``, ready for
            ``torch.func.functional_call``) or an iterable of floating tensors (``loss_fn``
            receives a list shaped like them).
        ratio, **options, h, config: as :class:`GAL` (``dim`` and ``normalize`` do not apply). With
            ``first_order="mean"`` the first-order term is averaged over the vector's P elements,
            as the release's toy does.

    GAL's arithmetic runs in ``compute_dtype`` (or the parameters' promoted dtype), and ``loss_fn``
    receives the parameters in that dtype, so that the losses it compares are as precise. If
    ``loss_fn`` raises a ``RuntimeError`` there (a float32 input against float64 parameters),
    ParamGAL warns once and hands it the parameters in their own dtypes from then on. Each
    gradient is returned in its tensor's dtype.
    """

    def __init__(self, params: nn.Module | Iterable[Tensor], ratio: float = UNSET, *, h: nn.Module | None = None,
                 config: GALConfig | None = None, **options: Any) -> None:
        if isinstance(params, nn.Module):
            named = [(n, p) for n, p in params.named_parameters() if p.requires_grad]
            names: list[str] | None = [n for n, _ in named]
            plist = [p for _, p in named]
        else:
            names, plist = None, [params] if isinstance(params, Tensor) else list(params)
        if not plist:
            raise ValueError("params: ParamGAL needs at least one parameter")
        for i, p in enumerate(plist):
            if not isinstance(p, Tensor) or not p.is_floating_point():
                got = p.dtype if isinstance(p, Tensor) else type(p).__name__
                raise TypeError(f"params[{i}] must be a floating-point tensor, got {got}")
        if len({p.device for p in plist}) > 1:
            raise ValueError(f"params must be on one device, got {sorted({str(p.device) for p in plist})}")
        config = options_config(config, ratio, options, "ParamGAL")
        super().__init__(sum(p.numel() for p in plist), config, h)
        # plain attributes: the model's parameters must not become GAL's parameters
        object.__setattr__(self, "_targets", plist)
        object.__setattr__(self, "_names", names)
        dtype = plist[0].dtype
        for p in plist[1:]:
            dtype = torch.promote_types(dtype, p.dtype)
        object.__setattr__(self, "_flat_dtype", dtype)
        self._own_dtypes = False  # set when loss_fn failed on parameters in GAL's compute dtype

    def backward(self, loss_fn: LossFn, lr: float | Tensor) -> GALStep:
        """One GAL step on the parameters: accumulates the chosen gradient into their ``.grad``
        and the objective's gradient into h's ``.grad``. ``loss_fn`` maps parameters (dict or
        list, see the class) to a scalar loss."""
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable: parameters -> scalar loss")
        targets: list[Tensor] = self._targets  # type: ignore[has-type]
        names: list[str] | None = self._names  # type: ignore[has-type]
        sizes = [p.numel() for p in targets]
        flat = torch.cat([p.detach().reshape(-1).to(self._flat_dtype) for p in targets]).requires_grad_(True)

        def run(own: bool) -> _Pending:
            def loss_of(z: list[Tensor]) -> Tensor:
                parts = [t.view(p.shape).to(p.dtype) if own else t.view(p.shape)
                         for t, p in zip(z[0].split(sizes), targets, strict=True)]
                return loss_fn(dict(zip(names, parts, strict=True)) if names is not None else parts)

            return self._compute([flat], [0], flat.numel(), loss_of, lr, defer=True)

        if self._own_dtypes:
            step = run(True)
        else:
            try:
                step = run(False)
            except RuntimeError as err:
                work = self._work_dtype(flat)
                if all(p.dtype == work for p in targets):
                    raise
                step = run(True)  # if loss_fn fails here too, its error stands (chained to the first)
                self._own_dtypes = True
                warnings.warn(
                    f"ParamGAL: loss_fn failed on the parameters in compute_dtype={work} ({type(err).__name__}: "
                    f"{err}); it gets them in their own dtypes from now on, so the losses GAL compares round at "
                    f"their precision. To keep {work}, cast loss_fn's inputs to the parameters' dtype "
                    "(x.to(p['weight'].dtype)); to silence this, set compute_dtype=None",
                    RuntimeWarning, stacklevel=2)
        torch.autograd.backward(step.roots, step.grads)  # into flat.grad (h's: kept for _commit)
        grad = torch.zeros_like(flat) if flat.grad is None else flat.grad
        for p, gp in zip(targets, grad.split(sizes), strict=True):  # .grad += gp, as backward() does
            p.grad = gp.view(p.shape).to(p.dtype, copy=True) if p.grad is None else p.grad.add_(gp.view(p.shape))
        return self._commit(step)
