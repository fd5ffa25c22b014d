"""The placebo arm: GAL's step with h replaced by a seeded random direction.

A :class:`PlaceboConfig` is a :class:`~galcore.experiments.harness.config.TrainConfig` (so
``replace``, ``run_arms`` and the cache treat it as any arm; its ``placebo`` field enters the
cache key) whose GAL builds h as :class:`RandomDirection`: a standard-normal vector per sample
per step from its own generator, seeded with h's seed (:func:`galcore.build.h_seed`:
``10_000 + seed`` unless ``gal.seed`` is set), so the init, data order and dropout masks are
those of the other arms of the seed. GAL rescales it to ``ratio * ||g_i||`` and applies its
acceptance rule; nothing is trained (h has no parameters).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from galcore.build import h_seed
from galcore.experiments.harness.config import TrainConfig

__all__ = ["PlaceboConfig", "RandomDirection", "is_placebo", "placebo_arm", "placebo_h"]


class RandomDirection(nn.Module):
    """The placebo's h: ``forward(x)`` is a standard-normal tensor shaped like ``x`` (its dtype and
    device), one fresh draw per call, from its own generator seeded ``seed`` (made on the first
    draw on a device). No parameters; the global random stream is not touched."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self._gen: torch.Generator | None = None

    def draw(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        if self._gen is None or self._gen.device != torch.device(device):
            self._gen = torch.Generator(device=device).manual_seed(self.seed)
        return torch.randn(tuple(shape), generator=self._gen, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        return self.draw(x.shape, x.dtype, x.device)

    def extra_repr(self) -> str:
        return f"seed={self.seed}"


@dataclass(frozen=True)
class PlaceboConfig(TrainConfig):
    """A GAL arm whose h is :class:`RandomDirection` (build it with :func:`placebo_arm`)."""

    placebo: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gal is None:
            raise ValueError("PlaceboConfig: gal must hold GAL's options (ratio, scale, acceptance rule)")

    @property
    def arm(self) -> str:
        return "placebo"


def placebo_arm(cfg: TrainConfig) -> PlaceboConfig:
    """The placebo control of the GAL arm ``cfg``: the same options, h a seeded random direction
    (h has nothing to learn: ``frozen_h``, ``h_optimizer`` and ``h_lr`` are cleared)."""
    if cfg.gal is None:
        raise ValueError("placebo_arm: cfg.gal is None; give a GAL arm (its ratio, scale and acceptance rule)")
    fields: dict[str, Any] = {k: getattr(cfg, k) for k in TrainConfig.__dataclass_fields__}
    fields.update(frozen_h=False, h_optimizer=None, h_lr=None, placebo=True)
    return PlaceboConfig(**fields)


def is_placebo(cfg: TrainConfig) -> bool:
    """Whether ``cfg`` is a placebo arm."""
    return bool(getattr(cfg, "placebo", False))


def placebo_h(cfg: TrainConfig) -> RandomDirection | None:
    """The h a run of ``cfg`` uses instead of GAL's own: :class:`RandomDirection` seeded with h's
    seed for a placebo arm, else ``None``."""
    if not is_placebo(cfg) or cfg.gal is None:
        return None
    return RandomDirection(h_seed(cfg.gal, cfg.seed))
