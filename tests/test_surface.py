"""The 3D toy surface, its optimizer runs with and without ParamGAL, and the Taylor helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from galcore.experiments.theory.surface import (
    START,
    TOY_SETTINGS,
    local_minima,
    nearest_minimum,
    release_toy_h,
    run_toy,
    surface,
    surface_grid,
)
from galcore.experiments.theory.toy_taylor import loglog_slope, remainder_vs_step, taylor_grid, taylor_line

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def z_closed(x: float, y: float) -> float:
    return -math.sin(x * x) * math.cos(3 * y * y) * math.exp(-((x * y) ** 2)) - math.exp(-((x + y) ** 2))


def grad_closed(x: float, y: float) -> tuple[float, float]:
    e1 = math.exp(-((x * y) ** 2))
    e2 = math.exp(-((x + y) ** 2))
    s, c = math.sin(x * x), math.cos(3 * y * y)
    gx = -(2 * x * math.cos(x * x) * c * e1 - 2 * x * y * y * s * c * e1) + 2 * (x + y) * e2
    gy = -(s * (-6 * y * math.sin(3 * y * y)) * e1 - 2 * x * x * y * s * c * e1) + 2 * (x + y) * e2
    return gx, gy


POINTS = [(0.0, 0.0), START, (0.3, -0.7), (-1.2, 0.4), (1.1, 1.3)]


@pytest.mark.parametrize("pt", POINTS)
def test_surface_value_and_gradient_match_closed_form(pt: tuple[float, float]) -> None:
    w = torch.tensor(pt, dtype=torch.float64, requires_grad=True)
    z = surface(w)
    (g,) = torch.autograd.grad(z, w)
    assert float(z.detach()) == pytest.approx(z_closed(*pt), abs=1e-12)
    gx, gy = grad_closed(*pt)
    assert g[0].item() == pytest.approx(gx, abs=1e-10)
    assert g[1].item() == pytest.approx(gy, abs=1e-10)


def test_surface_known_values_and_batching() -> None:
    assert float(surface(torch.zeros(2, dtype=torch.float64))) == -1.0
    pts = torch.tensor(POINTS, dtype=torch.float64)
    batched = surface(pts.reshape(5, 1, 2))
    assert batched.shape == (5, 1)
    for i, p in enumerate(POINTS):
        assert batched[i, 0].item() == pytest.approx(z_closed(*p), abs=1e-12)
    with pytest.raises(ValueError):
        surface(torch.zeros(3))
    X, Y, Z = surface_grid(1.0, 11)
    assert X.shape == Y.shape == Z.shape == (11, 11)
    assert Z[5, 5] == -1.0  # the grid's centre is (0, 0)


def test_local_minima_are_stationary_and_symmetric() -> None:
    m = local_minima()
    assert m.shape[1] == 3 and len(m) >= 4
    assert np.all(np.diff(m[:, 2]) >= 0)  # deepest first
    # the two deepest minima are mirror images (z(x, y) = z(-x, -y)) at z ~ -1.3549
    assert m[0, 2] == pytest.approx(-1.35492, abs=1e-4)
    assert m[0, 0] == pytest.approx(-m[1, 0], abs=1e-4) and m[0, 1] == pytest.approx(-m[1, 1], abs=1e-4)
    for x, y, z in m[:4]:
        gx, gy = grad_closed(x, y)
        assert math.hypot(gx, gy) < 1e-4
        assert z == pytest.approx(z_closed(x, y), abs=1e-12)
    i, d = nearest_minimum((m[2, 0] + 0.01, m[2, 1]), m)
    assert i == 2 and d == pytest.approx(0.01, abs=1e-9)


# ---- Taylor helpers against closed forms -----------------------------------------------------


def test_taylor_line_on_a_cubic_matches_closed_form() -> None:
    # f(x) = x^3 at w: f(w + t d) = w^3 + 3 w^2 t d + 3 w t^2 d^2 + t^3 d^3
    w, d = 1.3, -0.7
    ts = np.array([0.0, 0.1, 0.5, 1.0, 2.0])
    line = taylor_line(lambda x: x**3, torch.tensor(w, dtype=torch.float64), torch.tensor(d, dtype=torch.float64), ts)
    np.testing.assert_allclose(line.true, (w + ts * d) ** 3, rtol=0, atol=1e-12)
    np.testing.assert_allclose(line.first, w**3 + 3 * w**2 * ts * d, atol=1e-12)
    np.testing.assert_allclose(line.second, w**3 + 3 * w**2 * ts * d + 3 * w * (ts * d) ** 2, atol=1e-12)
    np.testing.assert_allclose(line.r1, 3 * w * (ts * d) ** 2 + (ts * d) ** 3, atol=1e-12)
    np.testing.assert_allclose(line.r2, (ts * d) ** 3, atol=1e-12)


def test_remainder_vs_step_on_a_quadratic_is_exactly_second_order() -> None:
    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    b = torch.tensor([0.3, -0.2], dtype=torch.float64)

    def f(w: torch.Tensor) -> torch.Tensor:
        return 0.5 * w @ A @ w + b @ w

    w = torch.tensor([1.0, -2.0], dtype=torch.float64)
    g = A @ w + b
    etas = np.array([1e-3, 1e-2, 0.1, 1.0])
    _, r1, r2 = remainder_vs_step(f, w, etas)  # default direction: -grad
    np.testing.assert_allclose(r1, 0.5 * etas**2 * float(g @ A @ g), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(r2, 0.0, atol=1e-12)


def test_remainder_slope_is_two_on_the_surface() -> None:
    etas = np.logspace(-4, -2, 7)
    _, r1, r2 = remainder_vs_step(surface, torch.tensor(START, dtype=torch.float64), etas)
    assert loglog_slope(etas, r1) == pytest.approx(2.0, abs=0.02)
    assert loglog_slope(etas, r2) == pytest.approx(3.0, abs=0.05)
    assert loglog_slope([1, 2, 4], [3, 12, 48]) == pytest.approx(2.0)
    assert math.isnan(loglog_slope([1.0], [1.0]))


def test_taylor_grid_agrees_with_taylor_line() -> None:
    w = torch.tensor(START, dtype=torch.float64)
    grid = taylor_grid(surface, w, radius=0.2, n=5)  # offsets -0.2, -0.1, 0, 0.1, 0.2
    assert grid.true.shape == (5, 5)
    assert grid.r1[2, 2] == pytest.approx(0.0, abs=1e-15)
    # the row through the centre along x is the line w + t * (1, 0)
    line = taylor_line(surface, w, torch.tensor([1.0, 0.0], dtype=torch.float64), grid.DX[2])
    np.testing.assert_allclose(grid.true[2], line.true, atol=1e-12)
    np.testing.assert_allclose(grid.r1[2], line.r1, atol=1e-12)
    np.testing.assert_allclose(grid.r2[2], line.r2, atol=1e-12)


# ---- optimizer runs --------------------------------------------------------------------------


def test_release_settings_are_as_documented() -> None:
    s = TOY_SETTINGS
    assert (s["gd"].lr, s["gd"].ratio, s["gd"].steps) == (0.1, 0.2, 100)
    assert (s["lookahead"].lr, s["lookahead"].ratio, s["lookahead"].steps) == (0.01, 0.1, 600)
    assert s["lookahead"].kwargs["k"] == 5 and s["lookahead"].kwargs["alpha"] == 0.5
    assert (s["rmsprop"].lr, s["rmsprop"].ratio, s["rmsprop"].steps, s["rmsprop"].kwargs["eps"]) == (0.02, 0.3, 150, 0.1)
    assert (s["adam"].lr, s["adam"].ratio, s["adam"].scale, s["adam"].steps) == (0.02, 0.4, 0.1, 250)
    assert s["adam"].kwargs == {"betas": (0.8, 0.999), "eps": 0.1}
    assert (s["adabound"].lr, s["adabound"].ratio, s["adabound"].steps) == (0.4, 0.5, 300)
    assert s["adabound"].kwargs == {"final_lr": 0.02, "gamma": 0.5}


def test_release_h_is_seeded_and_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    h1, h2, h3 = release_toy_h(7), release_toy_h(7), release_toy_h(8)
    assert torch.equal(torch.get_rng_state(), state)
    widths = [m.out_features for m in h1 if isinstance(m, torch.nn.Linear)]
    assert widths == [64, 24, 2]
    for a, b in zip(h1.parameters(), h2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(h1[0].weight, h3[0].weight)
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in h1 if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("key", list(TOY_SETTINGS))
def test_ratio_zero_gal_equals_plain_bitwise(key: str) -> None:
    plain = run_toy(key, gal=False, steps=12, remainders=False)
    gal0 = run_toy(key, gal=True, ratio=0.0, steps=12, remainders=False)
    assert np.array_equal(plain.positions, gal0.positions)
    assert np.array_equal(plain.losses, gal0.losses)


@pytest.mark.parametrize("key", list(TOY_SETTINGS))
def test_gal_runs_reproduce_and_stay_finite(key: str) -> None:
    a = run_toy(key, gal=True, seed=3, steps=15)
    b = run_toy(key, gal=True, seed=3, steps=15)
    assert np.array_equal(a.positions, b.positions)
    assert np.array_equal(a.accepted, b.accepted)
    assert a.finite and a.positions.shape == (16, 2) and a.losses.shape == (16,)
    assert np.array_equal(a.positions[0], np.array(START, dtype=np.float32).astype(np.float64))
    assert a.accepted is not None and a.accepted.shape == (15,) and 0.0 <= a.acceptance_rate <= 1.0
    assert a.gal_remainder is not None and np.isfinite(a.gal_remainder).all()
    # the recorded Taylor terms describe the recorded steps: r1 = z(after) - z(before) - first order
    assert a.step_r1 is not None and a.step_first is not None and a.step_second is not None and a.step_r2 is not None
    z = surface(torch.tensor(a.positions)).numpy()
    np.testing.assert_allclose(a.step_r1, z[1:] - z[:-1] - a.step_first, atol=1e-12)
    np.testing.assert_allclose(a.step_r2, a.step_r1 - a.step_second, atol=1e-15)
    np.testing.assert_allclose(a.losses, z, atol=1e-6)  # losses are evaluated in float32


def test_gal_changes_the_run_and_other_seeds_differ() -> None:
    plain = run_toy("gd", gal=False, steps=20, remainders=False)
    a = run_toy("gd", gal=True, seed=1, steps=20, remainders=False)
    b = run_toy("gd", gal=True, seed=2, steps=20, remainders=False)
    assert a.accepted is not None and a.accepted.any()
    assert not np.array_equal(a.positions, plain.positions)
    assert not np.array_equal(a.positions, b.positions)
    assert plain.accepted is None and math.isnan(plain.acceptance_rate)


def test_release_gd_reaches_a_deep_minimum_with_and_without_gal() -> None:
    m = local_minima()
    for gal in (False, True):
        run = run_toy("gd", gal=gal, remainders=False)
        i, d = nearest_minimum(run.final_point, m)
        assert d < 0.01
        assert m[i, 2] == pytest.approx(m[0, 2], abs=1e-6)  # one of the two deepest (mirror) minima
        assert run.final_loss < run.losses[0]


def test_gd_tentative_step_is_the_real_step_and_objective_forms() -> None:
    # GD with gal_scale 1: an accepted step moves by exactly the tentative step eta (g + a)
    run = run_toy("gd", gal=True, steps=25, remainders=False)
    assert run.accepted is not None and run.accepted.all()
    assert run.tentative_length is not None and run.objective is not None and run.gal_remainder is not None
    np.testing.assert_allclose(run.tentative_length, run.step_lengths, rtol=1e-9, atol=1e-15)
    # "sum": h minimises |remainder|; "mean" (the release) does not
    total = run_toy("gd", gal=True, steps=25, remainders=False, first_order="sum")
    np.testing.assert_allclose(total.objective, np.abs(total.gal_remainder), rtol=1e-9, atol=1e-15)
    assert np.abs(run.objective - np.abs(run.gal_remainder)).max() > 1e-3
    assert (run.label, total.label, run_toy("gd", gal=False, steps=2).label) == ("GAL (mean)", "GAL (sum)", "plain")
    # Adam with gal_scale 0.1: the tentative step is a GD step of lr * 0.1, not Adam's step
    adam = run_toy("adam", gal=True, steps=25, remainders=False)
    assert adam.tentative_length is not None
    assert not np.allclose(adam.tentative_length, adam.step_lengths, rtol=1e-3)


def test_float32_runs_as_the_release_and_bad_arguments_are_named() -> None:
    run = run_toy("rmsprop", gal=True, steps=10, remainders=False, dtype=torch.float32)
    assert run.finite and run.positions.shape == (11, 2)
    with pytest.raises(ValueError, match="setting"):
        run_toy("sgd_nesterov")
    with pytest.raises(ValueError, match="first_order"):
        run_toy("gd", steps=2, first_order="median")
    with pytest.raises(ValueError, match="steps"):
        run_toy("gd", steps=-1)
