"""benchmarks/step_overhead.py runs (in --quick mode, seconds) and writes the promised fields.

This checks the script, not the speed: timings on a shared CPU are too noisy for a test.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "step_overhead.py"

ROW_FIELDS = {
    "model", "batch", "steps",
    "standard_ms_median", "gal_ms_median", "ratio", "target", "meets_target",
    "standard_step_peak_mb", "gal_step_peak_mb", "standard_persistent_mb", "gal_persistent_mb",
    "gal_acceptance_rate", "gal_fallbacks",
    "gal_compiled_ms_median", "ratio_compiled", "meets_target_compiled", "gal_compiled_fallbacks",
    "floor_ms_median", "ratio_floor",
}  # fmt: skip
META_FIELDS = {"device", "threads", "torch", "galcore", "memory_method", "timing", "warmup", "block"}


def test_step_overhead_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench" / "step_overhead.json"
    cmd = [
        sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--threads", "1",
        "--models", "mlp,cnn", "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    data = json.loads(out.read_text())
    assert META_FIELDS <= data["meta"].keys()
    assert data["meta"]["device"] == "cpu" and data["meta"]["threads"] == 1 and data["meta"]["quick"] is True
    rows = {r["model"]: r for r in data["rows"]}
    assert set(rows) == {"mlp", "cnn"}
    for name, r in rows.items():
        assert ROW_FIELDS <= r.keys(), ROW_FIELDS - r.keys()
        assert r["standard_ms_median"] > 0 and r["gal_ms_median"] > 0
        assert abs(r["ratio"] - r["gal_ms_median"] / r["standard_ms_median"]) < 1e-9
        assert abs(r["ratio_compiled"] - r["gal_compiled_ms_median"] / r["standard_ms_median"]) < 1e-9
        assert abs(r["ratio_floor"] - r["floor_ms_median"] / r["standard_ms_median"]) < 1e-9
        assert r["meets_target"] == (r["ratio"] <= r["target"])
        assert r["meets_target_compiled"] == (r["ratio_compiled"] <= r["target"])
        # a step allocates activations and gradients; GAL keeps h (and its momentum) on top
        assert r["standard_step_peak_mb"] > 0 and r["gal_step_peak_mb"] > 0
        assert r["gal_persistent_mb"] > r["standard_persistent_mb"] > 0
        assert r["gal_fallbacks"] == 0 and r["gal_compiled_fallbacks"] == 0
        # both GAL variants took the same steps from the same h: the same decisions
        assert r["gal_acceptance_rate"] == r["gal_compiled_acceptance_rate"]
    assert rows["mlp"]["batch"] == 256 and rows["cnn"]["batch"] == 64

    with (out.with_suffix(".csv")).open() as f:
        table = list(csv.DictReader(f))
    assert [t["model"] for t in table] == ["mlp", "cnn"]
    assert "ratio" in table[0]
    assert "GAL/standard" in proc.stdout or "ratio" in proc.stdout
