"""The README's Python snippets run as written, and its results block has the generator's format."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from galcore.experiments.main.report import BEGIN, END, render_summary

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(<!-- no-test -->\s*)?```python\n(.*?)```", re.DOTALL)


def _snippets() -> list[str]:
    return [code for skip, code in BLOCK.findall(README.read_text()) if not skip]


def test_readme_has_snippets() -> None:
    assert len(_snippets()) >= 3


def test_readme_snippets_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for i, code in enumerate(_snippets()):
        try:
            exec(compile(code, f"README.md snippet {i + 1}", "exec"), namespace)  # noqa: S102 - running the README is the test
        except Exception as e:  # pragma: no cover - the message names the snippet
            raise AssertionError(f"README snippet {i + 1} failed: {type(e).__name__}: {e}\n{code}") from e


def test_readme_results_block_is_the_generator_output() -> None:
    text = README.read_text()
    assert BEGIN in text and END in text
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    if not block:
        pytest.skip("no results copied into the README yet")
    # same structure as render_summary's output, headings demoted by one level
    generated = render_summary(Path("/nonexistent"), profile="default").splitlines()
    assert block.splitlines()[0] == "##" + generated[0]
    assert block.splitlines()[2].startswith("Environment: date ")
    assert "| metric | mean_control | mean_treatment | mean_diff | low | high | p_value | n |" in block
