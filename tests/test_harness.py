"""The harness: what the cache keys on, the h-seeding rule, h's optimizer, epoch selection on
validation data, bit-identical arms and the comparison table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from galcore import GAL, GALConfig
from galcore.experiments import harness as H
from galcore.experiments.harness import Data, TrainConfig, compare, hashing, run, run_arms
from galcore.experiments.harness.models import MLP
from galcore.experiments.harness.stats import VERDICTS


def _data(seed: int = 0, n: int = 96, d: int = 16, val: bool = False) -> Data:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    extra = {"x_val": x[80:], "y_val": y[80:]} if val else {}
    return Data(f"toy{seed}", x[:64], y[:64], x[64:80], y[64:80], num_outputs=4, **extra)


BASE = TrainConfig(model="net", data="toy", epochs=1, batch_size=16, lr=0.1)


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GALCORE_RESULTS", str(tmp_path))
    return tmp_path


def test_same_names_with_other_models_or_data_are_other_runs(results: Path) -> None:
    linear = run(BASE, _data(0), lambda: nn.Linear(16, 4), cache=True)
    wide = run(BASE, _data(0), lambda: MLP(16, 4, hidden=(512,)), cache=True)
    other = run(BASE, _data(1), lambda: nn.Linear(16, 4), cache=True)
    hashes = {linear.weights_hash, wide.weights_hash, other.weights_hash}
    losses = {linear.final["test_loss"], wide.final["test_loss"], other.final["test_loss"]}
    assert len(hashes) == 3 and len(losses) == 3
    assert len(list((results / "cache").glob("*.json"))) == 3


def test_cache_hits_when_nothing_changed_and_is_off_by_default(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, model_fn = _data(0), lambda: MLP(16, 4, hidden=(8,), dropout=0.1)
    first = run(BASE, data, model_fn)  # cache off: nothing written
    assert not list((results / "cache").glob("*.json"))
    stored = run(BASE, data, model_fn, cache=True)
    assert stored.weights_hash == first.weights_hash

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained although the run was cached")

    monkeypatch.setattr(H.train, "fit", no_training)
    hit = run(BASE, data, model_fn, cache=True)
    assert hit.final == stored.final and hit.weights_hash == stored.weights_hash
    with pytest.raises(AssertionError, match="trained although"):  # same weights, another dropout p
        run(BASE, data, lambda: MLP(16, 4, hidden=(8,), dropout=0.5), cache=True)


def test_cache_key_covers_config_data_model_and_training_code(results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data(0)
    torch.manual_seed(0)
    model = MLP(16, 4, hidden=(8,))
    key = H.cache_key(BASE, data, model)
    assert H.cache_key(BASE, _data(0), model) == key  # same tensors, same key
    assert H.cache_key(dataclasses.replace(BASE, lr=0.2), data, model) != key
    assert H.cache_key(BASE, dataclasses.replace(data, y_scale=2.0), model) != key
    changed = _data(0)
    changed.x_train[0, 0] += 1.0
    assert H.cache_key(BASE, changed, model) != key
    torch.manual_seed(1)
    assert H.cache_key(BASE, data, MLP(16, 4, hidden=(8,))) != key  # other initial weights
    # the training code: the core, the harness and optim; not plots, reports or notebook modules
    names = {p.relative_to(Path(H.__file__).parents[3]).as_posix() for p in H.code_files()}
    assert {"galcore/gal.py", "galcore/config.py", "galcore/build.py", "galcore/experiments/harness/config.py",
            "galcore/experiments/harness/train.py", "galcore/experiments/harness/optim.py"} <= names
    assert not names & {"galcore/experiments/harness/plots.py", "galcore/experiments/main/report.py", "galcore/experiments/harness/results.py"}
    # editing a hashed file changes the key; the model's class source is hashed too
    source = tmp_path / "decides_training.py"
    source.write_text("x = 1\n")
    monkeypatch.setattr(hashing, "code_files", lambda: [source])
    hashing._files_digest.cache_clear()
    try:
        before = H.cache_key(BASE, data, model)
        source.write_text("x = 2\n")
        hashing._files_digest.cache_clear()
        assert H.cache_key(BASE, data, model) != before
    finally:
        hashing._files_digest.cache_clear()

    class Twin(MLP):
        pass

    twin = Twin(16, 4, hidden=(8,))
    twin.load_state_dict(model.state_dict())
    assert H.code_fingerprint(twin) != H.code_fingerprint(model)


def test_data_fingerprint_and_validation_split() -> None:
    a, b = _data(0), _data(0)
    assert a.fingerprint() == b.fingerprint() and a.fingerprint() != _data(1).fingerprint()
    assert dataclasses.replace(a, name="renamed").fingerprint() == a.fingerprint()
    assert _data(0, val=True).fingerprint() != a.fingerprint()
    with pytest.raises(ValueError, match="x_val and y_val"):
        dataclasses.replace(a, x_val=a.x_test)
    with pytest.raises(ValueError, match="y_val"):
        dataclasses.replace(a, x_val=a.x_test, y_val=a.y_test[:3])


def test_ratio_zero_is_identical_to_standard_through_the_harness() -> None:
    data = _data(0)
    model_fn = lambda: MLP(16, 4, hidden=(16,), dropout=0.1)
    base = dataclasses.replace(BASE, epochs=2)
    arms = {"standard": base, "gal0": dataclasses.replace(base, gal={"ratio": 0.0}),
            "gal": dataclasses.replace(base, gal={"ratio": 0.3, "accept": "always"})}
    finals, hist = run_arms(arms, [0, 1, 2], data, model_fn, progress=False)
    by = finals.set_index(["arm", "seed"])
    for seed in (0, 1, 2):
        assert by.loc[("gal0", seed), "weights_hash"] == by.loc[("standard", seed), "weights_hash"]
        assert by.loc[("gal0", seed), "train_loss"] == by.loc[("standard", seed), "train_loss"]
        assert by.loc[("gal", seed), "weights_hash"] != by.loc[("standard", seed), "weights_hash"]
    table = compare(finals, "test_loss", margin=0.05, lower_is_better=True).set_index("arm")
    assert table.loc["gal0", "verdict"] == "identical" and table.loc["gal0", "mean_diff"] == 0
    assert table.loc["gal", "verdict"] in VERDICTS and table.loc["gal", "verdict"] != "identical"
    assert set(hist["arm"]) == set(arms) and hist.groupby(["arm", "seed"]).size().eq(2).all()


def test_h_is_seeded_by_one_rule() -> None:
    torch.manual_seed(0)
    model = MLP(16, 4, hidden=(8,))
    state = torch.random.get_rng_state()
    gal = H.build_gal(dataclasses.replace(BASE, seed=3, gal={"ratio": 0.1}), model, 4, torch.device("cpu"))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global stream is untouched
    ref = GAL(4, 0.1, seed=10_003)
    assert all(torch.equal(p, q) for p, q in zip(gal.h.parameters(), ref.h.parameters(), strict=True))
    own = H.build_gal(dataclasses.replace(BASE, seed=3, gal={"ratio": 0.1, "seed": 7}), model, 4, torch.device("cpu"))
    ref7 = GAL(4, 0.1, seed=7)
    assert all(torch.equal(p, q) for p, q in zip(own.h.parameters(), ref7.h.parameters(), strict=True))


def test_how_h_learns(results: Path) -> None:
    model = MLP(16, 4, hidden=(8,))
    cpu = torch.device("cpu")
    joined = dataclasses.replace(BASE, gal={"ratio": 0.1})
    opt, h_opt = H.optimizers(joined, model, H.build_gal(joined, model, 4, cpu))
    assert h_opt is None and len(opt.param_groups) == 2
    adam = dataclasses.replace(joined, h_optimizer="adam", h_lr=1e-3)
    opt, h_opt = H.optimizers(adam, model, H.build_gal(adam, model, 4, cpu))
    assert isinstance(h_opt, torch.optim.Adam) and h_opt.param_groups[0]["lr"] == 1e-3 and len(opt.param_groups) == 1
    legacy = dataclasses.replace(joined, h_lr=0.01)
    _, h_opt = H.optimizers(legacy, model, H.build_gal(legacy, model, 4, cpu))
    assert isinstance(h_opt, torch.optim.SGD) and h_opt.param_groups[0]["momentum"] == 0.9
    frozen = dataclasses.replace(joined, frozen_h=True)
    gal = H.build_gal(frozen, model, 4, cpu)
    assert not any(p.requires_grad for p in gal.h.parameters())
    assert H.optimizers(frozen, model, gal)[1] is None and len(H.optimizers(frozen, model, gal)[0].param_groups) == 1
    # frozen_h is a field of the arm only, not a GAL option
    data, model_fn = _data(0), lambda: MLP(16, 4, hidden=(8,))
    a = run(dataclasses.replace(frozen, gal={"ratio": 0.3, "accept": "always"}), data, model_fn)
    trained = run(dataclasses.replace(joined, gal={"ratio": 0.3, "accept": "always"}, h_optimizer="adam", h_lr=0.1), data, model_fn)
    assert a.weights_hash != trained.weights_hash
    with pytest.raises(ValueError, match="unknown GAL option"):
        dataclasses.replace(joined, gal={"ratio": 0.3, "frozen_h": True})


def test_select_reports_the_best_validation_epoch() -> None:
    data = _data(0, val=True)
    cfg = dataclasses.replace(BASE, epochs=4, lr=0.5, select="val_loss")
    res = run(cfg, data, lambda: MLP(16, 4, hidden=(8,)))
    val = [h["val_loss"] for h in res.history]
    best = int(np.argmin(val))
    assert res.final["best_epoch"] == best + 1
    assert res.final["test_loss"] == res.history[best]["test_loss"] and {"val_error", "test_error"} <= set(res.final)
    acc = run(dataclasses.replace(cfg, select="val_accuracy"), data, lambda: MLP(16, 4, hidden=(8,)))
    assert acc.final["val_accuracy"] == max(h["val_accuracy"] for h in acc.history)
    last = run(dataclasses.replace(cfg, select=None), data, lambda: MLP(16, 4, hidden=(8,)))
    assert "best_epoch" not in last.final and last.final["val_loss"] == last.history[-1]["val_loss"]
    with pytest.raises(ValueError, match="select"):
        run(cfg, _data(0), lambda: MLP(16, 4, hidden=(8,)))
    with pytest.raises(ValueError, match="select"):
        dataclasses.replace(cfg, select="test_loss")


def test_config_errors_name_the_argument() -> None:
    for field, value in [("h_optimizer", "newton"), ("h_lr", -1.0), ("loss", "hinge"), ("task", "ranking"), ("space", "weight")]:
        with pytest.raises(ValueError, match=field):
            dataclasses.replace(BASE, **{field: value})
    with pytest.raises(TypeError, match="frozen_h"):
        dataclasses.replace(BASE, frozen_h="yes")


def test_a_misspelt_gal_option_fails_when_the_arm_is_built_before_any_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """GALConfig's own message, raised by TrainConfig itself: no model is built, nothing trains."""
    built = []
    model_fn = lambda: built.append(1) or MLP(16, 4, hidden=(8,))
    with pytest.raises(ValueError, match=r"unknown GAL option\(s\) \['ration'\]"):
        arms = {"standard": BASE, "gal": dataclasses.replace(BASE, gal={"ration": 1e-3})}
        run_arms(arms, [0], _data(0), model_fn, progress=False)
    assert built == []
    with pytest.raises(ValueError, match="ratio"):
        TrainConfig(model="net", data="toy", gal={"ratio": -1.0})
    cfg = dataclasses.replace(BASE, gal={"ratio": 0.1})
    assert isinstance(cfg.gal, GALConfig) and cfg.gal.ratio == 0.1
    assert cfg == dataclasses.replace(BASE, gal=GALConfig(ratio=0.1)) and cfg.key() == dataclasses.replace(BASE, gal=GALConfig(ratio=0.1)).key()
    assert cfg.to_dict()["gal"]["compute_dtype"] == "float64"  # plain values, JSON-ready


def _finals(diffs: dict[str, list[float]], hashes: dict[str, list[str]] | None = None) -> pd.DataFrame:
    rows = [{"arm": "standard", "seed": s, "m": 10.0, "weights_hash": f"s{s}"} for s in range(5)]
    for arm, d in diffs.items():
        hs = (hashes or {}).get(arm, [f"{arm}{s}" for s in range(5)])
        rows += [{"arm": arm, "seed": s, "m": 10.0 + v, "weights_hash": hs[s]} for s, v in enumerate(d)]
    return pd.DataFrame(rows)


def test_compare_builds_one_row_per_treatment_with_a_verdict() -> None:
    finals = _finals({
        "lower": [-1.0, -1.1, -0.9, -1.05, -0.95],
        "same": [0.001, -0.001, 0.0, 0.002, -0.002],
        "noisy": [2.0, -2.5, 1.5, -1.0, 0.5],
        "twin": [0.0] * 5,
    }, {"twin": [f"s{s}" for s in range(5)]})
    table = compare(finals, "m", margin=0.1, lower_is_better=True)
    assert list(table.columns) == H.COMPARE_COLUMNS
    t = table.set_index("arm")
    assert list(t.index) == ["lower", "same", "noisy", "twin"]
    assert dict(t["verdict"]) == {"lower": "better", "same": "equivalent", "noisy": "inconclusive", "twin": "identical"}
    assert t.loc["lower", "mean_diff"] == pytest.approx(-1.0) and (t["n"] == 5).all()
    assert t.loc["noisy", "mde"] > t.loc["same", "mde"] and t.loc["noisy", "seeds_needed"] > 5
    assert (t["margin"] == 0.1).all() and (t["effect"] == 0.1).all()
    flipped = compare(finals, "m", margin=0.1, lower_is_better=False, effect=0.5).set_index("arm")
    assert flipped.loc["lower", "verdict"] == "worse" and (flipped["effect"] == 0.5).all()
    grouped = compare(pd.concat([finals.assign(task="a"), finals.assign(task="b")]), "m", margin=0.1,
                      lower_is_better=True, by=["task"])
    assert list(grouped.columns[:2]) == ["task", "arm"] and len(grouped) == 8
    with pytest.raises(ValueError, match="margin"):
        compare(finals, "m", margin=0.0, lower_is_better=True)
    with pytest.raises(ValueError, match="control"):
        compare(finals, "m", control="nobody", margin=0.1, lower_is_better=True)


class _CountingHook(H.StepHook):
    key = "count"

    def __init__(self) -> None:
        self.steps = self.epochs = 0

    def after_step(self, model: nn.Module, xb: torch.Tensor, out: torch.Tensor, lr: float) -> None:
        self.steps += 1

    def end_epoch(self, row: dict[str, float], records: list) -> None:
        self.epochs += 1
        row["hooked_steps"] = float(self.steps)

    def end_run(self, final: dict[str, float]) -> None:
        final["hooked"] = 1.0


def test_a_step_hook_watches_without_changing_the_run(results: Path) -> None:
    cfg = dataclasses.replace(BASE, epochs=2, gal={"ratio": 0.1})
    model_fn = lambda: MLP(16, 4, hidden=(8,))
    hook = _CountingHook()
    hooked = run(cfg, _data(0), model_fn, hook=hook, cache=True)
    plain = run(cfg, _data(0), model_fn, cache=True)
    assert hooked.weights_hash == plain.weights_hash
    assert (hook.steps, hook.epochs) == (8, 2) and [h["hooked_steps"] for h in hooked.history] == [4.0, 8.0]
    assert hooked.final["hooked"] == 1.0 and "hooked" not in plain.final
    assert len(list((results / "cache").glob("*.json"))) == 2  # the hook's key keeps its record apart
    with pytest.raises(ValueError, match="output-space GAL"):
        run(BASE, _data(0), model_fn, hook=_CountingHook())
    runner = lambda c, d, m, cache: run(c, d, m, cache=cache, hook=_CountingHook() if c.gal is not None else None)
    finals, _ = run_arms({"standard": BASE, "gal": cfg}, [0], _data(0), model_fn, progress=False, runner=runner)
    assert finals.set_index("arm").loc["gal", "hooked"] == 1.0
