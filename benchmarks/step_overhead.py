"""Time one training step: standard, the release's GAL step, and galcore's, in one interleaved run.

    python benchmarks/step_overhead.py --threads 2 --readme README.md   # CPU: the table in the README
    python benchmarks/step_overhead.py --device cuda --compile-mode reduce-overhead
    python benchmarks/step_overhead.py --quick                          # seconds, for the tests

Models (batch): ``mlp`` 64-256-10 (256); ``cnn`` 1x8x8 -> 16 -> 32 conv, 10 classes (64);
``mlp100`` 512-1024-100 (256); ``resnet18`` torchvision ResNet-18, ``weights=None,
num_classes=10``, on 3x32x32 (128).

Variants (``--variants``), all from the same model weights and the same h, on the same batches,
with the release's settings (ratio 1e-3 for 10 classes and 1e-2 for 100, scale 1,
``first_order="mean"``, ``accept="decrease"``, h the release's linear stack, in the model's SGD
(momentum 0.9)):

- ``standard``: ``zero_grad``, forward, ``cross_entropy``, ``loss.backward()``, SGD step.
- ``release``: the public release's step (:class:`galcore.experiments.harness.bench.ReleaseRunner`):
  float32, its NumPy host round trip, three backward calls.
- ``gal``: ``gal.backward(out, loss_fn, lr)`` (the eager step, GAL's arithmetic in float64, the
  default).
- ``gal_f32``: the same with ``compute_dtype=None`` (float32 arithmetic): ``gal`` against
  ``gal_f32`` is what the float64 default costs.
- ``gal_compiled``: ``gal.compile()`` (``--compile-mode`` is passed to ``torch.compile``); it
  compiles during the warm-up steps.
- ``floor``: not GAL. The standard step plus only the work any GAL step must add: h's
  parameters (one flat tensor) in the optimizer, and the loss with its gradient at a second
  point. Its ratio bounds every implementation from below.
- ``reference`` (not run unless asked): :func:`galcore.reference.reference_step`, the algorithm
  alone in float32, without the release's host copies.

Timing: warm-up steps for every variant, then rounds of ``block`` steps of each variant, the
order reversed every other round (ABC CBA ...) so slow drift hits all equally. Every step is
timed on its own (wall clock by default; ``--clock cpu`` for process CPU time, steadier on a
shared machine; on CUDA with a synchronize before and after, outside the step), and a ratio is
median(variant) / median(standard).

Memory ("step peak"): tensor bytes newly allocated during one step above what was live at its
start (``torch.cuda.max_memory_allocated``; on CPU the profiler's "Total Allocated" peak).
"Persistent": parameters, gradients and momentum between steps.

Results: ``results/benchmarks/step_overhead.{json,csv,md}`` (or ``--json PATH``); ``--readme
README.md`` also rewrites the table between the README's ``speed:table`` markers.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import re
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
from galcore.experiments.harness.bench import (
    CLOCKS,
    ReferenceRunner,
    ReleaseRunner,
    StepRunner,
    quantile,
    runner_step,
    step_peak_bytes,
    time_steps,
)  # fmt: skip
from galcore.experiments.harness.results import results_dir

#: gal_compiled / standard targets on 2 CPU cores (the eager step's target: no slower than the release)
TARGETS = {"mlp": 1.8, "cnn": 1.25, "resnet18": 1.03}
#: Timed and warm-up steps per variant (ResNet-18 is ~0.5 s a step on 2 cores)
DEFAULT_STEPS = {"mlp": 400, "cnn": 400, "mlp100": 200, "resnet18": 40}
DEFAULT_WARMUP = {"mlp": 20, "cnn": 20, "mlp100": 10, "resnet18": 3}
LR = 0.05
MOMENTUM = 0.9
README_BEGIN, README_END = "<!-- speed:table:begin -->", "<!-- speed:table:end -->"


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


def make_mlp100() -> nn.Module:
    return nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 100))


def make_resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=10)


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int, int, str]] = {
    # name: (factory, input shape without batch, batch size, classes, label)
    "mlp": (make_mlp, (64,), 256, 10, "MLP 64-256-10, batch 256"),
    "cnn": (make_cnn, (1, 8, 8), 64, 10, "small CNN 1x8x8, batch 64"),
    "mlp100": (make_mlp100, (512,), 256, 100, "MLP 512-1024-100, batch 256"),
    "resnet18": (make_resnet18, (3, 32, 32), 128, 10, "ResNet-18 3x32x32, batch 128"),
}
RELEASE_RATIO = {10: 1e-3, 100: 1e-2}  # the release's gal_ratio for CIFAR-10 / CIFAR-100


# -- steps ----------------------------------------------------------------------------------
def sgd(params: list[torch.Tensor]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)


def Runner(model: nn.Module, gal: galcore.GAL | None) -> StepRunner:  # noqa: N802 - a factory
    """One variant (standard or GAL) of one model: its own weights and SGD optimizer."""
    return StepRunner(model, gal, F.cross_entropy, sgd([*model.parameters(), *(gal.parameters() if gal else ())]))


class FloorRunner(StepRunner):
    """Not GAL: the work that any GAL step must add to the standard one, with GAL's own
    arithmetic taken out. h's parameters sit in the optimizer (they get zero gradients and are
    stepped), and the loss is evaluated, with its gradient, at a second point ``x - lr g``.
    What GAL costs above this is h's forward and backward and the step's bookkeeping."""

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


#: The variants timed against each other, in the order of the table (``reference``: on request).
VARIANTS = ("standard", "release", "gal", "gal_f32", "gal_compiled", "floor")
ALL_VARIANTS = (*VARIANTS, "reference")
GAL_VARIANTS = ("gal", "gal_f32", "gal_compiled")


def make_runners(
    name: str, device: torch.device, seed: int, variants: tuple[str, ...], compile_options: dict[str, Any]
) -> tuple[dict[str, StepRunner], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Every variant of one model from the same weights and the same h; four fixed batches."""
    factory, shape, batch, classes, _ = MODELS[name]
    torch.manual_seed(seed)
    base = factory().to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    batches = [
        (torch.randn(batch, *shape, generator=gen).to(device), torch.randint(0, classes, (batch,), generator=gen).to(device))
        for _ in range(4)
    ]
    ratio = RELEASE_RATIO[classes]
    gal = galcore.GAL(classes, ratio=ratio, first_order="mean", seed=seed + 2).to(device)
    h = galcore.make_adjuster(classes, galcore.release_hidden(classes)).to(device)
    h.load_state_dict(gal.h.state_dict())  # the release's plain stack, the same weights

    def gal_runner(**options: Any) -> StepRunner:
        g = copy.deepcopy(gal)
        for k, v in options.items():
            setattr(g, k, v)
        return Runner(copy.deepcopy(base), g)

    def release(cls: type[ReleaseRunner]) -> StepRunner:
        m, hh = copy.deepcopy(base), copy.deepcopy(h)
        return cls(m, hh, F.cross_entropy, sgd([*m.parameters(), *hh.parameters()]), ratio)

    makers: dict[str, Callable[[], StepRunner]] = {
        "standard": lambda: Runner(copy.deepcopy(base), None),
        "release": lambda: release(ReleaseRunner),
        "reference": lambda: release(ReferenceRunner),
        "gal": gal_runner,
        "gal_f32": lambda: gal_runner(compute_dtype=None),
        "gal_compiled": lambda: Runner(copy.deepcopy(base), copy.deepcopy(gal).compile(**compile_options)),
        "floor": lambda: FloorRunner(copy.deepcopy(base), copy.deepcopy(gal)),
    }
    runners = {key: makers[key]() for key in variants}
    for r in runners.values():
        r.model.train()
    return runners, batches


def bench_model(
    name: str, device: torch.device, steps: int, warmup: int, block: int, seed: int, measure_memory: bool,
    clock: str = "wall", variants: tuple[str, ...] = VARIANTS, compile_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    runners, batches = make_runners(name, device, seed, variants, compile_options or {})
    for _ in range(warmup):  # the compiled variant compiles in its second warm-up step
        for key in variants:
            time_steps(runner_step(runners[key], batches), 1, device)

    times: dict[str, list[float]] = {key: [] for key in variants}
    done = rnd = 0
    while done < steps:
        n = min(block, steps - done)
        for key in variants if rnd % 2 == 0 else variants[::-1]:
            times[key].extend(time_steps(runner_step(runners[key], batches), n, device, clock, start=done))
        done += n
        rnd += 1

    _, shape, batch, classes, label = MODELS[name]
    row: dict[str, Any] = {
        "model": name, "label": label, "batch": batch, "classes": classes, "input_shape": list(shape),
        "steps": steps, "clock": clock, "target_compiled": TARGETS.get(name),
    }  # fmt: skip
    for key in variants:
        ms = [t * 1e3 for t in times[key]]
        row[f"{key}_ms_median"] = statistics.median(ms)
        row[f"{key}_ms_p25"] = quantile(ms, 0.25)
        row[f"{key}_ms_p75"] = quantile(ms, 0.75)
        row[f"{key}_ms_min"] = min(ms)
        row[f"ratio_{key}"] = row[f"{key}_ms_median"] / row["standard_ms_median"]
    if "gal" in variants and "release" in variants:
        row["gal_vs_release"] = row["gal_ms_median"] / row["release_ms_median"]
        row["gal_le_release"] = bool(row["gal_vs_release"] <= 1.0)
    if "gal" in variants and "gal_f32" in variants:
        row["float64_cost"] = row["gal_ms_median"] / row["gal_f32_ms_median"]
    if "gal_compiled" in variants and TARGETS.get(name) is not None:
        row["compiled_meets_target"] = bool(row["ratio_gal_compiled"] <= TARGETS[name])
    for key in variants:
        peak = step_peak_bytes(runners[key], *batches[0], device) if measure_memory else None
        row[f"{key}_step_peak_mb"] = None if peak is None else peak / 2**20
        row[f"{key}_persistent_mb"] = runners[key].persistent_bytes() / 2**20
    for key in GAL_VARIANTS:
        g = runners[key].gal if key in runners else None
        if g is not None:
            row[f"{key}_acceptance_rate"] = float(g.acceptance_rate)
            row[f"{key}_fallbacks"] = int(g.num_fallbacks)
            row[f"{key}_compiled"] = g.is_compiled  # False if the compiler failed and GAL fell back
    return row


# -- output ---------------------------------------------------------------------------------
def markdown_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The README's table: each variant's median step time as a ratio to the standard step."""
    variants = [v for v in meta["variants"] if v != "standard"]
    lines = [
        "| model | standard | " + " | ".join(variants) + " | gal / release | float64 cost (gal / gal_f32) |",
        "|---|---|" + "---|" * len(variants) + "---|---|",
    ]
    for r in rows:
        ms = r["standard_ms_median"]
        cells = [f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"] + [f"{r['ratio_' + v]:.2f}x" for v in variants]
        cells += [f"{r['gal_vs_release']:.2f}" if "gal_vs_release" in r else "-"]
        cells += [f"{r['float64_cost']:.2f}" if "float64_cost" in r else "-"]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    steps = ", ".join(f"{r['model']} {r['steps']}" for r in rows)
    lines.append("")
    targets = ", ".join(f"{MODELS[m][4].split(',')[0]} {t:.2f}x" for m, t in TARGETS.items())
    lines.append(f"Targets: gal / release <= 1 (MLP, small CNN); gal_compiled <= {targets}. In this run:")
    verdicts = []
    for r in rows:
        if r["model"] in ("mlp", "cnn") and "gal_le_release" in r:
            verdicts.append(f"{r['model']} gal / release {'met' if r['gal_le_release'] else 'not met'}")
        if "compiled_meets_target" in r:
            verdicts.append(f"{r['model']} gal_compiled {'met' if r['compiled_meets_target'] else 'not met'}")
    lines[-1] += " " + ("; ".join(verdicts) or "no target measured") + "."
    lines.append("")
    lines.append(
        f"_{meta['device_name']} ({meta['device']}, {meta['cpu_count']} cores), {meta['threads']} threads, torch {meta['torch']}, "
        f"{meta['clock']} clock, median of {steps} interleaved steps per variant, {meta['started']}; "
        f"written by `{meta['command']}`._"
    )
    return "\n".join(lines)


def format_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def mb(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    head = f"{'model':<9} {'variant':<13} {'ms':>9} {'ratio':>6}  {'peak MB':>8} {'pers MB':>8}"
    lines = [
        f"step time on {meta['device']} ({meta['threads']} threads, torch {meta['torch']}, {meta['clock']} clock); "
        "median per variant, interleaved blocks; ratio = variant / standard",
        head,
        "-" * len(head),
    ]
    for r in rows:
        for key in meta["variants"]:
            lines.append(
                f"{r['model']:<9} {key:<13} {r[key + '_ms_median']:>9.3f} {r['ratio_' + key]:>6.3f}  "
                f"{mb(r[key + '_step_peak_mb']):>8} {mb(r[key + '_persistent_mb']):>8}"
            )
        notes = []
        if "gal_vs_release" in r:
            notes.append(f"gal / release {r['gal_vs_release']:.3f} ({'<=' if r['gal_le_release'] else '>'} 1)")
        if "float64_cost" in r:
            notes.append(f"float64 default costs gal / gal_f32 = {r['float64_cost']:.3f}")
        if "compiled_meets_target" in r:
            notes.append(
                f"gal_compiled {r['ratio_gal_compiled']:.3f} vs target {r['target_compiled']:.2f}: "
                f"{'met' if r['compiled_meets_target'] else 'not met'}"
            )
        if notes:
            lines.append(f"{'':<9} " + "; ".join(notes))
    lines.append(
        "peak MB: tensor memory allocated during one step above what was live at its start "
        f"({meta['memory_method']}); pers MB: params + grads + momentum between steps."
    )
    return "\n".join(lines)


def write_outputs(rows: list[dict[str, Any]], meta: dict[str, Any], json_path: Path | None) -> tuple[Path, Path, Path]:
    if json_path is None:
        json_path = results_dir("benchmarks") / "step_overhead.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    csv_path = json_path.with_suffix(".csv")
    fields = list(dict.fromkeys(k for r in rows for k in r if k != "input_shape"))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    md_path = json_path.with_suffix(".md")
    md_path.write_text(markdown_table(rows, meta) + "\n")
    return json_path, csv_path, md_path


def update_readme(path: Path, table: str) -> None:
    """Replace the text between the README's ``speed:table`` markers with ``table``."""
    text = path.read_text()
    pattern = re.compile(re.escape(README_BEGIN) + ".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"--readme: {path} has no {README_BEGIN} ... {README_END} block")
    path.write_text(pattern.sub(lambda _: f"{README_BEGIN}\n{table}\n{README_END}", text, count=1))


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return device


def parse_list(text: str, known: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in items if v not in known]
    if bad:
        raise SystemExit(f"unknown {what}(s) {bad}; choose from {list(known)}")
    return items


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant and model (default: per model)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps per variant (default: per model; quick 2)")
    ap.add_argument("--block", type=int, default=None, help="steps per interleaved block (default 10, quick 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall",
        help="wall: perf_counter (default); cpu: process CPU time, all threads (CPU only; steadier on a busy "
        "machine; with --threads > 1 it includes OpenMP spin-waits)",
    )
    ap.add_argument(
        "--variants", default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(ALL_VARIANTS)} (standard is always timed)",
    )
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode for gal_compiled (e.g. reduce-overhead)")
    ap.add_argument("--quick", action="store_true", help="a few steps per model (seconds; for the tests)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the JSON here (CSV and markdown next to it)")
    ap.add_argument("--readme", type=Path, default=None, help="rewrite the table between this file's speed:table markers")
    args = ap.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        raise SystemExit("--clock cpu measures host CPU time; use the wall clock on an accelerator")
    models = parse_list(args.models, tuple(MODELS), "model")
    variants = ("standard", *(v for v in parse_list(args.variants, ALL_VARIANTS, "variant") if v != "standard"))
    block = args.block if args.block is not None else (2 if args.quick else 10)
    compile_options = {} if args.compile_mode is None else {"mode": args.compile_mode}

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
        "block": block,
        "lr": LR,
        "momentum": MOMENTUM,
        "gal": {"ratio": RELEASE_RATIO, "first_order": "mean", "h": "the release's linear stack for the classes"},
        "clock": args.clock,
        "variants": list(variants),
        "compile_options": compile_options,
        "timing": (
            f"per-step {'perf_counter (wall)' if args.clock == 'wall' else 'process_time (CPU)'}; "
            "median over steps; ratio = median variant / median standard"
        ),
        "memory_method": (
            "torch.cuda.max_memory_allocated delta" if device.type == "cuda"
            else "torch.profiler profile_memory 'Total Allocated' peak" if device.type == "cpu" else "not measured"
        ),
        "targets": {"gal_compiled": TARGETS, "gal": "<= release"},
        "command": "python benchmarks/step_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": time.strftime("%Y-%m-%d %H:%M"),
    }
    rows = []
    for name in models:
        steps = args.steps if args.steps is not None else (3 if args.quick else DEFAULT_STEPS[name])
        warmup = args.warmup if args.warmup is not None else (2 if args.quick else DEFAULT_WARMUP[name])
        print(f"[step_overhead] {name}: {warmup} warm-up + {steps} timed steps per variant on {device} ...", flush=True)
        rows.append(
            bench_model(name, device, steps, warmup, block, args.seed, not args.no_memory, args.clock, variants,
                        compile_options)
        )
    paths = write_outputs(rows, meta, args.json)
    print(format_table(rows, meta))
    if args.readme is not None:
        update_readme(args.readme, markdown_table(rows, meta))
        print(f"rewrote the table in {args.readme}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
