"""Remainder diagnostics against cases with a known answer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from galcore import RemainderProbe, output_remainder, remainder_terms


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 6), seed=st.integers(0, 10_000), step=st.floats(1e-3, 10.0))
def test_quadratic_r1_is_half_hessian_form_and_r2_zero(n: int, seed: int, step: float) -> None:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    h = a @ a.T + torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    w = torch.randn(n, generator=g, dtype=torch.float64)
    d = step * torch.randn(n, generator=g, dtype=torch.float64)
    t = remainder_terms(lambda v: 0.5 * v @ h @ v + b @ v, w, d)
    expected = 0.5 * d @ h @ d
    scale = float(expected.abs()) + 1.0
    assert abs(float(t.r1 - expected)) <= 1e-10 * scale
    assert abs(float(t.second_order - expected)) <= 1e-10 * scale
    assert abs(float(t.r2)) <= 1e-10 * scale
    torch.testing.assert_close(t.first_order, (h @ w + b) @ d)


def test_cubic_matches_closed_form() -> None:
    # f(v) = sum(v^3): f(w + d) - f(w) - 3 w^2 d = 3 w d^2 + d^3; second order 3 w d^2; r2 = d^3
    w = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    d = torch.tensor([0.1, 0.3, -0.2], dtype=torch.float64)
    t = remainder_terms(lambda v: (v**3).sum(), w, d)
    torch.testing.assert_close(t.r1, (3 * w * d**2 + d**3).sum())
    torch.testing.assert_close(t.second_order, (3 * w * d**2).sum())
    torch.testing.assert_close(t.r2, (d**3).sum())


def test_pytree_params_small_net_against_finite_differences() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(7, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (7,))
    params = {k: v.detach() for k, v in net.named_parameters()}
    d = {k: 1e-2 * torch.randn_like(v) for k, v in params.items()}

    def f(p):
        return F.cross_entropy(torch.func.functional_call(net, p, (x,)), y)

    t = remainder_terms(f, params, d)
    # second-order term by central finite differences of the directional derivative
    eps = 1e-4

    def directional(s: float) -> float:
        p = {k: (params[k] + s * d[k]).requires_grad_() for k in params}
        grads = torch.autograd.grad(f(p), list(p.values()))
        return float(sum((gi * d[k]).sum() for gi, k in zip(grads, p)))

    dhd = (directional(eps) - directional(-eps)) / (2 * eps)
    assert abs(float(t.second_order) - 0.5 * dhd) <= 1e-7 * max(1.0, abs(dhd))
    with torch.no_grad():
        exact = f({k: params[k] + d[k] for k in params}) - f(params)
    torch.testing.assert_close(t.r1, exact - t.first_order)
    # a small step: the remainder is dominated by the second-order part
    assert abs(float(t.r2)) < 0.1 * abs(float(t.second_order))


def test_remainder_shrinks_quadratically_with_step() -> None:
    w = torch.tensor([0.3, -0.7], dtype=torch.float64)
    d = torch.tensor([1.0, 0.5], dtype=torch.float64)
    f = lambda v: torch.exp(v).sum() + (v[0] * v[1]) ** 2  # noqa: E731
    r = [abs(float(remainder_terms(f, w, s * d).r1)) for s in (1e-2, 1e-3)]
    assert 90 < r[0] / r[1] < 110  # slope 2 on a log-log plot


def test_output_remainder_of_a_quadratic() -> None:
    x = torch.randn(4, 3, dtype=torch.float64)
    delta = torch.randn(4, 3, dtype=torch.float64)
    r = output_remainder(lambda o: (o**2).sum(), x, delta)
    torch.testing.assert_close(r, (delta**2).sum())


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


@pytest.mark.parametrize("every", [1, 3])
def test_probe_does_not_change_the_trajectory(every: int) -> None:
    torch.manual_seed(0)
    a = _net()
    b = copy.deepcopy(a)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    probe = RemainderProbe(b, every=every, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    for step in range(6):
        x = torch.randn(16, 4, generator=gen)
        y = torch.randint(0, 3, (16,), generator=gen)
        torch.manual_seed(step)
        opt_a.zero_grad()
        F.cross_entropy(a(x), y).backward()
        opt_a.step()
        torch.manual_seed(step)
        opt_b.zero_grad()
        F.cross_entropy(b(x), y).backward()
        rng = torch.random.get_rng_state()
        with probe.measure(lambda o, y=y: F.cross_entropy(o, y), x):
            opt_b.step()
        assert torch.equal(torch.random.get_rng_state(), rng)  # the global RNG is untouched
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)
    assert len(probe.history) == len(range(0, 6, every))
    for _, t in probe.history:
        assert torch.isfinite(t.r1) and torch.isfinite(t.r2)
        # first order of a descent step on the training loss is negative
        assert float(t.first_order) < 0


def test_probe_measures_the_real_step_on_a_linear_model() -> None:
    # least squares: the loss is quadratic in the weights, so r1 = second order, r2 = 0
    torch.manual_seed(0)
    lin = nn.Linear(3, 1).double()
    x = torch.randn(20, 3, dtype=torch.float64)
    y = torch.randn(20, 1, dtype=torch.float64)
    opt = torch.optim.Adam(lin.parameters(), lr=0.3)
    probe = RemainderProbe(lin)
    opt.zero_grad()
    F.mse_loss(lin(x), y).backward()
    with probe.measure(lambda o: F.mse_loss(o, y), x):
        opt.step()
    (_, t) = probe.history[0]
    torch.testing.assert_close(t.r1, t.second_order)
    assert abs(float(t.r2)) < 1e-12
    assert float(t.loss_after) == pytest.approx(float(F.mse_loss(lin(x), y)), rel=1e-12)


def test_probe_rejects_bad_every() -> None:
    with pytest.raises(ValueError, match="every"):
        RemainderProbe(nn.Linear(1, 1), every=0)
