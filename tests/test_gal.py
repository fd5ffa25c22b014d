"""GAL's step: the release reference, the options, faults, state, and the trainer path."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import galcore
from galcore import GAL, ParamGAL


def _model(c_in: int = 8, c_out: int = 10, dtype: torch.dtype = torch.float32) -> nn.Module:
    return nn.Sequential(nn.Linear(c_in, 32), nn.Tanh(), nn.Linear(32, c_out)).to(dtype)


def _batch(n: int = 16, c_in: int = 8, c_out: int = 10, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, c_in, generator=g, dtype=dtype), torch.randint(0, c_out, (n,), generator=g)


def test_sum_form_is_exact_taylor_and_differs_from_mean() -> None:
    """The objective is |L(x - delta) - L(x) + <g, delta>|, measured here by an independent
    code path (galcore.output_remainder) with delta = lr * (the gradient GAL sent back)."""
    torch.manual_seed(0)
    model = _model(dtype=torch.float64)
    x, y = _batch(dtype=torch.float64)
    loss_fn = lambda o: F.cross_entropy(o, y)  # noqa: E731
    gal = GAL(10, ratio=0.2, accept="always").double()
    out = model(x).detach().requires_grad_()
    rec = gal.backward(out, loss_fn, lr=1.0)
    taylor = galcore.output_remainder(loss_fn, out, 1.0 * out.grad)
    assert float(taylor) != 0.0
    torch.testing.assert_close(rec.remainder, taylor, rtol=1e-10, atol=0)
    torch.testing.assert_close(rec.objective, taylor.abs(), rtol=1e-10, atol=0)
    # the release's form divides <g, delta> by the batch size: a different objective
    mean = GAL(10, ratio=0.2, accept="always", first_order="mean").double()
    mean.load_state_dict(gal.state_dict())
    mean.first_order = "mean"
    out2 = model(x).detach().requires_grad_()
    rec_m = mean.backward(out2, loss_fn, lr=1.0)
    inner = (1.0 * out2.grad * torch.autograd.functional.jacobian(loss_fn, out2.detach())).sum()
    torch.testing.assert_close(rec_m.objective, (rec_m.tentative_loss - rec_m.loss + inner / 16).abs())
    assert not torch.isclose(rec_m.objective, rec_m.remainder.abs())


def test_quadratic_loss_remainder_is_half_hessian_form() -> None:
    # L(x) = 0.5 * sum(x^2) / B: the remainder of a step delta is 0.5 * |delta|^2 / B exactly
    x = torch.randn(4, 3, dtype=torch.float64)
    gal = GAL(3, ratio=0.5, accept="always").double()
    rec = gal.backward(x.clone().requires_grad_(), lambda o: 0.5 * (o**2).sum() / 4, lr=0.7)
    g = x / 4
    torch.manual_seed(0)
    a = gal.h(x.detach())
    a = 0.5 * g.norm(dim=1, keepdim=True) * a / a.norm(dim=1, keepdim=True)
    delta = 0.7 * (g + a)
    torch.testing.assert_close(rec.remainder, 0.5 * (delta**2).sum() / 4)


def test_chosen_gradient_and_counters() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 5, requires_grad=True)
    y = torch.randint(0, 5, (8,))
    gal = GAL(5, ratio=0.1, accept="always")
    rec = gal.backward(x, lambda o: F.cross_entropy(o, y), lr=0.1)
    x0 = x.detach().requires_grad_()
    (g,) = torch.autograd.grad(F.cross_entropy(x0, y), x0)
    adj = x.grad - g
    torch.testing.assert_close(adj.norm(dim=1), 0.1 * g.norm(dim=1), rtol=1e-5, atol=1e-8)
    assert bool(rec.accepted)
    assert int(gal.num_steps) == 1 and int(gal.num_accepted) == 1 and int(gal.num_fallbacks) == 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gal.h.parameters())


def test_decrease_rule_rejects_an_increasing_step() -> None:
    # with a huge lr the tentative step overshoots: the loss goes up and "decrease" rejects it
    x = torch.randn(8, 5, requires_grad=True)
    y = torch.randint(0, 5, (8,))
    gal = GAL(5, ratio=0.1)
    rec = gal.backward(x, lambda o: F.cross_entropy(o, y) + 10 * (o**2).mean(), lr=1e4)
    assert not bool(rec.accepted) and bool(rec.tentative_loss > rec.loss)
    x0 = x.detach().requires_grad_()
    (g,) = torch.autograd.grad(F.cross_entropy(x0, y) + 10 * (x0**2).mean(), x0)
    torch.testing.assert_close(x.grad, g)


@pytest.mark.parametrize("outputs_shape", [(4, 6, 5, 5), (2, 6, 3)])
def test_dense_maps_and_lists(outputs_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    a = torch.randn(*outputs_shape, requires_grad=True)
    b = torch.randn(outputs_shape[0], 6, *(2 for _ in outputs_shape[2:]), requires_grad=True)
    gal = GAL(6, ratio=0.2, dim=1, accept="always")
    rec = gal.backward([a, b], lambda os: sum((t**2).mean() for t in os), lr=0.1)
    assert isinstance(rec, galcore.GALStep)
    for t in (a, b):
        g = 2 * t.detach() / t.numel()
        adj = (t.grad - g).movedim(1, -1)
        torch.testing.assert_close(
            adj.norm(dim=-1), 0.2 * g.movedim(1, -1).norm(dim=-1), rtol=1e-4, atol=1e-9
        )
    # the loss function receives the same structure it was given
    seen = []
    gal.backward((a, b), lambda os: seen.append(type(os)) or sum(t.sum() for t in os), lr=0.1)
    assert seen and all(s is tuple for s in seen)


def test_bad_inputs_are_named() -> None:
    gal = GAL(4)
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(ValueError, match="scalar"):
        gal.backward(x, lambda o: o.sum(dim=1), lr=0.1)
    with pytest.raises(TypeError, match="floating"):
        gal.backward(torch.ones(3, 4, dtype=torch.int64), lambda o: o.sum(), lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        gal.backward(x, lambda o: o.sum(), lr=0.0)
    with pytest.raises(ValueError, match="lr"):
        gal.backward(x, lambda o: o.sum(), lr=-1.0)
    with pytest.raises(ValueError, match="output_dim=4"):
        gal.backward(torch.randn(3, 5, requires_grad=True), lambda o: o.sum(), lr=0.1)
    with pytest.raises(ValueError, match="ratio"):
        GAL(4, ratio=-0.1)
    with pytest.raises(ValueError, match="first_order"):
        GAL(4, first_order="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="accept"):
        GAL(4, accept="sometimes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        gal.backward(x, 3.0, lr=0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tensor"):
        gal.backward(x, lambda o: 1.0, lr=0.1)  # type: ignore[arg-type, return-value]


def _no_nan_grads(*modules: nn.Module) -> bool:
    return all(torch.isfinite(p.grad).all() for m in modules for p in m.parameters() if p.grad is not None)


@pytest.mark.parametrize("fault", ["zero_h", "nan_h", "inf_tentative"])
def test_faults_fall_back_to_plain_gradient(fault: str) -> None:
    torch.manual_seed(0)
    model = _model()
    x, y = _batch()
    gal = GAL(10, ratio=0.1, accept="always")
    loss_fn = lambda o: F.cross_entropy(o, y)  # noqa: E731
    if fault == "zero_h":
        for p in gal.h.parameters():
            nn.init.zeros_(p)
    elif fault == "nan_h":
        with torch.no_grad():
            gal.h[0].weight[0, 0] = float("nan")
    else:
        # finite at the outputs, infinite at any other point (the tentative step)
        ref = model(x).detach()
        loss_fn = lambda o: F.cross_entropy(o, y) + torch.where(  # noqa: E731
            torch.equal(o.detach(), ref) * torch.ones(()) > 0, 0.0, float("inf")
        )
    plain = copy.deepcopy(model)
    F.cross_entropy(plain(x), y).backward()
    rec = gal.backward(model(x), loss_fn, lr=0.1)
    assert bool(rec.fallback) and not bool(rec.accepted)
    assert int(gal.num_fallbacks) == 1
    for p, q in zip(model.parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    assert _no_nan_grads(model, gal)
    for p in gal.h.parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0


def _train(model: nn.Module, gal: GAL, opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        x, y = _batch(16)
        x = x + 0.01 * step
        opt.zero_grad()
        gal.backward(model(x), lambda o: F.cross_entropy(o, y), lr=opt.param_groups[0]["lr"])
        opt.step()


def test_state_dict_resume_continues_exactly() -> None:
    torch.manual_seed(0)
    model, gal = _model(), GAL(10, ratio=0.05, scale=2.0, first_order="mean")
    opt = torch.optim.SGD([*model.parameters(), *gal.parameters()], lr=0.5, momentum=0.9)
    _train(model, gal, opt, range(5))
    saved = copy.deepcopy({"model": model.state_dict(), "gal": gal.state_dict(), "opt": opt.state_dict()})
    _train(model, gal, opt, range(5, 10))

    model2, gal2 = _model(), GAL(10)  # fresh defaults: options come back from the state dict
    opt2 = torch.optim.SGD([*model2.parameters(), *gal2.parameters()], lr=0.5, momentum=0.9)
    model2.load_state_dict(saved["model"])
    gal2.load_state_dict(saved["gal"])
    opt2.load_state_dict(saved["opt"])
    assert (gal2.ratio, gal2.scale, gal2.first_order) == (0.05, 2.0, "mean")
    assert int(gal2.num_steps) == 5
    _train(model2, gal2, opt2, range(5, 10))
    for p, q in zip([*model.parameters(), *gal.parameters()], [*model2.parameters(), *gal2.parameters()]):
        assert torch.equal(p, q)
    assert int(gal2.num_steps) == 10 and torch.equal(gal.num_accepted, gal2.num_accepted)


def test_surrogate_matches_backward_and_scaling() -> None:
    torch.manual_seed(0)
    model = _model()
    x, y = _batch()
    gal = GAL(10, ratio=0.3, accept="always")
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    g1, g2 = copy.deepcopy(gal), copy.deepcopy(gal)
    loss_fn = lambda o: F.cross_entropy(o, y)  # noqa: E731
    g1.backward(m1(x), loss_fn, lr=0.2)
    s = g2.surrogate(m2(x), loss_fn, lr=0.2)
    assert s.ndim == 0
    torch.testing.assert_close(s.detach(), F.cross_entropy(model(x), y).detach())
    (s * 1024.0).backward()  # what a GradScaler does: the adjustment must not see the scale
    for p, q in zip([*m1.parameters(), *g1.parameters()], [*m2.parameters(), *g2.parameters()]):
        torch.testing.assert_close(q.grad / 1024.0, p.grad, rtol=1e-5, atol=1e-9)
    assert g2.last_step is not None and bool(g2.last_step.accepted)


def test_gradient_accumulation_through_surrogate() -> None:
    torch.manual_seed(0)
    model = _model()
    gal = GAL(10, ratio=0.1)
    (x1, y1), (x2, y2) = _batch(8), _batch(8)
    ref = copy.deepcopy(model)
    gref = copy.deepcopy(gal)
    for xb, yb in ((x1, y1), (x2, y2)):
        gal.surrogate(model(xb), lambda o, yb=yb: F.cross_entropy(o, yb) / 2, lr=0.1).backward()
    for xb, yb in ((x1, y1), (x2, y2)):
        gref.backward(ref(xb), lambda o, yb=yb: F.cross_entropy(o, yb) / 2, lr=0.1)
    for p, q in zip([*model.parameters(), *gal.parameters()], [*ref.parameters(), *gref.parameters()]):
        torch.testing.assert_close(p.grad, q.grad)


def test_autocast_outputs_are_handled_in_full_precision() -> None:
    torch.manual_seed(0)
    model = _model()
    x, y = _batch()
    for compute_dtype, expected in ((None, torch.float32), (torch.float64, torch.float64)):
        gal = GAL(10, ratio=0.1, compute_dtype=compute_dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            assert out.dtype == torch.bfloat16
            s = gal.surrogate(out, lambda o: F.cross_entropy(o, y), lr=0.1)
        s.backward()
        assert s.dtype == torch.float32
        assert gal.last_step is not None and gal.last_step.loss.dtype == expected
        assert _no_nan_grads(model, gal)


def test_compute_dtype_float64_resolves_small_remainders() -> None:
    torch.manual_seed(0)
    model = _model()
    x, y = _batch(64)
    gal = GAL(10, ratio=0.1, compute_dtype=torch.float64, track_plain=True)
    rec = gal.backward(model(x), lambda o: F.cross_entropy(o, y), lr=0.01)
    assert rec.loss.dtype == torch.float64 and rec.remainder_plain is not None
    assert model[0].weight.grad.dtype == torch.float32
    # the plain remainder of a tiny cross-entropy step is positive (convex loss) in float64
    assert float(rec.remainder_plain) > 0


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 6),
    classes=st.integers(2, 7),
    ratio=st.floats(0.0, 2.0),
    lr=st.floats(1e-3, 10.0),
    seed=st.integers(0, 1000),
)
def test_property_adjustment_norm_and_choice(batch: int, classes: int, ratio: float, lr: float, seed: int) -> None:
    torch.manual_seed(seed)
    x = torch.randn(batch, classes, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, classes, (batch,))
    gal = GAL(classes, ratio=ratio, hidden=(8,)).double()
    rec = gal.backward(x, lambda o: F.cross_entropy(o, y), lr=lr)
    x0 = x.detach().requires_grad_()
    (g,) = torch.autograd.grad(F.cross_entropy(x0, y), x0)
    diff = x.grad - g
    if bool(rec.accepted):
        torch.testing.assert_close(diff.norm(dim=1), ratio * g.norm(dim=1), rtol=1e-9, atol=1e-12)
        assert bool(rec.tentative_loss <= rec.loss)
    else:
        assert torch.count_nonzero(diff) == 0
    assert torch.isfinite(x.grad).all()


def test_param_gal_on_a_quadratic_bowl() -> None:
    torch.manual_seed(0)
    w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    pg = ParamGAL([w], ratio=0.2, accept="always").double()
    rec = pg.backward(lambda ps: (ps[0] ** 2).sum(), lr=0.1)
    g = 2 * w.detach()
    torch.testing.assert_close((w.grad - g).norm(), 0.2 * g.norm())
    # quadratic: remainder = |delta|^2 exactly (Hessian 2I, half of it times |delta|^2)
    delta = 0.1 * w.grad
    torch.testing.assert_close(rec.remainder, (delta**2).sum())
    assert pg.output_dim == 2 and [m.out_features for m in pg.h] == [64, 24, 2]
    assert not any(p is w for p in pg.parameters())


def test_param_gal_with_a_module_gets_named_params() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    pg = ParamGAL(lin, ratio=0.1, hidden=(4,))
    x = torch.randn(5, 3)
    seen = {}

    def loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
        seen.update(params)
        # GAL evaluates the loss in its compute dtype (float64) as well: follow the parameters'
        return torch.func.functional_call(lin, params, (x.to(params["weight"].dtype),)).pow(2).mean()

    pg.backward(loss, lr=0.1)
    assert set(seen) == {"weight", "bias"}
    assert lin.weight.grad is not None and lin.weight.grad.shape == (2, 3)


def test_custom_h_of_the_wrong_size_is_named() -> None:
    gal = GAL(4, h=nn.Linear(4, 3))
    with pytest.raises(ValueError, match="h must map vectors of size 4"):
        gal.backward(torch.randn(2, 4, requires_grad=True), lambda o: o.sum(), lr=0.1)
    ok = GAL(4, h=nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4)), ratio=0.1)
    rec = ok.backward(torch.randn(2, 4, requires_grad=True), lambda o: (o**2).sum(), lr=0.1)
    assert not bool(rec.fallback)


def test_h_is_one_flat_parameter_with_the_plain_stack_state_dict() -> None:
    """GAL keeps h's weights in one flat parameter (one tensor for the optimizer and DDP);
    ``h[i].weight`` are views of it, and state dicts load from and into the plain stack."""
    from galcore.adjuster import LinearStack, make_adjuster

    torch.manual_seed(0)
    gal = GAL(10)
    assert [n for n, _ in gal.named_parameters()] == ["h.flat"] and gal.h.flat.numel() == 5030
    plain = make_adjuster(10, galcore.release_hidden(10))
    plain.load_state_dict(gal.h.state_dict())  # the plain stack's keys, both ways
    assert set(gal.state_dict()) == {"h.0.weight", "h.0.bias", "h.1.weight", "h.1.bias", "h.2.weight", "h.2.bias",
                                     "h.3.weight", "h.3.bias", "num_steps", "num_accepted", "num_fallbacks", "_extra_state"}
    x = torch.randn(300, 10)  # many rows: the affine map is multiplied out first
    torch.testing.assert_close(gal.h(x), plain(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gal.h(x[:3]), plain(x[:3]), rtol=1e-5, atol=1e-6)
    grad = torch.autograd.grad(gal.h(x).square().sum(), gal.h.flat)[0]
    grads = torch.autograd.grad(plain(x).square().sum(), list(plain.parameters()))
    torch.testing.assert_close(grad, torch.cat([t.t().flatten() if t.ndim == 2 else t for t in grads]), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        gal.h[1].bias[0] = 7.0  # views write into the flat parameter, also after a copy or a dtype change
    assert float(gal.h.flat[1000 + 100 + 3200]) == 7.0
    twin = copy.deepcopy(gal).double()
    assert twin.h[1].bias.dtype == torch.float64 and float(twin.h[1].bias[0]) == 7.0
    fresh = GAL(10)
    fresh.load_state_dict(gal.state_dict())
    assert torch.equal(fresh.h.flat, gal.h.flat)
    relu = LinearStack(*make_adjuster(4, (8,), activation="relu"))
    with pytest.raises(RuntimeError, match="Missing key"):
        relu.load_state_dict({"0.weight": torch.zeros(8, 4)})
