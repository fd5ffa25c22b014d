"""The placebo arm of notebook 04: GAL with h replaced by seeded noise.

A minimal, regression-local control (the harness has no placebo arm on this branch): GAL built by
:func:`galcore.build.build_gal` with ``h=`` :class:`NoiseH`, a parameter-free module that returns
standard-normal noise shaped like its input (the model's outputs, (B, C)) from its own
generator. GAL rescales each row to ``r ||g_i||``, so the adjustment is a uniformly random
direction per sample per step with GAL's norm and GAL's acceptance rule, and no h that could learn.

How a run gets it: the arm's :class:`~galcore.experiments.harness.TrainConfig` is the frozen-h
GAL arm (so the harness builds no optimizer for an h), and :func:`run` trains it with
:class:`PlaceboHook`, which builds the placebo GAL when the run starts and routes every step's
``backward`` through it. The hook's ``key`` enters the cache key, so a placebo run is never read
back as a frozen-h run. The noise generator is seeded with the harness's h seed
(:func:`galcore.build.h_seed`) and never touches the global random stream, so the model's
initial weights and the batch order are those of every other arm of the seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from galcore import build
from galcore.experiments import harness
from galcore.experiments.harness import Data, RunResult, StepHook, TrainConfig
from galcore.gal import GAL, GALStep, ParamGAL

__all__ = ["NoiseH", "PlaceboHook", "run"]


class NoiseH(nn.Module):
    """h without parameters: ``forward(x)`` is standard-normal noise of ``x``'s shape, dtype
    and device, from this module's own generator (seeded with ``seed`` on the first call)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self._gen: torch.Generator | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self._gen is None or self._gen.device != x.device:
            self._gen = torch.Generator(device=x.device).manual_seed(self.seed)
        return torch.randn(x.shape, generator=self._gen, device=x.device, dtype=x.dtype)

    def extra_repr(self) -> str:
        return f"seed={self.seed}"


class PlaceboHook(StepHook):
    """Trains a run with GAL's h replaced by :class:`NoiseH`: at the start it builds
    ``build_gal(cfg.gal, run_seed=cfg.seed, h=NoiseH(h_seed))`` beside the harness's (unused,
    frozen) GAL, and each step's ``backward`` goes through the placebo GAL instead."""

    key = "placebo-noise-h"

    def __init__(self) -> None:
        self.gal: GAL | None = None

    def start(self, cfg: TrainConfig, model: nn.Module, gal: GAL | ParamGAL | None) -> None:
        if cfg.gal is None or not isinstance(gal, GAL):
            raise ValueError("the placebo arm needs an output-space GAL arm's config")
        noise = NoiseH(build.h_seed(cfg.gal, cfg.seed))
        device = next(model.parameters()).device
        placebo = build.build_gal(cfg.gal, run_seed=cfg.seed, output_dim=gal.output_dim, h=noise, device=device)
        assert isinstance(placebo, GAL)
        self.gal = placebo

    def backward(self, gal: GAL, out: Tensor, loss_of: Callable[[Tensor], Tensor], lr: float) -> GALStep:
        assert self.gal is not None, "start() was not called"
        return self.gal.backward(out, loss_of, lr)


def run(cfg: TrainConfig, data: Data, model_fn: Callable[[], nn.Module], cache: bool) -> RunResult:
    """One placebo run: :func:`harness.run` of ``cfg`` (a frozen-h GAL arm) with a fresh
    :class:`PlaceboHook`; the signature of :func:`harness.run_arms`' ``runner``."""
    if cfg.gal is None or not cfg.frozen_h:
        raise ValueError("cfg: give the frozen-h GAL arm's config (gal options set, frozen_h=True)")
    return harness.run(cfg, data, model_fn, cache=cache, hook=PlaceboHook())
