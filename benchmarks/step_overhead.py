"""Time one training step, GAL vs standard, in one run, on three models.

    .venv/bin/python benchmarks/step_overhead.py --threads 2            # CPU, the issue's targets
    .venv/bin/python benchmarks/step_overhead.py --device cuda
    .venv/bin/python benchmarks/step_overhead.py --quick                # seconds, for the tests

Models (batch): an MLP 64-256-10 (256); a small CNN on 1x8x8 inputs (64); a torchvision
ResNet-18, ``weights=None, num_classes=10``, on 3x32x32 (128).

Standard step: ``zero_grad``, forward, ``cross_entropy``, ``loss.backward()``, SGD (momentum 0.9)
step. GAL step: the same with ``gal.backward(out, loss_fn, lr)`` instead of ``loss.backward()``
and h's parameters in the same optimizer. Both variants start from the same weights
(``copy.deepcopy``) and see the same batches.

Timing: warm-up steps for both variants, then rounds of ``block`` standard steps and ``block``
GAL steps, in ABBA order (the variant that goes first alternates each round) so slow drift
(thermal, other processes) hits both equally. Every step is timed on its own
(``time.perf_counter``; on CUDA with a ``torch.cuda.synchronize()`` before and after, outside
the step, so asynchronous work is counted), and the table shows the median over steps. The
ratio is median(GAL) / median(standard).

Memory ("step peak"): the peak of tensor memory newly allocated during one step (forward,
backward, optimizer step: activations, gradients, temporaries, GAL's work), above what was
live when the step started (after ``zero_grad(set_to_none=True)``). On CUDA it is
``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()`` around one step; on
CPU it is the peak of "Total Allocated" in a ``torch.profiler`` trace of one step with
``profile_memory=True`` (the bytes torch's CPU allocator handed out during the step and had
not taken back). Both count tensor bytes only, not the Python heap, the allocator's caching or
the process's RSS. "Persistent" is what lives between steps: parameters, their gradients and
the optimizer's momentum buffers (plus h and its state for GAL), summed from the tensors.

Results go to ``results/benchmarks/step_overhead.json`` and ``.csv`` (``galcore.results``), or
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
from galcore.bench import CLOCKS, StepRunner, quantile, step_peak_bytes, time_steps
from galcore.results import results_dir

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


def bench_model(
    name: str, device: torch.device, steps: int, warmup: int, block: int, seed: int, measure_memory: bool,
    clock: str = "wall",
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
    runners = {"standard": Runner(copy.deepcopy(base), None), "gal": Runner(copy.deepcopy(base), gal)}
    del base
    for r in runners.values():
        r.model.train()

    for _ in range(warmup):
        for key in ("standard", "gal"):
            time_steps(runners[key], batches, 1, 0, device)

    times: dict[str, list[float]] = {"standard": [], "gal": []}
    done = 0
    rnd = 0
    while done < steps:
        n = min(block, steps - done)
        order = ("standard", "gal") if rnd % 2 == 0 else ("gal", "standard")
        for key in order:
            times[key].extend(time_steps(runners[key], batches, n, done, device, clock))
        done += n
        rnd += 1

    row: dict[str, Any] = {"model": name, "batch": batch, "input_shape": list(shape), "steps": steps, "clock": clock}
    for key in ("standard", "gal"):
        ms = [t * 1e3 for t in times[key]]
        row[f"{key}_ms_median"] = statistics.median(ms)
        row[f"{key}_ms_p25"] = quantile(ms, 0.25)
        row[f"{key}_ms_p75"] = quantile(ms, 0.75)
        row[f"{key}_ms_min"] = min(ms)
    row["ratio"] = row["gal_ms_median"] / row["standard_ms_median"]
    row["ratio_min"] = row["gal_ms_min"] / row["standard_ms_min"]
    row["target"] = TARGETS[name]
    row["meets_target"] = bool(row["ratio"] <= TARGETS[name])
    for key in ("standard", "gal"):
        peak = step_peak_bytes(runners[key], *batches[0], device) if measure_memory else None
        row[f"{key}_step_peak_mb"] = None if peak is None else peak / 2**20
        row[f"{key}_persistent_mb"] = runners[key].persistent_bytes() / 2**20
    row["gal_acceptance_rate"] = float(gal.acceptance_rate)
    row["gal_fallbacks"] = int(gal.num_fallbacks)
    return row


# -- output ---------------------------------------------------------------------------------
def format_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def mb(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    head = (
        f"{'model':<9} {'std ms':>8} {'GAL ms':>8} {'ratio':>6} {'target':>6} {'ok':>3}  "
        f"{'std peak MB':>11} {'GAL peak MB':>11} {'std pers MB':>11} {'GAL pers MB':>11}"
    )
    lines = [
        f"GAL vs standard step on {meta['device']} ({meta['threads']} threads, torch {meta['torch']}, "
        f"{meta['clock']} clock); "
        f"median of {{steps}} steps per variant, ABBA-interleaved blocks",
        head,
        "-" * len(head),
    ]
    for r in rows:
        lines.append(
            f"{r['model']:<9} {r['standard_ms_median']:>8.3f} {r['gal_ms_median']:>8.3f} {r['ratio']:>6.3f} "
            f"{r['target']:>6.2f} {'yes' if r['meets_target'] else 'no':>3}  "
            f"{mb(r['standard_step_peak_mb']):>11} {mb(r['gal_step_peak_mb']):>11} "
            f"{mb(r['standard_persistent_mb']):>11} {mb(r['gal_persistent_mb']):>11}"
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant and model (default: per model)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps per variant (default 20, quick 1)")
    ap.add_argument("--block", type=int, default=None, help="steps per interleaved block (default 10, quick 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall",
        help="wall: perf_counter (default); cpu: process CPU time, all threads (CPU only; steadier on a busy "
        "machine, since time spent waiting for a core is not counted; with --threads > 1 it includes "
        "OpenMP spin-waits)",
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
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 20)
    block = args.block if args.block is not None else (2 if args.quick else 10)

    meta: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
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
        "timing": (
            f"per-step {'perf_counter (wall)' if args.clock == 'wall' else 'process_time (CPU)'}; "
            "median over steps; ratio = median GAL / median standard"
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
        rows.append(bench_model(name, device, steps, warmup, block, args.seed, not args.no_memory, args.clock))
    json_path, csv_path = write_outputs(rows, meta, args.json)
    print(format_table(rows, meta))
    print(f"wrote {json_path} and {csv_path}")
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
