"""``results/summary.md``: each task's conclusion and comparison table, gathered, with the environment.

Every experiment notebook writes ``results/<notebook-stem>/summary.csv`` with the columns of
:data:`SUMMARY_COLUMNS` (one row per compared setting: the paired difference treatment -
control over seeds, its interval, the smallest detectable effect, the margin and the verdict;
:func:`galcore.experiments.harness.compare` builds them) and ``conclusion.md`` (a few computed
sentences). This module renders them in notebook order (``results/summary.md``), and
``python -m galcore.experiments.main.report --readme README.md`` writes, beside that README:

- ``docs/results.md``: the whole summary (every table and conclusion, the environment);
- the README's bottom line, between ``<!-- results:begin -->`` and ``<!-- results:end -->``: when
  and where the run ran, each notebook's time, its verdict counts and one headline sentence
  (:func:`bottom_line`, computed from the summary's text);
- the release's reported numbers in ``docs/method.md``, between ``<!-- release:begin -->`` and
  ``<!-- release:end -->`` (:func:`release_table`, from the constants the notebooks use).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import re
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd

from galcore.experiments.harness.compare import HOW_TO_READ as COMPARE_HOW_TO_READ
from galcore.experiments.harness.stats import VERDICTS

__all__ = [
    "PACKAGES", "SUMMARY_COLUMNS", "bottom_line", "environment", "release_table", "render_summary", "update_readme",
    "write_summary",
]

#: columns every ``summary.csv`` provides (extra columns are kept in the CSV, not rendered);
#: ``outputs`` (the number of model outputs C) may be left empty where it does not apply
SUMMARY_COLUMNS = [
    "metric", "mean_control", "mean_treatment", "mean_diff", "low", "high", "p_value", "p_holm", "tost_bound",
    "n", "n_diverged", "mde", "margin", "verdict", "same_as", "seeds_needed", "outputs",
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
RELEASE_BEGIN, RELEASE_END = "<!-- release:begin -->", "<!-- release:end -->"
#: where, beside the README, the full results and the method page are
RESULTS_DOC, METHOD_DOC = Path("docs") / "results.md", Path("docs") / "method.md"
#: the verdicts a table's ``verdict`` column holds (:data:`galcore.experiments.harness.stats.VERDICTS`)
VERDICT_WORDS = VERDICTS
#: the widest line of generated prose (the README's wrap)
WIDTH = 100
#: the longest headline taken from a conclusion (characters; longer ones end with "...")
HEADLINE_CHARS = 240

HOW_TO_READ = (
    COMPARE_HOW_TO_READ
    + " In the ablations the control is the study's control setting. Results reproduce in distribution, "
    "not bit for bit: CPU kernels differ between machines of the same kind, so the same code and seeds give "
    "other per-seed numbers elsewhere, with the same spread."
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


def release_table() -> str:
    """The release's reported test errors (%) as a markdown table, from
    :data:`galcore.experiments.regression.study.RELEASE_ERRORS` and ``RELEASE_RATIOS``."""
    from galcore.experiments.regression.study import RELEASE_ERRORS, RELEASE_RATIOS

    rows = ["| data | optimizer | GAL's ratio | standard | GAL | GAL - standard |", "|---|---|---|---|---|---|"]
    for (data, optimizer), (standard, gal) in RELEASE_ERRORS.items():
        ratio = RELEASE_RATIOS.get(data)
        rows.append(f"| {data} | {optimizer} | {'' if ratio is None else f'{ratio:g}'} | {standard:.2f} | {gal:.2f} "
                    f"| {gal - standard:+.2f} |")
    return "\n".join(rows)


def _sections(summary: str) -> tuple[str, list[tuple[str, str]]]:
    """``(head, [(notebook, body), ...])``: the summary split at its ``## <notebook>`` headings."""
    parts = re.split(r"^## (.+)$", summary, flags=re.MULTILINE)
    return parts[0], [(parts[i].strip(), parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def _verdict_counts(body: str) -> dict[str, int]:
    """How many rows of the section's tables carry each verdict."""
    counts = dict.fromkeys(VERDICT_WORDS, 0)
    column = None
    for line in body.splitlines():
        if not line.startswith("|"):
            column = None
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if "verdict" in cells:
            column = cells.index("verdict")
        elif column is not None and column < len(cells) and cells[column] in counts:
            counts[cells[column]] += 1
    return counts


def _headline(body: str) -> str | None:
    """The first sentence (with its bold label, if any) of the section's first paragraph or
    bullet that states a verdict, cut at :data:`HEADLINE_CHARS`."""
    blocks = re.split(r"\n\s*\n|\n(?=\s*- )", body)
    for block in blocks:
        text = " ".join(block.split()).lstrip("- ").strip()
        if not text or text.startswith("|") or not re.search(r"\b(" + "|".join(VERDICT_WORDS) + r"|cannot tell)\b", text):
            continue
        label = ""
        match = re.match(r"(\*\*[^*]+\*\*)\s*(.*)", text)
        if match and match.group(1).rstrip("*").endswith((".", ":")):
            label, text = match.group(1) + " ", match.group(2)
        sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z*(`])", text, maxsplit=1)[0]
        return _shorten(label + sentence)
    return None


def _shorten(line: str) -> str:
    """``line`` if it fits :data:`HEADLINE_CHARS`; else without its parenthesised details (the
    intervals and mdes that docs/results.md keeps), the last first, then cut at a clause
    boundary, marked by "..."."""
    while len(line) > HEADLINE_CHARS:
        groups, depth, start = [], 0, 0
        for i, ch in enumerate(line):
            if ch == "(":
                start = i if depth == 0 else start
                depth += 1
            elif ch == ")" and depth:
                depth -= 1
                if depth == 0:
                    groups.append((start, i + 1))
        if not groups:
            break
        a, b = groups[-1]
        line = line[:a].rstrip() + line[b:]
    if len(line) <= HEADLINE_CHARS:
        return line
    cut = max(line.rfind("; ", 0, HEADLINE_CHARS - 4), line.rfind(", ", 0, HEADLINE_CHARS - 4))
    return line[: cut if cut > 0 else HEADLINE_CHARS - 4].rstrip() + " ..."


def bottom_line(summary: str) -> str:
    """The README's short results block, computed from a summary's text (:func:`render_summary`'s
    format): the run's date, profile and machine, each notebook's time, a table of verdict counts
    per notebook, and each notebook's headline sentence. Lines wrapped at :data:`WIDTH`."""
    head, sections = _sections(summary)
    env = re.search(r"^Environment: ([^;\n]*)", head, flags=re.MULTILINE)
    facts = dict(item.split(" ", 1) for item in env.group(1).split(", ") if " " in item) if env else {}
    times = re.findall(r"^\| (\S+) \| (ok|failed[^|]*) \| ([\d.]+ min) \|", head, flags=re.MULTILINE)
    lines = []
    if facts:
        where = ", ".join(f"{k} {facts[k]}" for k in ("device", "cores") if k in facts)
        lines.append(f"The last main job: profile `{facts.get('profile', '?')}`, {facts.get('date', '?')}, {where}.")
    if times:
        parts = [f"{name} {t}" + ("" if status == "ok" else f" ({status.strip()})") for name, status, t in times]
        lines.append("Notebook times (two notebooks run at a time): " + ", ".join(parts) + ".")
    out = [textwrap.fill(" ".join(lines), WIDTH)] if lines else []
    if not sections:
        return "\n".join([*out, "", "No results yet: run `bash scripts/main.sh`."]).strip() + "\n"
    out += ["", "| notebook | " + " | ".join(VERDICT_WORDS) + " |", "|---|" + "---|" * len(VERDICT_WORDS)]
    headlines = []
    for name, body in sections:
        counts = _verdict_counts(body)
        out.append(f"| {name} | " + " | ".join(str(counts[v]) for v in VERDICT_WORDS) + " |")
        headline = _headline(body)
        if headline:
            headlines.append(textwrap.fill(f"- {name}: {headline}", WIDTH, subsequent_indent="  "))
    if headlines:
        out += ["", *headlines]
    return "\n".join(out) + "\n"


def _replace_block(path: Path, begin: str, end: str, body: str) -> bool:
    """Replace the text between ``begin`` and ``end`` in ``path`` with ``body``. True if changed."""
    text = path.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{path} has no {begin} ... {end} block")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{begin}\n{body.strip()}\n{end}{tail}"
    if new == text:
        return False
    path.write_text(new)
    return True


def update_readme(readme: Path, summary: Path) -> bool:
    """Write the summary to ``docs/results.md`` beside ``readme``, the :func:`bottom_line` into
    the README's results block and the :func:`release_table` into ``docs/method.md`` (when that
    page exists). True if any file changed."""
    text = summary.read_text()
    doc = readme.parent / RESULTS_DOC
    doc.parent.mkdir(parents=True, exist_ok=True)
    full = (f"<!-- Written by `python -m galcore.experiments.main.report --readme README.md` from "
            f"results/summary.md; do not edit. -->\n\n{text.strip()}\n")
    changed = not doc.is_file() or doc.read_text() != full
    if changed:
        doc.write_text(full)
    changed |= _replace_block(readme, BEGIN, END, bottom_line(text))
    method = readme.parent / METHOD_DOC
    if method.is_file():
        changed |= _replace_block(method, RELEASE_BEGIN, RELEASE_END, release_table())
    return changed


def main(argv: list[str] | None = None) -> int:
    from galcore.experiments.harness.results import results_dir

    parser = argparse.ArgumentParser(description="Write results/summary.md; with --readme, docs/results.md and the README's bottom line.")
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
