"""The YOLO detection experiment: Ultralytics training, standard vs GAL, on the embedded shapes data.

One run is :func:`train_yolo` (a fresh YOLO model from a bundled ``*.yaml``, trained offline,
returning plain numbers); :func:`run_many` runs several in separate processes (a fresh
interpreter per run, ``processes`` at a time), so paired standard and GAL runs of one seed
can share the machine at the same time and see the same load when their epochs are timed.
"""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["EpochTimer", "run_many", "train_yolo"]


class EpochTimer:
    """Ultralytics callbacks timing the training part of each epoch (validation excluded).

    ``wall`` and ``cpu`` hold seconds per epoch: wall-clock time and this process's CPU time
    (``time.process_time``, less sensitive to other work on a shared machine).
    """

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._t0 = (0.0, 0.0)

    def on_train_epoch_start(self, trainer: Any) -> None:
        self._t0 = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer: Any) -> None:
        self.wall.append(time.perf_counter() - self._t0[0])
        self.cpu.append(time.process_time() - self._t0[1])

    def attach(self, model: Any) -> EpochTimer:
        model.add_callback("on_train_epoch_start", self.on_train_epoch_start)
        model.add_callback("on_train_epoch_end", self.on_train_epoch_end)
        return self


def _read_results(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def train_yolo(
    arch: str,
    data: str | os.PathLike[str],
    method: str,
    seed: int,
    *,
    project: str | os.PathLike[str],
    epochs: int,
    imgsz: int = 64,
    batch: int = 8,
    gal: dict[str, Any] | None = None,
    threads: int | None = 1,
    keep_weights: bool = False,
    **train_kwargs: Any,
) -> dict[str, Any]:
    """Train ``<arch>.yaml`` from scratch with Ultralytics' trainer (``method="standard"``) or
    :class:`~galcore.integrations.ultralytics.GALDetectionTrainer` (``method="gal"``), offline.

    The defaults make a small CPU run: no plots, no AMP, no pretrained weights, no mosaic,
    ``nbs=batch`` (one optimizer step per batch), AdamW at lr 1e-3 with one warmup epoch (and
    Ultralytics' default bias warmup from lr 0.1, which corrects the class-prior bias set for
    640-pixel images quickly at these small sizes),
    validation only after the last epoch (``val=False``), deterministic, seeded by ``seed``
    (the model's initial weights and the data order depend only on it, not on the method).
    ``train_kwargs`` override any of these. Unless ``keep_weights``, the run's ``weights/``
    folder is deleted after the metrics are read. ``threads``: torch threads of the run.

    Returns:
        A dict of plain values: ``map50`` and ``map50_95`` (Ultralytics' validator on the final
        model), ``epochs`` (results.csv rows: losses, metrics, lr and ``gal/...`` columns),
        ``epoch_wall``/``epoch_cpu`` (seconds per training epoch), ``gal_steps`` (per-step GAL
        records, GAL only), ``save_dir`` and the arguments.
    """
    if method not in ("standard", "gal"):
        raise ValueError(f"method must be 'standard' or 'gal', got {method!r}")
    from galcore.integrations.ultralytics import offline_env

    offline_env(runs_dir=project)
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch
    from ultralytics import YOLO
    from ultralytics.utils import torch_utils

    if threads is not None:
        torch.set_num_threads(threads)
        torch_utils.NUM_THREADS = threads  # Ultralytics resets torch's threads when it picks the CPU

    args: dict[str, Any] = dict(
        data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, nbs=batch, device="cpu", workers=0, amp=False,
        pretrained=False, plots=False, seed=seed, deterministic=True, project=str(project),
        name=f"{arch}_{method}_s{seed}", exist_ok=True, verbose=False, mosaic=0.0, warmup_epochs=1,
        optimizer="AdamW", lr0=0.001, val=False,
    )
    args.update(train_kwargs)
    extra: dict[str, Any] = {}
    if method == "gal":
        from galcore.integrations.ultralytics import GALDetectionTrainer

        extra = {"trainer": GALDetectionTrainer, "gal": dict(gal or {})}
    model = YOLO(f"{arch}.yaml")
    timer = EpochTimer().attach(model)
    t0 = time.perf_counter()
    model.train(**args, **extra)
    total = time.perf_counter() - t0
    save_dir = Path(model.trainer.save_dir)
    metrics = model.metrics
    out: dict[str, Any] = {
        "arch": arch,
        "method": method,
        "seed": seed,
        "map50": float(metrics.box.map50),
        "map50_95": float(metrics.box.map),
        "epochs": _read_results(save_dir / "results.csv"),
        "epoch_wall": timer.wall,
        "epoch_cpu": timer.cpu,
        "total_wall": total,
        "save_dir": str(save_dir),
        "gal": dict(gal or {}) if method == "gal" else None,
    }
    if method == "gal":
        from galcore.integrations.ultralytics import read_gal_steps

        out["gal_steps"] = read_gal_steps(save_dir)
    if not keep_weights:  # the checkpoints (MBs per run) are not needed once the numbers are read
        import shutil

        shutil.rmtree(save_dir / "weights", ignore_errors=True)
    return out


def _run_one(job: dict[str, Any]) -> dict[str, Any]:
    import contextlib
    import io

    quiet = job.pop("quiet", True)
    if quiet:  # Ultralytics' progress output of a worker process is noise in a notebook
        os.environ["YOLO_VERBOSE"] = "False"
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            return train_yolo(**job)
    return train_yolo(**job)


def run_many(jobs: Sequence[dict[str, Any]] | Iterable[dict[str, Any]], processes: int = 2,
             quiet: bool = True) -> list[dict[str, Any]]:
    """Run :func:`train_yolo` for each job (a dict of its arguments), each in a fresh process,
    ``processes`` at a time, in order; returns the results in the jobs' order."""
    jobs = [{**j, "quiet": quiet} for j in jobs]
    if processes <= 1:
        ctx = mp.get_context("spawn")
        out = []
        for j in jobs:  # still one fresh process per run (independent global state)
            with ctx.Pool(1) as pool:
                out.append(pool.apply(_run_one, (j,)))
        return out
    ctx = mp.get_context("spawn")
    with ctx.Pool(processes, maxtasksperchild=1) as pool:
        return list(pool.imap(_run_one, jobs, chunksize=1))
