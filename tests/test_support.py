"""Profiles, statistics, optimizers by name, h's builder, and the paired training harness."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import stats as sstats
from torch import nn

import galcore
from galcore.adjuster import make_adjuster, release_hidden
from galcore.experiments.harness import Data, TrainConfig, paired_table, run, run_arms
from galcore.experiments.harness.models import MLP, ResNet8, SmallCNN
from galcore.experiments.harness.optim import OPTIMIZERS, make_optimizer
from galcore.experiments.harness.stats import paired_ci


def test_profile_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GALCORE_PROFILE", raising=False)
    assert galcore.experiments.get_profile() == "default"
    monkeypatch.setenv("GALCORE_PROFILE", "Smoke")
    assert galcore.experiments.get_profile() == "smoke"
    assert galcore.experiments.choose(smoke=1, default=2, full=3) == 1
    monkeypatch.setenv("GALCORE_PROFILE", "full")
    assert galcore.experiments.choose(smoke=1, default=2) == 2 and galcore.experiments.choose(1, 2, 3) == 3
    monkeypatch.setenv("GALCORE_PROFILE", "huge")
    with pytest.raises(ValueError, match="GALCORE_PROFILE"):
        galcore.experiments.get_profile()


def test_paired_ci_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=8)
    b = a + 0.5 + 0.1 * rng.normal(size=8)
    r = paired_ci(a, b)
    d = b - a
    lo, hi = sstats.t.interval(0.95, 7, loc=d.mean(), scale=sstats.sem(d))
    assert r.mean_diff == pytest.approx(d.mean()) and r.low == pytest.approx(lo) and r.high == pytest.approx(hi)
    assert r.p_value == pytest.approx(sstats.ttest_rel(b, a).pvalue)
    assert r.significant and r.n == 8
    flat = paired_ci([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert flat.mean_diff == 0 and not flat.significant
    one = paired_ci([1.0], [2.0])
    assert np.isnan(one.low) and not one.significant
    with pytest.raises(ValueError, match="paired"):
        paired_ci([1.0, 2.0], [1.0])


def test_release_hidden_and_builder() -> None:
    assert release_hidden(10) == (100, 32, 16)
    assert release_hidden(100) == (256, 64, 32)
    assert release_hidden(1000) == (512, 256)
    assert release_hidden(2) == (64, 24)
    h = make_adjuster(10, (100, 32, 16))
    assert all(isinstance(m, nn.Linear) for m in h)
    assert [tuple(p.shape) for p in h.parameters()] == [(100, 10), (100,), (32, 100), (32,), (16, 32), (16,), (10, 16), (10,)]
    relu = make_adjuster(4, (8, 8), activation="relu")
    assert [type(m).__name__ for m in relu] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert len(make_adjuster(4, ())) == 1
    with pytest.raises(ValueError, match="activation"):
        make_adjuster(4, (8,), activation="swish-ish")


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizers_by_name_descend(name: str) -> None:
    w = nn.Parameter(torch.tensor([2.0, -3.0]))
    opt = make_optimizer(name, [w], lr=0.05)
    start = float((w**2).sum())
    for _ in range(20):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    assert float((w**2).sum()) < start
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer("newton", [w], lr=0.1)


def test_models_shapes() -> None:
    x = torch.randn(2, 1, 8, 8)
    assert SmallCNN()(x).shape == (2, 10)
    assert ResNet8()(x).shape == (2, 10)
    assert MLP(64, 3)(x).shape == (2, 3)


def _toy_data() -> Data:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
    return Data("toy", x[:64], y[:64], x[64:], y[64:], num_outputs=4)


def test_harness_is_fair_and_ratio_zero_matches_standard(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALCORE_RESULTS", str(tmp_path))
    data = _toy_data()
    base = TrainConfig(model="mlp", data="toy", epochs=2, batch_size=16, lr=0.1)
    model_fn = lambda: MLP(64, 4, hidden=(16,), dropout=0.1)
    arms = {
        "standard": base,
        "gal0": dataclasses.replace(base, gal={"ratio": 0.0}),
        "gal": dataclasses.replace(base, gal={"ratio": 0.1, "track_plain": True}, probe_every=2),
    }
    finals, hist = run_arms(arms, [0, 1], data, model_fn, progress=False, cache=True)
    std = finals[finals.arm == "standard"].set_index("seed")
    zero = finals[finals.arm == "gal0"].set_index("seed")
    for col in ("test_loss", "test_accuracy", "train_loss", "weights_hash"):
        assert (std[col] == zero[col]).all()
    assert set(hist.columns) >= {"arm", "seed", "epoch", "accept_rate", "remainder_abs", "remainder_plain_abs"}
    table = paired_table(finals, "test_accuracy")
    assert list(table.arm) == ["gal0", "gal"] and table.iloc[0]["mean_diff"] == 0
    # cached: the second call reads the files and gives the same numbers
    again, _ = run_arms(arms, [0, 1], data, model_fn, progress=False, cache=True)
    assert len(list((tmp_path / "cache").glob("*.json"))) == 6
    assert (again["test_loss"] == finals["test_loss"]).all() and (again["seconds"] == finals["seconds"]).all()
    res = run(dataclasses.replace(arms["gal"], seed=0), data, model_fn)
    assert len(res.probe) == 4 and all(np.isfinite(r["r1"]) for r in res.probe)


def test_harness_parameter_space_and_frozen_h(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALCORE_RESULTS", str(tmp_path))
    data = _toy_data()
    cfg = TrainConfig(model="mlp", data="toy", epochs=1, batch_size=32, lr=0.1, gal={"ratio": 0.1, "hidden": (8,)})
    model_fn = lambda: MLP(64, 4, hidden=(4,))
    res = run(dataclasses.replace(cfg, space="parameter"), data, model_fn, cache=False)
    assert 0.0 <= res.final["accept_rate"] <= 1.0 and np.isfinite(res.final["test_loss"])
    frozen = run(dataclasses.replace(cfg, frozen_h=True), data, model_fn, cache=False)
    assert np.isfinite(frozen.final["test_loss"])
    reg = Data("reg", data.x_train, data.x_train.mean(dim=(1, 2, 3))[:, None], data.x_test, data.x_test.mean(dim=(1, 2, 3))[:, None], 1, y_scale=2.0)
    r = run(TrainConfig(model="mlp", data="reg", task="regression", loss="huber", epochs=1, lr=0.05, gal={"ratio": 0.1}), reg, lambda: MLP(64, 1), cache=False)
    assert r.final["test_rmse_orig"] == pytest.approx(2.0 * r.final["test_rmse"])
