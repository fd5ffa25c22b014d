"""The main job's runner (parallel kernels, figures and display updates kept) and the results summary."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from galcore.experiments.main import runner as notebook_runner
from galcore.experiments.main.report import (
    BEGIN,
    END,
    PACKAGES,
    SUMMARY_COLUMNS,
    environment,
    render_summary,
    update_readme,
    write_summary,
)


def _notebook(path: Path, cells: list[tuple[str, str]]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src) for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


FIGURE_CELLS = [
    ("md", "# Figures"),
    ("code", "from IPython.display import Markdown, display\nFINDINGS = display(Markdown('_pending_'), display_id=True)"),
    ("code", ("import os, matplotlib, matplotlib.pyplot as plt\nfrom galcore.experiments.harness.plots import show\n"
              "fig, ax = plt.subplots()\nax.plot([0, 1], [1, 0])\npath = show(fig, 'line', 'tiny')\n"
              "print(matplotlib.get_backend(), os.environ['GALCORE_PROGRESS'], os.environ['OMP_NUM_THREADS'])")),
    ("code", "FINDINGS.update(Markdown('**computed findings**'))"),
]


def test_runner_runs_in_parallel_names_failures_and_keeps_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    books = tmp_path / "nbs"
    books.mkdir()
    _notebook(books / "01_bad.ipynb", [("md", "# Setup"), ("code", "x = 1"), ("md", "## Breaks"), ("code", "raise ValueError('boom')"), ("code", "y = 2")])
    _notebook(books / "02_good.ipynb", [("md", "# Fine"), ("code", "import os\nprint(os.environ['GALCORE_PROFILE'])")])
    _notebook(books / "03_figures.ipynb", FIGURE_CELLS)
    results = tmp_path / "results"
    monkeypatch.setenv("GALCORE_RESULTS", str(results))
    monkeypatch.setenv("MPLBACKEND", "Agg")  # what a headless shell may export: kernels must not inherit it
    code = notebook_runner.main(["--notebooks", str(books), "--profile", "smoke", "--jobs", "2"])
    assert code == 1
    err = capsys.readouterr().err
    assert "FAILED: 01_bad, code cell 2: ValueError: boom" in err
    log = json.loads((results / "run_log.json").read_text())
    bad, good, figs = log["notebooks"]
    assert (bad["ok"], bad["failed_cell"], good["ok"], figs["ok"]) == (False, 2, True, True)
    assert log["jobs"] == 2 and all(nb["cpu_seconds"] > 0 for nb in log["notebooks"])
    executed = nbformat.read(results / "notebooks" / "02_good.ipynb", as_version=4)
    assert executed.cells[1].outputs[0]["text"].strip() == "smoke"
    nb = nbformat.read(results / "notebooks" / "03_figures.ipynb", as_version=4)
    top, figure = nb.cells[1].outputs, nb.cells[2].outputs
    assert [o["data"]["text/markdown"] for o in top if o["output_type"] == "display_data"] == ["**computed findings**"]
    images = [o for o in figure if o["output_type"] == "display_data" and "image/png" in o["data"]]
    assert len(images) == 1 and (results / "tiny" / "line.png").is_file()
    printed = "".join(o.get("text", "") for o in figure if o["output_type"] == "stream").split()
    assert printed[1:] == ["log", "1"] and "inline" in printed[0]
    summary = (results / "summary.md").read_text()
    assert "| 01_bad | failed at cell 2" in summary and "| 02_good | ok |" in summary
    assert notebook_runner.main(["--notebooks", str(books), "--profile", "smoke", "--only", "02"]) == 0
    rerun = json.loads((results / "run_log.json").read_text())  # a partial run updates its notebooks only
    assert [nb["name"] for nb in rerun["notebooks"]] == ["01_bad", "02_good", "03_figures"]
    assert rerun["notebooks"][0] == bad and rerun["notebooks"][1]["seconds"] != good["seconds"]
    assert rerun["seconds"] == log["seconds"] and rerun["rerun"]["only"] == ["02"] and rerun["rerun"]["seconds"] > 0


def test_longest_first_order_and_kernel_environment() -> None:
    paths = [Path(f"{n}.ipynb") for n in ("01_theory", "02_classification", "03_detection", "04_regression", "99_extra")]
    estimated = notebook_runner.order_longest_first(paths, {})
    costs = [notebook_runner.ESTIMATED_MINUTES.get(p.stem[:2], 1.0) for p in estimated]
    assert costs == sorted(costs, reverse=True) and estimated[-1].stem == "99_extra"
    measured = notebook_runner.order_longest_first(paths, {"01_theory": 1e6, "99_extra": 5e5})
    assert [p.stem for p in measured[:2]] == ["01_theory", "99_extra"]
    env = notebook_runner.kernel_environment("default", {"MPLBACKEND": "Agg", "PATH": "/bin"})
    assert "MPLBACKEND" not in env and env["PATH"] == "/bin"
    assert (env["GALCORE_PROFILE"], env["GALCORE_PROGRESS"], env["OMP_NUM_THREADS"]) == ("default", "log", "1")


def _row(setting: str, **values: object) -> dict[str, object]:
    base = {"setting": setting, "metric": "test_error", "mean_control": 2.0, "mean_treatment": 1.9, "mean_diff": -0.1,
            "low": -0.2, "high": -0.01, "p_value": 0.03, "n": 10, "mde": 0.08, "margin": 0.05, "verdict": "better",
            "seeds_needed": 25, "outputs": 10}
    return {**base, **values}


def test_summary_gathers_conclusions_and_tables_with_verdicts(tmp_path: Path) -> None:
    task = tmp_path / "02_classification"
    task.mkdir()
    pd.DataFrame([_row("sgd"), _row("adam", verdict="inconclusive", mean_diff=0.01, low=-0.2, high=0.22),
                  _row("r=0.1 | frozen"), _row("diverged", mean_treatment=1.9e31)]).to_csv(task / "summary.csv", index=False)
    (task / "conclusion.md").write_text("## 02 · Classification\n\nCONCLUSION-MARKER\n")
    theory = tmp_path / "01_theory"
    theory.mkdir()
    (theory / "conclusion.md").write_text("THEORY-MARKER\n")
    legacy = tmp_path / "03_legacy"
    legacy.mkdir()
    pd.DataFrame([{"metric": "m", "mean_control": 1.0, "mean_treatment": 1.0, "mean_diff": 0.0, "low": -1.0, "high": 1.0,
                   "p_value": 1.0, "n": 3}]).to_csv(legacy / "summary.csv", index=False)
    text = render_summary(tmp_path, profile="default")
    lines = text.splitlines()
    header = "| setting | " + " | ".join(SUMMARY_COLUMNS) + " |"
    assert header in lines
    assert "| sgd | test_error | 2 | 1.9 | -0.1 | -0.2 | -0.01 | 0.03 | 10 | 0.08 | 0.05 | better | 25 | 10 |" in lines
    assert "| adam | test_error | 2 | 1.9 | 0.01 | -0.2 | 0.22 | 0.03 | 10 | 0.08 | 0.05 | inconclusive | 25 | 10 |" in lines
    # each notebook's conclusion sits under its heading, before its table; notebooks in name order
    i_theory, i_clf, i_legacy = (lines.index(f"## {n}") for n in ("01_theory", "02_classification", "03_legacy"))
    assert i_theory < lines.index("THEORY-MARKER") < i_clf < lines.index("CONCLUSION-MARKER") < lines.index(header) < i_legacy
    assert "| m | 1 | 1 | 0 | -1 | 1 | 1 | 3 | n/a |" in lines  # a table without verdicts is not given one
    assert "| r=0.1 \\| frozen | test_error | 2 | 1.9 | -0.1 | -0.2 | -0.01 | 0.03 | 10 | 0.08 | 0.05 | better | 25 | 10 |" in lines
    assert "## 02 · Classification" not in text  # one heading per notebook
    assert "| diverged | test_error | 2 | 1.9e+31 |" in text  # large values in short form
    out = write_summary(tmp_path, profile="default")
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["profile"] == "default" and set(env["packages"]) == set(PACKAGES)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nSTALE\n{END}\noutro\n")
    assert update_readme(readme, out)
    body = readme.read_text()
    assert "STALE" not in body and "### 02_classification" in body and body.endswith("outro\n")
    assert not update_readme(readme, out)  # idempotent


def test_environment_lists_every_package_version() -> None:
    import importlib.metadata as md

    env = environment("smoke")
    assert env["packages"]["torch"] == md.version("torch") and env["packages"]["scipy"] == md.version("scipy")
    assert env["profile"] == "smoke" and env["cores"] >= 1 and env["python"].count(".") == 2
    for name, version in env["packages"].items():
        try:
            assert version == md.version(name)
        except md.PackageNotFoundError:
            assert version == "not installed"
