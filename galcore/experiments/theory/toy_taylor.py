"""Taylor illustrations for the theory notebook: the true loss along a step against its first-
and second-order models, and the remainder as a function of the step size.

For a scalar function f, a point w and a step d, ``remainder_terms(f, w, t * d)`` gives
``f(w + t d)``, the first-order term ``t <g, d>`` and the second-order term
``t^2 / 2 d^T H d``; the remainder ``r1`` is O(t^2) and ``r2`` (beyond second order) O(t^3),
so on log-log axes their slopes tend to 2 and 3 as t -> 0 (where the Hessian term is not zero).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from galcore.remainder import remainder_terms

__all__ = ["TaylorGrid", "TaylorLine", "loglog_slope", "remainder_vs_step", "taylor_grid", "taylor_line"]


@dataclass(frozen=True)
class TaylorLine:
    """``f(w + t d)`` and its models along a line; every field is a ``(len(ts),)`` numpy array.

    ``first = f(w) + t <g, d>``, ``second = first + t^2 / 2 d^T H d``; ``r1 = true - first`` (the
    remainder), ``r2 = true - second``.
    """

    ts: np.ndarray
    true: np.ndarray
    first: np.ndarray
    second: np.ndarray
    r1: np.ndarray
    r2: np.ndarray


def _line_terms(f: Callable[[Tensor], Tensor], w: Tensor, d: Tensor, ts: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(len(ts), 6)`` rows of (loss_before, loss_after, first_order, second_order, r1, r2) in float64."""
    w = torch.as_tensor(w, dtype=torch.float64)
    d = torch.as_tensor(d, dtype=torch.float64)
    tt = torch.as_tensor(np.asarray(ts, dtype=np.float64))

    def one(t: Tensor) -> Tensor:
        rt = remainder_terms(f, w, t * d)
        return torch.stack([rt.loss_before, rt.loss_after, rt.first_order, rt.second_order, rt.r1, rt.r2])

    try:
        return torch.func.vmap(one)(tt).detach().numpy()
    except (RuntimeError, NotImplementedError):  # pragma: no cover - an f that vmap cannot batch
        return torch.stack([one(t) for t in tt]).detach().numpy()


def taylor_line(f: Callable[[Tensor], Tensor], w: Tensor, d: Tensor, ts: Sequence[float] | np.ndarray) -> TaylorLine:
    """The true loss ``f(w + t d)`` and its first/second-order Taylor models at ``w``, for each t.

    Args:
        f: a scalar function of a tensor shaped like ``w`` (evaluated in float64).
        w: the expansion point; d: the direction (a step is ``t * d``).
        ts: the step multipliers.
    """
    rows = _line_terms(f, w, d, ts)
    loss0 = rows[:, 0]
    first = loss0 + rows[:, 2]
    second = first + rows[:, 3]
    return TaylorLine(np.asarray(ts, dtype=np.float64), rows[:, 1], first, second, rows[:, 4], rows[:, 5])


def remainder_vs_step(
    f: Callable[[Tensor], Tensor], w: Tensor, etas: Sequence[float] | np.ndarray, d: Tensor | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Remainders of the steps ``w -> w + eta d`` (default ``d = -grad f(w)``: gradient descent
    with learning rate eta), for each eta. Returns ``(etas, r1, r2)`` as float64 numpy arrays."""
    w = torch.as_tensor(w, dtype=torch.float64)
    if d is None:
        d = -torch.func.grad(f)(w)
    rows = _line_terms(f, w, d, etas)
    return np.asarray(etas, dtype=np.float64), rows[:, 4], rows[:, 5]


def loglog_slope(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Least-squares slope of ``log|y|`` against ``log x`` (entries with ``y == 0`` are dropped)."""
    xa, ya = np.asarray(x, dtype=np.float64), np.abs(np.asarray(y, dtype=np.float64))
    keep = (xa > 0) & (ya > 0) & np.isfinite(ya)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(xa[keep]), np.log(ya[keep]), 1)[0])


@dataclass(frozen=True)
class TaylorGrid:
    """f and its Taylor models at ``w`` on a square grid of 2-D steps; arrays are ``(n, n)``.

    ``DX``, ``DY`` are the step components (``w + (DX, DY)`` is the point).
    """

    DX: np.ndarray
    DY: np.ndarray
    true: np.ndarray
    first: np.ndarray
    second: np.ndarray

    @property
    def r1(self) -> np.ndarray:
        return self.true - self.first

    @property
    def r2(self) -> np.ndarray:
        return self.true - self.second


def taylor_grid(f: Callable[[Tensor], Tensor], w: Tensor, radius: float, n: int = 61) -> TaylorGrid:
    """f and its first/second-order models around a 2-D point ``w`` on ``[-radius, radius]^2``.

    ``f`` maps a ``(..., 2)`` tensor to ``(...)`` (e.g. :func:`galcore.experiments.theory.surface.surface`); the
    gradient and Hessian at ``w`` come from ``torch.func`` in float64.
    """
    w = torch.as_tensor(w, dtype=torch.float64)
    if w.shape != (2,):
        raise ValueError(f"taylor_grid needs a 2-D point, got shape {tuple(w.shape)}")
    g = torch.func.grad(f)(w)
    H = torch.func.hessian(f)(w)
    s = torch.linspace(-radius, radius, n, dtype=torch.float64)
    DX, DY = torch.meshgrid(s, s, indexing="xy")
    D = torch.stack([DX, DY], dim=-1)
    with torch.no_grad():
        true = f(w + D)
        f0 = f(w)
    first = f0 + D @ g
    second = first + 0.5 * torch.einsum("...i,ij,...j->...", D, H, D)
    return TaylorGrid(DX.numpy(), DY.numpy(), true.numpy(), first.detach().numpy(), second.detach().numpy())
