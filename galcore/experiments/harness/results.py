"""Where notebooks and the main job write: ``results/<name>/`` (figures as PNG, tables as CSV/JSON).

The root is ``$GALCORE_RESULTS`` if set, else ``results/`` in the repository (found by walking
up from the working directory to ``pyproject.toml``), else ``./results``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["repo_root", "results_dir", "save_figure", "save_json", "save_table"]


def repo_root(start: Path | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default: cwd) holding galcore's pyproject.toml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "galcore").is_dir():
            return folder
    return None


def results_dir(name: str | None = None) -> Path:
    """``results/`` (or ``results/<name>/``), created if missing."""
    env = os.environ.get("GALCORE_RESULTS")
    root = Path(env) if env else (repo_root() or Path.cwd()) / "results"
    path = root / name if name else root
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig: Any, name: str, folder: str, dpi: int = 120) -> Path:
    """Save a matplotlib figure as ``results/<folder>/<name>.png``."""
    path = results_dir(folder) / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def save_table(df: Any, name: str, folder: str) -> Path:
    """Save a pandas DataFrame as ``results/<folder>/<name>.csv``."""
    path = results_dir(folder) / f"{name}.csv"
    df.to_csv(path, index=False)
    return path


def save_json(obj: Any, name: str, folder: str) -> Path:
    """Save a JSON-serialisable object as ``results/<folder>/<name>.json``."""
    path = results_dir(folder) / f"{name}.json"
    path.write_text(json.dumps(obj, indent=2, default=float))
    return path
