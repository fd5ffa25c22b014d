"""Notebook 05's studies: their arms, comparisons, verdicts and computed summaries."""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest

from galcore.experiments.harness import margins
import torch

from galcore import GALConfig
from galcore.experiments import harness
from galcore.experiments.ablations import study as A
from galcore.experiments.ablations import text as ab_text
from galcore.experiments.harness.models import MLP


@pytest.fixture(scope="module")
def studies() -> dict[str, A.Study]:
    return A.studies("smoke")


def _differing(a: harness.TrainConfig, b: harness.TrainConfig) -> set[str]:
    da, db = asdict(a), asdict(b)
    out = {k for k in da if k != "gal" and da[k] != db[k]}
    standard = GALConfig(ratio=0.0).to_dict()  # the standard method: GAL at ratio 0
    ga, gb = (c.gal.to_dict() if c.gal is not None else standard for c in (a, b))
    out |= {f"gal.{k}" for k in set(ga) | set(gb) if ga.get(k) != gb.get(k)}
    return out


def test_dose_grid_is_complete_and_labels_round_trip(studies: dict[str, A.Study]) -> None:
    dose = studies["dose"]
    assert len(dose.arms) == 1 + len(A.RATIOS) * len(A.H_MODES)
    for name, cfg in dose.arms.items():
        parsed = A.split_label(name)
        assert parsed["ratio"] == (cfg.gal.ratio if cfg.gal is not None else 0.0)
        if name != "standard":
            assert A.label(parsed["ratio"], parsed["h"], parsed["normalize"]) == name
            # each arm differs from the standard method only in GAL and how h learns
            assert _differing(cfg, dose.arms["standard"]) <= {"gal.ratio", "frozen_h", "h_optimizer", "h_lr"}


def test_every_comparison_names_arms_of_its_study(studies: dict[str, A.Study]) -> None:
    for st in studies.values():
        assert st.control in st.arms
        pairs = st.comparisons()
        assert pairs and len(pairs) == len(set(pairs))
        for arm, control in pairs:
            assert arm in st.arms and control in st.arms and arm != control


def test_factor_arms_change_one_setting_of_the_base(studies: dict[str, A.Study]) -> None:
    f = studies["factors"]
    base = f.arms[f.control]
    for name, cfg in f.arms.items():
        if name in (f.control, "standard", A.SHORT):
            continue
        changed = _differing(cfg, base)
        assert len(changed) == 1 or changed <= {"frozen_h", "h_optimizer", "h_lr"}, (name, changed)


def test_accept_study_pairs_rules_at_each_setting(studies: dict[str, A.Study]) -> None:
    acc = studies["accept"]
    for arm, control in acc.comparisons():
        if arm.endswith("always"):
            assert _differing(acc.arms[arm], acc.arms[control]) == {"gal.accept"}
    assert max(c.lr for c in acc.arms.values()) == 1.0


def test_space_study_model_is_small_enough_for_paramgal(studies: dict[str, A.Study]) -> None:
    sp = studies["space"]
    assert sum(p.numel() for p in sp.setup.model_fn().parameters()) < 1000
    assert {c.space for c in sp.arms.values()} == {"output", "parameter"}
    for arm, control in sp.comparisons():
        if arm.startswith("parameter") and control.startswith("output"):
            assert _differing(sp.arms[arm], sp.arms[control]) == {"space"}


def test_gal_arm_leaves_defaults_out_and_names_bad_h() -> None:
    base = A.setup("smoke").base
    assert A.gal_arm(base, 0.1, normalize="sample", scale=1.0).key() == A.gal_arm(base, 0.1).key()
    assert A.gal_arm(base, 0.1, normalize="batch").gal == GALConfig(ratio=0.1, normalize="batch")
    assert A.gal_arm(base, 0.1, lr=0.3).lr == 0.3
    with pytest.raises(ValueError, match="h must be one of"):
        A.gal_arm(base, 0.1, "sgd")


def test_profiles_size_the_setup() -> None:
    smoke, default = A.setup("smoke"), A.setup("default")
    assert len(smoke.seeds) < len(default.seeds) and smoke.base.epochs < default.base.epochs
    assert len(smoke.data.x_train) < len(default.data.x_train)
    assert len(A.setup("full").seeds) > len(default.seeds)


# -- verdicts and summaries on synthetic finals ---------------------------------------------------
def _finals(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for arm, vs in values.items():
        for seed, v in enumerate(vs):
            rows.append({"arm": arm, "seed": seed, "test_loss": v, "test_error": 10 * v, "weights_hash": f"{arm}-{seed}",
                         "diverged": float(v > 5), "accept_rate_mean": 1.0})
    return pd.DataFrame(rows)


def _study(arms: list[str]) -> A.Study:
    base = A.setup("smoke").base
    return A.Study("t", "?", {a: replace(base, lr=0.01 * (i + 1)) for i, a in enumerate(arms)}, arms[0], A.setup("smoke"))


def test_verdicts_cover_every_comparison_on_both_metrics() -> None:
    rng = np.random.default_rng(0)
    ctrl = list(1 + 0.01 * rng.standard_normal(6))
    finals = _finals({"c": ctrl, "worse": list(np.add(ctrl, 1 + 0.01 * rng.standard_normal(6))), "same": ctrl})
    same = finals["arm"] == "same"
    finals.loc[same, "weights_hash"] = finals.loc[finals["arm"] == "c", "weights_hash"].to_numpy()  # bit-identical runs
    v = A.verdicts(_study(["c", "worse", "same"]), finals)
    assert len(v) == 2 * 2 and set(v["metric"]) == {"test_loss", "test_error"}
    got = v.set_index(["arm", "metric"])["verdict"]
    assert got[("worse", "test_loss")] == "worse" and got[("same", "test_error")] == "identical"
    c = finals[finals["arm"] == "c"].sort_values("seed")
    want = float(margins.margin_test_loss(c["test_error"], c["test_loss"], A.MARGIN_ERROR))
    assert v.loc[v["metric"] == "test_loss", "margin"].iloc[0] == pytest.approx(want, nan_ok=True)
    assert (v.loc[v["metric"] == "test_error", "margin"] == A.MARGIN_ERROR).all()
    assert v["setting"].iloc[0] == "worse vs c"


def test_largest_equivalent_ratio() -> None:
    rows = []
    for r, verdict in ((0.001, "identical"), (0.01, "equivalent"), (0.03, "inconclusive"), (0.1, "equivalent")):
        rows.append({"arm": A.label(r, "frozen"), "control": "standard", "metric": "test_loss", "verdict": verdict})
    assert ab_text._largest_equivalent(pd.DataFrame(rows)) == 0.01
    rows[0]["verdict"] = "worse"
    assert ab_text._largest_equivalent(pd.DataFrame(rows)) == 0.0


def test_results_view_and_summary_frame() -> None:
    finals = _finals({"standard": [1.0, 1.1, 0.9], "r=0.1 | frozen": [1.0, 9.0, 1.2]})
    view = A.results_view(finals)
    assert view.loc["r=0.1 | frozen", "diverged"] == "1/3"
    assert view.loc["r=0.1 | frozen", "test NLL (median)"] == pytest.approx(1.2)
    st = _study(["standard", "r=0.1 | frozen"])
    summary = A.summary_frame({"dose": (finals, A.verdicts(st, finals))})
    for col in ("study", "setting", "metric", "mean_diff", "low", "high", "mde", "margin", "verdict", "seeds_needed",
                "outputs", "diverged"):
        assert col in summary.columns
    assert set(summary["verdict"]) <= {"better", "worse", "equivalent", "inconclusive", "identical"}
    assert (summary["outputs"] == 10).all()


# -- end to end ---------------------------------------------------------------------------------
def test_a_tiny_study_runs_traced_and_plain_arms(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GALCORE_RESULTS", str(tmp_path))
    s = A.setup("smoke")
    s = replace(s, data=replace(s.data, x_train=s.data.x_train[:96], y_train=s.data.y_train[:96]),
                base=replace(s.base, epochs=1), seeds=(0, 1), model_fn=lambda: MLP(64, 10, hidden=(8,)))
    arms = {"standard": s.base, "r=0.1 | frozen": A.gal_arm(s.base, 0.1, "frozen"),
            "parameter": A.gal_arm(s.base, 0.1, hidden=(8,), space="parameter")}
    st = A.Study("tiny", "?", arms, "standard", s)
    finals, _ = A.run_study(st, cache=True, progress=False)
    assert set(finals["arm"]) == set(arms) and len(finals) == 6
    assert finals["diverged"].notna().all()
    traced = finals[finals["arm"] == "r=0.1 | frozen"]
    assert (traced["pert_ratio_init"] > 0).all() and (traced["h_drift"] == 0).all()
    plain = finals[finals["arm"] == "parameter"]
    assert plain["pert_ratio_init"].isna().all()
    assert ((plain["rejected_rate"] >= 0) & (plain["rejected_rate"] <= 1)).all() and (plain["fallback_rate"] == 0).all()
    again, _ = A.run_study(st, cache=True, progress=False)  # from the cache: the same numbers
    pd.testing.assert_series_equal(again["test_loss"], finals["test_loss"])


def test_ray_table_rises_only_for_a_large_ratio() -> None:
    torch.manual_seed(0)
    s = A.setup("smoke")
    table = A.ray_table({"initial": s.model_fn()}, s.data, ratios=(0.1, 1.0, 3.0)).set_index("ratio r")
    assert table.loc[0.1, "t with a rise"].startswith("0/") and np.isnan(table.loc[0.1, "smallest such t"])
    assert table.loc[1.0, "t with a rise"].startswith("0/")
    assert not table.loc[3.0, "t with a rise"].startswith("0/")


def test_accept_text_does_not_compare_arms_that_both_diverged() -> None:
    arms = ["lr=1 | decrease", "lr=1 | always", "lr=2 | decrease", "lr=2 | always"]
    finals = pd.DataFrame({
        "arm": [a for a in arms for _ in range(2)],
        "rejected_rate": [0.1, 0.2, 0.0, 0.0, 0.3, 0.1, 0.0, 0.0],
        "fallback_rate": 0.0,
        "diverged": [True, True, True, True, False, False, False, True],
    })
    row = {"metric": "test_error", "verdict": "equivalent", "mean_diff": 0.0, "low": 0.0, "high": 0.0, "mde": 0.0}
    verdicts = pd.DataFrame([{**row, "arm": "lr=1 | always", "control": "lr=1 | decrease"},
                             {**row, "arm": "lr=2 | always", "control": "lr=2 | decrease"}])
    text = A.accept_text(finals, verdicts)
    assert "lr=1 | always: both arms diverged on every seed" in text
    assert "lr=2 | always: equivalent (+0 [+0, +0] points, mde 0)" in text  # one seed of one arm did not diverge
    assert "lr=1 | decrease (up to 0.2 of the steps; faults up to 0; diverged 2/2)" in text
