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

VARIANTS = ("standard", "release", "gal", "gal_f32", "gal_compiled", "floor")
ROW_FIELDS = {
    "model", "batch", "steps", "target_compiled", "gal_vs_release", "gal_le_release", "float64_cost",
    "compiled_meets_target", "gal_acceptance_rate", "gal_fallbacks", "gal_compiled_fallbacks", "gal_compiled_compiled",
    *(f"{v}_{k}" for v in VARIANTS for k in ("ms_median", "ms_p25", "ms_min", "step_peak_mb", "persistent_mb")),
    *(f"ratio_{v}" for v in VARIANTS),
}  # fmt: skip
META_FIELDS = {"device", "threads", "torch", "galcore", "memory_method", "timing", "block", "variants", "command"}


def test_step_overhead_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench" / "step_overhead.json"
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- speed:table:begin -->\nold table\n<!-- speed:table:end -->\nrest\n")
    cmd = [
        sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--threads", "1",
        "--models", "mlp,cnn", "--json", str(out), "--readme", str(readme),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    data = json.loads(out.read_text())
    assert META_FIELDS <= data["meta"].keys()
    assert data["meta"]["device"] == "cpu" and data["meta"]["threads"] == 1 and data["meta"]["quick"] is True
    assert tuple(data["meta"]["variants"]) == VARIANTS
    rows = {r["model"]: r for r in data["rows"]}
    assert set(rows) == {"mlp", "cnn"}
    for r in rows.values():
        assert ROW_FIELDS <= r.keys(), ROW_FIELDS - r.keys()
        for v in VARIANTS:
            assert r[f"{v}_ms_median"] > 0
            assert abs(r[f"ratio_{v}"] - r[f"{v}_ms_median"] / r["standard_ms_median"]) < 1e-9
        assert abs(r["gal_vs_release"] - r["gal_ms_median"] / r["release_ms_median"]) < 1e-9
        assert abs(r["float64_cost"] - r["gal_ms_median"] / r["gal_f32_ms_median"]) < 1e-9
        assert r["gal_le_release"] == (r["gal_vs_release"] <= 1.0)
        assert r["compiled_meets_target"] == (r["ratio_gal_compiled"] <= r["target_compiled"])
        # a step allocates activations and gradients; GAL keeps h (one flat tensor and its momentum) on top
        assert r["standard_step_peak_mb"] > 0 and r["gal_step_peak_mb"] > 0
        assert r["gal_persistent_mb"] > r["standard_persistent_mb"] > 0
        assert r["gal_fallbacks"] == 0 and r["gal_compiled_fallbacks"] == 0 and r["gal_compiled_compiled"]
        # the eager and compiled steps took the same steps from the same h: the same decisions
        assert r["gal_acceptance_rate"] == r["gal_compiled_acceptance_rate"]
    assert rows["mlp"]["batch"] == 256 and rows["cnn"]["batch"] == 64

    with (out.with_suffix(".csv")).open() as f:
        table = list(csv.DictReader(f))
    assert [t["model"] for t in table] == ["mlp", "cnn"] and "ratio_gal" in table[0]
    # the markdown table, also written between the README's markers (the rest of the file kept)
    md = out.with_suffix(".md").read_text()
    assert [line[:2] for line in md.splitlines()[:4]] == ["| ", "|-", "| ", "| "]  # header, rule, 2 models
    assert "| MLP 64-256-10, batch 256 |" in md
    text = readme.read_text()
    assert text.startswith("intro\n<!-- speed:table:begin -->\n| model |") and text.endswith("<!-- speed:table:end -->\nrest\n")
    assert "old table" not in text and md.strip() in text


def test_release_step_equals_the_reference_step() -> None:
    """The benchmark's restatement of the release's step (host copies, three backward calls)
    sends back the gradient and trains h exactly as galcore.reference.reference_step does."""
    import copy

    import torch
    import torch.nn.functional as F

    import galcore
    from galcore.experiments.harness.bench import ReferenceRunner, ReleaseRunner

    torch.manual_seed(0)
    model, h = torch.nn.Linear(6, 10), galcore.make_adjuster(10, (100, 32, 16))
    x, y = torch.randn(32, 6), torch.randint(0, 10, (32,))
    runs = []
    for cls in (ReleaseRunner, ReferenceRunner):
        m, hh = copy.deepcopy(model), copy.deepcopy(h)
        runner = cls(m, hh, F.cross_entropy, torch.optim.SGD([*m.parameters(), *hh.parameters()], lr=0.5), ratio=0.3)
        runner.step(x, y)
        runs.append([p.detach().clone() for p in (*m.parameters(), *hh.parameters())])
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not torch.equal(runs[0][-1], h[-1].bias.detach())  # h was trained
