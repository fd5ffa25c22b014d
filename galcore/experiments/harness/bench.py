"""Timing and memory of training steps, standard vs GAL (the benchmark script and the cost
study of the ablation notebook both use these), and the release's step restated for timing.

Peak memory of a step: tensor bytes allocated during the step above what was live at its
start — ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the peak of the profiler's
"Total Allocated" in a trace of that step (tensor memory, not the process's RSS).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from galcore.gal import GAL
from galcore.reference import reference_step

__all__ = ["CLOCKS", "ReferenceRunner", "ReleaseRunner", "StepRunner", "quantile", "runner_step", "step_peak_bytes", "throughput",
           "time_steps"]

LossFn = Callable[[Tensor, Tensor], Tensor]


class StepRunner:
    """One arm (standard when ``gal`` is None) of one model: its weights, loss and optimizer.

    ``step(x, y)``: zero_grad, forward, backward (``loss.backward()`` or ``gal.backward``),
    optimizer step.
    """

    def __init__(self, model: nn.Module, gal: GAL | None, loss_fn: LossFn, opt: torch.optim.Optimizer) -> None:
        self.model = model
        self.gal = gal
        self.loss_fn = loss_fn
        self.opt = opt

    def step(self, x: Tensor, y: Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        out = self.model(x)
        if self.gal is None:
            self.loss_fn(out, y).backward()
        else:
            self.gal.backward(out, lambda o: self.loss_fn(o, y), lr=self.opt.param_groups[0]["lr"])
        self.opt.step()

    def persistent_bytes(self) -> int:
        """Bytes of the parameters (h's included), their gradients and the optimizer state."""
        tensors: list[Tensor] = []
        for group in self.opt.param_groups:
            for p in group["params"]:
                tensors.append(p)
                if p.grad is not None:
                    tensors.append(p.grad)
                tensors.extend(v for v in self.opt.state.get(p, {}).values() if isinstance(v, Tensor))
        return sum(t.numel() * t.element_size() for t in tensors)


class ReleaseRunner(StepRunner):
    """The public release's GAL step (the paper's Algorithm 1, "one iteration"), restated to time what its code
    does on a CPU: float32 throughout, no fault handling, ``first_order="mean"``, h (a plain
    ``nn.Sequential`` of ``nn.Linear``, ``h``) in the same optimizer as the model. Like the
    release's code it copies the outputs and their gradient through NumPy (its host round
    trip), feeds h the copy that requires grad and keeps the gradient copy as a leaf that
    requires grad (so the objective's backward also computes gradients for both), reads the
    losses and the decision back as Python floats, and runs three backward calls (loss, h's
    objective, the model).
    """

    def __init__(self, model: nn.Module, h: nn.Module, loss_fn: LossFn, opt: torch.optim.Optimizer,
                 ratio: float, scale: float = 1.0) -> None:
        super().__init__(model, None, loss_fn, opt)
        self.h, self.ratio, self.scale = h, ratio, scale

    def step(self, x: Tensor, y: Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        out = self.model(x)
        out.backward(self._release_gal(out, y))
        self.opt.step()

    def _release_gal(self, out: Tensor, y: Tensor) -> Tensor:
        """The release's GAL part, from the outputs to the gradient it sends back."""
        eta = self.opt.param_groups[0]["lr"] * self.scale
        x0 = torch.tensor(out.detach().cpu().numpy(), device=out.device, requires_grad=True)
        loss0 = self.loss_fn(x0, y)
        loss0_value = loss0.item()
        loss0.backward()
        g = torch.tensor(x0.grad.cpu().double().numpy(), dtype=torch.float32, device=out.device, requires_grad=True)
        a = self.h(x0)
        a = self.ratio * a / a.norm(dim=1, keepdim=True) * g.norm(dim=1, keepdim=True)
        delta = (g + a) * eta
        loss1 = self.loss_fn(x0 - delta, y)
        torch.abs(loss1 + (delta * g).sum(1).mean() - loss0_value).backward()
        return g.data + a.data if loss1.item() <= loss0.item() else g.data


class ReferenceRunner(ReleaseRunner):
    """The same step through :func:`galcore.reference.reference_step` (the tests' oracle: the
    algorithm alone, without the release's host copies and extra gradients)."""

    def _release_gal(self, out: Tensor, y: Tensor) -> Tensor:
        eta = self.opt.param_groups[0]["lr"]
        return reference_step(out, lambda o: self.loss_fn(o, y), self.h, eta, ratio=self.ratio, scale=self.scale,
                              first_order="mean")[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_peak_bytes(runner: StepRunner, x: Tensor, y: Tensor, device: torch.device) -> int | None:
    """Peak tensor bytes allocated during one step above what was live at its start
    (``None`` on devices other than CPU and CUDA)."""
    runner.opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        runner.step(x, y)
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - start)
    if device.type == "cpu":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            runner.step(x, y)
        fd, path = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        try:
            prof.export_chrome_trace(path)
            trace = json.loads(Path(path).read_text())
        finally:
            os.remove(path)
        events = sorted(
            (e for e in trace.get("traceEvents", []) if e.get("name") == "[memory]" and "Total Allocated" in e.get("args", {})),
            key=lambda e: e["ts"],
        )
        if not events:
            return 0
        # "Total Allocated" is the allocator reporter's running count, carried over from earlier
        # profiled steps; the level just before this trace's first event is the baseline.
        first = events[0]["args"]
        baseline = first["Total Allocated"] - first.get("Bytes", 0)
        return int(max(e["args"]["Total Allocated"] for e in events) - baseline)
    return None


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def time_steps(step: Callable[[int], None], n: int, device: torch.device, clock: str = "wall", start: int = 0) -> list[float]:
    """The one step timer: call ``step(i)`` for ``i = start, ..., start + n - 1``, one by one, and
    return each call's seconds (CUDA synchronised around every call). ``clock``: ``"wall"`` or
    ``"cpu"`` (process CPU time: steadier on a shared machine)."""
    now = CLOCKS[clock]
    times = []
    for i in range(start, start + n):
        _sync(device)
        t0 = now()
        step(i)
        _sync(device)
        times.append(now() - t0)
    return times


def runner_step(runner: StepRunner, batches: list[tuple[Tensor, Tensor]]) -> Callable[[int], None]:
    """``step(i)`` for :func:`time_steps`: one ``runner.step`` on ``batches[i % len(batches)]``."""
    return lambda i: runner.step(*batches[i % len(batches)])


def throughput(step: Callable[[], None], device: torch.device, batch_size: int, *, warmup: int, steps: int) -> dict[str, float]:
    """``step()`` ``warmup`` times, then ``steps`` timed calls (:func:`time_steps`): images per
    second, milliseconds per step and peak CUDA memory over the timed steps (GiB; NaN elsewhere)."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    seconds = sum(time_steps(lambda i: step(), steps, device))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"images_per_s": steps * batch_size / seconds, "step_ms": 1000 * seconds / steps, "peak_mem_gib": peak}


def quantile(xs: list[float], q: float) -> float:
    """Linear-interpolated quantile of ``xs`` (NaN when empty)."""
    s = sorted(xs)
    if not s:
        return float("nan")
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)
