"""Time one training step, GAL vs standard, in one run, on three models.

    .venv/bin/python benchmarks/step_overhead.py --threads 2            # CPU, the issue's targets
    .venv/bin/python benchmarks/step_overhead.py --device cuda
    .venv/bin/python benchmarks/step_overhead.py --quick                # seconds, for the tests

Models (batch): an MLP 64-256-10 (256); a small CNN on 1x8x8 inputs (64); a torchvision
ResNet-18, ``weights=None, num_classes=10``, on 3x32x32 (128).

Variants (``--variants``), all from the same model weights and the same h (``copy.deepcopy``),
on the same batches:

- ``standard``: ``zero_grad``, forward, ``cross_entropy``, ``loss.backward()``, SGD (momentum
  0.9) step.
- ``gal``: the same with ``gal.backward(out, loss_fn, lr)`` instead of ``loss.backward()`` and
  h's parameters in the same optimizer (the eager, reference step).
- ``gal_compiled``: the same with ``gal.compile()`` (GAL's arithmetic as one compiled function;
  it compiles during the warm-up steps).
- ``floor``: not GAL. The standard step plus only the work that any GAL step must add: h's
  parameters in the optimizer, and the loss with its gradient at a second point. Its ratio is a
  lower bound for any implementation of GAL on this model and machine.

Timing: warm-up steps for every variant, then rounds of ``block`` steps of each variant, the
order reversed every other round (ABCD DCBA ...) so slow drift (thermal, other processes) hits
all equally. Every step is timed on its own (``time.perf_counter``; on CUDA with a
``torch.cuda.synchronize()`` before and after, outside the step, so asynchronous work is
counted), and the table shows the median over steps. A ratio is median(variant) /
median(standard).

Memory ("step peak"): the peak of tensor memory newly allocated during one step (forward,
backward, optimizer step: activations, gradients, temporaries, GAL's work), above what was
live when the step started (after ``zero_grad(set_to_none=True)``). On CUDA it is
``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()`` around one step; on
CPU it is the peak of "Total Allocated" in a ``torch.profiler`` trace of one step with
``profile_memory=True`` (the bytes torch's CPU allocator handed out during the step and had
not taken back). Both count tensor bytes only, not the Python heap, the allocator's caching or
the process's RSS. "Persistent" is what lives between steps: parameters, their gradients and
the optimizer's momentum buffers (plus h and its state for GAL), summed from the tensors.

Results go to ``results/benchmarks/step_overhead.json`` and ``.csv`` (``galcore.experiments.results``), or
to ``--json PATH`` (the CSV next to it).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import galcore
from galcore.experiments.bench import CLOCKS, StepRunner, quantile, step_peak_bytes, time_steps
from galcore.experiments.results import results_dir

#: The issue's targets for GAL/standard on 2 CPU cores.
TARGETS = {"mlp": 1.5, "cnn": 1.10, "resnet18": 1.03}
#: Default timed steps per variant (the small models are cheap; ResNet-18 is ~0.3 s a step on 2 cores).
DEFAULT_STEPS = {"mlp": 400, "cnn": 400, "resnet18": 40}
LR = 0.05
MOMENTUM = 0.9


# -- models ---------------------------------------------------------------------------------
def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


def make_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 32 x 4 x 4
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def make_resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=10)


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    # name: (factory, input shape without batch, batch size)
    "mlp": (make_mlp, (64,), 256),
    "cnn": (make_cnn, (1, 8, 8), 64),
    "resnet18": (make_resnet18, (3, 32, 32), 128),
}


# -- steps ----------------------------------------------------------------------------------
def Runner(model: nn.Module, gal: galcore.GAL | None) -> StepRunner:  # noqa: N802 - a factory
    """One variant (standard or GAL) of one model: its own weights and SGD optimizer."""
    params = [*model.parameters(), *(gal.parameters() if gal is not None else ())]
    return StepRunner(model, gal, F.cross_entropy, torch.optim.SGD(params, lr=LR, momentum=MOMENTUM))


class FloorRunner(StepRunner):
    """Not GAL: the work that any GAL step must add to the standard one, with GAL's own
    arithmetic taken out. h's parameters sit in the optimizer (they get zero gradients and are
    stepped), and the loss is evaluated, with its gradient, at a second point ``x - lr g``.
    What GAL costs above this is the cost of h's forward and backward and of the step's
    bookkeeping; what this costs above the standard step, no implementation can remove."""

    def __init__(self, model: nn.Module, gal: galcore.GAL) -> None:
        super().__init__(model, None, F.cross_entropy, Runner(model, gal).opt)
        self.h_params = list(gal.parameters())
        self.zeros = [torch.zeros_like(p) for p in self.h_params]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        out = self.model(x)
        x0 = out.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self.loss_fn(x0, y), x0)
        x1 = (x0.detach() - LR * g).requires_grad_(True)
        torch.autograd.grad(self.loss_fn(x1, y), x1)
        out.backward(g)
        for p, z in zip(self.h_params, self.zeros, strict=True):
            p.grad = z
        self.opt.step()


#: The variants timed against each other, in the order of the table.
VARIANTS = ("standard", "gal", "gal_compiled", "floor")


def bench_model(
    name: str, device: torch.device, steps: int, warmup: int, block: int, seed: int, measure_memory: bool,
    clock: str = "wall", variants: tuple[str, ...] = VARIANTS,
) -> dict[str, Any]:
    factory, shape, batch = MODELS[name]
    torch.manual_seed(seed)
    base = factory().to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    batches = [
        (torch.randn(batch, *shape, generator=gen).to(device), torch.randint(0, 10, (batch,), generator=gen).to(device))
        for _ in range(4)
    ]
    torch.manual_seed(seed + 2)
    gal = galcore.GAL(output_dim=10, ratio=1e-3).to(device)
    # every variant starts from the same model weights and the same h
    makers: dict[str, Callable[[], StepRunner]] = {
        "standard": lambda: Runner(copy.deepcopy(base), None),
        "gal": lambda: Runner(copy.deepcopy(base), copy.deepcopy(gal)),
        "gal_compiled": lambda: Runner(copy.deepcopy(base), copy.deepcopy(gal).compile()),
        "floor": lambda: FloorRunner(copy.deepcopy(base), copy.deepcopy(gal)),
    }
    runners = {key: makers[key]() for key in variants}
    for r in runners.values():
        r.model.train()

    for _ in range(warmup):  # the compiled variant compiles in its first warm-up step
        for key in variants:
            time_steps(runners[key], batches, 1, 0, device)

    times: dict[str, list[float]] = {key: [] for key in variants}
    done = 0
    rnd = 0
    while done < steps:
        n = min(block, steps - done)
        order = variants if rnd % 2 == 0 else variants[::-1]
        for key in order:
            times[key].extend(time_steps(runners[key], batches, n, done, device, clock))
        done += n
        rnd += 1

    row: dict[str, Any] = {"model": name, "batch": batch, "input_shape": list(shape), "steps": steps, "clock": clock}
    for key in variants:
        ms = [t * 1e3 for t in times[key]]
        row[f"{key}_ms_median"] = statistics.median(ms)
        row[f"{key}_ms_p25"] = quantile(ms, 0.25)
        row[f"{key}_ms_p75"] = quantile(ms, 0.75)
        row[f"{key}_ms_min"] = min(ms)
    row["target"] = TARGETS[name]
    for key, suffix in (("gal", ""), ("gal_compiled", "_compiled"), ("floor", "_floor")):
        if key in variants:
            row[f"ratio{suffix}"] = row[f"{key}_ms_median"] / row["standard_ms_median"]
            row[f"ratio_min{suffix}"] = row[f"{key}_ms_min"] / row["standard_ms_min"]
            row[f"meets_target{suffix}"] = bool(row[f"ratio{suffix}"] <= TARGETS[name])
    for key in variants:
        peak = step_peak_bytes(runners[key], *batches[0], device) if measure_memory else None
        row[f"{key}_step_peak_mb"] = None if peak is None else peak / 2**20
        row[f"{key}_persistent_mb"] = runners[key].persistent_bytes() / 2**20
    for key in ("gal", "gal_compiled"):
        g = runners[key].gal if key in runners else None
        if g is not None:
            row[f"{key}_acceptance_rate"] = float(g.acceptance_rate)
            row[f"{key}_fallbacks"] = int(g.num_fallbacks)
    return row


# -- output ---------------------------------------------------------------------------------
def format_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def mb(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    head = f"{'model':<9} {'variant':<13} {'ms':>8} {'ratio':>6} {'target':>6} {'ok':>3}  {'peak MB':>8} {'pers MB':>8}"
    lines = [
        f"GAL vs standard step on {meta['device']} ({meta['threads']} threads, torch {meta['torch']}, "
        f"{meta['clock']} clock); median of {{steps}} steps per variant, interleaved blocks",
        head,
        "-" * len(head),
    ]
    suffix = {"gal": "", "gal_compiled": "_compiled", "floor": "_floor"}
    for r in rows:
        for key in meta["variants"]:
            if key == "standard":
                ratio, target, ok = "1.000", "", ""
            else:
                ratio = f"{r['ratio' + suffix[key]]:.3f}"
                target = f"{r['target']:.2f}" if key != "floor" else "-"
                ok = ("yes" if r["meets_target" + suffix[key]] else "no") if key != "floor" else ""
            lines.append(
                f"{r['model']:<9} {key:<13} {r[key + '_ms_median']:>8.3f} {ratio:>6} {target:>6} {ok:>3}  "
                f"{mb(r[key + '_step_peak_mb']):>8} {mb(r[key + '_persistent_mb']):>8}"
            )
    lines.append(
        "gal: the eager (reference) step; gal_compiled: gal.compile(); floor: not GAL, only the work any GAL "
        "step adds (h's tensors in the optimizer, the loss and its gradient at a second point)."
    )
    lines.append(
        "peak MB: tensor memory allocated during one step above what was live at its start "
        f"({meta['memory_method']}); pers MB: params + grads + momentum between steps."
    )
    lines.append("Targets are for 2 CPU cores; on a shared machine the medians are noisy (see p25/p75 in the JSON).")
    steps = ", ".join(f"{r['model']}={r['steps']}" for r in rows)
    return "\n".join(lines).replace("{steps}", steps)


def write_outputs(rows: list[dict[str, Any]], meta: dict[str, Any], json_path: Path | None) -> tuple[Path, Path]:
    if json_path is None:
        json_path = results_dir("benchmarks") / "step_overhead.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    csv_path = json_path.with_suffix(".csv")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "input_shape"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return json_path, csv_path


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return device


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant and model (default: per model)")
    ap.add_argument(
        "--warmup", type=int, default=None,
        help="warm-up steps per variant (default 20, quick 2; gal_compiled compiles in its second)",
    )
    ap.add_argument("--block", type=int, default=None, help="steps per interleaved block (default 10, quick 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall",
        help="wall: perf_counter (default); cpu: process CPU time, all threads (CPU only; steadier on a busy "
        "machine, since time spent waiting for a core is not counted; with --threads > 1 it includes "
        "OpenMP spin-waits)",
    )
    ap.add_argument(
        "--variants", default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)} (standard is always timed)",
    )
    ap.add_argument("--quick", action="store_true", help="a few steps per model (seconds; for the tests)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the JSON here (CSV next to it)")
    args = ap.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        raise SystemExit("--clock cpu measures host CPU time; use the wall clock on an accelerator")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    variants = ("standard", *(v.strip() for v in args.variants.split(",") if v.strip() and v.strip() != "standard"))
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}")
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 20)
    block = args.block if args.block is not None else (2 if args.quick else 10)

    meta: dict[str, Any] = {
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
        ),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "galcore": galcore.__version__,
        "python": sys.version.split()[0],
        "quick": args.quick,
        "warmup": warmup,
        "block": block,
        "lr": LR,
        "momentum": MOMENTUM,
        "gal": {"ratio": 1e-3, "h": "release linear stack 10-100-32-16-10"},
        "clock": args.clock,
        "variants": list(variants),
        "timing": (
            f"per-step {'perf_counter (wall)' if args.clock == 'wall' else 'process_time (CPU)'}; "
            "median over steps; ratio = median variant / median standard"
        ),
        "memory_method": (
            "torch.cuda.max_memory_allocated delta" if device.type == "cuda"
            else "torch.profiler profile_memory 'Total Allocated' peak" if device.type == "cpu" else "not measured"
        ),
        "targets_note": "targets are for 2 CPU cores",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    rows = []
    for name in models:
        steps = args.steps if args.steps is not None else (3 if args.quick else DEFAULT_STEPS[name])
        print(f"[step_overhead] {name}: {warmup} warm-up + {steps} timed steps per variant on {device} ...", flush=True)
        rows.append(
            bench_model(name, device, steps, warmup, block, args.seed, not args.no_memory, args.clock, variants)
        )
    json_path, csv_path = write_outputs(rows, meta, args.json)
    print(format_table(rows, meta))
    print(f"wrote {json_path} and {csv_path}")
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
