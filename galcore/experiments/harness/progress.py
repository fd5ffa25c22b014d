"""Progress bars for long cells: a widget in JupyterLab, rate-limited lines in a headless log.

:func:`progress` returns a tqdm bar (iterate over it, ``set_postfix(arm=..., seed=...)``,
``update()``); tqdm shows done/total, elapsed and remaining. Where it goes is
:func:`progress_mode`:

- ``"widget"``: inside a Jupyter kernel with ipywidgets installed (``tqdm.auto``).
- ``"log"``: headless (``GALCORE_PROGRESS=log``, which the main job sets for its kernels, or
  outside a kernel with stderr not a terminal): one line per update, at most every
  ``LOG_INTERVAL`` seconds, written to the process's real stderr (``sys.__stderr__``, the
  main job's log; ipykernel also copies that file descriptor's output into the cell, so an
  executed notebook keeps the same few lines).
- ``"terminal"``: a terminal (stderr is a tty): tqdm's usual bar.
- ``"off"``: ``GALCORE_PROGRESS=off``: a disabled bar (iteration and ``set_postfix`` still work).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable
from typing import Any, Literal

__all__ = ["ENV_VAR", "LOG_INTERVAL", "MODES", "in_kernel", "progress", "progress_mode"]

Mode = Literal["widget", "log", "terminal", "off"]
MODES: tuple[Mode, ...] = ("widget", "log", "terminal", "off")
ENV_VAR = "GALCORE_PROGRESS"
#: seconds between two lines of a headless bar
LOG_INTERVAL = 30.0


def in_kernel() -> bool:
    """Whether this code runs inside a Jupyter kernel (an IPython ZMQ shell)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _has_widgets() -> bool:
    return importlib.util.find_spec("ipywidgets") is not None


def _stderr_is_tty() -> bool:
    stream = sys.__stderr__
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_mode() -> Mode:
    """Where bars go now: ``$GALCORE_PROGRESS`` if set (one of :data:`MODES`), else ``widget`` in
    a kernel with ipywidgets, ``terminal`` when stderr is a tty, ``log`` otherwise."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value:
        if value not in MODES:
            raise ValueError(f"{ENV_VAR}={value!r} is not a progress mode; use one of {', '.join(MODES)}")
        return value  # type: ignore[return-value]
    if in_kernel():
        return "widget" if _has_widgets() else "log"
    return "terminal" if _stderr_is_tty() else "log"


class _LineWriter:
    """A file for tqdm that turns its carriage-return redraws into whole lines (a log file
    keeps one line per update instead of one line of overwrites)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress(
    iterable: Iterable[Any] | None = None,
    total: int | None = None,
    desc: str = "",
    *,
    unit: str = "run",
    leave: bool = True,
    mode: Mode | None = None,
    **kwargs: Any,
) -> Any:
    """A tqdm bar over ``iterable`` (``total`` items; ``len(iterable)`` when it has one) for
    the current :func:`progress_mode` (or ``mode``). Extra keywords go to tqdm."""
    mode = mode or progress_mode()
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "widget":
        from tqdm.auto import tqdm as bar

        return bar(iterable, total=total, desc=desc, unit=unit, leave=leave, **kwargs)
    from tqdm.std import tqdm as bar  # type: ignore[no-redef]

    if mode == "off":
        return bar(iterable, total=total, desc=desc, unit=unit, disable=True, **kwargs)
    if mode == "log":
        kwargs.setdefault("mininterval", LOG_INTERVAL)
        kwargs.setdefault("maxinterval", max(LOG_INTERVAL, kwargs["mininterval"]))
        kwargs.setdefault("ascii", True)
        kwargs.setdefault("ncols", 100)
        return bar(iterable, total=total, desc=desc, unit=unit, leave=True, file=_LineWriter(sys.__stderr__ or sys.stderr),
                   dynamic_ncols=False, **kwargs)
    return bar(iterable, total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr, **kwargs)
