"""Control arms for every GAL comparison: what GAL's adjustment does without a learned h.

An effect of GAL on a metric is an effect of *h* only if a perturbation of the same size that
knows nothing (no h) does not produce it. The controls here are GAL runs in which one part of the
method is taken away, each seeded so that it keeps the init, the data order, the dropout masks
and the acceptance rule of the other arms of the same seed:

- ``placebo``: a random direction per sample per step, rescaled like h's to norm ``r ||g_i||``,
  through the same acceptance rule, no h. Implemented as GAL with ``h=`` :data:`NoiseH`
  (:class:`galcore.experiments.harness.placebo.RandomDirection`), a parameter-free module
  returning seeded standard-normal noise of its input's shape from its own ``torch.Generator``
  (seeded from the run's seed with the harness's h-seed rule, on the input's device), so the
  global random stream is the one every other arm sees.
- ``zero``: ratio 0 through GAL's own path (the floor of GAL's arithmetic: the adjustment is
  exactly 0, so this arm measures what routing the step through GAL costs or changes).
- ``frozen``: h keeps its random initial weights (``TrainConfig.frozen_h``).

A config asks for the placebo with ``TrainConfig.placebo`` (:func:`placebo`); the harness's GAL
builder then passes that h to :func:`galcore.build.build_gal`
(:func:`galcore.experiments.harness.placebo.placebo_h`). Arms that are the same computation
(bit-identical final weights on every seed) are reported once: :func:`identical_groups`
finds them, :func:`merge_identical` keeps one row per group and says which arms it stands for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from galcore.experiments.harness.placebo import RandomDirection

__all__ = ["CONTROLS", "NoiseH", "control_arms", "describe_merged", "identical_groups", "merge_identical", "placebo", "zero"]

#: the control arms :func:`control_arms` can build
CONTROLS = ("placebo", "zero", "frozen")


#: the placebo's h: seeded standard-normal noise shaped like its input, from its own generator
#: (:class:`galcore.experiments.harness.placebo.RandomDirection`; the harness builds it for
#: ``TrainConfig.placebo``, sequential and stacked runs alike)
NoiseH = RandomDirection


def _check_gal(cfg: Any, name: str) -> None:
    if getattr(cfg, "gal", None) is None:
        raise ValueError(f"{name}: give a GAL arm's config (gal options set), not the standard arm's")


def placebo(cfg: Any) -> Any:
    """``cfg`` (a GAL arm's :class:`~galcore.experiments.harness.TrainConfig`) with h replaced by
    seeded noise: same ratio, scale, acceptance rule and first-order form; no h to train."""
    _check_gal(cfg, "placebo")
    return replace(cfg, placebo=True, frozen_h=False, h_optimizer=None, h_lr=None)


def zero(cfg: Any) -> Any:
    """``cfg`` (a GAL arm's config) at ratio 0: GAL's own path with a zero adjustment."""
    _check_gal(cfg, "zero")
    return replace(cfg, gal=cfg.gal.replace(ratio=0.0), placebo=False)


def control_arms(cfg: Any, which: Sequence[str] = ("placebo", "zero"), prefix: str = "") -> dict[str, Any]:
    """``{prefix + name: config}`` for each control in ``which`` (of :data:`CONTROLS`) of the GAL
    arm ``cfg``."""
    unknown = [w for w in which if w not in CONTROLS]
    if unknown:
        raise ValueError(f"which: unknown controls {unknown}; use {', '.join(CONTROLS)}")
    _check_gal(cfg, "control_arms")
    make = {"placebo": placebo, "zero": zero, "frozen": lambda c: replace(c, frozen_h=True)}
    return {prefix + w: make[w](cfg) for w in which}


def identical_groups(finals: pd.DataFrame, by: Sequence[str] = ()) -> list[tuple[Any, ...]]:
    """Groups of arms whose final weights are bit-identical on every seed they share with the
    group's first arm (from ``weights_hash``; an arm may run on fewer seeds), within each group
    of the ``by`` columns. One tuple per group of two or more arms, each ``(*by values, arm, arm,
    ...)`` in first-appearance order. Runs with a non-finite test loss are never identical to
    anything (NaN weights hash alike)."""
    if "weights_hash" not in finals.columns:
        return []
    out: list[tuple[Any, ...]] = []
    groups = finals.groupby(list(by), sort=False) if by else [((), finals)]
    for keys, g in groups:
        keys = keys if isinstance(keys, tuple) else (keys,)
        ok = g["weights_hash"].map(lambda h: isinstance(h, str) and bool(h))
        if "test_loss" in g.columns:
            ok &= pd.Series(np.isfinite(pd.to_numeric(g["test_loss"], errors="coerce").to_numpy(dtype=float)), index=g.index)
        hashes = {arm: ga.set_index("seed")["weights_hash"] for arm, ga in g.groupby("arm", sort=False) if ok[ga.index].all()}
        heads: list[list[str]] = []
        for arm, h in hashes.items():
            for grp in heads:
                ref = hashes[grp[0]]
                common = ref.index.intersection(h.index)
                if len(common) and (ref.loc[common] == h.loc[common]).all():
                    grp.append(arm)
                    break
            else:
                heads.append([arm])
        out += [(*keys, *grp) for grp in heads if len(grp) > 1]
    return out


def merge_identical(finals: pd.DataFrame, by: Sequence[str] = (), keep: Sequence[str] = ("standard",)
                    ) -> tuple[pd.DataFrame, dict[tuple[Any, ...], list[str]]]:
    """``finals`` with one arm per group of bit-identical arms (:func:`identical_groups`): the
    arm kept is the first of ``keep`` in the group, else the group's first. Returns the frame
    and ``{(*by values, kept arm): [the arms it stands for]}``, for the report to say so."""
    drop: list[tuple[tuple[Any, ...], str]] = []
    merged: dict[tuple[Any, ...], list[str]] = {}
    n = len(by)
    for grp in identical_groups(finals, by):
        keys, arms = grp[:n], list(grp[n:])
        kept = next((a for a in keep if a in arms), arms[0])
        merged[(*keys, kept)] = [a for a in arms if a != kept]
        drop += [(keys, a) for a in arms if a != kept]
    mask = pd.Series(False, index=finals.index)
    for keys, arm in drop:
        m = finals["arm"] == arm
        for col, v in zip(by, keys, strict=True):
            m &= finals[col] == v
        mask |= m
    return finals[~mask].reset_index(drop=True), merged


def describe_merged(merged: Mapping[tuple[Any, ...], list[str]]) -> str:
    """One sentence per merged group: which arms were the same computation as which."""
    bits = []
    for key, others in merged.items():
        *where, kept = key
        at = f" ({', '.join(map(str, where))})" if where else ""
        bits.append(f"{', '.join(f'`{o}`' for o in others)} ended with bit-identical weights to `{kept}` on every "
                    f"seed{at}: the same computation, reported once as `{kept}`.")
    return " ".join(bits)
