"""``results/summary.md``: each task's GAL-vs-standard table, gathered, with the environment.

Every experiment notebook writes ``results/<notebook-stem>/summary.csv`` with (at least) the
columns of :data:`SUMMARY_COLUMNS`: one row per compared setting, the paired difference
GAL - standard over seeds with its confidence interval. This module renders them in notebook
order, and ``python -m galcore.experiments.report --readme README.md`` copies the result into the README
between the markers ``<!-- results:begin -->`` and ``<!-- results:end -->``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["SUMMARY_COLUMNS", "environment", "render_summary", "update_readme", "write_summary"]

#: columns every ``summary.csv`` provides (extra columns are kept in the CSV, not rendered)
SUMMARY_COLUMNS = ["metric", "mean_control", "mean_treatment", "mean_diff", "low", "high", "p_value", "n"]
#: columns that say which comparison a row is, rendered first when present
DESCRIPTORS = ["setting", "study", "factor", "best", "data", "dataset", "arch", "model", "loss", "optimizer"]
#: optional extra columns rendered after the statistics
EXTRAS = ["overhead_ratio", "accept_rate"]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def environment(profile: str | None = None) -> dict[str, Any]:
    """What the results ran on: versions, device, date, profile."""
    import torch

    import galcore

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": profile or os.environ.get("GALCORE_PROFILE", "default"),
        "galcore": galcore.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


def _verdict(low: Any, high: Any) -> str:
    if pd.isna(low) or pd.isna(high):
        return "n/a"
    if low > 0:
        return "higher (CI excludes 0)"
    if high < 0:
        return "lower (CI excludes 0)"
    return "no significant difference"


def _table(df: pd.DataFrame) -> str:
    cols = [c for c in DESCRIPTORS + SUMMARY_COLUMNS + EXTRAS if c in df.columns]
    rows = ["| " + " | ".join(cols + ["verdict"]) + " |", "|" + "---|" * (len(cols) + 1)]
    for _, r in df.iterrows():
        rows.append("| " + " | ".join(_fmt(r[c]) for c in cols) + f" | {_verdict(r.get('low'), r.get('high'))} |")
    return "\n".join(rows)


def render_summary(results: Path, profile: str | None = None, run_log: dict[str, Any] | None = None) -> str:
    """The markdown text of the summary for the ``results`` folder."""
    env = environment(profile)
    parts = [
        "# galcore results",
        "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".",
        "",
        "Each row compares a treatment (GAL, or in the ablations a setting of GAL) with its control "
        "(the standard method, or the study's control setting) on the same seeds, initial weights "
        "and data order: `mean_diff` is the mean paired difference treatment - control of `metric`, "
        "`low`/`high` its 95% confidence interval (Student's t over seeds); the verdict says whether "
        "the treatment's metric is higher or lower with the interval excluding 0 (for errors and "
        "losses lower is better, for accuracy higher).",
    ]
    if run_log:
        parts += ["", "| notebook | status | time |", "|---|---|---|"]
        for nb in run_log.get("notebooks", []):
            status = "ok" if nb["ok"] else f"failed at cell {nb.get('failed_cell')}: {nb.get('error')}"
            parts.append(f"| {nb['name']} | {status} | {nb['seconds'] / 60:.1f} min |")
    tables = sorted(p for p in results.glob("*/summary.csv"))
    if not tables:
        parts += ["", "No result tables were found."]
    for path in tables:
        df = pd.read_csv(path)
        title = path.parent.name
        parts += ["", f"## {title}", "", _table(df)]
    return "\n".join(parts) + "\n"


def write_summary(results: Path, profile: str | None = None, run_log: dict[str, Any] | None = None) -> Path:
    """Write ``results/summary.md`` (and ``environment.json``); return its path."""
    results.mkdir(parents=True, exist_ok=True)
    if run_log is None and (results / "run_log.json").is_file():
        run_log = json.loads((results / "run_log.json").read_text())
    text = render_summary(results, profile or (run_log or {}).get("profile"), run_log)
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
    from galcore.experiments.results import results_dir

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
