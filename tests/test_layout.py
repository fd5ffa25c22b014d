"""The package's shape: a small torch-only core, the experiments beside it, imports one way."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = [p for p in (ROOT / "galcore").rglob("*.py") if "experiments" not in p.relative_to(ROOT / "galcore").parts]
HEAVY = ("pandas", "matplotlib", "scipy", "sklearn", "torchvision", "ultralytics", "tqdm", "IPython")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_the_core_never_imports_the_experiments() -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.startswith("galcore.experiments"))
                 for p in CORE}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_import_galcore_needs_torch_alone() -> None:
    """With the heavy packages made unimportable (a torch-only install), the whole core imports
    and none of them is loaded."""
    code = f"""
import importlib, importlib.abc, sys
HEAVY = {HEAVY!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in HEAVY:
            raise ImportError('blocked in this test: ' + name)
sys.meta_path.insert(0, Block())
import galcore, galcore.gal, galcore.config, galcore.build, galcore.reference, galcore.remainder, galcore.distributed
import galcore.adjuster, galcore.integrations, galcore.integrations.ultralytics
loaded = sorted(m for m in sys.modules if m.split('.')[0] in HEAVY)
assert not loaded, loaded
print('ok', len(galcore.__all__))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")


def test_import_galcore_adds_nothing_beyond_torch() -> None:
    """With everything installed: the core loads no package that ``import torch`` did not load
    already (torch itself imports tqdm and numpy when present, e.g. ``torch.hub``'s progress bar)."""
    code = """
import sys, torch
before = set(sys.modules)
import galcore, galcore.gal, galcore.config, galcore.build, galcore.reference, galcore.remainder, galcore.distributed
import galcore.adjuster, galcore.integrations, galcore.integrations.ultralytics
print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['galcore']"


#: modules allowed over MAX_LINES, each with who splits it; keep this list short
LONG_MODULES = {
}
MAX_LINES = 500


def test_no_module_is_over_500_lines() -> None:
    """Small modules with one job each: every module under galcore/ has at most MAX_LINES lines,
    but the few in LONG_MODULES (each says who splits it); an entry that fits again must go."""
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in (ROOT / "galcore").rglob("*.py")}
    assert {k: n for k, n in sizes.items() if n > MAX_LINES and k not in LONG_MODULES} == {}
    assert [k for k in LONG_MODULES if sizes.get(k, 0) <= MAX_LINES] == []


def test_every_experiment_module_lives_in_a_package() -> None:
    """galcore/experiments/ holds only packages (the harness, one per notebook, the main job):
    the tree says who owns what."""
    top = ROOT / "galcore" / "experiments"
    assert sorted(p.name for p in top.glob("*.py")) == ["__init__.py"]
    packages = sorted(p.name for p in top.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    assert packages == ["ablations", "classification", "detection", "harness", "main", "regression", "theory"]


def test_the_core_stays_small() -> None:
    """2,050 lines until the core was split into one job per module (step.py, watch.py, state.py,
    param.py: four more module headers) and gained an all-or-nothing load_state_dict, ParamGAL's
    dtype fallback and h's gradient kept until a backward call succeeds: about 180 lines."""
    lines = sum(len(p.read_text().splitlines()) for p in CORE)
    assert lines <= 2250, f"the core has {lines} lines (keep it near 2,200: the experiments go in galcore/experiments)"


def test_no_tracker_references_in_code_or_tests() -> None:
    pattern = re.compile(r"\b(issue|ticket)\s*#?\d+|#\d{1,4}\b(?!\w)", re.IGNORECASE)
    hits = []
    for folder in ("galcore", "tests", "benchmarks", "examples", "scripts"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".sh") and path.name != "test_layout.py":
                hits += [f"{path.relative_to(ROOT)}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                         if pattern.search(line)]
    assert hits == []


def test_tests_share_helpers_through_a_module_not_other_test_files() -> None:
    offenders = []
    for path in (ROOT / "tests").glob("test_*.py"):
        offenders += [f"{path.name}: {n}" for n in _imports(path) if re.match(r"tests\.test_", n)]
    assert offenders == []
