"""How far one optimizer step moves the detection head's outputs (:class:`StepProbe`), against
GAL's output-space tentative step ``eta * g``."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["StepProbe"]


class StepProbe:
    """Ultralytics callback: at the end of the chosen epochs, measure on one fixed training
    batch what one optimizer step does to the detection head's outputs x (B, no, A).

    On a copy of nothing: the model's and the optimizer's states (and every random stream)
    are saved before and restored after, so the run continues exactly as without the probe.
    For the batch (the first ``batch`` training images, augmented as in training), with g the
    gradient of Ultralytics' loss (the sum that it backpropagates) w.r.t. x and ``eta`` the
    weight group's current lr (the step GAL's tentative point uses with ``scale=1``):

    - ``step_norm``: ``||dx||`` where ``dx = x(after) - x(before)`` for one step of the run's
      optimizer (its state included) on the plain gradient, Ultralytics' clipping included;
    - ``eta_g_norm``: ``||eta g||``; ``ratio = step_norm / eta_g_norm``;
    - ``cosine``: between ``dx`` and ``-g``;
    - ``loss_change``: the loss change of that step; ``first_order``: ``<g, dx>``;
      ``remainder_actual``: ``loss_change - first_order``;
    - ``tentative_change``: ``L(x - eta g) - L(x)`` and ``remainder_tentative``: its remainder;
    - the same three norms for one plain SGD step (no momentum, same lr): ``sgd_ratio``,
      ``sgd_cosine``; and CPU seconds of a forward (``t_forward``) and of a backward
      (``t_backward``) of the model on the batch.

    Rows accumulate in :attr:`rows` (one per probed epoch).
    """

    def __init__(self, epochs: Sequence[int], batch: int = 16, clip: float = 10.0) -> None:
        self.epochs = {int(e) for e in epochs}
        self.batch = batch
        self.clip = clip
        self.rows: list[dict[str, float]] = []

    def attach(self, model: Any) -> StepProbe:
        model.add_callback("on_train_epoch_end", self)
        return self

    def __call__(self, trainer: Any) -> None:
        if trainer.epoch + 1 not in self.epochs:
            return
        import numpy as np
        import torch

        states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        try:
            self.rows.append({"epoch": float(trainer.epoch + 1), **self.measure(trainer)})
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])

    def _batch(self, trainer: Any) -> dict[str, Any]:
        ds = trainer.train_loader.dataset
        items = [ds[i] for i in range(min(self.batch, len(ds)))]
        return trainer.preprocess_batch(ds.collate_fn(items))

    def measure(self, trainer: Any) -> dict[str, float]:
        """The row for the trainer's current state (see the class docstring)."""
        import torch
        from ultralytics.utils.torch_utils import unwrap_model

        from galcore.integrations.ultralytics import GALCriterion

        model = unwrap_model(trainer.model)
        opt = trainer.optimizer
        inner = model.criterion.inner if isinstance(model.criterion, GALCriterion) else model.criterion
        if inner is None:
            inner = model.init_criterion()
        saved_model = copy.deepcopy(model.state_dict())
        saved_opt = copy.deepcopy(opt.state_dict())
        was_training = model.training
        batch = self._batch(trainer)
        img = batch["img"]

        def outputs() -> tuple[torch.Tensor, Any]:
            preds = model(img)
            xs, rebuild, _ = GALCriterion._split(preds)
            return torch.cat(xs, dim=-1), (xs, rebuild)

        def loss_at(x: torch.Tensor, parts: Any) -> torch.Tensor:
            xs, rebuild = parts
            return inner(rebuild(list(x.split([t.shape[-1] for t in xs], dim=-1))), batch)[0].sum()

        lr = next((g["lr"] for g in opt.param_groups if g.get("param_group") == "weight"), opt.param_groups[0]["lr"])
        row: dict[str, float] = {"lr": float(lr)}
        try:
            model.train()
            opt.zero_grad()
            c0 = time.process_time()
            x, parts = outputs()
            row["t_forward"] = time.process_time() - c0
            loss = loss_at(x, parts)
            (g,) = torch.autograd.grad(loss, x, retain_graph=True)
            c0 = time.process_time()
            loss.backward()
            row["t_backward"] = time.process_time() - c0
            params = [p for p in model.parameters() if p.requires_grad]
            grads = [None if p.grad is None else p.grad.clone() for p in params]
            x0, l0 = x.detach(), float(loss.detach())
            with torch.no_grad():
                eta_g = lr * g
                row["eta_g_norm"] = float(eta_g.norm())
                row["tentative_change"] = float(loss_at(x0 - eta_g, parts)) - l0
                row["remainder_tentative"] = row["tentative_change"] + float((g * eta_g).sum())
            for name, step in (("", self._step_actual), ("sgd_", self._step_sgd)):
                model.load_state_dict(saved_model)
                opt.load_state_dict(copy.deepcopy(saved_opt))  # load_state_dict aliases the tensors it is given
                for p, gp in zip(params, grads, strict=True):
                    p.grad = None if gp is None else gp.clone()
                step(model, opt, lr)
                with torch.no_grad():
                    x1, _ = outputs()
                    dx = x1 - x0
                    row[f"{name}step_norm"] = float(dx.norm())
                    row[f"{name}ratio"] = row[f"{name}step_norm"] / row["eta_g_norm"]
                    row[f"{name}cosine"] = float(-(dx * g).sum() / (dx.norm() * g.norm()))
                    if not name:
                        change = float(loss_at(x1, parts)) - l0
                        row["loss_change"] = change
                        row["first_order"] = float((g * dx).sum())
                        row["remainder_actual"] = change - row["first_order"]
        finally:
            model.load_state_dict(saved_model)
            opt.load_state_dict(copy.deepcopy(saved_opt))  # load_state_dict aliases the tensors it is given
            opt.zero_grad()
            model.train(was_training)
        return row

    def _step_actual(self, model: Any, opt: Any, lr: float) -> None:
        import torch

        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=self.clip)  # as Ultralytics' optimizer_step
        opt.step()
        opt.zero_grad()

    def _step_sgd(self, model: Any, opt: Any, lr: float) -> None:
        import torch

        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.add_(p.grad, alpha=-lr)
                    p.grad = None
