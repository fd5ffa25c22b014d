"""The release's GAL step, restated plainly: the oracle the fast code is tested against.

This is the paper's "one iteration" (Algorithm 1) written as directly as PyTorch allows, one operation per
line, with no fault handling, no dtype management and no speed tricks. ``galcore.GAL`` and
``galcore.ParamGAL`` must produce the same decisions and gradients (tests/test_reference.py),
in every option this function takes. Read this file to learn the method; read ``step.py`` for
what runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["reference_step"]


def reference_step(
    x: Tensor, loss_fn: Callable[[Tensor], Tensor], h: nn.Module, lr: float, *,
    ratio: float, scale: float = 1.0, first_order: str = "sum", accept: str = "decrease", normalize: str = "sample",
) -> tuple[Tensor, bool, Tensor]:
    """One GAL step at the point ``x``: a batch of outputs (B, C) or a parameter vector (P,).

    Returns ``(chosen, accepted, remainder)``: the gradient to send back at x (``g + a`` or
    ``g``), whether the adjusted step was accepted, and the Taylor remainder of the tentative
    step. As a side effect h's parameters' ``.grad`` accumulate the gradient of h's objective.
    """
    rows = x.detach().reshape(1, -1) if x.ndim == 1 else x.detach()  # one vector per row
    x0 = rows.clone().requires_grad_(True)
    loss0 = loss_fn(x0.reshape(x.shape))                               # 1. loss at x
    (g,) = torch.autograd.grad(loss0, x0)                               # 2. g = dL/dx, one row per vector
    a = h(x0.detach())                                                  # 3. h proposes a direction per row
    a = ratio * g.norm(dim=1, keepdim=True) * a / a.norm(dim=1, keepdim=True)  # 4. norm r |g_i|
    if normalize == "batch":                                            #    (option) bound the batch sum too
        a = a * torch.clamp(ratio * g.sum(0).norm() / a.sum(0).norm(), max=1.0)
    delta = lr * scale * (g + a)                                        # 5. tentative step
    loss1 = loss_fn((x0.detach() - delta).reshape(x.shape))
    inner = (delta * g).sum()                                           # <delta, g>, the first-order term
    if first_order == "mean":                                           # the release: a mean, not a sum
        inner = inner / (rows.shape[0] if x.ndim > 1 else x.numel())
    objective = (loss1 + inner - loss0.detach()).abs()                  # 6. h's objective |remainder|
    objective.backward()                                                #    (gradient to h only)
    accepted = accept == "always" or bool(loss1 <= loss0)               # 7. acceptance
    chosen = g + a.detach() if accepted else g                          # 8. the gradient sent back
    remainder = loss1.detach() - loss0.detach() + (delta * g).sum().detach()
    return chosen.reshape(x.shape), accepted, remainder
