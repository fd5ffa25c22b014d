"""The release's 3D toy: GAL in parameter space on a two-minimum surface z(x, y).

The surface (``3d_example/`` of the release)::

    z(x, y) = -sin(x^2) cos(3 y^2) exp(-(x y)^2) - exp(-(x + y)^2)

is minimised from ``(0.75, 1.0)`` by one of five optimizers with the release's settings
(:data:`TOY_SETTINGS`), with or without :class:`galcore.ParamGAL` adjusting the gradient of the
2-vector ``(x, y)``. :func:`run_toy` records the trajectory, the loss at every point, GAL's
acceptance decisions, its tentative steps (length, remainder, h's objective), and the Taylor
remainder of every real optimizer step (:func:`galcore.remainder_terms`, in float64).

As in the release, h (2 -> 64 -> 24 -> 2, linear, Xavier-uniform weights, zero biases, drawn
after ``torch.manual_seed(seed)``: :func:`release_toy_h`) is trained by the same optimizer as
``(x, y)``, the tentative step uses the optimizer's ``lr`` times ``gal_scale``, and by default
h's objective takes the first-order term as the release does (``first_order="mean"``: the mean
of ``delta * g`` over the two coordinates, half the inner product); ``first_order="sum"`` is the
exact Taylor term. With ``dtype=torch.float64`` (the default) the trajectories equal the
release's loop step for step (``tests/test_release_toy.py``); the release computes in float32
(``dtype=torch.float32``), where acceptance ties at the rounding level make runs part after a
few dozen steps. Lookahead and AdaBound come from ``torch-optimizer``
(:func:`galcore.experiments.harness.optim.make_optimizer`): its AdaBound is the release's arithmetic,
its Lookahead the release's rule with the interpolation written ``alpha fast + (1 - alpha)
slow`` instead of ``slow + alpha (fast - slow)`` (equal up to rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from galcore.adjuster import make_adjuster
from galcore.experiments.harness.optim import current_lr, make_optimizer
from galcore.gal import ParamGAL
from galcore.remainder import remainder_terms

__all__ = [
    "START",
    "TOY_SETTINGS",
    "ToyRun",
    "ToySetting",
    "local_minima",
    "nearest_minimum",
    "release_toy_h",
    "run_toy",
    "steps_to",
    "surface",
    "surface_grid",
    "toy_summary",
]

#: The release's starting point (x, y).
START: tuple[float, float] = (0.75, 1.0)


def surface(xy: Tensor) -> Tensor:
    """``z(x, y) = -sin(x^2) cos(3 y^2) exp(-(x y)^2) - exp(-(x + y)^2)``.

    Args:
        xy: ``(..., 2)`` tensor of points (x in ``[..., 0]``, y in ``[..., 1]``).
    Returns:
        ``(...)`` tensor of heights, same dtype.
    """
    if xy.shape[-1] != 2:
        raise ValueError(f"xy must have a last dimension of size 2, got shape {tuple(xy.shape)}")
    x, y = xy[..., 0], xy[..., 1]
    return -torch.sin(x * x) * torch.cos(3 * y * y) * torch.exp(-(x * y) ** 2) - torch.exp(-((x + y) ** 2))


def surface_grid(lim: float = 1.5, n: int = 301) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, Y, Z)`` numpy arrays of shape ``(n, n)`` on ``[-lim, lim]^2`` (float64), for plots."""
    g = torch.linspace(-lim, lim, n, dtype=torch.float64)
    X, Y = torch.meshgrid(g, g, indexing="xy")
    Z = surface(torch.stack([X, Y], dim=-1))
    return X.numpy(), Y.numpy(), Z.numpy()


@dataclass(frozen=True)
class ToySetting:
    """One optimizer's toy setting from the release.

    ``optimizer``/``lr``/``kwargs`` go to :func:`galcore.experiments.harness.optim.make_optimizer`; ``ratio`` and
    ``scale`` are GAL's ``gal_ratio`` and ``gal_scale``; ``seed`` is the release's seed for h.
    """

    key: str
    label: str
    optimizer: str
    lr: float
    steps: int
    ratio: float
    scale: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


#: The release's toy settings (the paper and its release), keyed by short name.
TOY_SETTINGS: dict[str, ToySetting] = {
    "gd": ToySetting("gd", "GD", "sgd", 0.1, 100, 0.2, seed=2679),
    "lookahead": ToySetting(
        "lookahead", "Lookahead(GD)", "lookahead", 0.01, 600, 0.1,
        kwargs={"k": 5, "alpha": 0.5, "inner": "sgd"}, seed=4870,
    ),
    "rmsprop": ToySetting("rmsprop", "RMSprop", "rmsprop", 0.02, 150, 0.3, kwargs={"eps": 0.1}, seed=9910),
    "adam": ToySetting(
        "adam", "Adam", "adam", 0.02, 250, 0.4, scale=0.1, kwargs={"betas": (0.8, 0.999), "eps": 0.1}, seed=9049,
    ),
    "adabound": ToySetting(
        "adabound", "AdaBound", "adabound", 0.4, 300, 0.5, kwargs={"final_lr": 0.02, "gamma": 0.5}, seed=5026,
    ),
}


def release_toy_h(seed: int, hidden: tuple[int, ...] = (64, 24)) -> nn.Sequential:
    """h as the release builds it for the toy: ``2 -> 64 -> 24 -> 2`` linear layers, Xavier-uniform
    weights and zero biases, drawn after ``torch.manual_seed(seed)`` (the global RNG is restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        h = make_adjuster(2, hidden)
        for m in h.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
    return h


@dataclass
class ToyRun:
    """One toy run. Arrays are numpy; ``T`` is the number of steps.

    Attributes:
        setting: the setting used (with any overrides applied).
        gal: whether GAL adjusted the gradient.
        seed: the seed of h (``None`` for a plain run).
        positions: ``(T + 1, 2)`` the points, the start first.
        losses: ``(T + 1,)`` z at those points.
        first_order: GAL's first-order form (``"mean"`` as the release, ``"sum"``), ``None`` plain.
        accepted: ``(T,)`` bool, GAL's decision per step (``None`` for a plain run).
        gal_remainder: ``(T,)`` Taylor remainder of GAL's tentative step ``x - eta (g + a)``
            (``loss1 - loss0 + <delta, g>``, whatever ``first_order``; ``None`` plain).
        objective: ``(T,)`` what h minimised, ``|loss1 + first - loss0|`` in the run's form.
        tentative_length: ``(T,)`` ``|delta| = eta |g + a|``, the length of the tentative step
            (NaN on rejected steps, where ``g + a`` is not sent back and is not recorded).
        step_r1, step_second, step_r2, step_first: ``(T,)`` Taylor terms of each real step
            ``positions[t] -> positions[t + 1]`` in float64 (``None`` if not asked for).
    """

    setting: ToySetting
    gal: bool
    seed: int | None
    positions: np.ndarray
    losses: np.ndarray
    first_order: str | None = None
    accepted: np.ndarray | None = None
    gal_remainder: np.ndarray | None = None
    objective: np.ndarray | None = None
    tentative_length: np.ndarray | None = None
    step_first: np.ndarray | None = None
    step_second: np.ndarray | None = None
    step_r1: np.ndarray | None = None
    step_r2: np.ndarray | None = None

    @property
    def label(self) -> str:
        """``"plain"``, ``"GAL (mean)"`` or ``"GAL (sum)"``."""
        return "plain" if not self.gal else f"GAL ({self.first_order})"

    @property
    def step_lengths(self) -> np.ndarray:
        """``(T,)`` length of every real step ``|positions[t + 1] - positions[t]|``."""
        return np.linalg.norm(np.diff(self.positions, axis=0), axis=1)

    @property
    def final_point(self) -> np.ndarray:
        return self.positions[-1]

    @property
    def final_loss(self) -> float:
        return float(self.losses[-1])

    @property
    def acceptance_rate(self) -> float:
        return float("nan") if self.accepted is None else float(self.accepted.mean())

    @property
    def finite(self) -> bool:
        return bool(np.isfinite(self.positions).all() and np.isfinite(self.losses).all())


def _step_terms(positions: Tensor) -> tuple[np.ndarray, ...]:
    """Taylor terms (first, second, r1, r2) of every step of a trajectory, in float64.

    :func:`galcore.remainder_terms` is vectorised over the steps with ``torch.func.vmap``
    (a Python loop is the fallback)."""
    p = positions.to(torch.float64)
    if p.shape[0] < 2:
        return tuple(np.zeros(0) for _ in range(4))

    def terms(w: Tensor, d: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        rt = remainder_terms(surface, w, d)
        return rt.first_order, rt.second_order, rt.r1, rt.r2

    w, d = p[:-1], p[1:] - p[:-1]
    try:
        cols = torch.func.vmap(terms)(w, d)
    except (RuntimeError, NotImplementedError):  # pragma: no cover - vmap fallback
        rows = [torch.stack(terms(w[t], d[t])) for t in range(w.shape[0])]
        cols = tuple(torch.stack(rows).unbind(1))
    return tuple(c.detach().numpy() for c in cols)


def run_toy(
    setting: ToySetting | str,
    gal: bool = True,
    seed: int | None = None,
    *,
    steps: int | None = None,
    ratio: float | None = None,
    start: tuple[float, float] = START,
    remainders: bool = True,
    dtype: torch.dtype = torch.float64,
    first_order: str = "mean",
    compute_dtype: torch.dtype | None = None,
) -> ToyRun:
    """Minimise :func:`surface` from ``start`` with one optimizer, with or without GAL.

    The loop is the one a reader would write (notebook 01 writes it out)::

        gal = ParamGAL([xy], ratio=r, scale=s, first_order=first_order, h=release_toy_h(seed))
        opt = make_optimizer(name, [xy, *gal.parameters()], lr)   # h in the same optimizer
        for _ in range(steps):
            opt.zero_grad()
            gal.backward(lambda ps: surface(ps[0]), lr=opt.param_groups[0]["lr"])
            opt.step()

    Args:
        setting: a :class:`ToySetting` or a key of :data:`TOY_SETTINGS`.
        gal: adjust the gradient with :class:`galcore.ParamGAL` (h trained by the same optimizer).
        seed: seed of h's initial weights (default: the release's seed for that optimizer);
            a plain run uses no randomness.
        steps, ratio: override the setting's number of steps / GAL ratio.
        start: the initial point.
        remainders: also compute the Taylor terms of every real step (float64).
        dtype: dtype of ``(x, y)`` and h. float64 (default) follows the release's loop step for
            step; the release itself runs in float32.
        first_order: h's first-order term, ``"mean"`` (the release) or ``"sum"`` (exact Taylor).
        compute_dtype: GAL's arithmetic (default: ``dtype``, as the release).
    """
    if isinstance(setting, str):
        if setting not in TOY_SETTINGS:
            raise ValueError(f"setting must be a ToySetting or one of {', '.join(TOY_SETTINGS)}, got {setting!r}")
        s = TOY_SETTINGS[setting]
    elif isinstance(setting, ToySetting):
        s = setting
    else:
        raise TypeError(f"setting must be a ToySetting or a key of TOY_SETTINGS, got {type(setting).__name__}")
    if steps is not None:
        if int(steps) < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        s = replace(s, steps=int(steps))
    if ratio is not None:
        s = replace(s, ratio=float(ratio))
    seed = s.seed if seed is None else int(seed)
    xy = torch.tensor(start, dtype=dtype, requires_grad=True)
    params: list[Tensor] = [xy]
    pgal: ParamGAL | None = None
    if gal:
        pgal = ParamGAL(
            [xy], ratio=s.ratio, scale=s.scale, first_order=first_order,  # type: ignore[arg-type]
            compute_dtype=dtype if compute_dtype is None else compute_dtype, h=release_toy_h(seed).to(dtype),
        )
        params += list(pgal.parameters())
    opt = make_optimizer(s.optimizer, params, s.lr, **dict(s.kwargs))

    def loss_of(p: list[Tensor]) -> Tensor:
        return surface(p[0])

    traj = [xy.detach().clone()]
    records: list[Tensor] = []
    for _ in range(s.steps):
        opt.zero_grad(set_to_none=True)
        if pgal is not None:
            lr = current_lr(opt)
            rec = pgal.backward(loss_of, lr)
            assert xy.grad is not None
            # the tentative step is eta (g + a); on an accepted step g + a is the gradient sent back
            length = torch.where(rec.accepted, lr * s.scale * torch.linalg.vector_norm(xy.grad), torch.nan)
            records.append(torch.stack([t.to(torch.float64) for t in (rec.accepted, rec.remainder, rec.objective, length)]))
        else:
            surface(xy).backward()
        opt.step()
        traj.append(xy.detach().clone())

    positions = torch.stack(traj)
    with torch.no_grad():
        losses = surface(positions)
    run = ToyRun(
        s, gal, seed if gal else None, positions.to(torch.float64).numpy(), losses.to(torch.float64).numpy(),
        first_order=first_order if gal else None,
    )
    if pgal is not None:
        arr = torch.stack(records).numpy() if records else np.zeros((0, 4))
        run.accepted = arr[:, 0] > 0.5
        run.gal_remainder, run.objective, run.tentative_length = arr[:, 1], arr[:, 2], arr[:, 3]
    if remainders:
        run.step_first, run.step_second, run.step_r1, run.step_r2 = _step_terms(positions)
    return run


@lru_cache(maxsize=4)
def _minima(lim: float, n: int) -> tuple[tuple[float, float, float], ...]:
    from scipy.optimize import minimize

    g = torch.linspace(-lim, lim, n, dtype=torch.float64)
    X, Y = torch.meshgrid(g, g, indexing="xy")
    Z = surface(torch.stack([X, Y], dim=-1))
    pooled = -torch.nn.functional.max_pool2d(-Z[None, None], 3, 1, 1)[0, 0]
    out: list[tuple[float, float, float]] = []
    for i, j in (Z == pooled).nonzero().tolist():
        if not (0 < i < n - 1 and 0 < j < n - 1):
            continue

        def fun(v: np.ndarray) -> tuple[float, np.ndarray]:
            t = torch.tensor(v, dtype=torch.float64, requires_grad=True)
            z = surface(t)
            (gr,) = torch.autograd.grad(z, t)
            return float(z.detach()), gr.numpy()

        res = minimize(fun, np.array([float(X[i, j]), float(Y[i, j])]), jac=True, method="BFGS")
        x, y = (float(v) for v in res.x)
        if max(abs(x), abs(y)) <= lim and not any(math.hypot(x - a, y - b) < 1e-4 for a, b, _ in out):
            out.append((x, y, float(res.fun)))
    out.sort(key=lambda m: m[2])
    return tuple(out)


def local_minima(lim: float = 2.0, n: int = 401) -> np.ndarray:
    """Local minima of :func:`surface` inside ``[-lim, lim]^2`` as a ``(M, 3)`` array of
    ``(x, y, z)``, deepest first (grid search, refined by BFGS)."""
    return np.array(_minima(float(lim), int(n)))


def nearest_minimum(point: Any, minima: np.ndarray | None = None) -> tuple[int, float]:
    """Index into ``minima`` (default :func:`local_minima`) of the minimum nearest to ``point``
    (x, y), and the distance to it."""
    m = local_minima() if minima is None else minima
    d = np.hypot(m[:, 0] - float(point[0]), m[:, 1] - float(point[1]))
    i = int(np.argmin(d))
    return i, float(d[i])


def steps_to(run: ToyRun, z: float) -> int | None:
    """The first step t with ``run.losses[t] <= z`` (``None`` if the run never gets there)."""
    hit = np.nonzero(run.losses <= z)[0]
    return int(hit[0]) if hit.size else None


def toy_summary(run: ToyRun, minima: np.ndarray | None = None, *, near: float = 0.05, tol: float = 1e-3) -> dict[str, Any]:
    """One table row for a run: where it ends and how it got there.

    Columns: ``optimizer``, ``variant`` (:attr:`ToyRun.label`), ``seed``, ``final_x``,
    ``final_y``, ``final_z``; ``minimum`` (index into ``minima``, default :func:`local_minima`,
    of the nearest one), ``minimum_z``, ``distance``, ``at_minimum`` (within ``near``);
    ``steps_to_deepest`` (first step within ``tol`` of the deepest z; ``steps + 1`` if never);
    ``acceptance``, ``tentative_remainder`` (mean |remainder| of GAL's tentative steps),
    ``objective`` (mean of what h minimised), ``step_remainder`` (mean |r1| of the real steps,
    NaN without ``remainders``) and ``step_over_tentative`` (median ratio of the real step's
    length to the tentative step's; NaN for a plain run).
    """
    m = local_minima() if minima is None else minima
    i, dist = nearest_minimum(run.final_point, m)
    hit = steps_to(run, float(m[:, 2].min()) + tol)
    nan = float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (
            float(np.nanmedian(run.step_lengths / run.tentative_length))
            if run.tentative_length is not None and np.isfinite(run.tentative_length).any() else nan
        )
    return {
        "optimizer": run.setting.label, "variant": run.label, "seed": run.seed,
        "final_x": float(run.final_point[0]), "final_y": float(run.final_point[1]), "final_z": run.final_loss,
        "minimum": i, "minimum_z": float(m[i, 2]), "distance": dist, "at_minimum": dist < near,
        "steps_to_deepest": run.setting.steps + 1 if hit is None else hit,
        "acceptance": run.acceptance_rate,
        "tentative_remainder": nan if run.gal_remainder is None else float(np.abs(run.gal_remainder).mean()),
        "objective": nan if run.objective is None else float(run.objective.mean()),
        "step_remainder": nan if run.step_r1 is None else float(np.abs(run.step_r1).mean()),
        "step_over_tentative": ratio,
    }
