"""The README and docs/: every Python snippet runs on its own, the generated blocks have the
generators' format, the README stays a short front door, and nothing links the developers' notes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from galcore.experiments.main.report import (
    BEGIN,
    END,
    RELEASE_BEGIN,
    RELEASE_END,
    VERDICT_WORDS,
    release_table,
    render_summary,
)

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
BLOCK = re.compile(r"(<!-- no-test -->\s*)?```python\n(.*?)```", re.DOTALL)
#: the README's length budget (lines) and its prose width (characters; code, tables and links excepted)
MAX_LINES, MAX_WIDTH = 320, 100


def _snippets() -> list[tuple[str, int, str]]:
    return [(page.name, i + 1, code) for page in PAGES
            for i, (skip, code) in enumerate(BLOCK.findall(page.read_text())) if not skip]


def test_readme_has_snippets() -> None:
    assert sum(1 for name, _, _ in _snippets() if name == "README.md") >= 5


@pytest.mark.parametrize(("page", "number", "code"), _snippets(), ids=lambda v: v if isinstance(v, str) and len(v) < 20 else "")
def test_snippet_runs_on_its_own(page: str, number: int, code: str, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Each snippet in a fresh namespace: it names everything it uses."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    try:
        exec(compile(code, f"{page} snippet {number}", "exec"), namespace)  # noqa: S102 - running the docs is the test
    except Exception as e:  # pragma: no cover - the message names the snippet
        raise AssertionError(f"{page} snippet {number} failed: {type(e).__name__}: {e}\n{code}") from e


def test_readme_is_a_short_front_door() -> None:
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines (budget {MAX_LINES})"
    in_code, wide = False, []
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            in_code = not in_code
            continue
        if not in_code and not line.startswith(("|", "![", "<!--")) and len(line) > MAX_WIDTH:
            wide.append(number)
    assert not wide, f"README.md prose lines over {MAX_WIDTH} characters: {wide}"
    # the front door's order: what GAL does, install, the loop, quick start, the notebooks, the rest
    heads = [ln for ln in lines if ln.startswith("## ")]
    order = ["## Install", "## Using GAL in your own loop", "## Quick start", "## Opening the notebooks",
             "## Using GAL elsewhere", "## Practical settings", "## Results: the bottom line", "## Links"]
    assert [h for h in heads if h in order] == order, heads
    # "the release" is defined (and linked) before it is used, and only once
    assert text.count("(https://github.com/luoyan407/gradient_adjustment)") == 1
    assert text.index("**The release**") < text.lower().index("the release's")
    # mde, margin and verdict are defined where first used
    first = min(text.index(w) for w in ("mde", "margin", "verdict") if w in text)
    assert text.index("**mde**") <= first + 2


def test_results_block_is_the_generated_bottom_line() -> None:
    text = README.read_text()
    assert BEGIN in text and END in text
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    if not block:
        pytest.skip("no results copied into the README yet")
    assert block.startswith(("The last main job: profile ", "No results yet"))
    if block.startswith("The last main job"):
        assert "| notebook | " + " | ".join(VERDICT_WORDS) + " |" in block
        assert all(len(line) <= MAX_WIDTH for line in block.splitlines() if not line.startswith("|"))
    # the full tables are in docs/results.md, in render_summary's format
    full = (DOCS / "results.md").read_text()
    generated = render_summary(Path("/nonexistent"), profile="default").splitlines()
    body = full.split("-->", 1)[1].strip().splitlines()
    assert body[0] == generated[0] and body[2].startswith("Environment: date ")
    assert "| metric | mean_control | mean_treatment | mean_diff | low | high | p_value | n |" not in text


def test_method_page_holds_the_generated_release_table() -> None:
    text = (DOCS / "method.md").read_text()
    block = text.split(RELEASE_BEGIN, 1)[1].split(RELEASE_END, 1)[0].strip()
    assert block == release_table()


def test_nothing_cites_the_developers_notes() -> None:
    """The method is docs/method.md; no page, notebook or module points at notes users do not have."""
    files = [*PAGES, *(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "galcore").rglob("*.py"),
             *(ROOT / "tests").glob("*.py"), *(ROOT / "scripts").glob("*")]
    name = "GAL" + ".md"
    cited = [str(p.relative_to(ROOT)) for p in files if p.is_file() and name in p.read_text(errors="replace")]
    assert not cited, cited
