"""The YOLO detection experiment: Ultralytics training, standard vs GAL, on the generated shapes data.

- :func:`train_yolo`: one run, a fresh YOLO model from a bundled (or project) ``*.yaml``,
  trained offline by Ultralytics' trainer or by
  :class:`~galcore.integrations.ultralytics.GALDetectionTrainer`; returns plain numbers
  (mAP, per-epoch rows, CPU seconds, a hash of the final weights).
- :func:`run_jobs`: many runs, each in a fresh process (or all in this one), cached by
  :func:`job_key` (the run's arguments, a hash of the dataset's files and of the training code,
  the package versions); :func:`model_yaml` writes a YOLO yaml of another width or depth.
- :func:`finals_frame` / :func:`verdict_table`: the runs as the harness's ``finals`` (one row
  per arm and seed) and the paired comparison per metric (:func:`galcore.experiments.harness.core.compare`).
- :class:`StepProbe`: measures, on one batch, how far one optimizer step actually moves the
  head's outputs, against GAL's output-space tentative step ``eta * g``.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import json
import multiprocessing as mp
import os
import random
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "BASE_ARGS",
    "RunRecorder",
    "StepProbe",
    "cached_run",
    "check_args",
    "data_fingerprint",
    "finals_frame",
    "job_key",
    "model_yaml",
    "run_jobs",
    "store_run",
    "train_args",
    "train_yolo",
    "verdict_table",
    "weights_hash",
]

#: the Ultralytics settings every run uses unless a job overrides them (see :func:`train_yolo`)
BASE_ARGS: dict[str, Any] = {
    "device": "cpu", "workers": 0, "amp": False, "pretrained": False, "plots": False, "deterministic": True, "exist_ok": True,
    "verbose": False, "mosaic": 0.0, "warmup_epochs": 1, "optimizer": "AdamW", "lr0": 0.002, "val": False,
}


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


# ---------------------------------------------------------------------------------------------
# many runs, cached
# ---------------------------------------------------------------------------------------------
def data_fingerprint(data_yaml: str | os.PathLike[str]) -> str:
    """sha256 (16 hex digits) of a YOLO dataset: its yaml (minus the ``path:`` line) and every
    file under its ``images/`` and ``labels/`` folders (names and bytes)."""
    yaml = Path(data_yaml)
    root = yaml.parent
    digest = hashlib.sha256()
    digest.update("".join(ln for ln in yaml.read_text().splitlines(True) if not ln.startswith("path:")).encode())
    for sub in ("images", "labels"):
        for p in sorted((root / sub).rglob("*")):
            if p.is_file() and not p.name.endswith(".cache"):
                digest.update(str(p.relative_to(root)).encode())
                digest.update(p.read_bytes())
    return digest.hexdigest()[:16]


def _code_hash() -> str:
    """Hash of the code a run's numbers depend on: GAL's core and its integrations (every file)
    and, from this module, the training path (:data:`BASE_ARGS`, :func:`train_args`,
    :func:`train_yolo`, :class:`RunRecorder`, :func:`weights_hash`), not the tables or plots."""
    import inspect

    import galcore

    pkg = Path(galcore.__file__).parent
    digest = hashlib.sha256()
    for p in [*sorted(pkg.glob("*.py")), *sorted((pkg / "integrations").glob("*.py"))]:
        digest.update(p.read_bytes())
    digest.update(repr(sorted(BASE_ARGS.items())).encode())
    for obj in (train_args, train_yolo, RunRecorder, weights_hash):
        digest.update(inspect.getsource(obj).encode())
    return digest.hexdigest()[:12]


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "none"


_IGNORED = ("project", "quiet", "callbacks", "keep_weights")


def job_key(job: Mapping[str, Any]) -> str:
    """The cache key of a job (a dict of :func:`train_yolo`'s arguments): its arguments (minus
    where it writes), the dataset's :func:`data_fingerprint`, a model yaml's bytes, the
    training code's hash and the torch/ultralytics versions."""
    spec = {k: v for k, v in job.items() if k not in _IGNORED}
    spec["data"] = data_fingerprint(job["data"])
    arch = str(job["arch"])
    if arch.endswith((".yaml", ".yml")) and Path(arch).is_file():
        spec["arch"] = hashlib.sha256(Path(arch).read_bytes()).hexdigest()[:16]
    spec["_code"] = _code_hash()
    spec["_versions"] = {n: _version(n) for n in ("torch", "ultralytics", "numpy")}
    blob = json.dumps(spec, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _cache_file(job: Mapping[str, Any], cache_dir: Path) -> Path:
    return cache_dir / f"yolo-{Path(str(job['arch'])).stem}-{job['method']}-s{job['seed']}-{job_key(job)}.json"


def _run_one(job: dict[str, Any]) -> dict[str, Any]:
    quiet = job.pop("quiet", True)
    c0 = time.process_time()
    if quiet:  # Ultralytics' progress output of a worker process is noise in a notebook
        os.environ["YOLO_VERBOSE"] = "False"  # read when Ultralytics is imported (a fresh process)
        from ultralytics.utils import LOGGER  # already imported (in-process runs): quiet its logger

        level = LOGGER.level
        LOGGER.setLevel("WARNING")
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                out = train_yolo(**job)
        finally:
            LOGGER.setLevel(level)
    else:
        out = train_yolo(**job)
    out["process_cpu_s"] = time.process_time() - c0  # imports and set-up included
    return out


def cached_run(job: Mapping[str, Any], cache_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The cached result of ``job`` (see :func:`run_jobs`), or ``None``."""
    path = _cache_file(job, Path(cache_dir))
    return {**json.loads(path.read_text()), "cached": True} if path.is_file() else None


def store_run(job: Mapping[str, Any], result: Mapping[str, Any], cache_dir: str | os.PathLike[str]) -> Path:
    """Cache ``result`` as the run of ``job`` (atomically; several processes may share the folder).
    Also how a run made elsewhere (the notebook's own first run) joins the cache of :func:`run_jobs`."""
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = _cache_file(job, folder)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({k: v for k, v in result.items() if k != "cached"}, default=float))
    tmp.replace(path)
    return path


def run_jobs(
    jobs: Sequence[Mapping[str, Any]],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    processes: int = 1,
    progress: bool = True,
    quiet: bool = True,
) -> list[dict[str, Any]]:
    """Run :func:`train_yolo` for each job (a dict of its arguments); return the results in the
    jobs' order.

    ``processes >= 1``: each run in a fresh process (no state carried between runs),
    ``processes`` at a time; ``0``: in this process, one after the other (no interpreter
    start-up per run: the smoke profile). With ``cache_dir`` a finished run is stored there
    under its :func:`job_key` and read back instead of trained again (``cached: True`` in its
    result). ``progress`` shows a bar (:func:`galcore.experiments.harness.progress.progress`): runs
    done / total, the current job.
    """
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 0:
        raise ValueError(f"processes must be an int >= 0, got {processes!r}")
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    todo: list[int] = []
    for i, job in enumerate(jobs):
        hit = cached_run(job, cache_dir) if cache_dir is not None else None
        if hit is not None:
            results[i] = hit
        else:
            todo.append(i)
    bar = None
    if progress:
        from galcore.experiments.harness.progress import progress as make_bar

        bar = make_bar(total=len(jobs), desc="YOLO runs")
        bar.update(len(jobs) - len(todo))

    def finish(i: int, out: dict[str, Any]) -> None:
        out["cached"] = False
        if cache_dir is not None:
            store_run(jobs[i], out, cache_dir)
        results[i] = out
        if bar is not None:
            bar.update(1)

    def describe(i: int) -> None:
        if bar is not None:
            job = jobs[i]
            bar.set_postfix(arch=Path(str(job["arch"])).stem, method=job["method"], seed=job["seed"])

    if processes == 0:
        for i in todo:
            describe(i)
            finish(i, _run_one({**jobs[i], "quiet": quiet}))
    elif todo:
        ctx = mp.get_context("spawn")
        with ctx.Pool(processes, maxtasksperchild=1) as pool:
            pending = [(i, pool.apply_async(_run_one, ({**jobs[i], "quiet": quiet},))) for i in todo]
            for i, handle in pending:
                describe(i)
                finish(i, handle.get())
    if bar is not None:
        bar.close()
    return [r for r in results if r is not None]


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
def finals_frame(runs: Sequence[Mapping[str, Any]]) -> Any:
    """The runs as the harness's ``finals``: one row per run with ``arm`` (``standard`` /
    ``gal``), ``seed``, ``arch``, ``map50``, ``map50_95``, ``weights_hash``, ``cpu_s``,
    ``process_cpu_s`` and, for GAL, its acceptance rate and mean |remainder| (GAL's and plain)."""
    import numpy as np
    import pandas as pd

    rows = []
    for r in runs:
        row = {
            "arm": r["method"], "seed": r["seed"], "arch": r["arch"], "map50": r["map50"], "map50_95": r["map50_95"],
            "weights_hash": r.get("weights_hash", ""), "cpu_s": r.get("cpu_s", float("nan")),
            "process_cpu_s": r.get("process_cpu_s", float("nan")),
        }
        steps = r.get("gal_steps") or []
        if steps:
            row["accept_rate"] = float(np.mean([s["accepted"] for s in steps]))
            row["abs_remainder"] = float(np.mean([abs(s["remainder"]) for s in steps]))
            if "remainder_plain" in steps[0]:
                row["abs_remainder_plain"] = float(np.mean([abs(s["remainder_plain"]) for s in steps]))
        rows.append(row)
    return pd.DataFrame(rows)


def verdict_table(
    finals: Any, margins: Mapping[str, float], *, by: Sequence[str] = ("arch",), effect: Mapping[str, float] | None = None
) -> Any:
    """:func:`galcore.experiments.harness.core.compare` of ``gal`` against ``standard`` for each
    metric in ``margins`` (higher is better), concatenated; ``effect`` per metric sets the
    effect size for ``seeds_needed`` (default: the margin)."""
    import pandas as pd

    from galcore.experiments.harness.core import compare

    tables = [
        compare(finals, metric, margin=m, lower_is_better=False, effect=(effect or {}).get(metric), by=list(by))
        for metric, m in margins.items()
    ]
    return pd.concat(tables, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# the optimizer's step in output space
# ---------------------------------------------------------------------------------------------
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
