"""The detection experiment's bookkeeping (galcore.experiments.detection) without training:
cache keys, the run cache, the settings check, the tables."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from galcore.experiments import detection
from galcore.experiments.detection.shapes import ShapesConfig, shapes_detection
from galcore.experiments.harness.stats import VERDICTS


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shapes_detection(tmp_path_factory.mktemp("data"), ShapesConfig(n_train=4, n_val=2, seed=5))


def _job(data: Path, **kw: Any) -> dict[str, Any]:
    return {"arch": "yolov8n", "data": str(data), "method": "gal", "seed": 0, "epochs": 2, "imgsz": 64, "batch": 8,
            "gal": {"ratio": 0.01}, "project": "/somewhere", **kw}


def test_data_fingerprint_follows_the_files_not_the_folder(data_yaml: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(data_yaml.parent, copy)
    moved = copy / data_yaml.name
    moved.write_text(moved.read_text().replace(f"path: {data_yaml.parent}", f"path: {copy}"))
    assert detection.data_fingerprint(moved) == detection.data_fingerprint(data_yaml)
    label = min((copy / "labels" / "train").glob("*.txt"))
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    assert detection.data_fingerprint(moved) != detection.data_fingerprint(data_yaml)


def test_job_key_covers_settings_and_data_but_not_where_runs_are_written(data_yaml: Path, tmp_path: Path) -> None:
    base = detection.job_key(_job(data_yaml))
    assert detection.job_key(_job(data_yaml, project=str(tmp_path))) == base
    assert detection.job_key(_job(data_yaml, lr0=0.01)) != base
    assert detection.job_key(_job(data_yaml, gal={"ratio": 0.02})) != base
    assert detection.job_key(_job(data_yaml, seed=1)) != base
    other = shapes_detection(tmp_path, ShapesConfig(n_train=4, n_val=2, seed=6))
    assert detection.job_key(_job(other)) != base


def test_run_jobs_trains_each_job_once_then_reads_the_cache(data_yaml: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []

    def fake_train(arch: str, data: str, method: str, seed: int, **kw: Any) -> dict[str, Any]:
        calls.append((method, seed))
        return {"arch": arch, "method": method, "seed": seed, "map50": 0.1 * seed + (method == "gal"), "map50_95": 0.0}

    monkeypatch.setattr(detection.jobs, "train_yolo", fake_train)
    jobs = [_job(data_yaml, method=m, seed=s) for s in (0, 1) for m in ("standard", "gal")]
    first = detection.run_jobs(jobs, cache_dir=tmp_path / "cache", processes=0, progress=False)
    assert calls == [("standard", 0), ("gal", 0), ("standard", 1), ("gal", 1)]
    assert [r["cached"] for r in first] == [False] * 4
    again = detection.run_jobs(jobs, cache_dir=tmp_path / "cache", processes=0, progress=False)
    assert len(calls) == 4 and [r["cached"] for r in again] == [True] * 4
    assert [(r["method"], r["seed"], r["map50"]) for r in again] == [(r["method"], r["seed"], r["map50"]) for r in first]
    changed = detection.run_jobs([_job(data_yaml, seed=1, lr0=0.05)], cache_dir=tmp_path / "cache", processes=0,
                                 progress=False)
    assert len(calls) == 5 and changed[0]["cached"] is False
    with pytest.raises(ValueError, match="processes"):
        detection.run_jobs(jobs, processes=-1)


def test_store_run_puts_a_run_made_by_hand_in_the_cache(data_yaml: Path, tmp_path: Path) -> None:
    job = _job(data_yaml)
    assert detection.cached_run(job, tmp_path) is None
    detection.store_run(job, {"method": "gal", "seed": 0, "map50": 0.5, "cached": False}, tmp_path)
    hit = detection.cached_run(job, tmp_path)
    assert hit is not None and hit["map50"] == 0.5 and hit["cached"] is True


def test_check_args_names_every_setting_that_differs(data_yaml: Path) -> None:
    job = _job(data_yaml, lr0=0.002)
    ok = types.SimpleNamespace(**detection.train_args(data=job["data"], epochs=2, imgsz=64, batch=8, seed=0, lr0=0.002))
    detection.check_args(ok, job)
    bad = types.SimpleNamespace(**{**vars(ok), "lr0": 0.01, "mosaic": 1.0})
    with pytest.raises(ValueError, match="lr0") as err:
        detection.check_args(bad, job)
    assert "mosaic" in str(err.value)


def _finals(diffs: list[float], same_weights: bool = False) -> pd.DataFrame:
    rows = []
    for seed, d in enumerate(diffs):
        base = 0.5 + 0.01 * seed
        rows.append({"arm": "standard", "seed": seed, "arch": "yolov8n", "map50": base, "map50_95": base / 2,
                     "weights_hash": f"s{seed}"})
        rows.append({"arm": "gal", "seed": seed, "arch": "yolov8n", "map50": base + d, "map50_95": base / 2 + d / 2,
                     "weights_hash": f"s{seed}" if same_weights else f"g{seed}"})
    return pd.DataFrame(rows)


def test_verdict_table_reports_power_and_verdicts_per_metric() -> None:
    better = detection.verdict_table(_finals([0.05, 0.06, 0.055, 0.052, 0.058]), {"map50": 0.01, "map50_95": 0.01})
    assert list(better.metric) == ["map50", "map50_95"]
    assert set(better.verdict) <= set(VERDICTS) and list(better.verdict) == ["better", "better"]
    assert (better.margin == 0.01).all() and (better.n == 5).all()
    assert np.all(better.mde > 0) and np.all(np.isfinite(better.seeds_needed))
    noisy = detection.verdict_table(_finals([0.1, -0.1, 0.08, -0.09, 0.0]), {"map50": 0.01})
    assert noisy.verdict.tolist() == ["inconclusive"]
    assert noisy.mde.iloc[0] > 0.1  # the seeds cannot see a difference of the margin's size
    close = detection.verdict_table(_finals([0.001, -0.001, 0.0005, -0.0005, 0.0]), {"map50": 0.01})
    assert close.verdict.tolist() == ["equivalent"]
    same = detection.verdict_table(_finals([0.0] * 5, same_weights=True), {"map50": 0.01})
    assert same.verdict.tolist() == ["identical"]


def test_finals_frame_reads_gal_records() -> None:
    steps = [{"accepted": 1.0, "remainder": -2.0, "remainder_plain": 4.0}, {"accepted": 0.0, "remainder": 1.0,
                                                                          "remainder_plain": -2.0}]
    runs = [{"method": "standard", "seed": 0, "arch": "yolov8n", "map50": 0.5, "map50_95": 0.3, "cpu_s": 10.0},
            {"method": "gal", "seed": 0, "arch": "yolov8n", "map50": 0.6, "map50_95": 0.3, "cpu_s": 12.0,
             "gal_steps": steps}]
    finals = detection.finals_frame(runs)
    assert finals.arm.tolist() == ["standard", "gal"]
    gal = finals.iloc[1]
    assert gal.accept_rate == 0.5 and gal.abs_remainder == 1.5 and gal.abs_remainder_plain == 3.0
    assert np.isnan(finals.iloc[0].accept_rate)
