"""A small, deterministic object-detection dataset in YOLO format: shapes on textured backgrounds.

Each image (``imgsz`` x ``imgsz`` RGB PNG) holds 1 to ``max_objects`` shapes of the first
``n_classes`` classes of :data:`CLASSES` (circle, square, triangle, cross), of random size, colour
and rotation, drawn in order on a background, so later shapes occlude earlier ones. The
background is ``"textured"`` (low-frequency colour noise, stripes, pixel noise; shapes of any
colour, the hard version) or ``"plain"`` (one colour with light pixel noise; each shape's colour
differs from it by at least ``min_contrast`` grey levels in some channel, the easy version). A shape is labelled when at least ``min_visible`` of its pixels
stay visible; its box is the box of the whole shape (amodal), in YOLO's normalised
``class cx cy w h``. Shapes more occluded than that remain in the image, unlabelled (clutter).

Everything is a function of ``(seed, split, index)`` only (a ``numpy`` generator per image), so
the same arguments write byte-identical files in any order. :func:`shapes_detection` writes the
dataset on first use under ``data/`` (git-ignored) and returns the path of its dataset yaml;
later calls with the same arguments reuse it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASSES", "ShapesConfig", "generate_shapes_detection", "render_image", "shapes_detection"]

#: Class names, in label order.
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

_FORMAT_VERSION = 2  # bump when the rendering changes, so cached copies are regenerated
_SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class ShapesConfig:
    """What the generator draws.

    Attributes:
        n_train: number of training images.
        n_val: number of validation images.
        imgsz: side of each (square) image, pixels.
        max_objects: at most this many shapes per image (at least 1).
        min_size, max_size: shape size (side of its bounding square) as a fraction of ``imgsz``.
        min_visible: fraction of a shape's pixels that must stay visible for it to be labelled.
        seed: base seed; image ``i`` of split ``s`` uses ``(seed, s, i)``.
        n_classes: use the first ``n_classes`` of :data:`CLASSES` (1 to 4).
        background: ``"textured"`` or ``"plain"`` (see the module docstring).
        min_contrast: with a plain background, the least largest-channel difference (0-255)
            between a shape's colour and the background's.
    """

    n_train: int = 512
    n_val: int = 128
    imgsz: int = 64
    max_objects: int = 3
    min_size: float = 0.22
    max_size: float = 0.5
    min_visible: float = 0.5
    seed: int = 0
    n_classes: int = 4
    background: str = "textured"
    min_contrast: int = 60

    def __post_init__(self) -> None:
        if self.n_train < 1 or self.n_val < 1:
            raise ValueError(f"n_train and n_val must be >= 1, got {self.n_train}, {self.n_val}")
        if self.imgsz < 16:
            raise ValueError(f"imgsz must be >= 16, got {self.imgsz}")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")
        if not 0 < self.min_size <= self.max_size <= 1:
            raise ValueError(f"need 0 < min_size <= max_size <= 1, got {self.min_size}, {self.max_size}")
        if not 0 <= self.min_visible <= 1:
            raise ValueError(f"min_visible must be in [0, 1], got {self.min_visible}")
        if not 1 <= self.n_classes <= len(CLASSES):
            raise ValueError(f"n_classes must be in [1, {len(CLASSES)}], got {self.n_classes}")
        if self.background not in ("textured", "plain"):
            raise ValueError(f"background must be 'textured' or 'plain', got {self.background!r}")
        if not 0 <= self.min_contrast <= 200:
            raise ValueError(f"min_contrast must be in [0, 200], got {self.min_contrast}")

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names in use, in label order."""
        return CLASSES[: self.n_classes]

    def key(self) -> str:
        """A short hash of the configuration (and format version), naming the folder."""
        blob = json.dumps({**asdict(self), "version": _FORMAT_VERSION}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured RGB background, uint8 (size, size, 3)."""
    base = rng.uniform(40, 215, size=3)
    cells = int(rng.integers(3, 7))
    coarse = rng.normal(0.0, 35.0, size=(cells, cells, 3))
    # bilinear upsampling of the coarse noise to the image
    t = np.linspace(0, cells - 1, size)
    i0 = np.clip(np.floor(t).astype(int), 0, cells - 2)
    f = (t - i0)[:, None]
    rows = coarse[i0] * (1 - f)[:, :, None] + coarse[i0 + 1] * f[:, :, None]  # (size, cells, 3)
    img = rows[:, i0] * (1 - f.T)[:, :, None] + rows[:, i0 + 1] * f.T[:, :, None]
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(4.0, 12.0)
    stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
    img = img + base + stripes[:, :, None] * rng.uniform(5, 30) * rng.choice([-1.0, 1.0], size=3)
    img = img + rng.normal(0.0, 8.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _plain(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A one-colour RGB background with light pixel noise, uint8 (size, size, 3), and its colour."""
    base = rng.uniform(30, 225, size=3)
    img = base + rng.normal(0.0, 6.0, size=(size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8), base


def _contrasting(rng: np.random.Generator, base: np.ndarray, min_contrast: int) -> tuple[int, int, int]:
    """A random colour whose largest channel difference from ``base`` is at least ``min_contrast``."""
    colour = rng.integers(0, 256, size=3)
    for _ in range(64):
        if np.abs(colour - base).max() >= min_contrast:
            break
        colour = rng.integers(0, 256, size=3)
    else:  # push the channel farthest from the middle grey to the opposite end
        c = int(np.argmax(np.abs(base - 127.5)))
        colour[c] = 0 if base[c] > 127.5 else 255
    return tuple(int(v) for v in colour)


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a square, triangle or cross of 'radius' r centred at (cx, cy), rotated by angle."""
    if kind == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        pts = [(x * 0.75, y * 0.75) for x, y in pts]
    elif kind == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif kind == "cross":
        w = 0.33
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w),
               (-w, -w)]
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(kind)
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _draw(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, angle: float, fill) -> None:
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=fill)


def render_image(config: ShapesConfig, split: str, index: int) -> tuple[Image.Image, np.ndarray]:
    """Draw image ``index`` of ``split``.

    Returns:
        The RGB image and its labels, a float array (n, 5) of ``class cx cy w h`` normalised to
        [0, 1] (YOLO format), possibly with n = 0.
    """
    if split not in _SPLIT_OFFSET:
        raise ValueError(f"split must be one of {sorted(_SPLIT_OFFSET)}, got {split!r}")
    size = config.imgsz
    rng = np.random.default_rng([config.seed, _SPLIT_OFFSET[split], index])
    plain = config.background == "plain"
    if plain:
        arr, base = _plain(rng, size)
    else:
        arr, base = _background(rng, size), None
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    owner = Image.new("L", (size, size), 0)  # which shape owns each pixel (0 = background)
    odraw = ImageDraw.Draw(owner)
    n = int(rng.integers(1, config.max_objects + 1))
    shapes = []
    for k in range(n):
        kind_id = int(rng.integers(config.n_classes))
        kind = CLASSES[kind_id]
        side = rng.uniform(config.min_size, config.max_size) * size
        r = side / 2
        cx, cy = rng.uniform(r * 0.6, size - r * 0.6, size=2)
        angle = rng.uniform(0, 2 * math.pi)
        if base is not None:
            colour = _contrasting(rng, base, config.min_contrast)
        else:
            colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        _draw(draw, kind, cx, cy, r, angle, colour)
        # own mask of this shape, for its box and its visible fraction
        own = Image.new("L", (size, size), 0)
        _draw(ImageDraw.Draw(own), kind, cx, cy, r, angle, 255)
        _draw(odraw, kind, cx, cy, r, angle, k + 1)
        shapes.append((kind_id, np.asarray(own) > 0))
    owner_arr = np.asarray(owner)
    labels = []
    for k, (kind_id, mask) in enumerate(shapes):
        total = int(mask.sum())
        if total < 4:
            continue
        visible = int((owner_arr == k + 1).sum())
        if visible < config.min_visible * total:
            continue
        ys, xs = np.nonzero(mask)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        labels.append([kind_id, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size])
    return img, np.asarray(labels, dtype=float).reshape(-1, 5)


def generate_shapes_detection(
    folder: str | os.PathLike[str],
    config: ShapesConfig | None = None,
    *,
    yaml_path_root: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the dataset into ``folder`` (created; existing files overwritten) and return its yaml.

    Layout: ``images/{train,val}/NNNNNN.png``, ``labels/{train,val}/NNNNNN.txt``,
    ``shapes_detection.yaml`` (Ultralytics dataset yaml with an absolute ``path``: ``folder``,
    or ``yaml_path_root`` when the folder is to be moved there) and ``meta.json`` (the
    configuration).
    """
    config = config or ShapesConfig()
    root = Path(folder).resolve()
    final = Path(yaml_path_root).resolve() if yaml_path_root is not None else root
    for split, count in (("train", config.n_train), ("val", config.n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img, labels = render_image(config, split, i)
            img.save(root / "images" / split / f"{i:06d}.png", format="PNG", optimize=False)
            lines = [f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
            (root / "labels" / split / f"{i:06d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(config.classes))
    yaml = root / "shapes_detection.yaml"
    yaml.write_text(
        f"# galcore synthetic shapes detection dataset (galcore.experiments.detection.shapes), key {config.key()}\n"
        f"path: {final}\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
    )
    (root / "meta.json").write_text(
        json.dumps({"config": asdict(config), "version": _FORMAT_VERSION, "classes": list(config.classes)}, indent=2)
    )
    return yaml


def _default_data_root() -> Path:
    env = os.environ.get("GALCORE_DATA")
    if env:
        return Path(env)
    from galcore.experiments.harness.results import repo_root

    return (repo_root() or Path.cwd()) / "data"


def shapes_detection(
    root: str | os.PathLike[str] | None = None,
    config: ShapesConfig | None = None,
    **overrides: float,
) -> Path:
    """The dataset yaml for ``config`` (or :class:`ShapesConfig` with ``overrides``), written on first use.

    The dataset lives in ``<root>/shapes_detection_<key>/`` where ``root`` defaults to
    ``$GALCORE_DATA`` or the repository's ``data/`` folder and ``key`` hashes the configuration.
    It is written to a temporary folder and renamed into place, so an interrupted run leaves no
    half-written dataset behind.
    """
    if config is None:
        config = ShapesConfig(**overrides)  # type: ignore[arg-type]
    elif overrides:
        raise TypeError("pass either config or keyword overrides, not both")
    base = Path(root) if root is not None else _default_data_root()
    folder = base / f"shapes_detection_{config.key()}"
    yaml = folder / "shapes_detection.yaml"
    meta = folder / "meta.json"
    if yaml.is_file() and meta.is_file():
        try:
            if json.loads(meta.read_text())["config"] == asdict(config):
                return yaml
        except (ValueError, KeyError):
            pass
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=base))
    try:
        generate_shapes_detection(tmp, config, yaml_path_root=folder)
        if folder.exists():  # stale or foreign copy under our name
            shutil.rmtree(folder, ignore_errors=True)
        tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is not
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: keep its copy (same bytes)
            if not yaml.is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return yaml
