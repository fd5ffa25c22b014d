"""The traced run: same trajectory as the harness's run, and measurements that mean what they say."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from galcore.experiments import harness
from galcore.experiments.ablations import mechanism
from galcore.experiments.harness import TrainConfig
from galcore.experiments.harness.data import digits
from galcore.experiments.harness.models import MLP


@pytest.fixture(scope="module")
def data() -> harness.Data:
    d = digits()
    return replace(d, name="digits-tiny", x_train=d.x_train[:192], y_train=d.y_train[:192], x_test=d.x_test[:96],
                   y_test=d.y_test[:96])


def model_fn() -> torch.nn.Module:
    return MLP(64, 10, hidden=(16,))


BASE = TrainConfig(model="mlp16", data="digits-tiny", optimizer="momentum", lr=0.05,
                   optimizer_kwargs={"weight_decay": 1e-3}, epochs=2, batch_size=64)


@pytest.mark.parametrize("how", [{"frozen_h": True}, {}, {"h_optimizer": "adam", "h_lr": 1e-3}])
def test_trace_trains_exactly_as_the_harness(data: harness.Data, how: dict) -> None:
    cfg = replace(BASE, gal={"ratio": 0.1, "track_plain": True}, **how)
    traced = mechanism.trace(cfg, data, model_fn, every=2)
    plain = harness.run(cfg, data, model_fn)
    assert traced.weights_hash == plain.weights_hash
    for a, b in zip(traced.history, plain.history, strict=True):
        assert a["test_loss"] == b["test_loss"] and a["accept_rate"] == b["accept_rate"]
    # track_plain is a measurement: switching it on changes nothing either
    assert harness.run(replace(cfg, gal={"ratio": 0.1}), data, model_fn).weights_hash == plain.weights_hash


def test_perturbation_ratio_is_linear_in_r_and_zero_without_adjustment(data: harness.Data) -> None:
    init = {r: mechanism.trace(replace(BASE, epochs=1, gal={"ratio": r}, frozen_h=True), data, model_fn).final
            for r in (0.0, 0.01, 0.02)}
    assert init[0.0]["pert_ratio_init"] == 0.0 and init[0.0]["net_ratio"] == 0.0
    assert init[0.02]["pert_ratio_init"] == pytest.approx(2 * init[0.01]["pert_ratio_init"], rel=1e-3)
    assert init[0.01]["pert_ratio_init"] > 0.01  # h's near-constant output adds up over the batch
    assert init[0.01]["h_cosine_init"] > 0.9


def test_drift_of_h_against_weight_decay(data: harness.Data) -> None:
    frozen = mechanism.trace(replace(BASE, gal={"ratio": 0.1}, frozen_h=True), data, model_fn).final
    assert frozen["h_drift"] == 0.0 and frozen["decay_drift"] == 0.0
    same = mechanism.trace(replace(BASE, gal={"ratio": 0.1}), data, model_fn).final
    assert same["decay_drift"] > 0  # weight decay alone moves h
    adam = mechanism.trace(replace(BASE, gal={"ratio": 0.1}, h_optimizer="adam", h_lr=1e-3), data, model_fn).final
    assert adam["decay_drift"] == 0.0 and adam["h_drift"] > 0
    assert same["steps"] == adam["steps"] == 2 * 3


def test_decay_drift_matches_plain_sgd_with_weight_decay() -> None:
    cfg = replace(BASE, optimizer="sgd", lr=0.1, optimizer_kwargs={"weight_decay": 0.01}, gal={"ratio": 0.1})
    h0 = [torch.randn(5, 3), torch.randn(3)]
    # every weight shrinks by (1 - lr wd) per step: relative drift 1 - (1 - lr wd)^T
    assert mechanism.decay_drift(cfg, h0, 50) == pytest.approx(1 - (1 - 0.1 * 0.01) ** 50, rel=1e-5)  # float32 weights
    assert mechanism.decay_drift(replace(cfg, optimizer_kwargs={}), h0, 50) == 0.0
    assert mechanism.decay_drift(replace(cfg, frozen_h=True), h0, 50) == 0.0


def test_pairwise_cosine() -> None:
    v = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    assert mechanism.pairwise_cosine(v) == pytest.approx(1.0)
    assert mechanism.pairwise_cosine(torch.tensor([[1.0, 0.0], [0.0, 5.0]])) == pytest.approx(0.0)
    assert mechanism.pairwise_cosine(torch.tensor([[1.0, 1.0], [-1.0, -1.0]])) == pytest.approx(-1.0)


def test_diverged() -> None:
    assert mechanism.diverged({"test_loss": float("nan"), "test_accuracy": 0.9}, 10)
    assert mechanism.diverged({"test_loss": 1.0, "test_accuracy": 0.2}, 10)
    assert not mechanism.diverged({"test_loss": 1e3, "test_accuracy": 0.21}, 10)


def test_bad_arguments_are_named(data: harness.Data) -> None:
    with pytest.raises(ValueError, match="every"):
        mechanism.trace(replace(BASE, gal={"ratio": 0.1}), data, model_fn, every=0)
    with pytest.raises(ValueError, match="output-space"):
        mechanism.trace(BASE, data, model_fn)
    with pytest.raises(ValueError, match="output-space"):
        mechanism.trace(replace(BASE, gal={"ratio": 0.1}, space="parameter"), data, model_fn)


def test_h_gradient_bound_holds_and_orders_the_forms():
    """The derived bound on h's gradient is above the measured gradient on every measured step,
    for both first-order forms and for h in the model's SGD or its own Adam; the mean form's
    bound is first order in lr (far above the sum form's)."""
    from galcore.experiments.harness import Data

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    data = Data("tiny", x[:64], y[:64], x[64:], y[64:], 3)
    model = lambda: torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    base = TrainConfig(model="tiny", data="tiny", optimizer="momentum", lr=0.1, epochs=2, batch_size=16,
                       gal={"ratio": 0.1, "compute_dtype": torch.float64})
    arms = {"sum": base, "mean": replace(base, gal=base.gal.replace(first_order="mean")),
            "mean, own adam": replace(base, gal=base.gal.replace(first_order="mean"), h_optimizer="adam", h_lr=1e-3)}
    f = mechanism.bound_arms(arms, (0,), data, model, every=1, progress=False).set_index("arm")
    assert (f["bound_ok"] == 1).all() and (f["h_grad_norm"] > 0).all()
    assert (f["bound_mean"] > 10 * f["bound_sum"]).all()
    assert f.loc["mean", "h_grad_norm"] > 10 * f.loc["sum", "h_grad_norm"]
    assert f.loc["sum", "h_drift"] <= f.loc["sum", "sgd_drift_bound"]
    assert list(f["first_order"]) == ["sum", "mean", "mean"] and f.loc["mean, own adam", "h_trained_by"] == "own adam lr 0.001"
    plain = mechanism.harness.run(replace(arms["mean"], seed=0), data, model)
    assert plain.weights_hash == f.loc["mean", "weights_hash"]  # measuring leaves the run unchanged
    with pytest.raises(ValueError, match="first_order"):
        mechanism.h_gradient_bound(torch.ones(2), torch.ones(2), torch.ones(2), 0.1, 0.1, 2, "exact")
