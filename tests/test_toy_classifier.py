"""The tiny-classifier experiment: fair arms (same start, same batches), records, reproducibility."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from galcore.experiments.toy_classifier import ARMS, ClassifierSetting, make_spirals, run_classifier

SMALL = ClassifierSetting(steps=8, n_per_class=32, batch=32, width=16)


def test_spirals_are_deterministic_and_balanced() -> None:
    X1, y1 = make_spirals(50, classes=3, seed=4)
    X2, y2 = make_spirals(50, classes=3, seed=4)
    X3, _ = make_spirals(50, classes=3, seed=5)
    assert X1.shape == (150, 2) and X1.dtype == torch.float32 and y1.dtype == torch.int64
    assert torch.equal(X1, X2) and torch.equal(y1, y2)
    assert not torch.equal(X1, X3)
    assert torch.bincount(y1).tolist() == [50, 50, 50]


def test_arms_start_from_the_same_point() -> None:
    runs = {arm: run_classifier(arm, seed=3, setting=SMALL) for arm in ARMS}
    # same model init and first batch: the first step's loss is the same in every arm
    first = [float(runs[a].loss[0]) for a in ARMS]
    assert first[0] == pytest.approx(first[1], rel=1e-6) and first[0] == pytest.approx(first[2], rel=1e-6)
    # same h init too: GAL's first-step records coincide for frozen and learned h
    f, l = runs["frozen"], runs["learned"]
    assert f.remainder is not None and l.remainder is not None
    assert f.remainder[0] == l.remainder[0] and f.remainder_plain[0] == l.remainder_plain[0]
    # h is updated in the learned arm only, so later records differ
    assert not np.array_equal(f.remainder[2:], l.remainder[2:])
    assert runs["plain"].accepted is None and runs["plain"].remainder is None


def test_runs_reproduce_and_records_are_sane() -> None:
    a = run_classifier("learned", seed=1, setting=SMALL)
    b = run_classifier("learned", seed=1, setting=SMALL)
    assert np.array_equal(a.loss, b.loss) and np.array_equal(a.remainder, b.remainder)
    assert a.test_acc == b.test_acc
    for arr in (a.loss, a.remainder, a.remainder_plain, a.objective):
        assert arr is not None and arr.shape == (SMALL.steps,) and np.isfinite(arr).all()
    assert a.accepted is not None and a.accepted.dtype == bool
    # cross-entropy is convex in the logits: the plain tentative step's remainder is >= 0
    assert (a.remainder_plain >= -1e-12).all()
    np.testing.assert_allclose(a.objective, np.abs(a.remainder), rtol=1e-9, atol=1e-15)  # "sum" form
    assert 0.0 <= a.test_acc <= 1.0 and 0.0 <= a.acceptance_rate <= 1.0
    assert a.windows(np.arange(8.0), 4).tolist() == [0.5, 2.5, 4.5, 6.5]


def test_ratio_zero_follows_the_plain_run() -> None:
    s0 = dataclasses.replace(SMALL, ratio=0.0)
    plain = run_classifier("plain", seed=2, setting=s0)
    gal0 = run_classifier("frozen", seed=2, setting=s0)
    # GAL computes its gradient in float64: the same run up to float32 rounding
    np.testing.assert_allclose(gal0.loss, plain.loss, rtol=1e-5)
    assert gal0.test_loss == pytest.approx(plain.test_loss, rel=1e-4)


def test_bad_arm_is_refused() -> None:
    with pytest.raises(ValueError):
        run_classifier("random", seed=0, setting=SMALL)
