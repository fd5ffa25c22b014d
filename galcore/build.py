"""Build GAL for one training run: the one rule for h's seed, the frozen-h control, the device.

Every caller that trains a GAL arm (the experiments' harness, the Ultralytics trainer, the
ImageNet recipe) builds it here, so h is drawn the same way everywhere: from its own generator
seeded with ``config.seed`` or, when that is ``None``, ``H_SEED_OFFSET + run_seed``. The global
random stream (model init, dropout, data order) is then the same with or without GAL.
"""

from __future__ import annotations

import torch
from torch import nn

from galcore.config import GALConfig
from galcore.gal import GAL, ParamGAL

__all__ = ["H_SEED_OFFSET", "build_gal", "h_seed"]

#: offset of h's seed from the run's seed (h's draws never coincide with the model's)
H_SEED_OFFSET = 10_000


def h_seed(config: GALConfig, run_seed: int) -> int:
    """h's seed for a run seeded with ``run_seed``: ``config.seed`` if set, else ``H_SEED_OFFSET + run_seed``."""
    return int(config.seed) if config.seed is not None else H_SEED_OFFSET + int(run_seed)


def build_gal(
    config: GALConfig,
    *,
    run_seed: int,
    output_dim: int | None = None,
    model: nn.Module | None = None,
    frozen: bool = False,
    h: nn.Module | None = None,
    device: torch.device | str | None = None,
) -> GAL | ParamGAL:
    """:class:`GAL` for outputs of ``output_dim`` (or :class:`ParamGAL` over ``model``'s
    parameters: give exactly one), h seeded by :func:`h_seed`, on ``device``. ``frozen``: h keeps
    its random initial weights (``requires_grad=False``; the control arm). ``h``: a custom h
    module instead of GAL's own."""
    if not isinstance(config, GALConfig):
        raise TypeError(f"config must be a GALConfig, got {type(config).__name__}")
    if (output_dim is None) == (model is None):
        raise ValueError("give exactly one of output_dim (output-space GAL) and model (ParamGAL)")
    config = config.replace(seed=h_seed(config, run_seed))
    gal: GAL | ParamGAL = GAL(output_dim, h=h, config=config) if model is None else ParamGAL(model, h=h, config=config)
    if frozen:
        gal.h.requires_grad_(False)
    return gal if device is None else gal.to(device)
