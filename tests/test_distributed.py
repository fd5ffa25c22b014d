"""GAL under torch.distributed: 2 CPU processes, gloo, on the loopback interface.

- ``galcore.distributed`` helpers: no-ops in one process; in two, ``broadcast_gal`` makes h equal
  to rank 0's, GAL's gradient all-reduce keeps it equal while each rank sees other data, and
  without that all-reduce (``sync_distributed=False``) h does drift apart (so the check can fail).
- ``examples/ddp_train.py`` under ``torch.distributed.run --nproc_per_node 2`` (DDP model, GAL not
  wrapped, one SGD for both, ``gal.backward`` and ``gal.surrogate`` alternating): model and h end
  bit-identical on both ranks, h moved from its initial weights, the ranks saw different data.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import galcore
from galcore.distributed import broadcast_gal, is_distributed, max_rank_difference

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ddp_train.py"

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback_env(port: int) -> dict[str, str]:
    """Rendezvous and gloo traffic on 127.0.0.1 only (gloo otherwise picks the hostname's interface)."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux") and Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    elif sys.platform == "darwin":
        env["GLOO_SOCKET_IFNAME"] = "lo0"
    return env


# -- one process ----------------------------------------------------------------------------
def test_helpers_are_noops_without_a_process_group() -> None:
    assert not is_distributed()
    gal = galcore.GAL(10)
    before = {k: v.clone() for k, v in gal.state_dict().items() if isinstance(v, torch.Tensor)}
    broadcast_gal(gal)
    assert max_rank_difference(gal) == 0.0
    after = gal.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- two processes, spawned -----------------------------------------------------------------
def _gal_steps(gal: galcore.GAL, model: nn.Module, rank: int, steps: int) -> None:
    opt = torch.optim.SGD([*model.parameters(), *gal.parameters()], lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    for _ in range(steps):
        x = torch.randn(16, 8, generator=gen)
        y = torch.randint(0, 10, (16,), generator=gen)
        opt.zero_grad()
        gal.backward(model(x), lambda o: F.cross_entropy(o, y), lr=0.1)
        # keep the (undistributed) model equal across ranks, so only h's sync is under test
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()
        opt.step()


def _worker(rank: int, world: int, out_dir: str) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # a different h on each rank
        gal = galcore.GAL(10, ratio=0.1)
        results: dict[str, object] = {"before": max_rank_difference(gal)}
        broadcast_gal(gal)
        results["after_broadcast"] = max_rank_difference(gal)
        ref = gal.h[0].weight.detach().clone()
        dist.broadcast(ref, src=0)
        results["equals_rank0"] = bool(torch.equal(ref, gal.h[0].weight.detach()))
        h0 = [p.detach().clone() for p in gal.parameters()]

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 10))
        _gal_steps(gal, model, rank, steps=5)  # sync_distributed=True (the default)
        results["synced_steps"] = max_rank_difference(gal)
        results["h_moved"] = max(float((a - b).abs().max()) for a, b in zip(h0, gal.parameters()))
        results["num_steps"] = int(gal.num_steps)

        gal.sync_distributed = False
        _gal_steps(gal, model, rank, steps=5)
        results["unsynced_steps"] = max_rank_difference(gal)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_broadcast_and_gradient_sync_two_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in loopback_env(free_port()).items():
        monkeypatch.setenv(k, v)
    mp.start_processes(_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt")
        assert r["before"] > 0.0, "different seeds should give different h"
        assert r["after_broadcast"] == 0.0
        assert r["equals_rank0"]
        assert r["num_steps"] == 5
        assert r["h_moved"] > 0.0, "h did not learn, the sync check would be vacuous"
        assert r["synced_steps"] == 0.0, "GAL's all-reduce should keep h bit-identical"
        assert r["unsynced_steps"] > 0.0, "without the all-reduce h should drift (different data per rank)"


# -- the example under torch.distributed.run ------------------------------------------------
@pytest.mark.slow
def test_ddp_example_keeps_ranks_identical(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, **loopback_env(port), "CUDA_VISIBLE_DEVICES": ""}  # gloo on CPU
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", "2", "--nnodes", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
        str(EXAMPLE), "--steps", "10", "--path", "both", "--backend", "gloo", "--out", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [s["rank"] for s in states] == [0, 1] and all(s["world"] == 2 for s in states)
    a, b = states
    # started equal (rank 1 seeded its own h; broadcast_gal replaced it) ...
    assert all(torch.equal(a["h_init"][k], b["h_init"][k]) for k in a["h_init"])
    # ... ended bit-identical, model and h
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"model {k} differs across ranks"
    for k in a["h"]:
        assert torch.equal(a["h"][k], b["h"][k]), f"h {k} differs across ranks"
    # h learned something (the comparison above is not between two untouched copies)
    assert any(not torch.equal(a["h"][k], a["h_init"][k]) for k in a["h"])
    # each rank saw its own data, and both paths ran the counted number of steps
    assert not torch.equal(a["losses"], b["losses"])
    assert a["counters"]["num_steps"] == b["counters"]["num_steps"] == 10
    assert all(torch.isfinite(s["losses"]).all() for s in states)
