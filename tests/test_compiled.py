"""``GAL.compile()``: the fused step equals the eager (reference) step, does not recompile as the
learning rate and the labels change, keeps the fault handling, and falls back to eager when
the compiler fails.

Each inductor compile costs seconds on a CPU, so the tests share few graphs.
"""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

from galcore import GAL
from tests.helpers import tripwires


def _grads(modules: list[nn.Module]) -> list[torch.Tensor]:
    return [p.grad.clone() for m in modules for p in m.parameters()]


def _assert_records_close(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert b[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k


def _ce(y: torch.Tensor):
    """One loss closure per batch, always the same code: what dynamo guards on."""
    return lambda o: F.cross_entropy(o, y)


def test_compiled_matches_eager_without_recompiling() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 10))
    eager = GAL(10, ratio=0.05, track_plain=True)
    fused = copy.deepcopy(eager).compile()
    model_c = copy.deepcopy(model)
    assert fused.is_compiled and not eager.is_compiled
    gen = torch.Generator().manual_seed(1)
    graphs = None
    for step, lr in enumerate([0.5, 0.2, 0.31, 0.05, 0.5]):
        x, y = torch.randn(32, 6, generator=gen), torch.randint(0, 10, (32,), generator=gen)
        for m in (model, model_c, eager, fused):
            m.zero_grad(set_to_none=True)
        ra = eager.backward(model(x), _ce(y), lr=lr)
        rb = fused.backward(model_c(x), _ce(y), lr=lr)
        for ga, gb in zip(_grads([model, eager]), _grads([model_c, fused]), strict=True):
            torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6)
        _assert_records_close(ra.to_dict(), rb.to_dict())
        if step == 1:  # the first step runs eagerly; the second compiles
            graphs = counters["stats"]["unique_graphs"]
    # new labels, a new lr and a new loss closure every step: still the one graph
    assert counters["stats"]["unique_graphs"] == graphs
    assert int(fused.num_steps) == 5 and int(fused.num_accepted) == int(eager.num_accepted)

    # a fault (NaN in h) under the compiled step: plain gradient, h gets zero, counted
    with torch.no_grad():
        fused.h[0].weight[0, 0] = float("nan")
    for m in (model_c, fused):
        m.zero_grad(set_to_none=True)
    out = model_c(x)
    plain = torch.autograd.grad(F.cross_entropy(out, y), out, retain_graph=True)[0]
    record = fused.backward(out, _ce(y), lr=0.1)
    assert bool(record.fallback) and not bool(record.accepted)
    assert int(fused.num_fallbacks) == 1
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in fused.h.parameters())
    assert all(torch.isfinite(p.grad).all() for p in model_c.parameters())
    model_plain = copy.deepcopy(model_c)
    model_plain.zero_grad(set_to_none=True)
    model_plain(x).backward(plain)
    for p, q in zip(model_c.parameters(), model_plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)

    # the compiled step reads nothing back to the host either
    calls: list[str] = []
    with tripwires(calls):
        fused.backward(model_c(x), _ce(y), lr=0.2)
    assert calls == []
    assert counters["stats"]["unique_graphs"] == graphs


def test_compiled_dense_lists_mean_always_and_surrogate() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 1)
    eager = GAL(3, ratio=0.1, dim=1, first_order="mean", accept="always", compute_dtype=torch.float64)
    fused = copy.deepcopy(eager).compile()
    conv_c = copy.deepcopy(conv)
    x, t = torch.randn(4, 2, 5, 5), torch.randn(4, 3, 5, 5)

    def loss_fn(o: list[torch.Tensor]) -> torch.Tensor:
        return F.mse_loss(o[0], t) + o[1].pow(2).mean()

    for _ in range(3):
        for m in (conv, conv_c, eager, fused):
            m.zero_grad(set_to_none=True)
        s_eager = eager.surrogate([conv(x), conv(x[..., :3, :3])], loss_fn, lr=0.3)
        s_fused = fused.surrogate([conv_c(x), conv_c(x[..., :3, :3])], loss_fn, lr=0.3)
        torch.testing.assert_close(s_fused, s_eager)
        s_eager.backward()
        s_fused.backward()
        for ga, gb in zip(_grads([conv, eager]), _grads([conv_c, fused]), strict=True):
            torch.testing.assert_close(gb, ga, rtol=1e-5, atol=1e-8)
        assert bool(fused.last_step.accepted)


def _failing_backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):
    raise RuntimeError("no compiler here")


def test_compiler_failure_falls_back_to_eager() -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 10)
    eager = GAL(10, ratio=0.05)
    broken = copy.deepcopy(eager).compile(backend=_failing_backend)
    model_b = copy.deepcopy(model)
    x, y = torch.randn(8, 5), torch.randint(0, 10, (8,))
    for _ in range(2):  # the first step runs eagerly, the second tries to compile
        eager.backward(model(x), lambda o: F.cross_entropy(o, y), lr=0.2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            broken.backward(model_b(x), lambda o: F.cross_entropy(o, y), lr=0.2)
    assert [str(w.message) for w in caught if "compiled step failed" in str(w.message)]
    assert not broken.is_compiled
    for ga, gb in zip(_grads([model, eager]), _grads([model_b, broken]), strict=True):
        torch.testing.assert_close(gb, ga)


def test_user_errors_surface_unchanged_under_compile() -> None:
    # the first step after compile() runs eagerly and raises the usual error
    gal = GAL(10).compile(backend="eager")
    out = torch.randn(4, 10, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the caller's error is not a compiler failure
        with pytest.raises(ValueError, match="scalar loss"):
            gal.backward(out, lambda o: (o**2).sum(dim=1), lr=0.1)
    assert gal.is_compiled


def test_compiled_copies_pickles_and_uncompiles() -> None:
    gal = GAL(10).compile(backend="eager")
    out = torch.randn(4, 10, requires_grad=True)
    y = torch.randint(0, 10, (4,))
    gal.backward(out, lambda o: F.cross_entropy(o, y), lr=0.1)
    twin = copy.deepcopy(gal)
    assert twin.is_compiled
    restored = pickle.loads(pickle.dumps(gal))
    assert restored.is_compiled
    restored.backward(out, lambda o: F.cross_entropy(o, y), lr=0.1)
    # a runtime choice, like torch.compile: not in the state dict
    assert gal.state_dict().keys() == GAL(10).state_dict().keys()
    assert gal.uncompile() is gal and not gal.is_compiled


@pytest.mark.parametrize("compiled", [False, True])
def test_frozen_h_still_adjusts(compiled: bool) -> None:
    """A frozen h (no trainable parameters) still adjusts the gradient; nothing to train."""
    torch.manual_seed(0)
    gal = GAL(10, ratio=0.5, accept="always")
    gal.h.requires_grad_(False)
    if compiled:
        gal.compile(backend="eager")
    out = torch.randn(6, 10, requires_grad=True)
    y = torch.randint(0, 10, (6,))
    for _ in range(2):
        out.grad = None
        record = gal.backward(out, lambda o: F.cross_entropy(o, y), lr=0.1)
    x0 = out.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(x0, y), x0)
    a = gal.h(out.detach())
    a = 0.5 * g.norm(dim=1, keepdim=True) * a / a.norm(dim=1, keepdim=True)
    torch.testing.assert_close(out.grad, g + a)
    assert bool(record.accepted) and not bool(record.fallback)
    assert all(p.grad is None for p in gal.h.parameters())


def test_param_gal_compiled_matches_eager() -> None:
    """ParamGAL (the 3D toy's parameter-space GAL) takes the same compiled path."""
    from galcore import ParamGAL
    from galcore.experiments.theory.surface import surface

    def trajectory(compiled: bool) -> torch.Tensor:
        torch.manual_seed(3)
        xy = torch.tensor([0.75, 1.0], requires_grad=True)
        gal = ParamGAL([xy], ratio=0.2, hidden=(64, 24))
        if compiled:
            gal.compile()
        opt = torch.optim.SGD([xy, *gal.parameters()], lr=0.1)
        for _ in range(6):
            opt.zero_grad()
            gal.backward(lambda p: surface(p[0]), lr=0.1)
            opt.step()
        return xy.detach()

    torch.testing.assert_close(trajectory(True), trajectory(False), rtol=1e-5, atol=1e-6)


def test_reduce_overhead_mode_traces_and_matches_eager() -> None:
    """``compile(mode="reduce-overhead")``, CUDA graphs on a GPU (nothing in the step reads back to
    the host); on a CPU inductor runs the same graph without them. Same decisions and gradients
    as eager, no recompile as lr and labels change, and the records outlive the next step."""
    torch.manual_seed(0)
    model = nn.Linear(6, 10)
    eager = GAL(10, ratio=0.05)
    fused = copy.deepcopy(eager).compile(mode="reduce-overhead")
    model_c = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(2)
    graphs, records = None, []
    def loss(y: torch.Tensor):  # curved: a large step overshoots and is rejected
        return lambda o: F.cross_entropy(o, y) + o.pow(2).mean()

    for step, lr in enumerate([0.4, 0.1, 0.25, 1000.0]):
        x, y = torch.randn(16, 6, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        for m in (model, model_c, eager, fused):
            m.zero_grad(set_to_none=True)
        ra = eager.backward(model(x), loss(y), lr=lr)
        rb = fused.backward(model_c(x), loss(y), lr=lr)
        records.append((ra.to_dict(), rb))
        for ga, gb in zip(_grads([model, eager]), _grads([model_c, fused]), strict=True):
            torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6)
        if step == 1:
            graphs = counters["stats"]["unique_graphs"]
    assert fused.is_compiled and counters["stats"]["unique_graphs"] == graphs
    for a, b in records:
        _assert_records_close(a, b.to_dict())
    assert [int(r.accepted) for _, r in records] == [1, 1, 1, 0]  # both branches of the rule
    assert int(fused.num_accepted) == int(eager.num_accepted)
