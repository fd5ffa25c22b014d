"""The prepared GPU check: every part in turn, each under its own time budget, into one record.

    python benchmarks/gpu/check.py --out OUT [--dry-run] [--parts sync_debug_errors,amp_fp16]

(``benchmarks/gpu/run.sh`` is the way in: it installs carried wheels and checks packages
first.) Writes ``OUT/record.json`` after every part, so a run that is stopped keeps what it
measured. Keys: ``meta``, ``device``, ``torch``, ``galcore``, ``tests``, ``sync_debug_errors``,
``amp_fp16``, ``overhead``, ``seeds``, ``notebooks``. Every part's value holds ``status``
(``ok``, ``skipped``, ``error``, ``timeout``), ``seconds``, ``budget_s``, and ``reason`` or
``error`` unless ``ok``.

Budgets (seconds): the GPU run stays under 8 minutes on one H200 with the wheels installed,
the dry run (CPU, toy sizes) under 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import Context, run_part
from env_parts import device, notebooks, seeds, tests, versions
from gal_checks import amp_fp16, sync_debug
from speed import overhead

#: part -> (function, GPU budget, dry-run budget); the order they run in
PARTS = {
    "device": (device, 10, 5),
    "sync_debug_errors": (sync_debug, 60, 15),
    "amp_fp16": (amp_fp16, 30, 12),
    "overhead": (overhead, 150, 30),
    "seeds": (seeds, 40, 10),
    "notebooks": (notebooks, 90, 45),
    "tests": (tests, 80, 25),
}
KEYS = ("meta", "device", "torch", "galcore", *[p for p in PARTS if p != "device"])
TOTAL = {"gpu": 450, "dry": 110}  # seconds for all parts together (run.sh's own setup comes on top)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for record.json")
    ap.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, under 2 minutes")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    args = ap.parse_args(argv)
    chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in chosen if p not in PARTS]
    if bad:
        ap.error(f"--parts: unknown part(s) {bad}; choose from {list(PARTS)}")
    args.out.mkdir(parents=True, exist_ok=True)

    if args.dry_run:
        dev = torch.device("cpu")
    elif torch.cuda.is_available():
        dev = torch.device("cuda")
    else:
        ap.error("no CUDA device: run with --dry-run on a CPU")
    started = time.perf_counter()
    # GALCORE_GPU_BUDGET_SCALE stretches every budget (the tests set it: a CI machine shared
    # with other jobs can be several times slower than the 2 minutes the dry run aims at)
    scale = float(os.environ.get("GALCORE_GPU_BUDGET_SCALE", "1"))
    if not scale > 0:
        ap.error(f"GALCORE_GPU_BUDGET_SCALE must be > 0, got {scale}")
    total = TOTAL["dry" if args.dry_run else "gpu"] * scale

    def log(msg: str) -> None:
        print(f"[gpu-check {time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    ctx = Context(dry_run=args.dry_run, device=dev, out=args.out, log=log, grace=5.0 if args.dry_run else 10.0)
    missing = os.environ.get("GALCORE_GPU_MISSING", "")
    ctx.notes["missing"] = [m for m in missing.split(",") if m]
    ctx.notes["wheels"] = [w for w in os.environ.get("GALCORE_GPU_WHEELS", "").split(",") if w]
    torch_info, galcore_info = versions()
    record: dict[str, Any] = {
        "meta": {
            "dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": "python benchmarks/gpu/check.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "total_budget_s": total, "budget_scale": scale, "parts": chosen,
        },
        "torch": torch_info,
        "galcore": galcore_info,
    }
    path = args.out / "record.json"
    last = [p for p in PARTS if p in chosen][-1]
    for name, (fn, gpu_budget, dry_budget) in PARTS.items():
        if name not in chosen:
            record[name] = {"status": "skipped", "reason": "not in --parts", "seconds": 0.0}
            continue
        left = max(total - (time.perf_counter() - started), 1.0)
        own = (dry_budget if args.dry_run else gpu_budget) * scale
        # the last part (the tests) gets whatever the others left, and never less than its own budget
        budget = max(left, own) if name == last else min(own, left)
        record[name] = run_part(name, fn, ctx, budget)
        record["meta"]["seconds"] = round(time.perf_counter() - started, 1)
        path.write_text(json.dumps(record, indent=2, default=str))
    log(f"wrote {path} ({record['meta']['seconds']} s)")
    summary = {k: record[k].get("status") for k in PARTS}
    log(f"status: {summary}")
    return record


if __name__ == "__main__":
    main()
