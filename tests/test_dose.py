"""galcore.experiments.ablations.dose: the dose-response against the placebo (pooled slopes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from galcore.experiments.ablations import dose


def _finals(slope_gal: float, slope_pl: float, seeds: int = 12, noise: float = 0.01) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for s in range(seeds):
        base = 1.0 + 0.1 * rng.standard_normal()
        rows.append({"arm": "standard", "seed": s, "test_loss": base})
        for r in dose.DOSE_RATIOS:
            for kind, b in (("gal", slope_gal), ("placebo", slope_pl)):
                rows.append({"arm": f"r={r:g} | {kind}", "seed": s,
                             "test_loss": base + 0.5 + b * np.log10(r) + noise * rng.standard_normal()})
    return pd.DataFrame(rows)


def test_slopes_recover_known_slopes_and_their_difference():
    t = dose.slopes(_finals(0.2, 0.05)).set_index("term")
    assert t.loc["gal", "slope"] == pytest.approx(0.2, abs=0.01) and t.loc["placebo", "slope"] == pytest.approx(0.05, abs=0.01)
    d = t.loc["gal - placebo"]
    assert d["slope"] == pytest.approx(0.15, abs=0.01) and d["low"] > 0 and d["p_value"] < 1e-3
    assert d["runs"] == 12 * 10 and d["seeds"] == 12 and t.loc["gal", "runs"] == 60
    assert "excludes 0" in dose.dose_text(t.reset_index())
    same = dose.slopes(_finals(0.1, 0.1)).set_index("term").loc["gal - placebo"]
    assert same["low"] < 0 < same["high"]
    assert "includes 0" in dose.dose_text(dose.slopes(_finals(0.1, 0.1)))
    assert dose.slopes(_finals(0.1, 0.1, seeds=1)).empty  # one seed: no interval
    bad = _finals(0.2, 0.05)
    bad.loc[(bad["arm"] == "r=0.1 | gal") & (bad["seed"] == 3), "test_loss"] = float("inf")  # a diverged run
    t2 = dose.slopes(bad).set_index("term")
    assert t2.loc["gal", "diverged_excluded"] == 1 and t2.loc["gal", "runs"] == 59
    assert t2.loc["gal", "slope"] == pytest.approx(0.2, abs=0.01) and "1 diverged runs left out" in dose.dose_text(t2.reset_index())


def test_dose_study_arms_pair_gal_with_its_placebo():
    s = dose.dose_study("smoke")
    assert next(iter(s.arms)) == "standard" and len(s.arms) == 1 + 2 * len(dose.DOSE_RATIOS)
    for r in dose.DOSE_RATIOS:
        g, p = s.arms[f"r={r:g} | gal"], s.arms[f"r={r:g} | placebo"]
        assert g.gal.ratio == p.gal.ratio == r and p.placebo and not g.placebo and g.h_optimizer == "adam" and p.h_optimizer is None
    assert len(s.setup.seeds) == dose.DOSE_SEEDS["smoke"]
    arms = dose.bound_study_arms("smoke")
    assert len(arms) == 12 and arms["r=0.1 | mean | own SGD"].h_optimizer == "momentum"
