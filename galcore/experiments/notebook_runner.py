"""The main job: execute every notebook in ``notebooks/`` headless, in order, and report.

``python -m galcore.experiments.notebook_runner [--profile default] [--only 02 ...]`` runs each notebook
cell by cell (``nbclient``), showing which notebook, which cell (and the section heading it is
under) and the elapsed time. A failing cell is named (notebook, cell number, error) and the
remaining notebooks still run; the command exits non-zero at the end if any failed.

Writes under ``results/``: ``notebooks/<name>.ipynb`` (executed copies), whatever the notebooks
save themselves (figures, tables), ``run_log.json`` and ``summary.md`` (see
:mod:`galcore.experiments.report`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["NotebookOutcome", "main", "run_notebook"]


@dataclass
class NotebookOutcome:
    name: str
    ok: bool
    seconds: float
    cells: int
    failed_cell: int | None = None
    error: str | None = None


def _heading(source: str) -> str | None:
    for line in source.splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return None


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"


def run_notebook(path: Path, out_dir: Path, timeout: int = 3600, stream=sys.stderr) -> NotebookOutcome:
    """Execute one notebook in its own folder; save the executed copy to ``out_dir``."""
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
                print(
                    f"\r[{path.stem}] cell {number}/{len(code_cells)} · {section[:50]:<50} · {_fmt(time.perf_counter() - start)}",
                    end="",
                    file=stream,
                    flush=True,
                )
                try:
                    client.execute_cell(cell, index)
                except CellExecutionError as e:
                    outcome.ok = False
                    outcome.failed_cell = number
                    outcome.error = f"{getattr(e, 'ename', type(e).__name__)}: {getattr(e, 'evalue', e)}"
                    break
    except Exception as e:  # kernel died, timeout, ...
        outcome.ok = False
        outcome.error = f"{type(e).__name__}: {e}"
    outcome.seconds = time.perf_counter() - start
    nbformat.write(nb, out_dir / path.name)
    status = "ok" if outcome.ok else f"FAILED at code cell {outcome.failed_cell}: {outcome.error}"
    print(f"\r[{path.stem}] {status} ({_fmt(outcome.seconds)})" + " " * 40, file=stream, flush=True)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profile", default=os.environ.get("GALCORE_PROFILE", "default"), choices=("smoke", "default", "full"))
    parser.add_argument("--notebooks", type=Path, default=None, help="folder of notebooks (default: <repo>/notebooks)")
    parser.add_argument("--only", nargs="*", default=None, help="run notebooks whose name starts with one of these")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per cell")
    args = parser.parse_args(argv)

    from galcore.experiments.report import write_summary
    from galcore.experiments.results import repo_root, results_dir

    os.environ["GALCORE_PROFILE"] = args.profile
    os.environ.setdefault("MPLBACKEND", "Agg")
    root = repo_root() or Path.cwd()
    os.environ.setdefault("GALCORE_RESULTS", str(root / "results"))
    folder = args.notebooks or root / "notebooks"
    paths = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("_"))
    if args.only:
        paths = [p for p in paths if any(p.name.startswith(o) for o in args.only)]
    if not paths:
        print(f"no notebooks found in {folder}", file=sys.stderr)
        return 1
    out = results_dir("notebooks")
    print(f"galcore main job: {len(paths)} notebooks, profile {args.profile}, results in {out.parent}", file=sys.stderr)
    start = time.perf_counter()
    outcomes = [run_notebook(p, out, args.timeout) for p in paths]
    total = time.perf_counter() - start
    log = {"profile": args.profile, "seconds": total, "notebooks": [asdict(o) for o in outcomes]}
    log_path = out.parent / "run_log.json"
    if args.only and log_path.is_file():  # a partial run updates the earlier log of the same profile
        earlier = json.loads(log_path.read_text())
        if earlier.get("profile") == args.profile:
            merged = {nb["name"]: nb for nb in earlier.get("notebooks", [])}
            merged.update({o.name: asdict(o) for o in outcomes})
            log["notebooks"] = [merged[k] for k in sorted(merged)]
            log["seconds"] = sum(nb["seconds"] for nb in log["notebooks"])
    log_path.write_text(json.dumps(log, indent=2))
    summary = write_summary(out.parent, profile=args.profile, run_log=log)
    failed = [o for o in outcomes if not o.ok]
    print(f"done in {_fmt(total)}; summary: {summary}", file=sys.stderr)
    for o in failed:
        print(f"FAILED: {o.name}, code cell {o.failed_cell}: {o.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
