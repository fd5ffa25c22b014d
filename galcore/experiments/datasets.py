"""Embedded datasets (no download): scikit-learn's bundled digits images.

``load_digits`` ships 1,797 real 8x8 grey images of handwritten digits (values 0..16), 10
classes. :func:`digits` gives a fixed, stratified train/test split as tensors.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from galcore.experiments.harness import Data

__all__ = ["digits", "digits_arrays"]


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
