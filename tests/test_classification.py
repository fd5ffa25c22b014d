"""galcore.experiments.classification and galcore.experiments.fullscale: setups, fairness of paired runs, the
full-profile (CIFAR / EfficientNet-B1) code path on a tiny fake CIFAR-shaped dataset."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch
from torch import nn

import galcore.experiments.classification as clf
from galcore.experiments.fullscale import DeviceAugment, LoaderData, benchmark_step, cifar_data, efficientnet_b1_factory, fake_cifar
from galcore.experiments.models import SmallCNN
from galcore.experiments.optim import make_optimizer
from galcore.experiments.harness import Data, Setup, cache_dir


@pytest.fixture(autouse=True)
def _isolated_results(tmp_path, monkeypatch):
    """Every test writes its cache and results under a temporary folder."""
    monkeypatch.setenv("GALCORE_RESULTS", str(tmp_path / "results"))
    torch.set_num_threads(1)


def _short(setup: Setup, epochs: int = 1) -> Setup:
    return replace(setup, base=replace(setup.base, epochs=epochs, milestones=()))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _recording(model_fn):
    """Wrap a model factory so each built model's initial weights are recorded."""
    built: list[dict[str, torch.Tensor]] = []

    def fn() -> nn.Module:
        m = model_fn()
        built.append(_state(m))
        return m

    return fn, built


def _tiny_cnn(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, num_classes))


# -- setups ------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["smoke", "default"])
def test_setup_shapes(profile):
    s = clf.default_setup(profile)
    assert isinstance(s, Setup) and isinstance(s.data, Data)
    assert not clf.is_fullscale(s)
    assert s.data.x_train.shape[1:] == (1, 8, 8) and s.data.x_test.shape[1:] == (1, 8, 8)
    assert s.data.x_train.dtype == torch.float32 and s.data.y_train.dtype == torch.int64
    assert s.data.num_outputs == 10 and set(s.data.y_train.tolist()) == set(range(10))
    assert s.base.gal is None and s.base.data == s.data.name and s.base.task == "classification"
    assert len(s.seeds) == (2 if profile == "smoke" else 5) and len(set(s.seeds)) == len(s.seeds)
    if profile == "default":
        assert len(s.data.x_train) == 1347 and len(s.data.x_test) == 450
    else:
        assert len(s.data.x_train) == 320
    out = s.model_fn()(s.data.x_train[:5])
    assert out.shape == (5, 10)
    # ResNet-style alternative
    r = clf.default_setup(profile, model="resnet8")
    assert r.model_fn()(r.data.x_train[:3]).shape == (3, 10) and r.base.model.startswith("resnet8")
    assert [s.data.name for s in clf.default_setups(profile)] == [s.data.name]


@pytest.mark.parametrize("profile", ["smoke", "default", "full"])
def test_optimizer_and_gal_settings(profile):
    settings = clf.optimizer_settings(profile)
    assert tuple(settings) == clf.OPTIMIZER_NAMES
    model = SmallCNN(1, 10, 8, 4)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    for spec in settings.values():
        opt = make_optimizer(spec["optimizer"], model.parameters(), spec["lr"], **dict(spec["optimizer_kwargs"]))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    g = clf.gal_options(profile)
    assert g["compute_dtype"] is torch.float64 and g["ratio"] == 1e-3 and g["scale"] == 1.0
    assert g["first_order"] == ("mean" if profile == "full" else "sum")
    assert clf.RELEASE_GAL["cifar100"]["ratio"] == 1e-2
    assert clf.RELEASE_OPTIMIZERS["Lookahead(SGD)"]["optimizer_kwargs"]["alpha"] == 0.8


def test_paired_arms_differ_only_in_gal():
    s = clf.default_setup("smoke")
    for name in clf.OPTIMIZER_NAMES:
        arms = clf.paired_arms(s, name)
        assert arms["standard"].gal is None and arms["gal"].gal == clf.gal_settings(s)
        assert replace(arms["gal"], gal=None) == arms["standard"]
    diag = clf.diagnostic_arms(s, "Adam", "smoke")
    assert diag["gal+probe"].gal["track_plain"] and diag["gal+probe"].probe_every > 0
    assert diag["gal-float32"].gal["compute_dtype"] is None


# -- fairness (in-memory path) -----------------------------------------------------------------
@pytest.mark.parametrize("name", clf.OPTIMIZER_NAMES)
def test_ratio_zero_gal_equals_standard(name):
    """GAL with ratio 0 (float32 arithmetic) sends back exactly the plain gradient: the two runs
    must be bit-identical, which checks same init, same batches and an untouched RNG stream."""
    s = _short(clf.default_setup("smoke"))
    arms = clf.paired_arms(s, name, gal={"ratio": 0.0, "compute_dtype": None})
    std = clf.run_one(arms["standard"], s, cache=False)
    gal = clf.run_one(arms["gal"], s, cache=False)
    for a, b in zip(std.history, gal.history, strict=True):
        for key in ("train_loss", "test_loss", "test_accuracy"):
            assert a[key] == b[key], (name, key)
    assert gal.history[0]["accept_rate"] == 1.0


def test_ratio_zero_float64_is_close_to_standard():
    s = _short(clf.default_setup("smoke"))
    arms = clf.paired_arms(s, "SGD+momentum", gal={"ratio": 0.0})
    std = clf.run_one(arms["standard"], s, cache=False)
    gal = clf.run_one(arms["gal"], s, cache=False)
    assert gal.final["test_loss"] == pytest.approx(std.final["test_loss"], rel=1e-5)


def test_same_initial_weights_across_arms_and_seeds():
    s = _short(clf.default_setup("smoke"))
    fn, built = _recording(s.model_fn)
    s = replace(s, model_fn=fn)
    finals, hists = clf.run_arms(clf.paired_arms(s, "SGD+momentum"), s, seeds=(0, 1), cache=False, progress=False)
    assert list(finals["arm"]) == ["standard", "gal", "standard", "gal"]
    assert len(built) == 4
    for a, b in ((0, 1), (2, 3)):  # same seed, two arms
        assert all(torch.equal(built[a][k], built[b][k]) for k in built[a])
    assert not all(torch.equal(built[0][k], built[2][k]) for k in built[0])  # seeds differ
    assert set(hists.columns) >= {"arm", "seed", "epoch", "test_accuracy", "epoch_time"}


def test_cache_accepts_compute_dtype_and_roundtrips():
    s = _short(clf.default_setup("smoke"))
    cfg = clf.paired_arms(s, "Adam")["gal"]
    assert cfg.gal["compute_dtype"] is torch.float64
    first = clf.run_one(cfg, s)
    files = list(cache_dir().glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["config"]["gal"]["compute_dtype"] == "torch.float64"
    again = clf.run_one(cfg, s)
    assert again.history == first.history


def test_summary_table_and_verdicts():
    s = _short(clf.default_setup("smoke"))
    finals, hists = clf.run_experiment([s], ("SGD+momentum", "Adam"), cache=False, progress=False)
    table = clf.summary_table(finals, hists)
    required = ["arm", "optimizer", "metric", "mean_control", "mean_treatment", "mean_diff", "low", "high", "p_value", "n", "overhead_ratio"]
    assert set(required) <= set(table.columns)
    assert len(table) == 4 and set(table["metric"]) == {"test_accuracy", "test_error"}
    assert (table["n"] == 2).all() and (table["overhead_ratio"] > 0).all()
    acc = table[table["metric"] == "test_accuracy"].set_index("optimizer")
    err = table[table["metric"] == "test_error"].set_index("optimizer")
    assert (acc["mean_diff"] * 100).to_numpy() == pytest.approx((-err["mean_diff"]).to_numpy())
    per_seed = clf.per_seed_table(finals)
    assert (per_seed["diff"] == per_seed["gal"] - per_seed["standard"]).all()
    assert clf.verdict("test_accuracy", 0.01, 0.005, 0.02) == "improved"
    assert clf.verdict("test_error", 0.5, 0.1, 0.9) == "worse"
    assert clf.verdict("test_error", -0.5, -0.9, -0.1) == "improved"
    assert clf.verdict("test_accuracy", 0.01, -0.01, 0.03) == "no significant difference"


# -- the full-profile path, offline ------------------------------------------------------------
def test_full_setup_on_fake_cifar_runs_end_to_end(capsys):
    """EfficientNet-B1 from scratch, CIFAR transforms, device-side flip + resize, batch-wise
    loader path, release optimizers and GAL settings: one short epoch per arm and seed."""
    data = fake_cifar(n_train=8, n_test=4, num_classes=10, size=32)
    s = clf.full_setup(data=data, pretrained=False, batch_size=4, epochs=1, seeds=(0, 1), device="cpu")
    assert "from scratch" in capsys.readouterr().out
    assert clf.is_fullscale(s) and s.base.model == "efficientnet_b1-scratch" and s.base.data == data.name
    assert s.base.milestones == (100, 200) and clf.optimizer_settings(s) is clf.RELEASE_OPTIMIZERS
    assert clf.gal_settings(s)["first_order"] == "mean"
    finals, hists = clf.run_experiment([s], ("SGD+momentum",), progress=False)
    assert len(finals) == 4 and finals["test_accuracy"].between(0, 1).all()
    assert hists[hists["arm"] == "gal"]["accept_rate"].notna().all()
    assert (hists["fallbacks"].fillna(0) == 0).all()
    table = clf.summary_table(finals, hists)
    assert len(table) == 2 and (table["n"] == 2).all()
    assert len(list(cache_dir().glob("fakecifar10-*efficientnet_b1-scratch*.json"))) == 4


def test_full_defaults_match_the_release():
    data = fake_cifar(n_train=4, n_test=2, num_classes=100, size=224)
    s = clf.full_setup(data=data, pretrained=False)
    assert (s.base.batch_size, s.base.epochs, s.base.milestones) == (320, 300, (100, 200))
    assert s.base.optimizer == "momentum" and s.base.lr == 0.05 and s.base.optimizer_kwargs == {"weight_decay": 1e-5}
    assert clf.gal_settings(s)["ratio"] == 1e-2  # 100 classes
    assert s.model_fn()(torch.randn(2, 3, 64, 64)).shape == (2, 100)


def test_loader_path_fairness():
    """Loader path: ratio-0 GAL equals standard bit for bit (same init, order, flips)."""
    data = fake_cifar(n_train=12, n_test=6, num_classes=10, size=16, flip=True)
    s = clf.full_setup(data=data, pretrained=False, batch_size=4, epochs=2, milestones=(1,), seeds=(3,), device="cpu")
    fn, built = _recording(lambda: _tiny_cnn(10))
    s = replace(s, model_fn=fn, base=replace(s.base, model="tinycnn"))
    arms = clf.paired_arms(s, "Lookahead(SGD)", gal={"ratio": 0.0, "compute_dtype": None})
    finals, hists = clf.run_arms(arms, s, cache=False, progress=False)
    assert all(torch.equal(built[0][k], built[1][k]) for k in built[0])
    a = hists[hists["arm"] == "standard"].reset_index(drop=True)
    b = hists[hists["arm"] == "gal"].reset_index(drop=True)
    pd.testing.assert_series_equal(a["train_loss"], b["train_loss"])
    pd.testing.assert_series_equal(a["test_loss"], b["test_loss"])


def test_cifar_absent_gives_a_clear_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="could not be loaded") as e:
        cifar_data("cifar10", tmp_path / "nodata", download=False)
    assert str(tmp_path / "nodata") in str(e.value) and "cifar-10-python.tar.gz" in str(e.value)
    with pytest.raises(FileNotFoundError, match="cifar100"):
        clf.default_setup("full", dataset="cifar100", data_root=str(tmp_path / "nodata"), download=False)
    with pytest.raises(ValueError, match="unknown dataset"):
        cifar_data("mnist", tmp_path, download=False)


def test_pretrained_weights_unavailable_falls_back_to_scratch(monkeypatch, capsys):
    from torchvision.models import EfficientNet_B1_Weights

    def offline(self, *a, **k):
        raise OSError("no network")

    monkeypatch.setattr(EfficientNet_B1_Weights, "get_state_dict", offline)
    model_fn, name = efficientnet_b1_factory(10, pretrained=True)
    assert name == "efficientnet_b1-scratch"
    assert "FROM SCRATCH" in capsys.readouterr().out
    torch.manual_seed(0)
    a = model_fn()
    torch.manual_seed(0)
    b = model_fn()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_device_augment_is_seeded_and_resizes():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4).repeat(8, 1, 1, 1)
    a = DeviceAugment(8, True, seed=5, device=torch.device("cpu"))
    b = DeviceAugment(8, True, seed=5, device=torch.device("cpu"))
    ya, yb = a(x, train=True), b(x, train=True)
    assert ya.shape == (16, 3, 8, 8) and torch.equal(ya, yb)
    flipped = DeviceAugment(None, True, seed=5, device=torch.device("cpu"))(x, train=True)
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()
    assert torch.equal(DeviceAugment(None, True, seed=5, device=torch.device("cpu"))(x, train=False), x)


def test_benchmark_step_runs_on_cpu():
    res = benchmark_step(lambda: _tiny_cnn(10), 10, dict(clf.RELEASE_GAL["cifar10"]), batch_size=4, size=16, steps=1, warmup=1, device="cpu")
    assert res["images_per_s"] > 0 and res["step_ms"] > 0
    assert isinstance(res["peak_mem_gib"], float)


def test_loader_data_name_must_match_config():
    data = fake_cifar(n_train=4, n_test=2, size=16)
    s = clf.full_setup(data=data, pretrained=False, batch_size=4, epochs=1, device="cpu")
    bad = replace(s.base, data="something-else")
    with pytest.raises(ValueError, match="does not name this data"):
        clf.run_one(bad, s, cache=False)
    assert isinstance(s.data, LoaderData)
