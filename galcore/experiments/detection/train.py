"""One YOLO detection run, standard or GAL, fully offline (:func:`train_yolo`): Ultralytics'
trainer or :class:`~galcore.integrations.ultralytics.GALDetectionTrainer` on a fresh model from a
bundled (or project) ``*.yaml`` (:func:`model_yaml` writes one of another width or depth); plain
numbers back (mAP, per-epoch rows, CPU seconds, :func:`weights_hash` of the final weights)."""

from __future__ import annotations

import csv
import hashlib
import os
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["BASE_ARGS", "RunRecorder", "check_args", "model_yaml", "train_args", "train_yolo", "weights_hash"]

#: the Ultralytics settings every run uses unless a job overrides them (see :func:`train_yolo`)
BASE_ARGS: dict[str, Any] = {
    "device": "cpu", "workers": 0, "amp": False, "pretrained": False, "plots": False, "deterministic": True, "exist_ok": True,
    "verbose": False, "mosaic": 0.0, "warmup_epochs": 1, "optimizer": "AdamW", "lr0": 0.002, "val": False,
}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "none"


_IGNORED = ("project", "quiet", "callbacks", "keep_weights")


class RunRecorder:
    """Ultralytics callbacks recording what a run cost and produced, without changing it.

    ``epoch_wall`` / ``epoch_cpu``: seconds of the training part of each epoch (validation
    excluded), wall-clock and this process's CPU time (``time.process_time``, less sensitive
    to other work on a shared machine); ``cpu_s``: CPU seconds from the start of the trainer's
    set-up to the end of training (final validation included); ``weights_hash``: the trained
    model's :func:`weights_hash`. :meth:`result` turns a finished ``YOLO`` into the record
    :func:`train_yolo` returns.
    """

    def __init__(self) -> None:
        self.epoch_wall: list[float] = []
        self.epoch_cpu: list[float] = []
        self.cpu_s = float("nan")
        self.weights_hash = ""
        self._t0 = (0.0, 0.0)
        self._c0 = time.process_time()

    def on_pretrain_routine_start(self, trainer: Any) -> None:
        self._c0 = time.process_time()

    def on_train_epoch_start(self, trainer: Any) -> None:
        self._t0 = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer: Any) -> None:
        self.epoch_wall.append(time.perf_counter() - self._t0[0])
        self.epoch_cpu.append(time.process_time() - self._t0[1])

    def on_train_end(self, trainer: Any) -> None:
        self.cpu_s = time.process_time() - self._c0
        self.weights_hash = weights_hash(trainer.model)

    def attach(self, model: Any) -> RunRecorder:
        for event in ("on_pretrain_routine_start", "on_train_epoch_start", "on_train_epoch_end", "on_train_end"):
            model.add_callback(event, getattr(self, event))
        return self

    def result(self, model: Any, *, arch: str, method: str, seed: int, gal: Mapping[str, Any] | None = None,
               **extra: Any) -> dict[str, Any]:
        """The run's record (see :func:`train_yolo`) from a ``YOLO`` whose ``train`` has returned."""
        save_dir = Path(model.trainer.save_dir)
        out: dict[str, Any] = {
            "arch": Path(arch).stem,
            "method": method,
            "seed": seed,
            "map50": float(model.metrics.box.map50),
            "map50_95": float(model.metrics.box.map),
            "epochs": _read_results(save_dir / "results.csv"),
            "epoch_wall": self.epoch_wall,
            "epoch_cpu": self.epoch_cpu,
            "cpu_s": self.cpu_s,
            "weights_hash": self.weights_hash,
            "save_dir": str(save_dir),
            "gal": dict(gal or {}) if method == "gal" else None,
            **extra,
        }
        if method == "gal":
            from galcore.integrations.ultralytics import read_gal_steps

            out["gal_steps"] = read_gal_steps(save_dir)
        return out


def model_yaml(
    base: str = "yolov8", *, depth: float = 0.33, width: float = 0.125, max_channels: int = 1024, name: str = "tiny",
    folder: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a YOLO model yaml of another size from one Ultralytics ships and return its path.

    Ultralytics' ``<base>.yaml`` (e.g. ``yolov8``: its ``n`` scale is depth 0.33, width 0.25)
    with one scale ``name`` = ``[depth, width, max_channels]``, saved as ``<base>-<name>.yaml``
    in ``folder`` (default: the data folder's ``models/``, ``$GALCORE_DATA`` or ``data/``).
    ``YOLO(path)`` then builds that model from scratch (no weights exist for it).
    """
    import importlib.util

    import yaml

    found = importlib.util.find_spec("ultralytics")  # its files only: importing it would write its settings
    if found is None or found.origin is None:
        raise ModuleNotFoundError("model_yaml needs ultralytics (pip install galcore[yolo])")
    if not (0 < depth <= 1.5 and 0 < width <= 1.5) or max_channels < 8:
        raise ValueError(f"need 0 < depth, width <= 1.5 and max_channels >= 8, got {depth}, {width}, {max_channels}")
    source = Path(found.origin).parent / "cfg" / "models" / base.removeprefix("yolo")
    matches = sorted(source.glob(f"{base}.yaml")) if source.is_dir() else []
    if not matches:
        raise ValueError(f"base: Ultralytics ships no {base}.yaml (looked in {source})")
    spec = yaml.safe_load(matches[0].read_text())
    spec["scales"] = {name: [depth, width, max_channels]}
    spec["scale"] = name
    if folder is None:
        from galcore.experiments.detection.shapes import _default_data_root

        folder = _default_data_root() / "models"
    out = Path(folder) / f"{base}-{name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = f"# {base}.yaml from Ultralytics {_version('ultralytics')}, scale {name}: depth {depth}, width {width}\n"
    text += yaml.safe_dump(spec, sort_keys=False, default_flow_style=None)
    if not out.is_file() or out.read_text() != text:
        out.write_text(text)
    return out


def weights_hash(module: Any) -> str:
    """sha256 (16 hex digits) of a module's state dict: names, dtypes, shapes and bytes."""
    import torch

    digest = hashlib.sha256()
    for name, t in module.state_dict().items():
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _read_results(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def train_args(*, data: str | os.PathLike[str], epochs: int, imgsz: int, batch: int, seed: int,
               **train_kwargs: Any) -> dict[str, Any]:
    """The keywords :func:`train_yolo` passes to Ultralytics' ``train`` (besides where it writes):
    :data:`BASE_ARGS`, the run's size and seed, ``nbs=batch``, then ``train_kwargs``."""
    return {**BASE_ARGS, "data": str(data), "epochs": epochs, "imgsz": imgsz, "batch": batch, "nbs": batch,
            "seed": seed, **train_kwargs}


def check_args(trainer_args: Any, job: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming every setting where a trainer's ``args`` (Ultralytics'
    namespace) differ from what :func:`train_yolo` would use for ``job``: a run trained by
    hand then stands for that job (e.g. in the cache)."""
    spec = {k: v for k, v in job.items() if k not in (*_IGNORED, "arch", "method", "gal", "threads")}
    expected = train_args(**spec)
    wrong = {k: (getattr(trainer_args, k, None), v) for k, v in expected.items() if getattr(trainer_args, k, None) != v}
    if wrong:
        raise ValueError("the run's settings differ from the job's (got, expected): "
                         + ", ".join(f"{k}={a!r}/{b!r}" for k, (a, b) in wrong.items()))


def train_yolo(
    arch: str,
    data: str | os.PathLike[str],
    method: str,
    seed: int,
    *,
    project: str | os.PathLike[str],
    epochs: int,
    imgsz: int = 64,
    batch: int = 16,
    gal: Mapping[str, Any] | None = None,
    threads: int | None = 1,
    keep_weights: bool = False,
    callbacks: Mapping[str, Any] | None = None,
    **train_kwargs: Any,
) -> dict[str, Any]:
    """Train ``<arch>.yaml`` from scratch with Ultralytics' trainer (``method="standard"``) or
    :class:`~galcore.integrations.ultralytics.GALDetectionTrainer` (``method="gal"``), offline.

    :data:`BASE_ARGS` make a small CPU run: no plots, no AMP, no pretrained weights, no mosaic,
    ``nbs=batch`` (one optimizer step per batch), AdamW at lr0 2e-3 with one warmup epoch,
    validation only after the last epoch (``val=False``),
    deterministic, seeded by ``seed`` (the model's initial weights, the augmentations and the
    data order depend only on it, not on the method; ``tests/test_ultralytics.py`` checks it).
    ``train_kwargs`` override any of these. Unless ``keep_weights``, the run's ``weights/``
    folder is deleted after the metrics are read. ``threads``: torch threads of the run.
    ``callbacks``: ``{event: fn}`` added to the model (Ultralytics events).

    Returns:
        A dict of plain values: ``map50`` and ``map50_95`` (Ultralytics' validator on the final
        model), ``epochs`` (results.csv rows: losses, lr and ``gal/...`` columns),
        ``epoch_wall``/``epoch_cpu`` (seconds per training epoch), ``cpu_s`` (CPU seconds of the
        whole ``train`` call), ``weights_hash`` (the trained model, :func:`weights_hash`),
        ``gal_steps`` (per-step GAL records, GAL only), ``save_dir`` and the arguments.
    """
    if method not in ("standard", "gal"):
        raise ValueError(f"method must be 'standard' or 'gal', got {method!r}")
    from galcore.experiments.detection.offline import offline_env

    offline_env(runs_dir=project)
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch
    from ultralytics import YOLO
    from ultralytics.utils import torch_utils

    if threads is not None:
        torch.set_num_threads(threads)
        torch_utils.NUM_THREADS = threads  # Ultralytics resets torch's threads when it picks the CPU

    args = train_args(data=data, epochs=epochs, imgsz=imgsz, batch=batch, seed=seed, **train_kwargs)
    args = {"project": str(project), "name": f"{Path(arch).stem}_{method}_s{seed}", **args}
    extra: dict[str, Any] = {}
    if method == "gal":
        from galcore.integrations.ultralytics import GALDetectionTrainer

        extra = {"trainer": GALDetectionTrainer, "gal": dict(gal or {})}
    model = YOLO(arch if str(arch).endswith((".yaml", ".yml")) else f"{arch}.yaml")
    recorder = RunRecorder().attach(model)
    for event, fn in (callbacks or {}).items():
        model.add_callback(event, fn)
    t0 = time.perf_counter()
    model.train(**args, **extra)
    out = recorder.result(model, arch=arch, method=method, seed=seed, gal=gal, total_wall=time.perf_counter() - t0)
    save_dir = Path(out["save_dir"])
    if not keep_weights:  # the checkpoints (MBs per run) are not needed once the numbers are read
        import shutil

        shutil.rmtree(save_dir / "weights", ignore_errors=True)
    return out


