"""Embedded or generated datasets (no download): scikit-learn's bundled digits images, MNIST-1D.

``load_digits`` ships 1,797 real 8x8 grey images of handwritten digits (values 0..16), 10
classes. :func:`digits` gives a fixed, stratified train/test split as tensors.
"""

from __future__ import annotations

import os
from pathlib import Path

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


def mnist1d(n_train: int = 4000, n_test: int = 1000, seed: int = 42) -> Data:
    """MNIST-1D (Greydanus 2020, package ``mnist1d``), generated offline by its ``make_dataset``.

    Ten classes of length-40 1-D signals; the package's defaults (4,000 training and 1,000 test
    samples, seed 42) are its paper's benchmark. ``n_test`` can be made large: the samples come
    from one call of the generator (the package standardises them with the mean and std of all
    samples drawn), split into the first ``n_train`` and the rest. x float32 (N, 1, 40), y int64.
    Written once to ``<data>/mnist1d-<n_train>-<n_test>-<seed>.pt`` and read from there after.
    """
    path = _data_root() / f"mnist1d-{n_train}-{n_test}-{seed}.pt"
    if path.is_file():
        blob = torch.load(path, weights_only=True)
    else:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.seed = seed
        # make_dataset draws num_samples // 10 per class: round up so both splits are full
        per_class = -(-(n_train + n_test) // 10)
        args.num_samples = 10 * per_class
        args.train_split = n_train / args.num_samples
        raw = make_dataset(args)
        blob = {
            "x_train": torch.tensor(raw["x"][:n_train], dtype=torch.float32).unsqueeze(1),
            "y_train": torch.tensor(raw["y"][:n_train], dtype=torch.int64),
            "x_test": torch.tensor(raw["x_test"][:n_test], dtype=torch.float32).unsqueeze(1),
            "y_test": torch.tensor(raw["y_test"][:n_test], dtype=torch.int64),
        }
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(blob, tmp)
        tmp.replace(path)
    return Data(f"mnist1d-{n_train}-{n_test}-{seed}", blob["x_train"], blob["y_train"], blob["x_test"], blob["y_test"],
                num_outputs=10)
