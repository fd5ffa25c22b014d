"""The main job's runner and the results summary."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from galcore.experiments import notebook_runner
from galcore.experiments.report import BEGIN, END, render_summary, update_readme, write_summary


def _notebook(path: Path, cells: list[tuple[str, str]]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src) for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_runner_names_the_failing_cell_and_runs_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    books = tmp_path / "nbs"
    books.mkdir()
    _notebook(books / "01_bad.ipynb", [("md", "# Setup"), ("code", "x = 1"), ("md", "## Breaks"), ("code", "raise ValueError('boom')"), ("code", "y = 2")])
    _notebook(books / "02_good.ipynb", [("md", "# Fine"), ("code", "import os\nprint(os.environ['GALCORE_PROFILE'])")])
    monkeypatch.setenv("GALCORE_RESULTS", str(tmp_path / "results"))
    code = notebook_runner.main(["--notebooks", str(books), "--profile", "smoke"])
    assert code == 1
    err = capsys.readouterr().err
    assert "FAILED: 01_bad, code cell 2: ValueError: boom" in err
    log = json.loads((tmp_path / "results" / "run_log.json").read_text())
    bad, good = log["notebooks"]
    assert (bad["ok"], bad["failed_cell"], good["ok"]) == (False, 2, True)
    executed = nbformat.read(tmp_path / "results" / "notebooks" / "02_good.ipynb", as_version=4)
    assert executed.cells[1].outputs[0]["text"].strip() == "smoke"
    summary = (tmp_path / "results" / "summary.md").read_text()
    assert "| 01_bad | failed at cell 2" in summary and "| 02_good | ok |" in summary


def test_summary_renders_each_table_with_a_verdict(tmp_path: Path) -> None:
    task = tmp_path / "02_classification"
    task.mkdir()
    pd.DataFrame(
        [
            {"setting": "sgd", "metric": "test_accuracy", "mean_control": 0.9, "mean_treatment": 0.92, "mean_diff": 0.02, "low": 0.01, "high": 0.03, "p_value": 0.01, "n": 5},
            {"setting": "adam", "metric": "test_accuracy", "mean_control": 0.9, "mean_treatment": 0.89, "mean_diff": -0.01, "low": -0.03, "high": 0.01, "p_value": 0.3, "n": 5},
        ]
    ).to_csv(task / "summary.csv", index=False)
    text = render_summary(tmp_path, profile="default")
    assert "## 02_classification" in text and "profile default" in text
    assert "| sgd | test_accuracy | 0.9 | 0.92 | 0.02 | 0.01 | 0.03 | 0.01 | 5 | higher (CI excludes 0) |" in text
    assert "| adam |" in text and "no significant difference" in text
    out = write_summary(tmp_path, profile="default")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold\n{END}\noutro\n")
    assert update_readme(readme, out)
    body = readme.read_text()
    assert "old" not in body and "### 02_classification" in body and body.endswith("outro\n")
    assert not update_readme(readme, out)  # idempotent
