"""Two checks of GAL's step on the device: no host syncs, and float16 AMP with a GradScaler.

``sync_debug_errors``: every combination of {eager, compiled (``gal.compile()``)} x
{``gal.backward``, ``gal.surrogate(...).backward()``} x ``track_plain`` {False, True} on a small
MLP (16-32-10, batch 64 on a GPU, 8 in a dry run): a warm-up of 3 steps (the compiled step
compiles in its second), then 60 steps (the rounding-level watch looks every 50 steps) with
only GAL's call and its backward under ``torch.cuda.set_sync_debug_mode("error")``. A step
that raises counts one error. On the CPU the mode does not exist: the same steps run and the
count is recorded as skipped.

``amp_fp16``: torchvision's ResNet-18 (``weights=None, num_classes=10``) on 3x32x32, ``steps``
SGD steps through ``gal.surrogate`` under float16 autocast with a ``torch.amp.GradScaler``
(``scaler.scale(s).backward()``). Before each step, float32 GAL decides on copies of the same
weights, h and batch. Recorded: the losses (finite?), the scaler's scale after each step (and
the steps it skipped: the scale fell), GAL's objective (> 0?), and whether the accept decisions
match float32's step by step.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from common import Context
from torch import nn

import galcore

SYNC_STEPS = 60
LR = 0.05
WARMUP = 3


def _compile_options(ctx: Context) -> dict[str, Any]:
    """On the GPU the default (inductor); in a dry run ``aot_eager`` (dynamo traces the same
    graph without generating kernels, seconds instead of minutes on a loaded CPU)."""
    return {"backend": "aot_eager"} if ctx.dry_run else {}


def _sync_case(ctx: Context, compiled: bool, api: str, track_plain: bool) -> dict[str, Any]:
    dev = ctx.device
    batch = ctx.size(8, 64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).to(dev)
    gal = galcore.GAL(10, ratio=0.1, track_plain=track_plain, seed=1).to(dev)
    if compiled:
        # a fresh compiler state per case: the cases share GAL's one compiled function, and
        # dynamo's recompile limit (or automatic dynamic shapes) would otherwise change what runs
        torch._dynamo.reset()
        gal.compile(**_compile_options(ctx))
    opt = torch.optim.SGD([*model.parameters(), *gal.parameters()], lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 16, generator=gen).to(dev)
    y = torch.randint(0, 10, (batch,), generator=gen).to(dev)

    def loss_fn(o: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(o, y)

    def gal_call(out: torch.Tensor) -> None:
        if api == "backward":
            gal.backward(out, loss_fn, lr=0.1)
        else:
            gal.surrogate(out, loss_fn, lr=0.1).backward()

    for _ in range(WARMUP):
        opt.zero_grad()
        gal_call(model(x))
        opt.step()
    if ctx.cuda:
        torch.cuda.synchronize()
    errors, first_error, done = 0, None, 0
    for _ in range(SYNC_STEPS):
        opt.zero_grad()
        out = model(x)
        try:
            if ctx.cuda:
                torch.cuda.set_sync_debug_mode("error")
            gal_call(out)
        except RuntimeError as e:  # the sync debug mode raises RuntimeError at a sync
            errors += 1
            first_error = first_error or str(e).splitlines()[0][:300]
        finally:
            if ctx.cuda:
                torch.cuda.set_sync_debug_mode("default")
        opt.step()
        done += 1
    steps = int(gal.num_steps)  # read after the checked steps (a sync, outside the mode)
    return {
        "path": "compiled" if compiled else "eager", "api": api, "track_plain": track_plain,
        "steps_checked": done, "gal_num_steps": steps, "is_compiled": gal.is_compiled,
        "errors": errors if ctx.cuda else None, "first_error": first_error,
    }  # fmt: skip


def sync_debug(ctx: Context) -> dict[str, Any]:
    cases = []
    for compiled, api, plain in itertools.product((False, True), ("backward", "surrogate"), (False, True)):
        if ctx.left() < 0:
            cases.append({"path": "compiled" if compiled else "eager", "api": api, "track_plain": plain,
                          "skipped": "time budget spent"})
            continue
        cases.append(_sync_case(ctx, compiled, api, plain))
        ctx.log(f"   sync {cases[-1]}")
    ran = [c for c in cases if "skipped" not in c]
    record: dict[str, Any] = {"cases": cases, "steps_per_case": SYNC_STEPS}
    if not ctx.cuda:
        # the same steps ran; there is no sync debug mode to count with
        return {"status": "skipped", "errors": None, **record,
                "reason": f"torch.cuda.set_sync_debug_mode is CUDA-only; on {ctx.device} the same "
                          f"{len(ran)} GAL step configurations ran ({SYNC_STEPS} steps each) without counting syncs"}
    if len(ran) < len(cases):
        return {"status": "timeout", "errors": sum(c["errors"] for c in ran), **record,
                "error": f"only {len(ran)} of {len(cases)} configurations ran in the budget"}
    return {"errors": sum(c["errors"] for c in ran), **record}


# -- float16 AMP ----------------------------------------------------------------------------
def _amp_dtype(ctx: Context) -> tuple[torch.dtype, str]:
    """float16 where autocast and the GradScaler support it on this device, else bfloat16."""
    if ctx.cuda:
        return torch.float16, "float16 autocast + torch.amp.GradScaler('cuda')"
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            ok = (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16
        torch.amp.GradScaler("cpu")
    except (RuntimeError, TypeError, AttributeError) as e:
        return torch.bfloat16, f"bfloat16 autocast on the CPU (float16 not supported here: {e})"
    if ok:
        return torch.float16, "float16 autocast + torch.amp.GradScaler('cpu')"
    return torch.bfloat16, "bfloat16 autocast on the CPU (float16 autocast left matmul in float32)"


def _decision_fp32(model: nn.Module, gal: galcore.GAL, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """GAL's accept decision in float32 from copies of the current weights and h (the copies
    keep batch-norm statistics and GAL's counters of the AMP run untouched)."""
    m, g = copy.deepcopy(model), copy.deepcopy(gal)
    g.surrogate(m(x), lambda o: F.cross_entropy(o, y), lr=LR)
    return g.last_step.accepted


def amp_fp16(ctx: Context) -> dict[str, Any]:
    import torchvision

    amp, how = _amp_dtype(ctx)
    dev = ctx.device
    steps, batch = ctx.size(2, 8), ctx.size(4, 128)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).to(dev).train()
    gal = galcore.GAL(10, ratio=1e-3, first_order="mean", seed=1).to(dev)
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(batch, 3, 32, 32, generator=gen).to(dev),
                torch.randint(0, 10, (batch,), generator=gen).to(dev)) for _ in range(steps)]
    opt = torch.optim.SGD([*model.parameters(), *gal.parameters()], lr=LR, momentum=0.9)
    scaler = torch.amp.GradScaler(dev.type) if amp == torch.float16 else None
    rec_steps: list[tuple[Any, ...]] = []
    scales: list[float] = []
    for x, y in batches:
        if ctx.left() < 0:
            break
        ref = _decision_fp32(model, gal, x, y)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=amp):
            out = model(x)
            s = gal.surrogate(out, lambda o, y=y: F.cross_entropy(o, y), lr=LR)
        if scaler is not None:
            scaler.scale(s).backward()
            scaler.step(opt)
            scaler.update()
            scales.append(scaler.get_scale())  # a host read after the step, not inside GAL's
        else:
            s.backward()
            opt.step()
        r = gal.last_step
        rec_steps.append((s.detach(), r.objective.detach(), r.accepted, r.fallback, ref))
    loss = [float(t[0]) for t in rec_steps]
    objective = [float(t[1]) for t in rec_steps]
    accepted = [bool(t[2]) for t in rec_steps]
    accepted_fp32 = [bool(t[4]) for t in rec_steps]
    # a GradScaler skips the optimizer step when it found inf/NaN gradients and then lowers its scale
    init = 65536.0  # torch.amp.GradScaler's default init_scale
    skipped = sum(1 for a, b in zip([init, *scales], scales, strict=False) if b < a)
    record: dict[str, Any] = {
        "autocast": str(amp), "how": how, "model": "resnet18(weights=None, num_classes=10) 3x32x32",
        "batch": batch, "steps": len(rec_steps), "lr": LR, "gal": "ratio=1e-3, first_order='mean', surrogate",
        "out_dtype": str(out.dtype), "loss": loss, "objective": objective, "accepted": accepted,
        "accepted_float32": accepted_fp32, "fallback": [bool(t[3]) for t in rec_steps],
        "loss_finite": all(math.isfinite(v) for v in loss), "objective_positive": all(v > 0 for v in objective),
        "same_decisions": accepted == accepted_fp32,
        "scaler_scale": scales[-1] if scales else None, "scales": scales or None,
        "decisions_compared": "per step: the AMP step's decision against float32 GAL on copies of the same weights, h and batch",
    }  # fmt: skip
    if scaler is None:
        record["scaler_note"] = f"no GradScaler: {how}"
    else:
        record["scaler_init_scale"] = init
        record["scaler_skipped_steps"] = skipped
    return record
