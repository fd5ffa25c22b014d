"""What every part of the GPU check shares: the run's context, a part's time budget and outcome,
and step timing (CUDA events on a GPU, ``perf_counter`` on the CPU).

A part is a function ``part(ctx) -> dict``. :func:`run_part` runs it under its budget and
returns its record: the part's own keys plus ``status`` (``ok``, ``skipped``, ``error`` or
``timeout``), ``seconds`` (wall) and, unless ``ok``, ``reason`` or ``error``. A part that
raises :class:`Skip` is recorded as skipped with the message as its reason; any other
exception is recorded as an error (type, message, the traceback's last lines) and the next
part still runs.
"""

from __future__ import annotations

import contextlib
import signal
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Context", "PartTimeout", "Skip", "median_ms", "run_part", "time_step"]


class Skip(Exception):
    """Raised by a part that cannot run here; its message is the recorded reason."""


class PartTimeout(Exception):
    """Raised inside a part when its budget (plus a grace period) has run out."""


@dataclass
class Context:
    """The run: dry (CPU, toy sizes) or full, the device, and the clock of the current part.

    ``budget`` is the current part's seconds; ``left()`` what remains of it. Parts check
    ``left()`` between measurements and stop early, keeping what they measured; a part that
    overruns by more than ``grace`` seconds is interrupted (SIGALRM).
    """

    dry_run: bool
    device: torch.device
    out: Any  # pathlib.Path of the output folder
    log: Callable[[str], None] = print
    budget: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    grace: float = 20.0
    notes: dict[str, Any] = field(default_factory=dict)  # shared between parts (e.g. packages)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.started)

    def size(self, dry: Any, full: Any) -> Any:
        """``dry`` in a dry run, else ``full``."""
        return dry if self.dry_run else full


def _on_alarm(signum: int, frame: Any) -> None:
    raise PartTimeout("the part ran past its time budget and was interrupted")


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    if not hasattr(signal, "SIGALRM"):
        yield
        return
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_part(name: str, part: Callable[[Context], dict[str, Any]], ctx: Context, budget: float) -> dict[str, Any]:
    """Run one part under ``budget`` seconds; always returns its record (never raises,
    except KeyboardInterrupt)."""
    ctx.budget, ctx.started = budget, time.perf_counter()
    ctx.log(f"== {name}: budget {budget:.0f} s")
    record: dict[str, Any]
    try:
        with _alarm(budget + ctx.grace):
            record = {"status": "ok", **part(ctx)}
    except Skip as e:
        record = {"status": "skipped", "reason": str(e)}
    except PartTimeout as e:
        record = {"status": "timeout", "error": str(e)}
    except Exception as e:  # noqa: BLE001 - one part's failure is recorded, the rest still run
        record = {
            "status": "error",
            "error": f"{type(e).__name__}: {e}"[:2000],
            "traceback": traceback.format_exc().splitlines()[-12:],
        }
    finally:
        if ctx.cuda:
            with contextlib.suppress(Exception):
                torch.cuda.set_sync_debug_mode("default")
    record["seconds"] = round(time.perf_counter() - ctx.started, 2)
    record["budget_s"] = budget
    shown = record.get("reason") or record.get("error") or ""
    ctx.log(f"== {name}: {record['status']} in {record['seconds']:.1f} s {shown}".rstrip())
    return record


def time_step(step: Callable[[], None], device: torch.device) -> Callable[[], float]:
    """Run ``step`` once and return a function that gives its time in milliseconds.

    CUDA: events recorded around the step on the current stream, read after the caller's
    block (no synchronize inside the timed region; ``elapsed_time`` waits for the end event).
    CPU: ``perf_counter`` around the step.
    """
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        return lambda: start.elapsed_time(end)
    t0 = time.perf_counter()
    step()
    ms = (time.perf_counter() - t0) * 1e3
    return lambda: ms


def median_ms(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None
