"""GAL with DistributedDataParallel: a small classifier trained on several processes.

    torchrun --nproc_per_node 2 examples/ddp_train.py             # CPU (gloo) or CUDA (nccl), auto
    torchrun --nproc_per_node 2 examples/ddp_train.py --path surrogate --steps 50
    python examples/ddp_train.py                                  # one process, no DDP

What it shows:
- the model is wrapped in DDP; GAL is *not*: with ``sync_distributed=True`` (the default) GAL
  averages h's gradient over the ranks inside every step, so h stays identical everywhere;
- h must *start* identical: ``galcore.distributed.broadcast_gal(gal)`` copies rank 0's h;
- one optimizer steps the model and h;
- both ways of using GAL: ``gal.backward(out, loss_fn, lr)`` (replaces ``loss.backward()``) and
  ``gal.surrogate(out, loss_fn, lr).backward()`` (for trainers that only call ``backward``);
  ``--path both`` alternates them step by step;
- each rank reads its own shard of the data (``DistributedSampler``).

At the end it checks that the model and h are identical on every rank
(``galcore.distributed.max_rank_difference``) and exits with status 1 if not. ``--out DIR``
also saves each rank's final model and h (``DIR/rank<r>.pt``, with h's initial weights) so a
test can compare them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import galcore
from galcore.distributed import broadcast_gal, max_rank_difference


def make_data(n: int, dim: int, classes: int, seed: int) -> TensorDataset:
    """A fixed synthetic classification set (the same on every rank; the sampler shards it)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen)
    teacher = torch.randn(dim, classes, generator=gen)
    y = (x @ teacher + 0.5 * torch.randn(n, classes, generator=gen)).argmax(dim=1)
    return TensorDataset(x, y)


def main() -> int:
    ap = argparse.ArgumentParser(description="GAL under DDP")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32, help="per-rank batch size")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--ratio", type=float, default=0.1, help="GAL ratio (large here so h visibly learns)")
    ap.add_argument("--path", choices=["backward", "surrogate", "both"], default="both")
    ap.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="save each rank's final state here")
    args = ap.parse_args()

    distributed = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and args.backend != "gloo"
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if distributed:
        backend = args.backend if args.backend != "auto" else ("nccl" if use_cuda else "gloo")
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1

    classes, dim = 10, 20
    torch.manual_seed(args.seed)  # same model init everywhere (DDP also broadcasts rank 0's)
    model = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, classes)).to(device)
    # GAL is not wrapped in DDP. A per-rank seed here would give each rank its own h;
    # broadcast_gal makes them equal (rank 0's), whatever the seeding.
    torch.manual_seed(args.seed + 1000 * rank)
    gal = galcore.GAL(output_dim=classes, ratio=args.ratio).to(device)
    broadcast_gal(gal)
    h_init = {k: v.detach().cpu().clone() for k, v in gal.h.state_dict().items()}
    if distributed:
        model = DDP(model, device_ids=[device.index] if use_cuda else None)
    opt = torch.optim.SGD([*model.parameters(), *gal.parameters()], lr=args.lr, momentum=0.9)

    data = make_data(4096, dim, classes, seed=args.seed)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=args.seed) if distributed else None
    loader = DataLoader(data, batch_size=args.batch, sampler=sampler, shuffle=sampler is None, drop_last=True)

    losses = []  # tensors; read back once at the end (no host sync in the loop)
    step, epoch = 0, 0
    while step < args.steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for x, y in loader:
            if step >= args.steps:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            out = model(x)
            lr = opt.param_groups[0]["lr"]
            use_backward = args.path == "backward" or (args.path == "both" and step % 2 == 0)
            if use_backward:
                record = gal.backward(out, lambda o: F.cross_entropy(o, y), lr=lr)
            else:
                gal.surrogate(out, lambda o: F.cross_entropy(o, y), lr=lr).backward()
                record = gal.last_step
            assert record is not None
            opt.step()
            losses.append(record.loss.detach())
            step += 1
        epoch += 1

    net = model.module if isinstance(model, DDP) else model
    diff_model = max_rank_difference(net)
    diff_h = max_rank_difference(gal)
    first, last = float(losses[0]), float(torch.stack(losses[-10:]).mean())
    print(
        f"[rank {rank}/{world}] {args.steps} steps ({args.path}) on {device}: loss {first:.4f} -> {last:.4f} "
        f"(mean of last 10); GAL accepted {float(gal.acceptance_rate):.2f}, fallbacks {int(gal.num_fallbacks)}; "
        f"max difference across ranks: model {diff_model:.3g}, h {diff_h:.3g}",
        flush=True,
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "rank": rank,
                "world": world,
                "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "h": {k: v.detach().cpu() for k, v in gal.h.state_dict().items()},
                "h_init": h_init,
                "counters": {k: int(getattr(gal, k)) for k in ("num_steps", "num_accepted", "num_fallbacks")},
                "losses": torch.stack(losses).cpu(),
            },
            args.out / f"rank{rank}.pt",
        )
    ok = diff_model == 0.0 and diff_h == 0.0
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    if not ok and rank == 0:
        print("ERROR: the ranks diverged", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
