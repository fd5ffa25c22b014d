"""The rounding-level watch: warn once when h's objective keeps sitting at the rounding level of
GAL's arithmetic, so h learns from rounding noise or not at all.

GAL counts such steps in a device tensor (no host read in the step). Every
:data:`ZERO_OBJECTIVE_STEPS` steps :meth:`RoundingWatch.look` judges the window: on a CPU at once;
on a GPU the count is copied to pinned host memory without waiting, with a CUDA event, and read
at a later look once the copy is done, so the step never waits for the device.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

#: GAL warns once when, over a window of this many steps, h's objective sat at the rounding
#: level of GAL's arithmetic (``<= 4 eps |loss|``, exactly 0 included) on at least half of them
ZERO_OBJECTIVE_STEPS = 50


class RoundingWatch:
    """State of the watch between looks (plain Python; not part of a state dict)."""

    def __init__(self) -> None:
        self.pending: tuple[Tensor, Any, int] | None = None  # (host copy, CUDA event, steps in its window)
        self.window_start = 0
        self.warned = False

    def due(self, steps: int) -> bool:
        """Whether to look after ``steps`` completed steps."""
        return not self.warned and steps % ZERO_OBJECTIVE_STEPS == 0

    def look(self, count: Tensor, steps: int, compute_dtype: torch.dtype | None) -> None:
        """Judge the windows whose counts are readable, and start reading the current one
        (``count``: its steps at the rounding level; zeroed here)."""
        if self.pending is not None:
            host, event, n = self.pending
            if event is not None and not event.query():
                return  # not copied yet: look again next time
            self.pending = None
            if self._judge(int(host), n, compute_dtype):
                return
        n = steps - self.window_start
        self.window_start = steps
        if count.device.type == "cpu":  # no device to wait for: judge it now
            value = count.clone()
            count.zero_()
            self._judge(int(value), n, compute_dtype)
        elif count.device.type == "cuda":
            host = torch.empty((), dtype=count.dtype, pin_memory=True)
            host.copy_(count, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            count.zero_()
            self.pending = (host, event, n)
        else:  # meta and other devices: nothing to read
            count.zero_()

    def _judge(self, at_rounding: int, steps: int, compute_dtype: torch.dtype | None) -> bool:
        if steps < 1 or 2 * at_rounding < steps:
            return False
        self.warned = True
        msg = (f"on {at_rounding} of the last {steps} steps h's objective was at the rounding level of GAL's "
               f"arithmetic (compute_dtype={compute_dtype}; exactly 0 or a few ulp of the loss), so h learns "
               "from rounding noise or not at all. Use compute_dtype=torch.float64 (the default) or a larger scale, "
               "and check that lr is not tiny")
        warnings.warn(f"GAL: {msg}", RuntimeWarning, stacklevel=6)
        return True

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "pending": None}  # a CUDA event does not pickle
