"""The synthetic shapes detection dataset: deterministic, valid YOLO labels, generated once."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from galcore.experiments.detection.shapes import (
    CLASSES,
    ShapesConfig,
    generate_shapes_detection,
    render_image,
    shapes_detection,
)

SMALL = ShapesConfig(n_train=6, n_val=3, imgsz=64, seed=3)


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".png", ".txt", ".json")
    }


def test_generation_is_byte_identical(tmp_path: Path) -> None:
    a = generate_shapes_detection(tmp_path / "a", SMALL)
    b = generate_shapes_detection(tmp_path / "b", SMALL)
    da, db = _digests(a.parent), _digests(b.parent)
    assert len(da) == 2 * (SMALL.n_train + SMALL.n_val) + 1
    assert da == db
    # the yamls differ only in the absolute path they name
    la = [ln for ln in a.read_text().splitlines() if not ln.startswith("path:")]
    lb = [ln for ln in b.read_text().splitlines() if not ln.startswith("path:")]
    assert la == lb


def test_image_depends_only_on_seed_split_index() -> None:
    img1, lab1 = render_image(SMALL, "train", 4)
    render_image(SMALL, "val", 0)  # order of calls does not matter
    img2, lab2 = render_image(SMALL, "train", 4)
    assert np.array_equal(np.asarray(img1), np.asarray(img2))
    assert np.array_equal(lab1, lab2)
    other, _ = render_image(ShapesConfig(n_train=6, n_val=3, imgsz=64, seed=4), "train", 4)
    assert not np.array_equal(np.asarray(img1), np.asarray(other))
    val, _ = render_image(SMALL, "val", 4)
    assert not np.array_equal(np.asarray(img1), np.asarray(val))


def test_labels_are_valid_yolo_boxes() -> None:
    cfg = ShapesConfig(n_train=40, n_val=1, imgsz=64, seed=0)
    counts = np.zeros(len(CLASSES), dtype=int)
    n_labels = []
    for i in range(cfg.n_train):
        img, lab = render_image(cfg, "train", i)
        assert img.size == (64, 64) and img.mode == "RGB"
        assert lab.shape[1] == 5
        assert np.all((lab[:, 0] >= 0) & (lab[:, 0] < len(CLASSES)))
        cx, cy, w, h = lab[:, 1], lab[:, 2], lab[:, 3], lab[:, 4]
        assert np.all((w > 0) & (h > 0))
        assert np.all(cx - w / 2 >= -1e-6) and np.all(cx + w / 2 <= 1 + 1e-6)
        assert np.all(cy - h / 2 >= -1e-6) and np.all(cy + h / 2 <= 1 + 1e-6)
        assert len(lab) <= cfg.max_objects
        counts += np.bincount(lab[:, 0].astype(int), minlength=len(CLASSES))
        n_labels.append(len(lab))
    assert np.all(counts > 0), f"every class should appear in 40 images, got {counts}"
    assert max(n_labels) >= 2


def test_occlusion_drops_hidden_shapes() -> None:
    loose = ShapesConfig(n_train=30, n_val=1, max_objects=4, max_size=0.6, min_visible=0.0)
    strict = ShapesConfig(n_train=30, n_val=1, max_objects=4, max_size=0.6, min_visible=0.9)
    n_loose = sum(len(render_image(loose, "train", i)[1]) for i in range(30))
    n_strict = sum(len(render_image(strict, "train", i)[1]) for i in range(30))
    assert n_strict < n_loose  # heavily occluded shapes stay in the image but lose their label
    # the drawing itself does not depend on min_visible
    drawn_loose, drawn_strict = render_image(loose, "train", 1)[0], render_image(strict, "train", 1)[0]
    assert np.array_equal(np.asarray(drawn_loose), np.asarray(drawn_strict))


def test_generated_on_first_use_then_reused(tmp_path: Path) -> None:
    path = shapes_detection(tmp_path, SMALL)
    assert path.is_file()
    spec = yaml.safe_load(path.read_text())
    assert Path(spec["path"]) == path.parent.resolve()
    assert spec["names"] == dict(enumerate(CLASSES))
    assert len(list((path.parent / "images" / "train").glob("*.png"))) == SMALL.n_train
    assert len(list((path.parent / "labels" / "val").glob("*.txt"))) == SMALL.n_val
    stamp = (path.parent / "images" / "train" / "000000.png").stat().st_mtime_ns
    again = shapes_detection(tmp_path, SMALL)
    assert again == path
    assert (path.parent / "images" / "train" / "000000.png").stat().st_mtime_ns == stamp
    # no temporary folders left behind, and another config gets its own folder
    other = shapes_detection(tmp_path, n_train=2, n_val=1, seed=9)
    assert other.parent != path.parent
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.parent.name, other.parent.name])


@pytest.mark.parametrize(
    "kwargs",
    [{"n_train": 0}, {"imgsz": 8}, {"max_objects": 0}, {"min_size": 0.6, "max_size": 0.5}, {"min_visible": 1.5},
     {"n_classes": 0}, {"n_classes": 5}, {"background": "noisy"}, {"min_contrast": -1}],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ShapesConfig(**kwargs)


def test_overrides_and_config_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        shapes_detection(tmp_path, SMALL, n_train=3)


def test_fewer_classes_and_a_plain_background(tmp_path: Path) -> None:
    cfg = ShapesConfig(n_train=40, n_val=2, imgsz=64, n_classes=2, background="plain", min_contrast=60, seed=2)
    assert cfg.classes == CLASSES[:2]
    seen = set()
    for i in range(cfg.n_train):
        img, lab = render_image(cfg, "train", i)
        seen |= set(lab[:, 0].astype(int).tolist())
        px = np.asarray(img).astype(float)
        corners = np.concatenate([px[:3, :3].reshape(-1, 3), px[-3:, -3:].reshape(-1, 3)])
        border = np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]])
        # a plain background: the image's border pixels (mostly background) vary little
        assert np.median(np.abs(border - np.median(border, axis=0)).max(axis=1)) < 30
        for c, x, y, w, h in lab:  # the centre of a labelled shape differs from the corners' colour
            centre = px[int(y * 64), int(x * 64)]
            assert np.abs(centre - np.median(corners, axis=0)).max() >= 20 or w * h < 0.05
    assert seen == {0, 1}
    spec = yaml.safe_load(shapes_detection(tmp_path, cfg).read_text())
    assert spec["names"] == {0: CLASSES[0], 1: CLASSES[1]}
