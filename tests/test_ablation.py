"""The ablation studies: definitions, summary logic, a tiny end-to-end run."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from galcore.experiments import ablation as A
from galcore.experiments.models import MLP
from galcore.experiments.harness import Data, Setup, TrainConfig


@pytest.fixture(scope="module")
def smoke_studies() -> list[A.Study]:
    studies, _ = A.default_studies("smoke")
    return studies


def _factor_match(key: str, factor: tuple[str, ...]) -> bool:
    return any(key == f or key.startswith(f + ".") for f in factor)


# -- definitions ----------------------------------------------------------------------------
def test_every_group_has_a_study_per_task_and_keys_are_unique(smoke_studies: list[A.Study]) -> None:
    keys = [s.key for s in smoke_studies]
    assert len(keys) == len(set(keys))
    for group, _, _ in A.GROUPS:
        tasks = {s.task for s in smoke_studies if s.group == group}
        assert tasks == {"classification", "regression"}, group
    assert [s.group for s in smoke_studies] == sorted((s.group for s in smoke_studies), key=[g for g, _, _ in A.GROUPS].index)


def test_controls_present_and_arms_differ_only_in_the_factor(smoke_studies: list[A.Study]) -> None:
    for st in smoke_studies:
        assert st.control in st.arms, st.key
        assert len(st.arms) >= 2, st.key
        if st.reference is not None:
            assert st.reference[0] not in st.arms
        flat = {label: A.flatten_config(cfg) for label, cfg in st.arms.items()}
        for (a, fa), (b, fb) in itertools.combinations(flat.items(), 2):
            assert fa.keys() == fb.keys()
            if st.arms[a].gal is None or st.arms[b].gal is None:
                # the standard method is GAL with r = 0; GAL's other options do not apply to it
                assert "gal.ratio" in st.factor
                fa = {k: v for k, v in fa.items() if not k.startswith("gal.") or k == "gal.ratio"}
                fb = {k: v for k, v in fb.items() if not k.startswith("gal.") or k == "gal.ratio"}
            differ = {k for k in fa if fa[k] != fb[k]}
            assert differ, f"{st.key}: arms {a!r} and {b!r} are the same config"
            assert all(_factor_match(k, st.factor) for k in differ), f"{st.key}: {a!r} vs {b!r} differ in {differ}"


def test_the_planned_settings_are_all_there(smoke_studies: list[A.Study]) -> None:
    by_key = {s.key: s for s in smoke_studies}
    for task in ("classification", "regression"):
        ratio = by_key[f"ratio:{task}"]
        assert [A.flatten_config(c)["gal.ratio"] for c in ratio.arms.values()] == [0.0, 1e-4, 1e-3, 1e-2, 1e-1, 0.3]
        assert ratio.arms[ratio.control].gal is None  # r = 0 is the standard method itself
        assert [A.flatten_config(c)["gal.scale"] for c in by_key[f"scale:{task}"].arms.values()] == [0.1, 1.0, 10.0]
        h = by_key[f"h:{task}"]
        flat_h = [A.flatten_config(c) for c in h.arms.values()]
        assert [(f["gal.activation"], f["gal.hidden"], f["gal.frozen_h"]) for f in flat_h] == [
            (None, None, False), ("relu", None, False), (None, (), False), (None, None, True)
        ]
        assert A.flatten_config(h.arms[h.control])["gal.frozen_h"] is True
        assert {A.flatten_config(c)["gal.accept"] for c in by_key[f"accept:{task}"].arms.values()} == {"decrease", "always"}
        assert {A.flatten_config(c)["gal.first_order"] for c in by_key[f"first_order:{task}"].arms.values()} == {"sum", "mean"}
        space = by_key[f"space:{task}"]
        assert {c.space for c in space.arms.values()} == {"output", "parameter"}
        assert sum(p.numel() for p in space.setup.model_fn().parameters()) < 1000  # ParamGAL is affordable
        opts = {s.arms["standard"].optimizer for s in smoke_studies if s.group == "optimizers" and s.task == task}
        assert opts == {"sgd", "momentum", "adam", "rmsprop", "lookahead"}
        assert {s.metric for s in smoke_studies if s.group == "cost" and s.task == task} == {"step_ms", "step_peak_mb"}


def test_shared_settings_share_the_run_cache(smoke_studies: list[A.Study]) -> None:
    by_key = {s.key: s for s in smoke_studies}
    t = "classification"
    release = by_key[f"h:{t}"].arms["linear stack (release)"]
    assert release.key() == by_key[f"scale:{t}"].arms["scale=1"].key() == by_key[f"accept:{t}"].arms["decrease (release)"].key()
    assert release.key() == by_key[f"first_order:{t}"].arms["sum (exact)"].key()
    assert by_key[f"ratio:{t}"].arms["r=0 (standard)"].key() == by_key[f"optimizer-momentum:{t}"].arms["standard"].key()
    assert A.canonical_gal({"ratio": 1e-3, "scale": 1.0, "accept": "decrease"}) == {"ratio": 1e-3}
    assert A.canonical_gal({"ratio": 0.1, "hidden": [64, 16]}) == {"ratio": 0.1, "hidden": (64, 16)}


def test_default_profile_uses_at_least_five_seeds() -> None:
    for task in ("classification", "regression"):
        assert A.BUDGET["default"][task]["seeds"] >= 5
        assert len(A.load_setup(task, "default").setup.seeds) >= 5


# -- summary logic on synthetic finals --------------------------------------------------------
def _finals(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"arm": a, "seed": i, "m": v} for a, vs in values.items() for i, v in enumerate(vs)])


BASE = [10.0, 11.0, 9.5, 10.5, 10.2, 9.8]
JITTER = [0.05, -0.04, 0.02, -0.01, 0.03, -0.05]


def _summ(values: dict[str, list[float]], control: str = "ctrl", goal: str = "min", meaning: dict[str, str] | None = None) -> dict:
    return A.summarize_finals(
        _finals(values), arms=list(values), control=control, metric="m", goal=goal, title="factor x",
        metric_label="error", unit="pts", meaning=meaning or {"better": "it helps", "none": "it does not matter", "worse": "it hurts"},
    )


def test_best_is_picked_and_a_significant_improvement_is_said_so() -> None:
    better = [b - 1 + j for b, j in zip(BASE, JITTER, strict=True)]
    noisy = [b + 0.5 * (-1) ** i for i, b in enumerate(BASE)]
    row = _summ({"ctrl": BASE, "good": better, "noisy": noisy})
    assert row["best"] == "good" and row["compared"] == "good"
    assert row["mean_diff"] == pytest.approx(np.mean(JITTER) - 1)
    assert row["high"] < 0 and row["significant"] and row["outcome"] == "better"
    assert row["n"] == 6
    s = row["sentence"]
    assert "good was best" in s and "lower error than ctrl" in s and s.endswith("it helps.")
    assert "not significant" not in s


def test_no_significant_effect_is_said_plainly() -> None:
    noisy = [b + 0.6 * (-1) ** i - 0.05 for i, b in enumerate(BASE)]
    row = _summ({"ctrl": BASE, "alt": noisy})
    assert row["best"] == "alt" and row["low"] < 0 < row["high"]
    assert row["outcome"] == "none"
    assert "not significant" in row["sentence"] and row["sentence"].endswith("it does not matter.")


def test_control_best_reports_the_closest_alternative() -> None:
    worse = [b + 2 + j for b, j in zip(BASE, JITTER, strict=True)]
    worst = [b + 5 for b in BASE]
    row = _summ({"worst": worst, "ctrl": BASE, "worse": worse})
    assert row["best"] == "ctrl" and row["compared"] == "worse"
    assert row["low"] > 0 and row["outcome"] == "worse"
    assert "the control ctrl was best" in row["sentence"] and "it hurts. Also significantly worse: worst (+5 pts)." in row["sentence"]
    # a tie goes to the control
    tie = _summ({"alt": BASE, "ctrl": BASE})
    assert tie["best"] == "ctrl" and tie["outcome"] == "identical" and "exactly the same error" in tie["sentence"]


def test_significantly_worse_settings_are_named_even_when_the_best_is_not_significant() -> None:
    noisy = [b + 0.6 * (-1) ** i - 0.05 for i, b in enumerate(BASE)]
    broken = [b + 30 + j for b, j in zip(BASE, JITTER, strict=True)]
    row = _summ({"ctrl": BASE, "alt": noisy, "broken": broken})
    assert row["best"] == "alt" and row["outcome"] == "none"
    assert row["significantly_worse"].startswith("broken (+30") and row["significantly_worse"].endswith(" pts)")
    assert "Significantly worse than ctrl: broken (+30" in row["sentence"]
    assert "Significantly worse" not in _summ({"ctrl": BASE, "alt": noisy})["sentence"]


def test_goal_max_flips_the_direction() -> None:
    higher = [b + 1 + j for b, j in zip(BASE, JITTER, strict=True)]
    row = _summ({"ctrl": BASE, "hi": higher}, goal="max")
    assert row["best"] == "hi" and row["outcome"] == "better" and "higher error" in row["sentence"]
    row = _summ({"ctrl": BASE, "hi": higher}, goal="min")
    assert row["best"] == "ctrl" and row["outcome"] == "worse"


def test_bonferroni_note_when_the_picked_best_is_only_nominally_significant() -> None:
    # one modest improvement among five alternatives: p < 0.05 but p * 5 > 0.05
    diffs = np.array([-0.30, -0.10, -0.25, -0.05, -0.20, 0.02])
    arms = {"ctrl": BASE, "best": list(np.array(BASE) + diffs)}
    for i in range(4):
        arms[f"other{i}"] = [b + 1 for b in BASE]
    row = _summ(arms)
    assert row["best"] == "best" and row["significant"] and 0.05 / 5 < row["p_value"] < 0.05
    assert row["p_adjusted"] == pytest.approx(row["p_value"] * 5)
    assert "Bonferroni" in row["sentence"]


def test_summary_rejects_a_missing_control() -> None:
    with pytest.raises(ValueError, match="control"):
        A.summarize_finals(_finals({"a": BASE, "b": BASE}), arms=["a", "b"], control="c", metric="m")


# -- a tiny end-to-end study ----------------------------------------------------------------
def _tiny_study(tmp_data_name: str = "tinydigits") -> A.Study:
    from galcore.experiments.datasets import digits

    full = digits()
    data = Data(tmp_data_name, full.x_train[:96], full.y_train[:96], full.x_test[:64], full.y_test[:64], 10)
    base = TrainConfig(model="mlp64-8-10", data=data.name, epochs=1, batch_size=32, lr=0.05)
    setup = Setup(data=data, model_fn=lambda: MLP(64, 10, hidden=(8,)), base=base, seeds=(0, 1, 2))
    return A.Study(
        "accept:test", "accept", "acceptance rule", ("gal.accept",), "classification",
        {"decrease": replace(base, gal={"ratio": 0.1}), "always": replace(base, gal={"ratio": 0.1, "accept": "always"})},
        "decrease", setup, "test_error", reference=("standard (ref.)", base),
    )


def test_tiny_study_end_to_end(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALCORE_RESULTS", str(tmp_path))
    st = _tiny_study()
    finals = A.run_study(st)
    assert len(finals) == 3 * 3 and set(finals["arm"]) == {"decrease", "always", "standard (ref.)"}
    assert finals["test_error"].between(0, 100).all()
    assert len(list((tmp_path / "cache").glob("*.json"))) == 9
    again = A.run_study(st)  # from the cache: identical
    pd.testing.assert_frame_equal(finals.drop(columns="seconds"), again.drop(columns="seconds"))
    row = A.summarize(st, finals)
    assert row["study"] == "accept:test" and row["n"] == 3 and row["best"] in st.arms
    assert isinstance(row["sentence"], str) and row["sentence"].startswith("Acceptance rule (classification)")
    table = A.arm_table(st, finals)
    assert list(table["arm"]) == ["decrease", "always", "standard (ref.)"]
    assert table.loc[table["arm"] == "decrease", "diff"].item() == 0.0
    fig = A.plot_group("accept", [st], {st.key: finals})
    assert len(fig.axes) == 2
    summary = A.summary_table([st], {st.key: finals})
    assert list(summary.columns[:9]) == ["study", "factor", "best", "mean_diff", "low", "high", "p_value", "n", "sentence"]


def test_run_cached_accepts_a_dtype_in_the_gal_options(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALCORE_RESULTS", str(tmp_path))
    st = _tiny_study()
    cfg = replace(st.arms["always"], gal={"ratio": 0.1, "compute_dtype": torch.float64}, seed=0)
    res = A.run_cached(cfg, st.setup.data, st.setup.model_fn)
    files = list((tmp_path / "cache").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["config"]["gal"]["compute_dtype"] == "torch.float64"
    assert A.run_cached(cfg, st.setup.data, st.setup.model_fn).final == res.final


def test_pending_jobs_lists_each_config_once(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALCORE_RESULTS", str(tmp_path))
    st = _tiny_study()
    twin = replace(st, key="accept:twin")
    assert len(A.pending_jobs([st, twin])) == 9


def test_measure_cost_times_both_arms(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALCORE_RESULTS", str(tmp_path))
    st = _tiny_study()
    cost = A.Study("cost-step_ms:test", "cost", "time per step", ("gal.ratio",), "classification",
                   {"standard": st.setup.base, "GAL": st.arms["decrease"]}, "standard", replace(st.setup, seeds=(0, 1)),
                   "step_ms", kind="cost")
    rows = A.measure_cost(cost, steps=4, warmup=1, block=2)
    assert len(rows) == 4 and set(rows["arm"]) == {"standard", "GAL"}
    assert (rows["step_ms"] > 0).all()
    per_arm = rows.groupby("arm")["persistent_mb"].first()
    assert per_arm["GAL"] > per_arm["standard"]  # h and its gradients live between steps
    assert A.summarize(cost, rows)["n"] == 2


def test_worker_runs_only_configs_it_has_unchanged(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALCORE_RESULTS", str(tmp_path))
    st = _tiny_study()
    monkeypatch.setitem(A._WORKER, "studies", {st.key: st})
    cfg = replace(st.arms["always"], seed=0)
    assert not A._worker_run(st.key, "always", 0, "not-the-key")
    assert not A._worker_run("missing:study", "always", 0, cfg.key())
    assert not list((tmp_path / "cache").glob("*.json"))
    assert A._worker_run(st.key, "always", 0, cfg.key())
    assert len(A.pending_jobs([st])) == 3 * 3 - 1
