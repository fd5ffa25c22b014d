"""galcore.experiments.regression: data, rotation labels, setup, one-target GAL (fast, CPU)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from galcore.experiments import regression as R
from galcore.experiments.datasets import digits_arrays


def test_diabetes_shapes_standardised_deterministic() -> None:
    from sklearn.datasets import load_diabetes

    d = R.diabetes()
    assert d.x_train.shape == (331, 10) and d.x_test.shape == (111, 10)
    assert d.y_train.shape == (331, 1) and d.y_test.shape == (111, 1)
    assert d.num_outputs == 1 and d.x_train.dtype == torch.float32
    torch.testing.assert_close(d.x_train.mean(0), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(d.x_train.std(0), torch.ones(10), atol=1e-5, rtol=0)
    assert abs(float(d.y_train.mean())) < 1e-5 and abs(float(d.y_train.std()) - 1) < 1e-5
    # the test split is standardised with the training statistics, so it is not exactly 0/1
    assert abs(float(d.y_test.mean())) > 1e-4
    # y_scale is the training target's std in the original units (disease score)
    raw = load_diabetes().target
    assert 0.5 * raw.std() < d.y_scale < 1.5 * raw.std()
    d2 = R.diabetes()
    assert d2.name == d.name
    assert torch.equal(d.x_train, d2.x_train) and torch.equal(d.y_test, d2.y_test)
    # no sample on both sides: the original targets are recovered and disjoint as rows
    assert len(d.x_train) + len(d.x_test) == len(raw)


def test_rotate_by_zero_is_identity_and_by_90_is_rot90() -> None:
    x, *_ = digits_arrays()
    imgs = x[:16]
    torch.testing.assert_close(R.rotate_images(imgs, torch.zeros(16)), imgs, atol=1e-6, rtol=0)
    rot = R.rotate_images(imgs, torch.full((16,), 90.0))
    torch.testing.assert_close(rot, torch.rot90(imgs, k=1, dims=(-2, -1)), atol=1e-5, rtol=0)
    # batched equals one at a time (the vectorised version is per-sample correct)
    ang = torch.linspace(-40, 40, 16)
    one_by_one = torch.cat([R.rotate_images(imgs[i : i + 1], ang[i : i + 1]) for i in range(16)])
    torch.testing.assert_close(R.rotate_images(imgs, ang), one_by_one, atol=1e-6, rtol=0)


def _orientation_deg(img: torch.Tensor) -> float:
    """Principal-axis angle of an intensity image, counter-clockwise from the x axis (y up)."""
    h, w = img.shape
    ar = lambda n: torch.arange(n, dtype=torch.float64)  # noqa: E731
    rows, cols = torch.meshgrid(ar(h), ar(w), indexing="ij")
    wgt = img.double() / img.sum()
    xs, ys = cols, -rows  # y up on screen
    mx, my = (wgt * xs).sum(), (wgt * ys).sum()
    cxx = (wgt * (xs - mx) ** 2).sum()
    cyy = (wgt * (ys - my) ** 2).sum()
    cxy = (wgt * (xs - mx) * (ys - my)).sum()
    return math.degrees(0.5 * math.atan2(float(2 * cxy), float(cxx - cyy)))


@pytest.mark.parametrize("angle", [-35.0, 20.0, 30.0])
def test_rotation_angle_recovered_on_a_bar(angle: float) -> None:
    img = torch.zeros(1, 1, 31, 31)
    img[..., 15, 5:26] = 1.0  # a horizontal bar through the centre
    assert abs(_orientation_deg(img[0, 0])) < 1e-9
    rot = R.rotate_images(img, torch.tensor([angle]))
    assert abs(_orientation_deg(rot[0, 0]) - angle) < 2.0


def test_rotated_digits_labels_are_the_applied_angles() -> None:
    x_tr, a_tr, x_te, a_te = R.rotated_digits_arrays(copies=2, max_angle=30.0, angle_seed=3)
    base_tr, _, base_te, _ = digits_arrays()
    assert x_tr.shape == (2 * len(base_tr), 1, 8, 8) and a_tr.shape == (2 * len(base_tr), 1)
    assert x_te.shape == (2 * len(base_te), 1, 8, 8)
    assert float(a_tr.abs().max()) <= 30.0 and float(a_tr.std()) > 10.0
    # the label is the angle that was applied to that very image
    torch.testing.assert_close(x_tr[:20], R.rotate_images(base_tr.repeat_interleave(2, 0)[:20], a_tr[:20, 0]))
    torch.testing.assert_close(x_te[-10:], R.rotate_images(base_te.repeat_interleave(2, 0)[-10:], a_te[-10:, 0]))
    d = R.rotated_digits(copies=2, max_angle=30.0, angle_seed=3)
    torch.testing.assert_close(d.y_train * d.y_scale + a_tr.mean(), a_tr, atol=1e-4, rtol=0)
    torch.testing.assert_close(d.y_test * d.y_scale + a_tr.mean(), a_te, atol=1e-4, rtol=0)
    assert abs(float(d.x_train.mean())) < 1e-5 and abs(float(d.x_train.std()) - 1) < 1e-5
    d2 = R.rotated_digits(copies=2, max_angle=30.0, angle_seed=3)
    assert torch.equal(d.x_train, d2.x_train) and torch.equal(d.y_train, d2.y_train)
    other = R.rotated_digits(copies=2, max_angle=30.0, angle_seed=4)
    assert not torch.equal(d.y_train, other.y_train) and other.name != d.name
    big = R.rotated_digits_arrays(copies=1, size=16)[0]
    assert big.shape[-2:] == (16, 16)


def test_california_message_without_data(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path))
    with pytest.raises(R.DatasetUnavailable, match="internet"):
        R.california(download=False)


@pytest.mark.parametrize("dataset", ["diabetes", "rotated_digits"])
def test_default_setup_runs(dataset: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GALCORE_RESULTS", str(tmp_path))
    assert len(R.default_setup("default", dataset).seeds) >= 5
    s = R.default_setup("smoke", dataset)
    assert s.base.task == "regression" and s.base.gal is None and s.data.num_outputs == 1
    assert s.model_fn()(s.data.x_train[:3]).shape == (3, 1)
    arms = R.arms_for(s, "huber", "adam")
    assert arms["standard"].gal is None and arms["gal"].gal is not None
    assert arms["standard"].lr == arms["gal"].lr == R.LR[dataset]["adam"]
    assert s.data.name.split("-")[0] == dataset  # how LR is looked up from a setup
    s1 = replace(s, base=replace(s.base, epochs=1), seeds=(0, 1))
    finals, hists = R.run_grid(s1, losses=("mse", "huber"), optimizers=("momentum",), progress=False)
    assert len(finals) == 8 and set(finals["arm"]) == {"standard", "gal"}
    assert np.isfinite(finals["test_rmse"]).all()
    g = finals[finals["arm"] == "gal"]
    assert ((g["accept_rate_mean"] >= 0) & (g["accept_rate_mean"] <= 1)).all()
    assert (hists.loc[hists["arm"] == "gal", "remainder_plain_abs"] > 0).all()
    # cached: a second call reads the same numbers back (and the dtype in cfg.gal survives)
    again, _ = R.run_grid(s1, losses=("mse", "huber"), optimizers=("momentum",), progress=False)
    pd.testing.assert_series_equal(again["test_rmse"], finals["test_rmse"])
    table = R.results_table(finals, metrics=("test_rmse",))
    assert list(table.columns) == R.TABLE_COLUMNS and len(table) == 2 and (table["n"] == 2).all()


def test_one_target_adjustment_is_a_fixed_sign() -> None:
    s = R.default_setup("smoke", "diabetes")
    cfg = replace(R.arms_for(s, "mse", "adam")["gal"], epochs=1)
    p = R.one_target_probe(s, cfg)
    assert p["unit_fraction"] == 1.0  # |a_i| = r |g_i| for every sample
    assert p["h_grad_norm"] < 1e-12 * p["model_grad_norm"]  # the sign has no gradient
    assert p["h_drift"] == 0.0
    assert 0.0 <= p["shrink_fraction"] <= 1.0 and p["accept_rate"] == 1.0


def test_float64_resolves_the_remainder() -> None:
    s = R.default_setup("smoke", "diabetes")
    r = R.remainder_precision(s, R.arms_for(s, "mse", "momentum")["gal"])
    assert r["rel_error_float64"] < 1e-6
    assert r["remainder_exact"] < 10 * r["float32_spacing"]  # why float32 is not enough
