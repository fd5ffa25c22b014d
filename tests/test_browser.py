"""JupyterLab as a user meets it, in a real browser: scripts/lab.sh starts the server (as the
README says), headless Chromium (Debian's ``chromium``, driven by Playwright for Python) opens
notebook 01 in the smoke profile, runs all cells from the Run menu, and the page must show
progress bars as widgets, figures as images, no error output, no news toast, and a notebook
that was not marked modified by opening it. Screenshots go to the test's temporary folder.

Skipped when ``/usr/bin/chromium`` or the ``playwright`` package is missing (``.ci/run``
installs the browser with apt; Playwright comes with the ``dev`` extra; no browser is ever
downloaded). Also here: the notebooks' stored kernel metadata matches what the kernel reports,
which is what keeps JupyterLab from marking them modified on open."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAB_SH = ROOT / "scripts" / "lab.sh"
CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOK = "notebooks/01_theory.ipynb"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
START_TIMEOUT_S = 180  # server start on a loaded machine
RUN_TIMEOUT_S = 900  # Run All on 01 in the smoke profile: about a minute on an idle machine
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy


def test_notebooks_store_the_kernel_metadata_jupyterlab_fills_in() -> None:
    """JupyterLab writes the kernel's ``language_info`` and kernelspec into a notebook when it
    connects; if the stored ones differ, the notebook shows as modified as soon as it opens."""
    from ipykernel.ipkernel import IPythonKernel
    from jupyter_client.kernelspec import KernelSpecManager

    expected = {k: v for k, v in IPythonKernel.language_info.items() if k != "version"}
    major_minor = IPythonKernel.language_info["version"].split(".")[:2]
    spec = KernelSpecManager().get_kernel_spec("python3")
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        meta = json.loads(path.read_text())["metadata"]
        stored = dict(meta["language_info"])
        # the patch release may differ between machines; major.minor must match
        assert stored.pop("version").split(".")[:2] == major_minor, path.name
        assert stored == expected, path.name
        assert meta["kernelspec"] == {"display_name": spec.display_name, "language": spec.language, "name": "python3"}, path.name


#: every table in the notebook: how far it reaches past its output (px), and whether an element
#: between them scrolls horizontally (a wide table must scroll, not be cut at the right edge)
TABLES_JS = """() => [...document.querySelectorAll('.jp-Notebook table')].map(t => {
  const host = t.closest('.jp-OutputArea-output, .jp-MarkdownOutput') || t.parentElement;
  let el = t.parentElement, scrollable = false;
  while (el && el !== host.parentElement) {
    const ox = getComputedStyle(el).overflowX;
    if ((ox === 'auto' || ox === 'scroll') && el.scrollWidth > el.clientWidth + 1) { scrollable = true; break; }
    el = el.parentElement;
  }
  return {overflow: Math.round(t.getBoundingClientRect().right - host.getBoundingClientRect().right), scrollable,
          text: t.innerText.slice(0, 60)};
})"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``bash scripts/lab.sh --no-browser`` on a free loopback port with a token, in the smoke
    profile, Jupyter's and IPython's user folders in a temporary directory (a first open: no
    saved settings). Yields the lab's URL (token included) and the server's log."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)")
    pytest.importorskip("playwright.sync_api", reason="playwright is missing (the dev extra installs it)")
    pytest.importorskip("jupyterlab")
    tmp = tmp_path_factory.mktemp("lab")
    startup = tmp / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "ipython" / "profile_default" / "startup" / "00-no-network.py", startup)
    token, port = uuid.uuid4().hex, _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "MPLBACKEND", "GALCORE_PROGRESS"))}
    env.update(
        GALCORE_SKIP_SETUP="1", GALCORE_PYTHON=sys.executable, GALCORE_PROFILE="smoke", PYTHONPATH=str(ROOT),
        GALCORE_RESULTS=str(tmp / "results"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_DATA_DIR=str(tmp / "data"), IPYTHONDIR=str(tmp / "ipython"),
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
    )
    args = ["bash", str(LAB_SH), "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}"]
    log = tmp / "server.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(args, cwd=tmp, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            try:
                with OPENER.open(f"{url}/api/status?token={token}", timeout=10) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no answer in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
            time.sleep(0.3)
        yield f"{url}/lab/tree/{NOTEBOOK}?token={token}", log
    finally:
        _stop(proc)


def _all_cells_ran(page: Any) -> bool:
    """Every code cell's prompt shows an execution count (no ``[*]``, no blank prompt)."""
    return bool(page.evaluate(
        """() => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
            return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
        }"""))


def _started(page: Any) -> bool:
    """Some code cell is running or has run (its prompt shows ``[*]`` or a count)."""
    return bool(page.evaluate(
        """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
                  .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"""))


def _shows_error(page: Any) -> bool:
    return page.locator(".jp-OutputArea-output", has_text="Traceback").count() > 0


def _run_all(page: Any, tries: int = 3) -> None:
    """Run > Run All Cells from the menu bar, as a user would; a click that lands before the
    notebook's commands are enabled does nothing, so try again (at most ``tries`` times)."""
    for _ in range(tries):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        for _ in range(20):
            if _started(page):
                return
            page.wait_for_timeout(500)
        page.keyboard.press("Escape")
    raise AssertionError(f"Run All Cells did not start a cell after {tries} tries")


def test_run_all_on_01_renders_widgets_figures_and_no_error(lab: tuple[str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    url, log = lab
    console: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": 1400, "height": 1000})
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.goto(url, timeout=120_000)
            indicator = page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
            indicator.first.wait_for(timeout=180_000)  # kernel started and idle
            page.wait_for_timeout(3000)  # let metadata from the kernel land (what used to mark it modified)
            page.screenshot(path=str(tmp_path / "01-opened.png"))
            tab = page.locator(".lm-TabBar-tab.jp-mod-current")
            assert "jp-mod-dirty" not in (tab.first.get_attribute("class") or ""), "01 shows as modified on open"
            assert page.locator("text=Jupyter news").count() == 0, "the news toast showed on first open"

            _run_all(page)
            deadline = time.monotonic() + RUN_TIMEOUT_S
            # done when every cell ran and the kernel is idle; an error stops Run All, so stop there too
            while not ((_all_cells_ran(page) or _shows_error(page)) and indicator.count() > 0):
                assert time.monotonic() < deadline, f"Run All did not finish in {RUN_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
                page.wait_for_timeout(2000)
            page.wait_for_timeout(2000)  # the last outputs render
            page.screenshot(path=str(tmp_path / "01-ran.png"), full_page=True)

            errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]',
                                  has_text="Traceback")
            error_texts = page.locator(".jp-RenderedText", has_text="Traceback")
            broken_widgets = page.locator(".jp-OutputArea-output", has_text="Error displaying widget")
            assert errors.count() == 0 and error_texts.count() == 0, [t[:800] for t in error_texts.all_inner_texts()]
            assert broken_widgets.count() == 0, broken_widgets.all_inner_texts()[:3]
            bars = page.locator(".jp-OutputArea .widget-progress, .jp-OutputArea .jupyter-widgets.widget-hprogress")
            widgets = page.locator(".jp-OutputArea .jupyter-widgets")
            images = page.locator(".jp-OutputArea-output img")
            assert bars.count() > 0 and widgets.count() > 0, "no progress bar rendered as a widget"
            assert images.count() > 0, "no figure rendered"
            assert all(img.evaluate("i => i.complete && i.naturalWidth > 0") for img in images.all()), "a figure did not load"
            assert page.locator("text=Jupyter news").count() == 0, "the news toast showed during the run"
            assert page.locator(".jp-OutputArea-output", has_text="PosixPath(").count() == 0, "a stray path output"
            tables = page.evaluate(TABLES_JS)
            cut = [t for t in tables if t["overflow"] > 1 and not t["scrollable"]]
            assert not cut, f"tables wider than their output that do not scroll: {cut}"
            summary = {"bars": bars.count(), "widgets": widgets.count(), "images": images.count(),
                       "tables": len(tables), "wide_tables_scrolling": sum(t["overflow"] > 1 for t in tables),
                       "console_errors": console}
            (tmp_path / "summary.json").write_text(json.dumps(summary, indent=1))
            print(f"browser saw: {summary}; screenshots in {tmp_path}")
        finally:
            browser.close()
