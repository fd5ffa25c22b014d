"""Optimizers by name, as the release uses them (Lookahead and AdaBound from ``torch-optimizer``).

``torch-optimizer`` (github.com/jettify/pytorch-optimizer) supplies Lookahead and AdaBound;
it is imported only when one of them is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop", "lookahead", "adabound")

__all__ = ["OPTIMIZERS", "current_lr", "make_optimizer"]


def _torch_optimizer() -> Any:
    try:
        import torch_optimizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("Lookahead and AdaBound need the 'torch-optimizer' package: pip install torch-optimizer") from e
    return torch_optimizer


def make_optimizer(name: str, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float, **kw: Any) -> torch.optim.Optimizer:
    """Build an optimizer by name.

    - ``sgd``: plain SGD; ``momentum``: SGD with ``momentum=0.9`` (override with ``momentum=``).
    - ``adam``, ``rmsprop``: torch's, extra keywords passed through.
    - ``lookahead``: Lookahead (``k=5``, ``alpha=0.5`` unless given) over SGD with momentum 0.9
      (``inner=`` another name to wrap another optimizer).
    - ``adabound``: AdaBound (``final_lr=0.1``, ``gamma=1e-3`` unless given).
    """
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    key = name.lower()
    if key == "sgd":
        return torch.optim.SGD(params, lr=lr, **kw)
    if key == "momentum":
        kw.setdefault("momentum", 0.9)
        return torch.optim.SGD(params, lr=lr, **kw)
    if key == "adam":
        return torch.optim.Adam(params, lr=lr, **kw)
    if key == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, **kw)
    if key == "lookahead":
        k = kw.pop("k", 5)
        alpha = kw.pop("alpha", 0.5)
        inner = make_optimizer(kw.pop("inner", "momentum"), params, lr, **kw)
        return _torch_optimizer().Lookahead(inner, k=k, alpha=alpha)  # type: ignore[no-any-return]
    if key == "adabound":
        kw.setdefault("final_lr", 0.1)
        kw.setdefault("gamma", 1e-3)
        return _torch_optimizer().AdaBound(params, lr=lr, **kw)  # type: ignore[no-any-return]
    raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The first parameter group's learning rate (what GAL's tentative step uses)."""
    return float(optimizer.param_groups[0]["lr"])
