"""Seeds per CPU-minute: sequential runs against stacked ones, in one interleaved run.

    python benchmarks/seeds.py                        # the MNIST-1D CNN recipe, 1 of its 6 epochs
    python benchmarks/seeds.py --stacks 8,16,32 --rounds 5 --json results/seeds.json
    python benchmarks/seeds.py --quick                # seconds: the smoke profile's data

The workload is notebook 02's primary comparison (``classification.mnist1d_setup``: the
MNIST-1D CNN, SGD+momentum lr 0.1, batch 100, the profile's passes per epoch and test set) cut
to ``--epochs`` epochs; arms ``standard`` and ``gal`` (the release's CIFAR-10 setting in the
release's form: ratio 1e-3, ``first_order="mean"``, float64 arithmetic, h in the model's SGD).

Variants: ``sequential`` trains ``--seq-seeds`` seeds one after another with ``harness.run``;
``<engine>-<S>`` trains S seeds at once with :func:`run_stacked` (engines ``unfold`` and
``vmap``, see ``galcore/experiments/harness/stacked.py``). One round runs every variant of
every arm once, the order reversed every other round (ABC CBA ...) after a warm-up of each.
Time is this process's CPU time (``time.process_time``; run it with one thread, as the default
does): other processes on a shared machine slow it less than the wall clock, but they still
compete for caches and memory bandwidth, so compare the ratios inside one run, not runs on
different days. The ratio is per round (stacked seeds/min over sequential seeds/min in the
same round); the table shows its median and range over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default", choices=("smoke", "default", "full"), help="the recipe's data sizes")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of the recipe per run (default 1)")
    ap.add_argument("--stacks", default="8,32", help="stack sizes S, comma-separated")
    ap.add_argument("--engines", default="unfold,vmap", help="stacked engines: unfold, vmap")
    ap.add_argument("--arms", default="standard,gal", help="arms: standard, gal")
    ap.add_argument("--seq-seeds", type=int, default=4, help="seeds per sequential measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke data, stacks 4, one round (seconds)")
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    return ap.parse_args()


def main() -> int:
    args = _parse()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from galcore.experiments.classification.plan import GAL_SETTINGS, mnist1d_setup
    from galcore.experiments.harness import run
    from galcore.experiments.harness.stacked import run_stacked

    if args.quick:
        args.profile, args.stacks, args.rounds, args.seq_seeds, args.engines = "smoke", "4", 1, 2, "unfold"
    stacks = [int(s) for s in args.stacks.split(",") if s]
    engines = [e for e in args.engines.split(",") if e]
    setup = mnist1d_setup(args.profile)
    base = replace(setup.base, epochs=args.epochs)
    all_arms = {"standard": base, "gal": replace(base, gal={**GAL_SETTINGS, "first_order": "mean"})}
    arms = {a: all_arms[a] for a in args.arms.split(",") if a}
    data, model_fn = setup.data, setup.model_fn

    def sequential(cfg, n):
        for seed in range(n):
            run(replace(cfg, seed=seed), data, model_fn)

    variants = {"sequential": (lambda cfg: sequential(cfg, args.seq_seeds), args.seq_seeds)}
    for engine in engines:
        for s in stacks:
            variants[f"{engine}-{s}"] = (lambda cfg, s=s, engine=engine: run_stacked(cfg, range(s), data, model_fn, engine=engine), s)

    print(f"# seeds per CPU-minute, {data.name}, {base.model}, {args.epochs} epoch(s) of {len(data.x_train)} samples, "
          f"batch {base.batch_size}, {len(data.x_test)} test; {args.threads} thread(s), torch {torch.__version__}", flush=True)
    for cfg in arms.values():  # warm-up: every path once, small
        sequential(replace(cfg, epochs=1), 1)
        for engine in engines:
            run_stacked(replace(cfg, epochs=1), range(2), data, model_fn, engine=engine)
    cpu: dict[tuple[str, str], list[float]] = {(a, v): [] for a in arms for v in variants}
    wall: dict[tuple[str, str], list[float]] = {(a, v): [] for a in arms for v in variants}
    order = [(a, v) for a in arms for v in variants]
    start = time.perf_counter()
    for r in range(args.rounds):
        for a, v in order if r % 2 == 0 else order[::-1]:
            fn, n = variants[v]
            t, c = time.perf_counter(), time.process_time()
            fn(arms[a])
            cpu[a, v].append((time.process_time() - c) / n)
            wall[a, v].append((time.perf_counter() - t) / n)
        print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - start:.0f} s)", flush=True)

    rows = []
    for a in arms:
        for v in variants:
            per_seed = cpu[a, v]
            ratios = [seq / own for seq, own in zip(cpu[a, "sequential"], per_seed, strict=True)]
            rows.append({"arm": a, "variant": v, "cpu_s_per_seed": statistics.median(per_seed),
                         "wall_s_per_seed": statistics.median(wall[a, v]),
                         "seeds_per_cpu_min": 60 / statistics.median(per_seed),
                         "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)})
    print("\n| arm | variant | CPU-s per seed | seeds per CPU-min | vs sequential (median [min, max] over rounds) |")
    print("|---|---|---:|---:|---|")
    for row in rows:
        print(f"| {row['arm']} | {row['variant']} | {row['cpu_s_per_seed']:.3f} | {row['seeds_per_cpu_min']:.0f} | "
              f"{row['ratio']:.2f}x [{row['ratio_min']:.2f}, {row['ratio_max']:.2f}] |")
    try:
        load = os.getloadavg()
        print(f"\nload average during the run (1/5/15 min): {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs")
    except OSError:
        load = None
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                         "cpu": {f"{a}|{v}": x for (a, v), x in cpu.items()}, "load": load}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
