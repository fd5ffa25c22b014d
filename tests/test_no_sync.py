"""GAL's step reads nothing back to the host (DEVELOPING.md: no host syncs in the training step).

Three checks, all on machines without a GPU:

1. Tripwires: the tensor methods that read a value to the host (``item``, ``tolist``,
   ``numpy``, ``cpu``, ``__bool__``, ``__float__``, ``__int__``, ``__index__``, ``__complex__``,
   and ``.to()`` towards the CPU) raise while ``gal.backward`` / ``gal.surrogate`` run on CPU
   tensors. This catches Python-level reads in galcore and in the torch Python code it calls.
2. Meta tensors: the same steps on the ``meta`` device, where tensors have shapes but no data;
   anything that needs a value (also inside C++ kernels: ``nonzero``, boolean-mask indexing,
   ``item``) raises there.
3. On CUDA (when present): ``torch.cuda.set_sync_debug_mode("error")`` around the step.

The tripwires are checked first on plain training (``loss.backward()``), to show that torch's
own step does not trip them: a failure in the GAL tests is then GAL's.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import galcore

from tests.helpers import HostSync, tripwires


def _setup(device: str = "cpu", dims: str = "logits") -> tuple[nn.Module, galcore.GAL, Tensor, Tensor]:
    torch.manual_seed(0)
    if dims == "logits":
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))
        x = torch.randn(8, 16)
        y = torch.randint(0, 10, (8,))
        gal = galcore.GAL(10, ratio=0.1)
    else:  # dense maps (B, C, H, W), h along dim 1
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 1))
        x = torch.randn(4, 3, 6, 6)
        y = torch.randint(0, 5, (4, 6, 6))
        gal = galcore.GAL(5, ratio=0.1, dim=1)
    return model.to(device), gal.to(device), x.to(device), y.to(device)


def test_tripwires_fire() -> None:
    """The tripwires do catch a read (so the tests below can fail)."""
    calls: list[str] = []
    t = torch.ones(3)
    with tripwires(calls):
        with pytest.raises(HostSync):
            t.sum().item()
        with pytest.raises(HostSync):
            bool(t.sum() > 0)
        with pytest.raises(HostSync):
            float(t.sum())
        with pytest.raises(HostSync):
            t.to("cpu")
        t.to(torch.float64)  # a dtype change is not a host read
    assert calls == ["item", "__bool__", "__float__", "to(cpu)"]
    assert t.sum().item() == 3.0  # restored


def test_plain_step_is_clean() -> None:
    """torch's own forward/backward/SGD step does not trip the wires (baseline for the GAL tests)."""
    model, gal, x, y = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    calls: list[str] = []
    with tripwires(calls):
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert calls == []


@pytest.mark.parametrize("dims", ["logits", "dense"])
@pytest.mark.parametrize("path", ["backward", "surrogate"])
@pytest.mark.parametrize("options", [{}, {"first_order": "mean", "accept": "always", "track_plain": True}])
def test_gal_step_makes_no_host_read(path: str, dims: str, options: dict[str, Any]) -> None:
    model, gal, x, y = _setup(dims=dims)
    for k, v in options.items():
        setattr(gal, k, v)
    opt = torch.optim.SGD([*model.parameters(), *gal.parameters()], lr=0.1, momentum=0.9)
    h0 = [p.detach().clone() for p in gal.parameters()]
    calls: list[str] = []
    with tripwires(calls):
        for _ in range(3):
            opt.zero_grad()
            out = model(x)
            if path == "backward":
                record = gal.backward(out, lambda o: F.cross_entropy(o, y), lr=opt.param_groups[0]["lr"])
            else:
                gal.surrogate(out, lambda o: F.cross_entropy(o, y), lr=opt.param_groups[0]["lr"]).backward()
                record = gal.last_step
            opt.step()
    assert calls == []
    # the step did real work: h moved, counters counted
    assert record is not None and record.loss.ndim == 0
    assert any(not torch.equal(a, b.detach()) for a, b in zip(h0, gal.parameters()))
    assert int(gal.num_steps) == 3


def test_gal_step_with_tensor_lr_makes_no_host_read() -> None:
    """An lr held in a tensor (e.g. a scheduler's) is used without reading it back."""
    model, gal, x, y = _setup()
    lr = torch.tensor(0.1)
    calls: list[str] = []
    with tripwires(calls):
        gal.backward(model(x), lambda o: F.cross_entropy(o, y), lr=lr)
    assert calls == []


@pytest.fixture
def no_autocast_on_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.autocast(device_type="meta", enabled=False) raises "unsupported scalarType"; GAL only
    # uses autocast to switch it off, so a no-op context is equivalent when none is active.
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: contextlib.nullcontext())


@pytest.mark.parametrize("dims", ["logits", "dense"])
@pytest.mark.parametrize("path", ["backward", "surrogate"])
def test_gal_step_runs_on_meta_tensors(path: str, dims: str, no_autocast_on_meta: None) -> None:
    """Meta tensors have no data: any read of a value, in Python or in a kernel, raises."""
    with pytest.raises(Exception):  # the device does catch reads
        torch.ones(2, device="meta").sum().item()
    model, gal, x, y = _setup("meta", dims)
    gal.track_plain = True
    out = model(x)
    if path == "backward":
        record = gal.backward(out, lambda o: F.cross_entropy(o, y), lr=0.1)
    else:
        gal.surrogate(out, lambda o: F.cross_entropy(o, y), lr=0.1).backward()
        record = gal.last_step
    assert record is not None and record.accepted.device.type == "meta"
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in model.parameters())
    assert all(p.grad is not None for p in gal.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("path", ["backward", "surrogate"])
def test_gal_step_has_no_cuda_sync(path: str) -> None:
    """60 GAL steps (the rounding-level watch looks every 50: its copy to the host must not
    wait for the device either) under torch.cuda.set_sync_debug_mode("error")."""
    model, gal, x, y = _setup("cuda")
    gal.track_plain = True
    opt = torch.optim.SGD([*model.parameters(), *gal.parameters()], lr=0.1, momentum=0.9)
    opt.zero_grad()
    gal.backward(model(x), lambda o: F.cross_entropy(o, y), lr=0.1)  # warm-up (lazy init may sync)
    opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(60):
            opt.zero_grad()
            out = model(x)
            if path == "backward":
                gal.backward(out, lambda o: F.cross_entropy(o, y), lr=0.1)
            else:
                gal.surrogate(out, lambda o: F.cross_entropy(o, y), lr=0.1).backward()
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert int(gal.num_steps) == 61
