"""A parameter-free h (the placebo control): a seeded random direction per sample, rescaled by GAL
to ratio * ||g_i||, under the same acceptance rule; nothing to train, eager and compiled."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from galcore import GAL


class RandomDirection(nn.Module):
    """h without parameters: a fresh Gaussian direction per row, from its own seeded generator."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype)


@pytest.mark.parametrize("compiled", [False, True])
def test_parameter_free_h_adjusts_without_training(compiled: bool) -> None:
    torch.manual_seed(0)
    gal = GAL(5, ratio=0.3, accept="always", h=RandomDirection(7))
    assert list(gal.parameters()) == []
    if compiled:
        gal.compile(backend="eager")
    y = torch.randint(0, 5, (6,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            out = torch.randn(6, 5, requires_grad=True)
            rec = gal.backward(out, lambda o: F.cross_entropy(o, y), lr=0.1)
            x0 = out.detach().requires_grad_()
            (g,) = torch.autograd.grad(F.cross_entropy(x0, y), x0)
            adj = out.grad - g
            torch.testing.assert_close(adj.norm(dim=1), 0.3 * g.norm(dim=1), rtol=1e-5, atol=1e-8)
            assert bool(rec.accepted) and not bool(rec.fallback)
            s = gal.surrogate(torch.randn(6, 5, requires_grad=True), lambda o: F.cross_entropy(o, y), lr=0.1)
            s.backward()
    assert int(gal.num_steps) == 6 and int(gal.num_accepted) == 6
    # the decrease rule applies as for a trained h: an overshooting step is rejected
    gal.accept = "decrease"
    out = torch.randn(6, 5, requires_grad=True)
    rec = gal.backward(out, lambda o: F.cross_entropy(o, y) + 10 * o.pow(2).mean(), lr=1e4)
    assert not bool(rec.accepted)
