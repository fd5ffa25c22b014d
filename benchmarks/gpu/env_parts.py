"""The parts that look at the environment or run other programs: ``device`` (versions, what
ran), ``tests`` (pytest in a child process), ``notebooks`` (notebook 02 through the notebook
runner) and ``seeds`` (stacked-seed throughput through the harness).

The two imports from ``galcore.experiments`` sit in one small function each
(:func:`_notebook_runner_command`, :func:`_stacked_api`), so that a move of the experiments
package changes one line each.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import Context, Skip

import galcore

ROOT = Path(__file__).resolve().parents[2]


def device(ctx: Context) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(ctx.device), "dry_run": ctx.dry_run, "python": sys.version.split()[0],
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }  # fmt: skip
    if ctx.cuda:
        p = torch.cuda.get_device_properties(ctx.device)
        info.update(name=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                    multiprocessors=p.multi_processor_count, cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    else:
        info["name"] = platform.processor() or platform.machine()
    info["packages_missing"] = ctx.notes.get("missing", [])
    info["wheels_installed"] = ctx.notes.get("wheels", [])
    return info


def versions() -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``torch`` and ``galcore`` keys: versions and where they came from."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    vision = importlib.util.find_spec("torchvision")
    tv = None
    if vision is not None:
        import torchvision

        tv = torchvision.__version__
    t = {"version": torch.__version__, "cuda": torch.version.cuda, "torchvision": tv,
         "inductor_backend": "triton" if importlib.util.find_spec("triton") else None}
    g = {"version": galcore.__version__, "path": str(Path(galcore.__file__).parent), "commit": commit}
    return t, g


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` in its own process group; on timeout the whole group (a notebook's
    kernel, pytest's workers) is killed before ``TimeoutExpired`` is raised."""
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# -- tests ----------------------------------------------------------------------------------
def _pytest_counts(text: str) -> dict[str, int]:
    """Counts from pytest's last summary line ("3 passed, 1 skipped, 2 warnings in 4.5s")."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "xfailed": 0, "xpassed": 0, "deselected": 0}
    lines = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
    if not lines:
        raise RuntimeError("pytest printed no summary line")
    for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", lines[-1]):
        counts["errors" if word.startswith("error") else word] += int(n)
    return counts


def tests(ctx: Context) -> dict[str, Any]:
    if ctx.dry_run:
        targets, scope = ["tests/test_reference.py"], "dry run: tests/test_reference.py only (a subset; the GPU run takes all)"
    else:
        # test_gpu_script.py runs this script's dry run: not from inside the GPU run
        targets = ["tests", "--ignore=tests/test_ultralytics.py", "--ignore=tests/test_gpu_script.py"]
        scope = ("tests/ without tests/test_ultralytics.py, tests/test_gpu_script.py (this script's dry run) and "
                 "nbval (notebooks); CUDA tests included")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *targets]
    workers = None
    if not ctx.dry_run and importlib.util.find_spec("xdist") is not None:
        workers = min(8, os.cpu_count() or 1)
        cmd += ["-n", str(workers)]
    env = {**os.environ, "GALCORE_PROFILE": "smoke", "MPLBACKEND": "Agg"}
    with tempfile.TemporaryDirectory(prefix="galcore-gpu-tests-") as tmp:
        env["GALCORE_RESULTS"] = tmp
        try:
            proc = _run(cmd, env, max(ctx.left(), 5))
        except subprocess.TimeoutExpired as e:
            ctx.log(str(e.output or "")[-3000:])
            return {"status": "timeout", "scope": scope, "command": " ".join(cmd[1:]),
                    "error": f"pytest ran past the part's budget ({ctx.budget:.0f} s) and was stopped",
                    "passed": None, "failed": None, "skipped": None}
    ctx.log(proc.stdout[-6000:] + proc.stderr[-2000:])
    counts = _pytest_counts(proc.stdout)
    failures = [ln for ln in proc.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))][:30]
    skips = [ln for ln in proc.stdout.splitlines() if ln.startswith("SKIPPED")][:30]
    record = {"scope": scope, "command": " ".join(cmd[1:]), "returncode": proc.returncode, "workers": workers,
              **counts, "failures": failures, "skip_reasons": skips}
    if counts["failed"] or counts["errors"]:
        record["status"] = "error"
        record["error"] = f"{counts['failed']} failed, {counts['errors']} errors"
    return record


# -- notebooks ------------------------------------------------------------------------------
def _notebook_runner_command(profile: str) -> list[str]:
    """The main job's runner on notebook 02 alone (the one import path from the experiments)."""
    return [sys.executable, "-m", "galcore.experiments.main.runner", "--profile", profile, "--only", "02",
            "--jobs", "1"]


def notebooks(ctx: Context) -> dict[str, Any]:
    profile = ctx.size("smoke", "default")
    missing = [m for m in ("nbclient", "nbformat", "ipykernel") if importlib.util.find_spec(m) is None]
    if missing:
        raise Skip(f"notebook execution needs {', '.join(missing)} (not installed; see benchmarks/gpu/README.md)")
    import json

    with tempfile.TemporaryDirectory(prefix="galcore-gpu-nb-") as tmp:
        env = {**os.environ, "GALCORE_RESULTS": tmp}
        env.pop("MPLBACKEND", None)
        cmd = _notebook_runner_command(profile)
        start = time.perf_counter()
        try:
            proc = _run(cmd, env, max(ctx.left(), 5))
        except subprocess.TimeoutExpired as e:
            err = str(e.stderr or "")
            ctx.log(err[-3000:])
            cells = [ln for ln in err.splitlines() if re.match(r"\[02\w*\] cell \d+/\d+", ln)]
            return {"status": "timeout", "profile": profile, "command": " ".join(cmd[1:]),
                    "error": f"notebook 02 ({profile}) did not finish within {ctx.budget:.0f} s",
                    "seconds_per_run": None, "last_cell_started": cells[-1] if cells else None}
        wall = time.perf_counter() - start
        ctx.log(proc.stderr[-4000:])
        log_path = Path(tmp) / "run_log.json"
        runs = json.loads(log_path.read_text())["notebooks"] if log_path.is_file() else []
    record = {"profile": profile, "command": " ".join(cmd[1:]), "returncode": proc.returncode,
              "wall_s": round(wall, 1), "runs": runs,
              "seconds_per_run": round(runs[0]["seconds"], 1) if runs else None,
              "cpu_seconds_per_run": round(runs[0]["cpu_seconds"], 1) if runs and runs[0].get("cpu_seconds") else None}
    if proc.returncode != 0 or not runs or not all(r.get("ok") for r in runs):
        record["status"] = "error"
        record["error"] = "; ".join(f"{r['name']}: cell {r.get('failed_cell')}: {r.get('error')}" for r in runs) or (
            f"runner exited with {proc.returncode}: {proc.stderr[-500:]}")
    return record


# -- stacked seeds --------------------------------------------------------------------------
def _stacked_api() -> tuple[Any, Any, Any, Any]:
    """The harness's stacked-seed trainer, its run config, MNIST-1D and its CNN (the one import
    path from the experiments for this part)."""
    from galcore.experiments.harness.stacked import run_stacked  # type: ignore[import-not-found]

    from galcore.experiments.classification.mnist1d_models import MNIST1DCNN
    from galcore.experiments.harness import TrainConfig
    from galcore.experiments.harness.data import mnist1d

    return run_stacked, TrainConfig, mnist1d, MNIST1DCNN


def seeds(ctx: Context) -> dict[str, Any]:
    """Seeds per device-minute of one epoch of MNIST-1D (4,000 signals, batch 64, SGD momentum,
    lr 0.05) with the paper's CNN, ``stack`` seeds trained at once by ``run_stacked``, standard
    and GAL (ratio 1e-3). The time is ``run_stacked``'s wall time (model building, training,
    the epoch's evaluation), after one warm-up run per arm."""
    try:
        run_stacked, TrainConfig, mnist1d, MNIST1DCNN = _stacked_api()
    except Exception as e:  # noqa: BLE001 - ImportError, or the module failing to import
        raise Skip(f"stacked seeds cannot be imported ({type(e).__name__}: {e}); the harness has no "
                   "stacked seeds here") from None
    data = mnist1d()
    dev = "cuda" if ctx.cuda else "cpu"
    arms = {"standard": None, "gal": {"ratio": 1e-3}}
    sizes = ctx.size([1, 2], [1, 8, 32, 128, 512])
    rows: list[dict[str, Any]] = []
    for arm, gal in arms.items():  # warm-up (cuDNN/cuBLAS handles, allocator)
        run_stacked(TrainConfig(model="cnn", data=data.name, epochs=1, gal=gal, device=dev), [0], data, MNIST1DCNN)
    for n in sizes:
        for arm, gal in arms.items():
            if ctx.left() < 0:
                rows.append({"stack": n, "arm": arm, "skipped": "time budget spent"})
                continue
            cfg = TrainConfig(model="cnn", data=data.name, epochs=1, gal=gal, device=dev)
            if ctx.cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            results = run_stacked(cfg, list(range(n)), data, MNIST1DCNN)
            if ctx.cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
            rows.append({"stack": n, "arm": arm, "wall_s": round(wall, 3), "seeds": len(results),
                         "seeds_per_minute": round(60.0 * n / wall, 1),
                         "final_seed0": {k: v for k, v in results[0].final.items() if isinstance(v, (int, float))}})
            ctx.log(f"   seeds {rows[-1]}")
    return {"task": "MNIST-1D (4000 train), MNIST1DCNN, 1 epoch, batch 64", "rows": rows,
            "unit": "seeds per GPU-minute" if ctx.cuda else "seeds per CPU-minute (dry run, 1 thread)"}
