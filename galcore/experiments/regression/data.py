"""Notebook 04's data, embedded (no download), every split made before training:
``diabetes`` (scikit-learn's table, C = 1 output) and ``rotated_digits`` (scikit-learn's 8x8
digits rotated by a random angle t; targets ``(cos t, sin t)``, C = 2)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from galcore.experiments.harness import Data
from galcore.experiments.harness.data import digits_arrays
from galcore.experiments.harness.profile import Profile, choose

__all__ = ["DATASETS", "angle_targets", "angles_of", "angular_error", "diabetes", "load", "rotate_images", "rotated_digits",
           "rotated_digits_arrays"]

DATASETS = ("rotated_digits", "diabetes")


def _standardise(tr: Tensor, *others: Tensor, dim: int | None = 0) -> tuple[list[Tensor], Tensor, Tensor]:
    """``(t - m) / s`` for ``tr`` and each of ``others``, with the training split's mean and std."""
    if dim is None:
        m, s = tr.mean(), tr.std()
    else:
        m, s = tr.mean(dim=dim, keepdim=True), tr.std(dim=dim, keepdim=True)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return [(t - m) / s for t in (tr, *others)], m, s


def _split(n: int, fraction: float, seed: int, stratify: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
    """Indices ``(keep, held_out)`` with ``fraction`` of ``n`` rows held out (fixed by ``seed``)."""
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    keep, held = train_test_split(np.arange(n), test_size=fraction, random_state=seed, stratify=stratify)
    return torch.as_tensor(keep), torch.as_tensor(held)


def diabetes(test_size: float = 0.25, val_fraction: float = 0.2, split_seed: int = 0) -> Data:
    """scikit-learn's diabetes table (442 patients x 10 features; target a disease-progression
    score): one output. Test = ``test_size`` of the rows, validation = ``val_fraction`` of the
    rest. x (N, 10) and y (N, 1) standardised with the training rows' statistics; ``y_scale``
    is the training target's std (score points)."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(scaled=False)
    x = torch.tensor(bunch.data, dtype=torch.float32)
    y = torch.tensor(bunch.target, dtype=torch.float32).reshape(-1, 1)
    rest, te = _split(len(y), test_size, split_seed)
    tr_i, va_i = _split(len(rest), val_fraction, split_seed)
    tr, va = rest[tr_i], rest[va_i]
    (x_tr, x_va, x_te), _, _ = _standardise(x[tr], x[va], x[te])
    (y_tr, y_va, y_te), _, y_std = _standardise(y[tr], y[va], y[te])
    return Data(f"diabetes-{test_size}-{val_fraction}-{split_seed}", x_tr, y_tr, x_te, y_te, num_outputs=1,
                y_scale=float(y_std), x_val=x_va, y_val=y_va)


def rotate_images(images: Tensor, angles_deg: Tensor) -> Tensor:
    """Rotate each image counter-clockwise (as displayed, row 0 at the top) about its centre.

    Args:
        images: (N, C, H, W) float.
        angles_deg: (N,) angles in degrees.
    Returns:
        (N, C, H, W), bilinear, zeros outside. One batched ``grid_sample``, no loop.
    """
    if images.ndim != 4 or angles_deg.shape != (images.shape[0],):
        raise ValueError(
            f"need images (N, C, H, W) and angles (N,), got {tuple(images.shape)} and {tuple(angles_deg.shape)}"
        )
    t = torch.deg2rad(angles_deg.to(images.dtype))
    c, s = torch.cos(t), torch.sin(t)
    zero = torch.zeros_like(t)
    # output pixel p samples the input at R p (x right, y down): a clockwise matrix in y-down
    # coordinates, so the content turns counter-clockwise on screen.
    theta = torch.stack([torch.stack([c, -s, zero], -1), torch.stack([s, c, zero], -1)], -2)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def angle_targets(angles_deg: Tensor) -> Tensor:
    """(N,) angles in degrees -> (N, 2) targets ``(cos t, sin t)`` on the unit circle."""
    t = torch.deg2rad(angles_deg.reshape(-1).to(torch.float32))
    return torch.stack([torch.cos(t), torch.sin(t)], dim=1)


def angles_of(outputs: Tensor) -> Tensor:
    """(N, 2) predicted ``(cos, sin)`` -> (N,) angles in degrees, ``atan2(sin, cos)``."""
    if outputs.ndim != 2 or outputs.shape[1] != 2:
        raise ValueError(f"outputs must be (N, 2) (cos, sin), got {tuple(outputs.shape)}")
    return torch.rad2deg(torch.atan2(outputs[:, 1], outputs[:, 0]))


def angular_error(outputs: Tensor, angles_deg: Tensor) -> Tensor:
    """(N,) absolute angle between the predicted direction and the true angle, degrees in [0, 180]."""
    d = angles_of(outputs) - angles_deg.reshape(-1).to(outputs.dtype)
    return torch.remainder(d + 180.0, 360.0).sub(180.0).abs()


def rotated_digits_arrays(
    copies: int = 1,
    size: int = 8,
    max_angle: float = 90.0,
    angle_seed: int = 0,
    test_size: float = 0.25,
    split_seed: int = 0,
    val_fraction: float = 0.2,
    eval_copies: int = 1,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Rotated digits before standardisation: ``{"train" | "val" | "test": (x, angle)}``, x
    (N, 1, size, size) in [0, 1], angle (N,) in degrees (counter-clockwise).

    The digits' stratified train/test split, then ``val_fraction`` of the training digits
    (stratified) held out for validation, so no digit image is in two splits. Each training
    digit gives ``copies`` rotated images, each validation and test digit ``eval_copies``
    (independent angles, uniform in ``[-max_angle, max_angle]``, one generator seeded with
    ``angle_seed``, drawn train, val, test). ``size`` > 8 upsamples (bilinear) before rotating.
    """
    if copies < 1 or eval_copies < 1 or size < 8 or not 0 < max_angle <= 180:
        raise ValueError("copies >= 1, eval_copies >= 1, size >= 8 and 0 < max_angle <= 180 are required")
    x_tr, lab_tr, x_te, _ = digits_arrays(test_size, split_seed)
    keep, held = _split(len(x_tr), val_fraction, split_seed, stratify=lab_tr.numpy())
    gen = torch.Generator().manual_seed(angle_seed)

    def make(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        if size != 8:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = x.repeat_interleave(k, dim=0)
        ang = (torch.rand(len(x), generator=gen) * 2 - 1) * max_angle
        return rotate_images(x, ang), ang

    return {"train": make(x_tr[keep], copies), "val": make(x_tr[held], eval_copies), "test": make(x_te, eval_copies)}


def rotated_digits(
    copies: int = 1,
    size: int = 8,
    max_angle: float = 90.0,
    angle_seed: int = 0,
    test_size: float = 0.25,
    split_seed: int = 0,
    val_fraction: float = 0.2,
    eval_copies: int = 1,
) -> Data:
    """Digits rotated by a random angle t; predict ``(cos t, sin t)`` (two outputs).

    See :func:`rotated_digits_arrays` for the splits. x (N, 1, size, size) standardised (one
    pixel mean/std of the training images); y (N, 2) on the unit circle, not standardised
    (``y_scale = 1``: errors are in units of the circle's radius).
    """
    parts = rotated_digits_arrays(copies, size, max_angle, angle_seed, test_size, split_seed, val_fraction, eval_copies)
    (x_tr, x_va, x_te), _, _ = _standardise(parts["train"][0], parts["val"][0], parts["test"][0], dim=None)
    y_tr, y_va, y_te = (angle_targets(parts[k][1]) for k in ("train", "val", "test"))
    name = f"rotated_digits-{copies}-{size}-{max_angle:g}-{angle_seed}-{test_size}-{split_seed}-{val_fraction}-{eval_copies}"
    return Data(name, x_tr, y_tr, x_te, y_te, num_outputs=2, x_val=x_va, y_val=y_va)


def load(dataset: str, profile: Profile | None = None) -> Data:
    """A dataset by name at the profile's scale (``rotated_digits``: 8x8, one rotated copy per
    training digit and two per validation/test digit in smoke/default; 16x16 with 4 copies in
    full)."""
    if dataset == "diabetes":
        return diabetes()
    if dataset == "rotated_digits":
        copies, size, eval_copies = choose((1, 8, 2), (1, 8, 2), (4, 16, 4), profile=profile)
        return rotated_digits(copies=copies, size=size, eval_copies=eval_copies)
    raise ValueError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")

