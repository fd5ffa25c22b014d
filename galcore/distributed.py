"""GAL under ``torch.distributed`` (DDP): start h identical on every rank, and check it stays so.

GAL keeps h identical across ranks by all-reducing (averaging) h's gradient inside every step
when ``torch.distributed`` is initialised (``GAL(..., sync_distributed=True)``, the default),
so h is *not* wrapped in DDP. That keeps the ranks in step only if h starts identical:
either seed the same on every rank before building GAL, or call :func:`broadcast_gal` once
after building it (and after moving it to its device)::

    gal = galcore.GAL(10).to(device)
    galcore.distributed.broadcast_gal(gal)            # rank 0's h and counters everywhere
    model = DDP(model, device_ids=...)
    opt = torch.optim.SGD([*model.parameters(), *gal.parameters()], lr=0.05, momentum=0.9)

Both helpers are collective calls (every rank must call them) and are no-ops when
``torch.distributed`` is not initialised or the world has one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["broadcast_gal", "is_distributed", "max_rank_difference"]


def is_distributed() -> bool:
    """``torch.distributed`` is available, initialised and has more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _state_tensors(module: nn.Module) -> list[Tensor]:
    return [*(p.data for p in module.parameters()), *module.buffers()]


def broadcast_gal(module: nn.Module, src: int = 0, group: dist.ProcessGroup | None = None) -> None:
    """Copy ``src``'s parameters and buffers of ``module`` (a :class:`galcore.GAL`, or any module)
    to every rank, in place. Collective; a no-op outside a multi-process run.

    With the NCCL backend the module must already be on this rank's CUDA device.
    """
    if not is_distributed():
        return
    with torch.no_grad():
        for t in _state_tensors(module):
            dist.broadcast(t, src=src, group=group)


def max_rank_difference(module: nn.Module, group: dist.ProcessGroup | None = None) -> float:
    """Largest absolute difference, over all parameters and floating buffers of ``module``,
    between any rank's value and rank 0's (``0.0`` outside a multi-process run).

    Collective, and it reads the result back to the host: a check for the end of a run or
    of an epoch, not for the training step. Integer buffers (GAL's counters, which may differ
    legitimately: each rank accepts or rejects its own batch) are skipped.
    """
    if not is_distributed():
        return 0.0
    tensors = [t for t in _state_tensors(module) if t.is_floating_point()]
    if not tensors:
        return 0.0
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
    ref = flat.clone()
    dist.broadcast(ref, src=0, group=group)
    diff = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX, group=group)
    return float(diff.item())
