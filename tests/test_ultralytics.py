"""GAL in Ultralytics YOLO training (galcore.integrations.ultralytics), fully offline.

Every test here runs under a socket guard: any connection (or name lookup) to a non-loopback
address raises and is recorded, and the guard asserts at teardown that none was attempted.
"""

from __future__ import annotations

import csv
import importlib.util
import socket
from pathlib import Path
from typing import Any

import pytest
import torch

if importlib.util.find_spec("ultralytics") is None:  # not importorskip: Ultralytics must be imported after offline_env
    pytest.skip("ultralytics is not installed (pip install galcore[yolo])", allow_module_level=True)

from galcore import GALConfig
from galcore.build import build_gal as _build_gal
from galcore.experiments.detection.offline import offline_env
from galcore.integrations.ultralytics import read_gal_steps

offline_env()  # before Ultralytics is imported below

from ultralytics import YOLO
from ultralytics.models.yolo.detect import DetectionTrainer

from galcore.experiments.detection.shapes import ShapesConfig, shapes_detection
from galcore.integrations.ultralytics import GALCriterion, GALDetectionTrainer

DATA = ShapesConfig(n_train=16, n_val=8, imgsz=64, seed=1)


def build_gal(config: GALConfig, output_dim: int) -> Any:
    """GAL as the trainer builds it: h on the head's channel axis (dim 1), the run's seed 0."""
    return _build_gal(config.replace(dim=1), output_dim=output_dim, run_seed=0)


def _is_loopback(address: Any) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):
        return True
    return host in ("localhost", "") or host.startswith("127.") or host == "::1"


class NetworkBlocked(OSError):
    pass


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch):
    """Fail any non-loopback connection or DNS lookup; assert none was attempted."""
    attempts: list[str] = []
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
    create_connection, getaddrinfo = socket.create_connection, socket.getaddrinfo

    def guard(what: str, address: Any) -> None:
        if _is_loopback(address):
            return
        attempts.append(f"{what} {address!r}")
        raise NetworkBlocked(f"network access blocked in tests: {what} {address!r}")

    def g_connect(self, address):
        guard("connect", address)
        return connect(self, address)

    def g_connect_ex(self, address):
        guard("connect_ex", address)
        return connect_ex(self, address)

    def g_create_connection(address, *args, **kwargs):
        guard("create_connection", address)
        return create_connection(address, *args, **kwargs)

    def g_getaddrinfo(host, *args, **kwargs):
        guard("getaddrinfo", (host,))
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", g_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", g_connect_ex)
    monkeypatch.setattr(socket, "create_connection", g_create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", g_getaddrinfo)
    yield attempts
    assert not attempts, f"network access attempted: {attempts}"


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(shapes_detection(tmp_path_factory.mktemp("data"), DATA))


def _train_kwargs(data_yaml: str, project: Path, name: str, **kw: Any) -> dict[str, Any]:
    args = {
        "data": data_yaml, "epochs": 1, "imgsz": 64, "batch": 8, "nbs": 8, "device": "cpu", "workers": 0, "amp": False, "pretrained": False,
        "plots": False, "seed": 0, "deterministic": True, "project": str(project), "name": name, "exist_ok": True, "verbose": False,
        "warmup_epochs": 0, "mosaic": 0.0,
    }
    return {**args, **kw}


def _results(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "results.csv", newline="") as f:
        return [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]


def test_socket_guard_blocks_the_network(no_network: list[str]) -> None:
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("93.184.216.34", 80), timeout=0.1)
    with pytest.raises(NetworkBlocked):
        socket.getaddrinfo("example.com", 443)
    assert len(no_network) == 2
    no_network.clear()  # the guard's own check passes: these were deliberate


def test_offline_env_sets_ultralytics_offline(tmp_path: Path) -> None:
    import os

    import ultralytics.utils as uu

    cfg = offline_env()
    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "0"
    assert Path(os.environ["YOLO_CONFIG_DIR"]) == cfg
    assert (cfg / "Arial.ttf").is_file() and (uu.USER_CONFIG_DIR / "Arial.ttf").is_file()
    assert uu.ONLINE is False and uu.SETTINGS["sync"] is False


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["yolov8n", "yolo11n"])
def test_one_epoch_logs_and_checkpoints_gal(arch: str, data_yaml: str, tmp_path: Path) -> None:
    model = YOLO(f"{arch}.yaml")
    model.train(
        trainer=GALDetectionTrainer,
        gal_ratio=0.01,
        gal_hidden=[16, 8],
        gal_accept="always",
        **_train_kwargs(data_yaml, tmp_path, arch),
    )
    trainer = model.trainer
    gal = trainer.gal
    run = Path(trainer.save_dir)
    # options from the train call reached GAL
    assert gal.ratio == 0.01 and gal.accept == "always" and gal.dim == 1
    head = trainer.model.model[-1]
    assert gal.output_dim == head.nc + 4 * head.reg_max
    assert [m.out_features for m in gal.h if isinstance(m, torch.nn.Linear)] == [16, 8, gal.output_dim]
    # every training batch went through GAL (warmup off, so lr > 0 from the first step)
    steps = int(gal.num_steps)
    assert steps == len(trainer.train_loader) == 2
    assert int(gal.num_accepted) + int(gal.num_fallbacks) == steps  # accept="always"
    # h is trained by the trainer's optimizer in its own group, and is not part of the model or its EMA
    groups = [g for g in trainer.optimizer.param_groups if g.get("param_group") == "gal"]
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in gal.parameters()}
    model_params = {id(p) for p in trainer.model.parameters()}
    assert not model_params & {id(p) for p in gal.parameters()}
    assert trainer.ema.ema.state_dict().keys() == trainer.model.state_dict().keys()
    assert isinstance(trainer.model.criterion, GALCriterion)
    # per-step records beside Ultralytics' losses
    rows = _results(run)
    assert len(rows) == 1
    for key in ("train/box_loss", "gal/acceptance", "gal/remainder", "gal/abs_remainder", "gal/fallbacks"):
        assert key in rows[0]
    assert float(rows[0]["gal/steps"]) == steps
    assert float(rows[0]["gal/acceptance"]) == pytest.approx((steps - float(rows[0]["gal/fallbacks"])) / steps)
    records = read_gal_steps(run)
    assert len(records) == steps and all(r["epoch"] == 1 for r in records)
    assert trainer.gal_history and trainer.gal_history[-1]["gal/steps"] == steps
    # GAL's state is in the checkpoints Ultralytics wrote
    for ckpt_path in (run / "weights" / "last.pt", run / "weights" / "best.pt"):
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        saved = ckpt["gal"]
        assert saved["config"]["ratio"] == 0.01 and saved["config"]["hidden"] == [16, 8]
        assert int(saved["state_dict"]["num_steps"]) == steps
        for k, v in gal.state_dict().items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(saved["state_dict"][k], v.cpu()), k
        assert not any(k.startswith("h.") for k in ckpt["model"].state_dict())
    # the final metrics are Ultralytics' validator's
    assert 0.0 <= model.metrics.box.map <= model.metrics.box.map50 <= 1.0


@pytest.mark.slow
def test_ratio_zero_reproduces_standard_training(data_yaml: str, tmp_path: Path) -> None:
    """With r = 0 the chosen gradient is the plain one: the run must match Ultralytics' own."""
    std = YOLO("yolov8n.yaml")
    std.train(**_train_kwargs(data_yaml, tmp_path, "std"))
    gal = YOLO("yolov8n.yaml")
    gal.train(trainer=GALDetectionTrainer, gal_ratio=0.0, **_train_kwargs(data_yaml, tmp_path, "gal0"))
    assert isinstance(std.trainer, DetectionTrainer) and not isinstance(std.trainer, GALDetectionTrainer)
    a, b = _results(Path(std.trainer.save_dir))[0], _results(Path(gal.trainer.save_dir))[0]
    for key in ("train/box_loss", "train/cls_loss", "train/dfl_loss", "val/box_loss", "val/cls_loss"):
        assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4, abs=1e-5), key
    def weights(run: Any) -> dict[str, torch.Tensor]:
        ckpt = torch.load(Path(run.trainer.save_dir) / "weights" / "last.pt", weights_only=False)
        return ckpt["model"].float().state_dict()

    wa, wb = weights(std), weights(gal)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-3, atol=1e-4, msg=k)


class _Interrupt(RuntimeError):
    pass


@pytest.mark.slow
def test_resume_restores_gal_state(data_yaml: str, tmp_path: Path) -> None:
    model = YOLO("yolov8n.yaml")

    def stop_after_first_save(trainer: Any) -> None:
        raise _Interrupt("simulated interruption after epoch 1")

    model.add_callback("on_model_save", stop_after_first_save)
    with pytest.raises(_Interrupt):
        model.train(trainer=GALDetectionTrainer, gal_ratio=0.02, gal_hidden=[12],
                    **_train_kwargs(data_yaml, tmp_path, "resume", epochs=2))
    last = Path(model.trainer.save_dir) / "weights" / "last.pt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0 and ckpt["optimizer"] is not None
    saved = ckpt["gal"]["state_dict"]
    steps1 = int(saved["num_steps"])
    assert steps1 == 2

    seen: dict[str, Any] = {}

    def capture(trainer: Any) -> None:
        seen["steps"] = int(trainer.gal.num_steps)
        seen["ratio"] = trainer.gal.ratio
        seen["h"] = {k: v.detach().cpu().clone() for k, v in trainer.gal.h.state_dict().items()}
        group = next(g for g in trainer.optimizer.param_groups if g.get("param_group") == "gal")
        seen["adam_state"] = all(p in trainer.optimizer.state for p in group["params"])

    resumed = YOLO(last)
    resumed.add_callback("on_train_start", capture)
    resumed.train(resume=True, trainer=GALDetectionTrainer, gal_ratio=0.5)  # resume keeps the saved options
    assert seen["steps"] == steps1 and seen["ratio"] == 0.02
    for k, v in seen["h"].items():
        assert torch.equal(v, saved[f"h.{k}"]), k
    assert seen["adam_state"]
    trainer = resumed.trainer
    assert trainer.start_epoch == 1
    assert int(trainer.gal.num_steps) == 2 * steps1
    assert [r["epoch"] for r in read_gal_steps(trainer.save_dir)] == [1.0, 1.0, 2.0, 2.0]


def test_options_from_config_file_and_errors(data_yaml: str, tmp_path: Path) -> None:
    cfg_file = tmp_path / "gal.yaml"
    cfg_file.write_text("gal:\n  ratio: 0.003\n  scale: 2.0\n  hidden: [32]\n  first_order: mean\n")
    cfg = GALConfig.from_any(str(cfg_file), accept="always")
    assert cfg == GALConfig(ratio=0.003, scale=2.0, hidden=(32,), first_order="mean", accept="always")
    assert GALConfig.from_any({"ratio": 0.1}).ratio == 0.1
    with pytest.raises(ValueError, match="unknown GAL option"):
        GALConfig.from_any({"ratioo": 0.1})
    trainer = GALDetectionTrainer(
        overrides=_train_kwargs(data_yaml, tmp_path, "cfg", gal=str(cfg_file), gal_scale=0.5, model="yolov8n.yaml")
    )
    assert trainer.gal_config.ratio == 0.003 and trainer.gal_config.scale == 0.5  # keywords win over the file
    gal = build_gal(trainer.gal_config, 20)
    assert gal.first_order == "mean" and gal.scale == 0.5 and gal.dim == 1


def test_bad_options_fail_before_the_run_starts(data_yaml: str, tmp_path: Path) -> None:
    """gal_ratio=-1 and gal_ratio="abc" fail in the trainer's constructor, naming the option,
    before Ultralytics scans the dataset or creates the run folder."""
    for bad, error in ((-1, ValueError), ("abc", TypeError)):
        kwargs = _train_kwargs(data_yaml, tmp_path, f"bad{error.__name__}", gal_ratio=bad, model="yolov8n.yaml")
        with pytest.raises(error, match="ratio"):
            GALDetectionTrainer(overrides=kwargs)
        assert not (tmp_path / f"bad{error.__name__}").exists()
        assert not any(tmp_path.rglob(f"bad{error.__name__}*"))
    cfg = GALConfig.from_any(None, compute_dtype="float32", hidden=[16])
    assert cfg.compute_dtype == torch.float32 and cfg.hidden == (16,)


def test_offline_settings_keep_datasets_and_weights_in_the_project() -> None:
    import ultralytics.utils as uu

    from galcore.experiments.detection.offline import _project_root

    root = _project_root()
    for key in ("datasets_dir", "weights_dir", "runs_dir"):
        assert Path(uu.SETTINGS[key]).resolve().is_relative_to(root), (key, uu.SETTINGS[key])
    assert Path(uu.SETTINGS["datasets_dir"]).name == "data"


def test_criterion_value_stays_finite_under_float16_autocast() -> None:
    """Ultralytics' loss vector is kept at its own precision: a loss beyond float16's range
    does not become inf (inf - inf would be NaN and trip Ultralytics' NaN recovery)."""
    model = torch.nn.Linear(1, 1).train()
    gal = build_gal(GALConfig(ratio=0.3, hidden=(8,)), 6)

    def big(preds: Any, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        vec, items = _fake_criterion(preds, batch)
        return vec.float() * 4e4, items

    crit = GALCriterion(big, gal, lr=lambda: 1e-6, model=model)
    preds = _fake_preds()
    preds = {k: (v.half() if k != "feats" else v) for k, v in preds.items()}
    with torch.autocast("cpu", dtype=torch.float16):
        vec, _ = crit(preds, None)
    assert torch.isfinite(vec).all() and float(vec.sum().detach()) > 65504
    vec.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in gal.parameters())


def test_criterion_copies_drop_gal() -> None:
    import copy

    crit = GALCriterion(inner=object(), gal=build_gal(GALConfig(), 8), lr=lambda: 0.1, model=torch.nn.Linear(1, 1))
    holder = torch.nn.Module()
    holder.criterion = crit
    assert copy.deepcopy(holder).criterion is None  # ModelEMA / checkpoint copies get a fresh criterion


def _fake_criterion(preds: Any, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Shaped like Ultralytics': (loss vector * batch size, detached items)."""
    x = torch.cat([preds["boxes"], preds["scores"]], dim=1)
    box = ((x[:, :4] - 1.0) ** 2).mean()
    cls = torch.nn.functional.softplus(x[:, 4:]).mean()
    vec = torch.stack([box, cls, 0.5 * box]) * x.shape[0]
    return vec, dict(zip(("box_loss", "cls_loss", "dfl_loss"), vec.detach() / x.shape[0]))


def _fake_preds(seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    boxes = torch.randn(3, 4, 7, generator=g, requires_grad=True)
    scores = torch.randn(3, 2, 7, generator=g, requires_grad=True)
    return {"boxes": boxes, "scores": scores, "feats": [torch.zeros(3, 8, 7, 1)]}


def test_criterion_keeps_values_and_sends_gals_gradient() -> None:
    model = torch.nn.Linear(1, 1).train()
    gal = build_gal(GALConfig(ratio=0.3, accept="always", hidden=(8,)), 6)
    crit = GALCriterion(_fake_criterion, gal, lr=lambda: 0.5, model=model)
    preds = _fake_preds()
    vec, items = crit(preds, None)
    ref_vec, ref_items = _fake_criterion(_fake_preds(), None)
    torch.testing.assert_close(vec, ref_vec)  # Ultralytics' loss vector, scaling kept
    assert items.keys() == ref_items.keys()
    vec.sum().backward()
    # the same step through GAL.backward on a copy of h gives the same output gradient
    gal2 = build_gal(GALConfig(ratio=0.3, accept="always", hidden=(8,)), 6)
    gal2.load_state_dict(gal.state_dict())
    gal2.num_steps.zero_()
    p2 = _fake_preds()
    x = torch.cat([p2["boxes"], p2["scores"]], dim=1)
    gal2.backward(x, lambda z: _fake_criterion({"boxes": z[:, :4], "scores": z[:, 4:]}, None)[0].sum(), 0.5)
    torch.testing.assert_close(preds["boxes"].grad, p2["boxes"].grad)
    torch.testing.assert_close(preds["scores"].grad, p2["scores"].grad)
    plain = _fake_preds()
    _fake_criterion(plain, None)[0].sum().backward()
    assert not torch.allclose(preds["scores"].grad, plain["scores"].grad)  # the adjustment is there
    assert all(p.grad is not None for p in gal.parameters())  # and h got its remainder gradient


def test_criterion_passes_through_outside_training() -> None:
    model = torch.nn.Linear(1, 1)
    gal = build_gal(GALConfig(ratio=0.3), 6)
    crit = GALCriterion(_fake_criterion, gal, lr=lambda: 0.5, model=model)
    model.eval()
    crit(_fake_preds(), None)  # validation
    model.train()
    with torch.no_grad():
        crit(_fake_preds(), None)
    zero_lr = GALCriterion(_fake_criterion, gal, lr=lambda: 0.0, model=model)
    zero_lr(_fake_preds(), None)  # the first warmup iteration
    assert int(gal.num_steps) == 0
    crit(_fake_preds(), None)
    assert int(gal.num_steps) == 1


def _recording(base: type) -> type:
    """``base`` trainer that records the initial weights' hash and a hash of every training batch."""
    from galcore.experiments.detection import weights_hash

    class Recording(base):  # type: ignore[misc,valid-type]
        seen: dict[str, Any]

        def preprocess_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
            batch = super().preprocess_batch(batch)
            if self.model.training:
                parts = [batch["img"], batch["cls"], batch["bboxes"], batch["batch_idx"]]
                digest = [float(t.double().sum()) for t in parts] + [float((t.double() ** 2).sum()) for t in parts]
                type(self).seen.setdefault("batches", []).append(digest)
            return batch

        def _setup_train(self) -> None:
            super()._setup_train()
            type(self).seen["init"] = weights_hash(self.model)

    Recording.seen = {}
    return Recording


@pytest.mark.slow
def test_arms_share_initial_weights_and_data_order(data_yaml: str, tmp_path: Path) -> None:
    """Same seed: the standard and the GAL run start from the same weights and see the same
    augmented batches in the same order (h is drawn from its own generator); another seed
    changes both (the check can fail)."""
    seen = {}
    for name, base, seed, gal in (("std", DetectionTrainer, 0, {}), ("gal", GALDetectionTrainer, 0, {"gal_ratio": 0.05}),
                                  ("other", DetectionTrainer, 1, {})):
        trainer = _recording(base)
        YOLO("yolov8n.yaml").train(trainer=trainer, **gal, **_train_kwargs(data_yaml, tmp_path, name, seed=seed, epochs=2,
                                                                          hsv_h=0.5, fliplr=0.5, translate=0.2))
        seen[name] = trainer.seen
    assert len(seen["std"]["batches"]) == 4  # 2 epochs x 2 batches
    assert seen["gal"]["init"] == seen["std"]["init"]
    assert seen["gal"]["batches"] == seen["std"]["batches"]
    assert seen["other"]["init"] != seen["std"]["init"]
    assert seen["other"]["batches"] != seen["std"]["batches"]


@pytest.mark.slow
def test_step_probe_measures_without_changing_the_run(data_yaml: str, tmp_path: Path) -> None:
    from galcore.experiments.detection import StepProbe, train_yolo

    plain = train_yolo("yolov8n", data_yaml, "gal", 0, project=tmp_path, epochs=2, batch=8, gal={"ratio": 0.01},
                       name="plain")
    probe = StepProbe(epochs=[1], batch=8)
    probed = train_yolo("yolov8n", data_yaml, "gal", 0, project=tmp_path, epochs=2, batch=8, gal={"ratio": 0.01},
                        name="probed", callbacks={"on_train_epoch_end": probe})
    assert probed["weights_hash"] == plain["weights_hash"] != ""
    assert [r["epoch"] for r in probe.rows] == [1.0]
    row = probe.rows[0]
    assert row["lr"] > 0 and row["eta_g_norm"] > 0 and row["step_norm"] > 0 and row["sgd_step_norm"] > 0
    assert row["ratio"] == pytest.approx(row["step_norm"] / row["eta_g_norm"])
    assert -1.0 <= row["cosine"] <= 1.0 and -1.0 <= row["sgd_cosine"] <= 1.0
    assert row["remainder_actual"] == pytest.approx(row["loss_change"] - row["first_order"])
    assert row["t_forward"] > 0 and row["t_backward"] > 0


def test_model_yaml_builds_a_narrower_yolo(tmp_path: Path) -> None:
    from galcore.experiments.detection import model_yaml

    path = model_yaml("yolov8", depth=0.33, width=0.125, folder=tmp_path)
    assert path.parent == tmp_path and path.suffix == ".yaml"
    tiny, base = YOLO(str(path)).model, YOLO("yolov8n.yaml").model
    assert tiny.model[0].conv.out_channels == 8 and base.model[0].conv.out_channels == 16
    n_tiny = sum(p.numel() for p in tiny.parameters())
    n_base = sum(p.numel() for p in base.parameters())
    assert n_tiny < n_base / 2
    assert type(tiny.model[-1]).__name__ == type(base.model[-1]).__name__ == "Detect"
    with pytest.raises(ValueError, match="base"):
        model_yaml("yolov99", folder=tmp_path)
    with pytest.raises(ValueError, match="width"):
        model_yaml("yolov8", width=0.0, folder=tmp_path)
