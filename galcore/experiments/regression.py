"""Regression with and without GAL: embedded data, models, paired runs and a table.

Data (all standardised with the training split's statistics; ``Data.y_scale`` is the target's
training standard deviation, so ``test_rmse_orig``/``test_mae_orig`` are in original units):

- ``diabetes``: scikit-learn's bundled diabetes data (442 patients x 10 features, target a
  disease-progression score), fixed split. Embedded, no download.
- ``rotated_digits``: scikit-learn's bundled 8x8 digits images, each rotated by a random angle
  (uniform in ``[-max_angle, max_angle]`` degrees, fixed seed), target = the angle. The images
  are rotated in one batched ``affine_grid``/``grid_sample`` call (no loop over samples).
  Embedded, no download.
- ``california``: California housing (20,640 x 8, target median house value in $100k) through
  scikit-learn's fetcher; ``full`` profile only; it downloads once and raises a clear
  :class:`DatasetUnavailable` without network.

Models: :class:`galcore.experiments.models.MLP` for tabular data, :class:`galcore.experiments.models.SmallCNN` for images.
One target, so ``GAL(output_dim=1)``: h maps R^1 -> R^1 (see :func:`one_target_probe`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from galcore.experiments.datasets import digits_arrays
from galcore.experiments.models import MLP, SmallCNN
from galcore.experiments.optim import current_lr, make_optimizer
from galcore.experiments.profile import Profile, choose
from galcore.experiments.harness import Data, Setup, TrainConfig, loss_function, paired_table, run

__all__ = [
    "DATASETS",
    "LOSSES",
    "OPTIMIZERS",
    "DatasetUnavailable",
    "arms_for",
    "california",
    "default_setup",
    "diabetes",
    "gal_options",
    "load",
    "one_target_probe",
    "plot_curves",
    "plot_remainders",
    "remainder_precision",
    "results_table",
    "rotate_images",
    "rotated_digits",
    "rotated_digits_arrays",
    "run_grid",
]

DATASETS = ("diabetes", "rotated_digits", "california")
LOSSES = ("mse", "huber")
OPTIMIZERS = ("momentum", "adam")

#: Learning rate per (dataset, optimizer); SGD with momentum 0.9 and Adam's defaults otherwise.
LR: dict[str, dict[str, float]] = {
    "diabetes": {"momentum": 0.01, "adam": 1e-3},
    "rotated_digits": {"momentum": 0.01, "adam": 1e-3},
    "california": {"momentum": 0.01, "adam": 1e-3},
}

TABLE_COLUMNS = [
    "arm", "dataset", "loss", "optimizer", "metric",
    "mean_control", "mean_treatment", "mean_diff", "low", "high", "p_value", "n",
]


class DatasetUnavailable(RuntimeError):
    """A dataset that needs a download could not be fetched (no network, no local copy)."""


# -- data -----------------------------------------------------------------------------------
def _standardise(tr: Tensor, te: Tensor, dim: int | None = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(tr - m) / s`` and ``(te - m) / s`` with the training split's mean and std."""
    if dim is None:
        m, s = tr.mean(), tr.std()
    else:
        m, s = tr.mean(dim=dim, keepdim=True), tr.std(dim=dim, keepdim=True)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (tr - m) / s, (te - m) / s, m, s


def _tabular(name: str, x: np.ndarray, y: np.ndarray, test_size: float, split_seed: int) -> Data:
    from sklearn.model_selection import train_test_split

    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32).reshape(-1, 1)
    tr, te = train_test_split(np.arange(len(yt)), test_size=test_size, random_state=split_seed)
    tr_t, te_t = torch.as_tensor(tr), torch.as_tensor(te)
    x_tr, x_te, _, _ = _standardise(xt[tr_t], xt[te_t])
    y_tr, y_te, _, y_std = _standardise(yt[tr_t], yt[te_t])
    return Data(f"{name}-{test_size}-{split_seed}", x_tr, y_tr, x_te, y_te, num_outputs=1, y_scale=float(y_std))


def diabetes(test_size: float = 0.25, split_seed: int = 0) -> Data:
    """Diabetes (bundled): x (N, 10), y (N, 1), both standardised; ``y_scale`` in score units."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(scaled=False)
    return _tabular("diabetes", bunch.data, bunch.target, test_size, split_seed)


def california(test_size: float = 0.2, split_seed: int = 0, download: bool = True) -> Data:
    """California housing (fetched once by scikit-learn): x (N, 8), y (N, 1), standardised;
    ``y_scale`` in units of $100,000. Raises :class:`DatasetUnavailable` when it cannot be had."""
    from sklearn.datasets import fetch_california_housing

    try:
        bunch = fetch_california_housing(download_if_missing=download)
    except Exception as e:  # OSError, URLError, HTTPError ... depending on what failed
        raise DatasetUnavailable(
            "California housing is not in scikit-learn's data folder and could not be downloaded "
            f"({type(e).__name__}: {e}). Run once on a machine with internet "
            "(sklearn.datasets.fetch_california_housing()) or copy its cal_housing*.pkz into "
            "~/scikit_learn_data (or $SCIKIT_LEARN_DATA)."
        ) from e
    return _tabular("california", bunch.data, bunch.target, test_size, split_seed)


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


def rotated_digits_arrays(
    copies: int = 1,
    size: int = 8,
    max_angle: float = 45.0,
    angle_seed: int = 0,
    test_size: float = 0.25,
    split_seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rotated digits before standardisation: ``(x_train, angle_train, x_test, angle_test)``,
    x (N, 1, size, size) in [0, 1], angles (N, 1) in degrees (counter-clockwise)."""
    if copies < 1 or size < 8 or max_angle <= 0:
        raise ValueError("copies >= 1, size >= 8 and max_angle > 0 are required")
    x_tr, _, x_te, _ = digits_arrays(test_size, split_seed)
    gen = torch.Generator().manual_seed(angle_seed)

    def make(x: Tensor) -> tuple[Tensor, Tensor]:
        if size != 8:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = x.repeat_interleave(copies, dim=0)
        ang = (torch.rand(len(x), generator=gen) * 2 - 1) * max_angle
        return rotate_images(x, ang), ang.reshape(-1, 1)

    xr_tr, a_tr = make(x_tr)
    xr_te, a_te = make(x_te)
    return xr_tr, a_tr, xr_te, a_te


def rotated_digits(
    copies: int = 1,
    size: int = 8,
    max_angle: float = 45.0,
    angle_seed: int = 0,
    test_size: float = 0.25,
    split_seed: int = 0,
) -> Data:
    """Digits images rotated by a random angle; predict the angle (degrees, standardised).

    Each digit gives ``copies`` rotated images (independent angles, uniform in
    ``[-max_angle, max_angle]``). ``size`` > 8 upsamples (bilinear) before rotating. Train and
    test come from the stratified digits split, so no digit image is on both sides.
    x (N, 1, size, size) standardised (one mean/std over pixels); y (N, 1); ``y_scale`` = the
    angles' training std in degrees.
    """
    xr_tr, a_tr, xr_te, a_te = rotated_digits_arrays(copies, size, max_angle, angle_seed, test_size, split_seed)
    xr_tr, xr_te, _, _ = _standardise(xr_tr, xr_te, dim=None)
    y_tr, y_te, _, y_std = _standardise(a_tr, a_te)
    name = f"rotated_digits-{copies}-{size}-{max_angle:g}-{angle_seed}-{test_size}-{split_seed}"
    return Data(name, xr_tr, y_tr, xr_te, y_te, num_outputs=1, y_scale=float(y_std))


def load(dataset: str, profile: Profile | None = None) -> Data:
    """A dataset by name at the profile's scale (``rotated_digits``: 1 copy at 8x8 in
    smoke/default, 4 copies at 16x16 in full)."""
    if dataset == "diabetes":
        return diabetes()
    if dataset == "rotated_digits":
        copies, size = choose((1, 8), (1, 8), (4, 16), profile=profile)
        return rotated_digits(copies=copies, size=size)
    if dataset == "california":
        return california()
    raise ValueError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")


# -- setup ----------------------------------------------------------------------------------
def _mlp(in_features: int) -> nn.Module:
    return MLP(in_features, 1, hidden=(64, 64))


def _cnn(size: int) -> nn.Module:
    return SmallCNN(in_channels=1, num_outputs=1, size=size)


def default_setup(profile: Profile | None = None, dataset: str = "diabetes") -> Setup:
    """The regression experiment for one dataset: data, model factory, standard arm (MSE,
    SGD with momentum; vary ``loss``/``optimizer``/``lr`` with ``dataclasses.replace``, lr per
    optimizer in :data:`LR`) and seeds (2 in smoke, 5 in default, 5 in full)."""
    data = load(dataset, profile)
    if dataset == "rotated_digits":
        size = data.x_train.shape[-1]
        model_fn: Callable[[], nn.Module] = functools.partial(_cnn, size)
        model_name = f"smallcnn{size}-1"
        epochs = choose(2, 10, 30, profile=profile)
        batch = 64
    else:
        model_fn = functools.partial(_mlp, data.x_train.shape[1])
        model_name = f"mlp{data.x_train.shape[1]}-64-64-1"
        if dataset == "california":
            epochs, batch = choose(2, 20, 30, profile=profile), 256
        else:
            epochs, batch = choose(4, 25, 40, profile=profile), 32
    seeds = tuple(range(choose(2, 5, 5, profile=profile)))
    base = TrainConfig(
        model=model_name,
        data=data.name,
        task="regression",
        loss="mse",
        optimizer="momentum",
        lr=LR[dataset]["momentum"],
        epochs=epochs,
        batch_size=batch,
        seed=seeds[0],
    )
    return Setup(data=data, model_fn=model_fn, base=base, seeds=seeds)


def gal_options(ratio: float = 0.1, compute_dtype: torch.dtype | None = torch.float64, **kw: Any) -> dict[str, Any]:
    """Keyword arguments for :class:`galcore.GAL` used by the regression notebook.

    ``compute_dtype=float64`` because the output-space remainder of a batch-mean loss is of
    order ``(lr |g|)^2 B`` with ``|g_i| ~ 1/B``: about 1e-7..1e-9 here, at or below float32's
    rounding of a loss of order 1. ``track_plain=True`` also records the plain step's remainder.
    """
    return {"ratio": ratio, "compute_dtype": compute_dtype, "track_plain": True, **kw}


# -- running --------------------------------------------------------------------------------
def arms_for(
    setup: Setup, loss: str, optimizer: str, gal: Mapping[str, Any] | None = None, dataset: str | None = None
) -> dict[str, TrainConfig]:
    """``{"standard": ..., "gal": ...}`` for one loss and optimizer, lr from :data:`LR`."""
    key = dataset or _dataset_of(setup)
    base = replace(setup.base, loss=loss, optimizer=optimizer, lr=LR[key][optimizer])
    return {"standard": base, "gal": replace(base, gal=dict(gal_options() if gal is None else gal))}


def _dataset_of(setup: Setup) -> str:
    """The dataset key: data names start with it and a dash (``LR[name.split("-")[0]]``)."""
    return setup.data.name.split("-")[0]


def run_grid(
    setup: Setup,
    losses: Sequence[str] = LOSSES,
    optimizers: Sequence[str] = OPTIMIZERS,
    gal: Mapping[str, Any] | None = None,
    *,
    cache: bool = True,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Standard and GAL for every loss x optimizer x seed of ``setup`` (seeds shared by arms).

    Returns ``(finals, histories)`` like :func:`galcore.experiments.harness.run_arms`, with ``dataset``,
    ``loss`` and ``optimizer`` columns. Each arm's epoch-mean acceptance rate over the whole
    run is added to ``finals`` as ``accept_rate_mean``.
    """
    dataset = _dataset_of(setup)
    jobs = [(lo, op, seed, arm, cfg) for lo in losses for op in optimizers
            for seed in setup.seeds for arm, cfg in arms_for(setup, lo, op, gal, dataset).items()]
    iterator: Any = jobs
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(jobs, desc=f"{dataset}: runs", mininterval=2.0)
    finals, hists = [], []
    for lo, op, seed, arm, cfg in iterator:
        res = run(replace(cfg, seed=seed), setup.data, setup.model_fn, cache=cache)
        tags = {"dataset": dataset, "loss": lo, "optimizer": op, "arm": arm, "seed": seed}
        row = {**tags, **res.final, "seconds": res.seconds}
        if "accept_rate" in res.history[0]:
            row["accept_rate_mean"] = float(np.mean([h["accept_rate"] for h in res.history]))
        finals.append(row)
        hists.extend({**tags, **h} for h in res.history)
    return pd.DataFrame(finals), pd.DataFrame(hists)


def results_table(
    finals: pd.DataFrame, metrics: Sequence[str] = ("test_rmse", "test_mae", "test_rmse_orig", "test_mae_orig")
) -> pd.DataFrame:
    """Paired ``gal - standard`` per dataset, loss, optimizer and metric (95% CI over seeds),
    with the columns :data:`TABLE_COLUMNS` (negative ``mean_diff`` = GAL has the lower error)."""
    rows = []
    for (ds, lo, op), group in finals.groupby(["dataset", "loss", "optimizer"], sort=False):
        for metric in metrics:
            t = paired_table(group, metric)
            t["dataset"], t["loss"], t["optimizer"] = ds, lo, op
            rows.append(t)
    return pd.concat(rows, ignore_index=True)[TABLE_COLUMNS]


# -- what one target means for h ------------------------------------------------------------
def one_target_probe(setup: Setup, cfg: TrainConfig) -> dict[str, float]:
    """Train one GAL run (``cfg.gal`` set) by hand and measure what h can do with one target.

    With ``output_dim = 1`` GAL normalises ``a_i = r |g_i| h(x_i) / |h(x_i)|``: the adjustment
    is ``±r |g_i|``, a per-sample gradient scale of ``1 + r`` or ``1 - r``, picked by the sign
    of h. That sign has zero derivative, so the remainder objective gives h no gradient.

    Returns (host floats, read once at the end):
        ``unit_fraction``: fraction of samples with ``|a_i| = r |g_i|`` (to 1e-6 relative).
        ``h_grad_norm`` / ``model_grad_norm``: largest gradient norm h / the model received.
        ``h_drift``: largest absolute change of any h parameter over the run.
        ``shrink_fraction``: fraction of samples whose step was shrunk (``sign a_i != sign g_i``).
        ``h_positive_fraction``: fraction of predictions on h's positive side.
        ``h_slope``, ``h_intercept``, ``h_threshold``: h as the affine map it is (no activation).
        ``accept_rate``; ``test_rmse``: final test RMSE (standardised).
    """
    from galcore.gal import GAL

    if cfg.gal is None:
        raise ValueError("cfg must be a GAL arm")
    torch.manual_seed(cfg.seed)
    model = setup.model_fn()
    opts = dict(cfg.gal)
    h_seed = opts.pop("h_seed", 10_000 + cfg.seed)
    opts.pop("frozen_h", None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(h_seed)
        gal = GAL(1, **opts)
    h0 = [p.detach().clone() for p in gal.h.parameters()]
    opt = make_optimizer(cfg.optimizer, [{"params": list(model.parameters())}, {"params": list(gal.h.parameters())}],
                         cfg.lr, **dict(cfg.optimizer_kwargs))
    loss_fn = loss_function(cfg.loss)
    x, y = setup.data.x_train, setup.data.y_train
    gen = torch.Generator().manual_seed(cfg.seed)
    unit, shrink, positive, count = (torch.zeros((), dtype=torch.float64) for _ in range(4))
    h_gn, m_gn, acc, steps = (torch.zeros((), dtype=torch.float64) for _ in range(4))
    r = float(opts.get("ratio", gal.ratio))
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            out = model(x[idx])
            o = out.detach().double()
            with torch.no_grad():
                hv = gal.h(o.to(next(gal.h.parameters()).dtype)).double()
            rec = gal.backward(out, lambda z, yb=y[idx]: loss_fn(z, yb), current_lr(opt))
            o0 = o.clone().requires_grad_(True)
            g = torch.autograd.grad(loss_fn(o0, y[idx].double()), o0)[0]
            with torch.no_grad():
                a = r * g.abs() * torch.sign(hv)
                nz = g.abs() > 0
                unit += ((a.abs() - r * g.abs()).abs() <= 1e-6 * r * g.abs()).double().sum()
                shrink += ((torch.sign(a) != torch.sign(g)) & nz).double().sum()
                positive += (hv > 0).double().sum()
                count += len(idx)
                hg = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in gal.h.parameters() if p.grad is not None))
                mg = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
                h_gn = torch.maximum(h_gn, hg)
                m_gn = torch.maximum(m_gn, mg)
                acc += rec.accepted.double()
                steps += 1
            opt.step()
    with torch.no_grad():
        drift = max(float((p - p0).abs().max()) for p, p0 in zip(gal.h.parameters(), h0, strict=True))
        pdt = next(gal.h.parameters()).dtype
        b = float(gal.h(torch.zeros(1, 1, dtype=pdt)))
        w = float(gal.h(torch.ones(1, 1, dtype=pdt))) - b
        model.eval()
        err = model(setup.data.x_test) - setup.data.y_test
        rmse = float(err.pow(2).mean().sqrt())
    n = float(count)
    return {
        "unit_fraction": float(unit) / n,
        "shrink_fraction": float(shrink) / n,
        "h_positive_fraction": float(positive) / n,
        "h_grad_norm": float(h_gn),
        "model_grad_norm": float(m_gn),
        "h_drift": drift,
        "h_slope": w,
        "h_intercept": b,
        "h_threshold": -b / w if w != 0 else math.nan,
        "accept_rate": float(acc) / float(steps),
        "test_rmse": rmse,
    }


def remainder_precision(setup: Setup, cfg: TrainConfig) -> dict[str, float]:
    """The plain step's output-space remainder on the first training batch at initialisation,
    computed by GAL in float32 and in float64, against its exact value.

    For the MSE batch mean ``L = mean_i e_i^2`` the loss is quadratic in the outputs, so the
    remainder of the step ``delta = eta g`` is exactly ``sum_i delta_i^2 / B``. Returns that
    value, GAL's float32 and float64 results, their relative errors and float32's spacing
    (``eps * loss``) at the loss.
    """
    from galcore.gal import GAL

    torch.manual_seed(cfg.seed)
    model = setup.model_fn()
    xb, yb = setup.data.x_train[: cfg.batch_size], setup.data.y_train[: cfg.batch_size]
    with torch.no_grad():
        out = model(xb)
    eta = cfg.lr
    res: dict[str, float] = {}
    for label, dt in (("float32", None), ("float64", torch.float64)):
        gal = GAL(1, ratio=0.0, compute_dtype=dt, track_plain=True)
        rec = gal.backward(out.clone().requires_grad_(True), lambda o: F.mse_loss(o, yb.to(o.dtype)), eta)
        res[f"remainder_{label}"] = float(rec.remainder_plain)  # type: ignore[arg-type]
        res["loss"] = float(rec.loss)
    e = out.double() - yb.double()
    g = 2 * e / e.numel()
    exact = float(((eta * g) ** 2).sum() / e.numel())
    res["remainder_exact"] = exact
    for label in ("float32", "float64"):
        res[f"rel_error_{label}"] = abs(res[f"remainder_{label}"] - exact) / exact
    res["float32_spacing"] = float(torch.finfo(torch.float32).eps) * res["loss"]
    return res


def plot_curves(hists: pd.DataFrame, metric: str = "test_rmse", ylabel: str | None = None) -> Any:
    """One panel per (dataset, loss, optimizer): mean over seeds of ``metric`` per epoch for
    each arm, with a band of +-1 standard deviation over seeds. Returns the figure."""
    import matplotlib.pyplot as plt

    groups = list(hists.groupby(["dataset", "loss", "optimizer"], sort=False))
    ncol = 4
    nrow = math.ceil(len(groups) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.9 * nrow), squeeze=False)
    for ax, ((ds, lo, op), g) in zip(axes.flat, groups):
        for arm, color in (("standard", "tab:blue"), ("gal", "tab:red")):
            stats = g[g["arm"] == arm].groupby("epoch")[metric].agg(["mean", "std"])
            ax.plot(stats.index, stats["mean"], color=color, label=arm)
            ax.fill_between(stats.index, stats["mean"] - stats["std"].fillna(0), stats["mean"] + stats["std"].fillna(0),
                            color=color, alpha=0.2)
        ax.set_title(f"{ds} / {lo} / {op}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel or metric)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_remainders(hists: pd.DataFrame) -> Any:
    """GAL arm: epoch-mean |remainder| of the adjusted step and of the plain step (same batch,
    same point; log scale), mean over seeds, one panel per (dataset, loss, optimizer)."""
    import matplotlib.pyplot as plt

    gal = hists[hists["arm"] == "gal"]
    groups = list(gal.groupby(["dataset", "loss", "optimizer"], sort=False))
    ncol = 4
    nrow = math.ceil(len(groups) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.9 * nrow), squeeze=False)
    for ax, ((ds, lo, op), g) in zip(axes.flat, groups):
        m = g.groupby("epoch")[["remainder_abs", "remainder_plain_abs"]].mean()
        ax.semilogy(m.index, m["remainder_abs"], color="tab:red", label="with adjustment (g + a)")
        ax.semilogy(m.index, m["remainder_plain_abs"], color="k", ls="--", label="without (g)")
        ax.set_title(f"{ds} / {lo} / {op}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("|remainder|")
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
