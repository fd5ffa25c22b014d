"""Progress bars: where they go (widget, log, terminal, off), and the log's whole, rate-limited lines.
Figures: saved and closed by plots.show. The profile set from a notebook."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from galcore.experiments.harness import progress as P
from galcore.experiments.harness.profile import use_profile


def test_mode_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("off", "log", "terminal", "widget", " LOG "):
        monkeypatch.setenv("GALCORE_PROGRESS", value)
        assert P.progress_mode() == value.strip().lower()
    monkeypatch.setenv("GALCORE_PROGRESS", "loud")
    with pytest.raises(ValueError, match="GALCORE_PROGRESS"):
        P.progress_mode()


@pytest.mark.parametrize(
    ("kernel", "widgets", "tty", "expected"),
    [(True, True, False, "widget"), (True, False, False, "log"), (False, True, True, "terminal"), (False, True, False, "log")],
)
def test_mode_from_where_the_code_runs(monkeypatch: pytest.MonkeyPatch, kernel: bool, widgets: bool, tty: bool, expected: str) -> None:
    monkeypatch.delenv("GALCORE_PROGRESS", raising=False)
    monkeypatch.setattr(P, "in_kernel", lambda: kernel)
    monkeypatch.setattr(P, "_has_widgets", lambda: widgets)
    monkeypatch.setattr(P, "_stderr_is_tty", lambda: tty)
    assert P.progress_mode() == expected


def test_not_in_a_kernel_here() -> None:
    assert P.in_kernel() is False


def test_log_mode_writes_whole_lines_to_the_real_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr("sys.__stderr__", log)
    bar = P.progress(range(5), desc="runs", mode="log", mininterval=0)
    for i in bar:
        bar.set_postfix(arm="gal", seed=i, refresh=False)
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    assert "5/5" in text.splitlines()[-1] and "arm=gal" in text
    quiet = io.StringIO()
    monkeypatch.setattr("sys.__stderr__", quiet)
    for _ in P.progress(range(1000), desc="many", mode="log"):  # default interval: no line per item
        pass
    assert 1 <= len(quiet.getvalue().splitlines()) <= 3 and "1000/1000" in quiet.getvalue()


def test_off_mode_is_silent_but_usable(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    log = io.StringIO()
    monkeypatch.setattr("sys.__stderr__", log)
    bar = P.progress(total=3, desc="x", mode="off")
    bar.set_postfix(arm="a", seed=0)
    bar.update(3)
    bar.close()
    assert log.getvalue() == "" and capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="mode"):
        P.progress(range(2), mode="fancy")  # type: ignore[arg-type]


def test_show_saves_the_png_and_closes_the_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.pyplot as plt

    from galcore.experiments.harness.plots import show

    monkeypatch.setenv("GALCORE_RESULTS", str(tmp_path))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = show(fig, "line", "demo")
    assert path == tmp_path / "demo" / "line.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)


def test_use_profile_sets_and_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALCORE_PROFILE", "smoke")
    assert use_profile(" Default ") == "default" and os.environ["GALCORE_PROFILE"] == "default"
    with pytest.raises(ValueError, match="profile"):
        use_profile("huge")
    assert os.environ["GALCORE_PROFILE"] == "default"
    with pytest.raises(TypeError, match="profile"):
        use_profile(3)  # type: ignore[arg-type]
