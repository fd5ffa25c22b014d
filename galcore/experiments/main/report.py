"""``results/summary.md``: each task's conclusion and comparison table, gathered, with the environment.

Every experiment notebook writes ``results/<notebook-stem>/summary.csv`` with the columns of
:data:`SUMMARY_COLUMNS` (one row per compared setting: the paired difference treatment -
control over seeds, its interval, the smallest detectable effect, the margin and the verdict;
:func:`galcore.experiments.harness.compare` builds them) and ``conclusion.md`` (a few computed
sentences). This module renders them in notebook order, and ``python -m galcore.experiments.main.report --readme README.md`` copies the result into the README
between the markers ``<!-- results:begin -->`` and ``<!-- results:end -->``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["PACKAGES", "SUMMARY_COLUMNS", "environment", "render_summary", "update_readme", "write_summary"]

#: columns every ``summary.csv`` provides (extra columns are kept in the CSV, not rendered);
#: ``outputs`` (the number of model outputs C) may be left empty where it does not apply
SUMMARY_COLUMNS = [
    "metric", "mean_control", "mean_treatment", "mean_diff", "low", "high", "p_value", "n",
    "mde", "margin", "verdict", "seeds_needed", "outputs",
]
#: columns that say which comparison a row is, rendered first when present
DESCRIPTORS = ["task", "setting", "study", "factor", "best", "data", "dataset", "arch", "model", "loss", "optimizer", "arm"]
#: optional extra columns rendered after the statistics
EXTRAS = ["overhead_ratio", "accept_rate"]
#: the packages whose versions the environment record lists (distribution names)
PACKAGES = (
    "torch", "torchvision", "ultralytics", "numpy", "pandas", "scipy", "scikit-learn", "matplotlib", "mnist1d",
    "torch-optimizer", "lightning", "jupyterlab", "ipywidgets", "tqdm", "nbclient",
)
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

HOW_TO_READ = (
    "Each row compares a treatment (GAL, or in the ablations a setting of GAL) with its control "
    "(the standard method, or the study's control setting) on the same seeds, initial weights and "
    "data order. `mean_diff` is the mean paired difference treatment - control of `metric` over "
    "`n` seeds, `low`/`high` its 95% confidence interval (Student's t). `mde` is the smallest true "
    "difference this many seeds detect with 80% power (two-sided 5% paired t-test, from the "
    "observed spread of the differences); `margin` is the difference the task counts as "
    "negligible, and `seeds_needed` the seeds that would give 80% power at that size. "
    "`verdict`: `better` or `worse` when the interval excludes 0; `equivalent` when two one-sided "
    "tests place the difference within ±`margin`; `identical` when the final weights are "
    "bit-identical on every seed (the arms are the same computation); otherwise `inconclusive` "
    "(this experiment cannot tell; compare `mde` with `margin`)."
)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment(profile: str | None = None) -> dict[str, Any]:
    """What the results ran on: date, profile, galcore and Python versions, device, CPU cores
    and the version of every package in :data:`PACKAGES` (``"not installed"`` when absent)."""
    import torch

    import galcore

    cores = os.cpu_count()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": profile or os.environ.get("GALCORE_PROFILE", "default"),
        "galcore": galcore.__version__,
        "python": platform.python_version(),
        "device": device,
        "cores": cores,
        "packages": {name: _version(name) for name in PACKAGES},
    }


def _environment_line(env: dict[str, Any]) -> str:
    head = ", ".join(f"{k} {v}" for k, v in env.items() if k != "packages")
    packages = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items())
    return f"Environment: {head}; packages: {packages}."


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if pd.isna(v):
            return ""
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        if v == int(v) and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.3g}" if abs(v) < 1e-3 or abs(v) >= 1e6 else f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v).replace("|", "\\|")  # a cell's own bar must not split the markdown row


def _table(df: pd.DataFrame) -> str:
    if "verdict" not in df.columns:  # a table written before verdicts: say so rather than guess
        df = df.assign(verdict="n/a")
    cols = [c for c in DESCRIPTORS + SUMMARY_COLUMNS + EXTRAS if c in df.columns]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        rows.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return "\n".join(rows)


def render_summary(results: Path, profile: str | None = None, run_log: dict[str, Any] | None = None) -> str:
    """The markdown text of the summary for the ``results`` folder: environment, how to read
    the tables, the run log, then per notebook folder (name order) its ``conclusion.md`` and
    its ``summary.csv`` table."""
    env = environment(profile)
    parts = ["# galcore results", "", _environment_line(env), "", HOW_TO_READ]
    if run_log:
        parts += ["", "| notebook | status | time | CPU |", "|---|---|---|---|"]
        for nb in run_log.get("notebooks", []):
            status = "ok" if nb["ok"] else f"failed at cell {nb.get('failed_cell')}: {nb.get('error')}"
            cpu = nb.get("cpu_seconds")
            cpu_text = f"{cpu / 60:.1f} min" if isinstance(cpu, (int, float)) else ""
            parts.append(f"| {nb['name']} | {status} | {nb['seconds'] / 60:.1f} min | {cpu_text} |")
    folders = sorted({p.parent for p in (*results.glob("*/summary.csv"), *results.glob("*/conclusion.md"))})
    if not folders:
        parts += ["", "No result tables were found."]
    for folder in folders:
        parts += ["", f"## {folder.name}"]
        conclusion = folder / "conclusion.md"
        text = conclusion.read_text().strip() if conclusion.is_file() else ""
        if text.startswith("#"):  # the notebook's own heading: the folder's heading above stands for it
            text = text.partition("\n")[2].strip()
        if text:
            parts += ["", text]
        table = folder / "summary.csv"
        if table.is_file():
            parts += ["", _table(pd.read_csv(table))]
    return "\n".join(parts) + "\n"


def write_summary(results: Path, profile: str | None = None, run_log: dict[str, Any] | None = None) -> Path:
    """Write ``results/summary.md`` and ``results/environment.json``; return the summary's path."""
    results.mkdir(parents=True, exist_ok=True)
    if run_log is None and (results / "run_log.json").is_file():
        run_log = json.loads((results / "run_log.json").read_text())
    profile = profile or (run_log or {}).get("profile")
    text = render_summary(results, profile, run_log)
    (results / "environment.json").write_text(json.dumps(environment(profile), indent=2))
    out = results / "summary.md"
    out.write_text(text)
    return out


def update_readme(readme: Path, summary: Path) -> bool:
    """Replace the README's results block with the summary (headings demoted). True if changed."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} has no {BEGIN} ... {END} block")
    body = "\n".join(("##" + ln if ln.startswith("#") else ln) for ln in summary.read_text().splitlines())
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{body}\n{END}{tail}"
    if new != text:
        readme.write_text(new)
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    from galcore.experiments.harness.results import results_dir

    parser = argparse.ArgumentParser(description="Write results/summary.md and optionally copy it into the README.")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--readme", type=Path, default=None)
    args = parser.parse_args(argv)
    results = args.results or results_dir()
    summary = write_summary(results)
    print(summary)
    if args.readme:
        update_readme(args.readme, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
