"""The release's 3D toy, restated from its script, and run_toy held to it step for step.

What the release's ``3d_example/visualize_convergence_gl.py`` does (read from the release, written
here in our own words; ``galcore/reference.py`` does the same for the output-space step):

- The point ``xy = (0.75, 1.0)`` is an ``nn.Parameter``; h (``RNet``) is ``Linear(2, 64) ->
  Linear(64, 24) -> Linear(24, 2)`` with no activation, built right after ``torch.manual_seed(seed)``
  (PyTorch's default Linear init draws first, then every weight is redrawn Xavier-uniform and
  every bias set to 0). One optimizer holds ``[xy, *h.parameters()]``.
- One step: ``z = f(xy)`` on a detached copy and ``g = dz/dxy``; ``eta = lr * gal_scale`` with
  ``lr`` the optimizer's ``param_groups[0]["lr"]``; ``a = h(xy) / ||h(xy)|| * ||g||``;
  ``delta = eta * (g + r a)``; ``z1 = f(xy - delta)``; h's loss ``|z1 + mean(delta * g) - z|``
  (the mean over the two coordinates); ``zero_grad``, backward of that loss; ``xy.grad`` is then
  overwritten by ``g + r a`` if ``z1 <= z`` else ``g``; ``optimizer.step()``.
- Optimizers: ``SGD(lr)``; Lookahead (its own copy of alphadl's: the slow weights are taken after
  the first inner step and pulled as ``slow += alpha (fast - slow)`` on steps 1, k+1, 2k+1, ...)
  over ``SGD(lr)``; ``RMSprop(lr, momentum=0, weight_decay=0, eps=0.1)``; ``Adam(lr, betas=(0.8,
  0.999), eps=0.1, weight_decay=0)``; its own copy of AdaBound (line for line the arithmetic of
  ``torch_optimizer.AdaBound``, which is used below) with ``final_lr=0.02, gamma=0.5``.
- float32 throughout. Here float64 is used, so that the comparison is of the method and not of
  the order of float32 roundings (in float32 an acceptance test ``z1 <= z`` at the rounding level
  can go either way, and the trajectories part).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
import torch_optimizer
from torch import Tensor, nn

from galcore.experiments.theory.surface import release_toy_h, run_toy

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


class Release(NamedTuple):
    """One line of the release's settings table (its ``--opt`` branches)."""

    seed: int
    steps: int
    lr: float
    gal_scale: float
    gal_ratio: float


RELEASE = {
    "gd": Release(2679, 100, 0.1, 1.0, 0.2),
    "lookahead": Release(4870, 600, 0.01, 1.0, 0.1),
    "rmsprop": Release(9910, 150, 0.02, 1.0, 0.3),
    "adam": Release(9049, 250, 0.02, 0.1, 0.4),
    "adabound": Release(5026, 300, 0.4, 1.0, 0.5),
}


def release_z(xy: Tensor) -> Tensor:
    x, y = xy[0], xy[1]
    return -1 * torch.sin(x * x) * torch.cos(3 * y * y) * torch.exp(-(x * y) * (x * y)) - torch.exp(-(x + y) * (x + y))


def release_h(seed: int, dtype: torch.dtype) -> nn.Sequential:
    """h as the release draws it (in float32, then cast); the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(2, 64), nn.Linear(64, 24), nn.Linear(24, 2))
        for layer in net:
            nn.init.xavier_uniform_(layer.weight)
            layer.bias.data.fill_(0.0)
    return net.to(dtype)


class ReleaseLookahead:
    """The release's Lookahead rule over an inner optimizer (one parameter group)."""

    def __init__(self, inner: torch.optim.Optimizer, k: int, alpha: float) -> None:
        self.inner, self.k, self.alpha, self.counter = inner, k, alpha, 0
        self.param_groups = inner.param_groups
        self.slow: dict[Tensor, Tensor] = {}

    def zero_grad(self) -> None:
        self.inner.zero_grad()

    def step(self) -> None:
        self.inner.step()
        if self.counter == 0:
            for p in self.param_groups[0]["params"]:
                slow = self.slow.setdefault(p, p.data.clone())
                slow += (p.data - slow) * self.alpha
                p.data.copy_(slow)
        self.counter += 1
        if self.counter >= self.k:
            self.counter = 0


def release_optimizer(key: str, params: Iterable[Tensor], lr: float) -> Any:
    params = list(params)
    if key == "gd":
        return torch.optim.SGD(params, lr=lr)
    if key == "lookahead":
        return ReleaseLookahead(torch.optim.SGD(params, lr=lr), k=5, alpha=0.5)
    if key == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=0.0, weight_decay=0.0, eps=1e-1)
    if key == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.8, 0.999), eps=1e-1, weight_decay=0.0)
    if key == "adabound":
        return torch_optimizer.AdaBound(params, lr=lr, final_lr=0.02, gamma=5e-1)
    raise KeyError(key)


def release_trajectory(key: str, steps: int | None = None, dtype: torch.dtype = torch.float64) -> tuple[np.ndarray, np.ndarray]:
    """The release's loop for one setting: positions ``(T + 1, 2)`` and acceptance ``(T,)``."""
    s = RELEASE[key]
    h = release_h(s.seed, dtype)
    xy = nn.Parameter(torch.tensor([0.75, 1.0], dtype=dtype))
    opt = release_optimizer(key, [xy, *h.parameters()], s.lr)
    positions, accepted = [xy.detach().clone()], []
    for _ in range(s.steps if steps is None else steps):
        at = xy.detach().clone().requires_grad_(True)
        z = release_z(at)
        opt.zero_grad()
        z.backward()
        g = at.grad
        eta = opt.param_groups[0]["lr"] * s.gal_scale
        adjustment = h(xy)
        adjustment = adjustment / adjustment.norm() * g.norm()
        delta = eta * (g + s.gal_ratio * adjustment)
        z1 = release_z(xy - delta)
        remainder = torch.abs(z1 + (delta * g).mean() - z.item())
        opt.zero_grad()
        remainder.backward()
        ok = bool(z1 <= z)
        xy.grad.data.copy_(g + s.gal_ratio * adjustment.data if ok else g)
        opt.step()
        positions.append(xy.detach().clone())
        accepted.append(ok)
    return torch.stack(positions).to(torch.float64).numpy(), np.array(accepted)


@pytest.mark.parametrize("key", list(RELEASE))
def test_release_h_is_drawn_as_the_release_draws_it(key: str) -> None:
    seed = RELEASE[key].seed
    ours, theirs = release_toy_h(seed), release_h(seed, torch.float32)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("key", list(RELEASE))
def test_run_toy_follows_the_release_step_for_step(key: str) -> None:
    """ParamGAL(first_order="mean") in run_toy against the restated release loop, every step."""
    ref, ref_accepted = release_trajectory(key)
    run = run_toy(key, gal=True, dtype=torch.float64, remainders=False, first_order="mean")
    assert run.positions.shape == ref.shape == (RELEASE[key].steps + 1, 2)
    np.testing.assert_allclose(run.positions, ref, rtol=0, atol=1e-12)
    assert run.accepted is not None
    np.testing.assert_array_equal(run.accepted, ref_accepted)
    assert run.seed == RELEASE[key].seed


def test_the_exact_taylor_form_is_not_the_release() -> None:
    """The comparison sees the first-order term: the "sum" form leaves the release's trajectory."""
    ref, _ = release_trajectory("gd", steps=30)
    run = run_toy("gd", gal=True, dtype=torch.float64, remainders=False, first_order="sum", steps=30)
    assert np.abs(run.positions - ref).max() > 1e-6


def test_other_h_seeds_are_not_the_release() -> None:
    ref, _ = release_trajectory("adam", steps=30)
    run = run_toy("adam", gal=True, seed=1, dtype=torch.float64, remainders=False, steps=30)
    assert np.abs(run.positions - ref).max() > 1e-6
