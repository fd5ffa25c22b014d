"""Many YOLO runs (:func:`run_jobs`), each in a fresh process (or all in this one), cached by
:func:`job_key`: the run's arguments, a hash of the dataset's files and of the training code,
the package versions."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing as mp
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from galcore.experiments.detection.train import (
    _IGNORED,
    BASE_ARGS,
    RunRecorder,
    _version,
    train_args,
    train_yolo,
    weights_hash,
)

__all__ = ["cached_run", "data_fingerprint", "job_key", "run_jobs", "store_run"]


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


