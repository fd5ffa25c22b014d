"""galcore.GAL and galcore.ParamGAL against the plain restatement in galcore/reference.py.

The reference is itself checked against closed forms (a quadratic loss, where the remainder
is known exactly), so that both cannot be wrong the same way.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import galcore
from galcore import GAL, ParamGAL
from galcore.reference import reference_step


def _model(c_out: int, dtype: torch.dtype) -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, c_out)).to(dtype)


def _batch(n: int, c_out: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 8, generator=g, dtype=dtype), torch.randint(0, c_out, (n,), generator=g)


def _loss(y: torch.Tensor):
    """Cross-entropy plus a quadratic term: curved enough that a large step overshoots."""
    return lambda o: F.cross_entropy(o, y) + (o**2).mean()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


CASES = [
    # (classes, model dtype, lr, ratio, first_order, accept, normalize)
    (10, torch.float64, 0.5, 0.3, "mean", "decrease", "sample"),  # the release's CIFAR-10 form
    (100, torch.float64, 0.5, 0.3, "mean", "decrease", "sample"),  # CIFAR-100 widths
    (10, torch.float64, 0.5, 0.3, "sum", "decrease", "sample"),
    (10, torch.float64, 2.0, 0.5, "sum", "always", "batch"),
    (10, torch.float64, 1000.0, 0.3, "sum", "decrease", "sample"),  # large lr: rejected
]


@pytest.mark.parametrize(("c", "dtype", "lr", "ratio", "first_order", "accept", "normalize"), CASES)
def test_gal_equals_the_reference(c, dtype, lr, ratio, first_order, accept, normalize) -> None:
    torch.manual_seed(0)
    model = _model(c, dtype)
    x, y = _batch(16, c, dtype)
    gal = GAL(c, ratio, first_order=first_order, accept=accept, normalize=normalize).to(dtype)
    assert [m.out_features for m in gal.h] == [*galcore.release_hidden(c), c]
    ref_model, ref_h = copy.deepcopy(model), copy.deepcopy(gal.h)

    out_ref = ref_model(x)
    chosen, accepted, remainder = reference_step(
        out_ref, _loss(y), ref_h, lr,
        ratio=ratio, first_order=first_order, accept=accept, normalize=normalize,
    )
    out_ref.backward(chosen)
    rec = gal.backward(model(x), _loss(y), lr=lr)

    assert bool(rec.accepted) == accepted
    assert not bool(rec.fallback)
    assert float(rec.remainder) == pytest.approx(float(remainder), rel=1e-9, abs=1e-15)
    for p, q in zip([*model.parameters(), *gal.h.parameters()], [*ref_model.parameters(), *ref_h.parameters()]):
        assert _rel(p.grad, q.grad) <= 1e-9


def test_large_lr_case_is_rejected_and_others_accepted() -> None:
    """The table above covers both branches of the acceptance rule (else it tests half of it)."""
    decisions = []
    for c, dtype, lr, ratio, first_order, accept, normalize in CASES:
        torch.manual_seed(0)
        out = _model(c, dtype)(_batch(16, c, dtype)[0])
        y = _batch(16, c, dtype)[1]
        h = GAL(c, ratio).to(dtype).h
        decisions.append(reference_step(out, _loss(y), h, lr, ratio=ratio,
                                        first_order=first_order, accept=accept, normalize=normalize)[1])
    assert decisions[-1] is False and all(decisions[:-1])


def test_float32_model_with_float64_arithmetic_matches_the_reference_in_float64() -> None:
    """The default: a float32 model, GAL computing in float64. The reference run on the same
    outputs in float64 gives the same decision and adjustment."""
    torch.manual_seed(0)
    model = _model(10, torch.float32)
    x, y = _batch(32, 10, torch.float32)
    gal = GAL(10, 0.3)
    h64 = copy.deepcopy(gal.h).double()
    out = model(x)
    chosen, accepted, remainder = reference_step(out.double(), lambda o: F.cross_entropy(o, y), h64, 0.5, ratio=0.3)
    out_ = out.detach().requires_grad_()
    rec = gal.backward(out_, lambda o: F.cross_entropy(o, y), lr=0.5)
    assert bool(rec.accepted) == accepted
    assert float(rec.remainder) == pytest.approx(float(remainder), rel=1e-6)
    assert _rel(out_.grad.double(), chosen) <= 1e-6


def test_reference_remainder_on_a_quadratic_is_exact() -> None:
    # L(x) = 0.5 sum(x^2) / B: the remainder of any step delta is 0.5 |delta|^2 / B
    torch.manual_seed(0)
    x = torch.randn(4, 3, dtype=torch.float64)
    h = nn.Linear(3, 3).double()
    chosen, accepted, remainder = reference_step(x, lambda o: 0.5 * (o**2).sum() / 4, h, 0.7, ratio=0.5, accept="always")
    delta = 0.7 * chosen
    assert accepted
    torch.testing.assert_close(remainder, 0.5 * (delta**2).sum() / 4)
    g = x / 4
    torch.testing.assert_close((chosen - g).norm(dim=1), 0.5 * g.norm(dim=1))


@pytest.mark.parametrize("first_order", ["sum", "mean"])
def test_param_gal_equals_the_reference_on_the_release_toy(first_order: str) -> None:
    """ParamGAL on a parameter vector: "mean" averages <delta, g> over the vector's elements."""
    from galcore.experiments.theory.surface import surface

    torch.manual_seed(3)
    w = nn.Parameter(torch.tensor([0.75, 1.0], dtype=torch.float64))
    pg = ParamGAL([w], 0.2, first_order=first_order, accept="always").double()
    h_ref = copy.deepcopy(pg.h)
    chosen, accepted, remainder = reference_step(w, surface, h_ref, 0.1, ratio=0.2, first_order=first_order,
                                                 accept="always")
    rec = pg.backward(lambda ps: surface(ps[0]), lr=0.1)
    torch.testing.assert_close(w.grad, chosen)
    torch.testing.assert_close(rec.remainder, remainder)
    for p, q in zip(pg.h.parameters(), h_ref.parameters()):
        assert _rel(p.grad, q.grad) <= 1e-12
    # the two forms give h different gradients (the mean divides the first-order term by P = 2)
    other = "mean" if first_order == "sum" else "sum"
    h_other = copy.deepcopy(pg.h)
    h_other.zero_grad()
    reference_step(w, surface, h_other, 0.1, ratio=0.2, first_order=other, accept="always")
    assert _rel(next(h_other.parameters()).grad, next(h_ref.parameters()).grad) > 1e-3
