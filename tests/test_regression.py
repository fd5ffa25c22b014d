"""galcore.experiments.regression: data and splits, rotation labels, what h receives with one and
two outputs, the arms, the margin, the verdicts (fast, CPU)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from galcore import GAL
from galcore.experiments import harness
from galcore.experiments import regression as R
from galcore.experiments.harness import stats
from galcore.experiments.harness.data import digits_arrays


# -- data -------------------------------------------------------------------------------------
def test_diabetes_splits_standardised_deterministic() -> None:
    from sklearn.datasets import load_diabetes

    d = R.diabetes()
    n = len(load_diabetes().target)
    assert d.num_outputs == 1 and d.x_train.dtype == torch.float32
    assert d.x_val is not None and d.y_val is not None
    assert len(d.x_train) + len(d.x_val) + len(d.x_test) == n
    assert d.y_train.shape == (len(d.x_train), 1) and d.y_val.shape == (len(d.x_val), 1)
    torch.testing.assert_close(d.x_train.mean(0), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(d.x_train.std(0), torch.ones(10), atol=1e-5, rtol=0)
    # validation and test are standardised with the training statistics: not exactly 0/1
    assert abs(float(d.y_val.mean())) > 1e-4 and abs(float(d.y_test.mean())) > 1e-4
    # no row in two splits (the rows are distinct patients)
    rows = {tuple(r) for r in d.x_train.tolist()}
    assert not rows & {tuple(r) for r in d.x_val.tolist()} and not rows & {tuple(r) for r in d.x_test.tolist()}
    raw = load_diabetes().target
    assert 0.5 * raw.std() < d.y_scale < 1.5 * raw.std()
    d2 = R.diabetes()
    assert d2.fingerprint() == d.fingerprint()
    assert R.diabetes(split_seed=1).fingerprint() != d.fingerprint()


def test_rotate_by_zero_is_identity_and_by_90_is_rot90() -> None:
    x, *_ = digits_arrays()
    imgs = x[:16]
    torch.testing.assert_close(R.rotate_images(imgs, torch.zeros(16)), imgs, atol=1e-6, rtol=0)
    rot = R.rotate_images(imgs, torch.full((16,), 90.0))
    torch.testing.assert_close(rot, torch.rot90(imgs, k=1, dims=(-2, -1)), atol=1e-5, rtol=0)
    ang = torch.linspace(-40, 40, 16)
    one_by_one = torch.cat([R.rotate_images(imgs[i : i + 1], ang[i : i + 1]) for i in range(16)])
    torch.testing.assert_close(R.rotate_images(imgs, ang), one_by_one, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="angles"):
        R.rotate_images(imgs, torch.zeros(3))


def _orientation_deg(img: torch.Tensor) -> float:
    """Principal-axis angle of an intensity image, counter-clockwise from the x axis (y up)."""
    h, w = img.shape
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    wgt = img.double() / img.sum()
    xs, ys = cols, -rows
    mx, my = (wgt * xs).sum(), (wgt * ys).sum()
    cxx, cyy = (wgt * (xs - mx) ** 2).sum(), (wgt * (ys - my) ** 2).sum()
    cxy = (wgt * (xs - mx) * (ys - my)).sum()
    return math.degrees(0.5 * math.atan2(float(2 * cxy), float(cxx - cyy)))


@pytest.mark.parametrize("angle", [-35.0, 20.0, 30.0])
def test_rotation_angle_recovered_on_a_bar(angle: float) -> None:
    img = torch.zeros(1, 1, 31, 31)
    img[..., 15, 5:26] = 1.0
    assert abs(_orientation_deg(img[0, 0])) < 1e-9
    assert abs(_orientation_deg(R.rotate_images(img, torch.tensor([angle]))[0, 0]) - angle) < 2.0


def test_angle_targets_round_trip_and_wrapped_error() -> None:
    a = torch.linspace(-179.0, 179.0, 37)
    y = R.angle_targets(a)
    assert y.shape == (37, 2)
    torch.testing.assert_close(y.norm(dim=1), torch.ones(37))
    torch.testing.assert_close(R.angles_of(y), a, atol=1e-4, rtol=0)
    assert torch.all(R.angular_error(y, a) < 1e-3)
    # the error wraps around the circle: 179 and -179 degrees are 2 degrees apart
    err = R.angular_error(R.angle_targets(torch.tensor([179.0])), torch.tensor([-179.0]))
    assert abs(float(err) - 2.0) < 1e-3
    # the length of the prediction does not matter, its direction does
    torch.testing.assert_close(R.angles_of(3.0 * y), a, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="outputs"):
        R.angles_of(torch.zeros(4, 3))


def test_rotated_digits_labels_are_the_applied_angles() -> None:
    parts = R.rotated_digits_arrays(copies=2, max_angle=30.0, angle_seed=3, eval_copies=3)
    base_tr, lab_tr, base_te, _ = digits_arrays()
    n_tr, n_va = len(parts["train"][0]) // 2, len(parts["val"][0]) // 3
    assert n_tr + n_va == len(base_tr) and len(parts["test"][0]) == 3 * len(base_te)
    for x, ang in parts.values():
        assert float(ang.abs().max()) <= 30.0 and x.shape[1:] == (1, 8, 8)
    # each image is its digit rotated by its label; validation holds out a stratified 20% of
    # the training digits (before rotation, so no digit is in two splits)
    from sklearn.model_selection import train_test_split

    keep, held = train_test_split(np.arange(len(base_tr)), test_size=0.2, random_state=0, stratify=lab_tr.numpy())
    for split, idx, k in (("train", keep, 2), ("val", held, 3), ("test", np.arange(len(base_te)), 3)):
        src = (base_te if split == "test" else base_tr)[torch.as_tensor(idx)].repeat_interleave(k, 0)
        x, ang = parts[split]
        torch.testing.assert_close(x, R.rotate_images(src, ang))
    d = R.rotated_digits(copies=2, max_angle=30.0, angle_seed=3, eval_copies=3)
    assert d.num_outputs == 2 and d.y_scale == 1.0
    torch.testing.assert_close(d.y_train, R.angle_targets(parts["train"][1]))
    torch.testing.assert_close(d.y_val, R.angle_targets(parts["val"][1]))
    torch.testing.assert_close(d.y_test, R.angle_targets(parts["test"][1]))
    assert abs(float(d.x_train.mean())) < 1e-5 and abs(float(d.x_train.std()) - 1) < 1e-5
    assert R.rotated_digits(copies=2, max_angle=30.0, angle_seed=3, eval_copies=3).fingerprint() == d.fingerprint()
    assert R.rotated_digits(copies=2, max_angle=30.0, angle_seed=4, eval_copies=3).fingerprint() != d.fingerprint()
    assert R.rotated_digits_arrays(size=16)["train"][0].shape[-2:] == (16, 16)
    with pytest.raises(ValueError, match="max_angle"):
        R.rotated_digits_arrays(max_angle=0.0)


# -- setup and arms ---------------------------------------------------------------------------
def test_default_setup_and_arms() -> None:
    for ds, c in (("rotated_digits", 2), ("diabetes", 1)):
        s = R.default_setup("default", ds)
        assert len(s.seeds) >= 10 and s.base.select == "val_loss" and s.data.num_outputs == c
        assert s.model_fn()(s.data.x_train[:3]).shape == (3, c)
    s = R.default_setup("smoke", "rotated_digits")
    for opt in R.OPTIMIZERS:
        arms = R.arms_for(s, opt)
        assert tuple(arms) == R.ARMS
        assert arms["standard"].gal is None and arms["standard"].lr == arms["gal"].lr == R.LR[opt]
        assert arms["gal"].h_optimizer == R.H_OPTIMIZER and arms["gal"].h_lr == R.H_LR and not arms["gal"].frozen_h
        assert arms["gal_frozen"].frozen_h and arms["gal_frozen"].gal == arms["gal"].gal
        # the tentative step is the same eta for every optimizer
        assert arms["gal"].gal.scale * arms["gal"].lr == pytest.approx(R.ETA)
    with pytest.raises(ValueError, match="optimizer"):
        R.arms_for(s, "lbfgs")
    with pytest.raises(ValueError, match="dataset"):
        R.load("mnist")


# -- what h receives --------------------------------------------------------------------------
def test_h_gradient_grows_as_eta_squared_with_two_outputs() -> None:
    """MSE: the step's remainder is |delta|^2 / (B C), so h's gradient scales as eta^2 = (lr scale)^2."""
    torch.manual_seed(0)
    out, y = torch.randn(16, 2), torch.randn(16, 2)
    norms = []
    for scale in (1.0, 10.0):
        gal = GAL(2, ratio=0.1, scale=scale, seed=3)
        gal.backward(out.clone().requires_grad_(True), lambda o: F.mse_loss(o, y.to(o.dtype)), 1e-2)
        norms.append(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in gal.h.parameters())))
    assert float(norms[0]) > 0
    assert float(norms[1] / norms[0]) == pytest.approx(100.0, rel=1e-6)


def test_h_probe_one_output_gets_no_gradient_two_outputs_do() -> None:
    one = R.default_setup("smoke", "diabetes")
    p1 = R.h_probe(replace(R.arms_for(one, "adam")["gal"], epochs=1), one)
    assert p1["outputs"] == 1 and p1["steps"] == math.ceil(len(one.data.x_train) / one.base.batch_size)
    assert p1["h_grad_max"] < 1e-12 * p1["model_grad_median"]  # rounding of an exact zero
    assert p1["h_drift"] < 1e-9 and p1["accept_rate"] == 1.0
    two = R.default_setup("smoke", "rotated_digits")
    cfg = replace(R.arms_for(two, "adam")["gal"], epochs=1)
    p2 = R.h_probe(cfg, two)
    assert p2["outputs"] == 2 and p2["h_eps"] == 1e-8
    assert p2["h_grad_max"] > 1e3 * p2["h_eps"]  # well above Adam's eps at this scale
    assert p2["h_drift"] > 1e-3
    assert 0.5 < p2["remainder_ratio"] < 1.5
    p0 = R.h_probe(replace(cfg, gal=R.gal_config(scale=1.0)), two)
    assert p0["h_grad_median"] < 1e-3 * p2["h_grad_median"] and p0["h_drift"] < 0.1 * p2["h_drift"]
    # the probe trains the very run the harness trains
    res = harness.run(replace(cfg, select=None), two.data, two.model_fn)
    assert p2["test_rmse"] == pytest.approx(res.history[-1]["test_rmse"], rel=1e-5)
    with pytest.raises(ValueError, match="GAL arm"):
        R.h_probe(R.arms_for(two, "adam")["standard"], two)


def test_run_task_one_output_learned_and_frozen_h_are_identical(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GALCORE_RESULTS", str(tmp_path))
    s = R.default_setup("smoke", "diabetes")
    s = replace(s, base=replace(s.base, epochs=2), seeds=(0, 1, 2))
    finals, hists = R.run_task(s, ("adam",), progress=False)
    assert len(finals) == 9 and set(finals["arm"]) == set(R.ARMS)
    assert (finals["outputs"] == 1).all() and (finals["dataset"] == "diabetes").all()
    assert set(finals["best_epoch"]) <= {1, 2}
    gal = finals[finals["arm"] != "standard"]
    assert gal["remainder_ratio"].between(0.5, 1.5).all() and gal["remainder_ratio_all"].between(0.5, 1.5).all()
    assert finals.loc[finals["arm"] == "standard", "remainder_ratio"].isna().all()
    assert set(hists["epoch"]) == {1, 2}
    table = R.compare_task(finals)
    frozen = table[(table["setting"] == "gal vs gal_frozen") & (table["metric"] == "test_rmse")]
    assert list(frozen["verdict"]) == ["identical"]  # h never changes with one output
    assert set(table["verdict"]) <= set(stats.VERDICTS)
    # cached: the second call reads the same runs back
    again, _ = R.run_task(s, ("adam",), progress=False)
    pd.testing.assert_series_equal(again["test_rmse"], finals["test_rmse"])
    assert list(R.summary_table(table).columns) == R.SUMMARY


def test_remainder_ratio_over_the_last_epochs() -> None:
    rows = []
    for seed in (0, 1):
        for epoch in range(1, 9):  # the adjusted remainder falls from 1.0 to 0.3 of the plain one
            rows.append({"arm": "gal", "seed": seed, "epoch": epoch, "remainder_abs": (1.1 - 0.1 * epoch) * (seed + 1),
                         "remainder_plain_abs": float(seed + 1)})
    h = pd.DataFrame(rows)
    late = R.remainder_ratio(h)  # the last quarter: epochs 7 and 8
    assert late.loc[("gal", 0)] == pytest.approx((0.4 + 0.3) / 2) and late.loc[("gal", 1)] == pytest.approx(0.35)
    assert R.remainder_ratio(h, 1.0).loc[("gal", 0)] == pytest.approx(np.mean([1.1 - 0.1 * e for e in range(1, 9)]))
    assert R.remainder_ratio(h, 0.01).loc[("gal", 0)] == pytest.approx(0.3)  # at least the last epoch
    with pytest.raises(ValueError, match="tail"):
        R.remainder_ratio(h, 0.0)


# -- margins and verdicts ---------------------------------------------------------------------
def test_margin_is_the_smallest_cifar_gain() -> None:
    gains = {k: (s - g) / s for k, (s, g) in R.RELEASE_ERRORS.items()}
    cifar = [v for (d, _), v in gains.items() if d.startswith("CIFAR")]
    assert R.margin_fraction() == pytest.approx(min(cifar))
    assert R.margin_fraction("ImageNet") == pytest.approx(min(v for (d, _), v in gains.items() if d == "ImageNet"))
    assert R.margin_fraction() > R.margin_fraction("ImageNet")
    with pytest.raises(ValueError, match="release"):
        R.margin_fraction("MNIST")


def _synthetic_finals(shift: float, noise: float, n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(n):
        base = 0.2 + 0.01 * rng.standard_normal()
        for arm, d in (("standard", 0.0), ("gal", shift), ("gal_frozen", 0.0)):
            rows.append({"dataset": "toy", "outputs": 2, "optimizer": "adam", "arm": arm, "seed": seed,
                         "test_rmse": base + d + noise * rng.standard_normal(),
                         "remainder_ratio": np.nan if arm == "standard" else 1.0 - (0.05 if arm == "gal" else 0.0)
                         + 1e-3 * rng.standard_normal(), "weights_hash": f"{arm}{seed}"})
    return pd.DataFrame(rows)


def test_compare_task_margins_and_verdicts() -> None:
    t = R.compare_task(_synthetic_finals(shift=-0.02, noise=1e-3)).set_index(["setting", "metric"])
    row = t.loc[("gal vs standard", "test_rmse")]
    assert row["verdict"] == "better"
    assert row["margin"] == pytest.approx(R.margin_fraction() * row["mean_control"])
    assert row["mde"] < row["margin"]
    assert t.loc[("gal_frozen vs standard", "test_rmse"), "verdict"] == "equivalent"
    mech = t.loc[("gal vs gal_frozen", "remainder_ratio")]
    assert mech["verdict"] == "better" and mech["margin"] == pytest.approx(0.1 * R.RATIO)
    worse = R.compare_task(_synthetic_finals(shift=+0.02, noise=1e-3)).set_index(["setting", "metric"])
    assert worse.loc[("gal vs standard", "test_rmse"), "verdict"] == "worse"
    noisy = R.compare_task(_synthetic_finals(shift=0.0, noise=0.05)).set_index(["setting", "metric"])
    row = noisy.loc[("gal vs standard", "test_rmse")]
    assert row["verdict"] == "inconclusive" and row["mde"] > row["margin"] and row["seeds_needed"] > row["n"]


def test_conclusion_reports_each_verdict_and_number() -> None:
    table = R.compare_task(_synthetic_finals(shift=-0.02, noise=1e-3))
    probe = {"outputs": 2.0, "h_grad_max": 1.25e-5, "model_grad_median": 0.5, "h_drift": 0.375}
    text = R.conclusion(table, {"toy": probe})
    for _, row in table.iterrows():
        assert row["verdict"] in text
    gs = table[(table["setting"] == "gal vs standard") & (table["metric"] == "test_rmse")].iloc[0]
    assert f"{gs['mde']:.3g}" in text and f"{gs['mean_diff']:+.4f}" in text
    assert "1.25e-05" in text and "3.75e-01" in text
    other = R.conclusion(R.compare_task(_synthetic_finals(shift=+0.02, noise=1e-3)))
    assert other != R.conclusion(table)
