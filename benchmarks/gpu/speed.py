"""GAL's step time against the standard step's, on the device: ``overhead``.

Models (GPU; dry run in brackets): torchvision ResNet-50 (``weights=None``, 1000 classes) on
3x224x224 at batch 256 under bfloat16 autocast [batch 2, 3x32x32, float32: bfloat16
autocast costs ~5 s a step on a CPU without bf16 units, whatever the size]; ResNet-18 (10 classes) on
3x32x32 at batch 512 [batch 4]; the CPU benchmark's MLP 64-256-10 at batch 256
(``benchmarks/step_overhead.py``) [the same].

Variants, all from the same initial weights and h, on the same four batches, SGD with momentum
0.9, lr 0.05, GAL with the release's settings (ratio 1e-3 for 10 classes, 1e-2 for 1000;
``first_order="mean"``): ``standard`` (``loss.backward()``), ``gal`` (``gal.backward``, eager),
``gal_compiled`` (``gal.compile()``), ``gal_reduce_overhead``
(``gal.compile(mode="reduce-overhead")``: CUDA graphs; GPU only). Warm-up steps for every
variant (compilation happens there), then rounds of ``block`` steps of each variant, the order
reversed every other round; every step timed with CUDA events (``perf_counter`` on the CPU).
Ratio = median(variant) / median(standard).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from common import Context, median_ms, time_step
from torch import nn

import galcore

LR, MOMENTUM = 0.05, 0.9


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


def _resnet(name: str, classes: int) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=classes)

    return make


def models(ctx: Context) -> list[dict[str, Any]]:
    """name, factory, input shape, batch, classes, autocast dtype (None: float32)."""
    return [
        {"name": "resnet50", "make": _resnet("resnet50", 1000), "shape": ctx.size((3, 32, 32), (3, 224, 224)),
         "batch": ctx.size(2, 256), "classes": 1000, "amp": ctx.size(None, torch.bfloat16)},
        {"name": "resnet18", "make": _resnet("resnet18", 10), "shape": (3, 32, 32), "batch": ctx.size(4, 512),
         "classes": 10, "amp": None},
        {"name": "mlp", "make": _mlp, "shape": (64,), "batch": 256, "classes": 10, "amp": None},
    ]


class Arm:
    """One variant of one model: its own copy of the weights (and of GAL), its own SGD."""

    def __init__(self, model: nn.Module, gal: galcore.GAL | None, amp: torch.dtype | None, device: torch.device):
        self.model, self.gal, self.amp, self.device = model, gal, amp, device
        params = [*model.parameters(), *(gal.parameters() if gal is not None else ())]
        self.opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            out = self.model(x)
        if self.gal is None:
            F.cross_entropy(out.float(), y).backward()
        else:
            self.gal.backward(out, lambda o: F.cross_entropy(o.float(), y), lr=LR)
        self.opt.step()


def _variants(ctx: Context) -> dict[str, dict[str, Any] | None]:
    """Variant name -> torch.compile options for GAL (None: eager; key absent: not run)."""
    if ctx.dry_run:  # dynamo traces the same graph without generating kernels: seconds, not minutes
        return {"standard": None, "gal": None, "gal_compiled": {"backend": "aot_eager"}}
    out: dict[str, dict[str, Any] | None] = {"standard": None, "gal": None, "gal_compiled": {}}
    if ctx.cuda:
        out["gal_reduce_overhead"] = {"mode": "reduce-overhead"}
    return out


def bench(ctx: Context, spec: dict[str, Any], steps: int, warmup: int, block: int, seconds: float) -> dict[str, Any]:
    import time

    dev = ctx.device
    torch.manual_seed(0)
    base = spec["make"]().to(dev).train()
    ratio = 1e-3 if spec["classes"] == 10 else 1e-2
    gal0 = galcore.GAL(spec["classes"], ratio=ratio, first_order="mean", seed=1).to(dev)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(spec["batch"], *spec["shape"], generator=gen).to(dev),
                torch.randint(0, spec["classes"], (spec["batch"],), generator=gen).to(dev)) for _ in range(4)]
    variants = _variants(ctx)
    torch._dynamo.reset()  # each model compiles from a fresh state (recompile limit, dynamic shapes)
    arms: dict[str, Arm] = {}
    for key, options in variants.items():
        gal = None if key == "standard" else copy.deepcopy(gal0)
        if gal is not None and options is not None:
            gal.compile(**options)
        arms[key] = Arm(copy.deepcopy(base), gal, spec["amp"], dev)
    failed: dict[str, str] = {}  # a GAL variant that fails is dropped; the others go on

    def guarded(key: str, run: Callable[[], None]) -> None:
        try:
            run()
            if ctx.cuda:
                torch.cuda.synchronize()
        except Exception as e:
            if key == "standard":
                raise
            failed[key] = f"{type(e).__name__}: {e}"[:500]
            del arms[key]

    t0 = time.perf_counter()
    for i in range(warmup):
        for key in list(arms):
            guarded(key, lambda key=key, i=i: arms[key].step(*batches[i % 4]))
    warm_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {key: [] for key in arms}
    done, rnd, start = 0, 0, time.perf_counter()
    while done < steps and time.perf_counter() - start < seconds:
        order = list(arms)
        for key in order if rnd % 2 == 0 else order[::-1]:
            readers: list[Callable[[], float]] = []

            def timed_block(key: str = key, at: int = done, readers: list = readers) -> None:
                for j in range(block):
                    x, y = batches[(at + j) % 4]
                    readers.append(time_step(lambda a=arms[key], x=x, y=y: a.step(x, y), dev))

            guarded(key, timed_block)
            if key in arms:
                times[key].extend(r() for r in readers)
        done += block
        rnd += 1
    times = {k: v for k, v in times.items() if k in arms}
    row: dict[str, Any] = {
        "model": spec["name"], "batch": spec["batch"], "input_shape": list(spec["shape"]), "classes": spec["classes"],
        "autocast": str(spec["amp"]) if spec["amp"] else None, "gal_ratio": ratio, "warmup_steps": warmup,
        "warmup_s": round(warm_s, 2), "timed_steps_per_variant": len(times["standard"]),
        "compile_options": {k: v for k, v in variants.items() if v is not None},
    }  # fmt: skip
    if failed:
        row["failed_variants"] = failed
    std = median_ms(times["standard"])
    for key, ms in times.items():
        row[f"{key}_ms_median"] = median_ms(ms)
        if key != "standard" and std:
            row[f"ratio_{key}"] = round(median_ms(ms) / std, 4)
    for key, arm in arms.items():
        if arm.gal is not None:
            row[f"{key}_is_compiled"] = arm.gal.is_compiled  # False: the compiler failed and GAL fell back
            row[f"{key}_acceptance_rate"] = round(float(arm.gal.acceptance_rate), 4)
    return row


def overhead(ctx: Context) -> dict[str, Any]:
    specs = models(ctx)
    steps, warmup, block = ctx.size(2, 30), ctx.size(2, 3), ctx.size(1, 5)
    rows, skipped = [], []
    for i, spec in enumerate(specs):
        share = ctx.left() / (len(specs) - i)  # what is left, shared among the models still to run
        if share < ctx.size(0, 10):  # a dry run runs every model (the part's alarm still stops it)
            skipped.append({"model": spec["name"], "reason": "time budget spent"})
            continue
        ctx.log(f"   overhead {spec['name']}: batch {spec['batch']}, up to {steps} steps per variant")
        try:
            rows.append(bench(ctx, spec, steps, warmup, block, share * 0.5))
        except Exception as e:  # noqa: BLE001 - one model's failure is recorded, the others still run
            rows.append({"model": spec["name"], "error": f"{type(e).__name__}: {e}"[:1000]})
        ctx.log(f"   {rows[-1]}")
        if ctx.cuda:
            torch.cuda.empty_cache()
    record: dict[str, Any] = {
        "timing": ("CUDA events per step" if ctx.cuda else "perf_counter per step")
        + "; interleaved blocks, order reversed every other round; medians; ratio = variant / standard",
        "rows": rows, "not_run": skipped,
    }  # fmt: skip
    if not ctx.cuda:
        record["reduce_overhead"] = "skipped: mode='reduce-overhead' uses CUDA graphs (GPU only)"
    if ctx.dry_run:
        record["note"] = ("dry run: toy sizes; ResNet-50 in float32 (bfloat16 autocast costs ~5 s a step on a CPU "
                          "without bf16 units; autocast itself runs in amp_fp16); gal_compiled uses the aot_eager "
                          "backend (no kernel generation)")
    return record
