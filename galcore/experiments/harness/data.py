"""Embedded or generated datasets (no download): scikit-learn's bundled digits images, MNIST-1D.

``load_digits`` ships 1,797 real 8x8 grey images of handwritten digits (values 0..16), 10
classes. :func:`digits` gives a fixed, stratified train/test split as tensors.
"""

from __future__ import annotations

import math

import functools
import os
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from galcore.experiments.harness import Data

__all__ = ["digits", "digits_arrays", "mnist1d"]


def digits_arrays(test_size: float = 0.25, split_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as ``(x_train, y_train, x_test, y_test)``: x float32 (N, 1, 8, 8) in [0, 1],
    y int64 (N,). Stratified split, fixed by ``split_seed``."""
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    idx = torch.arange(len(y))
    tr, te = train_test_split(idx.numpy(), test_size=test_size, random_state=split_seed, stratify=y.numpy())
    tr_t, te_t = torch.as_tensor(tr), torch.as_tensor(te)
    return x[tr_t], y[tr_t], x[te_t], y[te_t]


def digits(test_size: float = 0.25, split_seed: int = 0, normalize: bool = True) -> Data:
    """The digits classification task as :class:`galcore.experiments.harness.Data` (10 outputs).

    With ``normalize`` the inputs are standardised with the training split's mean and std.
    """
    x_tr, y_tr, x_te, y_te = digits_arrays(test_size, split_seed)
    if normalize:
        mean, std = x_tr.mean(), x_tr.std()
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    return Data(f"digits-{test_size}-{split_seed}-{int(normalize)}", x_tr, y_tr, x_te, y_te, num_outputs=10)


def _data_root() -> Path:
    """``$GALCORE_DATA`` or ``data/`` at the repository root (git-ignored)."""
    from galcore.experiments.harness.results import repo_root

    env = os.environ.get("GALCORE_DATA")
    root = Path(env) if env else (repo_root() or Path.cwd()) / "data"
    root.mkdir(parents=True, exist_ok=True)
    return root


#: the MNIST-1D package's benchmark draw: 5,000 signals, the first 4,000 its training split
_BENCH_SAMPLES, _BENCH_TRAIN = 5000, 4000
#: offset of the seed of the extra test signals' draw (disjoint from any benchmark seed in use)
TEST_SEED_OFFSET = 1_000_000


def _mnist1d_raw(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``num_samples`` MNIST-1D signals (a multiple of 10) before the package's global
    standardisation: x float64 (N, 40), y int64 (N,). The package's own generator
    (``transform`` of its templates), in the package's draw order: the legacy NumPy seed, the
    classes in turn, then a shuffle; :func:`mnist1d` checks that this reproduces
    ``make_dataset``'s benchmark exactly."""
    from mnist1d.data import get_dataset_args, get_templates
    from mnist1d.transform import transform
    from mnist1d.utils import set_seed

    args = get_dataset_args()
    args.seed, args.num_samples = seed, num_samples
    templates = get_templates()
    set_seed(seed)
    xs, ys = [], []
    for label in range(len(templates["y"])):
        for _ in range(num_samples // len(templates["y"])):
            x, _t = transform(templates["x"][label], templates["t"], args)
            xs.append(x)
            ys.append(templates["y"][label])
    order = np.random.permutation(len(ys))
    return np.stack(xs)[order], np.stack(ys)[order].astype(np.int64)


@functools.lru_cache(maxsize=2)
def _benchmark(seed: int) -> tuple[dict[str, np.ndarray], float, float]:
    """The package's benchmark draw for ``seed`` (``make_dataset``'s dict) and the mean and std
    it was standardised with, checked against :func:`_mnist1d_raw`."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    args.num_samples, args.train_split = _BENCH_SAMPLES, _BENCH_TRAIN / _BENCH_SAMPLES
    bench = make_dataset(args)
    raw, raw_y = _mnist1d_raw(_BENCH_SAMPLES, seed)
    mean, std = float(raw.mean()), float(raw.std())
    mine = (raw - mean) / std
    if not (np.allclose(mine[:_BENCH_TRAIN], bench["x"], rtol=0, atol=1e-12) and np.array_equal(raw_y[:_BENCH_TRAIN], bench["y"])):
        raise RuntimeError("this mnist1d package's make_dataset no longer matches galcore's reading of its generator; "
                           "pin mnist1d==0.0.2 or update galcore.experiments.harness.data")
    return bench, mean, std


def _mnist1d_blob(n_train: int, n_test: int, seed: int) -> dict[str, torch.Tensor]:
    bench, mean, std = _benchmark(seed)
    if n_test <= _BENCH_SAMPLES - _BENCH_TRAIN:
        x_test, y_test = bench["x_test"][:n_test], bench["y_test"][:n_test]
    else:  # a separate draw, standardised with the benchmark's mean and std (one map for both splits)
        per_class = -(-n_test // 10)
        tx, ty = _mnist1d_raw(10 * per_class, seed + TEST_SEED_OFFSET)
        x_test, y_test = ((tx - mean) / std)[:n_test], ty[:n_test]
    return {
        "x_train": torch.tensor(bench["x"][:n_train], dtype=torch.float32).unsqueeze(1),
        "y_train": torch.tensor(bench["y"][:n_train], dtype=torch.int64),
        "x_test": torch.tensor(x_test, dtype=torch.float32).unsqueeze(1),
        "y_test": torch.tensor(y_test, dtype=torch.int64),
    }


def mnist1d(n_train: int = 4000, n_test: int = 1000, seed: int = 42) -> Data:
    """MNIST-1D (Greydanus 2020, package ``mnist1d``), generated offline by its generator.

    Ten classes of length-40 1-D signals. The training set is the package's benchmark draw
    (``make_dataset`` with its defaults: 5,000 signals, seed ``seed``, 42 being the paper's),
    its first ``n_train`` (at most 4,000) training signals: the same signals whatever
    ``n_test`` is. The test set: up to 1,000 signals, the benchmark's own test split (so
    ``mnist1d(4000, 1000)`` is the paper's benchmark); more, a separate draw of the same
    generator (seed ``seed + TEST_SEED_OFFSET``) standardised with the benchmark's mean and
    std, so train and test share one affine map. x float32 (N, 1, 40), y int64 (N,).
    Written once to ``<data>/mnist1d-v2-<n_train>-<n_test>-<seed>.pt`` and read from there after.
    """
    for name, v, hi in (("n_train", n_train, _BENCH_TRAIN), ("n_test", n_test, None)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 or (hi is not None and v > hi):
            raise ValueError(f"{name} must be an int in [1, {hi or 'inf'}], got {v!r}")
    path = _data_root() / f"mnist1d-v2-{n_train}-{n_test}-{seed}.pt"
    if path.is_file():
        blob = torch.load(path, weights_only=True)
    else:
        blob = _mnist1d_blob(int(n_train), int(n_test), int(seed))
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(blob, tmp)
        tmp.replace(path)
    return Data(f"mnist1d-{n_train}-{n_test}-{seed}", blob["x_train"], blob["y_train"], blob["x_test"], blob["y_test"],
                num_outputs=10)


#: the number of images in scikit-learn's digits data set (the split's test share is of these)
DIGITS_IMAGES = 1797


def test_size_of(name: str) -> int | None:
    """The number of test samples of a data set from its :class:`Data` name (``mnist1d-<n_train>-
    <n_test>-<seed>...``, ``digits-<test share>-...``, suffixes such as ``-n4000`` allowed), or
    ``None`` for a name of another form. Used for one test sample's worth of a metric
    (:func:`galcore.experiments.harness.margins.error_resolution`)."""
    parts = str(name).split("-")
    try:
        if parts[0] == "mnist1d" and len(parts) >= 3:
            return int(parts[2])
        if parts[0] == "digits" and len(parts) >= 2:
            return math.ceil(float(parts[1]) * DIGITS_IMAGES)  # scikit-learn rounds the test share up
    except ValueError:
        return None
    return None
