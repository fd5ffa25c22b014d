"""GAL for Ultralytics YOLO detection: a trainer class to pass as ``trainer=``.

Usage (from a bundled model yaml; the experiments run Ultralytics offline with
:func:`galcore.experiments.detection.offline.offline_env`, called before importing it)::

    from ultralytics import YOLO
    from galcore.integrations.ultralytics import GALDetectionTrainer  # imports Ultralytics
    YOLO("yolov8n.yaml").train(data="data.yaml", trainer=GALDetectionTrainer,
                               gal_ratio=1e-3, gal_scale=1.0, epochs=10, imgsz=64, device="cpu",
                               workers=0, amp=False, pretrained=False, plots=False)
    # resume an interrupted run (GAL's options and state come from the checkpoint):
    YOLO("runs/detect/train/weights/last.pt").train(resume=True, trainer=GALDetectionTrainer)

GAL's options can also come as ``gal=GALConfig(...)``, ``gal={...}`` or ``gal="gal.yaml"``
(a yaml/json file with the options, optionally under a ``gal:`` key).

What it does. Ultralytics' training step is ``loss, items = model(batch)`` (the model forwards
the images and calls its criterion on the raw head outputs) then
``scaler.scale(loss.sum()).backward()``. :class:`GALDetectionTrainer` replaces the model's
criterion by :class:`GALCriterion`, which calls :meth:`galcore.GAL.surrogate` with the head's raw
outputs and Ultralytics' own criterion as the loss:

- x: the Detect head's training outputs, box distribution logits (B, 4 reg_max, A) and class
  logits (B, nc, A) over the A anchor locations of all scales, joined along channels into one
  (B, no, A) map, ``no = nc + 4 reg_max``; h reads the no-vector at each location
  (``GAL(output_dim=no, dim=1)``). End-to-end heads (one-to-many and one-to-one branches) give
  two such maps, both adjusted by the same h.
- L(x): Ultralytics' criterion ``sum(loss_vector)``, i.e. ``(box + cls + dfl) * batch_size``,
  exactly the scalar Ultralytics backpropagates (its scaling is kept, not re-normalised).
- lr: the optimizer's current learning rate (the ``weight`` group, warmup included; GAL is skipped
  while it is 0). The tentative step ``lr * gal_scale * (g + a)`` is in output space whatever the
  optimizer; AdamW's or SGD's actual step moves the outputs by another amount (notebook 03).

The criterion returns Ultralytics' loss vector with its values unchanged (so logs, the NaN check
and the progress bar see the same numbers) and with GAL's chosen gradient attached, so the AMP
scaler, gradient accumulation, clipping, EMA, warmup, validation, checkpoints and logging run as
in Ultralytics. h's parameters form one extra parameter group ``"gal"`` of the trainer's
optimizer (no weight decay, lr = model lr x ``lr_factor``); they are not part of the model, so the
EMA, clipping and exported weights do not contain h. GAL's state (h, counters, options) is saved
under the key ``"gal"`` of every checkpoint Ultralytics writes and restored on resume.

Per-epoch GAL statistics go to Ultralytics' ``results.csv`` (``gal/...`` columns), per-step records
to ``gal_steps.csv`` in the run folder (read from the device once per epoch).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from weakref import ref

import torch
from torch import Tensor

from galcore.build import build_gal
from galcore.config import GALConfig
from galcore.gal import GAL

__all__ = [
    "GALConfig",
    "GALCriterion",
    "GALDetectionTrainer",  # noqa: F822 - built on first use (module __getattr__)
    "read_gal_steps",
]

ENV_CONFIG = "GALCORE_ULTRALYTICS_GAL"  # JSON of GALConfig, read by DDP workers


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
def _pop_gal_options(overrides: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Take ``gal=`` and ``gal_<option>=`` out of Ultralytics' overrides (it rejects unknown keys)."""
    base = overrides.pop("gal", None)
    opts = {k[4:]: overrides.pop(k) for k in [k for k in overrides if k.startswith("gal_")]}
    return base, opts


# ---------------------------------------------------------------------------------------------
# the criterion
# ---------------------------------------------------------------------------------------------
_PER_ANCHOR = ("boxes", "scores")


class GALCriterion:
    """Wraps an Ultralytics detection criterion so that its loss carries GAL's gradient.

    ``criterion(preds, batch) -> (loss_vector * batch_size, loss_items)``, as Ultralytics'. In
    training (grad enabled, the model in train mode, a positive lr) the returned vector has the
    same values and its sum's gradient w.r.t. the head outputs is GAL's chosen gradient;
    otherwise the inner criterion is called unchanged (validation, the lr = 0 warmup step).

    Args:
        inner: Ultralytics' criterion (e.g. ``v8DetectionLoss``, ``E2ELoss``).
        gal: the :class:`galcore.GAL` module (``dim=1``, ``output_dim = no``).
        lr: returns the current learning rate (float).
        model: the model whose ``training`` flag gates GAL.
        on_step: called with each step's record vector (device tensor) for logging.
    """

    def __init__(
        self,
        inner: Any,
        gal: GAL,
        lr: Callable[[], float],
        model: torch.nn.Module,
        on_step: Callable[[Tensor], None] | None = None,
    ) -> None:
        self.inner = inner
        self.gal = gal
        self.lr = lr
        self._model = ref(model)
        self.on_step = on_step

    # copies of the model (ModelEMA, checkpoints) must not carry GAL: they get a fresh criterion
    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        return None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(None), ())

    def __getattr__(self, name: str) -> Any:  # update(), loss_names, hyp, ... of the inner criterion
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @staticmethod
    def _split(preds: Any) -> tuple[list[Tensor], Callable[[list[Tensor]], Any], list[int]]:
        """Join each branch's per-anchor outputs into (B, no, A); return them and a rebuilder."""
        if isinstance(preds, tuple):  # (inference, raw) in eval mode
            preds = preds[1]
        if not isinstance(preds, dict):
            raise TypeError(f"expected the Detect head's training dict, got {type(preds).__name__}")
        if "boxes" in preds:
            branches: dict[str | None, dict[str, Any]] = {None: preds}
        else:
            branches = {k: v for k, v in preds.items() if isinstance(v, dict)}
            if not branches or any("boxes" not in v for v in branches.values()):
                raise TypeError(
                    f"unsupported head output keys {sorted(preds)}; GALDetectionTrainer handles Detect heads"
                )
        xs: list[Tensor] = []
        splits: list[int] = []
        for b in branches.values():
            extra = set(b) - {*_PER_ANCHOR, "feats"}
            if extra:
                raise TypeError(
                    f"head outputs {sorted(extra)} are not supported (GALDetectionTrainer handles detection heads)"
                )
            xs.append(torch.cat([b["boxes"], b["scores"]], dim=1))
            splits.append(b["boxes"].shape[1])
        feats = {k: [f.detach() for f in b["feats"]] for k, b in branches.items()}

        def rebuild(zs: list[Tensor]) -> Any:
            out = {}
            for (k, b), z, nb in zip(branches.items(), zs, splits, strict=True):
                out[k] = {"boxes": z[:, :nb], "scores": z[:, nb:], "feats": feats[k]}
            return out.get(None, out)

        return xs, rebuild, splits

    def __call__(self, preds: Any, batch: dict[str, Any]) -> tuple[Tensor, Any]:
        model = self._model()
        lr = float(self.lr())
        if not torch.is_grad_enabled() or (model is not None and not model.training) or not lr > 0:
            return self.inner(preds, batch)
        xs, rebuild, _ = self._split(preds)
        native = torch.float32 if xs[0].dtype in (torch.float16, torch.bfloat16) else xs[0].dtype
        seen: list[Any] = []  # the loss at x: GAL's first call, or its first in the outputs' precision

        def loss_fn(zs: list[Tensor]) -> Tensor:
            vec, items = self.inner(rebuild(list(zs)), batch)
            if not seen or (zs[0].dtype == native and seen[0] != native):
                seen[:] = [zs[0].dtype, vec.detach(), items]  # Ultralytics logs this vector and these items
            return vec.sum()

        s = self.gal.surrogate(xs, loss_fn, lr)
        vec, first_items = seen[1].to(native), seen[2]
        graph = (s - s.detach()).to(vec.dtype)
        onehot = torch.zeros_like(vec)
        onehot.view(-1)[0] = 1.0
        out = vec + onehot * graph  # values: Ultralytics' loss vector; d(sum)/d(outputs): GAL's choice
        if self.on_step is not None and self.gal.last_step is not None:
            r = self.gal.last_step
            parts = [r.accepted.float(), r.remainder.float(), r.objective.float(), r.fallback.float(), r.loss.float(),
                     r.tentative_loss.float()]
            if r.remainder_plain is not None:
                parts.append(r.remainder_plain.float())
            self.on_step(torch.stack(parts).detach())
        return out, first_items


_STEP_FIELDS = ("accepted", "remainder", "objective", "fallback", "loss", "tentative_loss", "remainder_plain")


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
def _gal_state(gal: GAL) -> dict[str, Any]:
    return {k: (v.detach().cpu() if isinstance(v, Tensor) else v) for k, v in gal.state_dict().items()}


_TRAINER: type | None = None


def _trainer_class() -> type:
    """Build :class:`GALDetectionTrainer` on first use, so importing this module does not import
    Ultralytics (before its environment is set, say)."""
    global _TRAINER
    if _TRAINER is not None:
        return _TRAINER
    from ultralytics.models.yolo.detect import DetectionTrainer

    class GALDetectionTrainer(DetectionTrainer):  # type: ignore[misc,valid-type]
        """Ultralytics' ``DetectionTrainer`` with GAL on the detection head's outputs.

        Pass it as ``YOLO(...).train(trainer=GALDetectionTrainer, ...)``. GAL's options come from
        the same call: ``gal=`` (a :class:`GALConfig`, a dict or a yaml/json path) and/or
        ``gal_<option>=`` keywords (every :class:`GALConfig` field but ``dim``, which is the head's
        channel axis, 1: ``gal_ratio``, ``gal_normalize``, ``gal_lr_factor``...); keywords win. When resuming
        (``resume=True`` / a ``last.pt``), the checkpoint's options and state are used.

        Attributes:
            gal: the :class:`galcore.GAL` module (built with the optimizer).
            gal_config: the :class:`GALConfig` in use.
            gal_history: one dict of GAL statistics per finished epoch.
        """

        def __init__(self, cfg: Any = None, overrides: dict[str, Any] | None = None, _callbacks: Any = None) -> None:
            from ultralytics.utils import DEFAULT_CFG, LOCAL_RANK

            overrides = dict(overrides or {})
            base, opts = _pop_gal_options(overrides)
            if base is None and not opts and LOCAL_RANK != -1 and os.environ.get(ENV_CONFIG):
                base = json.loads(os.environ[ENV_CONFIG])  # a DDP worker: the launcher's options
            self.gal_config = GALConfig.from_any(base, **opts)
            self._gal_user_options = bool(base is not None or opts)
            self.gal: GAL | None = None
            self.gal_history: list[dict[str, float]] = []
            self._gal_steps: list[Tensor] = []
            self._gal_resume: dict[str, Any] | None = None
            super().__init__(DEFAULT_CFG if cfg is None else cfg, overrides, _callbacks)
            if self.ddp:
                os.environ[ENV_CONFIG] = json.dumps(self.gal_config.to_dict())

        # -- model and optimizer ------------------------------------------------------------------
        def setup_model(self):  # type: ignore[override]
            ckpt = super().setup_model()
            if self.resume and isinstance(ckpt, dict):
                saved = ckpt.get("gal")
                if saved is None:
                    raise ValueError(
                        f"{self.args.model} was not trained with GALDetectionTrainer (no 'gal' entry); resume it with "
                        "Ultralytics' own trainer or start a new GAL run"
                    )
                cfg = GALConfig.from_any(saved["config"])
                if self._gal_user_options and cfg != self.gal_config:
                    from ultralytics.utils import LOGGER

                    LOGGER.warning(
                        f"GAL: resume uses the checkpoint's options {cfg.to_dict()}, ignoring the ones passed"
                    )
                self.gal_config = cfg
                self._gal_resume = saved
            return ckpt

        def _head(self) -> Any:
            from ultralytics.utils.torch_utils import unwrap_model

            return unwrap_model(self.model).model[-1]

        def _build_gal(self) -> GAL:
            head = self._head()
            no = int(head.nc + 4 * head.reg_max)
            # h reads the head's channel axis; it is drawn from its own generator (galcore.build's one
            # seed rule), so it does not shift the run's random stream
            return build_gal(self.gal_config.replace(dim=1), output_dim=no, run_seed=int(self.args.seed), device=self.device)

        def build_optimizer(  # type: ignore[override]
            self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5
        ):
            optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
            if self.gal is None:
                self.gal = self._build_gal()
            groups = optimizer.param_groups
            ref_group = next((g for g in groups if g.get("param_group") == "bias"), groups[0])
            group = {k: v for k, v in ref_group.items() if k not in ("params", "initial_lr", "param_group", "use_muon")}
            group.update(
                params=[p for p in self.gal.parameters() if p.requires_grad],
                lr=ref_group["lr"] * self.gal_config.lr_factor,
                weight_decay=0.0,
                param_group="gal",
            )
            optimizer.add_param_group(group)
            return optimizer

        def _current_lr(self) -> float:
            groups = self.optimizer.param_groups
            for g in groups:
                if g.get("param_group") in ("weight", "muon"):
                    return float(g["lr"])
            return float(groups[0]["lr"])

        def _setup_train(self) -> None:
            super()._setup_train()
            from ultralytics.utils.torch_utils import unwrap_model

            assert self.gal is not None
            model = unwrap_model(self.model)
            inner = model.criterion if getattr(model, "criterion", None) is not None else model.init_criterion()
            if isinstance(inner, GALCriterion):
                inner = inner.inner
            model.criterion = GALCriterion(inner, self.gal, self._current_lr, model, self._gal_steps.append)
            self.gal.train()
            if self.save_dir and not self.resume:  # a new run (exist_ok may reuse a folder): start clean
                with contextlib.suppress(OSError):  # each on its own: a failed unlink still writes gal.json
                    (self.save_dir / "gal_steps.csv").unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    (self.save_dir / "gal.json").write_text(json.dumps(self.gal_config.to_dict(), indent=2))

        def _load_checkpoint_state(self, ckpt: dict[str, Any]) -> None:
            super()._load_checkpoint_state(ckpt)
            saved = ckpt.get("gal")
            if saved is not None and self.gal is not None:
                self.gal.load_state_dict(saved["state_dict"])

        # -- checkpoints --------------------------------------------------------------------------
        def save_model(self) -> bool:  # type: ignore[override]
            written = [self.last]
            if self.best_fitness == self.fitness:
                written.append(self.best)
            if (self.save_period > 0) and (self.epoch % self.save_period == 0):
                written.append(self.wdir / f"epoch{self.epoch}.pt")
            saved = super().save_model()
            if saved is False or self.gal is None:
                return saved
            ckpt = torch.load(self.last, map_location="cpu", weights_only=False)
            ckpt["gal"] = {
                "config": self.gal_config.to_dict(),
                "state_dict": _gal_state(self.gal),
                "output_dim": self.gal.output_dim,
            }
            buffer = io.BytesIO()
            torch.save(ckpt, buffer)
            data = buffer.getvalue()
            for path in written:
                if path.exists():
                    path.write_bytes(data)
            return saved

        # -- logging ------------------------------------------------------------------------------
        def _gal_epoch_stats(self) -> dict[str, float]:
            if not self._gal_steps:
                return {}
            steps = torch.stack(self._gal_steps).double().cpu()  # the one host transfer per epoch
            self._gal_steps.clear()
            names = _STEP_FIELDS[: steps.shape[1]]
            stats = {
                "gal/acceptance": float(steps[:, 0].mean()),
                "gal/remainder": float(steps[:, 1].mean()),
                "gal/abs_remainder": float(steps[:, 1].abs().mean()),
                "gal/objective": float(steps[:, 2].mean()),
                "gal/fallbacks": float(steps[:, 3].sum()),
                "gal/steps": float(steps.shape[0]),
            }
            if steps.shape[1] > 6:
                stats["gal/abs_remainder_plain"] = float(steps[:, 6].abs().mean())
            path = self.save_dir / "gal_steps.csv"
            new = not path.exists()
            with open(path, "a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(["epoch", "step", *names])
                for i, row in enumerate(steps.tolist()):
                    w.writerow([self.epoch + 1, i, *(f"{v:.8g}" for v in row)])
            return stats

        def save_metrics(self, metrics: dict[str, Any]) -> None:  # type: ignore[override]
            stats = self._gal_epoch_stats()
            if stats:
                from ultralytics.utils import LOGGER

                self.gal_history.append({"epoch": float(self.epoch + 1), **stats})
                LOGGER.info(
                    f"GAL: acceptance {stats['gal/acceptance']:.3f}, mean remainder {stats['gal/remainder']:.4g}, "
                    f"mean |remainder| {stats['gal/abs_remainder']:.4g}, fallbacks {int(stats['gal/fallbacks'])} "
                    f"over {int(stats['gal/steps'])} steps"
                )
            super().save_metrics({**metrics, **stats})

    GALDetectionTrainer.__module__ = __name__
    GALDetectionTrainer.__qualname__ = "GALDetectionTrainer"
    _TRAINER = GALDetectionTrainer
    return GALDetectionTrainer


def __getattr__(name: str) -> Any:
    if name == "GALDetectionTrainer":
        return _trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_gal_steps(run_dir: str | os.PathLike[str]) -> list[dict[str, float]]:
    """Rows of ``gal_steps.csv`` in an Ultralytics run folder (per-step GAL records)."""
    with open(Path(run_dir) / "gal_steps.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
