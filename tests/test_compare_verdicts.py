"""compare's verdict columns: Holm within a study, the TOST bound, no spread, resolution,
diverged seeds and arms that are the same computation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from galcore.experiments.harness.compare import COMPARE_COLUMNS, compare
from galcore.experiments.harness.stats import holm


def _finals(values: dict[str, list[float]], hashes: dict[str, list[str]] | None = None, n: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    control = 5.0 + rng.normal(0.0, 0.3, size=n)
    rows = [{"arm": "standard", "seed": s, "m": control[s], "weights_hash": f"std{s}"} for s in range(n)]
    for arm, d in values.items():
        hs = (hashes or {}).get(arm, [f"{arm}{s}" for s in range(n)])
        rows += [{"arm": arm, "seed": s, "m": control[s] + v, "weights_hash": hs[s]} for s, v in enumerate(d)]
    return pd.DataFrame(rows)


def test_compare_columns_holm_and_same_computation() -> None:
    rng = np.random.default_rng(1)
    shift = list(0.25 + rng.normal(0, 0.2, size=8))
    finals = _finals({"gal": shift, "frozen": shift, "flat": [0.0] * 8, "noise": list(rng.normal(0, 0.2, size=8))},
                     {"frozen": [f"gal{s}" for s in range(8)]})
    t = compare(finals, "m", margin=0.05, lower_is_better=True).set_index("arm")
    assert list(t.reset_index().columns) == COMPARE_COLUMNS
    # frozen is gal's computation: reported as the same, out of the family, with gal's adjusted p
    assert t.loc["frozen", "same_as"] == "gal" and t.loc["gal", "same_as"] == ""
    assert t.loc["frozen", "p_holm"] == t.loc["gal", "p_holm"] and t.loc["frozen", "verdict"] == t.loc["gal", "verdict"]
    family = [t.loc[a, "p_value"] for a in ("gal", "noise")]  # flat has no spread: no test
    np.testing.assert_allclose([t.loc["gal", "p_holm"], t.loc["noise", "p_holm"]], holm(family))
    assert t.loc["gal", "p_holm"] == pytest.approx(2 * t.loc["gal", "p_value"])  # the smaller of two
    assert t.loc["flat", "verdict"] == "inconclusive" and t.loc["flat", "reason"].startswith("no spread")
    assert math.isnan(t.loc["flat", "mde"]) and math.isnan(t.loc["flat", "tost_bound"])
    assert t.loc["gal", "ci_excludes_0"] and t.loc["gal", "verdict"] == "worse"
    assert 0 < t.loc["gal", "low"] < t.loc["gal", "tost_bound"] < t.loc["gal", "high"]  # the 90% end inside the 95%
    # each group of `study` is its own family; without it the whole call is one
    two = compare(pd.concat([finals.assign(task="a"), finals.assign(task="b")]), "m", margin=0.05,
                  lower_is_better=True, by=["task"], study=["task"]).set_index(["task", "arm"])
    assert two.loc[("b", "gal"), "p_holm"] == pytest.approx(t.loc["gal", "p_holm"])
    one = compare(pd.concat([finals.assign(task="a"), finals.assign(task="b")]), "m", margin=0.05,
                  lower_is_better=True, by=["task"]).set_index(["task", "arm"])
    assert one.loc[("b", "gal"), "p_holm"] == pytest.approx(min(1.0, 4 * t.loc["gal", "p_value"]))
    with pytest.raises(ValueError, match="study"):
        compare(finals, "m", margin=0.05, lower_is_better=True, study=["task"])


def test_compare_resolution_margin_and_diverged() -> None:
    rng = np.random.default_rng(2)
    small = rng.normal(0, 0.01, size=8)
    small -= small.mean()
    finals = _finals({"gal": list(small), "nanarm": [float("nan")] * 2 + list(small[2:])})
    fine = compare(finals, "m", margin=0.08, lower_is_better=True, resolution=0.005).set_index("arm")
    assert fine.loc["gal", "verdict"] == "equivalent" and fine.loc["gal", "tost_bound"] < 0.08
    assert fine.loc["nanarm", "n_diverged"] == 2 and fine.loc["nanarm", "test"] == "wilcoxon"
    assert fine.loc["nanarm", "verdict"] == "inconclusive" and fine.loc["nanarm", "n"] == 8
    coarse = compare(finals, "m", margin=0.08, lower_is_better=True, resolution=100 / 450).set_index("arm")
    assert coarse.loc["gal", "verdict"] == "inconclusive" and "one test sample" in coarse.loc["gal", "reason"]
    none = compare(finals, "m", margin=float("nan"), lower_is_better=True).set_index("arm")
    assert none.loc["gal", "verdict"] == "inconclusive" and math.isnan(none.loc["gal", "margin"])
    with pytest.raises(ValueError, match="resolution"):
        compare(finals, "m", margin=0.08, lower_is_better=True, resolution=-1.0)


def test_nan_weights_that_hash_alike_are_diverged_not_identical() -> None:
    n = 4
    rows = [{"arm": a, "seed": s, "m": float("nan"), "weights_hash": f"nan{s}"} for a in ("standard", "gal") for s in range(n)]
    t = compare(pd.DataFrame(rows), "m", margin=0.08, lower_is_better=True)
    assert t["verdict"].tolist() == ["diverged"]
    ok = pd.DataFrame(rows).assign(m=1.0, weights_finite=False)
    assert compare(ok, "m", margin=0.08, lower_is_better=True)["verdict"].tolist() == ["diverged"]
    assert compare(ok.assign(weights_finite=True), "m", margin=0.08, lower_is_better=True)["verdict"].tolist() == ["identical"]


def test_how_to_read_names_every_verdict_and_decision_column() -> None:
    from galcore.experiments.harness.compare import HOW_TO_READ
    from galcore.experiments.harness.stats import VERDICTS

    for word in (*VERDICTS, "n_diverged", "p_holm", "tost_bound", "ci_excludes_0", "resolution", "reason", "same_as"):
        assert f"`{word}`" in HOW_TO_READ, word
    assert set(COMPARE_COLUMNS) >= {"n_diverged", "p_holm", "tost_bound", "ci_excludes_0", "resolution", "reason", "same_as"}


def test_holm_family_adjusts_over_the_study_and_demotes_lost_verdicts() -> None:
    """Rows of separate compare calls become one Holm family: a p of 0.03 among three tests is
    no longer significant, and an arm repeating another's computation is left out of the family."""
    import pandas as pd

    from galcore.experiments.harness.compare import holm_family

    rows = pd.DataFrame({"arm": ["a", "b", "c", "d"], "p_value": [0.01, 0.03, 0.5, 0.03],
                         "p_holm": [0.01, 0.03, 0.5, 0.03], "verdict": ["better", "worse", "inconclusive", "worse"],
                         "reason": ["", "", "", ""], "same_as": ["", "", "", "b"]})
    out = holm_family(rows)
    assert out["p_holm"].round(6).tolist() == [0.03, 0.06, 0.5, 0.03]
    assert out["verdict"].tolist() == ["better", "inconclusive", "inconclusive", "worse"]
    assert "Holm" in out.loc[1, "reason"]
