"""What h receives in a regression run (:func:`h_probe`): the run goes through the harness's one
loop (:func:`galcore.experiments.harness.run`) with a :class:`ProbeHook` that measures, after each
step's ``gal.backward``, the gradient norms of h and of the model."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from galcore.experiments import harness
from galcore.experiments.harness import Setup, StepHook, TrainConfig
from galcore.experiments.harness.optim import make_optimizer
from galcore.gal import GAL, GALStep

__all__ = ["ProbeHook", "h_probe"]


def _norm(params: Any) -> Tensor:
    zero = torch.zeros((), dtype=torch.float64)
    return torch.sqrt(sum(((p.grad.double() ** 2).sum() for p in params if p.grad is not None), zero))


class ProbeHook(StepHook):
    """Per step (device tensors; read once at the end): the norm of h's gradient (all its
    trainable parameters) and of the model's, right after ``gal.backward``; acceptance and
    |remainder| (adjusted and plain). ``result`` holds :func:`h_probe`'s numbers after the run."""

    def __init__(self) -> None:
        self.h_norms: list[Tensor] = []
        self.m_norms: list[Tensor] = []
        self.records: list[GALStep] = []
        self.result: dict[str, float] = {}

    def start(self, cfg: TrainConfig, model: torch.nn.Module, gal: Any) -> None:
        self.cfg, self.model, self.gal = cfg, model, gal
        self.h0 = [p.detach().clone() for p in gal.h.parameters()]

    def backward(self, gal: GAL, out: Tensor, loss_of: Any, lr: float) -> GALStep:
        rec = gal.backward(out, loss_of, lr)
        with torch.no_grad():
            self.h_norms.append(_norm([p for p in gal.h.parameters() if p.requires_grad]))
            self.m_norms.append(_norm(self.model.parameters()))
        self.records.append(rec)
        return rec

    def end_run(self, final: dict[str, float]) -> None:
        cfg, gal = self.cfg, self.gal
        with torch.no_grad():
            drift = max(float((p - p0).abs().max()) for p, p0 in zip(gal.h.parameters(), self.h0, strict=True))
        # h has its own optimizer when it learns and h_optimizer or h_lr is set (harness.optimizers)
        own = any(p.requires_grad for p in gal.h.parameters()) and (cfg.h_optimizer is not None or cfg.h_lr is not None)
        probe = make_optimizer(cfg.h_optimizer or "momentum", [torch.zeros(1, requires_grad=True)], 1.0) if own else None
        nan = torch.tensor(float("nan"))
        rem = torch.stack([r.remainder.abs() for r in self.records]).double()
        plain = torch.stack([r.remainder_plain.abs() if r.remainder_plain is not None else nan for r in self.records]).double()
        hn, mn = torch.stack(self.h_norms), torch.stack(self.m_norms)
        self.result = {
            "steps": float(len(self.h_norms)),
            "h_grad_median": float(hn.median()),
            "h_grad_max": float(hn.max()),
            "model_grad_median": float(mn.median()),
            "h_drift": drift,
            "h_eps": float(probe.defaults.get("eps", math.nan)) if probe is not None else math.nan,
            "accept_rate": float(torch.stack([r.accepted for r in self.records]).double().mean()),
            "remainder_ratio": float(rem.mean() / plain.mean()),
        }


def h_probe(cfg: TrainConfig, setup: Setup, *, epochs: int | None = None) -> dict[str, float]:
    """Train one GAL arm through :func:`galcore.experiments.harness.run` (``epochs`` overrides
    ``cfg.epochs``) with a :class:`ProbeHook`, and report what h receives.

    Returns host floats:
        ``outputs``: C. ``steps``: optimizer steps.
        ``h_grad_median`` / ``h_grad_max``: the norm of h's gradient (all its parameters) per
        step, median and largest. ``model_grad_median``: the model's, for scale.
        ``h_drift``: the largest absolute change of any h weight over the run.
        ``h_eps``: the ``eps`` of h's optimizer when it has one (Adam: steps are about
        ``lr * grad / (|grad| + eps)``, so a gradient far below eps barely moves h), else NaN.
        ``accept_rate``; ``remainder_ratio``: mean |remainder| of the adjusted steps over the
        plain steps' (needs ``track_plain``); ``test_rmse`` at the last epoch.
    """
    if cfg.gal is None:
        raise ValueError("cfg must be a GAL arm (cfg.gal set)")
    run_cfg = cfg if epochs is None else replace(cfg, epochs=epochs)
    hook = ProbeHook()
    res = harness.run(run_cfg, setup.data, setup.model_fn, hook=hook)
    return {"outputs": float(setup.data.num_outputs), **hook.result, "test_rmse": res.history[-1]["test_rmse"]}
