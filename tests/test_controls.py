"""galcore.experiments.harness.controls: the placebo (seeded noise instead of h), zero (ratio 0 through
GAL) and frozen-h control arms, and the merging of arms that are the same computation."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch
from torch import nn

from galcore import GAL
from galcore.experiments.harness import Data, TrainConfig, build_gal, controls, run, run_arms
from galcore.experiments.harness.placebo import placebo_arm


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("GALCORE_RESULTS", str(tmp_path / "results"))
    torch.set_num_threads(1)


def _data() -> Data:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return Data("tiny", x[:64], y[:64], x[64:], y[64:], 3)


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.2), nn.Tanh(), nn.Linear(8, 3))


BASE = TrainConfig(model="tiny", data="tiny", optimizer="momentum", lr=0.1, epochs=2, batch_size=16)
GAL_CFG = replace(BASE, gal={"ratio": 0.1, "first_order": "mean", "compute_dtype": torch.float64})


def test_noise_h_is_parameter_free_seeded_and_leaves_the_global_stream():
    h = controls.NoiseH(3)
    assert list(h.parameters()) == []
    x = torch.zeros(5, 4)
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    a, b = h(x), h(x)
    assert torch.equal(torch.random.get_rng_state(), before)  # its own generator
    assert a.shape == x.shape and a.dtype == x.dtype and not torch.equal(a, b)
    assert torch.equal(controls.NoiseH(3)(x), a)  # the same seed: the same stream
    assert not torch.equal(controls.NoiseH(4)(x), a)
    assert h(torch.zeros(2, 3, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(TypeError, match="seed"):
        controls.NoiseH(1.5)  # type: ignore[arg-type]
    assert controls.placebo(GAL_CFG).placebo and placebo_arm(GAL_CFG).gal == controls.placebo(GAL_CFG).gal


def test_placebo_direction_has_the_gal_norm_and_no_h_parameters():
    gal = GAL(3, ratio=0.1, h=controls.NoiseH(7), accept="always")
    out = torch.randn(16, 3, requires_grad=True)
    y = torch.randint(0, 3, (16,))
    loss = lambda o: nn.functional.cross_entropy(o, y)
    (g,) = torch.autograd.grad(loss(out), out)
    gal.backward(out, loss, 0.1)
    adj = out.grad - g
    assert torch.allclose(adj.norm(dim=1), 0.1 * g.norm(dim=1), rtol=1e-5)
    assert list(gal.parameters()) == []


def test_control_configs():
    p, z = controls.placebo(GAL_CFG), controls.zero(GAL_CFG)
    assert p.placebo and p.gal == GAL_CFG.gal and z.gal == GAL_CFG.gal.replace(ratio=0.0) and not z.placebo
    arms = controls.control_arms(replace(GAL_CFG, h_optimizer="adam", h_lr=1e-3), ("placebo", "zero", "frozen"), "c:")
    assert list(arms) == ["c:placebo", "c:zero", "c:frozen"] and arms["c:placebo"].h_optimizer is None
    assert arms["c:frozen"].frozen_h and arms["c:zero"].gal.ratio == 0.0
    with pytest.raises(ValueError, match="GAL arm"):
        controls.placebo(BASE)
    with pytest.raises(ValueError, match="unknown controls"):
        controls.control_arms(GAL_CFG, ("nope",))
    gal = build_gal(p, _model(), 3, torch.device("cpu"))
    assert isinstance(gal.h, controls.NoiseH) and gal.h.seed == 10_000 + p.seed
    with pytest.raises(TypeError, match="placebo"):
        replace(GAL_CFG, placebo=1)
    with pytest.raises(ValueError, match="placebo"):
        replace(BASE, placebo=True)


def test_control_runs_are_fair_reproducible_and_merged_when_identical():
    data = _data()
    arms = {"standard": BASE, "gal": GAL_CFG, **controls.control_arms(GAL_CFG)}
    finals, _ = run_arms(arms, (0, 1), data, _model, progress=False)
    again = run(replace(arms["placebo"], seed=1), data, _model)
    h = finals.set_index(["arm", "seed"])["weights_hash"]
    assert again.weights_hash == h["placebo", 1]  # seeded per run: the same run twice is the same
    assert h["zero", 0] == h["standard", 0] and h["zero", 1] == h["standard", 1]  # ratio 0: the plain gradient
    assert h["placebo", 0] not in (h["standard", 0], h["gal", 0])
    assert controls.identical_groups(finals) == [("standard", "zero")]
    merged, which = controls.merge_identical(finals)
    assert set(merged["arm"]) == {"standard", "gal", "placebo"} and which == {("standard",): ["zero"]}
    assert "`zero`" in controls.describe_merged(which)
    # diverged runs (non-finite loss) are never "identical"
    bad = finals.copy()
    bad.loc[bad["arm"].isin(["standard", "zero"]), "test_loss"] = float("nan")
    assert controls.identical_groups(bad) == []
    # an arm on fewer seeds is compared on the seeds it ran
    fewer = finals[~((finals["arm"] == "zero") & (finals["seed"] == 1))]
    assert controls.identical_groups(fewer) == [("standard", "zero")]
    # by groups
    two = pd.concat([finals.assign(optimizer="a"), finals.assign(optimizer="b")], ignore_index=True)
    assert controls.identical_groups(two, by=["optimizer"]) == [("a", "standard", "zero"), ("b", "standard", "zero")]


def test_placebo_runs_traced_with_the_same_steps():
    from galcore.experiments.ablations import mechanism

    p = controls.placebo(GAL_CFG)
    model = lambda: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))  # the tracer re-runs the model: no dropout
    plain = run(replace(p, gal=p.gal.replace(track_plain=True)), _data(), model)
    traced = mechanism.trace(p, _data(), model, every=2)
    assert traced.weights_hash == plain.weights_hash  # measuring does not move the noise stream
    assert traced.final["h_drift"] != traced.final["h_drift"]  # NaN: no h weights
