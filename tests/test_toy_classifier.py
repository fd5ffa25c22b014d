"""The tiny-classifier experiment on the harness: data, fair arms, the late remainder ratio."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from galcore.experiments import harness
from galcore.experiments.theory.toy_classifier import (
    ARMS,
    ClassifierSetting,
    batch_perturbation,
    classifier_arms,
    classifier_data,
    late_remainder_ratio,
    make_spirals,
    tiny_mlp,
)

SMALL = ClassifierSetting(epochs=2, n_per_class=16, batch=16)


def test_spirals_are_deterministic_and_balanced() -> None:
    X1, y1 = make_spirals(50, classes=3, seed=4)
    X2, y2 = make_spirals(50, classes=3, seed=4)
    X3, _ = make_spirals(50, classes=3, seed=5)
    assert X1.shape == (150, 2) and X1.dtype == torch.float32 and y1.dtype == torch.int64
    assert torch.equal(X1, X2) and torch.equal(y1, y2)
    assert not torch.equal(X1, X3)
    assert torch.bincount(y1).tolist() == [50, 50, 50]
    with pytest.raises(ValueError, match="n_per_class"):
        make_spirals(0)


def test_data_and_arms() -> None:
    data = classifier_data(SMALL)
    assert data.x_train.shape == (64, 2) and data.num_outputs == 4
    assert not torch.equal(data.x_train, data.x_test)  # the test set is drawn from another seed
    arms = classifier_arms(SMALL, epochs=3)
    assert tuple(arms) == ARMS
    std, learned, frozen = (arms[a] for a in ARMS)
    assert std.gal is None and std.epochs == 3
    assert learned.gal == frozen.gal and learned.gal is not None and learned.gal.track_plain is True
    assert (learned.h_optimizer, learned.h_lr, learned.frozen_h) == ("adam", SMALL.h_lr, False)
    assert frozen.frozen_h is True
    # everything else is shared
    for cfg in (learned, frozen):
        assert (cfg.optimizer, cfg.lr, cfg.epochs, cfg.batch_size) == (std.optimizer, std.lr, std.epochs, std.batch_size)


def test_arms_run_fairly_and_h_learns_only_when_trained() -> None:
    finals, hists = harness.run_arms(classifier_arms(SMALL), [0], classifier_data(SMALL), tiny_mlp, progress=False)
    assert set(finals["arm"]) == set(ARMS)
    gal = hists[hists["arm"] != "standard"]
    assert gal["remainder_abs"].notna().all() and gal["remainder_plain_abs"].notna().all()
    assert (gal["remainder_plain_abs"] > 0).all()
    late = late_remainder_ratio(hists)
    assert set(late["arm"]) == {"gal learned", "gal frozen"}
    f = late.set_index("arm")["late_remainder_ratio"]
    assert np.isfinite(f).all() and f["gal learned"] != f["gal frozen"]
    # all three arms end with different weights (GAL at r = 0.1 changes the steps)
    assert finals["weights_hash"].nunique() == 3


def test_late_remainder_ratio_values_and_errors() -> None:
    hists = pd.DataFrame({
        "arm": ["a"] * 4 + ["standard"] * 4,
        "seed": [0] * 8,
        "epoch": [4, 1, 2, 3] * 2,
        "remainder_abs": [0.5, 9.0, 9.0, 3.0] + [np.nan] * 4,
        "remainder_plain_abs": [1.0, 1.0, 1.0, 2.0] + [np.nan] * 4,
    })
    out = late_remainder_ratio(hists)  # last half: epochs 3 and 4 -> (0.5 + (-0.5)) / 2
    assert out["arm"].tolist() == ["a"]
    assert out["late_remainder_ratio"].iloc[0] == pytest.approx(0.0)
    assert late_remainder_ratio(hists, last=0.25)["late_remainder_ratio"].iloc[0] == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="last"):
        late_remainder_ratio(hists, last=0.0)
    with pytest.raises(ValueError, match="remainder_plain_abs"):
        late_remainder_ratio(hists.drop(columns="remainder_plain_abs"))


def test_batch_perturbation_exceeds_the_per_sample_bound_at_init() -> None:
    out = batch_perturbation(SMALL, seed=0)
    assert set(out) == {"param_ratio", "output_ratio", "cosine"}
    assert all(np.isfinite(v) for v in out.values())
    assert -1.0 <= out["cosine"] <= 1.0 + 1e-6
    # h's directions nearly coincide at init, so the batch's adjustment is many r of the step
    assert out["cosine"] > 0.9 and out["param_ratio"] > 1.5
    # the measured ratio is in units of r: it does not depend on r
    assert batch_perturbation(SMALL, seed=0, ratio=0.01)["param_ratio"] == pytest.approx(out["param_ratio"], rel=1e-5)
    with pytest.raises(ValueError, match="ratio"):
        batch_perturbation(SMALL, ratio=0.0)
