"""The main job: execute every notebook in ``notebooks/`` headless, ``--jobs`` at a time, and report.

``python -m galcore.experiments.main.runner [--profile default] [--jobs 2] [--only 02 ...]``
runs each notebook in its own process and kernel (``nbclient``), longest first (the last
run's times for the profile, else :data:`ESTIMATED_MINUTES`), so that two notebooks share the
machine's cores to the end. Every kernel gets one thread (``OMP_NUM_THREADS=1``...), the
profile, ``GALCORE_PROGRESS=log`` (progress bars become rate-limited lines of this log) and
matplotlib's inline backend (no ``MPLBACKEND`` is passed on), so the executed copies contain
their figures. Each cell start is logged (notebook, cell, section heading, elapsed). A failing
cell is named (notebook, cell number, error); the other notebooks still run and the command
exits non-zero at the end.

Writes under ``results/``: ``notebooks/<name>.ipynb`` (executed copies, outputs included),
whatever the notebooks save (figures, tables), ``run_log.json`` (per notebook: ok, wall and
kernel CPU seconds) and ``summary.md`` with ``environment.json``
(:mod:`galcore.experiments.main.report`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

__all__ = ["ESTIMATED_MINUTES", "NotebookOutcome", "kernel_environment", "main", "order_longest_first", "run_notebook"]

#: rough CPU-minutes per notebook in the default profile, by name prefix: the order of a first
#: run (later runs use the previous run's measured times)
ESTIMATED_MINUTES = {"01": 3.0, "02": 12.0, "03": 16.0, "04": 5.0, "05": 7.0}  # the 2026-11-28 default run

#: environment variables that pin numerical libraries to one thread in a kernel
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass
class NotebookOutcome:
    """How one notebook's execution went. ``seconds``: wall time; ``cpu_seconds``: CPU time of
    its kernel and runner process (user + system)."""

    name: str
    ok: bool
    seconds: float
    cells: int
    failed_cell: int | None = None
    error: str | None = None
    cpu_seconds: float | None = None


def _heading(source: str) -> str | None:
    for line in source.splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return None


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"


def kernel_environment(profile: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a notebook kernel runs with: ``base`` (default ``os.environ``) with the
    profile, ``GALCORE_PROGRESS=log``, one thread per numerical library, and no
    ``MPLBACKEND`` (the kernel's inline backend then renders figures into the notebook)."""
    env = dict(os.environ if base is None else base)
    env.pop("MPLBACKEND", None)
    env["GALCORE_PROFILE"] = profile
    env["GALCORE_PROGRESS"] = "log"
    for name in THREAD_VARS:
        env[name] = "1"
    return env


def _cpu_seconds() -> float:
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_notebook(path: Path, out_dir: Path, timeout: int = 3600, stream: TextIO = sys.stderr) -> NotebookOutcome:
    """Execute one notebook in this process's kernel (environment: this process's), with its
    own folder as the working directory; save the executed copy to ``out_dir``."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    section = ""
    outcome = NotebookOutcome(path.stem, True, 0.0, len(code_cells))
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                if cell.cell_type == "markdown":
                    section = _heading(cell.source) or section
                    continue
                if cell.cell_type != "code":
                    continue
                number = code_cells.index(index) + 1
                print(f"[{path.stem}] cell {number}/{len(code_cells)} · {section[:50]} · {_fmt(time.perf_counter() - start)}",
                      file=stream, flush=True)
                try:
                    client.execute_cell(cell, index)
                except CellExecutionError as e:
                    outcome.ok = False
                    outcome.failed_cell = number
                    outcome.error = f"{getattr(e, 'ename', type(e).__name__)}: {getattr(e, 'evalue', e)}"
                    break
    except Exception as e:  # noqa: BLE001 - kernel died, timeout...: recorded, the other notebooks still run
        outcome.ok = False
        outcome.error = f"{type(e).__name__}: {e}"
    outcome.seconds = time.perf_counter() - start
    nbformat.write(nb, out_dir / path.name)
    status = "ok" if outcome.ok else f"FAILED at code cell {outcome.failed_cell}: {outcome.error}"
    print(f"[{path.stem}] {status} ({_fmt(outcome.seconds)})", file=stream, flush=True)
    return outcome


def _run_in_subprocess(path: Path, out_dir: Path, timeout: int, env: dict[str, str]) -> NotebookOutcome:
    """:func:`run_notebook` in a child process (its own kernel, environment and CPU account);
    its log lines go straight to this process's stderr, its outcome comes back in a file."""
    import tempfile

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="galcore-runner-") as tmp:
        result = Path(tmp) / "outcome.json"
        cmd = [sys.executable, "-m", "galcore.experiments.main.runner", "--execute-one", str(path),
               "--out", str(out_dir), "--timeout", str(timeout), "--outcome", str(result)]
        proc = subprocess.run(cmd, env=env, check=False)
        if proc.returncode == 0 and result.is_file():
            return NotebookOutcome(**json.loads(result.read_text()))
    return NotebookOutcome(path.stem, False, time.perf_counter() - start, 0, None,
                           f"runner process exited with {proc.returncode}")


def _last_times(log_path: Path, profile: str) -> dict[str, float]:
    if not log_path.is_file():
        return {}
    try:
        log = json.loads(log_path.read_text())
    except (json.JSONDecodeError, OSError):
        return {}
    if log.get("profile") != profile:
        return {}
    return {nb["name"]: float(nb.get("cpu_seconds") or nb["seconds"]) for nb in log.get("notebooks", []) if nb.get("ok")}


def order_longest_first(paths: list[Path], last: dict[str, float]) -> list[Path]:
    """``paths`` by expected cost, longest first: the last run's seconds where known, else
    :data:`ESTIMATED_MINUTES` by the name's two-digit prefix (1 minute if unlisted); ties keep
    the name order."""
    def cost(p: Path) -> float:
        return last.get(p.stem, 60.0 * ESTIMATED_MINUTES.get(p.stem[:2], 1.0))

    return sorted(sorted(paths), key=cost, reverse=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profile", default=os.environ.get("GALCORE_PROFILE", "default"), choices=("smoke", "default", "full"))
    parser.add_argument("--notebooks", type=Path, default=None, help="folder of notebooks (default: <repo>/notebooks)")
    parser.add_argument("--only", nargs="*", default=None, help="run notebooks whose name starts with one of these")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks executed at the same time (default 2)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per cell")
    parser.add_argument("--execute-one", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--outcome", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")

    if args.execute_one is not None:  # the child: one notebook, its outcome as a JSON file
        outcome = run_notebook(args.execute_one, args.out, args.timeout)
        outcome.cpu_seconds = _cpu_seconds()
        args.outcome.write_text(json.dumps(asdict(outcome)))
        return 0

    from galcore.experiments.harness.results import repo_root, results_dir
    from galcore.experiments.main.report import write_summary

    root = repo_root() or Path.cwd()
    os.environ["GALCORE_PROFILE"] = args.profile
    os.environ.setdefault("GALCORE_RESULTS", str(root / "results"))
    folder = args.notebooks or root / "notebooks"
    paths = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("_"))
    if args.only:
        paths = [p for p in paths if any(p.name.startswith(o) for o in args.only)]
    if not paths:
        print(f"no notebooks found in {folder}", file=sys.stderr)
        return 1
    out = results_dir("notebooks")
    log_path = out.parent / "run_log.json"
    paths = order_longest_first(paths, _last_times(log_path, args.profile))
    print(f"galcore main job: {len(paths)} notebooks, profile {args.profile}, {args.jobs} at a time, "
          f"order {', '.join(p.stem for p in paths)}; results in {out.parent}", file=sys.stderr, flush=True)
    env = kernel_environment(args.profile)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        outcomes = list(pool.map(lambda p: _run_in_subprocess(p, out, args.timeout, env), paths))
    outcomes.sort(key=lambda o: o.name)
    total = time.perf_counter() - start
    log = {"profile": args.profile, "jobs": args.jobs, "seconds": total, "notebooks": [asdict(o) for o in outcomes]}
    if args.only and log_path.is_file():  # a partial run updates the earlier log of the same profile
        earlier = json.loads(log_path.read_text())
        if earlier.get("profile") == args.profile:
            merged = {nb["name"]: nb for nb in earlier.get("notebooks", [])}
            merged.update({o.name: asdict(o) for o in outcomes})
            log["notebooks"] = [merged[k] for k in sorted(merged)]
            # the job's time stays the last full run's; this partial run's is kept beside it
            log.update(seconds=earlier.get("seconds"), rerun={"only": args.only, "seconds": total})
    log_path.write_text(json.dumps(log, indent=2))
    summary = write_summary(out.parent, profile=args.profile, run_log=log)
    failed = [o for o in outcomes if not o.ok]
    print(f"done in {_fmt(total)}; summary: {summary}", file=sys.stderr)
    for o in failed:
        print(f"FAILED: {o.name}, code cell {o.failed_cell}: {o.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
