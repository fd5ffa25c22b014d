"""benchmarks/gpu/run.sh: its CPU dry run writes every key of the GPU record, well formed.

The dry run (~1-2 minutes on 2 cores) runs once for the module. This checks the script and
the shape of what it records, not speeds (too noisy on a shared CPU for a test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import galcore

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "gpu" / "run.sh"
KEYS = ("meta", "device", "torch", "galcore", "tests", "sync_debug_errors", "amp_fp16", "overhead", "seeds", "notebooks")
PARTS = ("device", "tests", "sync_debug_errors", "amp_fp16", "overhead", "seeds", "notebooks")
STATUSES = {"ok", "skipped", "error", "timeout"}


def _gpu_module(name: str) -> Any:
    sys.path.insert(0, str(RUN.parent))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(RUN.parent))


@pytest.fixture(scope="module")
def dry(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, float]:
    out = tmp_path_factory.mktemp("gpu") / "out"
    # budgets x3: this machine may be shared (the dry run aims at 2 minutes on 2 free cores)
    env = {**os.environ, "PYTHON": sys.executable, "GALCORE_GPU_BUDGET_SCALE": "3"}
    start = time.perf_counter()
    proc = subprocess.run(["bash", str(RUN), "--dry-run", str(out)], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "record.json").read_text()), out, wall


def test_dry_run_writes_every_key_and_the_log(dry: tuple[dict[str, Any], Path, float]) -> None:
    record, out, wall = dry
    assert set(KEYS) <= set(record)
    log = (out / "log.txt").read_text()
    assert "pip show: missing" in log and "== overhead:" in log and "wrote" in log
    print(f"dry run: {wall:.0f} s wall; parts: {record['meta']['seconds']} s")
    meta = record["meta"]
    assert meta["dry_run"] is True and meta["total_budget_s"] / meta["budget_scale"] <= 120


def test_every_part_has_a_status_and_reasons(dry: tuple[dict[str, Any], Path, float]) -> None:
    record = dry[0]
    for name in PARTS:
        part = record[name]
        assert part["status"] in STATUSES, (name, part)
        assert isinstance(part["seconds"], (int, float)) and part["seconds"] >= 0
        if part["status"] == "skipped":
            assert isinstance(part.get("reason"), str) and len(part["reason"]) > 10, (name, part)
        elif part["status"] != "ok":
            assert part.get("error"), (name, part)
    # on the CPU the device-independent parts must work; only the CUDA-only count is skipped
    for name in ("device", "amp_fp16", "overhead", "tests"):
        assert record[name]["status"] == "ok", (name, record[name])


def test_versions_are_what_ran(dry: tuple[dict[str, Any], Path, float]) -> None:
    record = dry[0]
    assert record["torch"]["version"] == torch.__version__
    assert record["galcore"]["version"] == galcore.__version__
    assert record["device"]["device"] == "cpu" and record["device"]["cuda_available"] == torch.cuda.is_available()
    assert isinstance(record["device"]["packages_missing"], list)


def test_sync_debug_errors_is_zero_or_skipped_and_the_steps_ran(dry: tuple[dict[str, Any], Path, float]) -> None:
    part = dry[0]["sync_debug_errors"]
    if part["status"] == "skipped":
        assert "CUDA" in part["reason"] and part["errors"] is None
    else:
        assert part["errors"] == 0, part
    cases = part["cases"]
    assert {(c["path"], c["api"], c["track_plain"]) for c in cases} == {
        (p, a, t) for p in ("eager", "compiled") for a in ("backward", "surrogate") for t in (False, True)}
    for c in cases:  # every configuration really ran its steps: warm-up + checked, counted by GAL
        assert c["steps_checked"] == part["steps_per_case"] and c["gal_num_steps"] == part["steps_per_case"] + 3, c
        assert c["is_compiled"] is (c["path"] == "compiled")


def test_amp_record(dry: tuple[dict[str, Any], Path, float]) -> None:
    part = dry[0]["amp_fp16"]
    assert part["autocast"] in ("torch.float16", "torch.bfloat16") and part["how"]
    assert part["loss_finite"] is True and part["objective_positive"] is True
    assert isinstance(part["same_decisions"], bool)
    assert len(part["accepted"]) == len(part["accepted_float32"]) == part["steps"] >= 1
    assert part["same_decisions"] == (part["accepted"] == part["accepted_float32"])
    if part["autocast"] == "torch.float16":
        assert part["out_dtype"] == "torch.float16"
        assert part["scaler_scale"] > 0 and len(part["scales"]) == part["steps"]
    else:
        assert part["scaler_note"]


def test_overhead_rows(dry: tuple[dict[str, Any], Path, float]) -> None:
    part = dry[0]["overhead"]
    rows = {r["model"]: r for r in part["rows"]}
    assert set(rows) == {"resnet50", "resnet18", "mlp"}, part
    for r in rows.values():
        assert "error" not in r, r
        assert r["standard_ms_median"] > 0 and r["ratio_gal"] > 0 and r["ratio_gal_compiled"] > 0
        assert r["gal_compiled_is_compiled"] is True and r["timed_steps_per_variant"] >= 1
    assert "reduce-overhead" in part["reduce_overhead"]


def test_seeds_notebooks_tests(dry: tuple[dict[str, Any], Path, float]) -> None:
    record = dry[0]
    seeds = record["seeds"]
    if seeds["status"] == "ok":
        ran = [r for r in seeds["rows"] if "skipped" not in r]
        assert ran and all(r["seeds_per_minute"] > 0 for r in ran)
        assert {r["arm"] for r in ran} == {"standard", "gal"}
    nb = record["notebooks"]
    assert nb["status"] == "ok" or nb["status"] == "skipped" and "needs" in nb["reason"], nb
    if nb["status"] == "ok":
        assert nb["profile"] == "smoke" and nb["seconds_per_run"] > 0 and nb["runs"][0]["ok"]
    tests = record["tests"]
    assert tests["passed"] > 0 and tests["failed"] == 0 and "subset" in tests["scope"]


def test_a_failing_part_is_recorded_and_the_next_runs() -> None:
    common = _gpu_module("common")
    ctx = common.Context(dry_run=True, device=torch.device("cpu"), out=None, log=lambda _: None, grace=0.0)

    def boom(_: Any) -> dict[str, Any]:
        raise ValueError("bad value")

    def skip(_: Any) -> dict[str, Any]:
        raise common.Skip("not here, because of a reason")

    def slow(_: Any) -> dict[str, Any]:
        time.sleep(5)
        return {}

    assert common.run_part("boom", boom, ctx, 5)["error"] == "ValueError: bad value"
    assert common.run_part("skip", skip, ctx, 5) | {"seconds": 0} == {
        "status": "skipped", "reason": "not here, because of a reason", "seconds": 0, "budget_s": 5}
    timed = common.run_part("slow", slow, ctx, 0.5)
    assert timed["status"] == "timeout" and timed["seconds"] < 4
    assert common.run_part("ok", lambda c: {"value": 1}, ctx, 5)["status"] == "ok"


def test_pytest_counts_parses_the_summary_line() -> None:
    parts = _gpu_module("env_parts")
    text = "....s.F\nFAILED tests/x.py::t\n1 failed, 5 passed, 1 skipped, 2 warnings, 1 error in 3.2s\n"
    counts = parts._pytest_counts(text)
    assert (counts["passed"], counts["failed"], counts["skipped"], counts["errors"]) == (5, 1, 1, 1)
    with pytest.raises(RuntimeError, match="no summary"):
        parts._pytest_counts("killed\n")


def test_bad_arguments_are_named() -> None:
    proc = subprocess.run(["bash", str(RUN), "--fast"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "--fast" in proc.stderr
    proc = subprocess.run([sys.executable, str(RUN.parent / "check.py"), "--out", "/tmp/x", "--parts", "nope"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "nope" in proc.stderr


def test_a_failing_variant_is_dropped_and_the_others_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    speed = _gpu_module("speed")
    common = _gpu_module("common")
    real = speed.Arm.step

    def step(self: Any, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.gal is not None and self.gal.is_compiled:
            raise RuntimeError("compiled step broke")
        real(self, x, y)

    monkeypatch.setattr(speed.Arm, "step", step)
    ctx = common.Context(dry_run=True, device=torch.device("cpu"), out=None, log=lambda _: None, budget=60)
    mlp = next(s for s in speed.models(ctx) if s["name"] == "mlp")
    row = speed.bench(ctx, mlp, steps=2, warmup=2, block=1, seconds=30)
    assert row["failed_variants"] == {"gal_compiled": "RuntimeError: compiled step broke"}
    assert row["ratio_gal"] > 0 and "ratio_gal_compiled" not in row and row["timed_steps_per_variant"] == 2
