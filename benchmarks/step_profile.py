"""Where the time of one GAL step goes: a per-phase CPU-time breakdown, against the standard step.

    python benchmarks/step_profile.py --threads 1 --models mlp,cnn --readme README.md   # the profile in docs/speed.md
    python benchmarks/step_profile.py --models mlp --variants gal --ops 25    # plus torch.profiler's top ops

The variants of ``benchmarks/step_overhead.py`` (same models, weights, h and settings) run
``--steps`` steps each, interleaved in blocks of 10 (ABC CBA ...); every phase is timed on its
own with ``time.process_time`` (CPU time of the whole process, so other processes on a shared
machine do not count; with ``--threads > 1`` it includes OpenMP spin-waits). The table gives
the median microseconds per step of each phase:

- ``forward``: the model's forward;
- ``gal: arithmetic``: GAL's own arithmetic (``_eager_math``, or the compiled function with
  dynamo's guards and the generated code), from the outputs to the gradients to send;
- ``gal: other``: the rest of ``GAL._compute`` (checks, dtype handling, the loss at the outputs
  in float32 when GAL computes in float64, the record);
- ``backward``: ``loss.backward()``, or GAL's one final backward call (the model's backward, and
  h's gradient through its gate in the eager step);
- ``gal: commit``: the counters and the rounding-level watch;
- ``optimizer``: ``zero_grad`` and ``step``;
- ``release: gal``: the release's GAL part, from the outputs to the gradient it sends (its
  host copies and its two backward calls for the loss and h included).

``rest`` is the step's total minus the phases (Python between them). A variant's ``+ over
standard`` column is its phase minus the standard step's, so the columns add up to what GAL
costs per step.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from step_overhead import MODELS, make_runners

import galcore.gal as gal_module

PHASES = ("forward", "gal: arithmetic", "gal: other", "backward", "gal: commit", "optimizer", "release: gal", "rest")


class PhaseClock:
    """Accumulates CPU time per phase for the current step (``wrap`` replaces a callable)."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.depth = 0

    def wrap(self, fn: Callable[..., Any], phase: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.depth += 1
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                if self.depth == 1 or phase.startswith("gal: arithmetic"):
                    self.current[phase] += time.process_time() - start
                self.depth -= 1

        return timed


class VariantProfile:
    """One variant's step with its phases timed (``run(n)``), and the medians (``summary()``)."""

    def __init__(self, runner: Any, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.runner, self.batches, self.done = runner, batches, 0
        self.rows: dict[str, list[float]] = defaultdict(list)

    def run(self, steps: int) -> None:
        profile_steps(self.runner, self.batches, steps, self.done, self.rows)
        self.done += steps

    def summary(self) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in self.rows.items()}


def profile_steps(
    runner: Any, batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int, start: int, rows: dict[str, list[float]]
) -> None:
    """Run ``steps`` steps, appending each phase's CPU microseconds (and ``total``) to ``rows``."""
    clock = PhaseClock()
    runner.model.forward = clock.wrap(runner.model.forward, "forward")
    runner.opt.step = clock.wrap(runner.opt.step, "optimizer")
    runner.opt.zero_grad = clock.wrap(runner.opt.zero_grad, "optimizer")
    originals: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, phase: str) -> None:
        originals.append((owner, name, getattr(owner, name)))
        setattr(owner, name, clock.wrap(getattr(owner, name), phase))

    gal = getattr(runner, "gal", None)
    if gal is not None:
        patch(gal, "_compute", "gal: other")
        patch(gal, "_commit", "gal: commit")
        patch(gal_module, "_eager_math", "gal: arithmetic")
        if gal.is_compiled and gal._compiled is not None:
            patch(gal, "_compiled", "gal: arithmetic")
    if hasattr(runner, "ratio"):  # the release's step: everything between forward and the optimizer
        patch(runner, "_release_gal", "release: gal")
    patch(torch.autograd, "backward", "backward")
    patch(torch.Tensor, "backward", "backward")
    try:
        for i in range(start, start + steps):
            clock.current.clear()
            began = time.process_time()
            runner.step(*batches[i % len(batches)])
            total = time.process_time() - began
            arithmetic = clock.current.get("gal: arithmetic", 0.0)
            if "gal: other" in clock.current:  # _compute includes the arithmetic
                clock.current["gal: other"] -= arithmetic
            for phase in PHASES[:-1]:
                rows[phase].append(clock.current.get(phase, 0.0) * 1e6)
            rows["rest"].append((total - sum(clock.current.values())) * 1e6)
            rows["total"].append(total * 1e6)
    finally:
        for owner, name, fn in reversed(originals):
            setattr(owner, name, fn)
        for obj, name in ((runner.model, "forward"), (runner.opt, "step"), (runner.opt, "zero_grad")):
            obj.__dict__.pop(name, None)  # back to the class's method


def op_table(runner: Any, batches: list[tuple[torch.Tensor, torch.Tensor]], rows: int) -> str:
    """torch.profiler's operators of 10 steps, by self CPU time (wall clock inside the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(10):
            runner.step(*batches[i % len(batches)])
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def markdown(results: dict[str, dict[str, dict[str, float]]], threads: int, steps: int, command: str) -> str:
    """One table per model: microseconds per step of each phase, and what each variant adds."""
    out = []
    for name, res in results.items():
        variants = list(res)
        out.append(f"{MODELS[name][4]}: CPU microseconds per step (median), and what each adds to the standard step")
        out.append("")
        out.append("| phase | " + " | ".join(variants) + " | " + " | ".join(f"+{v}" for v in variants[1:]) + " |")
        out.append("|---|" + "---|" * (2 * len(variants) - 1))
        for phase in (*PHASES, "total"):
            cells = [f"{res[v].get(phase, 0.0):.0f}" for v in variants]
            cells += [f"{res[v].get(phase, 0.0) - res['standard'].get(phase, 0.0):+.0f}" for v in variants[1:]]
            if any(res[v].get(phase, 0.0) for v in variants):
                out.append(f"| {phase} | " + " | ".join(cells) + " |")
        out.append("| ratio | " + " | ".join(f"{res[v]['total'] / res['standard']['total']:.2f}" for v in variants)
                   + " |" + " |" * (len(variants) - 1))
        out.append("")
    out.append(f"_{threads} thread(s), {steps} steps per variant, process CPU time; written by `{command}`._")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp,cnn", help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument("--variants", default="release,gal,gal_f32,gal_compiled", help="variants of step_overhead.py")
    ap.add_argument("--steps", type=int, default=300, help="profiled steps per variant (after 20 warm-up steps)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--ops", type=int, default=0, help="also print torch.profiler's top N operators per variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--readme", type=Path, default=None,
                    help="the README: rewrite the text between the speed:profile markers of docs/speed.md beside it")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = ("standard", *(v.strip() for v in args.variants.split(",") if v.strip() and v.strip() != "standard"))
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in (m.strip() for m in args.models.split(",") if m.strip()):
        runners, batches = make_runners(name, torch.device("cpu"), args.seed, variants, {})
        for r in runners.values():
            for i in range(20):  # warm-up; the compiled variant compiles here
                r.step(*batches[i % len(batches)])
        profiles = {key: VariantProfile(runners[key], batches) for key in variants}
        for rnd in range(-(-args.steps // 10)):
            for key in variants if rnd % 2 == 0 else variants[::-1]:
                profiles[key].run(min(10, args.steps - 10 * rnd))
        results[name] = {key: p.summary() for key, p in profiles.items()}
        base = results[name]["standard"]
        print(f"\n{MODELS[name][4]}: median CPU microseconds per step ({args.threads} threads, {args.steps} steps)")
        print(f"{'phase':<16}" + "".join(f"{v:>14}" for v in variants) + "".join(f"{'+' + v:>14}" for v in variants[1:]))
        for phase in (*PHASES, "total"):
            cells = [results[name][v].get(phase, 0.0) for v in variants]
            extra = [results[name][v].get(phase, 0.0) - base.get(phase, 0.0) for v in variants[1:]]
            print(f"{phase:<16}" + "".join(f"{c:>14.0f}" for c in cells) + "".join(f"{e:>+14.0f}" for e in extra))
        print(f"{'ratio':<16}" + "".join(f"{results[name][v]['total'] / base['total']:>14.3f}" for v in variants))
        if args.ops:
            for key in variants:
                print(f"\n{name} / {key}: torch.profiler, 10 steps")
                print(op_table(runners[key], batches, args.ops))
    if args.readme is not None:
        command = "python benchmarks/step_profile.py " + " ".join(sys.argv[1:] if argv is None else argv)
        begin, end = "<!-- speed:profile:begin -->", "<!-- speed:profile:end -->"
        doc = args.readme.parent / "docs" / "speed.md"
        text = doc.read_text()
        pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"--readme: {doc} has no {begin} ... {end} block")
        table = markdown(results, args.threads, args.steps, command)
        doc.write_text(pattern.sub(lambda _: f"{begin}\n{table}\n{end}", text, count=1))
        print(f"rewrote the profile in {doc}")
    return results


if __name__ == "__main__":
    main()
