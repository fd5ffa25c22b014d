"""Ultralytics run offline for the experiments (notebook 03, the detection tests): a project-local
config folder with a font (so none is downloaded), no online checks, no installs, no analytics,
datasets, weights and runs inside the project. Call :func:`offline_env` before importing
Ultralytics."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from galcore.experiments.harness.results import repo_root

__all__ = ["offline_env"]


def _find_font() -> Path:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not path.is_file():  # pragma: no cover - matplotlib always ships it
        raise FileNotFoundError(f"matplotlib's DejaVuSans.ttf not found at {path}")
    return path


def _project_root() -> Path:
    """The galcore repository at or above the working directory, else the working directory."""
    return repo_root() or Path.cwd().resolve()


def offline_env(root: str | os.PathLike[str] | None = None, runs_dir: str | os.PathLike[str] | None = None) -> Path:
    """Set up Ultralytics to run fully offline and return its config folder.

    Call it before ``import ultralytics`` (Ultralytics reads its environment at import); if
    Ultralytics is already imported, its module-level switches are patched as well.

    - ``YOLO_CONFIG_DIR=<root>/.yolo_config`` (a project-local settings folder), holding
      ``Arial.ttf`` (a copy of matplotlib's DejaVuSans, so no font is downloaded);
    - ``YOLO_OFFLINE=1`` (no online check), ``YOLO_AUTOINSTALL=0`` (no pip installs);
    - settings: ``sync=False`` (no analytics or crash reports), every logger integration off,
      ``runs_dir=<runs_dir or root/runs>``, and Ultralytics' ``datasets_dir`` and
      ``weights_dir`` inside the project: ``$GALCORE_DATA`` or ``<root>/data`` (git-ignored),
      and its ``weights/`` folder.

    Training calls should still pass ``pretrained=False``, ``amp=False`` on CPU (no AMP check,
    which would download weights), ``plots=False`` and a model ``*.yaml`` (never ``*.pt``).

    Args:
        root: the project folder; default the galcore repository root (or the working directory).
        runs_dir: Ultralytics' default runs folder; default ``<root>/runs``.
    """
    base = Path(root) if root is not None else _project_root()
    cfg = (base / ".yolo_config").resolve()
    font = _find_font()
    for folder in (cfg, cfg / "Ultralytics"):  # YOLO_CONFIG_DIR and Ultralytics' USER_CONFIG_DIR below it
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "Arial.ttf"
        if not target.is_file():
            shutil.copyfile(font, target)
    os.environ["YOLO_CONFIG_DIR"] = str(cfg)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))

    import ultralytics.utils as uu  # after the environment is set
    import ultralytics.utils.checks as uc

    user_dir = Path(uu.USER_CONFIG_DIR)  # differs from cfg/Ultralytics if Ultralytics was imported before
    with contextlib.suppress(OSError):
        user_dir.mkdir(parents=True, exist_ok=True)
        if not (user_dir / "Arial.ttf").is_file():
            shutil.copyfile(font, user_dir / "Arial.ttf")
    uu.ONLINE = False
    uc.ONLINE = False
    uc.AUTOINSTALL = False
    with contextlib.suppress(ImportError):
        import ultralytics.utils.events as ue

        ue.ONLINE = False
        ue.events.enabled = False
    runs = Path(runs_dir) if runs_dir is not None else base / "runs"
    data = Path(os.environ["GALCORE_DATA"]) if os.environ.get("GALCORE_DATA") else base / "data"
    settings = {
        "sync": False,
        "runs_dir": str(runs.resolve()),
        "datasets_dir": str(data.resolve()),
        "weights_dir": str((data / "weights").resolve()),
        "clearml": False,
        "comet": False,
        "dvc": False,
        "mlflow": False,
        "raytune": False,
        "tensorboard": False,
        "wandb": False,
        "vscode_msg": False,
        "openvino_msg": False,
    }
    uu.SETTINGS.update({k: v for k, v in settings.items() if k in uu.SETTINGS})
    return cfg
