"""Defects a careful user hits, each reproduced in a few lines (each test failed before its fix)."""

from __future__ import annotations

import copy
import io
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from galcore import GAL, GALConfig, ParamGAL


def test_ratio_zero_with_batch_normalize_gives_h_a_finite_gradient() -> None:
    """D1: the discarded branch of the batch bound divided 0 by 0, and its NaN reached h's gradient."""
    torch.manual_seed(0)
    gal = GAL(4, ratio=0.0, normalize="batch", hidden=(8,))
    opt = torch.optim.SGD(gal.parameters(), lr=0.1)
    x, y = torch.randn(6, 4), torch.randint(0, 4, (6,))
    rec = gal.backward(x.clone().requires_grad_(), lambda o: F.cross_entropy(o, y), lr=0.1)
    assert not bool(rec.fallback)
    assert all(torch.isfinite(p.grad).all() for p in gal.parameters())
    opt.step()
    gal.ratio = 0.1  # a warm-up from 0: GAL adjusts from now on
    rec = gal.backward(x.clone().requires_grad_(), lambda o: F.cross_entropy(o, y), lr=0.1)
    assert not bool(rec.fallback) and int(gal.num_fallbacks) == 0


@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_dense_maps_plain_gradient_is_bit_identical(ratio: float) -> None:
    """D2: with dim=1, a ratio-0 or rejected step sends back exactly loss.backward()'s gradient,
    strides included (it kept the channels-last strides of h's moved output)."""
    torch.set_num_threads(1)
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 3, 1)
    twin = copy.deepcopy(conv)
    x, t = torch.randn(2, 2, 5, 5), torch.randn(2, 3, 5, 5)
    loss_fn = lambda o: F.mse_loss(o, t) + (o.pow(4).mean() if ratio else 0)  # curved: lr=1e3 overshoots
    gal = GAL(3, ratio=ratio, dim=1, hidden=(8,))
    seen: list[tuple[int, ...]] = []
    out, ref = conv(x), twin(x)
    for o in (out, ref):
        o.register_hook(lambda g: seen.append(g.stride()))
    rec = gal.backward(out, loss_fn, lr=1e3 if ratio else 0.1)
    assert not bool(rec.accepted) or ratio == 0.0
    loss_fn(ref).backward()
    assert seen[0] == seen[1]
    for p, q in zip(conv.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("other", [{"hidden": (16,)}, {"output_dim": 5}])
def test_a_failed_load_changes_nothing(other: dict, nested: bool) -> None:
    """D3: a load_state_dict that fails leaves options, counters and h as they were, also when
    GAL is loaded as part of a larger module."""
    src = GAL(other.get("output_dim", 4), ratio=0.3, hidden=other.get("hidden", (8,)), scale=2.0)
    src.num_steps += 7
    dst = GAL(4, ratio=0.1, hidden=(8,))
    before = copy.deepcopy(dst.state_dict())
    with pytest.raises((RuntimeError, ValueError)):
        if nested:
            nn.ModuleDict({"gal": dst}).load_state_dict(nn.ModuleDict({"gal": src}).state_dict())
        else:
            dst.load_state_dict(src.state_dict())
    assert dst.hidden == (8,) and dst.ratio == 0.1 and dst.scale == 1.0
    after = dst.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before if isinstance(before[k], torch.Tensor))


def test_loading_a_gal_with_another_activation_fails_clearly() -> None:
    """D4: h computes with its own activation: a state dict from another one must not load."""
    src = GAL(4, hidden=(8,), activation="tanh")
    dst = GAL(4, hidden=(8,), activation="relu")
    with pytest.raises(RuntimeError, match="activation"):
        dst.load_state_dict(src.state_dict())
    assert dst.activation == "relu"


def test_numpy_scalars_become_python_values() -> None:
    """D5: numpy scalars are converted, so the state dict loads with weights_only=True and the
    options are JSON."""
    cfg = GALConfig(ratio=np.float64(0.1), seed=np.int64(3), dim=np.int64(-1), hidden=(np.int64(8),))
    assert type(cfg.seed) is int and type(cfg.ratio) is float and type(cfg.dim) is int
    gal = GAL(10, seed=np.int64(3), ratio=np.float64(0.1))
    buf = io.BytesIO()
    torch.save(gal.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert json.loads(json.dumps(state["_extra_state"]))["config"]["seed"] == 3


@pytest.mark.parametrize("text", ["[0.1]", "0.1", '"ratio"'])
def test_from_any_on_a_file_without_a_mapping_names_the_file(tmp_path, text: str) -> None:
    """D6: a json/yaml file that does not hold a mapping of options fails with a clear error."""
    for suffix in (".json", ".yaml"):
        path = tmp_path / f"opts{suffix}"
        path.write_text(text)
        with pytest.raises((TypeError, ValueError), match="opts"):
            GALConfig.from_any(path)


def test_a_backward_that_raises_leaves_h_grad_untouched() -> None:
    """D7: backward through the same graph a second time raises; h's .grad is as before."""
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    gal = GAL(4, ratio=0.1, hidden=(8,))
    out = model(torch.randn(5, 3))
    y = torch.randint(0, 4, (5,))
    gal.backward(out, lambda o: F.cross_entropy(o, y), lr=0.1)
    before = [p.grad.clone() for p in gal.parameters()]
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        gal.backward(out, lambda o: F.cross_entropy(o, y), lr=0.1)
    assert all(torch.equal(p.grad, b) for p, b in zip(gal.parameters(), before, strict=True))
    assert int(gal.num_steps) == 1


@pytest.mark.parametrize("compiled", [False, True])
def test_param_gal_takes_the_natural_loss(compiled: bool) -> None:
    """D8: the natural ``functional_call`` loss on a float32 model and float32 inputs works by default."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, t = torch.randn(8, 3), torch.randn(8, 2)
    pg = ParamGAL(model, ratio=0.1, hidden=(4,))
    if compiled:
        pg.compile(backend="eager")
    loss = lambda p: F.mse_loss(torch.func.functional_call(model, p, (x,)), t)  # the natural loss
    with pytest.warns(RuntimeWarning, match="compute_dtype"):
        rec = pg.backward(loss, lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once
        for _ in range(2):
            rec = pg.backward(loss, lr=0.1)
    assert not bool(rec.fallback) and model.weight.grad.dtype == torch.float32
    assert int(pg.num_steps) == 3
