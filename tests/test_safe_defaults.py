"""Safe by default: h gets a learning signal, silent failure modes warn, failed calls leave no trace."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import galcore
from galcore import GAL, ParamGAL


def _readme_loop(gal: GAL, steps: int, lr: float = 0.05) -> list[galcore.GALStep]:
    """The README's first loop: a float32 MLP, batches of 64, SGD with momentum."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))
    data = torch.utils.data.TensorDataset(torch.randn(512, 20), torch.randint(0, 10, (512,)))
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD([*model.parameters(), *gal.parameters()], lr=lr, momentum=0.9)
    records = []
    while len(records) < steps:
        for x, y in loader:
            opt.zero_grad()
            records.append(gal.backward(model(x), lambda o, y=y: F.cross_entropy(o, y), lr=opt.param_groups[0]["lr"]))
            opt.step()
            if len(records) == steps:
                break
    return records


def test_default_gives_h_a_gradient_on_every_step() -> None:
    torch.manual_seed(1)
    gal = GAL(10, 1e-3)
    assert gal.compute_dtype == torch.float64
    h_grads = []
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))
    x, y = torch.randn(64, 20), torch.randint(0, 10, (64,))
    for _ in range(8):
        gal.zero_grad()
        rec = gal.backward(model(x), lambda o: F.cross_entropy(o, y), lr=0.05)
        assert float(rec.objective) > 0
        h_grads.append(sum(float(p.grad.abs().sum()) for p in gal.parameters()))
    assert all(v > 0 for v in h_grads)


def test_float32_arithmetic_rounds_the_objective_away_and_warns_once() -> None:
    """What the float64 default prevents: in float32 the loop's objective is 0 or one float32
    spacing of the loss (rounding noise), so h learns nothing real; GAL says so once."""
    gal = GAL(10, 1e-3, compute_dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = _readme_loop(gal, 3 * galcore.gal.ZERO_OBJECTIVE_STEPS)
    spacing = torch.finfo(torch.float32).eps
    noise = sum(float(r.objective) <= 4 * spacing * float(r.loss) for r in records)
    assert noise == len(records)
    assert sum(float(r.objective) == 0.0 for r in records) >= len(records) // 4
    stuck = [w for w in caught if "rounding level" in str(w.message)]
    assert len(stuck) == 1 and issubclass(stuck[0].category, RuntimeWarning)


def test_default_loop_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        records = _readme_loop(GAL(10, 1e-3), 2 * galcore.gal.ZERO_OBJECTIVE_STEPS)
    assert all(float(r.objective) > 1e3 * torch.finfo(torch.float64).eps * float(r.loss) for r in records)


def test_device_without_float64_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(galcore.gal, "_has_float64", lambda device: False)
    gal = GAL(4, 0.1)
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="has no float64") as caught:
        rec = gal.backward(x, lambda o: (o**2).mean(), lr=0.1)
        gal.backward(x, lambda o: (o**2).mean(), lr=0.1)
    assert rec.loss.dtype == torch.float32
    assert len([w for w in caught if "float64" in str(w.message)]) == 1


@pytest.mark.parametrize("compute_dtype", [torch.float64, None])
def test_ratio_zero_is_plain_training_bit_for_bit(compute_dtype: torch.dtype | None) -> None:
    """Whether GAL computes in float64 (the default) or in the model's dtype, a rejected or
    r = 0 step sends back exactly the float32 gradient loss.backward() would: 30 steps with
    dropout and momentum end on the same weights, bit for bit."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10))
    with_gal = copy.deepcopy(plain)
    gal = GAL(10, 0.0, compute_dtype=compute_dtype)
    opt_p = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    opt_g = torch.optim.SGD([*with_gal.parameters(), *gal.parameters()], lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(32, 8, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(3)]
    for step in range(30):
        x, y = data[step % 3]
        torch.manual_seed(step)
        opt_p.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        opt_p.step()
        torch.manual_seed(step)
        opt_g.zero_grad()
        gal.backward(with_gal(x), lambda o: F.cross_entropy(o, y), lr=0.1)
        opt_g.step()
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), with_gal.parameters()))


def test_surrogate_value_is_the_float32_loss_under_float16_autocast() -> None:
    torch.manual_seed(0)
    model = nn.Linear(6, 5)
    x, y = torch.randn(8, 6), torch.randint(0, 5, (8,))
    gal = GAL(5, 0.1)
    with torch.autocast("cpu", dtype=torch.float16):
        out = model(x)
        assert out.dtype == torch.float16
        expected = F.cross_entropy(out, y) * 1.2e5  # 1e5-sized: beyond float16's 65504
        s = gal.surrogate(out, lambda o: F.cross_entropy(o, y) * 1.2e5, lr=1e-6)
    assert s.dtype == torch.float32 and torch.isfinite(s)
    assert float(s) == pytest.approx(float(expected), rel=1e-5)
    s.backward()
    assert torch.isfinite(model.weight.grad).all()


@pytest.mark.parametrize("path", ["backward", "surrogate"])
def test_outputs_without_grad_raise_and_change_nothing(path: str) -> None:
    gal = GAL(4, 0.1)
    x = torch.randn(3, 4)  # no graph: loss.backward() would raise
    call = gal.backward if path == "backward" else gal.surrogate
    with pytest.raises(RuntimeError, match="do not require grad"):
        call(x, lambda o: (o**2).mean(), lr=0.1)
    with torch.no_grad(), pytest.raises(RuntimeError, match="do not require grad"):
        call(nn.Linear(4, 4)(x), lambda o: (o**2).mean(), lr=0.1)
    assert int(gal.num_steps) == 0 and gal.last_step is None
    assert all(p.grad is None for p in gal.parameters())


def test_a_failing_loss_changes_no_counter() -> None:
    gal = GAL(4, 0.1)
    x = torch.randn(3, 4, requires_grad=True)
    gal.backward(x, lambda o: (o**2).mean(), lr=0.1)
    first = gal.last_step
    with pytest.raises(ValueError, match="scalar"):
        gal.backward(x, lambda o: (o**2).mean(dim=1), lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        gal.surrogate(x, lambda o: (o**2).mean(), lr=-1.0)
    assert int(gal.num_steps) == 1 and gal.last_step is first


def test_param_gal_over_mixed_dtypes() -> None:
    a = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float32))
    b = nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
    pg = ParamGAL([a, b], 0.2, accept="always", hidden=(4,))
    seen = []

    def loss(ps: list[torch.Tensor]) -> torch.Tensor:
        seen.append(tuple(p.dtype for p in ps))
        return (ps[0] ** 2).sum() + 3 * (ps[1] ** 2).sum()

    rec = pg.backward(loss, lr=0.1)
    assert int(pg.num_steps) == 1 and not bool(rec.fallback)
    assert a.grad.dtype == torch.float32 and b.grad.dtype == torch.float64
    g = torch.cat([2 * a.detach().double(), 6 * b.detach()])
    chosen = torch.cat([a.grad.double(), b.grad])
    torch.testing.assert_close((chosen - g).norm(), 0.2 * g.norm(), rtol=1e-6, atol=0)
    assert (torch.float64, torch.float64) in seen  # GAL's arithmetic in float64


def test_param_gal_refuses_bad_params_before_any_step() -> None:
    with pytest.raises(TypeError, match=r"params\[1\]"):
        ParamGAL([torch.ones(2), torch.ones(2, dtype=torch.int64)])
    with pytest.raises(ValueError, match="params"):
        ParamGAL([])


def test_empty_batch_is_a_no_op_step() -> None:
    gal = GAL(4, 0.1)
    x = torch.zeros(0, 4, requires_grad=True)
    rec = gal.backward(x, lambda o: (o**2).sum(), lr=0.1)
    assert x.grad is not None and x.grad.shape == (0, 4)
    assert int(gal.num_steps) == 1
    # nothing to adjust: the loss is 0 at x and at the tentative point; h's objective is 0
    assert (float(rec.loss), float(rec.tentative_loss), float(rec.objective)) == (0.0, 0.0, 0.0)
    assert not bool(rec.fallback) and bool(rec.accepted)
    assert all(torch.count_nonzero(p.grad) == 0 for p in gal.h.parameters())
