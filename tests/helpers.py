"""Helpers shared by the tests (not tests themselves)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__complex__")


class HostSync(AssertionError):
    pass


def _is_cpu_target(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    targets = [*args[:1], kwargs.get("device")]
    for t in targets:
        if isinstance(t, str) and t.startswith("cpu"):
            return True
        if isinstance(t, torch.device) and t.type == "cpu":
            return True
    return False


@contextlib.contextmanager
def tripwires(calls: list[str]) -> Iterator[None]:
    """Make every host read on a tensor raise (and record it) inside the block."""
    saved = {name: getattr(Tensor, name) for name in (*READS, "to")}

    def wire(name: str) -> Callable[..., Any]:
        def raiser(self: Tensor, *args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise HostSync(f"host sync in the training step: Tensor.{name}() on shape {tuple(self.shape)}")

        return raiser

    orig_to = saved["to"]

    def guarded_to(self: Tensor, *args: Any, **kwargs: Any) -> Any:
        if _is_cpu_target(args, kwargs):
            calls.append("to(cpu)")
            raise HostSync(f"host sync in the training step: Tensor.to(cpu) on shape {tuple(self.shape)}")
        return orig_to(self, *args, **kwargs)

    try:
        for name in READS:
            setattr(Tensor, name, wire(name))
        Tensor.to = guarded_to  # type: ignore[method-assign]
        yield
    finally:
        for name, fn in saved.items():
            setattr(Tensor, name, fn)
